//! Cost of reading one real-size vLLM `/metrics` page (captured from `vllm-sim` under load with
//! LoRA adapters: `benches/fixtures/vllm-metrics.txt`), and what that means for a gateway that
//! scrapes many endpoints every 50 ms.
//!
//! `cargo bench -p inference-gateway --bench scrape`

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use gateway::engine::{Engine, parse};

const PAGE: &str = include_str!("fixtures/vllm-metrics.txt");

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("scrape");
    group.throughput(Throughput::Bytes(PAGE.len() as u64));
    group.bench_function("parse-vllm-page", |b| {
        b.iter(|| black_box(parse(black_box(PAGE), Engine::Vllm).unwrap()))
    });
    group.finish();
}

fn budget() {
    let rounds = 20_000;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(parse(black_box(PAGE), Engine::Vllm).unwrap());
    }
    let per_page = start.elapsed().as_secs_f64() / rounds as f64;
    // 100 endpoints scraped every 50 ms: 2,000 pages a second.
    let core_share = per_page * 2_000.0;
    println!(
        "\npage: {} bytes, {} lines; parse: {:.1} µs per page; 100 endpoints at 50 ms: {:.2}% of one core for parsing",
        PAGE.len(),
        PAGE.lines().count(),
        per_page * 1e6,
        core_share * 100.0
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    budget();
}
