//! Active-active: two gateway processes in front of the same `vllm-sim` pods publishing KV-cache
//! events. Neither replica routed the documents (they went straight to the pods), so only the
//! events can tell them where each one is cached; both must send a follow-up to that pod.
//! Conditions are awaited with a deadline, never timed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loadtest::sim::server::SimServer;
use testkit::*;

fn gateway_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
}

const DEADLINE: Duration = Duration::from_secs(30);

/// A gateway configuration: the sims as the pool `pool` (PREFIX_CACHE, events on
/// `events_port`, replay on `replay_port`) behind the `llm` listener on `llm_port`.
fn config(
    llm_port: u16,
    port: u16,
    sims: &[SimServer],
    events_port: u16,
    replay_port: u16,
) -> String {
    let ips = sims.iter().map(|s| s.local_addr().ip());
    k8s::Manifest::test_gateway(free_port(), llm_port)
        .with_pool(
            k8s::InferencePool::new("pool", port)
                .selector("app", "sim")
                .strategy("PREFIX_CACHE")
                .annotation("kv-events.inference-gateway.dev/enabled", "true")
                .annotation(
                    "kv-events.inference-gateway.dev/port",
                    &events_port.to_string(),
                )
                .annotation(
                    "kv-events.inference-gateway.dev/replay-port",
                    &replay_port.to_string(),
                ),
            k8s::ready_pods("sim", "sim", ips),
        )
        .render()
}

/// The value of the series `series` (name and labels exactly as exported) in `admin`'s
/// `/metrics`, 0 when absent.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (status, body) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// POST a completion to `url`; the endpoint that served it.
async fn complete(client: &Client, url: &str, prompt: &str) -> Option<SocketAddr> {
    let body = serde_json::json!({"model": "/model/qwen", "prompt": prompt, "max_tokens": 2});
    let mut stream = Stream::open(client, url, &[], &body.to_string()).await;
    assert_eq!(stream.status, 200);
    let served = stream
        .headers
        .get("x-gateway-destination-endpoint-served")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    while stream.next_chunk().await.is_some() {}
    served
}

/// Batches the simulators have published.
async fn published(sims: &[SimServer]) -> f64 {
    let mut total = 0.0;
    for sim in sims {
        let (_, body) = get(&format!("http://{}/sim/stats", sim.local_addr())).await;
        let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
        total += stats["kv_event_batches"].as_f64().unwrap();
    }
    total
}

/// A long document: about 400 tokens, distinct for each `n`.
fn document(n: usize) -> String {
    format!("Document {n}. ")
        + &format!("Paragraph {n} of the travel guide, line after line. ").repeat(40)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fed_the_same_events_send_a_prefix_where_it_is_cached() {
    let (events_port, replay_port) = (free_port(), free_port());
    let events = serde_json::json!({
        "enable_kv_cache_events": true,
        "endpoint": format!("tcp://*:{events_port}"),
        "replay_endpoint": format!("tcp://*:{replay_port}"),
    })
    .to_string();
    let (port, sims) = start_sims(150, 3, &["--kv-events-config", &events], &[]).await;
    let llm_ports = [free_port(), free_port()];
    let mut replicas = Vec::new();
    for llm_port in llm_ports {
        let config = config(llm_port, port, &sims, events_port, replay_port);
        replicas.push(Gateway::start(gateway_binary(), &config, &[]).await);
    }
    let client = client();
    // Until every replica receives every pod's events: requests straight to the pods (each
    // fills blocks, so each pod publishes a batch).
    let started = Instant::now();
    let mut n = 0;
    loop {
        let mut all = true;
        for replica in &replicas {
            all &= metric(
                replica.admin,
                "gateway_kv_events_endpoints{state=\"receiving\"}",
            )
            .await
                == 3.0;
        }
        if all {
            break;
        }
        if started.elapsed() > DEADLINE {
            let (_, body) = get(&format!("http://{}/metrics", replicas[0].admin)).await;
            let text = String::from_utf8_lossy(&body);
            let kv: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("kv_events") || l.contains("tokeniz"))
                .collect();
            panic!("the replicas never received every pod's events: {kv:#?}");
        }
        for sim in &sims {
            let url = format!("http://{}/v1/completions", sim.local_addr());
            // Two full blocks: a batch with a store.
            let prompt = loadtest::sim::tokenizer::prompt_with_exact_tokens(40, n);
            complete(&client, &url, &prompt).await;
        }
        n += 1;
    }
    // Six documents, each sent to one pod directly: no replica knows of them but by the events.
    let docs: Vec<(String, SocketAddr)> = (0..6)
        .map(|i| (document(i), sims[i % 3].local_addr()))
        .collect();
    for (doc, pod) in &docs {
        complete(&client, &format!("http://{pod}/v1/completions"), doc).await;
    }
    // Every batch the pods published has reached both replicas.
    let started = Instant::now();
    loop {
        let sent = published(&sims).await;
        let mut caught_up = true;
        for replica in &replicas {
            caught_up &=
                metric(replica.admin, "gateway_kv_events_total{kind=\"batch\"}").await >= sent;
        }
        if caught_up {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the replicas never caught up with the events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A follow-up to each document, through either replica, goes to the pod that holds it.
    for (i, (doc, pod)) in docs.iter().enumerate() {
        let follow_up = format!("{doc} Question {i}: where should I go first?");
        for llm_port in llm_ports {
            let url = format!("http://127.0.0.1:{llm_port}/v1/completions");
            let served = complete(&client, &url, &follow_up).await;
            assert_eq!(
                served,
                Some(*pod),
                "document {i} through the replica on {llm_port}"
            );
        }
    }
    for replica in &replicas {
        let ok = metric(
            replica.admin,
            "gateway_prompt_tokenizations_total{pool=\"default/pool\",result=\"ok\"}",
        )
        .await;
        assert_eq!(ok, docs.len() as f64);
    }
}
