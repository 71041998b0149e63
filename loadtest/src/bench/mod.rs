//! `loadgen`: a benchmark client that speaks what `vllm bench serve` speaks — the same request
//! bodies and headers ([`request`]), the same random dataset ([`dataset::random`]) and the same
//! TTFT/TPOT/ITL/E2EL rules, summary layout and JSON keys ([`summary`]) — plus workloads the
//! gateway's users care about (shared prefixes, multi-turn chat, LoRA mixes, trace replay) and a
//! scraper that records what every model server reported while the run went on ([`scrape`]).
//!
//! The library is what `compare` drives in-process; the `loadgen` binary is its command line.

pub mod dataset;
pub mod observed;
pub mod prefix_bound;
pub mod request;
pub mod result;
pub mod runner;
pub mod scrape;
pub mod servers;
pub mod stats;
pub mod summary;
pub mod tenants;
