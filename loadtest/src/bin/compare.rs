//! `compare --scenario NAME`: run a scenario through the plain route and each strategy on fresh
//! stacks and write `docs/benchmarks/NAME.md`, its data and plots. Wiring only; the work is in
//! `loadtest::compare`. Interrupting (Ctrl-C, SIGTERM) stops every child process before exiting.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use loadtest::bench::result::timestamp_utc;
use loadtest::compare::report::{ReportContext, results_table, servers_table, targets};
use loadtest::compare::scenario::{Route, Scenario, ScenarioName};
use loadtest::compare::{ComparePlan, run_all, write_report};
use loadtest::procs::sibling_binary;

#[derive(Debug, Parser)]
#[command(
    name = "compare",
    about = "Run a scenario through the plain route (8080) and the inference route (8081) per strategy, on fresh simulators and gateway, and write docs/benchmarks/NAME.md"
)]
struct Args {
    #[arg(long, value_enum)]
    scenario: ScenarioName,
    /// Routes, comma-separated: `plain` (port 8080) and strategy names for port 8081
    /// (DEFAULT, PREFIX_CACHE, LORA_AFFINITY, ROUND_ROBIN, RANDOM). Default: the scenario's.
    #[arg(long, value_delimiter = ',')]
    routes: Vec<String>,
    /// The scenario's size (seed: prompts; prefix: prompts per group; multi-turn: sessions;
    /// lora: requests). Default: the scenario's.
    #[arg(long, alias = "num-prompts")]
    size: Option<usize>,
    /// Simulator speed-up. Default: the scenario's.
    #[arg(long)]
    time_scale: Option<f64>,
    /// The seed scenario at full size: 3,000 prompts at time scale 1 (about four times the
    /// default run's wall time).
    #[arg(long)]
    full: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "a10-qwen2.5-7b")]
    profile: String,
    /// Where NAME.md, data/ and the plots go.
    #[arg(long, default_value = "docs/benchmarks")]
    out: PathBuf,
    #[arg(long, default_value = "manifests/examples/local")]
    manifests: PathBuf,
    /// Default: next to this binary.
    #[arg(long)]
    sim_binary: Option<PathBuf>,
    /// Default: next to this binary.
    #[arg(long)]
    gateway_binary: Option<PathBuf>,
    #[arg(long, default_value_t = 250)]
    scrape_interval_ms: u64,
    /// TrueType font for the plots (default: DejaVu Sans from fonts-dejavu-core).
    #[arg(long)]
    font: Option<PathBuf>,
    /// Keep each run's scratch directory (gateway config, process logs).
    #[arg(long)]
    keep_scratch: bool,
    #[arg(long)]
    disable_tqdm: bool,
}

fn git(args: &[&str]) -> Option<String> {
    let output = std::process::Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn plan(args: &Args) -> anyhow::Result<ComparePlan> {
    let scenario = Scenario::get(args.scenario);
    let full = args.full && args.scenario == ScenarioName::Seed;
    let routes = if args.routes.is_empty() {
        scenario.default_routes.clone()
    } else {
        args.routes.iter().map(|r| Route::parse(r)).collect()
    };
    Ok(ComparePlan {
        size: args
            .size
            .unwrap_or(if full { 3000 } else { scenario.default_size }),
        time_scale: args.time_scale.unwrap_or(if full {
            1.0
        } else {
            scenario.default_time_scale
        }),
        routes,
        seed: args.seed,
        profile: args.profile.clone(),
        sim_binary: match &args.sim_binary {
            Some(path) => path.clone(),
            None => sibling_binary("vllm-sim").context("locating vllm-sim")?,
        },
        gateway_binary: match &args.gateway_binary {
            Some(path) => path.clone(),
            None => sibling_binary("inference-gateway").context("locating inference-gateway")?,
        },
        manifests: args.manifests.clone(),
        scrape_interval: Duration::from_millis(args.scrape_interval_ms.max(10)),
        progress: !args.disable_tqdm && std::env::var_os("CI").is_none(),
        keep_scratch: args.keep_scratch,
        scenario,
    })
}

async fn interrupted() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    for binary in [&plan.sim_binary, &plan.gateway_binary] {
        anyhow::ensure!(
            binary.exists(),
            "{} not found: build with `cargo build --release -p inference-gateway -p loadtest`",
            binary.display()
        );
    }
    let runs = tokio::select! {
        result = run_all(&plan) => result?,
        _ = interrupted() => anyhow::bail!("interrupted; every child process was stopped"),
    };
    let command = std::iter::once("cargo run --release -p loadtest --bin compare --".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let context = ReportContext {
        command,
        commit: git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        date: timestamp_utc(unix),
    };
    let written = write_report(&plan, &runs, &args.out, &context, args.font.as_deref())?;
    println!("{}", results_table(&runs));
    println!("{}", servers_table(&runs));
    println!("{}", targets(plan.scenario.name, &runs));
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(args))
}
