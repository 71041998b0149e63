//! `vllm-sim`: a simulated vLLM server. Wiring only: parse the command line, then either print
//! the calibration table (`vllm-sim calibrate`) or serve (`vllm-sim [serve] [MODEL] [flags]`,
//! the flags of `vllm serve`). Exits 1 when a crash fault (`--exit-after-*`) fires.

use std::ffi::OsString;

use anyhow::Context as _;
use clap::Parser;
use loadtest::sim::calibrate;
use loadtest::sim::config::{ServeArgs, SimConfig};
use loadtest::sim::profile::{PROFILES, Profile};
use loadtest::sim::server::SimServer;

/// `vllm-sim calibrate`: the step-time model against the reference figures.
#[derive(Debug, Parser)]
#[command(name = "vllm-sim calibrate")]
struct CalibrateArgs {
    /// Profile to calibrate (all profiles when omitted).
    #[arg(long)]
    profile: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("calibrate") => {
            argv.remove(1);
            return run_calibrate(CalibrateArgs::parse_from(argv));
        }
        Some("serve") => {
            argv.remove(1);
        }
        _ => {}
    }
    let args = ServeArgs::parse_from(argv);
    let config = SimConfig::from_args(&args)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(serve(config))
}

fn run_calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let profiles: Vec<Profile> = match args.profile {
        Some(name) => {
            vec![Profile::by_name(&name).with_context(|| format!("unknown profile {name}"))?]
        }
        None => PROFILES.to_vec(),
    };
    for profile in profiles {
        println!("{}", calibrate::render(&profile));
    }
    println!("{}", calibrate::render_kv_capacity());
    Ok(())
}

async fn serve(config: SimConfig) -> anyhow::Result<()> {
    let listen = config.listen;
    tracing::info!(
        profile = config.profile.name,
        model = %config.model_root,
        served = ?config.served_model_names,
        num_gpu_blocks = config.engine.num_gpu_blocks,
        time_scale = config.time_scale,
        "starting vllm-sim"
    );
    let mut server = SimServer::start(config)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!("Starting vLLM API server on http://{}", server.local_addr());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        reason = server.crashed() => {
            tracing::error!(?reason, "injected crash: exiting with status 1");
            std::process::exit(1);
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
