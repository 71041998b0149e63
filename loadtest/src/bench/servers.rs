//! What the model servers did during a run, summed up from the scraper's ticks and the
//! simulators' `/sim/stats`: counter deltas between the first and the last scrape (prefix-cache
//! queries and hits, preemptions, tokens, finished requests), adapter loads, and KV balance.
//!
//! Deltas are taken per endpoint from its first to its last successful scrape, so a counter that
//! started before the run (a warm-up request, the legacy initial test run) is not counted.

use serde::Serialize;
use serde_json::Value;

use super::scrape::{EndpointSample, KvBalance, ScrapeTick, kv_balance};

/// One endpoint's totals over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndpointTotals {
    pub endpoint: String,
    pub prefix_queries: f64,
    pub prefix_hits: f64,
    pub preemptions: f64,
    pub prompt_tokens: f64,
    pub generation_tokens: f64,
    pub requests_finished: f64,
    pub requests_aborted: f64,
    pub lora_gpu_loads: f64,
    pub lora_disk_loads: f64,
    pub kv_mean: f64,
    pub kv_max: f64,
}

/// The fleet's totals and balance over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerSummary {
    pub endpoints: Vec<EndpointTotals>,
    /// Σ hits / Σ queries over every endpoint (tokens).
    pub prefix_hit_rate: f64,
    pub preemptions: f64,
    pub lora_gpu_loads: f64,
    pub lora_disk_loads: f64,
    pub kv_spread: f64,
    pub kv_cv: f64,
    pub kv_ticks: usize,
    /// The same over the loaded phase only: from the start until the last request was sent (the
    /// ramp-up is in, the drain of the last answers is not).
    pub kv_spread_loaded: f64,
    pub kv_cv_loaded: f64,
}

fn counter_delta(
    ticks: &[ScrapeTick],
    endpoint: usize,
    read: impl Fn(&EndpointSample) -> f64,
) -> f64 {
    let mut answered = ticks
        .iter()
        .filter_map(|t| t.samples.get(endpoint).and_then(Option::as_ref));
    let Some(first) = answered.next() else {
        return 0.0;
    };
    let last = answered.next_back().unwrap_or(first);
    read(last) - read(first)
}

fn stat(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or(0.0)
}

/// Sums up a run. `window` (seconds on the ticks' clock) bounds the KV figures: the run itself,
/// not the idle time around it; `loaded` is its part until the last request was sent.
/// `stats_before`/`stats_after` are each endpoint's `/sim/stats` (null from real servers).
pub fn summarize_servers(
    endpoints: &[String],
    ticks: &[ScrapeTick],
    stats_before: &[Value],
    stats_after: &[Value],
    window: (f64, f64),
    loaded: (f64, f64),
) -> ServerSummary {
    let kv: KvBalance = kv_balance(ticks, endpoints.len(), window.0, window.1);
    let kv_loaded: KvBalance = kv_balance(ticks, endpoints.len(), loaded.0, loaded.1);
    let mut summary = ServerSummary {
        kv_spread: kv.spread,
        kv_cv: kv.cv,
        kv_ticks: kv.ticks,
        kv_spread_loaded: kv_loaded.spread,
        kv_cv_loaded: kv_loaded.cv,
        ..ServerSummary::default()
    };
    let (mut queries, mut hits) = (0.0, 0.0);
    for (i, endpoint) in endpoints.iter().enumerate() {
        let delta = |read: fn(&EndpointSample) -> f64| counter_delta(ticks, i, read);
        let loads = |key: &str| {
            let before = stats_before.get(i).map_or(0.0, |v| stat(v, key));
            let after = stats_after.get(i).map_or(0.0, |v| stat(v, key));
            after - before
        };
        let totals = EndpointTotals {
            endpoint: endpoint.clone(),
            prefix_queries: delta(|s| s.prefix_queries),
            prefix_hits: delta(|s| s.prefix_hits),
            preemptions: delta(|s| s.preemptions),
            prompt_tokens: delta(|s| s.prompt_tokens),
            generation_tokens: delta(|s| s.generation_tokens),
            requests_finished: delta(|s| s.requests_finished),
            requests_aborted: delta(|s| s.requests_aborted),
            lora_gpu_loads: loads("lora_gpu_loads"),
            lora_disk_loads: loads("lora_disk_loads"),
            kv_mean: kv.mean.get(i).copied().unwrap_or(0.0),
            kv_max: kv.max.get(i).copied().unwrap_or(0.0),
        };
        queries += totals.prefix_queries;
        hits += totals.prefix_hits;
        summary.preemptions += totals.preemptions;
        summary.lora_gpu_loads += totals.lora_gpu_loads;
        summary.lora_disk_loads += totals.lora_disk_loads;
        summary.endpoints.push(totals);
    }
    summary.prefix_hit_rate = if queries > 0.0 { hits / queries } else { 0.0 };
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deltas_run_from_the_first_to_the_last_answer() {
        let sample = |queries: f64, hits: f64, kv: f64| EndpointSample {
            prefix_queries: queries,
            prefix_hits: hits,
            kv_usage: kv,
            ..EndpointSample::default()
        };
        let ticks = vec![
            ScrapeTick {
                at: 0.0,
                samples: vec![Some(sample(100.0, 0.0, 0.0)), None],
            },
            ScrapeTick {
                at: 1.0,
                samples: vec![
                    Some(sample(300.0, 150.0, 0.5)),
                    Some(sample(50.0, 0.0, 0.1)),
                ],
            },
            ScrapeTick {
                at: 2.0,
                samples: vec![None, Some(sample(250.0, 50.0, 0.3))],
            },
        ];
        let endpoints = vec!["a".to_string(), "b".to_string()];
        let before = vec![json!({"lora_gpu_loads": 1}), json!(null)];
        let after = vec![json!({"lora_gpu_loads": 5}), json!(null)];
        let summary =
            summarize_servers(&endpoints, &ticks, &before, &after, (0.0, 2.0), (0.0, 0.5));
        assert_eq!(summary.endpoints[0].prefix_queries, 200.0);
        assert_eq!(summary.endpoints[1].prefix_queries, 200.0);
        assert!((summary.prefix_hit_rate - 200.0 / 400.0).abs() < 1e-12);
        assert_eq!(summary.lora_gpu_loads, 4.0);
        // Only tick 1 has both endpoints.
        assert_eq!(summary.kv_ticks, 1);
        assert!((summary.kv_spread - 0.4).abs() < 1e-12);
        // No complete tick before 0.5 s.
        assert_eq!(summary.kv_spread_loaded, 0.0);
    }
}
