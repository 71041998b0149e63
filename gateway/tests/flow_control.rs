//! Flow control end to end: a real gateway in front of a test backend that holds requests before
//! their first byte (`x-test-gate-first`), so the test decides when the pool has room. With
//! metrics unavailable the gateway judges an endpoint by its own count alone: five requests
//! awaiting their first token fill it (the queue threshold), and the next ones wait in the
//! gateway. Assertions are on the order requests reach the backend, statuses, headers and the
//! queue's metrics, never on timings.

use std::time::Duration;

use testkit::k8s::{InferenceModel, InferencePool, Manifest, Pod, ready_pods};
use testkit::*;

fn gateway_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
}

/// The pool `pool` over `pods` with flow-control annotations `flow`, serving `critical`
/// (Critical), `standard` and `batch` (Sheddable).
fn config(llm_port: u16, port: u16, pods: Vec<Pod>, flow: &[(&str, &str)]) -> String {
    let mut pool = InferencePool::new("pool", port).selector("app", "backend");
    for (key, value) in flow {
        pool = pool.annotation(&format!("flow-control.inference-gateway.dev/{key}"), value);
    }
    Manifest::test_gateway(free_port(), llm_port)
        .with_pool(pool, pods)
        .with(InferenceModel::new("critical", "critical", "pool").criticality("Critical"))
        .with(InferenceModel::new("standard", "standard", "pool"))
        .with(InferenceModel::new("batch", "batch", "pool").criticality("Sheddable"))
        .render()
}

fn body(model: &str) -> String {
    format!(r#"{{"model":"{model}","prompt":"hi","max_tokens":2,"stream":true}}"#)
}

/// Five streams held before their first byte, each on its own gate (`hold-0` …): the endpoint
/// is full.
async fn fill(client: &Client, url: &str) -> Vec<tokio::task::JoinHandle<u16>> {
    let mut held = Vec::new();
    for i in 0..5 {
        let (client, url, gate) = (client.clone(), url.to_owned(), format!("hold-{i}"));
        held.push(tokio::spawn(async move {
            let mut stream = Stream::open(
                &client,
                &url,
                &[("x-test-gate-first", gate.as_str())],
                &body("standard"),
            )
            .await;
            while stream.next_chunk().await.is_some() {}
            stream.status
        }));
    }
    held
}

/// A request in the background: its status and the dropped-reason header, if any.
fn send(client: &Client, url: &str, model: &str) -> tokio::task::JoinHandle<(u16, Option<String>)> {
    send_with(client, url, model, None)
}

/// [`send`], naming an InferenceObjective.
fn send_with(
    client: &Client,
    url: &str,
    model: &str,
    objective: Option<&str>,
) -> tokio::task::JoinHandle<(u16, Option<String>)> {
    let (client, url, body) = (client.clone(), url.to_owned(), body(model));
    let objective = objective.map(str::to_owned);
    tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = objective
            .as_deref()
            .map(|o| ("x-gateway-inference-objective", o))
            .into_iter()
            .collect();
        let mut stream = Stream::open(&client, &url, &headers, &body).await;
        let reason = stream
            .headers
            .get("x-llm-d-request-dropped-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        while stream.next_chunk().await.is_some() {}
        (stream.status, reason)
    })
}

/// The sum of a metric's samples whose line starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(gateway: &Gateway) -> String {
    let (_, body) = get(&format!("http://{}/metrics", gateway.admin)).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// Wait until `n` requests wait in the pool's queue.
async fn wait_queued(gateway: &Gateway, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(gateway).await;
        let queued = metric_sum(&text, "inference_extension_flow_control_queue_size{");
        if queued as usize == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queued} queued, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A gateway over one test backend on 127.0.0.`ip`.
struct Setup {
    gateway: Gateway,
    backends: Vec<Backend>,
    url: String,
    client: Client,
    port: u16,
    llm_port: u16,
}

impl Setup {
    /// The pool's flow-control annotations `flow`, `extra` objects appended to the configuration,
    /// gateway flags `args`; the backend is a ready pod unless `scaled_to_zero`.
    async fn start(
        ip: u8,
        flow: &[(&str, &str)],
        extra: &str,
        args: &[&str],
        scaled_to_zero: bool,
    ) -> Setup {
        let (port, backends) = start_backends(ip, 1).await;
        let llm_port = free_port();
        let pods = if scaled_to_zero {
            vec![]
        } else {
            ready_pods("backend", "backend", [backends[0].addr.ip()])
        };
        let objects = config(llm_port, port, pods, flow) + extra;
        let gateway = Gateway::start(gateway_binary(), &objects, args).await;
        Setup {
            gateway,
            backends,
            url: format!("http://127.0.0.1:{llm_port}/v1/completions"),
            client: client(),
            port,
            llm_port,
        }
    }

    fn backend(&self) -> &Backend {
        &self.backends[0]
    }

    /// Fill the endpoint ([`fill`]) and wait until the backend holds all five.
    async fn fill(&self) -> Vec<tokio::task::JoinHandle<u16>> {
        let held = fill(&self.client, &self.url).await;
        wait_for("five held requests at the backend", || {
            self.backend().count() == 5
        })
        .await;
        held
    }

    /// Open the gates `from..5` and check every held request ends well.
    async fn release_held(&self, from: usize, held: Vec<tokio::task::JoinHandle<u16>>) {
        for gate in from..5 {
            self.backend().release(&format!("hold-{gate}"));
        }
        for handle in held {
            assert_eq!(handle.await.unwrap(), 200);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_serves_higher_priority_first_then_arrival_order() {
    let setup = Setup::start(130, &[], "", &[], false).await;
    let (backend, client, url) = (setup.backend(), &setup.client, setup.url.as_str());
    let held = setup.fill().await;
    let first = send(client, url, "standard");
    wait_queued(&setup.gateway, 1).await;
    let second = send(client, url, "standard");
    wait_queued(&setup.gateway, 2).await;
    let urgent = send(client, url, "critical");
    wait_queued(&setup.gateway, 3).await;
    assert_eq!(backend.count(), 5, "nothing passed the full endpoint");
    // One slot: the Critical request goes first.
    backend.release("hold-0");
    wait_for("the critical request at the backend", || {
        backend.count() == 6
    })
    .await;
    assert_eq!(backend.seen()[5].model.as_deref(), Some("critical"));
    // While Critical is active, Standard keeps headroom for it (at most 0.75 requests awaiting a
    // first token per endpoint): the Standard ones go once the held prefills are done, in
    // arrival order.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        backend.count(),
        6,
        "no Standard request while four prefills are held"
    );
    for gate in 1..5 {
        backend.release(&format!("hold-{gate}"));
    }
    wait_for("both standard requests at the backend", || {
        backend.count() == 8
    })
    .await;
    assert_eq!(
        backend.seen()[6..]
            .iter()
            .map(|r| r.model.as_deref())
            .collect::<Vec<_>>(),
        [Some("standard"), Some("standard")]
    );
    for handle in [urgent, first, second] {
        assert_eq!(handle.await.unwrap(), (200, None));
    }
    setup.release_held(5, held).await;
    let text = metrics(&setup.gateway).await;
    assert_eq!(
        metric_sum(
            &text,
            "inference_extension_flow_control_request_queue_duration_seconds_count{inference_pool=\"default/pool\",outcome=\"dispatched\""
        ),
        3.0,
        "{text}"
    );
}

/// An InferenceObjective whose requests may wait in a queue for 200 ms only.
const IMPATIENT: &str = r#"
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata:
  name: impatient
  annotations: {flow-control.inference-gateway.dev/ttl-ms: "200"}
spec: {priority: 0, poolRef: {name: pool}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waits_past_its_ttl_gets_429_with_the_reason() {
    let setup = Setup::start(131, &[], IMPATIENT, &[], false).await;
    let (backend, client, url) = (setup.backend(), &setup.client, setup.url.as_str());
    let held = setup.fill().await;
    // The pool's own time to live is a minute; the objective's is 200 ms.
    let patient = send(client, url, "standard");
    wait_queued(&setup.gateway, 1).await;
    let expired = send_with(client, url, "standard", Some("impatient"))
        .await
        .unwrap();
    assert_eq!(expired, (429, Some("rejected-ttl-expired".to_owned())));
    let (status, body_bytes) = post(
        client,
        url,
        &[("x-gateway-inference-objective", "impatient")],
        body("standard"),
    )
    .await;
    assert_eq!(status, 429);
    let error: serde_json::Value = serde_json::from_slice(&body_bytes).unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error", "{error}");
    // A Sheddable request to the saturated pool is shed at once, as without flow control.
    let shed = send(client, url, "batch").await.unwrap();
    assert_eq!(shed, (429, Some("rejected-saturated".to_owned())));
    assert_eq!(
        backend.count(),
        5,
        "refused requests never reach the backend"
    );
    wait_queued(&setup.gateway, 1).await;
    backend.release("hold-0");
    assert_eq!(patient.await.unwrap(), (200, None));
    setup.release_held(1, held).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_while_queued_leaves_the_queue() {
    let setup = Setup::start(132, &[], "", &[], false).await;
    let (backend, client, url) = (setup.backend(), &setup.client, setup.url.as_str());
    let held = setup.fill().await;
    let gone = send(client, url, "standard");
    wait_queued(&setup.gateway, 1).await;
    gone.abort();
    wait_queued(&setup.gateway, 0).await;
    let text = metrics(&setup.gateway).await;
    assert_eq!(
        metric_sum(
            &text,
            "inference_extension_flow_control_request_queue_duration_seconds_count{inference_pool=\"default/pool\",outcome=\"client-gone\""
        ),
        1.0,
        "{text}"
    );
    // The freed slot goes to the next request, not to the one that left.
    let next = send(client, url, "standard");
    wait_queued(&setup.gateway, 1).await;
    backend.release("hold-0");
    assert_eq!(next.await.unwrap(), (200, None));
    assert_eq!(backend.count(), 6);
    setup.release_held(1, held).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_scaled_to_zero_serves_what_waited_once_an_endpoint_is_ready() {
    let setup = Setup::start(133, &[], "", &[], true).await;
    let waiting = send(&setup.client, &setup.url, "standard");
    wait_queued(&setup.gateway, 1).await;
    // The pod comes up: the request that waited is served there.
    let pods = ready_pods("backend", "backend", [setup.backend().addr.ip()]);
    setup
        .gateway
        .rewrite_config(&config(setup.llm_port, setup.port, pods, &[]));
    assert_eq!(waiting.await.unwrap(), (200, None));
    assert_eq!(setup.backend().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_serves_or_answers_every_queued_request() {
    let mut setup = Setup::start(134, &[], "", &["--drain-delay", "1s"], false).await;
    let held = setup.fill().await;
    let queued: Vec<_> = (0..3)
        .map(|_| send(&setup.client, &setup.url, "standard"))
        .collect();
    wait_queued(&setup.gateway, 3).await;
    setup.gateway.terminate();
    setup.release_held(0, held).await;
    for handle in queued {
        assert_eq!(handle.await.unwrap(), (200, None), "served while draining");
    }
    assert!(
        setup.gateway.wait_exit().await,
        "the gateway drained and exited"
    );
}
