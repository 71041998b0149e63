//! Pick latency of the built-in strategies at 8, 64 and 512 endpoints with 1k- and 32k-token
//! prompts, prompt hashing and the cost model's predictions included (each strategy has learned
//! one completion per endpoint). Criterion measures the means; after it, a plain loop of single
//! picks prints p50/p99/max per case, which is what the request path feels, and the cost model's
//! prediction alone.
//!
//! `cargo bench -p inference-gateway-plugins --bench pick`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use plugins::cost::{CostModel, CostParams};
use plugins::load::{LoadConfig, loads};
use plugins::{
    Completion, DispatchedLoad, EndpointId, EndpointMetrics, EndpointView, LoraState, Outcome,
    PoolView, Registry, RequestView, Strategy, StrategyConfig,
};

const ENDPOINTS: [usize; 3] = [8, 64, 512];
/// Prompt sizes in tokens (about four bytes of text each).
const PROMPT_TOKENS: [usize; 2] = [1_000, 32_000];
const STRATEGIES: [&str; 3] = ["DEFAULT", "PREFIX_CACHE", "LORA_AFFINITY"];

struct Fixture {
    ids: Vec<EndpointId>,
    metrics: Vec<EndpointMetrics>,
}

impl Fixture {
    fn new(n: usize) -> Self {
        let ids = (0..n)
            .map(|i| {
                let address = SocketAddr::from(([10, (i / 250) as u8, (i % 250) as u8, 1], 8000));
                EndpointId::new(address, format!("pod-{i}"))
            })
            .collect();
        let metrics = (0..n)
            .map(|i| EndpointMetrics {
                waiting: (i % 7) as u32,
                running: 20 + (i % 13) as u32,
                kv_usage: 0.2 + (i % 10) as f64 / 20.0,
                lora: Some(LoraState {
                    max_loras: 2,
                    running: vec![format!("adapter-{}", i % 8)],
                    waiting: vec![],
                }),
                block_size: Some(16),
                num_blocks: Some(7000),
                model_name: Some("base".into()),
            })
            .collect();
        Self { ids, metrics }
    }

    fn views(&self) -> Vec<EndpointView<'_>> {
        self.ids
            .iter()
            .zip(&self.metrics)
            .enumerate()
            .map(|(i, (id, m))| EndpointView {
                id,
                metrics: Some(m),
                metrics_age: Some(Duration::from_millis(20)),
                in_flight: (i % 5) as u32,
                in_flight_tokens: 0,
                in_flight_prefill: (i % 3) as u32,
                in_flight_prefill_tokens: (i % 3) as u64 * 1_000,
                in_flight_output_tokens: (i % 5) as u64 * 256,
                prefill_elapsed: std::time::Duration::ZERO,
                dispatched_since_scrape: (i % 3) as u32,
                cached_prefix: None,
            })
            .collect()
    }
}

/// A prompt of about `tokens` tokens: a shared document and a distinct question.
fn prompt(tokens: usize, variant: usize) -> String {
    let mut text = String::with_capacity(tokens * 4 + 64);
    while text.len() < tokens * 4 {
        text.push_str(
            "The quarterly report covers revenue, margins and the outlook for next year. ",
        );
    }
    text.truncate(tokens * 4);
    text.push_str(&format!(" Question {variant}: what changed?"));
    text
}

fn request<'a>(prompt: &'a str, headers: &'a http::HeaderMap, target: &'a str) -> RequestView<'a> {
    RequestView {
        request_id: "bench",
        model: "base",
        target_model: target,
        priority: 0,
        prompt: Some(prompt),
        prompt_tokens: (prompt.len() / 4) as u32,
        max_tokens: Some(128),
        stream: true,
        headers,
    }
}

/// A streamed completion on every endpoint, so the cost model has learned state for each.
fn teach(strategy: &dyn Strategy, views: &[EndpointView<'_>]) {
    for (i, view) in views.iter().enumerate() {
        strategy.on_completed(&Completion {
            endpoint: view.id,
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
                in_flight: 3,
                in_flight_prefill: 1,
                in_flight_prefill_tokens: 500,
                prefill_elapsed: Duration::from_millis(40),
                running: Some(20 + (i % 13) as u32),
            },
        });
    }
}

fn benches(c: &mut Criterion) {
    let registry = Registry::with_builtins();
    let headers = http::HeaderMap::new();
    for strategy_name in STRATEGIES {
        let mut group = c.benchmark_group(format!("pick/{strategy_name}"));
        for &n in &ENDPOINTS {
            let fixture = Fixture::new(n);
            let views = fixture.views();
            let pool = PoolView {
                name: "bench",
                endpoints: &views,
            };
            for &tokens in &PROMPT_TOKENS {
                let strategy = registry
                    .build(strategy_name, &StrategyConfig::new())
                    .unwrap();
                teach(&*strategy, &views);
                // Warm the prefix index: earlier requests with the same document on a few endpoints.
                for variant in 0..16 {
                    let text = prompt(tokens, variant);
                    let req = request(&text, &headers, "adapter-3");
                    let first = strategy.pick(&req, &pool).unwrap().first().unwrap();
                    strategy.on_dispatched(&req, &views[first]);
                }
                let text = prompt(tokens, 99);
                let req = request(&text, &headers, "adapter-3");
                group.bench_with_input(
                    BenchmarkId::new(format!("{n}-endpoints"), format!("{tokens}-tokens")),
                    &req,
                    |b, req| b.iter(|| black_box(strategy.pick(black_box(req), &pool).unwrap())),
                );
            }
        }
        group.finish();
    }
}

/// Percentiles of single picks, as the request path sees them.
fn percentiles() {
    let registry = Registry::with_builtins();
    let headers = http::HeaderMap::new();
    println!("\nsingle-pick latency (10,000 picks each, hashing included):");
    println!(
        "{:<15} {:>9} {:>8} {:>10} {:>10} {:>10}",
        "strategy", "endpoints", "tokens", "p50 (µs)", "p99 (µs)", "max (µs)"
    );
    for strategy_name in STRATEGIES {
        for &n in &ENDPOINTS {
            let fixture = Fixture::new(n);
            let views = fixture.views();
            let pool = PoolView {
                name: "bench",
                endpoints: &views,
            };
            for &tokens in &PROMPT_TOKENS {
                let strategy = registry
                    .build(strategy_name, &StrategyConfig::new())
                    .unwrap();
                teach(&*strategy, &views);
                let prompts: Vec<String> = (0..64).map(|v| prompt(tokens, v)).collect();
                let mut samples = Vec::with_capacity(10_000);
                for i in 0..10_000 {
                    let req = request(&prompts[i % prompts.len()], &headers, "adapter-3");
                    let start = Instant::now();
                    let picked = strategy.pick(&req, &pool).unwrap();
                    samples.push(start.elapsed());
                    strategy.on_dispatched(&req, &views[picked.first().unwrap()]);
                }
                samples.sort();
                let at =
                    |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
                println!(
                    "{strategy_name:<15} {n:>9} {tokens:>8} {:>10.1} {:>10.1} {:>10.1}",
                    at(0.5),
                    at(0.99),
                    at(1.0)
                );
            }
        }
    }
}

/// The cost model's prediction alone (no hashing): what every built-in pays on top of the
/// prefix lookup.
fn cost_model_percentiles() {
    for &n in &ENDPOINTS {
        let fixture = Fixture::new(n);
        let views = fixture.views();
        let model = CostModel::new(CostParams::default());
        let uncached: Vec<u32> = (0..n).map(|i| 1_000 + (i % 4) as u32 * 500).collect();
        let config = LoadConfig::default();
        let pool = PoolView {
            name: "bench",
            endpoints: &views,
        };
        let mut samples = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let start = Instant::now();
            let loads = loads(&pool, &config);
            black_box(model.predict(&views, &loads, &uncached));
            samples.push(start.elapsed());
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        println!(
            "{:<15} {n:>9} {:>8} {:>10.1} {:>10.1} {:>10.1}",
            "cost model",
            "-",
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    percentiles();
    cost_model_percentiles();
}
