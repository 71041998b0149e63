//! The vLLM model-server dashboard: request latencies and throughput, scheduler and cache state,
//! request phases and lengths, from the servers' own `/metrics`.
//!
//! Names are vLLM's as it exports them (V1 names, falling back to the V0 names where they differ),
//! written out here: the gateway defines only the few it scrapes for routing, so they are not
//! checked against its definitions; the observability test runs every query against real
//! simulators instead.

use crate::grafana::{Dashboard, RATE, Row, Target, panel, target};
use crate::panels::{P50_90_99, quantiles};
use crate::promql::{Expr, Metric};

fn vllm(name: &str) -> Metric {
    Metric::external(name)
}

/// `sum(rate(vllm:NAME[RATE]))`.
fn total_rate(name: &str) -> Expr {
    vllm(name).series().rate(RATE).sum()
}

/// `sum by (instance) (vllm:NAME)`.
fn per_instance(name: &str) -> Expr {
    vllm(name).series().sum_by(&["instance"])
}

/// `histogram_quantile(q, sum by (le) (rate(vllm:NAME_bucket[RATE])))`.
fn quantile(name: &str, q: f64) -> Expr {
    vllm(name).buckets().rate(RATE).sum_by(&["le"]).quantile(q)
}

/// A heatmap target: bucket increases of `vllm:NAME`, one series per bucket.
fn bucket_increases(name: &str) -> Vec<Target> {
    let query = vllm(name).buckets().increase(RATE).sum_by(&["le"]);
    vec![target(query, "{{le}}")]
}

/// The vLLM dashboard.
pub fn dashboard() -> Dashboard {
    Dashboard {
        title: "vLLM model servers",
        uid: "vllm-model-servers",
        rows: vec![requests(), scheduler_and_cache(), phases_and_lengths()],
    }
}

fn requests() -> Row {
    let time_per_output_token = P50_90_99
        .iter()
        .map(|&p| {
            let q = f64::from(p) / 100.0;
            let v1 = quantile("vllm:inter_token_latency_seconds", q);
            let v0 = quantile("vllm:time_per_output_token_seconds", q);
            target(v1.or(v0), format!("p{p}"))
        })
        .collect();
    let finished = vllm("vllm:request_success_total")
        .series()
        .increase(RATE)
        .sum_by(&["finished_reason"]);
    Row {
        title: "Requests",
        panels: vec![
            panel(
                "E2E request latency",
                quantiles(&vllm("vllm:e2e_request_latency_seconds"), None, P50_90_99),
            )
            .unit("s"),
            panel(
                "Token throughput",
                vec![
                    target(total_rate("vllm:prompt_tokens_total"), "prompt tokens/s"),
                    target(
                        total_rate("vllm:generation_tokens_total"),
                        "generation tokens/s",
                    ),
                ],
            ),
            panel("Time per output token", time_per_output_token).unit("s"),
            panel(
                "Time to first token",
                quantiles(&vllm("vllm:time_to_first_token_seconds"), None, P50_90_99),
            )
            .unit("s"),
            panel(
                "Finish reason",
                vec![target(finished, "{{finished_reason}}")],
            ),
        ],
    }
}

fn scheduler_and_cache() -> Row {
    let cache = vllm("vllm:kv_cache_usage_perc")
        .series()
        .max_by(&["instance"])
        .or(vllm("vllm:gpu_cache_usage_perc")
            .series()
            .max_by(&["instance"]));
    let hit_rate = total_rate("vllm:prefix_cache_hits_total")
        .div(total_rate("vllm:prefix_cache_queries_total"));
    let preemptions = vllm("vllm:num_preemptions_total")
        .series()
        .rate(RATE)
        .sum_by(&["instance"]);
    Row {
        title: "Scheduler and cache",
        panels: vec![
            panel(
                "Scheduler state",
                vec![
                    target(
                        per_instance("vllm:num_requests_running"),
                        "running {{instance}}",
                    ),
                    target(
                        per_instance("vllm:num_requests_waiting"),
                        "waiting {{instance}}",
                    ),
                ],
            ),
            panel(
                "Cache utilization per model server",
                vec![target(cache, "{{instance}}")],
            )
            .unit("percentunit")
            .description(
                "The seed's picture: even across pods through the inference route, uneven \
                 through the plain route.",
            ),
            panel("Prefix cache hit rate", vec![target(hit_rate, "hit rate")]).unit("percentunit"),
            panel("Preemptions/s", vec![target(preemptions, "{{instance}}")]),
        ],
    }
}

fn phases_and_lengths() -> Row {
    Row {
        title: "Request phases and lengths",
        panels: vec![
            panel(
                "Queue time",
                quantiles(&vllm("vllm:request_queue_time_seconds"), None, &[50, 99]),
            )
            .unit("s"),
            panel(
                "Prefill and decode time (p90)",
                vec![
                    target(
                        quantile("vllm:request_prefill_time_seconds", 0.9),
                        "prefill",
                    ),
                    target(quantile("vllm:request_decode_time_seconds", 0.9), "decode"),
                ],
            )
            .unit("s"),
            panel(
                "Prompt length",
                bucket_increases("vllm:request_prompt_tokens"),
            )
            .heatmap(),
            panel(
                "Generation length",
                bucket_increases("vllm:request_generation_tokens"),
            )
            .heatmap(),
            panel(
                "Max generation tokens",
                bucket_increases("vllm:request_max_num_generation_tokens"),
            )
            .heatmap(),
        ],
    }
}
