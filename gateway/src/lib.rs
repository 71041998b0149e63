//! The inference gateway: Gateway API listeners on Pingora, Service and InferencePool backends,
//! and pluggable routing strategies.
//!
//! Data flows one way: a source (YAML files, [`source`], or the Kubernetes API, [`kubernetes`])
//! produces objects ([`config`]); [`snapshot::build()`] turns them into an immutable [`snapshot::Snapshot`] published
//! through an `ArcSwap`; the proxy ([`proxy`]) reads one snapshot per request.

pub mod admin;
pub mod cli;
pub mod config;
pub mod drain;
pub mod engine;
pub mod epp_server;
pub mod flow;
pub mod generated;
pub mod headers;
pub mod kubernetes;
pub mod kv_events;
pub mod metrics;
pub mod openai;
pub mod proxy;
pub mod scrape;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod state;

pub use cli::Args;
/// The strategy contract, re-exported so a plugin binary needs one dependency.
pub use epp;
pub use plugins;
pub use server::GatewayBuilder;
