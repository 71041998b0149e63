//! Faults and bad input, end to end: model servers that die or fail, malformed requests, and a
//! rolling restart of one of two gateway processes sharing a port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use loadtest::sim::server::SimServer;
use testkit::k8s::InferenceModel;
use testkit::*;

fn gateway_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
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
        &sim_pool_config(llm_port, port, &sims, "ROUND_ROBIN").render(),
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
        &sim_pool_config(llm_port, port, &sims, "ROUND_ROBIN").render(),
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
    let config = sim_pool_config(llm_port, port, &sims, "DEFAULT")
        .with(InferenceModel::new("base", "/model/qwen", "pool"))
        .render();
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
    let config = sim_pool_config(llm_port, port, &sims, "DEFAULT").render();
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
    let config = sim_pool_config(llm_port, port, &sims, "DEFAULT").render();
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

/// Completions the simulators finished, by their own `vllm:request_success_total`.
/// One simulator at 127.0.0.`ip` in a DEFAULT pool behind a gateway started with `args`: the
/// simulators, the inference listener's port and the gateway.
async fn one_sim_gateway(ip: u8, args: &[&str]) -> (Vec<SimServer>, u16, Gateway) {
    let (port, sims) = start_sims(ip, 1, &[], &[]).await;
    let llm_port = free_port();
    let config = sim_pool_config(llm_port, port, &sims, "DEFAULT").render();
    let gateway = Gateway::start(gateway_binary(), &config, args).await;
    (sims, llm_port, gateway)
}

async fn served_by(sims: &[SimServer]) -> f64 {
    let mut total = 0.0;
    for sim in sims {
        let (_, page) = get(&format!("http://{}/metrics", sim.local_addr())).await;
        total += String::from_utf8_lossy(&page)
            .lines()
            .filter(|l| l.starts_with("vllm:request_success_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_sheddable_serves_critical_and_leaks_nothing() {
    // Two servers with four sequence slots each: eight requests run at once, the rest queue.
    let (port, sims) = start_sims(20, 2, &["--max-num-seqs", "4"], &[]).await;
    let llm_port = free_port();
    let config = sim_pool_config(llm_port, port, &sims, "DEFAULT")
        .with(InferenceModel::new("base", "/model/qwen", "pool").criticality("Critical"))
        .with(
            InferenceModel::new("batch", "batch", "pool")
                .criticality("Sheddable")
                .target("/model/qwen"),
        )
        .render();
    let gateway = Gateway::start(gateway_binary(), &config, &[]).await;
    let url = format!("http://127.0.0.1:{llm_port}/v1/completions");
    let (rss_before, fds_before) = gateway.resources();

    // Ten times what the pool runs at once: 8 clients with critical requests, 72 with sheddable
    // ones; a client told 429 waits 100 ms and asks again, as a polite client does.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = Arc::new(std::sync::Mutex::new(HashMap::<(bool, u16), usize>::new()));
    // How long each 429 took, for the log (reported, not asserted: timings are the machine's).
    let shed_times = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let body = |model: &str| {
        format!(r#"{{"model":"{model}","prompt":"overload","max_tokens":100,"ignore_eos":true}}"#)
    };
    let critical: Vec<_> = (0..8)
        .map(|_| {
            let (url, body, statuses) = (url.clone(), body("/model/qwen"), Arc::clone(&statuses));
            tokio::spawn(async move {
                let client = client();
                for _ in 0..5 {
                    let (status, _) = post(&client, &url, &[], body.clone()).await;
                    *statuses.lock().unwrap().entry((true, status)).or_default() += 1;
                }
            })
        })
        .collect();
    let sheddable: Vec<_> = (0..72)
        .map(|_| {
            let (url, body, statuses, done, shed_times) = (
                url.clone(),
                body("batch"),
                Arc::clone(&statuses),
                Arc::clone(&done),
                Arc::clone(&shed_times),
            );
            tokio::spawn(async move {
                let client = client();
                while !done.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let (status, reply) = post(&client, &url, &[], body.clone()).await;
                    *statuses.lock().unwrap().entry((false, status)).or_default() += 1;
                    if status == 429 {
                        shed_times.lock().unwrap().push(sent.elapsed());
                        let error: serde_json::Value = serde_json::from_slice(&reply).unwrap();
                        assert_eq!(error["error"]["type"], "rate_limit_error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    let mut rss_peak = rss_before;
    for worker in critical {
        while !worker.is_finished() {
            rss_peak = rss_peak.max(gateway.resources().0);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for worker in sheddable {
        worker.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let mut shed_times = shed_times.lock().unwrap().clone();
    shed_times.sort();
    let median_shed = shed_times
        .get(shed_times.len() / 2)
        .copied()
        .unwrap_or_default();
    eprintln!(
        "statuses (critical, status) -> count: {statuses:?}; median time to a 429: {median_shed:?}; \
         RSS {rss_before} KiB before, {rss_peak} KiB at most; {fds_before} file descriptors before"
    );
    assert_eq!(
        statuses.get(&(true, 200)),
        Some(&40),
        "every critical request served"
    );
    assert!(
        statuses.get(&(false, 429)).copied().unwrap_or(0) > 0,
        "sheddable requests were shed"
    );
    let served =
        statuses.get(&(true, 200)).unwrap() + statuses.get(&(false, 200)).copied().unwrap_or(0);
    assert_eq!(
        served + statuses.get(&(false, 429)).copied().unwrap_or(0),
        statuses.values().sum::<usize>(),
        "every answer is 200 or 429"
    );
    // A shed request never reached a model server: they finished exactly the requests served.
    assert_eq!(served_by(&sims).await, served as f64);
    // Memory stayed bounded, and once the clients are gone nothing is left behind.
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "RSS {rss_before} KiB -> {rss_peak} KiB"
    );
    gateway
        .wait_for_snapshot("in-flight counts back to zero", |snapshot| {
            snapshot["pools"].as_array().is_some_and(|pools| {
                pools.iter().all(|p| {
                    p["endpoints"]
                        .as_array()
                        .is_some_and(|e| e.iter().all(|e| e["in_flight"] == 0))
                })
            })
        })
        .await;
    let start = Instant::now();
    loop {
        // Client connections close with the clients, pooled upstream ones after their idle
        // timeout; the scraper's keep-alive connection to each server may have opened after the
        // first reading.
        let fds = gateway.resources().1;
        if fds <= fds_before + sims.len() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "file descriptors: {fds_before} before, {fds} after the load"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sims, llm_port, gateway) = one_sim_gateway(30, &["--client-read-timeout", "1s"]).await;
    // Headers announce 100 bytes of body; 9 arrive, then nothing.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", llm_port))
        .await
        .unwrap();
    tcp.write_all(
        b"POST /v1/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    // The gateway gives up on the body and closes the connection, long before Pingora's default
    // of 60 s (DEADLINE is 20 s).
    let mut reply = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut reply)).await;
    assert!(closed.is_ok(), "the stalled connection was not closed");
    // Nothing reached the model server, and the gateway goes on serving.
    assert_eq!(served_by(&sims).await, 0.0);
    let (status, _) = post(
        &client(),
        &format!("http://127.0.0.1:{llm_port}/v1/completions"),
        &[],
        r#"{"model":"/model/qwen","prompt":"hi","max_tokens":2}"#,
    )
    .await;
    assert_eq!(status, 200);
    drop(gateway);
}

/// The value of the unlabelled series `name` on the gateway's admin `/metrics`.
async fn gateway_metric(gateway: &Gateway, name: &str) -> f64 {
    let (_, page) = get(&format!("http://{}/metrics", gateway.admin)).await;
    String::from_utf8_lossy(&page)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} on the gateway's /metrics"))
}

/// Wait until the unlabelled series `name` on the gateway's `/metrics` reads `value`, or panic
/// after [`DEADLINE`].
async fn wait_for_metric(gateway: &Gateway, name: &str, value: f64) {
    wait_until(&format!("{name} to read {value}"), DEADLINE, || async {
        gateway_metric(gateway, name).await == value
    })
    .await;
}

/// A completion request with `Connection: close`, as raw HTTP/1.1 bytes, with extra header lines.
fn raw_completion(extra_headers: &str) -> Vec<u8> {
    let body = r#"{"model":"/model/qwen","prompt":"hi","max_tokens":2}"#;
    format!(
        "POST /v1/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         connection: close\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Send `request` on a new connection and read until the gateway closes it.
async fn raw_exchange(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut reply))
        .await
        .expect("the gateway neither answered nor closed the connection")
        .expect("read failed");
    String::from_utf8_lossy(&reply).into_owned()
}

/// The OpenAI error object of a raw HTTP response.
fn error_of(reply: &str) -> serde_json::Value {
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON body ({e}): {reply}"));
    json["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_until_one_closes() {
    let (sims, llm_port, gateway) = one_sim_gateway(40, &["--max-connections", "2"]).await;
    // Two clients take both slots and send nothing.
    let first = tokio::net::TcpStream::connect(("127.0.0.1", llm_port))
        .await
        .unwrap();
    let second = tokio::net::TcpStream::connect(("127.0.0.1", llm_port))
        .await
        .unwrap();
    wait_for_metric(&gateway, "gateway_downstream_connections", 2.0).await;

    // A third connection is answered with a 503 in OpenAI's shape and closed.
    let reply = raw_exchange(llm_port, &raw_completion("")).await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    let head = reply.to_ascii_lowercase();
    assert!(head.contains("\r\nretry-after: 1\r\n"), "{reply}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{reply}");
    let error = error_of(&reply);
    assert_eq!(error["type"], "service_unavailable");
    assert!(
        error["message"].as_str().unwrap().contains("limit of 2"),
        "{error}"
    );
    assert_eq!(served_by(&sims).await, 0.0);
    assert_eq!(
        gateway_metric(&gateway, "gateway_downstream_connections_refused_total").await,
        1.0
    );

    // One holder leaves; its slot comes back and the next connection is served.
    drop(first);
    let mut reply = String::new();
    for _ in 0..200 {
        reply = raw_exchange(llm_port, &raw_completion("")).await;
        if !reply.starts_with("HTTP/1.1 503") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(served_by(&sims).await, 1.0);

    // Every slot is given back when the clients are gone.
    drop(second);
    // Connection slots do not leak.
    wait_for_metric(&gateway, "gateway_downstream_connections", 0.0).await;
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_trickled_in_is_cut_off_but_a_long_response_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sims, llm_port, gateway) = one_sim_gateway(50, &["--client-header-timeout", "1s"]).await;

    // A slowloris client: a header line every 200 ms, each read well inside Pingora's own 60 s
    // per-read limit, never finishing the header. The gateway closes it once 1 s has passed.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", llm_port))
        .await
        .unwrap();
    tcp.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: gateway\r\n")
        .await
        .unwrap();
    let mut lines_sent = 0;
    let started = Instant::now();
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tcp.write_all(b"x-slow: 1\r\n").await.is_err() {
            break true;
        }
        lines_sent += 1;
        let mut byte = [0u8; 1];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut byte)).await
        {
            // EOF or reset: the gateway closed the connection.
            assert!(!matches!(read, Ok(n) if n > 0), "the gateway answered");
            break true;
        }
        if started.elapsed() > DEADLINE {
            break false;
        }
    };
    assert!(
        closed,
        "a trickled header kept its connection for {lines_sent} lines"
    );
    assert!(gateway_metric(&gateway, "gateway_downstream_header_timeouts_total").await >= 1.0);
    assert_eq!(served_by(&sims).await, 0.0);

    // A request whose answer takes longer than the header timeout is not cut: the deadline only
    // runs while the connection waits for a header. (1,500 tokens at the simulators' A10 pace,
    // sped up 20 times, take about 2 s.)
    let client = client();
    let mut stream = Stream::open(
        &client,
        &format!("http://127.0.0.1:{llm_port}/v1/completions"),
        &[],
        r#"{"model":"/model/qwen","prompt":"hello","max_tokens":1500,"stream":true,"ignore_eos":true}"#,
    )
    .await;
    assert_eq!(stream.status, 200);
    let streamed = Instant::now();
    let mut text = String::new();
    while let Some(chunk) = stream.next_chunk().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("[DONE]"), "the stream was cut: {text}");
    assert!(
        streamed.elapsed() > Duration::from_secs(1),
        "the stream ended before the header timeout, so it shows nothing"
    );
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431() {
    let (sims, llm_port, gateway) = one_sim_gateway(60, &["--max-header-bytes", "1KiB"]).await;
    let big = format!("x-big: {}\r\n", "a".repeat(1024));
    let reply = raw_exchange(llm_port, &raw_completion(&big)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    let error = error_of(&reply);
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"].as_str().unwrap().contains("at most 1024"),
        "{error}"
    );
    assert_eq!(served_by(&sims).await, 0.0);
    // A head under the limit goes through.
    let small = format!("x-small: {}\r\n", "a".repeat(512));
    let reply = raw_exchange(llm_port, &raw_completion(&small)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    drop(gateway);
}
