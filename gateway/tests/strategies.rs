//! The strategies end to end: a real gateway process in front of real `vllm-sim` servers, whose
//! `/metrics` the gateway scrapes. Assertions are on where requests land (the
//! `x-gateway-destination-endpoint-served` header) and on status codes, never on timings.

use std::collections::HashMap;
use std::net::SocketAddr;

use loadtest::sim::server::SimServer;
use testkit::k8s::InferenceModel;
use testkit::*;

fn gateway_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
}

/// Simulators with the seed's two-slot LoRA setup and three adapters.
async fn lora_sims(first: u8, n: u8, flags: &[&str]) -> (u16, Vec<SimServer>) {
    let mut all = vec![
        "--enable-lora",
        "--max-loras",
        "2",
        "--lora-modules",
        "a=/loras/a",
        "b=/loras/b",
        "c=/loras/c",
    ];
    all.extend_from_slice(flags);
    start_sims(first, n, &all, &[]).await
}

/// The simulators in the pool `pool` with `strategy`, serving a Critical base model, two adapters
/// and a Sheddable `batch` model.
fn config(llm_port: u16, port: u16, sims: &[SimServer], strategy: &str) -> String {
    sim_pool_config(llm_port, port, sims, strategy)
        .with(InferenceModel::new("base", "/model/qwen", "pool").criticality("Critical"))
        .with(InferenceModel::new("adapter-a", "a", "pool"))
        .with(InferenceModel::new("adapter-b", "b", "pool"))
        .with(
            InferenceModel::new("batch", "batch", "pool")
                .criticality("Sheddable")
                .target("/model/qwen"),
        )
        .render()
}

struct Setup {
    gateway: Gateway,
    sims: Vec<SimServer>,
    url: String,
}

async fn setup(first: u8, n: u8, strategy: &str, flags: &[&str]) -> Setup {
    let (port, sims) = lora_sims(first, n, flags).await;
    let llm_port = free_port();
    let gateway = Gateway::start(
        gateway_binary(),
        &config(llm_port, port, &sims, strategy),
        &[],
    )
    .await;
    Setup {
        gateway,
        sims,
        url: format!("http://127.0.0.1:{llm_port}/v1/completions"),
    }
}

/// POST a completion and return (status, served-by endpoint).
async fn complete(client: &Client, url: &str, body: &str) -> (u16, Option<SocketAddr>) {
    let mut stream = Stream::open(client, url, &[], body).await;
    let served = stream
        .headers
        .get("x-gateway-destination-endpoint-served")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    while stream.next_chunk().await.is_some() {}
    (stream.status, served)
}

fn endpoint(snapshot: &serde_json::Value, address: SocketAddr) -> &serde_json::Value {
    snapshot["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address.to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_reach_the_pool_view() {
    let s = setup(120, 2, "DEFAULT", &[]).await;
    let address = s.sims[0].local_addr();
    s.gateway
        .wait_for_snapshot("the simulators' metrics", |snapshot| {
            let metrics = &endpoint(snapshot, address)["metrics"];
            metrics["model_name"] == "/model/qwen" && metrics["num_blocks"].as_u64().is_some()
        })
        .await;
    let snapshot = s.gateway.snapshot().await;
    let metrics = &endpoint(&snapshot, address)["metrics"];
    assert_eq!(metrics["block_size"], 16);
    assert!(metrics["num_blocks"].as_u64().unwrap() > 1000);
    assert_eq!(
        snapshot["pools"][0]["strategy"]["implementation"],
        "DEFAULT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_keeps_traffic_off_an_endpoint_with_a_long_queue() {
    // Two running slots per simulator, so extra requests wait in the queue.
    let s = setup(130, 3, "DEFAULT", &["--max-num-seqs", "2"]).await;
    let busy = s.sims[0].local_addr();
    let client = client();
    // Twenty long generations straight to the first simulator, past the gateway.
    // Streams answer only once their first token exists, so each is held by its own task.
    let direct = format!("http://{busy}/v1/completions");
    let held: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            let direct = direct.clone();
            tokio::spawn(async move {
                let body = r#"{"model":"/model/qwen","prompt":"hold the line","max_tokens":30000,"ignore_eos":true,"stream":true}"#;
                Stream::open(&client, &direct, &[], body).await.hold().await;
            })
        })
        .collect();
    s.gateway
        .wait_for_snapshot("the busy simulator's queue in the metrics", |snapshot| {
            endpoint(snapshot, busy)["metrics"]["waiting"]
                .as_u64()
                .unwrap_or(0)
                >= 15
        })
        .await;
    let mut landed: HashMap<SocketAddr, usize> = HashMap::new();
    for _ in 0..30 {
        let (status, served) = complete(
            &client,
            &s.url,
            r#"{"model":"/model/qwen","prompt":"hi","max_tokens":2}"#,
        )
        .await;
        assert_eq!(status, 200);
        *landed.entry(served.unwrap()).or_default() += 1;
    }
    assert_eq!(
        landed.get(&busy),
        None,
        "no request joined the long queue: {landed:?}"
    );
    assert_eq!(landed.len(), 2, "both idle simulators served: {landed:?}");
    for task in held {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_keeps_a_document_on_one_endpoint() {
    let s = setup(140, 4, "PREFIX_CACHE", &[]).await;
    let address = s.sims[0].local_addr();
    s.gateway
        .wait_for_snapshot("metrics", |snapshot| {
            endpoint(snapshot, address)["metrics"].is_object()
        })
        .await;
    let client = client();
    let document = "The annual report of the Hangzhou tea cooperative. ".repeat(60);
    let mut endpoints = std::collections::HashSet::new();
    for question in 0..12 {
        let body = serde_json::json!({
            "model": "/model/qwen",
            "prompt": format!("{document}\nQuestion {question}: how did the harvest go?"),
            "max_tokens": 4,
        });
        let (status, served) = complete(&client, &s.url, &body.to_string()).await;
        assert_eq!(status, 200);
        endpoints.insert(served.unwrap());
    }
    assert_eq!(
        endpoints.len(),
        1,
        "one endpoint served every question on the document: {endpoints:?}"
    );
    let snapshot = s.gateway.snapshot().await;
    assert_eq!(
        snapshot["pools"][0]["strategy"]["state"]["index"]["endpoints"],
        1
    );
    // The strategy's typed statistics reach the metric.
    let (_, metrics) = get(&format!("http://{}/metrics", s.gateway.admin)).await;
    let metrics = String::from_utf8_lossy(&metrics);
    let blocks = metrics.lines().find_map(|line| {
        line.strip_prefix("inference_extension_prefix_indexer_size{pool=\"default/pool\"} ")?
            .parse::<f64>()
            .ok()
    });
    assert!(blocks.is_some_and(|b| b > 0.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_affinity_keeps_an_adapter_where_it_is_loaded() {
    let s = setup(150, 3, "LORA_AFFINITY", &[]).await;
    let address = s.sims[0].local_addr();
    s.gateway
        .wait_for_snapshot("metrics", |snapshot| {
            endpoint(snapshot, address)["metrics"].is_object()
        })
        .await;
    let client = client();
    let mut by_adapter: HashMap<&str, std::collections::HashSet<SocketAddr>> = HashMap::new();
    for round in 0..8 {
        for adapter in ["a", "b"] {
            let body =
                format!(r#"{{"model":"{adapter}","prompt":"round {round}","max_tokens":4}}"#);
            let (status, served) = complete(&client, &s.url, &body).await;
            assert_eq!(status, 200);
            by_adapter
                .entry(adapter)
                .or_default()
                .insert(served.unwrap());
        }
    }
    for (adapter, endpoints) in &by_adapter {
        assert_eq!(
            endpoints.len(),
            1,
            "adapter {adapter} stayed on one endpoint: {endpoints:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_requests_are_shed_while_metrics_are_stale() {
    // Every scrape stalls past the gateway's timeout: metrics never arrive, and a pool without
    // fresh metrics counts as saturated.
    let s = setup(160, 2, "DEFAULT", &["--metrics-delay", "30"]).await;
    let client = client();
    let (status, body) = post(
        &client,
        &s.url,
        &[],
        r#"{"model":"batch","prompt":"later is fine","max_tokens":2}"#,
    )
    .await;
    assert_eq!(status, 429);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error");
    let (status, _) = post(
        &client,
        &s.url,
        &[],
        r#"{"model":"/model/qwen","prompt":"now","max_tokens":2}"#,
    )
    .await;
    assert_eq!(status, 200, "critical requests are still served");
    let (_, metrics) = get(&format!("http://{}/metrics", s.gateway.admin)).await;
    assert!(
        String::from_utf8_lossy(&metrics).contains("gateway_sheds_total{pool=\"default/pool\"} 1")
    );
}

/// The gateway's prefill and output accounting on real paths: a retry past a dead endpoint,
/// non-streamed answers, a stream past its first token (its output to come shrinking as tokens
/// stream back), a request queued behind it (credited as prefill work until it hangs up) and the
/// stream's end all leave both endpoints' counters at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_work_is_credited_until_the_first_token_and_released_on_every_path() {
    // One running slot: a second request waits in the queue, before its first token. Round-robin
    // (the plain Service's order, with the same accounting) makes sure the dead endpoint is tried.
    let mut s = setup(150, 2, "ROUND_ROBIN", &["--max-num-seqs", "1"]).await;
    let dead = s.sims[1].local_addr();
    s.sims.remove(1).shutdown().await;
    let live = s.sims[0].local_addr();
    let client = client();
    let counters = |snapshot: &serde_json::Value, address| {
        let e = endpoint(snapshot, address);
        (
            e["in_flight"].as_u64().unwrap(),
            e["in_flight_prefill"].as_u64().unwrap(),
            e["in_flight_prefill_tokens"].as_u64().unwrap(),
        )
    };
    let output = |snapshot: &serde_json::Value, address| {
        endpoint(snapshot, address)["in_flight_output_tokens"]
            .as_u64()
            .unwrap()
    };
    for _ in 0..4 {
        let (status, served) = complete(
            &client,
            &s.url,
            r#"{"model":"/model/qwen","prompt":"a short one","max_tokens":3}"#,
        )
        .await;
        assert_eq!((status, served), (200, Some(live)));
    }
    let (_, metrics) = get(&format!("http://{}/metrics", s.gateway.admin)).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_upstream_attempts_total{result=\"connect_error\"}")),
        "a connection to the dead endpoint failed and the request moved on"
    );
    let snapshot = s.gateway.snapshot().await;
    assert_eq!(counters(&snapshot, dead), (0, 0, 0), "the failed attempt");
    assert_eq!(counters(&snapshot, live), (0, 0, 0), "non-streamed answers");
    assert_eq!((output(&snapshot, dead), output(&snapshot, live)), (0, 0));

    let long = r#"{"model":"/model/qwen","prompt":"hold the line","max_tokens":30000,"ignore_eos":true,"stream":true}"#;
    let mut first = Stream::open(&client, &s.url, &[], long).await;
    assert_eq!(first.status, 200);
    first.next_chunk().await.expect("a first token");
    s.gateway
        .wait_for_snapshot("the first stream past its first token", |snapshot| {
            counters(snapshot, live) == (1, 0, 0)
        })
        .await;
    // Its 30,000 output tokens to come, less those streamed back (kept flowing by reading).
    let mut streamed = 1;
    while streamed < 20 {
        first.next_chunk().await.expect("more tokens");
        streamed += 1;
    }
    let left = output(&s.gateway.snapshot().await, live);
    assert!(
        (1..30_000 - 10).contains(&left),
        "output to come shrinks as tokens stream: {left}"
    );
    let queued_body = format!(
        r#"{{"model":"/model/qwen","prompt":"{}","max_tokens":5,"stream":true}}"#,
        "queued behind it ".repeat(100)
    );
    let queued = tokio::spawn({
        let (client, url) = (client.clone(), s.url.clone());
        async move {
            Stream::open(&client, &url, &[], &queued_body)
                .await
                .hold()
                .await
        }
    });
    s.gateway
        .wait_for_snapshot("the queued request credited as prefill work", |snapshot| {
            let (in_flight, prefill, tokens) = counters(snapshot, live);
            in_flight == 2 && prefill == 1 && tokens > 300
        })
        .await;
    queued.abort();
    s.gateway
        .wait_for_snapshot(
            "the queued request's credit released when it hung up",
            |snapshot| counters(snapshot, live) == (1, 0, 0),
        )
        .await;
    drop(first);
    s.gateway
        .wait_for_snapshot("everything released", |snapshot| {
            counters(snapshot, live) == (0, 0, 0)
                && counters(snapshot, dead) == (0, 0, 0)
                && output(snapshot, live) == 0
        })
        .await;
}
