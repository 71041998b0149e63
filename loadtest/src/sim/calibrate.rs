//! The calibration table: runs the real engine on a virtual clock and puts what it produces next
//! to the reference figures (`shared/reference/model-servers.md` §5), so anyone can check the
//! step-time model with one command (`vllm-sim calibrate`).
//!
//! Decode inter-token latency is measured at batch 1, 32 and 128 with ~1k-token contexts (the KV
//! capacity is lifted for this measurement so batch 128 fits; on a real A10 it would not);
//! prefill throughput is a 1,024-token prompt on an idle engine. No wall clock is involved.

use std::fmt::Write as _;
use std::sync::Arc;

use super::engine::{Engine, EngineConfig, FinishReason, NewRequest};
use super::profile::{PROFILES, Profile};
use super::tokenizer::{prompt_with_exact_tokens, tokenize};

/// Context length the decode rows use.
pub const CONTEXT_TOKENS: usize = 1024;
/// Decode steps averaged per row.
const MEASURED_STEPS: usize = 16;
/// Allowed relative difference from a reference figure.
pub const TOLERANCE: f64 = 0.10;

/// One row: what the engine produced and what the reference says.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationRow {
    pub quantity: String,
    pub simulated: f64,
    pub reference: Option<f64>,
    pub unit: &'static str,
}

impl CalibrationRow {
    /// Relative difference from the reference, if there is one.
    pub fn deviation(&self) -> Option<f64> {
        self.reference.map(|r| (self.simulated - r) / r)
    }

    pub fn within_tolerance(&self) -> bool {
        self.deviation().is_none_or(|d| d.abs() <= TOLERANCE)
    }
}

fn roomy_engine(profile: &Profile, seqs: usize) -> Engine {
    let config = EngineConfig {
        max_num_seqs: seqs.max(256),
        max_num_batched_tokens: 2048,
        block_size: 16,
        num_gpu_blocks: seqs * (CONTEXT_TOKENS + 2 * MEASURED_STEPS + 64) / 16 + 64,
        max_model_len: 32_768,
        max_loras: 1,
        max_cpu_loras: 1,
        enable_prefix_caching: true,
    };
    Engine::new(config, profile.step_model(false), profile.lora)
}

fn request(id: u64, prompt_tokens: usize, output_len: usize) -> NewRequest {
    NewRequest {
        id,
        prompt: Arc::from(tokenize(&prompt_with_exact_tokens(prompt_tokens, id))),
        output_seed: id,
        output_len,
        finish_reason: FinishReason::Length,
        lora: None,
        lora_name: None,
        cache_salt_key: 0,
        arrival: 0.0,
        max_tokens: output_len,
        n: 1,
    }
}

/// Mean seconds per decode step with `batch` sequences at ~1k context.
pub fn decode_itl(profile: &Profile, batch: usize) -> f64 {
    let mut engine = roomy_engine(profile, batch);
    for id in 0..batch as u64 {
        engine.add_request(request(id, CONTEXT_TOKENS, 4 * MEASURED_STEPS));
    }
    let mut now = 0.0;
    let mut first_tokens = 0;
    while first_tokens < batch {
        let outcome = engine.step(now);
        now += outcome.duration;
        first_tokens += outcome.tokens.iter().filter(|t| t.index == 0).count();
    }
    let total: f64 = (0..MEASURED_STEPS)
        .map(|_| {
            let outcome = engine.step(now);
            now += outcome.duration;
            outcome.duration
        })
        .sum();
    total / MEASURED_STEPS as f64
}

/// Prefill tokens per second of a 1,024-token prompt on an idle engine (time to first token).
pub fn prefill_tokens_per_second(profile: &Profile) -> f64 {
    let mut engine = roomy_engine(profile, 1);
    engine.add_request(request(1, CONTEXT_TOKENS, 1));
    CONTEXT_TOKENS as f64 / engine.step(0.0).duration
}

/// Reference figures per profile: (ITL batch 1, 32, 128 in ms; prefill tok/s).
fn reference(profile: &Profile) -> [Option<f64>; 4] {
    match profile.name {
        "a10-qwen2.5-7b" => [Some(30.0), Some(33.0), Some(43.0), Some(4_700.0)],
        "l20-qwen2.5-7b" => [Some(21.0), None, None, Some(4_500.0)],
        _ => [None; 4],
    }
}

/// The calibration rows for one profile.
pub fn calibrate(profile: &Profile) -> Vec<CalibrationRow> {
    let references = reference(profile);
    let mut rows: Vec<CalibrationRow> = [1, 32, 128]
        .iter()
        .zip(references)
        .map(|(&batch, reference)| CalibrationRow {
            quantity: format!("ITL, batch {batch}, 1k context"),
            simulated: decode_itl(profile, batch) * 1e3,
            reference,
            unit: "ms",
        })
        .collect();
    rows.push(CalibrationRow {
        quantity: "prefill, 1k-token prompt, idle".into(),
        simulated: prefill_tokens_per_second(profile),
        reference: references[3],
        unit: "tok/s",
    });
    rows
}

/// One profile's rows as a Markdown table.
pub fn render(profile: &Profile) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Profile {} ({} + {}, step overhead {:.1} ms)\n",
        profile.name,
        profile.gpu.name,
        profile.model.name,
        profile.gpu.step_overhead_seconds * 1e3
    );
    out.push_str("| quantity | simulated | reference | difference | within 10% |\n|---|---:|---:|---:|:---:|\n");
    for row in calibrate(profile) {
        let reference = row
            .reference
            .map_or("—".to_string(), |r| format!("{r:.1} {}", row.unit));
        let deviation = row
            .deviation()
            .map_or("—".to_string(), |d| format!("{:+.1}%", d * 100.0));
        let verdict = if row.reference.is_none() {
            "—"
        } else if row.within_tolerance() {
            "yes"
        } else {
            "NO"
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} {} | {} | {} | {} |",
            row.quantity, row.simulated, row.unit, reference, deviation, verdict
        );
    }
    out
}

/// KV capacity of every profile as a Markdown table.
pub fn render_kv_capacity() -> String {
    let mut out =
        String::from("KV capacity (16-token blocks, including vLLM's reserved null block):\n\n");
    out.push_str("| profile | util 0.90 | tokens | util 0.95 + 2 LoRA slots (the seed's flags) | tokens |\n|---|---:|---:|---:|---:|\n");
    for p in PROFILES {
        let (plain, seed) = (p.kv_blocks(0.9, 16, 0), p.kv_blocks(0.95, 16, 2));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            p.name,
            plain,
            (plain - 1) * 16,
            seed,
            (seed - 1) * 16
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_a10_profile_is_within_ten_percent_of_the_reference() {
        let profile = Profile::by_name("a10-qwen2.5-7b").unwrap();
        for row in calibrate(&profile) {
            assert!(row.within_tolerance(), "{row:?}");
        }
    }
}
