//! A strategy that returns endpoint indexes no pool has (`usize::MAX`) and a repeat, through the
//! `invalid-candidates-gateway` binary in front of real backends: every request is still served by
//! the first valid candidate, the gateway counts what it dropped in
//! `gateway_strategy_invalid_candidates_total`, and the same strategy's `NoEndpoint::Shed` is
//! answered like the gateway's own shedding.

use std::net::SocketAddr;
use std::path::Path;

use testkit::*;

/// Requests sent through the faulty strategy.
const REQUESTS: usize = 12;
/// Out-of-range indexes in every pick (`usize::MAX` and `usize::MAX - 1`).
const INVALID_PER_PICK: usize = 2;

fn config(llm_port: u16, port: u16, backends: &[Backend]) -> String {
    k8s::Manifest::test_gateway(free_port(), llm_port)
        .with_pool(
            k8s::InferencePool::new("pool", port)
                .selector("app", "faulty")
                .strategy("OUT_OF_RANGE"),
            k8s::ready_pods("faulty", "faulty", backends.iter().map(|b| b.addr.ip())),
        )
        .render()
}

/// The value of `series` (name and labels, exactly as exported) in a Prometheus text exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_candidates_are_dropped_counted_and_the_request_served() {
    let (port, backends) = start_backends(190, 2).await;
    let llm_port = free_port();
    let binary = Path::new(env!("CARGO_BIN_EXE_invalid-candidates-gateway"));
    let gateway = Gateway::start(binary, &config(llm_port, port, &backends), &[]).await;
    gateway
        .wait_for_snapshot("both backends in the pool", |snapshot| {
            snapshot["pools"][0]["endpoints"]
                .as_array()
                .is_some_and(|e| e.len() == 2)
        })
        .await;
    assert_eq!(
        gateway.snapshot().await["pools"][0]["strategy"]["implementation"],
        "OUT_OF_RANGE"
    );

    let client = client();
    let url = format!("http://127.0.0.1:{llm_port}/v1/completions");
    let body = r#"{"model":"/model/qwen","prompt":"still served","max_tokens":2}"#;
    // The pool is sorted by address: index 0, the first valid candidate, is the first backend.
    let first: SocketAddr = backends[0].addr;
    for _ in 0..REQUESTS {
        let mut stream = Stream::open(&client, &url, &[], body).await;
        assert_eq!(stream.status, 200);
        let served: SocketAddr = stream.headers["x-gateway-destination-endpoint-served"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(served, first);
        while stream.next_chunk().await.is_some() {}
    }
    assert_eq!(backends[0].count(), REQUESTS);
    assert_eq!(backends[1].count(), 0);

    let (status, error) = post(&client, &url, &[("x-test-shed", "1")], body).await;
    assert_eq!(status, 429);
    let error: serde_json::Value = serde_json::from_slice(&error).unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(backends[0].count() + backends[1].count(), REQUESTS);

    let (status, metrics) = get(&format!("http://{}/metrics", gateway.admin)).await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    assert_eq!(
        sample(
            &metrics,
            r#"gateway_strategy_invalid_candidates_total{pool="default/pool",strategy="OUT_OF_RANGE"}"#
        ),
        Some((REQUESTS * INVALID_PER_PICK) as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"gateway_sheds_total{pool="default/pool"}"#),
        Some(1.0),
        "{metrics}"
    );
}
