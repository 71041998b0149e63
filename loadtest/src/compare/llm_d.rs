//! llm-d's "optimized baseline" benchmark (llm-d.ai, "KV-cache wins you can see") and the
//! arithmetic that scales its group count to another fleet: keep the share of the fleet's KV
//! cache that all groups' shared prefixes take. Constants only; the scenario is in
//! [`super::scenario`].

/// The original: 150 groups, each a 6,000-token prefix + a 1,200-token question, 1,000 tokens
/// out, on 8 pods of 2 × H100 serving Qwen3-32B.
pub const GROUPS: usize = 150;
pub const PREFIX_TOKENS: usize = 6000;
pub const QUESTION_TOKENS: usize = 1200;
pub const OUTPUT_TOKENS: usize = 1000;
pub const PODS: usize = 8;
pub const GPUS_PER_POD: usize = 2;
/// An H100 SXM 80 GB as the driver reports it: 81,559 MiB.
pub const GPU_MEMORY_BYTES: f64 = 81_559.0 * 1_048_576.0;
/// vLLM's default `--gpu-memory-utilization`.
pub const GPU_MEMORY_UTILIZATION: f64 = 0.9;
/// Qwen3-32B: 32.8 B parameters in bf16.
pub const WEIGHT_BYTES: f64 = 65.5e9;
/// 2 (K and V) × 64 layers × 8 KV heads × 128 head dim × 2 bytes (bf16).
pub const KV_BYTES_PER_TOKEN: f64 = (2 * 64 * 8 * 128 * 2) as f64;

/// KV tokens one pod of the original holds (activation memory ignored, so slightly high).
pub fn kv_tokens_per_pod() -> f64 {
    (GPU_MEMORY_UTILIZATION * GPUS_PER_POD as f64 * GPU_MEMORY_BYTES - WEIGHT_BYTES)
        / KV_BYTES_PER_TOKEN
}

/// All groups' prefix tokens over the original fleet's KV tokens.
pub fn prefix_to_kv_ratio() -> f64 {
    (GROUPS * PREFIX_TOKENS) as f64 / (PODS as f64 * kv_tokens_per_pod())
}

/// Groups whose prefixes take the same share of a fleet holding `fleet_kv_tokens`.
pub fn scaled_groups(fleet_kv_tokens: usize) -> usize {
    (prefix_to_kv_ratio() * fleet_kv_tokens as f64 / PREFIX_TOKENS as f64).round() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_count_keeps_the_originals_prefix_to_kv_ratio() {
        // (0.9 × 2 × 81,559 MiB − 65.5 GB) / 256 KiB per token.
        assert_eq!(kv_tokens_per_pod().round(), 337_362.0);
        assert!((prefix_to_kv_ratio() - 0.3335).abs() < 5e-4);
        let (_, a10) = crate::compare::capacity::fleet_engine("a10-qwen2.5-7b").unwrap();
        assert_eq!(a10, 106_224);
        assert_eq!(
            scaled_groups(5 * a10),
            crate::compare::scenario::OPTIMIZED_BASELINE_GROUPS
        );
        // The original's own fleet gives back its 150 groups.
        let original = (PODS as f64 * kv_tokens_per_pod()) as usize;
        assert_eq!(scaled_groups(original), GROUPS);
    }
}
