//! `compare`: one scenario's workload through the plain route (8080) and through the inference
//! route (8081) with each strategy asked for, each run on a fresh stack, then a report.
//!
//! Per route: start five fresh simulators and a fresh gateway on a scratch copy of
//! `manifests/examples/local/` with the strategy annotation set ([`fleet_up`]), run the workload
//! in-process with the simulators' `/metrics` scraped ([`crate::bench::observed`]), measure every
//! process's CPU time over the run, stop everything. Then [`report`] writes
//! `docs/benchmarks/NAME.md` with the tables and [`plot`] the KV-usage and TTFT pictures.

pub mod fleet_up;
pub mod plot;
pub mod report;
pub mod scenario;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use self::fleet_up::{INFERENCE_PORT, PLAIN_PORT, StackError, StackPlan, start_stack};
use self::scenario::{Route, Scenario};
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
    pub profile: String,
    pub sim_binary: PathBuf,
    pub gateway_binary: PathBuf,
    pub manifests: PathBuf,
    pub scrape_interval: Duration,
    pub progress: bool,
    /// Keep the scratch directories (configs, logs) instead of deleting them.
    pub keep_scratch: bool,
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
    pub summary: BenchSummary,
    pub observed: ObservedRun,
    pub cpu: CpuUse,
    pub requests: usize,
}

/// The statistics every report shows.
pub fn summary_options() -> SummaryOptions {
    SummaryOptions {
        metrics: Metric::ALL.to_vec(),
        percentiles: vec![50.0, 90.0, 99.0],
        goodput: Vec::new(),
    }
}

fn cpu_now(pids: &[u32]) -> Vec<f64> {
    pids.iter()
        .map(|&pid| process_cpu_seconds(pid).unwrap_or(0.0))
        .collect()
}

/// Runs the scenario through one route on a fresh stack.
pub async fn run_route(plan: &ComparePlan, route: &Route) -> Result<RouteRun, CompareError> {
    let scratch = tempfile::Builder::new()
        .prefix("igw-compare-")
        .tempdir()
        .map_err(CompareError::Scratch)?;
    let scenario = &plan.scenario;
    let stack_plan = StackPlan {
        sim_binary: plan.sim_binary.clone(),
        gateway_binary: plan.gateway_binary.clone(),
        manifests: plan.manifests.clone(),
        profile: plan.profile.clone(),
        time_scale: plan.time_scale,
        seed: plan.seed,
        lora_modules: scenario.lora_modules.clone(),
        gateway_models: scenario.gateway_models.clone(),
        strategy: match route {
            Route::Plain => None,
            Route::Inference(strategy) => Some(strategy.clone()),
        },
        scratch: scratch.path().to_path_buf(),
    };
    let mut stack = start_stack(&stack_plan).await?;
    let workload = scenario.workload(plan.size, plan.seed)?;
    let requests = workload.num_requests();
    let sending = &scenario.sending;
    let port = match route {
        Route::Plain => PLAIN_PORT,
        Route::Inference(_) => INFERENCE_PORT,
    };
    let run_plan = RunPlan {
        shape: RequestShape {
            url: format!(
                "http://127.0.0.1:{port}{}",
                sending.backend.default_endpoint()
            ),
            backend: sending.backend,
            style: sending.style,
            ignore_eos: sending.ignore_eos || workload.forces_ignore_eos,
            api_key: None,
            request_id_prefix: default_request_id_prefix(plan.seed),
            extra_headers: Vec::new(),
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
    pids.push(stack.gateway_pid);
    pids.push(std::process::id());
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
    stack
        .processes
        .check_alive()
        .map_err(|source| CompareError::Died {
            route: route.short(),
            source,
        })?;
    stack.processes.stop_all();
    if plan.keep_scratch {
        eprintln!("kept {}", scratch.keep().display());
    }
    let used: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let sims = used.len() - 2;
    let cpu = CpuUse {
        wall,
        sims: used[..sims].to_vec(),
        gateway: used[sims],
        client: used[sims + 1],
    };
    let settings = RunSettings {
        backend: sending.backend.name().to_string(),
        label: Some(route.short()),
        model_id: sending.model_id.clone(),
        tokenizer_id: sending.model_id.clone(),
        num_prompts: requests,
        request_rate: sending.request_rate,
        burstiness: 1.0,
        max_concurrency: sending.max_concurrency,
        time_scale: plan.time_scale,
    };
    let summary = summarize(
        &observed.output.records,
        observed.output.duration,
        settings,
        summary_options(),
    );
    Ok(RouteRun {
        route: route.clone(),
        summary,
        observed,
        cpu,
        requests,
    })
}

/// Runs every route of `plan` in turn, reporting progress on stderr.
pub async fn run_all(plan: &ComparePlan) -> Result<Vec<RouteRun>, CompareError> {
    let mut runs = Vec::with_capacity(plan.routes.len());
    for route in &plan.routes {
        eprintln!(
            "{}: {} through {} (fresh simulators and gateway)",
            plan.scenario.name.file_stem(),
            plan.scenario.title,
            route.label()
        );
        let run = run_route(plan, route).await?;
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
        runs.push(run);
    }
    Ok(runs)
}

/// Writes `NAME.md`, `data/NAME.json` and the plots into `dir`; returns the paths written.
pub fn write_report(
    plan: &ComparePlan,
    runs: &[RouteRun],
    dir: &std::path::Path,
    context: &report::ReportContext,
    font: Option<&std::path::Path>,
) -> Result<Vec<PathBuf>, CompareError> {
    let write = |path: PathBuf, text: String| -> Result<PathBuf, CompareError> {
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
    };
    let stem = plan.scenario.name.file_stem();
    let mut written = vec![
        write(
            dir.join(format!("{stem}.md")),
            report::markdown(plan, runs, context),
        )?,
        write(
            dir.join("data").join(format!("{stem}.json")),
            serde_json::to_string_pretty(&report::data_json(plan, runs, context))
                .unwrap_or_default(),
        )?,
    ];
    plot::register_font(font)?;
    written.extend(plot::write_plots(dir, stem, runs, plan.time_scale)?);
    Ok(written)
}
