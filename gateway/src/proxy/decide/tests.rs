//! The decision step without a network: a snapshot built from YAML through the real build, requests
//! as heads and bodies, and the exact plan expected for each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use plugins::{
    Candidates, ConfigError, EndpointMetrics, NoEndpoint, PoolView, Registry, RequestView,
    Strategy, StrategyConfig,
};

use super::*;
use crate::proxy::error::{ClientError, ShedCause};
use crate::snapshot::ScrapedMetrics;
use crate::snapshot::build::tests::build_yaml_with;

/// Ports: 8080 plain (Service `qwen`), 8081 inference (pool `qwen-pool`, strategy FIXED), 8082
/// body-based routing (model `travel-helper` to the pool, anything else to the Service), 8083
/// misconfigured routes, 8084 a pool without ready endpoints.
pub(super) const OBJECTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ours}
spec: {controllerName: inference-gateway.dev/controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: ours
  listeners:
  - {name: plain, protocol: HTTP, port: 8080}
  - {name: llm, protocol: HTTP, port: 8081}
  - {name: by-model, protocol: HTTP, port: 8082}
  - {name: broken, protocol: HTTP, port: 8083}
  - {name: empty, protocol: HTTP, port: 8084, hostname: empty.example.com}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: plain}
spec:
  parentRefs: [{name: gw, sectionName: plain}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{kind: Service, name: qwen, port: 8000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: llm}
spec:
  parentRefs: [{name: gw, sectionName: llm}]
  rules:
  - backendRefs: [{group: inference.networking.x-k8s.io, kind: InferencePool, name: qwen-pool}]
    timeouts: {request: 30s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: by-model}
spec:
  parentRefs: [{name: gw, sectionName: by-model}]
  rules:
  - matches: [{headers: [{name: x-gateway-model-name, value: travel-helper}]}]
    backendRefs: [{group: inference.networking.x-k8s.io, kind: InferencePool, name: qwen-pool}]
  - backendRefs: [{kind: Service, name: qwen, port: 8000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken}
spec:
  parentRefs: [{name: gw, sectionName: broken}]
  rules:
  - matches: [{path: {type: Exact, value: /zero}}]
    backendRefs: [{kind: Service, name: qwen, port: 8000, weight: 0}]
  - matches: [{path: {type: Exact, value: /missing}}]
    backendRefs: [{kind: Service, name: missing, port: 8000}]
  - matches: [{path: {type: Exact, value: /idle}}]
    backendRefs: [{kind: Service, name: idle, port: 8000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: empty}
spec:
  parentRefs: [{name: gw, sectionName: empty}]
  rules:
  - backendRefs: [{group: inference.networking.x-k8s.io, kind: InferencePool, name: empty-pool}]
---
apiVersion: v1
kind: Service
metadata: {name: qwen}
spec: {selector: {app: qwen}, ports: [{port: 8000, targetPort: 8000}]}
---
apiVersion: v1
kind: Service
metadata: {name: idle}
spec: {selector: {app: nobody}, ports: [{port: 8000, targetPort: 8000}]}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata:
  name: qwen-pool
  annotations: {inference.networking.x-k8s.io/routing-strategy: FIXED}
spec: {targetPortNumber: 8000, selector: {app: qwen}, extensionRef: {name: epp}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata:
  name: empty-pool
  annotations: {flow-control.inference-gateway.dev/enabled: "false"}
spec: {targetPortNumber: 8000, selector: {app: nobody}, extensionRef: {name: epp}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: travel-helper}
spec:
  modelName: travel-helper
  criticality: Standard
  poolRef: {name: qwen-pool}
  targetModels: [{name: travel-helper-v1, weight: 1}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: batch}
spec:
  modelName: batch
  criticality: Sheddable
  poolRef: {name: qwen-pool}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: empty-model}
spec:
  modelName: m
  poolRef: {name: empty-pool}
---
apiVersion: v1
kind: Pod
metadata: {name: qwen-0, labels: {app: qwen}}
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: qwen-1, labels: {app: qwen}}
status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: qwen-2, labels: {app: qwen}}
status: {podIP: 10.0.0.3, conditions: [{type: Ready, status: "True"}]}
"#;

/// A strategy that ranks endpoints in a fixed order, out-of-range indexes included, and remembers
/// what it was told.
#[derive(Debug, Default)]
struct Fixed {
    seen: parking_lot::Mutex<Vec<String>>,
}

impl Strategy for Fixed {
    fn pick(
        &self,
        request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint> {
        self.seen.lock().push(format!(
            "{} -> {} (priority {}, prompt {:?}, {} endpoints)",
            request.model,
            request.target_model,
            request.priority,
            request.prompt,
            pool.len()
        ));
        if request.headers.contains_key("x-test-shed") {
            return Err(NoEndpoint::Shed("the test asked".into()));
        }
        Ok(Candidates::new(vec![2, 7, 0, 2, usize::MAX]))
    }
}

pub(super) fn snapshot() -> Snapshot {
    let (snapshot, issues) = snapshot_of(OBJECTS);
    assert!(
        !crate::config::issues::has_errors(&issues),
        "the test configuration has errors: {issues:#?}"
    );
    snapshot
}

/// The snapshot of `objects`, with the `FIXED` strategy registered, and the build's issues.
pub(super) fn snapshot_of(objects: &str) -> (Snapshot, Vec<crate::config::ConfigIssue>) {
    let mut registry = Registry::with_builtins();
    registry.register(
        "FIXED",
        |_: &StrategyConfig| -> Result<Arc<dyn Strategy>, ConfigError> {
            Ok(Arc::new(Fixed::default()))
        },
    );
    let (_, snapshot, issues) = build_yaml_with(objects, &registry);
    (snapshot, issues)
}

/// A request head on `port` for `path`.
#[derive(Clone)]
pub(super) struct Request {
    pub(super) port: u16,
    pub(super) host: Option<&'static str>,
    pub(super) method: Method,
    pub(super) path: &'static str,
    pub(super) headers: HeaderMap,
    pub(super) has_body: bool,
    pub(super) hints: crate::headers::ClientHints,
}

impl Request {
    pub(super) fn post(port: u16, path: &'static str) -> Self {
        Self {
            port,
            host: None,
            method: Method::POST,
            path,
            headers: HeaderMap::new(),
            hints: Default::default(),
            has_body: true,
        }
    }

    pub(super) fn head(&self) -> Head<'_> {
        Head {
            port: self.port,
            host: self.host,
            method: &self.method,
            path: self.path,
            query: None,
            headers: &self.headers,
            has_body: self.has_body,
            request_id: "req-1",
            hints: &self.hints,
        }
    }
}

/// The decision for a request whose body is `body`, following a `ReadBody` step as the proxy does.
pub(super) fn decide_fully(snapshot: &Snapshot, request: &Request, body: &str) -> Decision {
    let head = request.head();
    let first = route(snapshot, &head, None);
    match first.step {
        Step::ReadBody(BodyNeeded::Routing) => route(snapshot, &head, Some(body_of(body))),
        Step::ReadBody(BodyNeeded::Pool(pool)) => {
            let mut decision = pool::decide(pool, &head, body_of(body));
            decision.route = first.route;
            decision
        }
        _ => first,
    }
}

pub(super) fn body_of(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub(super) fn error_of(decision: &Decision) -> &ClientError {
    match &decision.step {
        Step::Answer(error) => error,
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// The endpoints a pool dispatch yields, in order.
fn dispatch_order(decision: &mut Decision) -> Vec<String> {
    let Step::Forward(Forward {
        upstreams: Upstreams::Pool(dispatch),
        ..
    }) = &mut decision.step
    else {
        panic!("expected a pool forward, got {:?}", decision.step);
    };
    let mut order = Vec::new();
    while let Some(candidate) = dispatch.next_candidate() {
        order.push(candidate.endpoint.id.address().to_string());
    }
    order
}

pub(super) fn fresh_metrics(snapshot: &Snapshot, waiting: u32) {
    for pool in snapshot.pools.values() {
        for endpoint in &pool.endpoints {
            endpoint.publish_metrics(ScrapedMetrics {
                metrics: EndpointMetrics {
                    waiting,
                    kv_usage: 0.1,
                    ..Default::default()
                },
                at: Instant::now(),
            });
        }
    }
}

#[test]
fn listeners_and_routes_that_do_not_match_get_404() {
    let snapshot = snapshot();
    let decision = route(&snapshot, &Request::post(9999, "/v1").head(), None);
    assert_eq!(error_of(&decision), &ClientError::NoListener);
    assert_eq!(decision.backend, BackendKind::None);
    let mut request = Request::post(8084, "/v1");
    request.host = Some("other.example.com");
    assert_eq!(
        error_of(&route(&snapshot, &request.head(), None)),
        &ClientError::NoListener,
        "a listener with a hostname takes only its host"
    );
    let decision = route(&snapshot, &Request::post(8080, "/health").head(), None);
    let error = error_of(&decision);
    assert_eq!(
        error,
        &ClientError::NoRoute {
            method: "POST".into(),
            path: "/health".into()
        }
    );
    assert_eq!(error.status(), 404);
}

#[test]
fn a_service_route_is_proxied_by_pingora_without_reading_the_body() {
    let snapshot = snapshot();
    let decision = route(
        &snapshot,
        &Request::post(8080, "/v1/completions").head(),
        None,
    );
    assert_eq!(decision.backend, BackendKind::Service);
    assert_eq!(
        decision.route.as_ref().map(|r| &*r.label),
        Some("default/plain#0")
    );
    match &decision.step {
        Step::Proxy(service) => {
            assert_eq!(service.key.qualified_name(), "default/qwen");
            assert_eq!(service.endpoints.len(), 3);
            let first = service.next_untried(&[]).unwrap();
            let second = service.next_untried(&[first]).unwrap();
            assert_ne!(first, second, "a tried endpoint is not offered again");
        }
        other => panic!("expected Pingora's path, got {other:?}"),
    }
}

#[test]
fn misconfigured_rules_answer_500_and_an_idle_service_503() {
    let snapshot = snapshot();
    let zero = route(&snapshot, &Request::post(8083, "/zero").head(), None);
    assert_eq!(error_of(&zero), &ClientError::NoBackendWeight);
    assert_eq!(error_of(&zero).status(), 500);
    let missing = route(&snapshot, &Request::post(8083, "/missing").head(), None);
    assert!(
        matches!(error_of(&missing), ClientError::InvalidBackend(reason) if reason.contains("default/missing")),
        "{:?}",
        missing.step
    );
    assert_eq!(error_of(&missing).status(), 500);
    let idle = route(&snapshot, &Request::post(8083, "/idle").head(), None);
    assert_eq!(
        error_of(&idle),
        &ClientError::NoReadyEndpoints {
            service: "default/idle".into()
        }
    );
    assert_eq!(idle.backend, BackendKind::Service);
}

#[test]
fn a_pool_route_reads_the_body_rewrites_the_model_and_ranks_endpoints() {
    let snapshot = snapshot();
    let request = Request::post(8081, "/v1/completions");
    let first = route(&snapshot, &request.head(), None);
    assert!(matches!(first.step, Step::ReadBody(BodyNeeded::Pool(_))));
    assert_eq!(first.backend, BackendKind::Pool);
    assert_eq!(
        first.route.as_ref().and_then(|r| r.timeout),
        Some(Duration::from_secs(30))
    );
    let body = r#"{"model": "travel-helper", "prompt": "hello", "max_tokens": 7}"#;
    let mut decision = decide_fully(&snapshot, &request, body);
    let info = decision.inference.as_ref().expect("inference info");
    assert_eq!(
        (info.model.as_str(), info.target_model.as_str()),
        ("travel-helper", "travel-helper-v1")
    );
    assert!(info.declared && info.running);
    assert_eq!(info.max_tokens, Some(7));
    assert_eq!(info.strategy(), "FIXED");
    let Step::Forward(forward) = &decision.step else {
        panic!("{:?}", decision.step);
    };
    assert_eq!(
        &forward.body[..],
        br#"{"model": "travel-helper-v1", "prompt": "hello", "max_tokens": 7}"#
    );
    assert_eq!(info.request_bytes, forward.body.len());
    // The strategy's order, out-of-range indexes (counted) and the repeat dropped.
    assert_eq!(info.invalid_candidates, 2);
    assert_eq!(
        dispatch_order(&mut decision),
        ["10.0.0.3:8000", "10.0.0.1:8000"]
    );
}

#[test]
fn a_strategy_may_shed() {
    let snapshot = snapshot();
    let mut request = Request::post(8081, "/v1/completions");
    request
        .headers
        .insert("x-test-shed", http::HeaderValue::from_static("1"));
    let decision = decide_fully(&snapshot, &request, r#"{"model": "travel-helper"}"#);
    assert_eq!(
        error_of(&decision),
        &ClientError::Shed {
            pool: "default/qwen-pool".into(),
            cause: ShedCause::Strategy("the test asked".into())
        }
    );
    assert_eq!(error_of(&decision).status(), 429);
    let info = decision.inference.as_ref().expect("the pick is recorded");
    assert!(!info.running);
}

#[test]
fn model_resolution_errors() {
    let snapshot = snapshot();
    let request = Request::post(8081, "/v1/completions");
    let unknown = decide_fully(&snapshot, &request, r#"{"model": "gpt-4", "prompt": "x"}"#);
    let error = error_of(&unknown);
    assert_eq!(
        error,
        &ClientError::ModelNotFound {
            model: "gpt-4".into()
        }
    );
    assert_eq!(
        (error.status(), error.code(), error.param()),
        (404, Some("model_not_found"), Some("model"))
    );
    assert!(unknown.inference.is_none());
    let bad = decide_fully(&snapshot, &request, r#"{"prompt": "no model"}"#);
    assert!(
        matches!(error_of(&bad), ClientError::InvalidBody(b) if b.param.as_deref() == Some("model")),
        "{:?}",
        bad.step
    );
    assert_eq!(error_of(&bad).status(), 400);
    let mut empty = Request::post(8084, "/v1/completions");
    empty.host = Some("empty.example.com");
    let none = decide_fully(&snapshot, &empty, r#"{"model": "m", "prompt": "x"}"#);
    assert_eq!(
        error_of(&none),
        &ClientError::NoEndpoint(NoEndpoint::NoneReady)
    );
    assert_eq!(error_of(&none).status(), 503);
    let info = none.inference.as_ref().expect("the pick is recorded");
    assert!(
        !info.running,
        "a request without an endpoint is not running"
    );
}

#[test]
fn a_bodyless_request_to_a_pool_goes_to_any_endpoint_without_a_pick() {
    let snapshot = snapshot();
    let mut request = Request::post(8081, "/health");
    request.method = Method::GET;
    request.has_body = false;
    let mut decision = decide_fully(&snapshot, &request, "");
    assert!(decision.inference.is_none());
    let mut order = dispatch_order(&mut decision);
    order.sort();
    assert_eq!(order, ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]);
}

#[test]
fn sheddable_requests_are_shed_only_while_the_pool_is_saturated() {
    let snapshot = snapshot();
    let request = Request::post(8081, "/v1/completions");
    let body = r#"{"model": "batch", "prompt": "x"}"#;
    // No metrics yet: unknown load counts as saturation.
    let shed = decide_fully(&snapshot, &request, body);
    let error = error_of(&shed);
    assert!(
        matches!(error, ClientError::Shed { pool, .. } if pool == "default/qwen-pool"),
        "{error:?}"
    );
    assert_eq!((error.status(), error.kind()), (429, "rate_limit_error"));
    fresh_metrics(&snapshot, 0);
    let served = decide_fully(&snapshot, &request, body);
    assert!(matches!(served.step, Step::Forward(_)), "{:?}", served.step);
    fresh_metrics(&snapshot, 50);
    assert!(matches!(
        error_of(&decide_fully(&snapshot, &request, body)),
        ClientError::Shed {
            cause: ShedCause::Saturation(_),
            ..
        }
    ));
    // A Standard request is never shed: it waits its turn in the pool's queue.
    let standard = r#"{"model": "travel-helper", "prompt": "x"}"#;
    let queued = decide_fully(&snapshot, &request, standard);
    assert!(
        matches!(&queued.step, Step::Queue(w) if !w.pool_empty && w.info.priority == 0),
        "{:?}",
        queued.step
    );
}

#[tokio::test]
async fn a_request_queued_for_a_saturated_pool_is_ranked_when_admitted() {
    let snapshot = snapshot();
    fresh_metrics(&snapshot, 50);
    let request = Request::post(8081, "/v1/completions");
    let body = r#"{"model": "travel-helper", "prompt": "x"}"#;
    let Step::Queue(waiting) = decide_fully(&snapshot, &request, body).step else {
        panic!("queued")
    };
    let queue = std::sync::Arc::clone(&waiting.info.pool.queue);
    let queued = queue
        .enqueue(flowcontrol::Admission {
            priority: 0,
            flow: "f".into(),
            cost: 1,
            bytes: 1,
        })
        .unwrap();
    queue.dispatch(|_, _| crate::flow::Room::Free);
    let crate::flow::Waited::Admitted(admit) = queued
        .wait(std::time::Duration::from_secs(5), std::future::pending())
        .await
    else {
        panic!("admitted")
    };
    assert_eq!(queue.released(), 1);
    let head = request.head();
    let mut decision = pool::pick_admitted(waiting.info, &head, waiting.body, admit);
    // Still saturated, but admitted requests are neither queued again nor shed.
    let Step::Forward(Forward {
        upstreams: Upstreams::Pool(dispatch),
        ..
    }) = &mut decision.step
    else {
        panic!("forwarded, got {:?}", decision.step)
    };
    assert_eq!(queue.released(), 1, "counted until it is dispatched");
    dispatch.dispatched();
    assert_eq!(queue.released(), 0);
}

#[test]
fn a_pool_without_flow_control_sends_standard_requests_through_saturation() {
    let snapshot = snapshot();
    fresh_metrics(&snapshot, 50);
    let mut request = Request::post(8084, "/v1/completions");
    request.host = Some("empty.example.com");
    // empty-pool has flow control off: no endpoint is an immediate 503, never a wait.
    let none = decide_fully(&snapshot, &request, r#"{"model": "m", "prompt": "x"}"#);
    assert_eq!(error_of(&none).status(), 503);
}

#[test]
fn body_based_routing_matches_on_the_model_and_sends_the_header() {
    let snapshot = snapshot();
    let request = Request::post(8082, "/v1/completions");
    let first = route(&snapshot, &request.head(), None);
    assert!(matches!(first.step, Step::ReadBody(BodyNeeded::Routing)));
    let to_pool = decide_fully(
        &snapshot,
        &request,
        r#"{"model": "travel-helper", "prompt": "x"}"#,
    );
    assert_eq!(to_pool.backend, BackendKind::Pool);
    match &to_pool.step {
        Step::Forward(forward) => {
            assert_eq!(forward.model_header.as_deref(), Some("travel-helper"));
            assert!(matches!(forward.upstreams, Upstreams::Pool(_)));
        }
        other => panic!("{other:?}"),
    }
    let to_service = decide_fully(
        &snapshot,
        &request,
        r#"{"model": "/model/qwen", "prompt": "x"}"#,
    );
    assert_eq!(to_service.backend, BackendKind::Service);
    match &to_service.step {
        Step::Forward(forward) => {
            assert_eq!(forward.model_header.as_deref(), Some("/model/qwen"));
            assert!(matches!(forward.upstreams, Upstreams::Service(_)));
            assert_eq!(
                &forward.body[..],
                br#"{"model": "/model/qwen", "prompt": "x"}"#
            );
        }
        other => panic!("{other:?}"),
    }
    // Without a body there is nothing to route on: the Service's own path.
    let mut bodyless = Request::post(8082, "/v1/models");
    bodyless.has_body = false;
    assert!(matches!(
        route(&snapshot, &bodyless.head(), None).step,
        Step::Proxy(_)
    ));
}

#[test]
fn the_clients_model_rewrite_applies_unless_the_inference_model_has_targets() {
    let snapshot = snapshot();
    fresh_metrics(&snapshot, 0); // `batch` is sheddable: an idle pool serves it
    let mut request = Request::post(8081, "/v1/completions");
    request.hints.model_rewrite = Some("travel-helper-v2".into());
    let target = |model: &str| {
        let decision = decide_fully(&snapshot, &request, &format!(r#"{{"model": "{model}"}}"#));
        let info = decision.inference.expect("inference info");
        (info.target_model, info.client_rewrite)
    };
    // `batch` is declared without targets: the client's rewrite is sent.
    assert_eq!(target("batch"), ("travel-helper-v2".into(), true));
    // `travel-helper` has target models: they win over the client.
    assert_eq!(target("travel-helper"), ("travel-helper-v1".into(), false));

    let decision = decide_fully(&snapshot, &request, r#"{"model": "batch"}"#);
    let info = decision.inference.as_ref().unwrap();
    assert_eq!(
        info.labels(503),
        ("batch", "unknown"),
        "a client-chosen target is no label until a model server accepted it"
    );
    assert_eq!(info.labels(200), ("batch", "travel-helper-v2"));
    let Step::Forward(forward) = &decision.step else {
        panic!("{:?}", decision.step);
    };
    assert_eq!(&forward.body[..], br#"{"model": "travel-helper-v2"}"#);
}

/// The `data` of a `/v1/models` answer, as (id, owned_by) pairs.
pub(super) fn listed(decision: &Decision) -> Vec<(String, String)> {
    let Step::Respond(body) = &decision.step else {
        panic!("expected the gateway's own answer, got {:?}", decision.step);
    };
    let list: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(list["object"], "list");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert!(m["created"].as_u64().unwrap() > 1_700_000_000);
            (
                m["id"].as_str().unwrap().to_owned(),
                m["owned_by"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn models_on_a_pool_route_are_the_names_the_gateway_serves() {
    let snapshot = snapshot();
    let mut request = Request::post(8081, "/v1/models");
    request.method = Method::GET;
    request.has_body = false;
    let pool = "default/qwen-pool".to_owned();
    assert_eq!(
        listed(&route(&snapshot, &request.head(), None)),
        [
            ("batch".into(), pool.clone()),
            ("travel-helper".into(), pool)
        ],
        "the InferenceModels' names, not a pod's base model and adapters"
    );
    let mut empty = request.clone();
    empty.port = 8084;
    empty.host = Some("empty.example.com");
    assert_eq!(
        listed(&route(&snapshot, &empty.head(), None)),
        [("m".into(), "default/empty-pool".into())]
    );
    // A POST is an inference request like any other; a Service route passes the list through.
    let post = Request::post(8081, "/v1/models");
    assert!(!matches!(
        route(&snapshot, &post.head(), None).step,
        Step::Respond(_)
    ));
    let mut plain = request.clone();
    plain.port = 8080;
    assert!(matches!(
        route(&snapshot, &plain.head(), None).step,
        Step::Proxy(_)
    ));
}

#[test]
fn models_of_a_pool_without_inference_models_are_its_endpoints_base_models() {
    let objects = OBJECTS.replace(
        "kind: InferenceModel\nmetadata: {name: travel-helper}",
        "kind: InferenceModel\nmetadata: {name: travel-helper, namespace: elsewhere}",
    );
    let objects = objects.replace(
        "kind: InferenceModel\nmetadata: {name: batch}",
        "kind: InferenceModel\nmetadata: {name: batch, namespace: elsewhere}",
    );
    let (snapshot, _) = snapshot_of(&objects);
    let mut request = Request::post(8081, "/v1/models");
    request.method = Method::GET;
    request.has_body = false;
    assert_eq!(
        listed(&route(&snapshot, &request.head(), None)),
        [],
        "nothing is known before the first scrape"
    );
    let pool = snapshot
        .pools
        .values()
        .find(|p| p.name == "default/qwen-pool");
    for (index, endpoint) in pool.unwrap().endpoints.iter().enumerate() {
        endpoint.publish_metrics(ScrapedMetrics {
            metrics: EndpointMetrics {
                model_name: Some(
                    if index == 0 {
                        "/model/other"
                    } else {
                        "/model/qwen"
                    }
                    .into(),
                ),
                ..Default::default()
            },
            at: Instant::now(),
        });
    }
    let pool = "default/qwen-pool".to_owned();
    assert_eq!(
        listed(&route(&snapshot, &request.head(), None)),
        [
            ("/model/other".into(), pool.clone()),
            ("/model/qwen".into(), pool)
        ]
    );
}
