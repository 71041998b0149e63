//! `loadgen` against in-process simulators on ephemeral ports: the saved JSON has the client's
//! keys, and its totals agree with what the simulator's own `/metrics` counted.

mod common;

use std::time::Duration;

use common::start;
use loadtest::bench::dataset::multi_turn::MultiTurnSpec;
use loadtest::bench::dataset::random::{RandomSpec, RangeSemantics};
use loadtest::bench::observed::run_observed;
use loadtest::bench::request::{Backend, BodyStyle, RequestShape};
use loadtest::bench::result::CLIENT_KEYS;
use loadtest::bench::runner::RunPlan;
use loadtest::client::StreamClient;
use serde_json::Value;

const MODEL: &str = "/model/qwen";

fn sim_flags() -> Vec<&'static str> {
    vec![
        "/models/Qwen-2.5-7B-Instruct",
        "--served-model-name",
        MODEL,
        "--max-model-len",
        "4096",
    ]
}

/// `loadgen` against `sim`'s model, as `vllm bench serve --backend vllm` would be run.
fn loadgen(sim: &common::TestSim) -> tokio::process::Command {
    let port = sim.server.local_addr().port().to_string();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    command
        .args(["--backend", "vllm", "--host", "127.0.0.1", "--port", &port])
        .args(["--model", "/models/Qwen-2.5-7B-Instruct"])
        .args(["--served-model-name", MODEL]);
    command
}

/// Run `command`, saving its result in `dir`; its standard output, after checking it succeeded.
async fn run_saving(mut command: tokio::process::Command, dir: &std::path::Path) -> String {
    let output = command
        .args(["--save-result", "--result-dir"])
        .arg(dir)
        .output()
        .await
        .expect("loadgen runs");
    succeeded(&output)
}

/// `loadgen`'s standard output, after checking it exited successfully.
fn succeeded(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saved_result_has_the_client_keys_and_agrees_with_the_servers_metrics() {
    let sim = start(&sim_flags()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = loadgen(&sim);
    command
        .arg("--trust-remote-code")
        .args(["--dataset-name", "random", "--num-prompts", "6"])
        .args(["--random-prefix-len", "10", "--random-input-len", "60"])
        .args(["--random-output-len", "12", "--random-range-ratio", "0.2"])
        .args(["--max-concurrency", "3", "--seed", "4"])
        .args(["--percentile-metrics", "ttft,tpot,itl,e2el"])
        .args(["--metric-percentiles", "50,90,99"])
        .args(["--scrape", &sim.base, "--scrape-interval-ms", "20"]);
    let stdout = run_saving(command, dir.path()).await;
    assert!(stdout.starts_with("============ Serving Benchmark Result ============\n"));
    assert!(stdout.contains("Successful requests:                     6         \n"));
    assert!(stdout.contains("P90 E2EL (ms):"));

    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .expect("a result file")
        .unwrap()
        .path();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("vllm-infqps-concurrency3-Qwen-2.5-7B-Instruct-")
            && name.ends_with(".json"),
        "{name}"
    );
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let statistics = [
        "mean_ttft_ms",
        "median_ttft_ms",
        "std_ttft_ms",
        "p50_ttft_ms",
        "p90_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "p99_tpot_ms",
        "mean_itl_ms",
        "p99_itl_ms",
        "mean_e2el_ms",
        "p99_e2el_ms",
    ];
    for key in CLIENT_KEYS.iter().chain(&statistics) {
        assert!(result.get(*key).is_some(), "missing key {key}");
    }
    assert_eq!(result["completed"], 6);
    assert_eq!(result["failed"], 0);
    assert_eq!(result["request_rate"], "inf");

    // The simulator's own counters.
    let prompt_tokens = sim
        .metric(r#"vllm:prompt_tokens_total{model_name="/model/qwen",engine="0"}"#)
        .await;
    let generation_tokens = sim
        .metric(r#"vllm:generation_tokens_total{model_name="/model/qwen",engine="0"}"#)
        .await;
    let finished = sim
        .metric(r#"vllm:request_success_total{model_name="/model/qwen",engine="0",finished_reason="length"}"#)
        .await;
    assert_eq!(result["total_input_tokens"].as_f64(), prompt_tokens);
    assert_eq!(result["total_output_tokens"].as_f64(), generation_tokens);
    assert_eq!(result["completed"].as_f64(), finished);
    // Every prompt is the 10-token prefix plus U[48, 72] tokens; outputs U[9, 15] (ignore_eos).
    let input = result["total_input_tokens"].as_u64().unwrap();
    assert!((6 * 58..=6 * 82).contains(&input), "{input}");
    // The scrape saw the same work.
    let servers = &result["loadgen"]["servers"];
    assert_eq!(
        servers["endpoints"][0]["prompt_tokens"].as_f64(),
        prompt_tokens
    );
    assert_eq!(
        servers["endpoints"][0]["requests_finished"].as_f64(),
        finished
    );
}

fn plan(base: &str, backend: Backend, style: BodyStyle) -> RunPlan {
    RunPlan {
        shape: RequestShape {
            url: format!("{base}{}", backend.default_endpoint()),
            backend,
            style,
            ignore_eos: true,
            api_key: None,
            request_id_prefix: "bench-test-".into(),
            extra_headers: Vec::new(),
            more_urls: Vec::new(),
        },
        served_model: MODEL.into(),
        max_concurrency: Some(4),
        request_rate: f64::INFINITY,
        burstiness: 1.0,
        seed: 0,
        progress: false,
        initial_test_run: style == BodyStyle::Legacy,
        block_size: 16,
        time_scale: 1.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_reuse_their_history_and_legacy_bodies_count_tokens_from_text() {
    let sim = start(&sim_flags()).await;
    let workload = MultiTurnSpec {
        sessions: 3,
        turns: 3,
        system_len: 40,
        user_len: 20,
        output_len: 18,
    }
    .workload(1)
    .unwrap();
    let observed = run_observed(
        plan(&sim.base, Backend::OpenaiChat, BodyStyle::Current),
        workload,
        StreamClient::new(4),
        vec![sim.base.clone()],
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    let records = &observed.output.records;
    assert_eq!(records.len(), 9);
    assert!(records.iter().all(|r| r.success), "{records:?}");
    // Turn t's prompt holds every earlier question and answer.
    assert!(records[1].prompt_len > records[0].prompt_len + 18 + 20);
    assert!(records[2].prompt_len > records[1].prompt_len + 18 + 20);
    // One server sees everything here, so it reaches the best-case bound on the history blocks.
    let servers = &observed.servers;
    assert!(servers.prefix_hit_rate > 0.3, "{servers:?}");
    assert!(observed.output.bound_hit_rate >= servers.prefix_hit_rate - 1e-9);

    // The older client sends no stream_options: no usage chunk, tokens counted from the text.
    let legacy = RandomSpec {
        num_prompts: 4,
        prefix_len: 10,
        input_len: 50,
        output_len: 10,
        range_ratio: 1.0,
        semantics: RangeSemantics::Legacy,
    }
    .workload(2)
    .unwrap();
    let before = sim
        .metric(r#"vllm:generation_tokens_total{model_name="/model/qwen",engine="0"}"#)
        .await
        .unwrap();
    let observed = run_observed(
        plan(&sim.base, Backend::Vllm, BodyStyle::Legacy),
        legacy,
        StreamClient::new(4),
        vec![sim.base.clone()],
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    let after = sim
        .metric(r#"vllm:generation_tokens_total{model_name="/model/qwen",engine="0"}"#)
        .await
        .unwrap();
    let counted: usize = observed.output.records.iter().map(|r| r.output_len).sum();
    // The initial test run generated one request's tokens before the timed run (and before the
    // scraper's baseline, so the servers' deltas hold only the timed requests).
    assert_eq!(counted, 40);
    assert_eq!(after - before, 50.0);
    assert_eq!(observed.servers.endpoints[0].generation_tokens, 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_run_at_once_and_are_summarized_apart() {
    let sim = start(&sim_flags()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = loadgen(&sim);
    command
        .args([
            "--tenant",
            "name=chat,objective=interactive,prompts=4,input=40,output=8",
        ])
        .args([
            "--tenant",
            "name=batch,fairness=team-b,prompts=6,input=80,output=16,concurrency=2",
        ]);
    let stdout = run_saving(command, dir.path()).await;
    assert!(stdout.contains("== tenant chat =="), "{stdout}");
    assert!(stdout.contains("== tenant batch =="), "{stdout}");
    assert!(stdout.contains("Jain's fairness index"), "{stdout}");
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tenants.json")).unwrap())
            .unwrap();
    let tenants = &result["tenants"];
    assert_eq!(tenants["chat"]["completed"], 4);
    assert_eq!(tenants["chat"]["objective"], "interactive");
    assert_eq!(tenants["batch"]["completed"], 6);
    assert_eq!(tenants["batch"]["fairness_id"], "team-b");
    assert_eq!(tenants["batch"]["total_output_tokens"], 6 * 16);
    let jain = result["jain_index_output_throughput"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&jain), "{jain}");
}
