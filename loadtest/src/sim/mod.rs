//! `vllm-sim`: a simulated vLLM OpenAI-compatible server that behaves like vLLM under load.
//!
//! The pieces, from the inside out: a deterministic [`tokenizer`]; hardware/model [`profile`]s
//! with the step-time model; the paged [`kv_cache`] with prefix caching; LoRA residency
//! ([`lora`]); the continuous-batching [`engine`], stepped on a virtual clock; and around it the
//! HTTP [`server`] that paces the engine in real time (optionally `time_scale` times faster),
//! speaks vLLM's OpenAI dialect ([`openai`]), exports vLLM's Prometheus [`metrics`] and injects
//! [`faults`] on request. Nothing in here is linked into the gateway.

pub mod calibrate;
pub mod config;
pub mod engine;
pub mod faults;
pub mod kv_cache;
pub mod kv_events;
pub mod lora;
pub mod metrics;
pub mod openai;
pub mod output;
pub mod profile;
pub mod server;
pub mod tokenizer;
