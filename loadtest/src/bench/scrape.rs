//! What the model servers said during a run: every endpoint's `/metrics` scraped on a fixed
//! interval (KV-cache usage, running and waiting requests, prefix-cache queries and hits,
//! preemptions, token and request counters, running adapters), plus the simulator's
//! `/sim/stats` before and after (adapter loads, which vLLM does not export).
//!
//! All endpoints are scraped together at each tick, so a tick is one instant across the fleet;
//! the KV figures of the reports ([`KvBalance`]) are computed over ticks. Scrapes that fail leave
//! a gap (`None`) rather than a made-up value. The scraper is a single task that stops when told,
//! after one final scrape; it never outlives the run.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

use crate::client::StreamClient;

/// One endpoint's figures at one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointSample {
    pub kv_usage: f64,
    pub running: f64,
    pub waiting: f64,
    pub prefix_queries: f64,
    pub prefix_hits: f64,
    pub preemptions: f64,
    pub prompt_tokens: f64,
    pub generation_tokens: f64,
    /// `request_success_total` over every finish reason but `abort`.
    pub requests_finished: f64,
    pub requests_aborted: f64,
    /// Adapters with running requests (the newest `lora_requests_info` series).
    pub running_adapters: Vec<String>,
}

/// One tick: seconds since the scraper started (wall), and every endpoint's sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeTick {
    pub at: f64,
    pub samples: Vec<Option<EndpointSample>>,
}

/// Splits `name{labels} value` into its parts (`labels` without braces; empty when none).
fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    match series.split_once('{') {
        Some((name, labels)) => Some((name, labels.strip_suffix('}')?, value)),
        None => Some((series, "", value)),
    }
}

/// The value of label `key` in a label list (`a="1",b="x,y"`).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let end = after.find('"')?;
        if name.trim_start_matches(',') == key {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    None
}

/// Parses the figures this module records out of a vLLM `/metrics` text.
pub fn parse_metrics(text: &str) -> EndpointSample {
    let mut sample = EndpointSample::default();
    let mut kv_current = None;
    let mut kv_legacy = None;
    let mut newest_lora: Option<(f64, &str)> = None;
    for (name, labels, value) in text.lines().filter_map(split_sample) {
        match name {
            "vllm:kv_cache_usage_perc" => kv_current = Some(value),
            "vllm:gpu_cache_usage_perc" => kv_legacy = Some(value),
            "vllm:num_requests_running" => sample.running += value,
            "vllm:num_requests_waiting" => sample.waiting += value,
            "vllm:prefix_cache_queries_total" => sample.prefix_queries += value,
            "vllm:prefix_cache_hits_total" => sample.prefix_hits += value,
            "vllm:num_preemptions_total" => sample.preemptions += value,
            "vllm:prompt_tokens_total" => sample.prompt_tokens += value,
            "vllm:generation_tokens_total" => sample.generation_tokens += value,
            "vllm:request_success_total" => {
                if label(labels, "finished_reason") == Some("abort") {
                    sample.requests_aborted += value;
                } else {
                    sample.requests_finished += value;
                }
            }
            "vllm:lora_requests_info" if newest_lora.is_none_or(|(t, _)| value > t) => {
                newest_lora = Some((value, labels));
            }
            _ => {}
        }
    }
    sample.kv_usage = kv_current.or(kv_legacy).unwrap_or(0.0);
    if let Some((_, labels)) = newest_lora {
        sample.running_adapters = label(labels, "running_lora_adapters")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    }
    sample
}

/// Fetches and parses one endpoint's `/metrics`; `None` when it did not answer 200 in time.
pub async fn scrape_once(
    client: &StreamClient,
    base: &str,
    timeout: Duration,
) -> Option<EndpointSample> {
    let url = format!("{base}/metrics");
    let answer = tokio::time::timeout(timeout, client.request(http::Method::GET, &url, None)).await;
    match answer {
        Ok(Ok((200, body))) => Some(parse_metrics(&String::from_utf8_lossy(&body))),
        _ => None,
    }
}

/// The simulator's `/sim/stats` (`Value::Null` from a real vLLM, which has no such endpoint).
pub async fn sim_stats(client: &StreamClient, base: &str) -> Value {
    match client
        .request(http::Method::GET, &format!("{base}/sim/stats"), None)
        .await
    {
        Ok((200, body)) => serde_json::from_slice(&body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Scrapes every endpoint at once.
async fn scrape_tick(
    client: &StreamClient,
    endpoints: &[String],
    timeout: Duration,
    origin: Instant,
) -> ScrapeTick {
    let at = origin.elapsed().as_secs_f64();
    let mut scrapes = tokio::task::JoinSet::new();
    for (i, base) in endpoints.iter().enumerate() {
        let (client, base) = (client.clone(), base.clone());
        scrapes.spawn(async move { (i, scrape_once(&client, &base, timeout).await) });
    }
    let mut samples = vec![None; endpoints.len()];
    while let Some(Ok((i, sample))) = scrapes.join_next().await {
        samples[i] = sample;
    }
    ScrapeTick { at, samples }
}

/// A running scraper.
pub struct Scraper {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<ScrapeTick>>,
}

impl Scraper {
    /// Scrapes `endpoints` (base URLs) once, then keeps scraping every `interval` in the
    /// background; tick times count from `origin`. Returns after the first scrape, so work
    /// started afterwards is inside the counters' deltas.
    pub async fn start(endpoints: Vec<String>, interval: Duration, origin: Instant) -> Scraper {
        let (stop, mut stopped) = oneshot::channel();
        let client = StreamClient::new(endpoints.len().max(1));
        let timeout = interval.max(Duration::from_secs(1));
        let first = scrape_tick(&client, &endpoints, timeout, origin).await;
        let task = tokio::spawn(async move {
            let mut ticks = vec![first];
            let mut timer = tokio::time::interval(interval);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            timer.tick().await; // the first tick completes at once: it was taken above
            loop {
                // The tick after the stop signal is the last one: the final counters are in.
                let stopping = tokio::select! {
                    _ = &mut stopped => true,
                    _ = timer.tick() => false,
                };
                ticks.push(scrape_tick(&client, &endpoints, timeout, origin).await);
                if stopping {
                    break;
                }
            }
            ticks
        });
        Scraper { stop, task }
    }

    /// Takes one last scrape, stops, and returns every tick.
    pub async fn finish(self) -> Vec<ScrapeTick> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// KV-cache usage across endpoints over a time window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KvBalance {
    /// Per endpoint: time average of `kv_cache_usage_perc` (0..1).
    pub mean: Vec<f64>,
    /// Per endpoint: the highest value seen.
    pub max: Vec<f64>,
    /// Time average over ticks of (max − min across endpoints).
    pub spread: f64,
    /// Time average over ticks of (standard deviation / mean across endpoints), ticks with a
    /// zero mean left out.
    pub cv: f64,
    /// Ticks used (every endpoint answered).
    pub ticks: usize,
}

/// Computes [`KvBalance`] over ticks with `from <= at <= to` where every endpoint answered.
pub fn kv_balance(ticks: &[ScrapeTick], endpoints: usize, from: f64, to: f64) -> KvBalance {
    let mut sums = vec![0.0; endpoints];
    let mut maxima = vec![0.0f64; endpoints];
    let (mut spread_sum, mut cv_sum, mut cv_ticks, mut used) = (0.0, 0.0, 0usize, 0usize);
    for tick in ticks.iter().filter(|t| t.at >= from && t.at <= to) {
        let Some(values) = tick
            .samples
            .iter()
            .map(|s| s.as_ref().map(|s| s.kv_usage))
            .collect::<Option<Vec<f64>>>()
        else {
            continue;
        };
        if values.len() != endpoints || endpoints == 0 {
            continue;
        }
        used += 1;
        for (i, v) in values.iter().enumerate() {
            sums[i] += v;
            maxima[i] = maxima[i].max(*v);
        }
        let high = values.iter().copied().fold(f64::MIN, f64::max);
        let low = values.iter().copied().fold(f64::MAX, f64::min);
        spread_sum += high - low;
        let mean = super::stats::mean(&values);
        if mean > 0.0 {
            cv_sum += super::stats::std_dev(&values) / mean;
            cv_ticks += 1;
        }
    }
    let per_tick = |sum: f64, n: usize| if n == 0 { 0.0 } else { sum / n as f64 };
    KvBalance {
        mean: sums.iter().map(|s| per_tick(*s, used)).collect(),
        max: maxima,
        spread: per_tick(spread_sum, used),
        cv: per_tick(cv_sum, cv_ticks),
        ticks: used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP vllm:kv_cache_usage_perc KV-cache usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="/model/qwen"} 0.25
vllm:num_requests_running{engine="0",model_name="/model/qwen"} 7.0
vllm:num_requests_waiting{engine="0",model_name="/model/qwen"} 2.0
vllm:prefix_cache_queries_total{engine="0",model_name="/model/qwen"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="/model/qwen"} 640.0
vllm:num_preemptions_total{engine="0",model_name="/model/qwen"} 3.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="/model/qwen"} 4.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="/model/qwen"} 5.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="/model/qwen"} 1.0
vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters=""} 1700000001.5
vllm:lora_requests_info{max_lora="2",running_lora_adapters="c",waiting_lora_adapters="d"} 1700000000.5
"#;

    #[test]
    fn metrics_text_is_parsed() {
        let sample = parse_metrics(TEXT);
        assert_eq!(sample.kv_usage, 0.25);
        assert_eq!((sample.running, sample.waiting), (7.0, 2.0));
        assert_eq!((sample.prefix_queries, sample.prefix_hits), (1000.0, 640.0));
        assert_eq!(sample.preemptions, 3.0);
        assert_eq!(
            (sample.requests_finished, sample.requests_aborted),
            (9.0, 1.0)
        );
        assert_eq!(sample.running_adapters, ["a", "b"]);
        let legacy = parse_metrics("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n");
        assert_eq!(legacy.kv_usage, 0.5);
    }

    fn tick(at: f64, values: &[Option<f64>]) -> ScrapeTick {
        ScrapeTick {
            at,
            samples: values
                .iter()
                .map(|v| {
                    v.map(|kv| EndpointSample {
                        kv_usage: kv,
                        ..EndpointSample::default()
                    })
                })
                .collect(),
        }
    }

    #[test]
    fn balance_is_averaged_over_complete_ticks_in_the_window() {
        let ticks = [
            tick(0.0, &[Some(0.2), Some(0.4)]),
            tick(1.0, &[Some(0.5), Some(0.5)]),
            tick(2.0, &[Some(0.9), None]),
            tick(9.0, &[Some(1.0), Some(0.0)]),
        ];
        let balance = kv_balance(&ticks, 2, 0.0, 5.0);
        assert_eq!(balance.ticks, 2);
        assert!((balance.mean[0] - 0.35).abs() < 1e-12);
        assert!((balance.mean[1] - 0.45).abs() < 1e-12);
        assert_eq!(balance.max, [0.5, 0.5]);
        assert!((balance.spread - 0.1).abs() < 1e-12);
        // Tick 0: std 0.1 / mean 0.3; tick 1: 0.
        assert!((balance.cv - (0.1 / 0.3) / 2.0).abs() < 1e-12);
    }
}
