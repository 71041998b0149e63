//! Faults and bad input, end to end: model servers that die or fail, malformed requests, and a
//! rolling restart of one of two gateway processes sharing a port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use loadtest::sim::server::SimServer;
use testkit::*;

fn gateway_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
}

fn pool_config(llm_port: u16, port: u16, sims: &[SimServer], strategy: &str) -> String {
    format!(
        "{gateway}{pods}{route}---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata:
  name: pool
  annotations:
    inference.networking.x-k8s.io/routing-strategy: {strategy}
spec:
  targetPortNumber: {port}
  selector: {{app: sim}}
  extensionRef: {{name: unused}}
",
        gateway = gateway_yaml(free_port(), llm_port),
        pods = pods_at("sim", "sim", sims.iter().map(|s| s.local_addr().ip())),
        route = pool_route("pool"),
    )
}

/// Send a short completion; returns the status and the endpoint that served it.
async fn complete(client: &Client, url: &str) -> (u16, Option<SocketAddr>) {
    let mut stream = Stream::open(
        client,
        url,
        &[],
        r#"{"model":"/model/qwen","prompt":"hello","max_tokens":3}"#,
    )
    .await;
    let served = stream
        .headers
        .get("x-gateway-destination-endpoint-served")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    while stream.next_chunk().await.is_some() {}
    (stream.status, served)
}

fn attempts_on(metrics: &str, endpoint_name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("gateway_picks_total{")
                && l.contains(&format!("endpoint=\"{endpoint_name}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_model_server_is_skipped_and_comes_back() {
    let (port, mut sims) = start_sims(210, 3, &[], &[]).await;
    let llm_port = free_port();
    let gateway = Gateway::start(
        gateway_binary(),
        &pool_config(llm_port, port, &sims, "ROUND_ROBIN"),
        &[],
    )
    .await;
    let client = client();
    let url = format!("http://127.0.0.1:{llm_port}/v1/completions");

    // Streams in flight on every server, then the first server dies.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = Stream::open(
            &client,
            &url,
            &[],
            r#"{"model":"/model/qwen","prompt":"a long one","max_tokens":20000,"ignore_eos":true,"stream":true}"#,
        )
        .await;
        assert_eq!(stream.status, 200);
        stream.next_chunk().await.expect("the stream started");
        streams.push(stream);
    }
    let dead = sims.remove(0);
    let dead_address = dead.local_addr();
    dead.shutdown().await;
    // The stream that was on the dead server ends (an error for its client, not a hang); the
    // others go on.
    let mut ended = 0;
    for mut stream in streams {
        let served = stream.headers["x-gateway-destination-endpoint-served"]
            .to_str()
            .unwrap()
            .to_owned();
        if served == dead_address.to_string() {
            while stream.next_chunk().await.is_some() {}
            ended += 1;
        } else {
            assert!(
                stream.next_chunk().await.is_some(),
                "a stream on a live server continues"
            );
        }
    }
    assert_eq!(ended, 1);

    // New requests all succeed: the first connection refused is retried on another server and
    // ejects the dead one, so it is not tried again while ejected.
    let started = Instant::now();
    let mut served: HashMap<SocketAddr, usize> = HashMap::new();
    for _ in 0..30 {
        let (status, endpoint) = complete(&client, &url).await;
        assert_eq!(status, 200);
        *served.entry(endpoint.unwrap()).or_default() += 1;
    }
    assert!(!served.contains_key(&dead_address));
    let (_, metrics) = get(&format!("http://{}/metrics", gateway.admin)).await;
    let tries = attempts_on(&String::from_utf8_lossy(&metrics), "default/sim-0");
    // One attempt in the first second, then one per doubling ejection at most.
    let allowed = 2 + started.elapsed().as_secs_f64().log2().max(0.0).ceil() as u64;
    assert!(
        tries <= allowed,
        "{tries} attempts on the dead server in {:?}",
        started.elapsed()
    );

    // The server comes back at the same address: it gets traffic again once its ejection ends.
    let flags: Vec<String> = [
        "/models/Qwen-2.5-7B-Instruct",
        "--served-model-name",
        "/model/qwen",
        "--time-scale",
        "20",
        "--host",
        &dead_address.ip().to_string(),
        "--port",
        &dead_address.port().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let revived =
        SimServer::start(loadtest::sim::config::SimConfig::from_command_line(flags).unwrap())
            .await
            .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, endpoint) = complete(&client, &url).await;
        assert_eq!(status, 200);
        if endpoint == Some(dead_address) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revived server never got traffic again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(revived);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_errors_is_ejected() {
    let failing: &[&str] = &["--fail-rate", "1.0", "--fail-status", "500"];
    let (port, sims) = start_sims(220, 3, &[], &[failing]).await;
    let llm_port = free_port();
    let _gateway = Gateway::start(
        gateway_binary(),
        &pool_config(llm_port, port, &sims, "ROUND_ROBIN"),
        &[],
    )
    .await;
    let client = client();
    let url = format!("http://127.0.0.1:{llm_port}/v1/completions");
    let mut errors = 0;
    let n = 60;
    for _ in 0..n {
        let (status, _) = complete(&client, &url).await;
        match status {
            200 => {}
            500 => errors += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    // Round-robin would send a third of the requests (20) to the failing server. Five 500s in a
    // row eject it; after the ejection it gets one more chance before a longer one.
    assert!(
        errors >= 5,
        "the failing server was used until ejected ({errors})"
    );
    assert!(errors <= 8, "{errors} of {n} requests failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_client_errors() {
    let (port, sims) = start_sims(230, 1, &[], &[]).await;
    let llm_port = free_port();
    let config = pool_config(llm_port, port, &sims, "DEFAULT")
        + "---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: base}
spec: {modelName: /model/qwen, poolRef: {name: pool}}
";
    let _gateway = Gateway::start(gateway_binary(), &config, &["--max-body-bytes", "64KiB"]).await;
    let client = client();
    let url = format!("http://127.0.0.1:{llm_port}/v1/completions");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated JSON",
            br#"{"model": "/model/qwen", "prompt": "hi"#.to_vec(),
            400,
            "could not parse",
        ),
        ("not an object", b"[1, 2, 3]".to_vec(), 400, "JSON object"),
        (
            "model of the wrong type",
            br#"{"model": ["a"]}"#.to_vec(),
            400,
            "model must be a string",
        ),
        (
            "stream of the wrong type",
            br#"{"model": "/model/qwen", "stream": "yes"}"#.to_vec(),
            400,
            "invalid type",
        ),
        (
            "huge max_tokens",
            br#"{"model": "/model/qwen", "max_tokens": 1e400}"#.to_vec(),
            400,
            "could not parse",
        ),
        (
            "negative max_tokens",
            br#"{"model": "/model/qwen", "max_tokens": -1}"#.to_vec(),
            400,
            "invalid value",
        ),
        (
            "invalid UTF-8",
            b"{\"model\": \"\xff\xfe\"}".to_vec(),
            400,
            "UTF-8",
        ),
        (
            "duplicate keys",
            br#"{"model": "a", "model": "/model/qwen"}"#.to_vec(),
            400,
            "duplicate field",
        ),
        (
            "deep nesting",
            format!(r#"{{"model": "/model/qwen", "prompt": {deep}}}"#).into_bytes(),
            400,
            "recursion limit",
        ),
        (
            "missing model",
            br#"{"prompt": "hi"}"#.to_vec(),
            400,
            "must provide a model",
        ),
        (
            "unknown model",
            br#"{"model": "gpt-5", "prompt": "hi"}"#.to_vec(),
            404,
            "does not exist",
        ),
        (
            "too large",
            format!(
                r#"{{"model": "/model/qwen", "prompt": "{}"}}"#,
                "x".repeat(70_000)
            )
            .into_bytes(),
            413,
            "at most 65536 bytes",
        ),
    ];
    for (name, body, status, message) in cases {
        let (got, reply) = post(&client, &url, &[], body).await;
        assert_eq!(got, status, "{name}: {}", String::from_utf8_lossy(&reply));
        let reply: serde_json::Value =
            serde_json::from_slice(&reply).unwrap_or_else(|_| panic!("{name}: not JSON"));
        let text = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{name}: {text}");
    }
    // A huge header block is refused by the HTTP layer, not passed on.
    let huge = "x".repeat(200_000);
    let request = hyper::Request::post(&url)
        .header("x-junk", huge.as_str())
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    if let Ok(response) = client.request(request).await {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_request() {
    let (port, sims) = start_sims(240, 3, &[], &[]).await;
    let llm_port = free_port();
    let config = pool_config(llm_port, port, &sims, "DEFAULT");
    // Two gateway processes on the same listener port (SO_REUSEPORT), like two replicas behind
    // one address. During its drain delay the old one answers with `Connection: close`, so the
    // clients' keep-alive connections move to the new one before its listener closes.
    let drain = ["--drain-delay", "1s"];
    let mut old = Gateway::start(gateway_binary(), &config, &drain).await;
    let new = Gateway::start(gateway_binary(), &config, &drain).await;
    let url = format!("http://127.0.0.1:{llm_port}/v1/completions");
    let failures = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (url, failures, successes, stop) = (url.clone(), Arc::clone(&failures), Arc::clone(&successes), Arc::clone(&stop));
            tokio::spawn(async move {
                let client = client();
                let stopped = stop.notified();
                tokio::pin!(stopped);
                loop {
                    // Every other worker streams a few hundred tokens, the rest ask short questions.
                    let body = if w % 2 == 0 {
                        r#"{"model":"/model/qwen","prompt":"stream","max_tokens":300,"ignore_eos":true,"stream":true}"#
                    } else {
                        r#"{"model":"/model/qwen","prompt":"short","max_tokens":2}"#
                    };
                    let request = async {
                        let mut stream = Stream::open(&client, &url, &[], body).await;
                        let mut text = String::new();
                        while let Some(chunk) = stream.next_chunk().await {
                            text.push_str(&String::from_utf8_lossy(&chunk));
                        }
                        stream.status == 200 && (w % 2 == 1 || text.contains("[DONE]"))
                    };
                    tokio::select! {
                        ok = request => {
                            let counter = if ok { &successes } else { &failures };
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        _ = &mut stopped => return,
                    }
                }
            })
        })
        .collect();
    wait_for("traffic through both gateways", || {
        successes.load(Ordering::SeqCst) >= 20
    })
    .await;
    old.terminate();
    assert!(
        old.wait_exit().await,
        "the old gateway drained and exited cleanly"
    );
    let after_exit = successes.load(Ordering::SeqCst);
    wait_for("traffic after the old gateway left", || {
        successes.load(Ordering::SeqCst) >= after_exit + 20
    })
    .await;
    stop.notify_waiters();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "{} requests succeeded",
        successes.load(Ordering::SeqCst)
    );
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_unready_and_closes_keep_alive_while_streams_finish() {
    let (port, sims) = start_sims(10, 2, &[], &[]).await;
    let llm_port = free_port();
    let config = pool_config(llm_port, port, &sims, "DEFAULT");
    // A drain delay far longer than the test, so every check below happens inside it.
    let gateway = Gateway::start(gateway_binary(), &config, &["--drain-delay", "600s"]).await;
    let url = format!("http://127.0.0.1:{llm_port}/v1/completions");
    let client = client();
    let (status, _) = post(
        &client,
        &url,
        &[],
        r#"{"model":"/model/qwen","prompt":"hi","max_tokens":2}"#,
    )
    .await;
    assert_eq!(status, 200);
    // A stream that began before the signal.
    let mut stream = Stream::open(
        &client,
        &url,
        &[],
        r#"{"model":"/model/qwen","prompt":"long","max_tokens":300,"ignore_eos":true,"stream":true}"#,
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["connection"], "keep-alive");
    gateway.terminate();
    let readyz = format!("http://{}/readyz", gateway.admin);
    let start = Instant::now();
    while get(&readyz).await.0 != 503 {
        assert!(start.elapsed() < DEADLINE, "/readyz did not turn 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Still served while the load balancer catches up, but not kept alive.
    let request = hyper::Request::post(&url)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"/model/qwen","prompt":"hi","max_tokens":2}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["connection"], "close");
    // The stream from before the signal runs to its end.
    let mut text = String::new();
    while let Some(chunk) = stream.next_chunk().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("data: [DONE]"), "{text}");
}
