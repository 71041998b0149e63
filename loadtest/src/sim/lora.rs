//! Where LoRA adapters live and what it costs to bring one into a step.
//!
//! vLLM keeps `max_loras` GPU slots and a CPU cache of `max_cpu_loras` adapters, both LRU. A step
//! that needs an adapter that is in a GPU slot pays nothing; one in the CPU cache pays the
//! CPU→GPU activation; one in neither pays a disk load as well. Adapters registered with
//! `--lora-modules` or `/v1/load_lora_adapter` are loaded into the CPU cache up front (the load
//! stalls the engine loop once). This module only tracks residency and prices it; the scheduler
//! guarantees a step never asks for more than `max_loras` adapters.

use super::profile::LoraCosts;

/// An adapter's engine-side id (vLLM's `lora_int_id`, 1-based; the base model has none).
pub type LoraId = u32;

/// GPU slots and the CPU cache, most recently used last.
#[derive(Debug, Clone)]
pub struct LoraResidency {
    max_gpu: usize,
    max_cpu: usize,
    gpu: Vec<LoraId>,
    cpu: Vec<LoraId>,
    costs: LoraCosts,
    loads: LoraLoads,
}

/// How often adapters were brought in (not a vLLM metric: `/sim/stats` reports it so benchmarks
/// can count adapter swaps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoraLoads {
    /// Adapters put into a GPU slot for a step (from the CPU cache or from disk).
    pub gpu: u64,
    /// Of those, the ones read from disk first.
    pub disk: u64,
}

impl LoraResidency {
    pub fn new(max_loras: usize, max_cpu_loras: usize, costs: LoraCosts) -> Self {
        LoraResidency {
            max_gpu: max_loras.max(1),
            max_cpu: max_cpu_loras.max(max_loras).max(1),
            gpu: Vec::new(),
            cpu: Vec::new(),
            costs,
            loads: LoraLoads::default(),
        }
    }

    /// Adapter loads since start (preloads excluded).
    pub fn loads(&self) -> LoraLoads {
        self.loads
    }

    pub fn max_loras(&self) -> usize {
        self.max_gpu
    }

    pub fn in_gpu(&self, id: LoraId) -> bool {
        self.gpu.contains(&id)
    }

    pub fn in_cpu(&self, id: LoraId) -> bool {
        self.cpu.contains(&id)
    }

    /// Loads `id` into the CPU cache (as `add_lora` does) and returns the seconds it took.
    pub fn preload(&mut self, id: LoraId) -> f64 {
        if let Some(at) = self.cpu.iter().position(|&x| x == id) {
            let id = self.cpu.remove(at);
            self.cpu.push(id);
            return 0.0;
        }
        self.insert_cpu(id, &[]);
        self.costs.disk_load_seconds
    }

    /// Forgets `id` everywhere (`/v1/unload_lora_adapter`).
    pub fn remove(&mut self, id: LoraId) {
        self.gpu.retain(|&x| x != id);
        self.cpu.retain(|&x| x != id);
    }

    /// Makes every adapter of a step's batch resident in a GPU slot and returns the seconds
    /// that costs. `batch` holds distinct ids, at most `max_loras` of them.
    pub fn activate_batch(&mut self, batch: &[LoraId]) -> f64 {
        debug_assert!(batch.len() <= self.max_gpu, "batch exceeds max_loras");
        let mut seconds = 0.0;
        for &id in batch {
            if let Some(at) = self.gpu.iter().position(|&x| x == id) {
                let id = self.gpu.remove(at);
                self.gpu.push(id);
                continue;
            }
            if let Some(at) = self.cpu.iter().position(|&x| x == id) {
                let id = self.cpu.remove(at);
                self.cpu.push(id);
            } else {
                seconds += self.costs.disk_load_seconds;
                self.loads.disk += 1;
                self.insert_cpu(id, batch);
            }
            seconds += self.costs.activate_seconds;
            self.loads.gpu += 1;
            if self.gpu.len() >= self.max_gpu
                && let Some(at) = self.gpu.iter().position(|x| !batch.contains(x))
            {
                self.gpu.remove(at);
            }
            self.gpu.push(id);
        }
        seconds
    }

    fn insert_cpu(&mut self, id: LoraId, keep: &[LoraId]) {
        if self.cpu.len() >= self.max_cpu
            && let Some(at) = self.cpu.iter().position(|x| !keep.contains(x))
        {
            self.cpu.remove(at);
        }
        self.cpu.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::profile::DEFAULT_LORA_COSTS;

    #[test]
    fn costs_follow_residency() {
        let costs = DEFAULT_LORA_COSTS;
        let mut loras = LoraResidency::new(2, 3, costs);
        assert_eq!(loras.preload(1), costs.disk_load_seconds);
        assert_eq!(loras.activate_batch(&[1]), costs.activate_seconds);
        assert_eq!(loras.activate_batch(&[1]), 0.0);
        let cold = loras.activate_batch(&[2, 3]);
        assert!((cold - 2.0 * (costs.disk_load_seconds + costs.activate_seconds)).abs() < 1e-12);
        assert!(!loras.in_gpu(1) && loras.in_cpu(1));
        assert!(loras.in_gpu(2) && loras.in_gpu(3));
        // The CPU cache holds three: loading a fourth evicts the least recently used (1).
        loras.activate_batch(&[4]);
        assert!(!loras.in_cpu(1));
        // [1] from the CPU cache, [2, 3] from disk, [4] from disk; preloads do not count.
        assert_eq!(loras.loads(), LoraLoads { gpu: 4, disk: 3 });
    }
}
