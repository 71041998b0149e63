//! `sim-fleet`: the five-simulator check. Wiring only: parse flags, run `loadtest::fleet`,
//! print the Markdown report. Starts `vllm-sim` processes (found next to this binary unless
//! `--sim-binary` says otherwise) on 127.0.0.2.. and stops them when done.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use loadtest::fleet::{self, FleetPlan};

#[derive(Debug, Parser)]
#[command(
    name = "sim-fleet",
    about = "Drive several vllm-sim processes and compare their ITL with the model"
)]
struct Args {
    #[arg(long, default_value_t = 5)]
    sims: usize,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    #[arg(long, default_value = "a10-qwen2.5-7b")]
    profile: String,
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds to drive load; requests still open then are cut.
    #[arg(long, default_value_t = 180)]
    duration: u64,
    #[arg(long, default_value_t = 10)]
    prefix_len: usize,
    #[arg(long, default_value_t = 1550)]
    input_len: usize,
    #[arg(long, default_value_t = 1800)]
    output_len: usize,
    #[arg(long, default_value_t = 0.2)]
    range_ratio: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The vllm-sim binary (default: next to this one).
    #[arg(long)]
    sim_binary: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sim_binary = match args.sim_binary {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("vllm-sim"),
    };
    let plan = FleetPlan {
        sim_binary,
        sims: args.sims,
        port: args.port,
        profile: args.profile,
        time_scale: args.time_scale,
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.duration),
        prefix_len: args.prefix_len,
        input_len: args.input_len,
        output_len: args.output_len,
        range_ratio: args.range_ratio,
        seed: args.seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let (reports, client_cpu, elapsed) = runtime.block_on(fleet::run(plan.clone()))?;
    println!("{}", fleet::render(&plan, &reports, client_cpu, elapsed));
    Ok(())
}
