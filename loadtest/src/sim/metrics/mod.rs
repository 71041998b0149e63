//! vLLM's Prometheus metrics, kept by the engine loop and rendered for `/metrics`.
//!
//! Names, types, labels (`model_name`, `engine`) and bucket boundaries follow vLLM V1
//! (`vllm/v1/metrics/loggers.py`, reference §1); the text mimics the Python client: counters get
//! `_total` and `_created` samples, histograms `_bucket`/`_count`/`_sum`/`_created`, floats print
//! as Python does (`1.0`). Latencies are recorded in simulated seconds, so a run at
//! `--time-scale 10` reports the same histograms as the real-time run. `--legacy-metrics` adds the
//! V0 names the seed's dashboard queries. This module owns no clock and does no I/O.

mod render;

use self::render::escape_label;
use super::engine::{FinishReason, FinishedRequest, StepOutcome};

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
const N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
/// Seconds over which the V0 throughput gauges average, like V0's log interval.
const LEGACY_THROUGHPUT_WINDOW: f64 = 5.0;

/// vLLM's `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, ... up to the limit.
fn one_two_five_buckets(max: usize) -> Vec<f64> {
    let mut buckets = Vec::new();
    let mut exponent = 1.0;
    loop {
        for mantissa in [1.0, 2.0, 5.0] {
            let value = mantissa * exponent;
            if value > max as f64 {
                return buckets;
            }
            buckets.push(value);
        }
        exponent *= 10.0;
    }
}

/// A cumulative histogram with fixed upper bounds (+Inf implied).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let at = self.bounds.partition_point(|&bound| bound < value);
        if let Some(slot) = self.counts.get_mut(at) {
            *slot += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Static facts the metrics describe.
#[derive(Debug, Clone)]
pub struct MetricsInfo {
    pub model_name: String,
    pub legacy: bool,
    pub lora_enabled: bool,
    pub max_loras: usize,
    pub max_model_len: usize,
    /// `cache_config_info` labels, in order.
    pub cache_config: Vec<(String, String)>,
    /// Unix time the metrics were created (the `_created` samples).
    pub created_unix: f64,
}

/// All of vLLM's metrics for one engine.
#[derive(Debug, Clone)]
pub struct SimMetrics {
    info: MetricsInfo,
    labels: String,
    running: usize,
    waiting: usize,
    kv_usage: f64,
    preemptions: u64,
    prompt_tokens: u64,
    generation_tokens: u64,
    prefix_queries: u64,
    prefix_hits: u64,
    success: [u64; 3],
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    inference: Histogram,
    prefill: Histogram,
    decode: Histogram,
    request_tpot: Histogram,
    prompt_len: Histogram,
    generation_len: Histogram,
    max_tokens_param: Histogram,
    max_generation: Histogram,
    n_param: Histogram,
    iteration_tokens: Histogram,
    /// (waiting adapters, running adapters, last timestamp), every combination ever seen.
    lora_info: Vec<(String, String, f64)>,
    /// (virtual time, prompt tokens, generation tokens) per step within the legacy window.
    throughput_window: std::collections::VecDeque<(f64, u64, u64)>,
}

fn success_slot(reason: FinishReason) -> usize {
    match reason {
        FinishReason::Stop => 0,
        FinishReason::Length => 1,
        FinishReason::Abort => 2,
    }
}

impl SimMetrics {
    pub fn new(info: MetricsInfo) -> Self {
        let lengths = one_two_five_buckets(info.max_model_len);
        let labels = format!(
            "model_name=\"{}\",engine=\"0\"",
            escape_label(&info.model_name)
        );
        SimMetrics {
            labels,
            running: 0,
            waiting: 0,
            kv_usage: 0.0,
            preemptions: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            prefix_queries: 0,
            prefix_hits: 0,
            success: [0; 3],
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(REQUEST_LATENCY_BUCKETS),
            queue: Histogram::new(REQUEST_LATENCY_BUCKETS),
            inference: Histogram::new(REQUEST_LATENCY_BUCKETS),
            prefill: Histogram::new(REQUEST_LATENCY_BUCKETS),
            decode: Histogram::new(REQUEST_LATENCY_BUCKETS),
            request_tpot: Histogram::new(ITL_BUCKETS),
            prompt_len: Histogram::new(&lengths),
            generation_len: Histogram::new(&lengths),
            max_tokens_param: Histogram::new(&lengths),
            max_generation: Histogram::new(&lengths),
            n_param: Histogram::new(N_BUCKETS),
            iteration_tokens: Histogram::new(ITERATION_TOKEN_BUCKETS),
            lora_info: Vec::new(),
            throughput_window: std::collections::VecDeque::new(),
            info,
        }
    }

    pub fn info(&self) -> &MetricsInfo {
        &self.info
    }

    /// Records one engine step: gauges after it, counters, per-token and per-request histograms.
    pub fn record_step(&mut self, outcome: &StepOutcome, gauges: EngineGauges) {
        self.set_gauges(gauges);
        if outcome.scheduled_tokens > 0 {
            self.iteration_tokens
                .observe(outcome.scheduled_tokens as f64);
        }
        self.prompt_tokens += outcome.first_tokens_prompt_len as u64;
        self.generation_tokens += outcome.tokens.len() as u64;
        for token in &outcome.tokens {
            if let Some(gap) = token.since_previous {
                self.itl.observe(gap);
            }
        }
        for finished in &outcome.finished {
            self.record_finished(finished);
        }
        let end = outcome.start + outcome.duration;
        self.throughput_window.push_back((
            end,
            outcome.first_tokens_prompt_len as u64,
            outcome.tokens.len() as u64,
        ));
        while self
            .throughput_window
            .front()
            .is_some_and(|&(at, _, _)| at < end - LEGACY_THROUGHPUT_WINDOW)
        {
            self.throughput_window.pop_front();
        }
    }

    /// Records a first token's time to first token (virtual seconds since arrival).
    pub fn observe_ttft(&mut self, seconds: f64) {
        self.ttft.observe(seconds);
    }

    /// Updates the engine gauges and cumulative engine counters.
    pub fn set_gauges(&mut self, gauges: EngineGauges) {
        self.running = gauges.running;
        self.waiting = gauges.waiting;
        self.kv_usage = gauges.kv_usage;
        self.preemptions = gauges.preemptions;
        self.prefix_queries = gauges.prefix_queries;
        self.prefix_hits = gauges.prefix_hits;
    }

    /// Records the adapters of running and waiting requests at unix time `now_unix`.
    pub fn record_lora_state(&mut self, running: &str, waiting: &str, now_unix: f64) {
        if !self.info.lora_enabled {
            return;
        }
        match self
            .lora_info
            .iter_mut()
            .find(|(w, r, _)| w == waiting && r == running)
        {
            Some(entry) => entry.2 = now_unix,
            None => self
                .lora_info
                .push((waiting.to_string(), running.to_string(), now_unix)),
        }
    }

    /// Records a request that left the engine (finished or aborted).
    pub fn record_finished(&mut self, finished: &FinishedRequest) {
        self.success[success_slot(finished.reason)] += 1;
        if finished.reason == FinishReason::Abort {
            return;
        }
        let end = finished.finished;
        self.e2e.observe(end - finished.arrival);
        if let Some(scheduled) = finished.first_scheduled {
            self.queue.observe((scheduled - finished.arrival).max(0.0));
            self.inference.observe(end - scheduled);
            if let Some(first) = finished.first_token {
                self.prefill.observe(first - scheduled);
            }
        }
        if let Some(first) = finished.first_token {
            self.decode.observe(end - first);
            if finished.output_tokens > 1 {
                self.request_tpot
                    .observe((end - first) / (finished.output_tokens - 1) as f64);
            }
        }
        self.prompt_len.observe(finished.prompt_tokens as f64);
        self.generation_len.observe(finished.output_tokens as f64);
        self.max_tokens_param.observe(finished.max_tokens as f64);
        self.max_generation.observe(finished.output_tokens as f64);
        self.n_param.observe(finished.n as f64);
    }

    pub fn success_count(&self, reason: FinishReason) -> u64 {
        self.success[success_slot(reason)]
    }
}

/// Engine state copied into the metrics after each step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineGauges {
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
    pub preemptions: u64,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(legacy: bool) -> SimMetrics {
        SimMetrics::new(MetricsInfo {
            model_name: "/model/qwen".into(),
            legacy,
            lora_enabled: true,
            max_loras: 2,
            max_model_len: 32_768,
            cache_config: vec![
                ("block_size".into(), "16".into()),
                ("num_gpu_blocks".into(), "5500".into()),
            ],
            created_unix: 1_700_000_000.0,
        })
    }

    #[test]
    fn token_buckets_follow_one_two_five() {
        assert_eq!(
            one_two_five_buckets(32_768),
            [
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 1e4, 2e4
            ]
        );
    }

    #[test]
    fn renders_v1_names_labels_and_buckets() {
        let mut m = metrics(false);
        m.itl.observe(0.03);
        m.itl.observe(0.2);
        let text = m.render();
        assert!(
            text.contains(
                "vllm:num_requests_running{model_name=\"/model/qwen\",engine=\"0\"} 0.0\n"
            )
        );
        assert!(text.contains("# TYPE vllm:prefix_cache_hits_total counter\n"));
        assert!(text.contains("vllm:request_success_total{model_name=\"/model/qwen\",engine=\"0\",finished_reason=\"abort\"} 0.0\n"));
        assert!(text.contains("vllm:inter_token_latency_seconds_bucket{model_name=\"/model/qwen\",engine=\"0\",le=\"0.025\"} 0.0\n"));
        assert!(text.contains("vllm:inter_token_latency_seconds_bucket{model_name=\"/model/qwen\",engine=\"0\",le=\"0.05\"} 1.0\n"));
        assert!(text.contains("vllm:inter_token_latency_seconds_bucket{model_name=\"/model/qwen\",engine=\"0\",le=\"+Inf\"} 2.0\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{model_name=\"/model/qwen\",engine=\"0\",le=\"2560.0\"} 0.0\n"));
        assert!(
            text.contains(
                "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"5500\"} 1.0\n"
            )
        );
        assert!(!text.contains("gpu_cache_usage_perc"));
    }

    #[test]
    fn lora_info_keeps_every_combination_with_its_newest_time() {
        let mut m = metrics(true);
        m.record_lora_state("travel-helper-v1", "", 10.0);
        m.record_lora_state("", "", 11.0);
        m.record_lora_state("travel-helper-v1", "", 12.0);
        let text = m.render();
        assert!(text.contains("vllm:lora_requests_info{max_lora=\"2\",waiting_lora_adapters=\"\",running_lora_adapters=\"travel-helper-v1\"} 12.0\n"));
        assert!(text.contains("vllm:lora_requests_info{max_lora=\"2\",waiting_lora_adapters=\"\",running_lora_adapters=\"\"} 11.0\n"));
        assert!(text.contains("vllm:gpu_cache_usage_perc{"));
        assert!(text.contains("vllm:time_per_output_token_seconds_bucket{"));
    }
}
