//! The benchmark result as `vllm bench serve` presents it: the printed summary (every line
//! `"{:<40} {:<10}"`, floats with two decimals, banners centred in 50 characters), the saved JSON
//! with the client's keys (ours under `"loadgen"`), and the result file name.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::stats::percentile_label;
use super::summary::{BenchSummary, Metric, RunSettings};

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{label:<40} {value:<10}");
}

fn float_line(out: &mut String, label: &str, value: f64) {
    let _ = writeln!(out, "{label:<40} {value:<10.2}");
}

fn centered(out: &mut String, text: &str, fill: char) {
    let width = 50usize.saturating_sub(text.chars().count());
    let left = width / 2;
    let fill_left: String = std::iter::repeat_n(fill, left).collect();
    let fill_right: String = std::iter::repeat_n(fill, width - left).collect();
    let _ = writeln!(out, "{fill_left}{text}{fill_right}");
}

/// The printed summary, line for line as the client prints it.
pub fn render_text(summary: &BenchSummary) -> String {
    let mut out = String::new();
    let settings = &summary.settings;
    centered(&mut out, " Serving Benchmark Result ", '=');
    line(&mut out, "Successful requests:", summary.completed);
    line(&mut out, "Failed requests:", summary.failed);
    if let Some(limit) = settings.max_concurrency {
        line(&mut out, "Maximum request concurrency:", limit);
    }
    if settings.request_rate.is_finite() {
        float_line(
            &mut out,
            "Request rate configured (RPS):",
            settings.request_rate,
        );
    }
    float_line(&mut out, "Benchmark duration (s):", summary.duration);
    line(&mut out, "Total input tokens:", summary.total_input_tokens);
    line(
        &mut out,
        "Total generated tokens:",
        summary.total_output_tokens,
    );
    float_line(
        &mut out,
        "Request throughput (req/s):",
        summary.request_throughput,
    );
    if let Some(goodput) = summary.request_goodput {
        float_line(&mut out, "Request goodput (req/s):", goodput);
    }
    float_line(
        &mut out,
        "Output token throughput (tok/s):",
        summary.output_throughput,
    );
    float_line(
        &mut out,
        "Peak output token throughput (tok/s):",
        summary.max_output_tokens_per_s,
    );
    float_line(
        &mut out,
        "Peak concurrent requests:",
        summary.max_concurrent_requests,
    );
    float_line(
        &mut out,
        "Total token throughput (tok/s):",
        summary.total_token_throughput,
    );
    for metric in Metric::ALL {
        if !summary.options.metrics.contains(&metric) {
            continue;
        }
        let stats = summary.stats(metric);
        centered(&mut out, metric.header(), '-');
        float_line(
            &mut out,
            &format!("Mean {} (ms):", metric.label()),
            stats.mean,
        );
        float_line(
            &mut out,
            &format!("Median {} (ms):", metric.label()),
            stats.median,
        );
        for &(p, value) in &stats.percentiles {
            float_line(
                &mut out,
                &format!("P{} {} (ms):", percentile_label(p), metric.label()),
                value,
            );
        }
    }
    let _ = writeln!(out, "{}", "=".repeat(50));
    out
}

/// Civil date and time (UTC) as `YYYYmmdd-HHMMSS`, the client's result date format.
pub fn timestamp_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds = unix_seconds % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// `request_rate` as the client writes it: a number, or `"inf"`.
fn rate_value(rate: f64) -> Value {
    if rate.is_finite() {
        json!(rate)
    } else {
        json!("inf")
    }
}

/// The top-level keys `vllm bench serve --save-result` writes on every run, in its order: the run
/// settings, totals and throughput, the per-request arrays it keeps by default, and peaks and
/// extras. The statistics (`{mean,median,std}_{metric}_ms`, `p{P}_{metric}_ms`) follow them, one
/// set per selected metric and percentile. [`to_json`] must write every one of these keys; tests
/// check its output against this list.
pub const CLIENT_KEYS: &[&str] = &[
    "date",
    "endpoint_type",
    "backend",
    "label",
    "model_id",
    "tokenizer_id",
    "num_prompts",
    "request_rate",
    "burstiness",
    "max_concurrency",
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "latencies",
    "queue_times",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "rtfx",
];

/// The saved result: the client's keys, plus ours under `"loadgen"` (given by the caller).
pub fn to_json(summary: &BenchSummary, date: &str, extras: Value) -> Value {
    let settings = &summary.settings;
    let mut result = Map::new();
    let mut put = |key: &str, value: Value| {
        result.insert(key.to_string(), value);
    };
    put("date", json!(date));
    put("endpoint_type", json!(settings.backend));
    put("backend", json!(settings.backend));
    put("label", json!(settings.label));
    put("model_id", json!(settings.model_id));
    put("tokenizer_id", json!(settings.tokenizer_id));
    put("num_prompts", json!(settings.num_prompts));
    put("request_rate", rate_value(settings.request_rate));
    put("burstiness", json!(settings.burstiness));
    put("max_concurrency", json!(settings.max_concurrency));
    put("duration", json!(summary.duration));
    put("completed", json!(summary.completed));
    put("failed", json!(summary.failed));
    put("total_input_tokens", json!(summary.total_input_tokens));
    put("total_output_tokens", json!(summary.total_output_tokens));
    put("request_throughput", json!(summary.request_throughput));
    put("request_goodput", json!(summary.request_goodput));
    put("output_throughput", json!(summary.output_throughput));
    put(
        "total_token_throughput",
        json!(summary.total_token_throughput),
    );
    put("latencies", json!(summary.latencies));
    put("queue_times", json!(summary.queue_times));
    put(
        "max_output_tokens_per_s",
        json!(summary.max_output_tokens_per_s),
    );
    put(
        "max_concurrent_requests",
        json!(summary.max_concurrent_requests),
    );
    put("rtfx", json!(0.0));
    for metric in Metric::ALL {
        if !summary.options.metrics.contains(&metric) {
            continue;
        }
        let stats = summary.stats(metric);
        let key = metric.key();
        put(&format!("mean_{key}_ms"), json!(stats.mean));
        put(&format!("median_{key}_ms"), json!(stats.median));
        put(&format!("std_{key}_ms"), json!(stats.std));
        for &(p, value) in &stats.percentiles {
            put(&format!("p{}_{key}_ms", percentile_label(p)), json!(value));
        }
    }
    put("loadgen", extras);
    Value::Object(result)
}

/// `{label or backend}-{rate}qps[-concurrency{N}]-{model basename}-{date}.json`.
pub fn result_file_name(settings: &RunSettings, date: &str) -> String {
    let rate = if settings.request_rate.is_finite() {
        // Python's str(float): always a decimal point.
        let text = format!("{}", settings.request_rate);
        if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        }
    } else {
        "inf".to_string()
    };
    let concurrency = settings
        .max_concurrency
        .map(|n| format!("-concurrency{n}"))
        .unwrap_or_default();
    let model = settings
        .model_id
        .rsplit('/')
        .next()
        .unwrap_or(&settings.model_id);
    let label = settings.label.as_deref().unwrap_or(&settings.backend);
    format!("{label}-{rate}qps{concurrency}-{model}-{date}.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::summary::tests::{sample, settings};
    use crate::bench::summary::{SummaryOptions, summarize};

    #[test]
    fn summary_text_has_the_client_layout() {
        let summary = summarize(&sample(), 2.0, settings(1.0), SummaryOptions::default());
        let expected = "\
============ Serving Benchmark Result ============
Successful requests:                     3         
Failed requests:                         1         
Maximum request concurrency:             200       
Benchmark duration (s):                  2.00      
Total input tokens:                      300       
Total generated tokens:                  7         
Request throughput (req/s):              1.50      
Output token throughput (tok/s):         3.50      
Peak output token throughput (tok/s):    6.00      
Peak concurrent requests:                2.00      
Total token throughput (tok/s):          153.50    
---------------Time to First Token----------------
Mean TTFT (ms):                          200.00    
Median TTFT (ms):                        200.00    
P99 TTFT (ms):                           298.00    
-----Time per Output Token (excl. 1st token)------
Mean TPOT (ms):                          133.33    
Median TPOT (ms):                        133.33    
P99 TPOT (ms):                           198.67    
---------------Inter-token Latency----------------
Mean ITL (ms):                           100.00    
Median ITL (ms):                         75.00     
P99 ITL (ms):                            197.00    
==================================================
";
        assert_eq!(render_text(&summary), expected);
    }

    #[test]
    fn rate_line_and_e2el_section_appear_when_asked() {
        let mut with_rate = settings(1.0);
        with_rate.request_rate = 4.0;
        with_rate.max_concurrency = None;
        let options = SummaryOptions {
            metrics: vec![Metric::E2el],
            percentiles: vec![99.9],
            goodput: Vec::new(),
        };
        let text = render_text(&summarize(&sample(), 2.0, with_rate, options));
        assert!(text.contains("Request rate configured (RPS):           4.00      \n"));
        assert!(!text.contains("Maximum request concurrency"));
        assert!(text.contains("----------------End-to-end Latency----------------\n"));
        assert!(text.contains("P99.9 E2EL (ms):"));
    }

    #[test]
    fn json_has_the_client_keys() {
        let options = SummaryOptions {
            metrics: Metric::ALL.to_vec(),
            percentiles: vec![50.0, 99.0],
            goodput: Vec::new(),
        };
        let summary = summarize(&sample(), 2.0, settings(1.0), options);
        let value = to_json(&summary, "20250101-000000", json!({"time_scale": 1.0}));
        let object = value.as_object().unwrap();
        let statistics = [
            "mean_ttft_ms",
            "median_ttft_ms",
            "std_ttft_ms",
            "p50_ttft_ms",
            "p99_ttft_ms",
            "mean_tpot_ms",
            "p99_itl_ms",
            "mean_e2el_ms",
            "p99_e2el_ms",
        ];
        for key in CLIENT_KEYS.iter().chain(&statistics).chain(&["loadgen"]) {
            assert!(object.contains_key(*key), "missing {key}");
        }
        assert_eq!(object["request_rate"], "inf");
        assert!(object["request_goodput"].is_null());
        assert_eq!(object["max_concurrency"], 200);
    }

    #[test]
    fn file_names_and_dates() {
        assert_eq!(timestamp_utc(0), "19700101-000000");
        assert_eq!(timestamp_utc(1_700_000_000), "20231114-221320");
        let name = result_file_name(&settings(1.0), "20250101-000000");
        assert_eq!(
            name,
            "vllm-infqps-concurrency200-DeepSeek-R1-Distill-Qwen-7B-20250101-000000.json"
        );
        let mut rated = settings(1.0);
        rated.request_rate = 2.0;
        rated.max_concurrency = None;
        assert!(result_file_name(&rated, "d").starts_with("vllm-2.0qps-DeepSeek"));
    }
}
