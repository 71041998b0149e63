//! `compare --scenario NAME`: run a scenario through the plain route and each strategy on fresh
//! stacks and write `docs/benchmarks/NAME.md`, its data and plots. `compare --table FILE...`:
//! print one table of several scenarios' data files. Wiring only; the work is in
//! `loadtest::compare`. Interrupting (Ctrl-C, SIGTERM) stops every child process before exiting.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use loadtest::bench::result::timestamp_utc;
use loadtest::compare::fleet_up::POD_HOSTS;
use loadtest::compare::report::{ReportContext, results_table, servers_table};
use loadtest::compare::scenario::{Route, Scenario, ScenarioName};
use loadtest::compare::sweep::stage_tables;
use loadtest::compare::targets::targets;
use loadtest::compare::{ComparePlan, qos, run_all, table, write_report};
use loadtest::procs::sibling_binary;
use loadtest::sim::profile::{PROFILES, Profile};

#[derive(Debug, Parser)]
#[command(
    name = "compare",
    about = "Run a scenario through the plain route (8080) and the inference route (8081) per strategy, on fresh simulators and gateway, and write docs/benchmarks/NAME.md; or print one table of several scenarios' data files (--table)"
)]
struct Args {
    #[arg(long, value_enum, required_unless_present = "table")]
    scenario: Option<ScenarioName>,
    /// Print one Markdown table of TTFT p50/p90/p99 per scenario and route, with ratios to the
    /// plain route's and its run-to-run spread, from these data files (docs/benchmarks/data/*.json),
    /// and exit.
    #[arg(long, num_args = 1.., value_name = "DATA_JSON", conflicts_with = "scenario")]
    table: Vec<PathBuf>,
    /// Routes, comma-separated: `plain` (port 8080) and strategy names for port 8081
    /// (DEFAULT, PREFIX_CACHE, LORA_AFFINITY, ROUND_ROBIN, RANDOM), a strategy with `/flow-off`
    /// for its pool with flow control turned off (`DEFAULT/flow-off`). A route named twice runs twice
    /// (`plain,plain,DEFAULT` measures round-robin's run-to-run noise). Default: the scenario's.
    #[arg(long, value_delimiter = ',')]
    routes: Vec<String>,
    /// The scenario's size (seed: prompts; prefix: prompts per group; multi-turn: sessions;
    /// lora, uniform, heterogeneous: requests; optimized-baseline: simulated seconds per stage;
    /// qos: interactive requests per phase).
    /// Default: the scenario's.
    #[arg(long, alias = "num-prompts")]
    size: Option<usize>,
    /// The staircase of a scenario that has one (optimized-baseline): Poisson rates in requests
    /// per simulated second, comma-separated, one stage each. Default: the scenario's.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Simulator speed-up. Default: the scenario's.
    #[arg(long)]
    time_scale: Option<f64>,
    /// The seed scenario at full size: 3,000 prompts at time scale 1 (about four times the
    /// default run's wall time).
    #[arg(long)]
    full: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Every simulator's profile. Default: the scenario's mix (heterogeneous), else
    /// a10-qwen2.5-7b.
    #[arg(long, conflicts_with = "profiles")]
    profile: Option<String>,
    /// One profile per simulator in pod order (127.0.0.2 first), comma-separated, e.g.
    /// `a10-qwen2.5-7b,a10-qwen2.5-7b,a10-qwen2.5-7b,l20-qwen2.5-7b,l20-qwen2.5-7b`.
    #[arg(long, value_delimiter = ',')]
    profiles: Vec<String>,
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
    /// The gateway's log filter (`RUST_LOG` syntax). `warn,access=info` writes a line per request
    /// (endpoint, TTFT, tokens) to `gateway.log` in the scratch directory; use with
    /// `--keep-scratch`.
    #[arg(long, default_value = "warn")]
    gateway_log: String,
    /// Gateway processes over the same pool, comma-separated counts (`1,2,4`): every route runs
    /// once per count, each replica on its own address (127.0.1.1, 127.0.1.2, …) and admin port,
    /// the client sending requests to them in turn as a Service spreads its clients.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u16).range(1..=16))]
    gateway_replicas: Vec<u16>,
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

/// `--profiles`, else `--profile`, else the scenario's mix, else the A10 profile; checked.
fn profiles(args: &Args, scenario: &Scenario) -> anyhow::Result<Vec<String>> {
    let profiles = if !args.profiles.is_empty() {
        anyhow::ensure!(
            args.profiles.len() == POD_HOSTS.len() || args.profiles.len() == 1,
            "--profiles={}: give one profile per simulator ({}) or one for all",
            args.profiles.join(","),
            POD_HOSTS.len()
        );
        args.profiles.clone()
    } else if let Some(profile) = &args.profile {
        vec![profile.clone()]
    } else if !scenario.default_profiles.is_empty() {
        scenario.default_profiles.clone()
    } else {
        vec!["a10-qwen2.5-7b".to_string()]
    };
    for profile in &profiles {
        anyhow::ensure!(
            Profile::by_name(profile).is_some(),
            "--profiles/--profile: unknown profile {profile:?} (known: {})",
            PROFILES.map(|p| p.name).join(", ")
        );
    }
    Ok(profiles)
}

fn plan(args: &Args, name: ScenarioName) -> anyhow::Result<ComparePlan> {
    let mut scenario = Scenario::get(name);
    let full = args.full && name == ScenarioName::Seed;
    let routes = if args.routes.is_empty() {
        scenario.default_routes.clone()
    } else {
        args.routes.iter().map(|r| Route::parse(r)).collect()
    };
    if !args.rates.is_empty() {
        anyhow::ensure!(
            !scenario.sweep_rates.is_empty(),
            "--rates: the {} scenario has no rate staircase (only optimized-baseline has)",
            name.file_stem()
        );
        anyhow::ensure!(
            args.rates.iter().all(|r| r.is_finite() && *r > 0.0),
            "--rates={:?}: every rate must be a positive number",
            args.rates
        );
        scenario.sweep_rates = args.rates.clone();
    }
    Ok(ComparePlan {
        profiles: profiles(args, &scenario)?,
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
        gateway_log: args.gateway_log.clone(),
        replicas: args
            .gateway_replicas
            .iter()
            .map(|&n| usize::from(n))
            .collect(),
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

/// The command line, commit and date of the report.
fn report_context() -> ReportContext {
    let command = std::iter::once("cargo run --release -p loadtest --bin compare --".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ReportContext {
        command,
        commit: git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        date: timestamp_utc(unix),
    }
}

fn print_table(files: &[PathBuf]) -> anyhow::Result<()> {
    let scenarios = files
        .iter()
        .map(|path| table::read(path))
        .collect::<Result<Vec<_>, _>>()?;
    print!("{}", table::markdown(&scenarios));
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let Some(name) = args.scenario else {
        return print_table(&args.table);
    };
    let plan = plan(&args, name)?;
    for binary in [&plan.sim_binary, &plan.gateway_binary] {
        anyhow::ensure!(
            binary.exists(),
            "{} not found: build with `cargo build --release -p inference-gateway -p loadtest`",
            binary.display()
        );
    }
    if name == ScenarioName::Qos {
        let runs = tokio::select! {
            result = qos::run_all(&plan) => result?,
            _ = interrupted() => anyhow::bail!("interrupted; every child process was stopped"),
        };
        let context = report_context();
        let written = qos::write_report(&plan, &runs, &args.out, &context, args.font.as_deref())?;
        println!("{}", qos::tenants_table(&runs));
        println!("{}", qos::targets(&runs));
        for path in written {
            eprintln!("wrote {}", path.display());
        }
        return Ok(());
    }
    let runs = tokio::select! {
        result = run_all(&plan) => result?,
        _ = interrupted() => anyhow::bail!("interrupted; every child process was stopped"),
    };
    let context = report_context();
    let written = write_report(&plan, &runs, &args.out, &context, args.font.as_deref())?;
    println!("{}", results_table(&runs));
    println!("{}", servers_table(&runs));
    if runs.iter().any(|r| !r.stages.is_empty()) {
        println!("{}", stage_tables(&runs));
    }
    println!("{}", targets(&plan, &runs));
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
