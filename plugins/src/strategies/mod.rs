//! Built-in strategies.
//!
//! `ROUND_ROBIN` and `RANDOM` ignore load: they are baselines, and what a plain Kubernetes Service
//! does. `DEFAULT`, `PREFIX_CACHE` and `LORA_AFFINITY` are built from the scorers, load estimates
//! and prefix index of this crate; each documents its algorithm and every parameter in its module
//! header.

pub mod default;
pub mod lora_affinity;
pub mod prefix_cache;
mod random;
mod round_robin;

pub use default::{DefaultStrategy, LoadScoring};
pub use lora_affinity::LoraAffinity;
pub use prefix_cache::PrefixCache;
pub use random::Random;
pub use round_robin::RoundRobin;
