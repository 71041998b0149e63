//! End-to-end tests of the gateway core: a real gateway process, real HTTP backends.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use testkit::k8s::{
    self, BackendRef, HttpRoute, InferenceModel, InferencePool, Manifest, Pod, Rule, Service,
};
use testkit::*;

fn gateway_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
}

/// Five backends behind both a Service (the `http` listener) and a pool (the `llm` listener), plus
/// the seed's two InferenceModels (a Critical base model and a weighted pair of adapters).
struct Setup {
    gateway: Gateway,
    backends: Vec<Backend>,
    http: String,
    llm: String,
    config: Manifest,
}

fn config(http_port: u16, llm_port: u16, port: u16, backends: &[Backend]) -> Manifest {
    let ips = backends.iter().map(|b| b.addr.ip());
    Manifest::test_gateway(http_port, llm_port)
        .with_pool(
            InferencePool::new("pool", port).selector("app", "qwen"),
            k8s::ready_pods("qwen", "qwen", ips),
        )
        .with_plain_service("qwen", "qwen", port)
        .with_all(k8s::seed_models("pool", (70, 30)))
}

async fn setup(first_ip: u8, extra_args: &[&str]) -> Setup {
    let (port, backends) = start_backends(first_ip, 5).await;
    let (http_port, llm_port) = (free_port(), free_port());
    let config = config(http_port, llm_port, port, &backends);
    let gateway = Gateway::start(gateway_binary(), &config.render(), extra_args).await;
    Setup {
        gateway,
        backends,
        http: format!("http://127.0.0.1:{http_port}"),
        llm: format!("http://127.0.0.1:{llm_port}"),
        config,
    }
}

/// Requests in flight over every endpoint of the first pool, from `/debug/snapshot`.
fn in_flight(snapshot: &serde_json::Value) -> u64 {
    snapshot["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["in_flight"].as_u64().unwrap())
        .sum()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_route_round_robins_evenly_and_leaves_the_body_alone() {
    let s = setup(10, &[]).await;
    let client = client();
    let body = r#"{"model": "anything-at-all", "prompt": "hi"}"#;
    for _ in 0..100 {
        let (status, _) = post(&client, &format!("{}/v1/completions", s.http), &[], body).await;
        assert_eq!(status, 200);
    }
    let counts: Vec<usize> = s.backends.iter().map(Backend::count).collect();
    assert_eq!(counts, vec![20; 5], "round-robin over five pods");
    for backend in &s.backends {
        for seen in backend.seen() {
            assert_eq!(
                seen.model.as_deref(),
                Some("anything-at-all"),
                "the plain route does not rewrite"
            );
            assert_eq!(seen.body_len, body.len());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_route_resolves_models_and_answers_errors_in_openai_shape() {
    let s = setup(20, &["--max-body-bytes", "1MiB"]).await;
    let client = client();
    let completions = format!("{}/v1/completions", s.llm);

    let (status, body) = post(
        &client,
        &completions,
        &[],
        r#"{"model":"/model/qwen","prompt":"hi"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["model"], "/model/qwen");

    let cases: [(&str, u16, Option<&str>, &str); 5] = [
        (
            r#"{"model":"llama","prompt":"hi"}"#,
            404,
            Some("model_not_found"),
            "does not exist",
        ),
        (
            r#"{"prompt":"hi"}"#,
            400,
            None,
            "you must provide a model parameter",
        ),
        (
            r#"{"model": "/model/qwen", "prompt": "#,
            400,
            None,
            "could not parse the JSON body",
        ),
        (r#"{"model": 42}"#, 400, None, "model must be a string"),
        (r#"["model"]"#, 400, None, "must be a JSON object"),
    ];
    for (request, status, code, message) in cases {
        let (got, body) = post(&client, &completions, &[], request).await;
        assert_eq!(got, status, "{request}");
        let error = &json(&body)["error"];
        assert_eq!(error["type"], "invalid_request_error", "{request}");
        assert_eq!(error["code"].as_str(), code, "{request}");
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{request}: {error}"
        );
        assert!(error.get("param").is_some());
    }

    let huge = format!(
        r#"{{"model":"/model/qwen","prompt":"{}"}}"#,
        "a".repeat(2 << 20)
    );
    let (status, body) = post(&client, &completions, &[], huge).await;
    assert_eq!(status, 413);
    assert_eq!(json(&body)["error"]["code"], "request_too_large");

    let (status, body) = get(&format!("{}/health", s.llm)).await;
    assert_eq!(
        status, 200,
        "a request without a body goes to some endpoint"
    );
    assert!(json(&body)["server"].is_string());

    // No backend saw the rejected requests.
    let total: usize = s.backends.iter().map(Backend::count).sum();
    assert_eq!(total, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_paths_get_404_and_control_headers_are_stripped() {
    let (port, backends) = start_backends(30, 2).await;
    let (http_port, llm_port) = (free_port(), free_port());
    // Only /v1 on the plain listener.
    let plain = HttpRoute::new("plain")
        .on("gw", "http")
        .rule(Rule::to(BackendRef::service("qwen", 80)).path_prefix("/v1"));
    let config = config(http_port, llm_port, port, &backends).replacing(plain);
    let gateway = Gateway::start(gateway_binary(), &config.render(), &[]).await;
    let client = client();
    let (status, body) = post(
        &client,
        &format!("http://127.0.0.1:{http_port}/v10/x"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"]["type"], "not_found_error");

    let headers = [
        ("x-gateway-destination-endpoint", "10.9.9.9:1"),
        ("x-request-id", "abc-123"),
        // Client hints: read (the llm-d name winning over its alias), never forwarded.
        ("x-gateway-model-name-rewrite", "travel-helper-v1"),
        ("x-llm-d-model-name-rewrite", "travel-helper-v2"),
        ("x-llm-d-inference-objective", "chat"),
        ("x-gateway-inference-fairness-id", "tenant-a"),
    ];
    let (status, _) = post(
        &client,
        &format!("http://127.0.0.1:{llm_port}/v1/completions"),
        &headers,
        r#"{"model":"/model/qwen"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let seen: Vec<Seen> = backends.iter().flat_map(Backend::seen).collect();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]
            .headers
            .get("x-gateway-destination-endpoint")
            .is_none()
    );
    assert_eq!(seen[0].headers["x-request-id"], "abc-123");
    for name in seen[0].headers.keys() {
        assert!(
            !name.as_str().starts_with("x-llm-d-")
                && !name.as_str().starts_with("x-gateway-inference")
                && name != "x-gateway-model-name-rewrite",
            "{name} reached the model server"
        );
    }
    assert_eq!(
        seen[0].model.as_deref(),
        Some("travel-helper-v2"),
        "the model-name rewrite of a model without target models"
    );
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_target_models_follow_their_weights_and_are_rewritten() {
    let s = setup(40, &[]).await;
    let client = client();
    let uri = format!("{}/v1/chat/completions", s.llm);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            let uri = uri.clone();
            tokio::spawn(async move {
                let mut counts: HashMap<String, usize> = HashMap::new();
                for _ in 0..625 {
                    let body = r#"{"messages":[{"role":"user","content":"plan a trip"}],"model":"travel-helper","temperature":0}"#;
                    let (status, reply) = post(&client, &uri, &[], body).await;
                    assert_eq!(status, 200);
                    let model = json(&reply)["model"].as_str().unwrap().to_owned();
                    *counts.entry(model).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for (model, n) in task.await.unwrap() {
            *counts.entry(model).or_default() += n;
        }
    }
    let total: usize = counts.values().sum();
    assert_eq!(total, 10_000);
    let v1 = counts.get("travel-helper-v1").copied().unwrap_or(0) as f64 / total as f64;
    let v2 = counts.get("travel-helper-v2").copied().unwrap_or(0) as f64 / total as f64;
    assert!((v1 - 0.70).abs() <= 0.02, "v1 share {v1}");
    assert!((v2 - 0.30).abs() <= 0.02, "v2 share {v2}");
    assert_eq!(
        counts.len(),
        2,
        "only the two targets reach the backends: {counts:?}"
    );
    // Every byte but the model survives the rewrite.
    let seen = s.backends[0].seen();
    let expected_len = r#"{"messages":[{"role":"user","content":"plan a trip"}],"model":"travel-helper-v1","temperature":0}"#.len();
    assert!(
        seen.iter().all(|r| r.body_len == expected_len),
        "body length after rewrite"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mebibyte_prompts_round_trip_on_both_routes() {
    let s = setup(50, &[]).await;
    let client = client();
    let prompt = "x".repeat(4 << 20);
    let body = format!(r#"{{"model":"travel-helper","prompt":"{prompt}","max_tokens":1}}"#);
    let (status, echoed) = post(
        &client,
        &format!("{}/v1/completions", s.llm),
        &[("x-test-mode", "echo")],
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let echoed = json(&echoed);
    assert!(
        echoed["model"]
            .as_str()
            .unwrap()
            .starts_with("travel-helper-v")
    );
    assert_eq!(echoed["prompt"].as_str().unwrap().len(), 4 << 20);

    let (status, echoed) = post(
        &client,
        &format!("{}/v1/completions", s.http),
        &[("x-test-mode", "echo")],
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        echoed.len(),
        body.len(),
        "the plain route streams the body through untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_not_buffered_on_either_route() {
    let s = setup(60, &[]).await;
    let client = client();
    for base in [&s.llm, &s.http] {
        let gate = format!("gate-{}", fastrand::u32(..));
        let mut stream = Stream::open(
            &client,
            &format!("{base}/v1/completions"),
            &[("x-test-gate", &gate)],
            r#"{"model":"/model/qwen","prompt":"hi","stream":true}"#,
        )
        .await;
        assert_eq!(stream.status, 200);
        // The backend holds its last chunk until released: the first must arrive on its own.
        let first = stream.read_until("first").await;
        assert!(!first.contains("last"));
        for backend in &s.backends {
            backend.release(&gate);
        }
        let rest = stream.read_until("[DONE]").await;
        assert!(rest.contains("last"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_fails_no_request() {
    let (port, mut backends) = start_backends(70, 3).await;
    let (http_port, llm_port) = (free_port(), free_port());
    // A fourth pod whose server is not running.
    let (_, dead) = start_backends(73, 1).await;
    let dead = dead.into_iter().next().unwrap();
    let dead_ip = dead.addr.ip();
    drop(dead);
    let config = config(http_port, llm_port, port, &backends)
        .with(Pod::new("dead", dead_ip).label("app", "qwen"));
    let gateway = Gateway::start(gateway_binary(), &config.render(), &[]).await;
    let client = client();
    for base in [
        format!("http://127.0.0.1:{llm_port}"),
        format!("http://127.0.0.1:{http_port}"),
    ] {
        for _ in 0..40 {
            let (status, body) = post(
                &client,
                &format!("{base}/v1/completions"),
                &[],
                r#"{"model":"/model/qwen"}"#,
            )
            .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        }
    }
    let served: usize = backends.iter_mut().map(|b| b.count()).sum();
    assert_eq!(served, 80);
    let snapshot = gateway.snapshot().await;
    let endpoints = snapshot["pools"][0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 4);
    assert_eq!(in_flight(&snapshot), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abort_closes_the_upstream_connection_and_releases_the_count() {
    let s = setup(80, &[]).await;
    let client = client();
    let mut stream = Stream::open(
        &client,
        &format!("{}/v1/completions", s.llm),
        &[("x-test-gate", "never")],
        r#"{"model":"/model/qwen","prompt":"hi","stream":true}"#,
    )
    .await;
    stream.read_until("first").await;
    assert_eq!(in_flight(&s.gateway.snapshot().await), 1);
    drop(stream);
    wait_for("the backend to see its client go away", || {
        s.backends
            .iter()
            .map(|b| b.state.aborted.load(Ordering::SeqCst))
            .sum::<usize>()
            == 1
    })
    .await;
    s.gateway
        .wait_for_snapshot(
            "the in-flight count to be released after the abort",
            |snapshot| in_flight(snapshot) == 0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_edit_applies_without_failing_requests_in_flight() {
    let s = setup(90, &[]).await;
    let client = client();
    let uri = format!("{}/v1/completions", s.llm);
    let mut stream = Stream::open(
        &client,
        &uri,
        &[("x-test-gate", "edit")],
        r#"{"model":"travel-helper","prompt":"hi","stream":true}"#,
    )
    .await;
    stream.read_until("first").await;
    let generation = s.gateway.snapshot().await["generation"].as_u64().unwrap();

    // Send every travel-helper request to v2 from now on.
    let edited = s.config.clone().replacing(
        InferenceModel::new("travel", "travel-helper", "pool")
            .weighted_target("travel-helper-v2", 1),
    );
    assert_ne!(edited.render(), s.config.render());
    s.gateway.rewrite_config(&edited.render());
    s.gateway
        .wait_for_snapshot("the edit to be applied", |snapshot| {
            snapshot["generation"].as_u64().unwrap() > generation
        })
        .await;
    for _ in 0..20 {
        let (status, body) = post(&client, &uri, &[], r#"{"model":"travel-helper"}"#).await;
        assert_eq!(status, 200);
        assert_eq!(json(&body)["model"], "travel-helper-v2");
    }
    for backend in &s.backends {
        backend.release("edit");
    }
    let rest = stream.read_until("[DONE]").await;
    assert!(
        rest.contains("last"),
        "the request in flight finished normally"
    );

    // A broken edit is rejected and the last good configuration keeps serving.
    s.gateway.rewrite_config("apiVersion: v1\nkind: [broken\n");
    s.gateway
        .wait_for_snapshot("the broken edit to be rejected", |snapshot| {
            snapshot["config"]["last_result"] == "rejected"
        })
        .await;
    let (status, _) = post(&client, &uri, &[], r#"{"model":"travel-helper"}"#).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_error_statuses_and_route_timeouts() {
    let (port, backends) = start_backends(100, 2).await;
    let (http_port, llm_port) = (free_port(), free_port());
    let service = |name: &str| BackendRef::service(name, 80);
    let config = config(http_port, llm_port, port, &backends)
        .with(
            Service::new("empty")
                .selector("app", "nobody")
                .port(80, 1234),
        )
        .with(
            HttpRoute::new("edge-cases")
                .on("gw", "http")
                .rule(Rule::to(service("empty")).exact_path("/no-pods"))
                .rule(Rule::to(service("does-not-exist")).exact_path("/missing"))
                .rule(
                    Rule::to(BackendRef::pool("pool"))
                        .path_prefix("/slow")
                        .request_timeout("300ms"),
                ),
        );
    let gateway = Gateway::start(gateway_binary(), &config.render(), &[]).await;
    let client = client();
    let base = format!("http://127.0.0.1:{http_port}");

    let (status, body) = post(&client, &format!("{base}/no-pods"), &[], "{}").await;
    assert_eq!(status, 503, "a Service without ready endpoints");
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no ready endpoints")
    );

    let (status, body) = post(&client, &format!("{base}/missing"), &[], "{}").await;
    assert_eq!(status, 500, "a backendRef that does not resolve");
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("BackendNotFound")
    );

    let (status, body) = post(
        &client,
        &format!("{base}/slow"),
        &[("x-test-delay-ms", "3000")],
        r#"{"model":"/model/qwen"}"#,
    )
    .await;
    assert_eq!(
        status, 504,
        "the rule's timeouts.request cuts a request the model server sits on"
    );
    assert_eq!(json(&body)["error"]["type"], "timeout_error");
    let (status, _) = post(
        &client,
        &format!("{base}/slow"),
        &[],
        r#"{"model":"/model/qwen"}"#,
    )
    .await;
    assert_eq!(status, 200, "a fast answer within the timeout");
    drop(gateway);
}

/// `GET /v1/models` through the inference route lists the names the gateway serves (the
/// InferenceModels), answered by the gateway; through the plain route it reaches a pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_through_the_inference_route_are_the_gateways_own_list() {
    let s = setup(45, &[]).await;
    let (status, body) = get(&format!("{}/v1/models", s.llm)).await;
    assert_eq!(status, 200);
    let list = json(&body);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["/model/qwen", "travel-helper"]);
    assert_eq!(list["data"][0]["owned_by"], "default/pool");
    let reached = || s.backends.iter().map(Backend::count).sum::<usize>();
    assert_eq!(reached(), 0, "the gateway answered itself");
    let (status, _) = get(&format!("{}/v1/models", s.http)).await;
    assert_eq!(status, 200);
    assert_eq!(reached(), 1, "the plain route passes it through");
    drop(s.gateway);
}
