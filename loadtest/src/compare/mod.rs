//! `compare`: one scenario's workload through the plain route (8080) and through the inference
//! route (8081) with each strategy asked for, each run on a fresh stack, then a report.
//!
//! Per route: start five fresh simulators (one profile for all, or one each) and a fresh gateway
//! on a scratch copy of `manifests/examples/local/` with the strategy annotation set
//! ([`fleet_up`]), run the workload in-process with the simulators' `/metrics` scraped
//! ([`crate::bench::observed`]), measure every process's CPU time over the run, stop everything.
//! A scenario with a rate staircase runs its stages back to back in that one run and cuts the
//! figures per stage afterwards ([`sweep`]). A route asked for twice runs twice, each on its own
//! stack, and is reported as `… (run 2)`. Then [`report`] writes `docs/benchmarks/NAME.md` with
//! the tables and [`plot`] the pictures; [`table`] reads several scenarios' data files back into
//! one table.

pub mod capacity;
pub mod fleet_up;
pub mod llm_d;
pub mod plot;
pub mod qos;
pub mod report;
pub mod scenario;
pub mod sweep;
pub mod table;
pub mod targets;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use self::fleet_up::{StackError, StackPlan, start_stack};
use self::scenario::{Route, Scenario};
use self::sweep::{StageResult, stage_results};
use crate::bench::dataset::DatasetError;
use crate::bench::observed::{ObservedRun, run_observed};
use crate::bench::prefix_bound::DEFAULT_BLOCK_SIZE;
use crate::bench::request::{RequestShape, default_request_id_prefix};
use crate::bench::runner::{RunError, RunPlan};
use crate::bench::summary::{BenchSummary, Metric, RunSettings, SummaryOptions, summarize};
use crate::client::StreamClient;
use crate::procs::{SEED_SERVED_NAME, process_cpu_seconds};

/// Why a comparison failed.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("route {route}: {source}")]
    Run { route: String, source: RunError },
    #[error("route {route}: {source}")]
    Tenants {
        route: String,
        source: crate::bench::tenants::TenantsError,
    },
    #[error("route {route}: a process died during the run: {source}")]
    Died {
        route: String,
        source: crate::procs::ProcessError,
    },
    #[error("creating a scratch directory: {0}")]
    Scratch(std::io::Error),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A whole comparison.
#[derive(Debug, Clone)]
pub struct ComparePlan {
    pub scenario: Scenario,
    pub routes: Vec<Route>,
    pub size: usize,
    pub time_scale: f64,
    pub seed: u64,
    /// Each simulator's profile in pod order, or one for all five.
    pub profiles: Vec<String>,
    pub sim_binary: PathBuf,
    pub gateway_binary: PathBuf,
    pub manifests: PathBuf,
    pub scrape_interval: Duration,
    pub progress: bool,
    /// Keep the scratch directories (configs, logs) instead of deleting them.
    pub keep_scratch: bool,
    /// The gateway's `RUST_LOG` (`warn`; `warn,access=info` logs every request).
    pub gateway_log: String,
    /// Gateway replica counts: every route runs once per count (`--gateway-replicas 1,2,4`),
    /// its requests spread over the replicas in turn.
    pub replicas: Vec<usize>,
}

/// CPU seconds each process used during a run, and the run's wall time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuUse {
    pub wall: f64,
    pub sims: Vec<f64>,
    pub gateway: f64,
    pub client: f64,
}

impl CpuUse {
    /// Percent of one core.
    pub fn percent(&self, seconds: f64) -> f64 {
        if self.wall > 0.0 {
            seconds / self.wall * 100.0
        } else {
            0.0
        }
    }
}

/// One route's results.
#[derive(Debug, Clone)]
pub struct RouteRun {
    pub route: Route,
    /// 1 for a route's first run in the plan, 2 for its second, …
    pub repeat: usize,
    pub summary: BenchSummary,
    pub observed: ObservedRun,
    pub cpu: CpuUse,
    pub requests: usize,
    /// Per stage of a rate staircase (empty without one).
    pub stages: Vec<StageResult>,
    /// Gateway replicas the requests were spread over.
    pub replicas: usize,
    /// The gateways' KV-event and tokenization series at the end of the run, summed over the
    /// replicas (`name{labels}` → value).
    pub gateway_counters: std::collections::BTreeMap<String, f64>,
}

impl RouteRun {
    /// `8080 plain`, or `8080 plain (run 2)` for a repeat, with ` ×N` for N gateway replicas.
    pub fn short(&self) -> String {
        with_repeat(
            with_replicas(self.route.short(), self.replicas),
            self.repeat,
        )
    }

    /// `8080 plain (Service round-robin)`, or with ` (run 2)` for a repeat and ` ×N` for N
    /// gateway replicas.
    pub fn label(&self) -> String {
        with_repeat(
            with_replicas(self.route.label(), self.replicas),
            self.repeat,
        )
    }
}

/// Appends ` ×N` for more than one gateway replica.
pub fn with_replicas(text: String, replicas: usize) -> String {
    if replicas > 1 {
        format!("{text} ×{replicas}")
    } else {
        text
    }
}

/// Appends ` (run N)` from the second run of a route on.
pub fn with_repeat(text: String, repeat: usize) -> String {
    if repeat > 1 {
        format!("{text} (run {repeat})")
    } else {
        text
    }
}

/// For each route of a plan, how many times it has come up so far (1 the first time).
pub fn repeat_numbers(routes: &[Route]) -> Vec<usize> {
    routes
        .iter()
        .enumerate()
        .map(|(i, route)| routes[..=i].iter().filter(|r| *r == route).count())
        .collect()
}

/// The statistics every report shows.
pub fn summary_options() -> SummaryOptions {
    SummaryOptions {
        metrics: Metric::ALL.to_vec(),
        percentiles: vec![50.0, 90.0, 99.0],
        goodput: Vec::new(),
    }
}

pub(crate) fn cpu_now(pids: &[u32]) -> Vec<f64> {
    pids.iter()
        .map(|&pid| process_cpu_seconds(pid).unwrap_or(0.0))
        .collect()
}

/// The stack of `plan`'s scenario for `route`, its configuration and logs in `scratch`.
pub(crate) fn stack_plan(
    plan: &ComparePlan,
    route: &Route,
    replicas: usize,
    scratch: &std::path::Path,
) -> StackPlan {
    let scenario = &plan.scenario;
    StackPlan {
        sim_binary: plan.sim_binary.clone(),
        gateway_binary: plan.gateway_binary.clone(),
        manifests: plan.manifests.clone(),
        profiles: plan.profiles.clone(),
        time_scale: plan.time_scale,
        seed: plan.seed,
        lora_modules: scenario.lora_modules.clone(),
        gateway_models: scenario.gateway_models.clone(),
        strategy: route.strategy().map(str::to_owned),
        flow_control: route.flow_control(),
        objectives: scenario.objectives.clone(),
        scratch: scratch.to_path_buf(),
        gateway_log: plan.gateway_log.clone(),
        kv_events: route.kv_events(),
        replicas,
    }
}

/// After a run: check that every process of `stack` lived through it, stop them all, and keep
/// the scratch directory when asked to.
pub(crate) fn finish_stack(
    mut stack: fleet_up::Stack,
    route: &Route,
    scratch: tempfile::TempDir,
    keep: bool,
) -> Result<(), CompareError> {
    let alive = stack.processes.check_alive();
    stack.processes.stop_all();
    if keep {
        eprintln!("kept {}", scratch.keep().display());
    }
    alive.map_err(|source| CompareError::Died {
        route: route.short(),
        source,
    })
}

/// Runs the scenario through one route on a fresh stack of `replicas` gateways; `repeat`
/// numbers the route's runs.
pub async fn run_route(
    plan: &ComparePlan,
    route: &Route,
    repeat: usize,
    replicas: usize,
) -> Result<RouteRun, CompareError> {
    let scratch = tempfile::Builder::new()
        .prefix("igw-compare-")
        .tempdir()
        .map_err(CompareError::Scratch)?;
    let scenario = &plan.scenario;
    let stack = start_stack(&stack_plan(plan, route, replicas, scratch.path())).await?;
    let workload = scenario.workload(plan.size, plan.seed)?;
    let requests = workload.num_requests();
    let sending = &scenario.sending;
    let sweep = scenario.sweep(plan.size);
    // A staircase's sessions carry their send times; its settings report the mean rate.
    let request_rate = sweep.as_ref().map_or(sending.request_rate, |s| {
        s.total_requests() as f64 / (s.stage_seconds * s.rates.len() as f64)
    });
    let port = route.port();
    let urls: Vec<String> = stack
        .gateway_hosts
        .iter()
        .map(|host| format!("http://{host}:{port}{}", sending.backend.default_endpoint()))
        .collect();
    let run_plan = RunPlan {
        shape: RequestShape {
            url: urls[0].clone(),
            backend: sending.backend,
            style: sending.style,
            ignore_eos: sending.ignore_eos || workload.forces_ignore_eos,
            api_key: None,
            request_id_prefix: default_request_id_prefix(plan.seed),
            extra_headers: Vec::new(),
            more_urls: urls[1..].to_vec(),
        },
        served_model: SEED_SERVED_NAME.to_string(),
        max_concurrency: sending.max_concurrency,
        request_rate: sending.request_rate,
        burstiness: 1.0,
        seed: plan.seed,
        progress: plan.progress,
        initial_test_run: sending.initial_test_run,
        block_size: DEFAULT_BLOCK_SIZE,
        time_scale: plan.time_scale,
    };
    let client = StreamClient::new(sending.max_concurrency.unwrap_or(512));
    let mut pids = stack.sim_pids.clone();
    pids.extend(&stack.gateway_pids);
    pids.push(std::process::id());
    let sims = stack.sim_pids.len();
    let gateways = stack.gateway_pids.len();
    let before = cpu_now(&pids);
    let started = Instant::now();
    let observed = run_observed(
        run_plan,
        workload,
        client,
        stack.endpoints.clone(),
        plan.scrape_interval,
    )
    .await
    .map_err(|source| CompareError::Run {
        route: route.short(),
        source,
    })?;
    let wall = started.elapsed().as_secs_f64();
    let after = cpu_now(&pids);
    let gateway_counters = gateway_counters(stack.gateway_pids.len()).await;
    finish_stack(stack, route, scratch, plan.keep_scratch)?;
    let used: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let cpu = CpuUse {
        wall,
        sims: used[..sims].to_vec(),
        gateway: used[sims..sims + gateways].iter().sum(),
        client: used[sims + gateways],
    };
    let settings = RunSettings {
        backend: sending.backend.name().to_string(),
        label: Some(with_repeat(with_replicas(route.short(), replicas), repeat)),
        model_id: sending.model_id.clone(),
        tokenizer_id: sending.model_id.clone(),
        num_prompts: requests,
        request_rate,
        burstiness: 1.0,
        max_concurrency: sending.max_concurrency,
        time_scale: plan.time_scale,
    };
    let stages = sweep.map_or_else(Vec::new, |sweep| {
        stage_results(
            &sweep,
            &observed.output.records,
            &settings,
            &summary_options(),
        )
    });
    let summary = summarize(
        &observed.output.records,
        observed.output.duration,
        settings,
        summary_options(),
    );
    Ok(RouteRun {
        route: route.clone(),
        repeat,
        summary,
        observed,
        cpu,
        requests,
        stages,
        replicas,
        gateway_counters,
    })
}

/// The gateway series [`RouteRun::gateway_counters`] keeps.
const GATEWAY_COUNTERS: [&str; 3] = [
    "gateway_prompt_tokenizations_total",
    "gateway_kv_events_total",
    "gateway_kv_events_endpoints",
];

/// Every series of [`GATEWAY_COUNTERS`] summed over the `replicas` gateways' `/metrics`, by
/// its label set (`name{labels}`); series the gateways do not export are absent.
async fn gateway_counters(replicas: usize) -> std::collections::BTreeMap<String, f64> {
    let client = StreamClient::new(4);
    let mut sums = std::collections::BTreeMap::new();
    for replica in 0..replicas {
        let url = format!("http://{}/metrics", fleet_up::admin_addr(replica));
        let Ok((200, page)) = client.request(http::Method::GET, &url, None).await else {
            continue;
        };
        for line in String::from_utf8_lossy(&page).lines() {
            if !GATEWAY_COUNTERS.iter().any(|name| line.starts_with(name)) {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(value) = value.parse::<f64>()
            {
                *sums.entry(series.to_owned()).or_insert(0.0) += value;
            }
        }
    }
    sums
}

/// Runs every route of `plan` in turn, reporting progress on stderr.
pub async fn run_all(plan: &ComparePlan) -> Result<Vec<RouteRun>, CompareError> {
    let mut runs = Vec::with_capacity(plan.routes.len() * plan.replicas.len());
    let replica_counts = if plan.replicas.is_empty() {
        vec![1]
    } else {
        plan.replicas.clone()
    };
    for replicas in replica_counts {
        for (route, repeat) in plan.routes.iter().zip(repeat_numbers(&plan.routes)) {
            eprintln!(
                "{}: {} through {} (fresh simulators and gateway)",
                plan.scenario.name.file_stem(),
                plan.scenario.title,
                with_repeat(with_replicas(route.label(), replicas), repeat)
            );
            let run = run_route(plan, route, repeat, replicas).await?;
            report_run(&run);
            runs.push(run);
        }
    }
    Ok(runs)
}

/// One run's headline figures on stderr.
fn report_run(run: &RouteRun) {
    eprintln!(
        "  {} ok, {} failed, {:.1} simulated s, TTFT p50/p90/p99 {:.0}/{:.0}/{:.0} ms, KV spread {:.3}, prefix hits {:.1}%, adapter loads {}",
        run.summary.completed,
        run.summary.failed,
        run.summary.duration,
        run.summary.ttft.percentile(50.0),
        run.summary.ttft.percentile(90.0),
        run.summary.ttft.percentile(99.0),
        run.observed.servers.kv_spread,
        run.observed.servers.prefix_hit_rate * 100.0,
        run.observed.servers.lora_gpu_loads
    );
    if !run.gateway_counters.is_empty() {
        let counters: Vec<String> = run
            .gateway_counters
            .iter()
            .map(|(series, value)| format!("{series} {value}"))
            .collect();
        eprintln!("    gateways: {}", counters.join(", "));
    }
    for stage in &run.stages {
        eprintln!(
            "    stage {} req/s: {} sent, {} failed, {:.0} output tok/s, TTFT p50/p90 {:.0}/{:.0} ms, ITL mean/p90 {:.1}/{:.1} ms",
            stage.rate,
            stage.requests,
            stage.summary.failed,
            stage.output_tokens_per_second,
            stage.summary.ttft.percentile(50.0),
            stage.ttft_p90(),
            stage.summary.itl.mean,
            stage.summary.itl.percentile(90.0),
        );
    }
}

/// Writes `text` to `path`, creating its directory; returns the path.
pub(crate) fn write_file(path: PathBuf, text: String) -> Result<PathBuf, CompareError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| CompareError::Write {
            path: parent.display().to_string(),
            source,
        })?;
    }
    std::fs::write(&path, text).map_err(|source| CompareError::Write {
        path: path.display().to_string(),
        source,
    })?;
    Ok(path)
}

/// Writes `NAME.md`, `data/NAME.json` and the plots into `dir`; returns the paths written.
pub fn write_report(
    plan: &ComparePlan,
    runs: &[RouteRun],
    dir: &std::path::Path,
    context: &report::ReportContext,
    font: Option<&std::path::Path>,
) -> Result<Vec<PathBuf>, CompareError> {
    let stem = plan.scenario.name.file_stem();
    let mut written = vec![
        write_file(
            dir.join(format!("{stem}.md")),
            report::markdown(plan, runs, context),
        )?,
        write_file(
            dir.join("data").join(format!("{stem}.json")),
            serde_json::to_string_pretty(&report::data_json(plan, runs, context))
                .unwrap_or_default(),
        )?,
    ];
    plot::register_font(font)?;
    written.extend(plot::write_plots(dir, stem, runs, plan.time_scale)?);
    if runs.iter().any(|r| !r.stages.is_empty()) {
        written.extend(plot::write_sweep_plots(dir, stem, runs)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_routes_are_numbered_and_labelled_apart() {
        let routes: Vec<Route> = ["plain", "DEFAULT", "plain", "8080", "default"]
            .iter()
            .map(|r| Route::parse(r))
            .collect();
        assert_eq!(repeat_numbers(&routes), [1, 1, 2, 3, 2]);
        assert_eq!(with_repeat(Route::Plain.short(), 1), "8080 plain");
        assert_eq!(with_repeat(Route::Plain.short(), 2), "8080 plain (run 2)");
        assert_eq!(with_repeat(routes[4].label(), 2), "8081 DEFAULT (run 2)");
    }
}
