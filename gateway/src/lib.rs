//! The inference gateway: Gateway API listeners on Pingora, Service and InferencePool backends,
//! and pluggable routing strategies.
//!
//! Data flows one way: a source (YAML files or the Kubernetes API) produces objects
//! ([`config`]); [`snapshot::build`] turns them into an immutable [`snapshot::Snapshot`] published
//! through an `ArcSwap`; the proxy ([`proxy`]) reads one snapshot per request.

pub mod config;
pub mod snapshot;
