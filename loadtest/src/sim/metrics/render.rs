//! The Prometheus text exposition of [`SimMetrics`], in the Python client's classic format:
//! `# HELP`/`# TYPE` per family, counters as `_total` plus a `_created` gauge family,
//! histograms as `_bucket`/`_count`/`_sum` plus `_created`, floats as Python prints them.

use std::fmt::Write as _;

use super::{Histogram, LEGACY_THROUGHPUT_WINDOW, SimMetrics};

impl SimMetrics {
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

pub(super) fn escape_label(value: &str) -> String {
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
