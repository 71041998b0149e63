//! The five-simulator check: start N `vllm-sim` processes (the seed's flags) on 127.0.0.2..,
//! drive them round-robin at a fixed concurrency with the seed's request shape, and report each
//! simulator's measured inter-token latency against its model's prediction and the CPU it used.
//!
//! This answers one question: is the simulator itself ever the bottleneck? The prediction is the
//! engine's virtual step time; the measurement is the wall-clock gap at which the engine loop
//! delivered each token (from `/sim/stats`) and, independently, the gap the client saw. The
//! run is bounded in time and stops its child processes when it ends.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::client::{StreamClient, StreamOutcome};
use crate::procs::{ProcessError, Processes, process_cpu_seconds, seed_sim_command};
use crate::sim::tokenizer::prompt_with_exact_tokens;

/// The run's shape.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub sim_binary: PathBuf,
    pub sims: usize,
    pub port: u16,
    pub profile: String,
    pub time_scale: f64,
    pub concurrency: usize,
    pub duration: Duration,
    pub prefix_len: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
    pub seed: u64,
}

/// Why the check could not run.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("creating a scratch directory for logs: {0}")]
    Scratch(std::io::Error),
}

/// Per-simulator results.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub address: String,
    pub requests_started: usize,
    pub requests_completed: usize,
    pub failed: usize,
    pub client_gap_sum: f64,
    pub client_gaps: u64,
    pub ttft_sum: f64,
    pub ttfts: u64,
    pub stats: serde_json::Value,
    pub preemptions: f64,
    pub cpu_seconds: f64,
    pub exited_early: bool,
}

/// How long five simulators may take to answer /health: they start in milliseconds, so this
/// only bounds a broken start.
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);

/// Uniform integer in [⌊L(1−r)⌋, ⌈L(1+r)⌉] (the current `vllm bench serve` random dataset).
fn ranged(rng: &mut fastrand::Rng, length: usize, ratio: f64) -> usize {
    let low = (length as f64 * (1.0 - ratio)).floor() as usize;
    let high = (length as f64 * (1.0 + ratio)).ceil() as usize;
    rng.usize(low.max(1)..=high.max(1))
}

fn spawn_sims(plan: &FleetPlan, logs: &Path) -> Result<(Processes, Vec<String>), FleetError> {
    let mut processes = Processes::new();
    let mut addresses = Vec::new();
    for index in 0..plan.sims {
        let host = format!("127.0.0.{}", index + 2);
        let command = seed_sim_command(
            &plan.sim_binary,
            &host,
            plan.port,
            &plan.profile,
            plan.time_scale,
            plan.seed + index as u64,
            &[],
        );
        processes.spawn(
            &format!("vllm-sim {host}"),
            command,
            &logs.join(format!("sim-{index}.log")),
        )?;
        addresses.push(format!("http://{host}:{}", plan.port));
    }
    Ok((processes, addresses))
}

/// Runs the check and returns one report per simulator plus the client's own CPU seconds.
pub async fn run(plan: FleetPlan) -> Result<(Vec<SimReport>, f64, Duration), FleetError> {
    let logs = tempfile::tempdir().map_err(FleetError::Scratch)?;
    let (mut children, addresses) = spawn_sims(&plan, logs.path())?;
    let client = StreamClient::new(plan.concurrency);
    for (index, address) in addresses.iter().enumerate() {
        let name = format!("vllm-sim 127.0.0.{}", index + 2);
        let url = format!("{address}/health");
        children
            .wait_ready(&client, &name, &url, HEALTH_DEADLINE)
            .await?;
    }
    let pids: Vec<u32> = children.pids().into_iter().map(|(_, pid)| pid).collect();
    let cpu_before: Vec<f64> = pids
        .iter()
        .map(|&p| process_cpu_seconds(p).unwrap_or(0.0))
        .collect();
    let own_before = process_cpu_seconds(std::process::id()).unwrap_or(0.0);
    let reports: Arc<Vec<Mutex<SimReport>>> = Arc::new(
        addresses
            .iter()
            .map(|a| {
                Mutex::new(SimReport {
                    address: a.clone(),
                    ..SimReport::default()
                })
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + plan.duration;
    let prefix = prompt_with_exact_tokens(plan.prefix_len, plan.seed);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.concurrency {
        let (client, reports, next, plan, prefix, addresses) = (
            client.clone(),
            reports.clone(),
            next.clone(),
            plan.clone(),
            prefix.clone(),
            addresses.clone(),
        );
        workers.spawn(async move {
            while Instant::now() < deadline {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let mut rng =
                    fastrand::Rng::with_seed(plan.seed ^ (index as u64).wrapping_mul(0x9E37_79B9));
                let input = ranged(&mut rng, plan.input_len, plan.range_ratio);
                let output = ranged(&mut rng, plan.output_len, plan.range_ratio);
                let prompt = format!(
                    "{prefix}{}",
                    prompt_with_exact_tokens(input, plan.seed + 1 + index as u64)
                );
                let body = serde_json::json!({
                    "model": "/model/qwen", "prompt": prompt, "repetition_penalty": 1.0,
                    "max_tokens": output, "logprobs": null, "stream": true,
                    "stream_options": {"include_usage": true}, "ignore_eos": true,
                })
                .to_string();
                let sim = index % addresses.len();
                reports[sim].lock().requests_started += 1;
                let mut outcome = StreamOutcome::default();
                let url = format!("{}/v1/completions", addresses[sim]);
                let finished = tokio::select! {
                    result = client.stream(&url, body, &mut outcome) => result.is_ok(),
                    _ = tokio::time::sleep_until(deadline.into()) => false,
                };
                let mut report = reports[sim].lock();
                if finished && outcome.status == 200 && outcome.saw_done {
                    report.requests_completed += 1;
                } else if finished {
                    report.failed += 1;
                }
                report.client_gap_sum += outcome
                    .inter_token_gaps
                    .iter()
                    .map(Duration::as_secs_f64)
                    .sum::<f64>();
                report.client_gaps += outcome.inter_token_gaps.len() as u64;
                if let Some(ttft) = outcome.ttft {
                    report.ttft_sum += ttft.as_secs_f64();
                    report.ttfts += 1;
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let own_cpu = process_cpu_seconds(std::process::id()).unwrap_or(0.0) - own_before;
    let mut results = Vec::new();
    for (index, address) in addresses.iter().enumerate() {
        let mut report = reports[index].lock().clone();
        report.cpu_seconds = process_cpu_seconds(pids[index]).unwrap_or(0.0) - cpu_before[index];
        if let Ok((200, body)) = client
            .request(http::Method::GET, &format!("{address}/sim/stats"), None)
            .await
        {
            report.stats = serde_json::from_slice(&body).unwrap_or_default();
        }
        if let Ok((200, body)) = client
            .request(http::Method::GET, &format!("{address}/metrics"), None)
            .await
        {
            let text = String::from_utf8_lossy(&body);
            report.preemptions = text
                .lines()
                .find(|l| l.starts_with("vllm:num_preemptions_total"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
        }
        results.push(report);
    }
    let all_alive = children.check_alive().is_ok();
    for report in &mut results {
        report.exited_early = !all_alive;
    }
    drop(children);
    Ok((results, own_cpu, elapsed))
}

/// The Markdown report.
pub fn render(
    plan: &FleetPlan,
    reports: &[SimReport],
    client_cpu: f64,
    elapsed: Duration,
) -> String {
    let mut out = String::new();
    let wall = elapsed.as_secs_f64();
    let _ = writeln!(
        out,
        "{} simulators ({}, --time-scale {}), concurrency {}, prompts {}+{}±{:.0}%, outputs {}±{:.0}%, {:.0} s\n",
        plan.sims,
        plan.profile,
        plan.time_scale,
        plan.concurrency,
        plan.prefix_len,
        plan.input_len,
        plan.range_ratio * 100.0,
        plan.output_len,
        plan.range_ratio * 100.0,
        wall
    );
    out.push_str("| simulator | requests started / completed | tokens | model ITL (ms) | sim-measured ITL (ms) | measured / model | mean abs. gap error (ms) | client ITL (ms) | client / model | slips | preemptions | CPU (% of a core) |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut total_cpu = 0.0;
    for report in reports {
        let stat = |key: &str| report.stats[key].as_f64().unwrap_or(f64::NAN);
        let model = stat("itl_model_mean_seconds");
        let client_itl = report.client_gap_sum / report.client_gaps.max(1) as f64 * plan.time_scale;
        total_cpu += report.cpu_seconds;
        let _ = writeln!(
            out,
            "| {}{} | {} / {} | {} | {:.2} | {:.2} | {:.4} | {:.2} | {:.2} | {:.4} | {} | {} | {:.1} |",
            report.address,
            if report.exited_early { " (EXITED)" } else { "" },
            report.requests_started,
            report.requests_completed,
            stat("tokens"),
            model * 1e3,
            stat("itl_measured_mean_seconds") * 1e3,
            stat("itl_measured_over_model"),
            stat("itl_mean_abs_error_seconds") * 1e3,
            client_itl * 1e3,
            client_itl / model,
            stat("slips"),
            report.preemptions,
            report.cpu_seconds / wall * 100.0,
        );
    }
    let _ = writeln!(
        out,
        "\nCPU: simulators {:.1}% of one core in total ({:.1}% each on average), client {:.1}%; the machine has {} cores.",
        total_cpu / wall * 100.0,
        total_cpu / wall * 100.0 / reports.len().max(1) as f64,
        client_cpu / wall * 100.0,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    out
}
