//! From per-request records to the benchmark's figures, by the rules of `vllm bench serve`
//! (`shared/reference/benchmark-client.md` §5); [`super::result`] prints and saves them.
//!
//! - TTFT: send → first event with non-empty `choices`; ITL: the gaps between such events,
//!   pooled over every request; E2EL: send → last such event; TPOT per request:
//!   `(E2EL − TTFT) / (output tokens − 1)`, only for outputs longer than one token.
//! - Output tokens from the usage chunk, else by tokenizing the generated text; input tokens
//!   from the usage chunk, else the prompt's own count.
//! - Only successful requests enter the statistics; throughputs divide by the wall time of the
//!   whole run; peak output tokens/s is the busiest 1-second bucket of token times; peak
//!   concurrency a sweep over the successful requests' `[start, end)` intervals.
//!
//! Against time-scaled simulators (`--time-scale s`, the servers run `s` times faster than their
//! model), every time is multiplied by `s` and every rate divided by it, so the result reads in
//! the simulated hardware's seconds.

use super::stats::{Sorted, mean, std_dev};

/// What one request showed. Times are wall seconds as measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord {
    pub index: usize,
    pub model: String,
    pub success: bool,
    pub error: String,
    pub prompt_len: usize,
    pub output_len: usize,
    pub ttft: f64,
    pub itl: Vec<f64>,
    pub latency: f64,
    /// Send time, seconds after the run started.
    pub start: f64,
    /// Time spent waiting for a concurrency slot.
    pub queue_time: f64,
    /// The best-case prefix-cache hit tokens ([`super::prefix_bound`]).
    pub ideal_hit_tokens: usize,
}

/// A latency metric the client can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Ttft,
    Tpot,
    Itl,
    E2el,
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::Ttft, Metric::Tpot, Metric::Itl, Metric::E2el];

    /// The attribute name in keys (`mean_ttft_ms`).
    pub fn key(self) -> &'static str {
        match self {
            Metric::Ttft => "ttft",
            Metric::Tpot => "tpot",
            Metric::Itl => "itl",
            Metric::E2el => "e2el",
        }
    }

    /// The name in summary lines (`Mean TTFT (ms):`).
    pub fn label(self) -> &'static str {
        match self {
            Metric::Ttft => "TTFT",
            Metric::Tpot => "TPOT",
            Metric::Itl => "ITL",
            Metric::E2el => "E2EL",
        }
    }

    /// The section banner in the printed summary.
    pub fn header(self) -> &'static str {
        match self {
            Metric::Ttft => "Time to First Token",
            Metric::Tpot => "Time per Output Token (excl. 1st token)",
            Metric::Itl => "Inter-token Latency",
            Metric::E2el => "End-to-end Latency",
        }
    }

    pub fn parse(text: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.key() == text.trim())
    }
}

/// Which statistics to print, as `--percentile-metrics`, `--metric-percentiles`, `--goodput`.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryOptions {
    pub metrics: Vec<Metric>,
    pub percentiles: Vec<f64>,
    /// SLOs in milliseconds; a request counts as good when it meets all of them.
    pub goodput: Vec<(Metric, f64)>,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions {
            metrics: vec![Metric::Ttft, Metric::Tpot, Metric::Itl],
            percentiles: vec![99.0],
            goodput: Vec::new(),
        }
    }
}

/// Mean, median, standard deviation and percentiles of one metric, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricStats {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub percentiles: Vec<(f64, f64)>,
    /// Every sample, sorted (ms), for distributions and further percentiles.
    pub samples: Sorted,
}

impl MetricStats {
    fn of(values_ms: &[f64], percentiles: &[f64]) -> Self {
        let samples = Sorted::new(values_ms);
        MetricStats {
            mean: mean(values_ms),
            median: samples.median(),
            std: std_dev(values_ms),
            percentiles: percentiles
                .iter()
                .map(|&p| (p, samples.percentile(p)))
                .collect(),
            samples,
        }
    }

    pub fn percentile(&self, p: f64) -> f64 {
        self.samples.percentile(p)
    }
}

/// The run's settings as the result reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    pub backend: String,
    pub label: Option<String>,
    pub model_id: String,
    pub tokenizer_id: String,
    pub num_prompts: usize,
    pub request_rate: f64,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub time_scale: f64,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchSummary {
    pub settings: RunSettings,
    pub options: SummaryOptions,
    pub completed: usize,
    pub failed: usize,
    /// Seconds (simulated when time-scaled).
    pub duration: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub request_throughput: f64,
    pub request_goodput: Option<f64>,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub max_output_tokens_per_s: f64,
    pub max_concurrent_requests: f64,
    pub ttft: MetricStats,
    pub tpot: MetricStats,
    pub itl: MetricStats,
    pub e2el: MetricStats,
    /// Σ best-case prefix hit tokens / Σ input tokens over successful requests.
    pub ideal_prefix_hit_rate: f64,
    /// Latencies (s) and queue times (s) per request, in dataset order.
    pub latencies: Vec<f64>,
    pub queue_times: Vec<f64>,
    pub errors: Vec<String>,
}

impl BenchSummary {
    pub fn stats(&self, metric: Metric) -> &MetricStats {
        match metric {
            Metric::Ttft => &self.ttft,
            Metric::Tpot => &self.tpot,
            Metric::Itl => &self.itl,
            Metric::E2el => &self.e2el,
        }
    }
}

/// Computes the summary; `duration` is the run's wall time in seconds.
pub fn summarize(
    records: &[RequestRecord],
    duration: f64,
    settings: RunSettings,
    options: SummaryOptions,
) -> BenchSummary {
    let scale = settings.time_scale;
    let duration = duration * scale;
    let ms = 1000.0 * scale;
    let mut ttfts = Vec::new();
    let mut tpots = Vec::new();
    let mut itls = Vec::new();
    let mut e2els = Vec::new();
    let mut total_input = 0u64;
    let mut total_output = 0u64;
    let mut ideal_hits = 0u64;
    let mut good = 0usize;
    let mut completed = 0usize;
    let mut errors = Vec::new();
    for record in records {
        if !record.success {
            errors.push(record.error.clone());
            continue;
        }
        completed += 1;
        total_input += record.prompt_len as u64;
        total_output += record.output_len as u64;
        ideal_hits += record.ideal_hit_tokens as u64;
        let tpot = (record.output_len > 1)
            .then(|| (record.latency - record.ttft) / (record.output_len - 1) as f64 * ms);
        if let Some(tpot) = tpot {
            tpots.push(tpot);
        }
        ttfts.push(record.ttft * ms);
        e2els.push(record.latency * ms);
        itls.extend(record.itl.iter().map(|gap| gap * ms));
        let meets = |metric: Metric, slo: f64| match metric {
            Metric::Ttft => record.ttft * ms <= slo,
            Metric::Tpot => tpot.unwrap_or(0.0) <= slo,
            Metric::E2el => record.latency * ms <= slo,
            Metric::Itl => record.itl.iter().all(|gap| gap * ms <= slo),
        };
        if options
            .goodput
            .iter()
            .all(|&(metric, slo)| meets(metric, slo))
        {
            good += 1;
        }
    }
    let per_second = |count: f64| {
        if duration > 0.0 {
            count / duration
        } else {
            0.0
        }
    };
    let (peak_tokens, peak_concurrency) = peaks(records, scale);
    BenchSummary {
        completed,
        failed: records.len() - completed,
        duration,
        total_input_tokens: total_input,
        total_output_tokens: total_output,
        request_throughput: per_second(completed as f64),
        request_goodput: (!options.goodput.is_empty()).then(|| per_second(good as f64)),
        output_throughput: per_second(total_output as f64),
        total_token_throughput: per_second((total_input + total_output) as f64),
        max_output_tokens_per_s: peak_tokens,
        max_concurrent_requests: peak_concurrency,
        ttft: MetricStats::of(&ttfts, &options.percentiles),
        tpot: MetricStats::of(&tpots, &options.percentiles),
        itl: MetricStats::of(&itls, &options.percentiles),
        e2el: MetricStats::of(&e2els, &options.percentiles),
        ideal_prefix_hit_rate: if total_input == 0 {
            0.0
        } else {
            ideal_hits as f64 / total_input as f64
        },
        latencies: records.iter().map(|r| r.latency * scale).collect(),
        queue_times: records.iter().map(|r| r.queue_time * scale).collect(),
        errors,
        settings,
        options,
    }
}

/// The busiest 1-second bucket of token times, and the most requests open at once.
fn peaks(records: &[RequestRecord], scale: f64) -> (f64, f64) {
    let successful: Vec<&RequestRecord> = records.iter().filter(|r| r.success).collect();
    let Some(first) = successful
        .iter()
        .map(|r| r.start * scale)
        .min_by(f64::total_cmp)
    else {
        return (0.0, 0.0);
    };
    let mut buckets: Vec<u32> = Vec::new();
    let mut edges: Vec<(f64, i32)> = Vec::with_capacity(successful.len() * 2);
    for record in &successful {
        let mut token_time = (record.start + record.ttft) * scale - first;
        let mut add = |t: f64| {
            let bucket = t.max(0.0) as usize;
            if buckets.len() <= bucket {
                buckets.resize(bucket + 1, 0);
            }
            buckets[bucket] += 1;
        };
        add(token_time);
        for gap in &record.itl {
            token_time += gap * scale;
            add(token_time);
        }
        edges.push((record.start * scale, 1));
        edges.push(((record.start + record.latency) * scale, -1));
    }
    // Ends sort before starts at the same instant: intervals are half-open.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut open = 0i32;
    let mut most = 0i32;
    for (_, delta) in edges {
        open += delta;
        most = most.max(open);
    }
    (
        buckets.into_iter().max().unwrap_or(0) as f64,
        f64::from(most),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn settings(scale: f64) -> RunSettings {
        RunSettings {
            backend: "vllm".into(),
            label: None,
            model_id: "/models/DeepSeek-R1-Distill-Qwen-7B".into(),
            tokenizer_id: "/models/DeepSeek-R1-Distill-Qwen-7B".into(),
            num_prompts: 3,
            request_rate: f64::INFINITY,
            burstiness: 1.0,
            max_concurrency: Some(200),
            time_scale: scale,
        }
    }

    pub(crate) fn record(start: f64, ttft: f64, itl: &[f64], output: usize) -> RequestRecord {
        RequestRecord {
            success: true,
            prompt_len: 100,
            output_len: output,
            ttft,
            itl: itl.to_vec(),
            latency: ttft + itl.iter().sum::<f64>(),
            start,
            ..RequestRecord::default()
        }
    }

    pub(crate) fn sample() -> Vec<RequestRecord> {
        vec![
            record(0.0, 0.1, &[0.05, 0.05, 0.1], 4),
            record(0.5, 0.3, &[0.2], 2),
            record(0.6, 0.2, &[], 1),
            RequestRecord {
                error: "Never received a valid chunk".into(),
                ..RequestRecord::default()
            },
        ]
    }

    #[test]
    fn metrics_follow_the_client_rules() {
        let options = SummaryOptions {
            metrics: Metric::ALL.to_vec(),
            percentiles: vec![50.0, 99.0],
            goodput: vec![(Metric::Ttft, 250.0)],
        };
        let summary = summarize(&sample(), 2.0, settings(1.0), options);
        assert_eq!((summary.completed, summary.failed), (3, 1));
        assert_eq!(summary.total_input_tokens, 300);
        assert_eq!(summary.total_output_tokens, 7);
        assert!((summary.request_throughput - 1.5).abs() < 1e-9);
        assert!((summary.output_throughput - 3.5).abs() < 1e-9);
        assert!((summary.total_token_throughput - 153.5).abs() < 1e-9);
        // Two of three requests have TTFT ≤ 250 ms.
        assert!((summary.request_goodput.unwrap() - 1.0).abs() < 1e-9);
        // TTFT: 100, 300, 200 ms.
        assert!((summary.ttft.mean - 200.0).abs() < 1e-9);
        assert!((summary.ttft.median - 200.0).abs() < 1e-9);
        // TPOT only for outputs > 1: (0.2/3)s and 0.2s.
        assert_eq!(summary.tpot.samples.len(), 2);
        assert!((summary.tpot.mean - (200.0 / 3.0 + 200.0) / 2.0).abs() < 1e-9);
        // ITL pooled: 50, 50, 100, 200.
        assert_eq!(summary.itl.samples.len(), 4);
        assert!((summary.itl.mean - 100.0).abs() < 1e-9);
        assert!((summary.e2el.mean - (300.0 + 500.0 + 200.0) / 3.0).abs() < 1e-9);
        // Requests open: [0, 0.3), [0.5, 1.0), [0.6, 0.8): at most two at once.
        assert_eq!(summary.max_concurrent_requests, 2.0);
        // Token times 0.1 0.15 0.2 0.3 | 0.8 1.0 | 0.8: bucket 0 holds 6.
        assert_eq!(summary.max_output_tokens_per_s, 6.0);
        assert_eq!(summary.errors, ["Never received a valid chunk"]);
    }

    #[test]
    fn time_scale_converts_to_simulated_seconds() {
        let fast = summarize(&sample(), 2.0, settings(10.0), SummaryOptions::default());
        let real = summarize(&sample(), 2.0, settings(1.0), SummaryOptions::default());
        assert!((fast.ttft.mean - 10.0 * real.ttft.mean).abs() < 1e-9);
        assert!((fast.duration - 20.0).abs() < 1e-9);
        assert!((fast.request_throughput * 10.0 - real.request_throughput).abs() < 1e-9);
    }
}
