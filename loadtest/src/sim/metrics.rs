//! vLLM's Prometheus metrics, kept by the engine loop and rendered for `/metrics`.
//!
//! Names, types, labels (`model_name`, `engine`) and bucket boundaries follow vLLM V1
//! (`vllm/v1/metrics/loggers.py`, reference §1); the text mimics the Python client: counters get
//! `_total` and `_created` samples, histograms `_bucket`/`_count`/`_sum`/`_created`, floats print
//! as Python does (`1.0`). Latencies are recorded in simulated seconds, so a run at
//! `--time-scale 10` reports the same histograms as the real-time run. `--legacy-metrics` adds the
//! V0 names the seed's dashboard queries. This module owns no clock and does no I/O.

use std::fmt::Write as _;

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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(24 * 1024);
        let created = self.info.created_unix;
        let l = &self.labels;
        gauge(
            &mut out,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            l,
            self.running as f64,
        );
        gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            l,
            self.waiting as f64,
        );
        gauge(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            l,
            self.kv_usage,
        );
        counter(
            &mut out,
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            l,
            self.prefix_queries,
            created,
        );
        counter(
            &mut out,
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            l,
            self.prefix_hits,
            created,
        );
        counter(
            &mut out,
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            l,
            self.preemptions,
            created,
        );
        counter(
            &mut out,
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            l,
            self.prompt_tokens,
            created,
        );
        counter(
            &mut out,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            l,
            self.generation_tokens,
            created,
        );
        out.push_str("# HELP vllm:request_success_total Count of successfully processed requests.\n# TYPE vllm:request_success_total counter\n");
        let reasons =
            ["stop", "length", "abort"].map(|reason| format!("{l},finished_reason=\"{reason}\""));
        for (slot, labels) in reasons.iter().enumerate() {
            let _ = writeln!(
                out,
                "vllm:request_success_total{{{labels}}} {}",
                py_float(self.success[slot] as f64)
            );
        }
        let label_sets: Vec<&str> = reasons.iter().map(String::as_str).collect();
        created_gauge(
            &mut out,
            "vllm:request_success",
            "Count of successfully processed requests.",
            &label_sets,
            created,
        );
        histogram(
            &mut out,
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            l,
            &self.iteration_tokens,
            created,
        );
        histogram(
            &mut out,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            l,
            &self.ttft,
            created,
        );
        histogram(
            &mut out,
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            l,
            &self.itl,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            l,
            &self.request_tpot,
            created,
        );
        histogram(
            &mut out,
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            l,
            &self.e2e,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            l,
            &self.queue,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            l,
            &self.inference,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            l,
            &self.prefill,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            l,
            &self.decode,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            l,
            &self.prompt_len,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            l,
            &self.generation_len,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            l,
            &self.max_generation,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_params_n",
            "Histogram of the n request parameter.",
            l,
            &self.n_param,
            created,
        );
        histogram(
            &mut out,
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            l,
            &self.max_tokens_param,
            created,
        );
        if self.info.lora_enabled {
            out.push_str("# HELP vllm:lora_requests_info Running stats on lora requests.\n# TYPE vllm:lora_requests_info gauge\n");
            for (waiting, running, value) in &self.lora_info {
                let _ = writeln!(
                    out,
                    "vllm:lora_requests_info{{max_lora=\"{}\",waiting_lora_adapters=\"{}\",running_lora_adapters=\"{}\"}} {}",
                    self.info.max_loras,
                    escape_label(waiting),
                    escape_label(running),
                    py_float(*value)
                );
            }
        }
        out.push_str("# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{");
        for (index, (key, value)) in self.info.cache_config.iter().enumerate() {
            let separator = if index == 0 { "" } else { "," };
            let _ = write!(out, "{separator}{key}=\"{}\"", escape_label(value));
        }
        out.push_str("} 1.0\n");
        if self.info.legacy {
            self.render_legacy(&mut out);
        }
        out
    }

    fn render_legacy(&self, out: &mut String) {
        let l = &self.labels;
        let created = self.info.created_unix;
        gauge(
            out,
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            l,
            self.kv_usage,
        );
        gauge(
            out,
            "vllm:cpu_cache_usage_perc",
            "CPU KV-cache usage. 1 means 100 percent usage.",
            l,
            0.0,
        );
        gauge(
            out,
            "vllm:num_requests_swapped",
            "Number of requests swapped to CPU.",
            l,
            0.0,
        );
        let span = match (
            self.throughput_window.front(),
            self.throughput_window.back(),
        ) {
            (Some(first), Some(last)) if last.0 > first.0 => last.0 - first.0,
            _ => LEGACY_THROUGHPUT_WINDOW,
        };
        let (prompt, generation) = self
            .throughput_window
            .iter()
            .fold((0, 0), |(p, g), &(_, dp, dg)| (p + dp, g + dg));
        gauge(
            out,
            "vllm:avg_prompt_throughput_toks_per_s",
            "Average prefill throughput in tokens/s.",
            l,
            prompt as f64 / span,
        );
        gauge(
            out,
            "vllm:avg_generation_throughput_toks_per_s",
            "Average generation throughput in tokens/s.",
            l,
            generation as f64 / span,
        );
        counter(
            out,
            "vllm:gpu_prefix_cache_queries",
            "GPU prefix cache queries, in terms of number of queried tokens.",
            l,
            self.prefix_queries,
            created,
        );
        counter(
            out,
            "vllm:gpu_prefix_cache_hits",
            "GPU prefix cache hits, in terms of number of cached tokens.",
            l,
            self.prefix_hits,
            created,
        );
        histogram(
            out,
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            l,
            &self.itl,
            created,
        );
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

/// Formats like Python's `repr(float)`: always a decimal point for integral values.
fn py_float(value: f64) -> String {
    if value.is_infinite() {
        return if value > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    format!("{value:?}")
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, help: &str, labels: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {}",
        py_float(value)
    );
}

fn counter(out: &mut String, name: &str, help: &str, labels: &str, value: u64, created: f64) {
    let _ = writeln!(
        out,
        "# HELP {name}_total {help}\n# TYPE {name}_total counter\n{name}_total{{{labels}}} {}",
        py_float(value as f64),
    );
    created_gauge(out, name, help, &[labels], created);
}

/// The Python client's classic-format `_created` family: a gauge of its own.
fn created_gauge(out: &mut String, name: &str, help: &str, label_sets: &[&str], created: f64) {
    let _ = writeln!(
        out,
        "# HELP {name}_created {help}\n# TYPE {name}_created gauge"
    );
    for labels in label_sets {
        let _ = writeln!(out, "{name}_created{{{labels}}} {}", py_float(created));
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &str,
    histogram: &Histogram,
    created: f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {}",
            py_float(*bound),
            py_float(cumulative as f64)
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels},le=\"+Inf\"}} {count}\n{name}_count{{{labels}}} {count}\n{name}_sum{{{labels}}} {}",
        py_float(histogram.sum),
        count = py_float(histogram.count as f64),
    );
    created_gauge(out, name, help, &[labels], created);
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
