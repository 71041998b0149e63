//! Built-in strategies.
//!
//! `ROUND_ROBIN` and `RANDOM` ignore load: they are baselines and fallbacks, and what a plain
//! Kubernetes Service does. The load-aware strategies build on the scorers in this crate.

mod random;
mod round_robin;

pub use random::Random;
pub use round_robin::RoundRobin;
