//! Hardware and model profiles and the step-time model that turns one engine step's work into
//! seconds.
//!
//! The model is the roofline estimate in `shared/reference/model-servers.md` §5: a step reads the
//! weights once plus the KV of every context token it attends to, and computes ~2 FLOPs per
//! parameter per new token plus attention; it takes whichever of the two is slower, plus a fixed
//! launch overhead. Every constant below is a documented estimate, not a measurement; the
//! calibration command (`vllm-sim calibrate`) prints what they produce next to the reference
//! figures. This module knows nothing about requests or time: it only prices work.

/// The model being "served": sizes that drive memory traffic and compute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSpec {
    pub name: &'static str,
    /// Bytes of weights read once per step (bf16 Qwen2.5-7B: 7.61 B params ≈ 15.2 GB).
    pub weight_bytes: f64,
    /// KV bytes per token: 2 (K,V) · 28 layers · 4 KV heads · 128 head dim · 2 bytes.
    pub kv_bytes_per_token: f64,
    /// FLOPs per token that is sampled (with the lm_head).
    pub flops_per_sampled_token: f64,
    /// FLOPs per prefill token that is not sampled (no lm_head).
    pub flops_per_prefill_token: f64,
    /// Attention FLOPs per (new token, attended context token) pair: 4 · layers · hidden.
    pub attention_flops_per_pair: f64,
    /// Qwen2.5-7B-Instruct's `max_position_embeddings`, vLLM's default `--max-model-len`.
    pub default_max_model_len: usize,
    /// GPU bytes one LoRA slot reserves (rank 16 on all 7 projections, bf16).
    pub lora_slot_bytes: f64,
}

/// Qwen2.5-7B-Instruct in bf16 (constants from the reference, §5).
pub const QWEN2_5_7B: ModelSpec = ModelSpec {
    name: "Qwen2.5-7B-Instruct",
    weight_bytes: 15.2e9,
    kv_bytes_per_token: 57_344.0,
    flops_per_sampled_token: 14.2e9,
    flops_per_prefill_token: 13.1e9,
    attention_flops_per_pair: 401e3,
    default_max_model_len: 32_768,
    lora_slot_bytes: 81e6,
};

/// The accelerator: memory size, effective bandwidth and compute, per-step overhead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSpec {
    pub name: &'static str,
    /// Memory as the driver reports it (A10: 23,028 MiB; L20: 46,068 MiB).
    pub memory_bytes: f64,
    /// 0.9 × peak HBM/GDDR bandwidth: what large sequential reads achieve.
    pub effective_bandwidth: f64,
    /// 0.5 × peak dense FP16: what GEMMs of serving sizes achieve.
    pub effective_flops: f64,
    /// Scheduler + launch overhead per step with CUDA graphs.
    pub step_overhead_seconds: f64,
    /// Overhead with `--enforce-eager`: no CUDA graphs, so ~400 kernel launches per decode step at
    /// ~6 µs each are paid on the host. An estimate; the reference only says it is higher.
    pub eager_step_overhead_seconds: f64,
    /// Activation peak plus non-torch memory, chosen so that `--gpu-memory-utilization 0.9`
    /// yields the reference KV capacity (A10 ≈ 5,500 blocks, L20 ≈ 28,000 blocks).
    pub reserved_bytes: f64,
}

pub const A10: GpuSpec = GpuSpec {
    name: "A10",
    memory_bytes: 23_028.0 * 1_048_576.0,
    effective_bandwidth: 540e9,
    effective_flops: 62e12,
    step_overhead_seconds: 1.5e-3,
    eager_step_overhead_seconds: 4.0e-3,
    reserved_bytes: 1.485e9,
};

pub const L20: GpuSpec = GpuSpec {
    name: "L20",
    memory_bytes: 46_068.0 * 1_048_576.0,
    effective_bandwidth: 778e9,
    effective_flops: 60e12,
    step_overhead_seconds: 1.5e-3,
    eager_step_overhead_seconds: 4.0e-3,
    reserved_bytes: 2.585e9,
};

/// LoRA costs (reference §4, estimates): a cold load from disk, activation from the CPU cache
/// into a GPU slot, and the extra step time of a batch that carries adapters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraCosts {
    pub disk_load_seconds: f64,
    pub activate_seconds: f64,
    pub step_penalty_fraction: f64,
}

/// Middle of the reference ranges: 100 ms disk load (50–300), 7 ms CPU→GPU, +7.5% (5–10%).
pub const DEFAULT_LORA_COSTS: LoraCosts = LoraCosts {
    disk_load_seconds: 0.100,
    activate_seconds: 0.007,
    step_penalty_fraction: 0.075,
};

/// A named GPU + model pair selectable with `--profile`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub gpu: GpuSpec,
    pub model: ModelSpec,
    pub lora: LoraCosts,
}

pub const PROFILES: [Profile; 2] = [
    Profile {
        name: "a10-qwen2.5-7b",
        gpu: A10,
        model: QWEN2_5_7B,
        lora: DEFAULT_LORA_COSTS,
    },
    Profile {
        name: "l20-qwen2.5-7b",
        gpu: L20,
        model: QWEN2_5_7B,
        lora: DEFAULT_LORA_COSTS,
    },
];

impl Profile {
    /// The profile called `name`, if any.
    pub fn by_name(name: &str) -> Option<Profile> {
        PROFILES.iter().copied().find(|p| p.name == name)
    }

    /// KV-cache blocks vLLM would allocate: ⌊(util·M − W − reserved − LoRA slots) / block bytes⌋.
    pub fn kv_blocks(
        &self,
        gpu_memory_utilization: f64,
        block_size: usize,
        lora_slots: usize,
    ) -> usize {
        let available = gpu_memory_utilization * self.gpu.memory_bytes
            - self.model.weight_bytes
            - self.gpu.reserved_bytes
            - lora_slots as f64 * self.model.lora_slot_bytes;
        let block_bytes = block_size as f64 * self.model.kv_bytes_per_token;
        (available / block_bytes).floor().max(0.0) as usize
    }

    /// The step-time model for this profile.
    pub fn step_model(&self, enforce_eager: bool) -> StepTimeModel {
        StepTimeModel {
            model: self.model,
            gpu: self.gpu,
            overhead_seconds: if enforce_eager {
                self.gpu.eager_step_overhead_seconds
            } else {
                self.gpu.step_overhead_seconds
            },
            lora_penalty_fraction: self.lora.step_penalty_fraction,
        }
    }
}

/// The work of one engine step, summed over its scheduled sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepWork {
    /// Tokens that are sampled this step (decodes and last prompt tokens).
    pub sampled_tokens: u64,
    /// Prefill tokens that are not sampled.
    pub unsampled_tokens: u64,
    /// Context tokens whose KV is read (each sequence's length after this step).
    pub context_tokens_read: u64,
    /// Σ over new tokens of the context each attends to.
    pub attention_pairs: u64,
    /// Whether any scheduled sequence uses a LoRA adapter.
    pub uses_lora: bool,
}

impl StepWork {
    /// Adds one sequence that had `computed` tokens and computes `new_tokens` more this step,
    /// sampling one token at the end when `samples` is set.
    pub fn add_sequence(&mut self, computed: usize, new_tokens: usize, samples: bool) {
        let (c, n) = (computed as u64, new_tokens as u64);
        if samples {
            self.sampled_tokens += 1;
            self.unsampled_tokens += n.saturating_sub(1);
        } else {
            self.unsampled_tokens += n;
        }
        self.context_tokens_read += c + n;
        self.attention_pairs += n * c + n * (n + 1) / 2;
    }
}

/// Prices a step: `t = overhead + max(bytes / BW, flops / FLOPS)` (× LoRA penalty).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTimeModel {
    pub model: ModelSpec,
    pub gpu: GpuSpec,
    pub overhead_seconds: f64,
    pub lora_penalty_fraction: f64,
}

impl StepTimeModel {
    /// Seconds one step with `work` takes.
    pub fn step_seconds(&self, work: &StepWork) -> f64 {
        let bytes = self.model.weight_bytes
            + self.model.kv_bytes_per_token * work.context_tokens_read as f64;
        let flops = self.model.flops_per_sampled_token * work.sampled_tokens as f64
            + self.model.flops_per_prefill_token * work.unsampled_tokens as f64
            + self.model.attention_flops_per_pair * work.attention_pairs as f64;
        let busy = (bytes / self.gpu.effective_bandwidth).max(flops / self.gpu.effective_flops);
        let penalty = if work.uses_lora {
            1.0 + self.lora_penalty_fraction
        } else {
            1.0
        };
        self.overhead_seconds + busy * penalty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a10() -> Profile {
        Profile::by_name("a10-qwen2.5-7b").unwrap()
    }

    #[test]
    fn kv_capacity_matches_the_reference() {
        assert_eq!(a10().kv_blocks(0.9, 16, 0), 5_500);
        let l20 = Profile::by_name("l20-qwen2.5-7b").unwrap();
        assert_eq!(l20.kv_blocks(0.9, 16, 0), 28_000);
        let seed = a10().kv_blocks(0.95, 16, 2);
        assert!((6_500..7_000).contains(&seed), "{seed}");
    }

    #[test]
    fn decode_at_batch_one_is_memory_bound() {
        let model = a10().step_model(false);
        let mut work = StepWork::default();
        work.add_sequence(1023, 1, true);
        let t = model.step_seconds(&work);
        assert!((t - 0.02976).abs() < 2e-4, "{t}");
    }
}
