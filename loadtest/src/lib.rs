//! The load-test kit: a simulated vLLM server (`vllm-sim`), a benchmark client (`loadgen`) and a
//! harness that runs one workload through several routes and strategies (`compare`).
//!
//! Nothing here is linked into the gateway: the kit talks to it over real HTTP, like a user would.

pub mod bench;
pub mod client;
pub mod compare;
pub mod fleet;
pub mod procs;
pub mod sim;
