//! Engine invariants, driven on a virtual clock: no wall time, no sleeps.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::sim::profile::Profile;
use crate::sim::tokenizer::prompt_with_exact_tokens;
use crate::sim::tokenizer::tokenize;

fn config(num_gpu_blocks: usize) -> EngineConfig {
    EngineConfig {
        max_num_seqs: 256,
        max_num_batched_tokens: 2048,
        block_size: 16,
        num_gpu_blocks,
        max_model_len: 32_768,
        max_loras: 2,
        max_cpu_loras: 4,
        enable_prefix_caching: true,
    }
}

fn engine(config: EngineConfig) -> Engine {
    let profile = Profile::by_name("a10-qwen2.5-7b").unwrap();
    Engine::new(config, profile.step_model(false), profile.lora)
}

fn request(id: RequestId, prompt: Vec<u32>, output_len: usize, lora: Option<LoraId>) -> NewRequest {
    NewRequest {
        id,
        prompt: Arc::from(prompt),
        output_seed: id,
        output_len,
        finish_reason: FinishReason::Length,
        lora,
        lora_name: lora.map(|id| Arc::from(format!("adapter-{id}"))),
        cache_salt_key: 0,
        arrival: 0.0,
        max_tokens: output_len,
        n: 1,
    }
}

fn distinct_prompt(id: RequestId, tokens: usize) -> Vec<u32> {
    tokenize(&prompt_with_exact_tokens(tokens, 1_000 + id))
}

/// Steps until idle (bounded), checking invariants after every step; returns tokens per request
/// in order of emission and the virtual end time.
fn run_to_completion(engine: &mut Engine, mut now: f64) -> (HashMap<RequestId, Vec<usize>>, f64) {
    let mut tokens: HashMap<RequestId, Vec<usize>> = HashMap::new();
    for _ in 0..100_000 {
        if !engine.has_work() {
            return (tokens, now);
        }
        let outcome = engine.step(now);
        engine.check_invariants().unwrap();
        assert!(outcome.loras_in_step <= engine.config().max_loras);
        for token in &outcome.tokens {
            tokens.entry(token.id).or_default().push(token.index);
        }
        now += outcome.duration;
    }
    panic!("engine did not drain");
}

#[test]
fn a_single_request_prefills_then_decodes_one_token_per_step() {
    let mut engine = engine(config(1_000));
    engine.add_request(request(1, distinct_prompt(1, 1024), 4, None));
    let first = engine.step(0.0);
    assert_eq!(first.scheduled_tokens, 1024);
    assert_eq!(first.tokens.len(), 1);
    assert!(
        (first.duration - 0.2215).abs() < 0.005,
        "{}",
        first.duration
    );
    let second = engine.step(first.duration);
    assert_eq!(second.scheduled_tokens, 1);
    assert!(
        (second.duration - 0.0298).abs() < 0.001,
        "{}",
        second.duration
    );
    let gap = second.tokens[0].since_previous.unwrap();
    assert!((gap - second.duration).abs() < 1e-12);
}

#[test]
fn long_prompts_are_chunked_by_the_token_budget() {
    let mut engine = engine(config(2_000));
    engine.add_request(request(1, distinct_prompt(1, 5_000), 2, None));
    let chunks: Vec<usize> = (0..3).map(|_| engine.step(0.0).scheduled_tokens).collect();
    assert_eq!(chunks, [2048, 2048, 904]);
}

#[test]
fn preempted_request_resumes_and_completes_with_the_right_token_count() {
    // 40 usable blocks (640 tokens); three requests of 200 + 150 tokens need 66 blocks at peak.
    let mut engine = engine(config(41));
    for id in 1..=3 {
        engine.add_request(request(id, distinct_prompt(id, 200), 150, None));
    }
    let (tokens, _) = run_to_completion(&mut engine, 0.0);
    assert!(
        engine.counters().preemptions > 0,
        "the test must force a preemption"
    );
    for id in 1..=3 {
        assert_eq!(tokens[&id], (0..150).collect::<Vec<_>>(), "request {id}");
    }
    assert_eq!(
        engine.kv_cache().num_free(),
        engine.kv_cache().usable_blocks()
    );
}

#[test]
fn resumed_requests_hit_their_own_cached_blocks() {
    let mut engine = engine(config(41));
    for id in 1..=3 {
        engine.add_request(request(id, distinct_prompt(id, 200), 150, None));
    }
    run_to_completion(&mut engine, 0.0);
    assert!(engine.counters().prefix_hits > 0);
}

#[test]
fn waiting_requests_are_admitted_fcfs_when_blocks_run_out() {
    // Room for one 500-token prompt at a time (40 usable blocks = 640 tokens).
    let mut engine = engine(config(41));
    for id in 1..=3 {
        engine.add_request(request(id, distinct_prompt(id, 500), 2, None));
    }
    let mut order = Vec::new();
    let mut now = 0.0;
    while engine.has_work() {
        let outcome = engine.step(now);
        now += outcome.duration;
        order.extend(outcome.finished.iter().map(|f| f.id));
    }
    assert_eq!(order, [1, 2, 3]);
}

#[test]
fn abort_frees_blocks_and_reports_abort() {
    let mut engine = engine(config(100));
    engine.add_request(request(1, distinct_prompt(1, 300), 50, None));
    engine.step(0.0);
    let record = engine.abort(1, 1.0).unwrap();
    assert_eq!(record.reason, FinishReason::Abort);
    assert_eq!(record.output_tokens, 1);
    assert_eq!(
        engine.kv_cache().num_free(),
        engine.kv_cache().usable_blocks()
    );
    assert!(!engine.has_work());
    engine.check_invariants().unwrap();
}

#[test]
fn lora_requests_beyond_max_loras_wait_for_a_slot() {
    let mut engine = engine(config(1_000));
    for (id, lora) in [(1, 1), (2, 2), (3, 3), (4, 1)] {
        engine.add_request(request(id, distinct_prompt(id, 32), 5, Some(lora)));
    }
    let first = engine.step(0.0);
    let scheduled: Vec<RequestId> = {
        let mut ids: Vec<_> = first.tokens.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids
    };
    // Adapter 3 would be a third adapter in the step; request 4 (adapter 1) is admitted past it.
    assert_eq!(scheduled, [1, 2, 4]);
    assert_eq!(first.loras_in_step, 2);
    assert_eq!(engine.num_waiting(), 1);
    let (tokens, _) = run_to_completion(&mut engine, first.duration);
    assert_eq!(tokens[&3].len(), 5);
}

#[test]
fn cold_adapters_pay_their_load_time() {
    let mut warm = engine(config(1_000));
    warm.add_request(request(1, distinct_prompt(1, 16), 2, None));
    let base = warm.step(0.0).duration;
    let mut cold = engine(config(1_000));
    cold.add_request(request(1, distinct_prompt(1, 16), 2, Some(7)));
    let with_lora = cold.step(0.0).duration;
    let costs = Profile::by_name("a10-qwen2.5-7b").unwrap().lora;
    let expected = 1.5e-3
        + (base - 1.5e-3) * (1.0 + costs.step_penalty_fraction)
        + costs.disk_load_seconds
        + costs.activate_seconds;
    assert!((with_lora - expected).abs() < 1e-9);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Blocks are never over-allocated, every request gets exactly its tokens, adapters per step
    /// never exceed max_loras, and the cache drains back to empty.
    #[test]
    fn random_workloads_keep_the_invariants(
        requests in prop::collection::vec((1usize..400, 1usize..120, 0u32..5, any::<bool>()), 1..24),
        blocks in 30usize..120,
        budget in 64usize..2048,
        max_seqs in 1usize..32,
    ) {
        let mut cfg = config(blocks);
        cfg.max_num_batched_tokens = budget;
        cfg.max_num_seqs = max_seqs;
        let capacity = (blocks - 1) * cfg.block_size;
        let mut engine = engine(cfg);
        let mut expected = HashMap::new();
        for (index, (prompt_len, output_len, lora, shared)) in requests.into_iter().enumerate() {
            let id = index as RequestId + 1;
            let prompt_len = prompt_len.min(capacity / 2);
            let output_len = output_len.min(capacity - prompt_len).max(1);
            // Half the requests share a common prefix so prefix caching is exercised too.
            let seed = if shared { 7 } else { 1_000 + id };
            let prompt = tokenize(&prompt_with_exact_tokens(prompt_len, seed));
            let lora = (lora > 0).then_some(lora);
            engine.add_request(request(id, prompt, output_len, lora));
            expected.insert(id, output_len);
        }
        let (tokens, _) = run_to_completion(&mut engine, 0.0);
        for (id, output_len) in expected {
            prop_assert_eq!(&tokens[&id], &(0..output_len).collect::<Vec<_>>());
        }
        prop_assert_eq!(engine.kv_cache().num_free(), engine.kv_cache().usable_blocks());
    }

    /// A second request sharing the first P tokens hits exactly the shared full blocks.
    #[test]
    fn prefix_hits_equal_the_shared_full_blocks(shared in 0usize..600, tail_a in 1usize..100, tail_b in 1usize..100) {
        let common = tokenize(&prompt_with_exact_tokens(shared, 42));
        let mut first = common.clone();
        first.extend(tokenize(&prompt_with_exact_tokens(tail_a, 1)));
        let mut second = common.clone();
        second.extend(tokenize(&prompt_with_exact_tokens(tail_b, 2)));
        let mut engine = engine(config(1_000));
        engine.add_request(request(1, first, 3, None));
        let (_, now) = run_to_completion(&mut engine, 0.0);
        let before = engine.counters();
        engine.add_request(request(2, second.clone(), 3, None));
        engine.step(now);
        let hits = engine.counters().prefix_hits - before.prefix_hits;
        let queries = engine.counters().prefix_queries - before.prefix_queries;
        // Full shared blocks, but never the block holding the last prompt token.
        let expected = (shared / 16).min((second.len() - 1) / 16) * 16;
        prop_assert_eq!(hits as usize, expected);
        prop_assert_eq!(queries as usize, second.len());
    }
}

#[test]
fn a_request_that_finishes_in_its_prefill_step_still_caches_its_prompt() {
    let mut engine = engine(config(1_000));
    engine.enable_kv_events();
    let prompt = distinct_prompt(7, 100);
    engine.add_request(request(1, prompt.clone(), 1, None));
    run_to_completion(&mut engine, 0.0);
    // Six full blocks of the 100 tokens were stored, in one event.
    let events = engine.take_kv_events();
    let [kvevents::Event::BlockStored(stored)] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert_eq!(stored.block_hashes.len(), 6);
    assert_eq!(stored.token_ids[..], prompt[..96]);
    let before = engine.counters();
    engine.add_request(request(2, prompt, 1, None));
    run_to_completion(&mut engine, 1.0);
    assert_eq!(engine.counters().prefix_hits - before.prefix_hits, 96);
    assert!(
        engine.take_kv_events().is_empty(),
        "a cache hit stores nothing new"
    );
}

#[test]
fn a_prefix_cache_reset_waits_for_free_blocks_and_clears_every_hash() {
    let mut engine = engine(config(1_000));
    engine.enable_kv_events();
    let prompt = distinct_prompt(9, 64);
    engine.add_request(request(1, prompt.clone(), 3, None));
    engine.step(0.0);
    assert!(
        !engine.reset_prefix_cache(),
        "a running request holds blocks"
    );
    run_to_completion(&mut engine, 1.0);
    engine.take_kv_events();
    assert!(engine.reset_prefix_cache());
    assert_eq!(
        engine.take_kv_events(),
        vec![kvevents::Event::AllBlocksCleared]
    );
    assert_eq!(engine.kv_cache().num_cached(), 0);
    let before = engine.counters();
    engine.add_request(request(2, prompt, 1, None));
    run_to_completion(&mut engine, 2.0);
    assert_eq!(
        engine.counters().prefix_hits,
        before.prefix_hits,
        "nothing to hit"
    );
}
