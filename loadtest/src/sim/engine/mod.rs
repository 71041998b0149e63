//! The simulated vLLM V1 engine: continuous batching over a paged KV cache, stepped explicitly.
//!
//! [`Engine::step`] runs one scheduler iteration at a virtual time `now` and returns what the step
//! produced and how long it took under the profile's step-time model; nothing here reads a clock,
//! sleeps or does I/O, so tests drive it deterministically and the server paces it in real time.
//!
//! Scheduling follows `vllm/v1/core/sched/scheduler.py`: a budget of `max_num_batched_tokens`
//! per step; running requests first (a decode takes one token, an unfinished prefill continues in
//! a chunk that fits the budget); when a running request needs a block and none is free, the
//! newest running request is preempted (blocks freed with their hashes kept, progress reset, put
//! at the front of the waiting queue); then, if nothing was preempted, waiting requests are
//! admitted FCFS up to `max_num_seqs`, skipping the cached prefix (full blocks only, the last
//! prompt token always recomputed) and skipping LoRA requests that would bring a step past
//! `max_loras` adapters. A request that cannot get blocks stays at the head of the queue.

mod sequence;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use self::sequence::Sequence;
use super::kv_cache::KvCache;
use super::lora::{LoraId, LoraLoads, LoraResidency};
use super::profile::{LoraCosts, StepTimeModel, StepWork};

pub type RequestId = u64;

/// Why a request finished, as `request_success_total{finished_reason}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Scheduler and cache limits (vLLM's flags of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    /// All KV blocks including the reserved null block.
    pub num_gpu_blocks: usize,
    pub max_model_len: usize,
    pub max_loras: usize,
    pub max_cpu_loras: usize,
    pub enable_prefix_caching: bool,
}

/// A request handed to the engine (already tokenized and validated).
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: RequestId,
    pub prompt: Arc<[u32]>,
    /// Seed of the generated tokens (see `tokenizer::generated_token_id`).
    pub output_seed: u64,
    /// Tokens to generate before finishing (≥ 1).
    pub output_len: usize,
    /// Reported when `output_len` tokens exist: `Stop` (natural end) or `Length` (limit hit).
    pub finish_reason: FinishReason,
    pub lora: Option<LoraId>,
    /// The adapter's name (vLLM's `lora_request.lora_name`), for KV events.
    pub lora_name: Option<Arc<str>>,
    /// Extra prefix-cache key (e.g. a hash of `cache_salt`); 0 for none.
    pub cache_salt_key: u64,
    /// Virtual time the request arrived.
    pub arrival: f64,
    /// The request's token limit, for `request_params_max_tokens`.
    pub max_tokens: usize,
    /// The request's `n`, for `request_params_n`.
    pub n: usize,
}

/// One token a step produced for a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenOutput {
    pub id: RequestId,
    /// 0-based index among the request's generated tokens.
    pub index: usize,
    /// Virtual seconds since the request's previous token; `None` for the first token.
    pub since_previous: Option<f64>,
    pub finish: Option<FinishReason>,
}

/// Timings and sizes of a request that left the engine, for the latency histograms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinishedRequest {
    pub id: RequestId,
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub max_tokens: usize,
    pub n: usize,
    pub arrival: f64,
    pub first_scheduled: Option<f64>,
    pub first_token: Option<f64>,
    pub finished: f64,
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutcome {
    pub start: f64,
    pub duration: f64,
    pub tokens: Vec<TokenOutput>,
    pub finished: Vec<FinishedRequest>,
    pub scheduled_tokens: usize,
    pub scheduled_seqs: usize,
    /// Requests whose first token this step produced, with their prompt lengths.
    pub first_tokens_prompt_len: usize,
    pub preemptions: usize,
    /// Distinct adapters in the step's batch.
    pub loras_in_step: usize,
}

/// Cumulative counters behind the `_total` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineCounters {
    pub preemptions: u64,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub steps: u64,
}

/// The engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    step_model: StepTimeModel,
    kv: KvCache,
    loras: LoraResidency,
    sequences: HashMap<RequestId, Sequence>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    counters: EngineCounters,
    /// Engine-loop stalls (adapter loads) to add to the next step.
    pending_stall: f64,
}

impl Engine {
    pub fn new(config: EngineConfig, step_model: StepTimeModel, lora_costs: LoraCosts) -> Self {
        Engine {
            kv: KvCache::new(
                config.num_gpu_blocks,
                config.block_size,
                config.enable_prefix_caching,
            ),
            loras: LoraResidency::new(config.max_loras, config.max_cpu_loras, lora_costs),
            config,
            step_model,
            sequences: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            counters: EngineCounters::default(),
            pending_stall: 0.0,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn kv_cache(&self) -> &KvCache {
        &self.kv
    }

    /// `POST /reset_prefix_cache`: forget the prefix cache if no request holds blocks.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.kv.reset_prefix_cache()
    }

    /// Log KV-cache events (vLLM's `--kv-events-config`), collected by [`Engine::take_kv_events`].
    pub fn enable_kv_events(&mut self) {
        self.kv.enable_events();
    }

    /// The KV-cache events since the last call: what vLLM publishes as one batch per step.
    pub fn take_kv_events(&mut self) -> Vec<kvevents::Event> {
        self.kv.take_events()
    }

    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// Adapter loads since start.
    pub fn lora_loads(&self) -> LoraLoads {
        self.loras.loads()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn contains(&self, id: RequestId) -> bool {
        self.sequences.contains_key(&id)
    }

    /// Adapters of running and of waiting requests (for `lora_requests_info`).
    pub fn lora_sets(&self) -> (Vec<LoraId>, Vec<LoraId>) {
        let collect = |ids: &mut dyn Iterator<Item = &RequestId>| {
            let mut loras: Vec<LoraId> = ids
                .filter_map(|id| self.sequences.get(id).and_then(|s| s.lora))
                .collect();
            loras.sort_unstable();
            loras.dedup();
            loras
        };
        (
            collect(&mut self.running.iter()),
            collect(&mut self.waiting.iter()),
        )
    }

    /// Queues a request (FCFS).
    pub fn add_request(&mut self, request: NewRequest) {
        let sequence = Sequence {
            id: request.id,
            prompt: request.prompt,
            output_seed: request.output_seed,
            output_len: request.output_len.max(1),
            finish_reason: request.finish_reason,
            lora: request.lora,
            lora_name: request.lora_name,
            extra_key: request.cache_salt_key ^ u64::from(request.lora.unwrap_or(0)),
            max_tokens: request.max_tokens,
            n: request.n,
            num_computed: 0,
            num_output: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            num_registered_blocks: 0,
            arrival: request.arrival,
            first_scheduled: None,
            first_token: None,
            last_token: request.arrival,
            preemptions: 0,
        };
        self.waiting.push_back(sequence.id);
        self.sequences.insert(sequence.id, sequence);
    }

    /// Removes a request wherever it is, freeing its blocks. `None` if it is unknown.
    pub fn abort(&mut self, id: RequestId, now: f64) -> Option<FinishedRequest> {
        let sequence = self.sequences.remove(&id)?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&r| r != id);
        self.kv.free_blocks(&sequence.blocks);
        Some(finished_record(&sequence, FinishReason::Abort, now))
    }

    /// Loads an adapter into the CPU cache; the load stalls the next step.
    pub fn preload_lora(&mut self, id: LoraId) {
        self.pending_stall += self.loras.preload(id);
    }

    pub fn remove_lora(&mut self, id: LoraId) {
        self.loras.remove(id);
    }

    /// Runs one scheduler iteration starting at virtual time `now`.
    pub fn step(&mut self, now: f64) -> StepOutcome {
        let mut budget = self.config.max_num_batched_tokens;
        // (request, tokens computed before this step, new tokens)
        let mut scheduled: Vec<(RequestId, usize, usize)> = Vec::with_capacity(self.running.len());
        let mut preemptions = 0;

        let mut index = 0;
        while index < self.running.len() && budget > 0 {
            let id = self.running[index];
            let sequence = &self.sequences[&id];
            let computed = sequence.num_computed;
            let new_tokens = (sequence.total_tokens() - computed).min(budget);
            let needed = self.kv.blocks_for(computed + new_tokens) - sequence.blocks.len();
            let mut scheduled_self = true;
            while self.kv.num_free() < needed {
                let victim = self.running.pop().unwrap_or(id);
                self.preempt(victim);
                preemptions += 1;
                if victim == id {
                    scheduled_self = false;
                    break;
                }
            }
            if !scheduled_self {
                break;
            }
            self.allocate_blocks(id, needed);
            scheduled.push((id, computed, new_tokens));
            budget -= new_tokens;
            index += 1;
        }

        if preemptions == 0 {
            self.admit_waiting(now, &mut budget, &mut scheduled);
        }
        self.counters.preemptions += preemptions as u64;

        let mut work = StepWork::default();
        let mut batch_loras: Vec<LoraId> = Vec::new();
        for &(id, computed, new_tokens) in &scheduled {
            let sequence = &self.sequences[&id];
            let samples = computed + new_tokens == sequence.total_tokens();
            work.add_sequence(computed, new_tokens, samples);
            if let Some(lora) = sequence.lora
                && !batch_loras.contains(&lora)
            {
                batch_loras.push(lora);
            }
        }
        work.uses_lora = !batch_loras.is_empty();
        let lora_seconds = self.loras.activate_batch(&batch_loras);
        let duration = self.step_model.step_seconds(&work)
            + lora_seconds
            + std::mem::take(&mut self.pending_stall);
        let end = now + duration;

        let mut outcome = StepOutcome {
            start: now,
            duration,
            scheduled_tokens: self.config.max_num_batched_tokens - budget,
            scheduled_seqs: scheduled.len(),
            preemptions,
            loras_in_step: batch_loras.len(),
            ..StepOutcome::default()
        };
        self.apply_step(&scheduled, end, &mut outcome);
        self.counters.steps += 1;
        outcome
    }

    fn admit_waiting(
        &mut self,
        now: f64,
        budget: &mut usize,
        scheduled: &mut Vec<(RequestId, usize, usize)>,
    ) {
        let block_size = self.config.block_size;
        let mut step_loras: Vec<LoraId> = self
            .running
            .iter()
            .filter_map(|id| self.sequences[id].lora)
            .collect();
        step_loras.sort_unstable();
        step_loras.dedup();
        let mut skipped: VecDeque<RequestId> = VecDeque::new();

        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            let Some(sequence) = self.sequences.get_mut(&id) else {
                continue;
            };
            if let Some(lora) = sequence.lora
                && step_loras.len() >= self.config.max_loras
                && !step_loras.contains(&lora)
            {
                skipped.push_back(id);
                continue;
            }
            sequence.ensure_hashes(block_size);
            let total = sequence.total_tokens();
            let max_hit_blocks = (total - 1) / block_size;
            let hits: Vec<_> = sequence.hashes[..max_hit_blocks]
                .iter()
                .map_while(|&hash| self.kv.lookup(hash))
                .collect();
            let hit_tokens = hits.len() * block_size;
            let new_tokens = (total - hit_tokens).min(*budget);
            let needed = self.kv.blocks_for(hit_tokens + new_tokens) - hits.len();
            let hits_free = hits.iter().filter(|&&b| self.kv.is_free(b)).count();
            if needed + hits_free > self.kv.num_free() {
                self.waiting.push_front(id);
                break;
            }
            for &block in &hits {
                self.kv.touch(block);
            }
            sequence.blocks = hits;
            sequence.num_computed = hit_tokens;
            sequence.num_registered_blocks = sequence.blocks.len();
            sequence.first_scheduled.get_or_insert(now);
            if let Some(lora) = sequence.lora
                && !step_loras.contains(&lora)
            {
                step_loras.push(lora);
            }
            self.counters.prefix_queries += total as u64;
            self.counters.prefix_hits += hit_tokens as u64;
            self.allocate_blocks(id, needed);
            self.running.push(id);
            scheduled.push((id, hit_tokens, new_tokens));
            *budget -= new_tokens;
        }
        while let Some(id) = skipped.pop_back() {
            self.waiting.push_front(id);
        }
    }

    fn allocate_blocks(&mut self, id: RequestId, count: usize) {
        let Some(sequence) = self.sequences.get_mut(&id) else {
            return;
        };
        for _ in 0..count {
            match self.kv.allocate() {
                Some(block) => sequence.blocks.push(block),
                None => unreachable!("free blocks were checked before allocating"),
            }
        }
    }

    fn preempt(&mut self, id: RequestId) {
        let Some(sequence) = self.sequences.get_mut(&id) else {
            return;
        };
        self.kv.free_blocks(&sequence.blocks);
        sequence.blocks.clear();
        sequence.num_computed = 0;
        sequence.num_registered_blocks = 0;
        sequence.preemptions += 1;
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
    }

    fn apply_step(
        &mut self,
        scheduled: &[(RequestId, usize, usize)],
        end: f64,
        outcome: &mut StepOutcome,
    ) {
        let block_size = self.config.block_size;
        let mut finished_ids = Vec::new();
        for &(id, _, new_tokens) in scheduled {
            let Some(sequence) = self.sequences.get_mut(&id) else {
                continue;
            };
            sequence.num_computed += new_tokens;
            // The computed blocks enter the prefix cache in the step that computed them, whether or
            // not the request finishes in it (vLLM caches them when it schedules the step).
            if self.kv.prefix_caching() {
                let full = sequence.num_computed / block_size;
                if full > sequence.num_registered_blocks {
                    sequence.ensure_hashes(block_size);
                    let first = sequence.num_registered_blocks;
                    for block in first..full {
                        self.kv
                            .cache_full_block(sequence.blocks[block], sequence.hashes[block]);
                    }
                    if self.kv.events_enabled() {
                        // One event per registration, as vLLM's `cache_full_blocks` sends.
                        let stored = kvevents::BlockStored {
                            block_hashes: sequence.hashes[first..full].to_vec(),
                            parent_block_hash: first.checked_sub(1).map(|p| sequence.hashes[p]),
                            token_ids: (first * block_size..full * block_size)
                                .map(|position| sequence.token_at(position))
                                .collect(),
                            block_size: block_size as u32,
                            lora_id: sequence.lora.map(i64::from),
                            medium: Some(kvevents::Medium::Gpu),
                            lora_name: sequence.lora_name.as_deref().map(str::to_owned),
                            group_idx: None,
                        };
                        self.kv.log_event(kvevents::Event::BlockStored(stored));
                    }
                    sequence.num_registered_blocks = full;
                }
            }
            if sequence.num_computed == sequence.total_tokens() {
                let index = sequence.num_output;
                sequence.num_output += 1;
                let since_previous = if index == 0 {
                    sequence.first_token = Some(end);
                    self.counters.prompt_tokens += sequence.prompt_len() as u64;
                    outcome.first_tokens_prompt_len += sequence.prompt_len();
                    None
                } else {
                    Some(end - sequence.last_token)
                };
                sequence.last_token = end;
                self.counters.generation_tokens += 1;
                let finish =
                    (sequence.num_output >= sequence.output_len).then_some(sequence.finish_reason);
                outcome.tokens.push(TokenOutput {
                    id,
                    index,
                    since_previous,
                    finish,
                });
                if let Some(reason) = finish {
                    outcome
                        .finished
                        .push(finished_record(sequence, reason, end));
                    finished_ids.push(id);
                }
            }
        }
        if !finished_ids.is_empty() {
            for id in &finished_ids {
                if let Some(sequence) = self.sequences.remove(id) {
                    self.kv.free_blocks(&sequence.blocks);
                }
            }
            self.running.retain(|id| !finished_ids.contains(id));
        }
    }

    /// Checks the engine's structural invariants; used by tests after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut refs = vec![0u32; self.kv.num_blocks()];
        for sequence in self.sequences.values() {
            if sequence.blocks.len() < self.kv.blocks_for(sequence.num_computed) {
                return Err(format!("request {} lacks blocks for its KV", sequence.id));
            }
            for &block in &sequence.blocks {
                refs[block as usize] += 1;
            }
        }
        let mut free = 0;
        for (block, &count) in refs.iter().enumerate().skip(1) {
            if count != self.kv.ref_count(block as u32) {
                return Err(format!("block {block} ref count mismatch"));
            }
            free += usize::from(count == 0);
        }
        if free != self.kv.num_free() {
            return Err(format!(
                "free count {} but {} unreferenced",
                self.kv.num_free(),
                free
            ));
        }
        if self.running.len() > self.config.max_num_seqs {
            return Err("running exceeds max_num_seqs".into());
        }
        if self.running.len() + self.waiting.len() != self.sequences.len() {
            return Err("a request is lost or listed twice".into());
        }
        let (running_loras, _) = self.lora_sets();
        if running_loras.len() > self.config.max_loras {
            return Err(format!("{} adapters running", running_loras.len()));
        }
        Ok(())
    }
}

fn finished_record(sequence: &Sequence, reason: FinishReason, now: f64) -> FinishedRequest {
    FinishedRequest {
        id: sequence.id,
        reason,
        prompt_tokens: sequence.prompt_len(),
        output_tokens: sequence.num_output,
        max_tokens: sequence.max_tokens,
        n: sequence.n,
        arrival: sequence.arrival,
        first_scheduled: sequence.first_scheduled,
        first_token: sequence.first_token,
        finished: now,
    }
}
