//! What one simulated pod sustains: the engine of a `vllm-sim` started with exactly the flags
//! [`super::fleet_up`] gives the simulators, stepped in-process on a virtual clock with every
//! request queued at once, so the waiting queue never empties until the end. Scenarios set their
//! arrival rates as a stated fraction of this capacity instead of a guess, and tests check that
//! the rates in their rationales still hold when the simulator's model changes.
//!
//! The figure is the steady-state completion rate: requests finished between the 20th and the
//! 80th percentile of completion times, divided by the time between them, so neither the ramp-up
//! (the first batch still prefilling) nor the drain (the last few requests alone) counts. The
//! first batch starts together and tends to finish together, so the estimate settles only when
//! the workload is many batches long: at least ten times the batch the pod admits (an L20 pod
//! admits `max_num_seqs` = 256 requests of 1,000 + 1,000 tokens, so 1,500 requests are needed
//! there; 600 suffice on an A10, whose KV cache admits about 50). No wall clock, no processes,
//! no I/O.

use std::sync::Arc;

use crate::bench::dataset::{Prompt, Workload};
use crate::procs::seed_sim_command;
use crate::sim::config::SimConfig;
use crate::sim::engine::{Engine, FinishReason, NewRequest};
use crate::sim::tokenizer::tokenize;

/// Requests enough for a steady estimate on either profile (see the module documentation).
pub const STEADY_REQUESTS: usize = 1500;

/// Why a capacity could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("the simulator's flags: {0}")]
    Config(String),
    #[error("capacity needs at least 10 single-turn requests, the workload has {0}")]
    TooSmall(usize),
    #[error("the engine made no progress (a request larger than the KV cache?)")]
    Stuck,
}

/// One pod's steady-state throughput for a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct PodCapacity {
    pub profile: String,
    /// Tokens the pod's KV cache holds.
    pub kv_tokens: usize,
    pub requests_per_second: f64,
    pub output_tokens_per_second: f64,
    pub preemptions: u64,
}

/// The engine a fleet simulator with `profile` runs (the seed Deployment's flags).
pub fn fleet_engine(profile: &str) -> Result<(Engine, usize), CapacityError> {
    let command = seed_sim_command(
        std::path::Path::new("vllm-sim"),
        "127.0.0.1",
        8000,
        profile,
        1.0,
        0,
        &[],
    );
    let config = SimConfig::from_command_line(command.get_args()).map_err(CapacityError::Config)?;
    let kv_tokens = (config.engine.num_gpu_blocks - 1) * config.engine.block_size;
    let engine = Engine::new(
        config.engine,
        config.profile.step_model(config.enforce_eager),
        config.profile.lora,
    );
    Ok((engine, kv_tokens))
}

/// Runs every single-turn request of `workload` through one pod with `profile`, all queued at
/// time 0, and measures its steady-state throughput (see the module documentation).
pub fn saturated(profile: &str, workload: &Workload) -> Result<PodCapacity, CapacityError> {
    let requests: Vec<(Arc<[u32]>, usize)> = workload
        .sessions
        .iter()
        .filter(|s| s.conversation.is_none() && s.turns.len() == 1)
        .map(|s| {
            let text = match &s.turns[0].prompt {
                Prompt::Text(text) => text.clone(),
                chat => chat.server_text(false),
            };
            (Arc::from(tokenize(&text)), s.turns[0].output_len)
        })
        .collect();
    if requests.len() < 10 {
        return Err(CapacityError::TooSmall(requests.len()));
    }
    let (mut engine, kv_tokens) = fleet_engine(profile)?;
    for (id, (prompt, output_len)) in requests.iter().enumerate() {
        engine.add_request(NewRequest {
            id: id as u64,
            prompt: prompt.clone(),
            output_seed: id as u64,
            output_len: *output_len,
            finish_reason: FinishReason::Length,
            lora: None,
            lora_name: None,
            cache_salt_key: 0,
            arrival: 0.0,
            max_tokens: *output_len,
            n: 1,
        });
    }
    // (end of step, tokens produced) per step, and completion times in order.
    let mut steps: Vec<(f64, usize)> = Vec::new();
    let mut finished: Vec<f64> = Vec::with_capacity(requests.len());
    let mut now = 0.0;
    while engine.has_work() {
        let outcome = engine.step(now);
        if outcome.scheduled_tokens == 0 {
            return Err(CapacityError::Stuck);
        }
        now += outcome.duration;
        steps.push((now, outcome.tokens.len()));
        finished.extend(outcome.finished.iter().map(|f| f.finished));
    }
    let n = finished.len();
    let (from, to) = (finished[n / 5], finished[n * 4 / 5]);
    let span = (to - from).max(f64::MIN_POSITIVE);
    let done = (n * 4 / 5 - n / 5) as f64;
    let tokens: usize = steps
        .iter()
        .filter(|(end, _)| *end > from && *end <= to)
        .map(|(_, tokens)| tokens)
        .sum();
    Ok(PodCapacity {
        profile: profile.to_string(),
        kv_tokens,
        requests_per_second: done / span,
        output_tokens_per_second: tokens as f64 / span,
        preemptions: engine.counters().preemptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::dataset::random::{RandomSpec, RangeSemantics};

    fn fixed(num_prompts: usize, input_len: usize, output_len: usize) -> Workload {
        RandomSpec {
            num_prompts,
            prefix_len: 0,
            input_len,
            output_len,
            range_ratio: 0.0,
            semantics: RangeSemantics::Current,
        }
        .workload(0)
        .unwrap()
    }

    #[test]
    fn the_fleet_engine_has_the_seed_flags_kv_capacity() {
        let (_, a10) = fleet_engine("a10-qwen2.5-7b").unwrap();
        let (_, l20) = fleet_engine("l20-qwen2.5-7b").unwrap();
        // 0.95 utilisation, two LoRA slots: about 6,640 blocks on an A10, 4.6 times that on an L20.
        assert!((100_000..110_000).contains(&a10), "{a10}");
        assert!(l20 > 4 * a10, "{l20}");
        assert!(matches!(
            fleet_engine("h100"),
            Err(CapacityError::Config(_))
        ));
    }

    #[test]
    fn longer_answers_and_slower_pods_sustain_fewer_requests() {
        let short = saturated("a10-qwen2.5-7b", &fixed(120, 256, 16)).unwrap();
        let long = saturated("a10-qwen2.5-7b", &fixed(120, 256, 64)).unwrap();
        assert!(short.requests_per_second > long.requests_per_second);
        let l20 = saturated("l20-qwen2.5-7b", &fixed(120, 256, 64)).unwrap();
        assert!(l20.requests_per_second > long.requests_per_second);
        assert!(saturated("a10-qwen2.5-7b", &fixed(5, 16, 4)).is_err());
    }
}
