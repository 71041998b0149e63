//! What the KV-event index costs on the request path and on the subscriber thread.
//!
//! - a 32,768-token prompt's 2,048 block keys (16-token blocks), and the prefix match of those
//!   keys against an index of 64 endpoints holding 5,500 blocks each (an A10 pod's cache), eight
//!   of them sharing a prefix of the prompt at different depths;
//! - one typical batch decoded and applied (a step that filled one block of a request and evicted
//!   one): what the subscriber does per batch, times the batches per second it receives.
//!
//! Criterion measures the means; after it, a loop of single operations prints p50/p99/max.
//!
//! `cargo bench -p inference-gateway-kvevents --bench index`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use kvevents::{
    BlockIndex, BlockRemoved, BlockStored, Event, EventBatch, Layout, Medium, decode_batch,
    encode_batch, prompt_keys,
};

const BLOCK: usize = 16;
const ENDPOINTS: u32 = 64;
const BLOCKS_PER_ENDPOINT: usize = 5_500;
const PROMPT_TOKENS: usize = 32_768;

fn prompt() -> Vec<u32> {
    (0..PROMPT_TOKENS as u32)
        .map(|t| t.wrapping_mul(2_654_435_761) % 151_000)
        .collect()
}

/// Blocks of the prompt from `from` to `to`, stored on `endpoint` with engine hashes of its own.
fn store(index: &mut BlockIndex, endpoint: u32, tokens: &[u32], to: usize) {
    let event = Event::BlockStored(BlockStored {
        block_hashes: (0..to as u64)
            .map(|i| (u64::from(endpoint) << 40) | i)
            .collect(),
        parent_block_hash: None,
        token_ids: tokens[..to * BLOCK].to_vec(),
        block_size: BLOCK as u32,
        medium: Some(Medium::Gpu),
        ..BlockStored::default()
    });
    index.apply(endpoint, &event);
}

fn loaded_index(tokens: &[u32]) -> BlockIndex {
    let mut index = BlockIndex::new(ENDPOINTS as usize * BLOCKS_PER_ENDPOINT);
    for endpoint in 0..ENDPOINTS {
        // Other prompts filling the endpoint's cache, 64 blocks each.
        let other: Vec<u32> = (0..(BLOCKS_PER_ENDPOINT * BLOCK) as u32)
            .map(|t| t ^ (endpoint << 24) ^ 0x5a5a)
            .collect();
        for (n, chunk) in other.chunks(64 * BLOCK).enumerate() {
            let event = Event::BlockStored(BlockStored {
                block_hashes: (0..chunk.len() / BLOCK)
                    .map(|i| (1 << 62) | (u64::from(endpoint) << 40) | (n as u64) << 8 | i as u64)
                    .collect(),
                parent_block_hash: None,
                token_ids: chunk.to_vec(),
                block_size: BLOCK as u32,
                ..BlockStored::default()
            });
            index.apply(endpoint, &event);
        }
    }
    for endpoint in 0..8 {
        store(&mut index, endpoint, tokens, 256 * (endpoint as usize + 1));
    }
    index
}

fn step_batch(n: u64) -> Vec<u8> {
    let batch = EventBatch {
        ts: 1_765_152_000.0 + n as f64,
        events: vec![
            Event::BlockStored(BlockStored {
                block_hashes: vec![n],
                parent_block_hash: Some(n.wrapping_sub(1)),
                token_ids: (0..BLOCK as u32).map(|t| t + n as u32).collect(),
                block_size: BLOCK as u32,
                medium: Some(Medium::Gpu),
                ..BlockStored::default()
            }),
            Event::BlockRemoved(BlockRemoved {
                block_hashes: vec![n.wrapping_sub(5_000)],
                medium: Some(Medium::Gpu),
                group_idx: None,
            }),
        ],
        data_parallel_rank: Some(0),
    };
    encode_batch(&batch, Layout::Map)
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{name:<36} p50 {:>8.2} µs  p99 {:>8.2} µs  max {:>8.2} µs",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn main() {
    let tokens = prompt();
    let index = loaded_index(&tokens);
    let keys = prompt_keys(&tokens, BLOCK, None);
    assert_eq!(keys.len(), PROMPT_TOKENS / BLOCK);
    let matches = index.prefix_matches(&keys);
    assert_eq!(matches.len(), 8, "{matches:?}");
    let payloads: Vec<Vec<u8>> = (0..1_024).map(step_batch).collect();

    let mut criterion = Criterion::default().configure_from_args();
    criterion.bench_function("prompt_keys 32k tokens", |b| {
        b.iter(|| prompt_keys(black_box(&tokens), BLOCK, None))
    });
    criterion.bench_function("prefix_matches 2048 keys, 64 endpoints", |b| {
        b.iter(|| index.prefix_matches(black_box(&keys)))
    });
    criterion.bench_function("keys + match, 32k tokens", |b| {
        b.iter(|| index.prefix_matches(&prompt_keys(black_box(&tokens), BLOCK, None)))
    });
    let mut subscriber_index = loaded_index(&tokens);
    let mut n = 0usize;
    criterion.bench_function("decode + apply one step's batch", |b| {
        b.iter(|| {
            let batch = decode_batch(black_box(&payloads[n % payloads.len()])).unwrap();
            for event in &batch.events {
                subscriber_index.apply(3, event);
            }
            n += 1;
        })
    });
    criterion.final_summary();

    let mut picks = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let started = Instant::now();
        black_box(index.prefix_matches(&prompt_keys(black_box(&tokens), BLOCK, None)));
        picks.push(started.elapsed());
    }
    percentiles("keys + match, 32k tokens, 64 endpoints", picks);
    let mut batches = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let started = Instant::now();
        let batch = decode_batch(&payloads[i % payloads.len()]).unwrap();
        for event in &batch.events {
            subscriber_index.apply(3, event);
        }
        batches.push(started.elapsed());
    }
    percentiles("decode + apply one step's batch", batches);
}
