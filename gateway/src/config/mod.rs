//! The configuration model: Kubernetes objects, where they come from, and what is wrong with them.
//!
//! This module only parses and describes; turning objects into a routable snapshot is
//! [`crate::snapshot`]'s job.

pub mod crds;
pub mod duration;
pub mod issues;
pub mod load;
pub mod objects;
pub mod reasons;

pub use issues::{ConfigIssue, Origin, Severity};
pub use objects::{Document, Kind, Object, ObjectKey, ObjectSet};
pub use reasons::{IssueReason, Subject};
