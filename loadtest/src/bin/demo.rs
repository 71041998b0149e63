//! `demo`: the newcomer's first command (`make demo` runs it through `scripts/demo.sh`).
//!
//! Starts five simulated pods (127.0.0.2–6:8000, the seed Deployment's flags) and the gateway on
//! its embedded default configuration, sends the seed's two requests (port 8080 and port 8081),
//! prints the curl commands to try, and keeps running until Ctrl-C. With `--compare` it instead
//! stops the stack and runs the `seed` comparison (fresh processes per route) and prints its
//! table. Every child process is stopped on exit, on error and on Ctrl-C.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use loadtest::bench::result::timestamp_utc;
use loadtest::client::StreamClient;
use loadtest::compare::fleet_up::{ADMIN_ADDR, POD_HOSTS, POD_PORT};
use loadtest::compare::report::{ReportContext, results_table, servers_table};
use loadtest::compare::scenario::{Scenario, ScenarioName};
use loadtest::compare::targets::targets;
use loadtest::compare::{ComparePlan, run_all, write_report};
use loadtest::procs::{Processes, ensure_free, seed_sim_command, sibling_binary};

#[derive(Debug, Parser)]
#[command(
    name = "demo",
    about = "Five simulated vLLM pods and the gateway in front of them, as in the seed"
)]
struct Args {
    /// Run the seed comparison (8080 vs. 8081 DEFAULT) instead of waiting, and print its table.
    #[arg(long)]
    compare: bool,
    /// Where the comparison's report goes.
    #[arg(long, default_value = "target/demo")]
    out: PathBuf,
    /// Simulator speed-up for the interactive demo (1 = the A10 model's real pace).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    #[arg(long, default_value = "manifests/examples/local")]
    manifests: PathBuf,
}

/// The seed's two requests (README): a chat completion on each port.
const PLAIN_BODY: &str = r#"{"model": "/model/qwen", "max_completion_tokens": 100, "temperature": 0, "messages": [{"role": "user", "content": "Write as if you were a critic: San Francisco"}]}"#;
const INFERENCE_BODY: &str = r#"{"model": "travel-helper", "max_completion_tokens": 100, "messages": [{"role": "user", "content": "Write as if you were a critic: Los Angeles"}]}"#;

/// How long the stack may take to become ready; it normally takes well under a second.
const READY_WITHIN: Duration = Duration::from_secs(60);

fn curl(port: u16, body: &str) -> String {
    format!(
        "curl -s localhost:{port}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"
    )
}

async fn interactive(args: &Args) -> anyhow::Result<()> {
    let sim_binary = sibling_binary("vllm-sim")?;
    let gateway_binary = sibling_binary("inference-gateway")?;
    for host in POD_HOSTS {
        ensure_free(format!("{host}:{POD_PORT}").parse()?)?;
    }
    for address in ["127.0.0.1:8080", "127.0.0.1:8081", ADMIN_ADDR] {
        ensure_free(address.parse()?)?;
    }
    let logs = tempfile::Builder::new().prefix("igw-demo-").tempdir()?;
    let client = StreamClient::new(4);
    let mut processes = Processes::new();
    for (index, host) in POD_HOSTS.iter().enumerate() {
        let command = seed_sim_command(
            &sim_binary,
            host,
            POD_PORT,
            "a10-qwen2.5-7b",
            args.time_scale,
            index as u64,
            &[],
        );
        processes.spawn(
            &format!("vllm-sim {host}"),
            command,
            &logs.path().join(format!("sim-{index}.log")),
        )?;
    }
    for host in POD_HOSTS {
        let url = format!("http://{host}:{POD_PORT}/health");
        processes
            .wait_ready(&client, &format!("vllm-sim {host}"), &url, READY_WITHIN)
            .await?;
    }
    // No --config: the gateway serves its embedded copy of manifests/examples/local/.
    let mut gateway = Command::new(&gateway_binary);
    gateway.env("RUST_LOG", "info");
    let gateway_log = logs.path().join("gateway.log");
    processes.spawn("inference-gateway", gateway, &gateway_log)?;
    processes
        .wait_ready(
            &client,
            "inference-gateway",
            &format!("http://{ADMIN_ADDR}/readyz"),
            READY_WITHIN,
        )
        .await?;
    println!(
        "Five simulated pods (vllm-sim, A10 profile, seed flags) on 127.0.0.2-6:8000 and the gateway are up."
    );
    println!("Gateway log: {}\n", gateway_log.display());
    for (port, body, what) in [
        (
            8080,
            PLAIN_BODY,
            "Port 8080, the plain route (Service round-robin):",
        ),
        (
            8081,
            INFERENCE_BODY,
            "Port 8081, the inference route (travel-helper -> travel-helper-v1 90% / -v2 10%):",
        ),
    ] {
        println!("{what}\n  {}", curl(port, body));
        let (status, answer) = client
            .request(
                http::Method::POST,
                &format!("http://127.0.0.1:{port}/v1/chat/completions"),
                Some(body.to_string()),
            )
            .await
            .with_context(|| format!("POST to port {port}"))?;
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        println!(
            "  -> HTTP {status}, model {}, {} completion tokens: {:.70}...\n",
            answer["model"],
            answer["usage"]["completion_tokens"],
            answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("")
        );
    }
    println!("What the gateway serves, and its metrics:");
    println!("  curl -s localhost:9090/debug/snapshot");
    println!("  curl -s localhost:9090/metrics\n");
    println!("The seed's benchmark through both routes: scripts/demo.sh --compare");
    println!("Running until Ctrl-C.");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = watch(&mut processes) => {}
    }
    processes.stop_all();
    println!("stopped.");
    Ok(())
}

/// Returns when a child exits on its own (reported), so the demo does not linger half-dead.
async fn watch(processes: &mut Processes) {
    loop {
        if let Err(error) = processes.check_alive() {
            eprintln!("{error}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn compare(args: &Args) -> anyhow::Result<()> {
    let scenario = Scenario::get(ScenarioName::Seed);
    let plan = ComparePlan {
        routes: scenario.default_routes.clone(),
        size: scenario.default_size,
        time_scale: scenario.default_time_scale,
        seed: 0,
        profiles: vec!["a10-qwen2.5-7b".into()],
        sim_binary: sibling_binary("vllm-sim")?,
        gateway_binary: sibling_binary("inference-gateway")?,
        manifests: args.manifests.clone(),
        scrape_interval: Duration::from_millis(250),
        progress: std::env::var_os("CI").is_none(),
        keep_scratch: false,
        gateway_log: "warn".into(),
        replicas: vec![1],
        scenario,
    };
    let runs = tokio::select! {
        result = run_all(&plan) => result?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; every child process was stopped"),
    };
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let context = ReportContext {
        command: "scripts/demo.sh --compare".into(),
        commit: "local".into(),
        date: timestamp_utc(unix),
    };
    let written = write_report(&plan, &runs, &args.out, &context, None)?;
    println!("\n{}", results_table(&runs));
    println!("{}", servers_table(&runs));
    println!("{}", targets(&plan, &runs));
    println!(
        "Report and plots: {}",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        if args.compare {
            compare(&args).await
        } else {
            interactive(&args).await
        }
    })
}
