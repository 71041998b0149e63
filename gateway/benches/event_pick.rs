//! The whole PREFIX_CACHE pick when the pool publishes KV-cache events, against the same pick
//! without them, at 64 endpoints with a 32,768-token prompt.
//!
//! With events, one iteration is what the gateway does per request (`KvEvents::prompt_keys`,
//! `KvEvents::cached` and `pick_with` in `proxy/decide/pool.rs`): the prompt's 2,048 block keys
//! (16-token blocks), the prefix match under a read lock of an index of 64 endpoints holding
//! 5,500 blocks each (eight of them holding 256 to 2,048 leading blocks of the prompt), each
//! endpoint's slot and arrival flag looked up, the views built with their
//! [`plugins::CachedPrefix`], and the strategy's pick (which still hashes the prompt text for its
//! own estimate). Without events, the views are built with no cached prefix and picked: the
//! baseline. Tokenizing the prompt (a call to the model server) is outside both.
//!
//! Criterion measures the means; after it, a loop of single picks prints p50/p99/max for each.
//!
//! `cargo bench -p inference-gateway --bench event_pick`

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::Criterion;
use kvevents::{BlockIndex, BlockStored, EndpointSlot, Event, Medium, prompt_keys};
use parking_lot::RwLock;
use plugins::strategies::prefix_cache::PrefixCache;
use plugins::{
    CachedPrefix, Completion, DispatchedLoad, EndpointId, EndpointMetrics, EndpointView, Outcome,
    PoolView, RequestView, Strategy, StrategyConfig,
};

const BLOCK: usize = 16;
const ENDPOINTS: usize = 64;
/// An A10 pod's KV cache for a 7B model, in 16-token blocks.
const BLOCKS_PER_ENDPOINT: usize = 5_500;
const PROMPT_TOKENS: usize = 32_768;
/// Endpoints holding a leading part of the prompt: endpoint `i` holds `256 × (i + 1)` blocks.
const HOLDING: usize = 8;
/// Single picks timed for the percentiles.
const SAMPLES: usize = 10_000;

/// The prompt's token ids, as the model server's `/tokenize` would return them.
fn prompt_tokens() -> Vec<u32> {
    (0..PROMPT_TOKENS as u32)
        .map(|t| t.wrapping_mul(2_654_435_761) % 151_000)
        .collect()
}

/// The same prompt as the text the strategy hashes: about four bytes a token.
fn prompt_text() -> String {
    let mut text = String::with_capacity(PROMPT_TOKENS * 4 + 64);
    while text.len() < PROMPT_TOKENS * 4 {
        text.push_str(
            "The quarterly report covers revenue, margins and the outlook for next year. ",
        );
    }
    text.truncate(PROMPT_TOKENS * 4);
    text.push_str(" Question: what changed?");
    text
}

fn stored(hashes: Vec<u64>, tokens: &[u32]) -> Event {
    Event::BlockStored(BlockStored {
        block_hashes: hashes,
        parent_block_hash: None,
        token_ids: tokens.to_vec(),
        block_size: BLOCK as u32,
        medium: Some(Medium::Gpu),
        ..BlockStored::default()
    })
}

/// Every endpoint's cache full of other prompts (64 blocks each), then the first [`HOLDING`]
/// endpoints storing a leading part of `tokens`.
fn loaded_index(tokens: &[u32]) -> BlockIndex {
    let mut index = BlockIndex::new(ENDPOINTS * BLOCKS_PER_ENDPOINT);
    for slot in 0..ENDPOINTS as EndpointSlot {
        let other: Vec<u32> = (0..(BLOCKS_PER_ENDPOINT * BLOCK) as u32)
            .map(|t| t ^ (slot << 24) ^ 0x5a5a)
            .collect();
        for (n, chunk) in other.chunks(64 * BLOCK).enumerate() {
            let hashes = (0..(chunk.len() / BLOCK) as u64)
                .map(|i| (1 << 62) | (u64::from(slot) << 40) | (n as u64) << 8 | i)
                .collect();
            index.apply(slot, &stored(hashes, chunk));
        }
    }
    for slot in 0..HOLDING as EndpointSlot {
        let blocks = 256 * (slot as usize + 1);
        let hashes = (0..blocks as u64)
            .map(|i| (u64::from(slot) << 40) | i)
            .collect();
        index.apply(slot, &stored(hashes, &tokens[..blocks * BLOCK]));
    }
    index
}

/// What the gateway holds for the pool's events: the index behind the subscriber's lock, each
/// address's slot (swapped in on reconcile) and whether that slot's batches are arriving.
struct Events {
    index: RwLock<BlockIndex>,
    slots: ArcSwap<HashMap<SocketAddr, EndpointSlot>>,
    receiving: RwLock<HashMap<EndpointSlot, AtomicBool>>,
}

impl Events {
    fn new(index: BlockIndex, ids: &[EndpointId]) -> Self {
        let slots = ids
            .iter()
            .enumerate()
            .map(|(slot, id)| (id.address(), slot as EndpointSlot))
            .collect();
        let receiving = (0..ids.len() as EndpointSlot)
            .map(|slot| (slot, AtomicBool::new(true)))
            .collect();
        Self {
            index: RwLock::new(index),
            slots: ArcSwap::from_pointee(slots),
            receiving: RwLock::new(receiving),
        }
    }

    /// What each of `ids` holds of the prompt `tokens`, in pool order (`KvEvents::prompt_keys`
    /// and `KvEvents::cached` for a pool of one block size).
    fn cached(&self, tokens: &[u32], ids: &[EndpointId]) -> Vec<Option<CachedPrefix>> {
        let keys = prompt_keys(tokens, BLOCK, None);
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        let slots = self.slots.load();
        let index = self.index.read();
        let matches = index.prefix_matches(&keys);
        ids.iter()
            .map(|id| {
                let slot = *slots.get(&id.address())?;
                let receiving = self
                    .receiving
                    .read()
                    .get(&slot)
                    .is_some_and(|flag| flag.load(Ordering::Relaxed));
                if !receiving {
                    return None;
                }
                let held = index.block_size(slot).and_then(|size| {
                    let found = matches.iter().find(|m| m.endpoint == slot)?;
                    let tokens = |blocks: usize| {
                        u32::try_from(blocks as u64 * u64::from(size))
                            .unwrap_or(u32::MAX)
                            .min(prompt_tokens)
                    };
                    Some(CachedPrefix {
                        gpu_tokens: tokens(found.gpu),
                        total_tokens: tokens(found.total),
                        prompt_tokens,
                    })
                });
                Some(held.unwrap_or(CachedPrefix {
                    prompt_tokens,
                    ..CachedPrefix::default()
                }))
            })
            .collect()
    }
}

struct Pool {
    ids: Vec<EndpointId>,
    metrics: Vec<EndpointMetrics>,
}

impl Pool {
    /// A quiet pool: short queues, KV usage from 10% to 55%.
    fn new() -> Self {
        let ids = (0..ENDPOINTS)
            .map(|i| {
                let address = SocketAddr::from(([10, 0, i as u8, 1], 8000));
                EndpointId::new(address, format!("pod-{i}"))
            })
            .collect();
        let metrics = (0..ENDPOINTS)
            .map(|i| EndpointMetrics {
                waiting: 0,
                running: (i % 4) as u32,
                kv_usage: 0.1 + (i % 10) as f64 / 20.0,
                lora: None,
                block_size: Some(BLOCK as u32),
                num_blocks: Some(BLOCKS_PER_ENDPOINT as u64),
                model_name: Some("base".into()),
            })
            .collect();
        Self { ids, metrics }
    }

    /// The views the gateway builds per request, each with what its endpoint holds.
    fn views(&self, cached: &[Option<CachedPrefix>]) -> Vec<EndpointView<'_>> {
        self.ids
            .iter()
            .zip(&self.metrics)
            .zip(cached)
            .enumerate()
            .map(|(i, ((id, metrics), &cached_prefix))| EndpointView {
                id,
                metrics: Some(metrics),
                metrics_age: Some(Duration::from_millis(20)),
                in_flight: (i % 3) as u32,
                in_flight_tokens: 0,
                in_flight_prefill: (i % 2) as u32,
                in_flight_prefill_tokens: (i % 2) as u64 * 1_000,
                in_flight_output_tokens: (i % 3) as u64 * 256,
                prefill_elapsed: Duration::ZERO,
                dispatched_since_scrape: 0,
                cached_prefix,
            })
            .collect()
    }
}

fn request<'a>(prompt: &'a str, headers: &'a http::HeaderMap) -> RequestView<'a> {
    RequestView {
        request_id: "bench",
        model: "base",
        target_model: "base",
        priority: 0,
        prompt: Some(prompt),
        prompt_tokens: PROMPT_TOKENS as u32,
        max_tokens: Some(128),
        stream: true,
        headers,
    }
}

/// A strategy that has seen one streamed completion per endpoint (so the cost model has learned
/// state for each) and has sent this prompt once, to endpoint 0.
fn strategy(pool: &Pool, prompt: &RequestView<'_>) -> PrefixCache {
    let strategy = PrefixCache::from_config(&StrategyConfig::new()).unwrap();
    for (i, id) in pool.ids.iter().enumerate() {
        strategy.on_completed(&Completion {
            endpoint: id,
            target_model: "base",
            outcome: Outcome::Completed,
            status: Some(200),
            time_to_first_byte: Some(Duration::from_millis(200 + i as u64)),
            time_to_first_token: Some(Duration::from_millis(200 + i as u64)),
            duration: Duration::from_secs(3),
            prompt_tokens: 1_000,
            completion_tokens: Some(128),
            prefill_tokens: 1_000,
            at_dispatch: DispatchedLoad {
                in_flight: 1,
                in_flight_prefill: 1,
                in_flight_prefill_tokens: 500,
                prefill_elapsed: Duration::from_millis(40),
                running: Some((i % 4) as u32),
            },
        });
    }
    let views = pool.views(&vec![None; ENDPOINTS]);
    strategy.on_dispatched(prompt, &views[0]);
    strategy
}

/// The whole pick with the event index: keys, match, views, pick.
fn pick_with_events(
    strategy: &PrefixCache,
    request: &RequestView<'_>,
    pool: &Pool,
    events: &Events,
    tokens: &[u32],
) -> usize {
    let cached = events.cached(tokens, &pool.ids);
    let views = pool.views(&cached);
    let pool_view = PoolView {
        name: "bench",
        endpoints: &views,
    };
    strategy.pick(request, &pool_view).unwrap().first().unwrap()
}

/// The same pick with no events: views without a cached prefix, pick.
fn pick_without_events(strategy: &PrefixCache, request: &RequestView<'_>, pool: &Pool) -> usize {
    let views = pool.views(&[None; ENDPOINTS]);
    let pool_view = PoolView {
        name: "bench",
        endpoints: &views,
    };
    strategy.pick(request, &pool_view).unwrap().first().unwrap()
}

/// p50/p99/max of `SAMPLES` single calls of `operation`, timed one by one.
fn percentiles(name: &str, mut operation: impl FnMut()) {
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        operation();
        samples.push(started.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{name:<48} p50 {:>8.2} µs  p99 {:>8.2} µs  max {:>8.2} µs",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn main() {
    let tokens = prompt_tokens();
    let text = prompt_text();
    let headers = http::HeaderMap::new();
    let request = request(&text, &headers);
    let pool = Pool::new();
    let events = Events::new(loaded_index(&tokens), &pool.ids);
    let with_events = strategy(&pool, &request);
    let without_events = strategy(&pool, &request);

    // The fixture is what it claims: eight endpoints hold part of the prompt, and the one
    // holding all of it is picked with events; without them, the strategy's own record is.
    let cached = events.cached(&tokens, &pool.ids);
    let holding: Vec<u32> = cached.iter().map(|c| c.unwrap().gpu_tokens).collect();
    assert_eq!(
        holding[..HOLDING],
        [4096, 8192, 12288, 16384, 20480, 24576, 28672, 32768]
    );
    assert!(holding[HOLDING..].iter().all(|&t| t == 0));
    assert_eq!(
        pick_with_events(&with_events, &request, &pool, &events, &tokens),
        HOLDING - 1
    );
    assert_eq!(pick_without_events(&without_events, &request, &pool), 0);

    // No plots: the development machine has no fonts for criterion's SVG backend.
    let mut criterion = Criterion::default().without_plots().configure_from_args();
    let mut group = criterion.benchmark_group("prefix-cache-pick/64-endpoints/32k-tokens");
    group.bench_function("keys + match + views + pick (events)", |b| {
        b.iter(|| {
            pick_with_events(
                &with_events,
                black_box(&request),
                &pool,
                &events,
                black_box(&tokens),
            )
        })
    });
    group.bench_function("views + pick (no events)", |b| {
        b.iter(|| pick_without_events(&without_events, black_box(&request), &pool))
    });
    group.finish();
    criterion.final_summary();

    println!("\nsingle-pick latency ({SAMPLES} picks each, 64 endpoints, 32,768-token prompt):");
    percentiles("keys + match + views + pick (events)", || {
        black_box(pick_with_events(
            &with_events,
            black_box(&request),
            &pool,
            &events,
            black_box(&tokens),
        ));
    });
    percentiles("views + pick (no events)", || {
        black_box(pick_without_events(
            &without_events,
            black_box(&request),
            &pool,
        ));
    });
}
