//! The decision with the current Inference Extension kinds: InferenceModelRewrite precedence and
//! weights, InferenceObjective priorities (and criticality mapped onto them), both API groups,
//! and what `/v1/models` lists. Same harness as `tests.rs`: the real build, no network.

use http::Method;

use super::tests::{OBJECTS, Request, decide_fully, error_of, fresh_metrics, listed, snapshot_of};
use super::*;
use crate::config::issues::has_errors;
use crate::proxy::error::ClientError;

/// Rewrites and objectives for `qwen-pool` (which also has the InferenceModels `travel-helper`,
/// with a target, and `batch`, Sheddable). `old` is the oldest rewrite; `young` matches some of
/// the same names and must lose to it; `generic` catches everything else.
const APIX: &str = r#"
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceModelRewrite
metadata: {name: young, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  poolRef: {name: qwen-pool}
  rules:
  - matches: [{model: {value: alias}}, {model: {type: Exact, value: canary}}]
    targets: [{modelRewrite: young-alias}]
  - targets: [{modelRewrite: young-generic}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: old, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  poolRef: {group: inference.networking.x-k8s.io, name: qwen-pool}
  rules:
  - matches: [{model: {value: canary}}]
    targets: [{modelRewrite: canary-v1, weight: 90}, {modelRewrite: canary-v2, weight: 10}]
  - matches: [{model: {value: canary}}, {model: {value: batch}}]
    targets: [{modelRewrite: second-rule}]
  - matches: []
    targets: [{modelRewrite: old-generic}]
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: interactive}
spec: {priority: 10, poolRef: {name: qwen-pool}}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: batch-jobs}
spec: {priority: -5, poolRef: {name: qwen-pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: default-objective}
spec: {poolRef: {name: qwen-pool}}
"#;

fn apix_snapshot() -> Snapshot {
    let (snapshot, issues) = snapshot_of(&format!("{OBJECTS}{APIX}"));
    assert!(!has_errors(&issues), "{issues:#?}");
    snapshot
}

/// The target model and the body sent for `body` on the inference listener, with `objective`.
fn sent(snapshot: &Snapshot, body: &str, objective: Option<&str>) -> (InferenceInfo, String) {
    let mut request = Request::post(8081, "/v1/completions");
    request.hints.objective = objective.map(str::to_owned);
    let decision = decide_fully(snapshot, &request, body);
    let Step::Forward(forward) = &decision.step else {
        panic!("expected a forward for {body}, got {:?}", decision.step);
    };
    let body = String::from_utf8(forward.body.to_vec()).unwrap();
    (decision.inference.expect("inference info"), body)
}

fn target(snapshot: &Snapshot, model: &str) -> String {
    sent(snapshot, &format!(r#"{{"model":"{model}"}}"#), None)
        .0
        .target_model
}

#[test]
fn an_exact_match_beats_a_generic_rule_then_the_oldest_object_then_the_first_rule() {
    let snapshot = apix_snapshot();
    fresh_metrics(&snapshot, 0);
    // Only `young` matches `alias` exactly: its exact rule beats `old`'s older generic rule.
    assert_eq!(target(&snapshot, "alias"), "young-alias");
    // Both match `canary` exactly: the older object wins, and in it the first rule.
    for _ in 0..50 {
        assert!(target(&snapshot, "canary").starts_with("canary-v"));
    }
    // `batch` is matched by `old`'s second rule, which beats the InferenceModel (no targets).
    assert_eq!(target(&snapshot, "batch"), "second-rule");
    // Everything else takes the oldest generic rule, declared model or not.
    assert_eq!(target(&snapshot, "travel-helper"), "old-generic");
    assert_eq!(target(&snapshot, "not-declared-anywhere"), "old-generic");
}

#[test]
fn rewrite_weights_hold_over_ten_thousand_draws() {
    let snapshot = apix_snapshot();
    fresh_metrics(&snapshot, 0);
    let n = 10_000;
    let v2 = (0..n)
        .filter(|_| target(&snapshot, "canary") == "canary-v2")
        .count();
    let share = v2 as f64 / n as f64;
    // 10% expected; the share's standard deviation is 0.3%, so 2 points is more than 6 sigma.
    assert!((share - 0.10).abs() < 0.02, "canary-v2 share {share}");
}

#[test]
fn a_request_without_a_model_gets_the_generic_rules_model_or_400() {
    let snapshot = apix_snapshot();
    fresh_metrics(&snapshot, 0);
    let (info, body) = sent(&snapshot, r#"{"prompt":"hello"}"#, None);
    assert_eq!(info.target_model, "old-generic");
    assert_eq!(body, r#"{"model":"old-generic","prompt":"hello"}"#);
    assert_eq!(info.labels(503), ("unknown", "old-generic"));

    // Without rewrites, the model is required.
    let (plain, _) = snapshot_of(OBJECTS);
    let request = Request::post(8081, "/v1/completions");
    let decision = decide_fully(&plain, &request, r#"{"prompt":"hello"}"#);
    let error = error_of(&decision);
    assert!(
        matches!(error, ClientError::InvalidBody(bad) if bad.param.as_deref() == Some("model")),
        "{error:?}"
    );
    assert_eq!(error.status(), 400);
    // An undeclared model is 404 there, and passes with a generic rule (above).
    let decision = decide_fully(&plain, &request, r#"{"model":"not-declared-anywhere"}"#);
    assert_eq!(error_of(&decision).status(), 404);
}

#[test]
fn configured_rewrites_win_over_the_clients_rewrite_header() {
    let snapshot = apix_snapshot();
    fresh_metrics(&snapshot, 0);
    let mut request = Request::post(8081, "/v1/completions");
    request.hints.model_rewrite = Some("client-choice".into());
    let decision = decide_fully(&snapshot, &request, r#"{"model":"alias"}"#);
    let info = decision.inference.unwrap();
    assert_eq!(
        (info.target_model.as_str(), info.client_rewrite),
        ("young-alias", false)
    );
    // A declared source and a configured target are safe labels before any answer.
    assert_eq!(info.labels(503), ("alias", "young-alias"));
}

#[test]
fn priority_comes_from_the_objective_else_the_criticality_else_zero() {
    let snapshot = apix_snapshot();
    fresh_metrics(&snapshot, 0);
    let priority = |model: &str, objective: Option<&str>| {
        let (info, _) = sent(&snapshot, &format!(r#"{{"model":"{model}"}}"#), objective);
        (info.priority, info.objective)
    };
    assert_eq!(
        priority("travel-helper", Some("interactive")),
        (10, Some("interactive".into()))
    );
    assert_eq!(priority("travel-helper", Some("batch-jobs")).0, -5);
    assert_eq!(priority("travel-helper", Some("default-objective")).0, 0);
    // An objective the pool does not have is ignored: the InferenceModel's criticality decides.
    assert_eq!(priority("batch", Some("no-such-objective")), (-1, None));
    assert_eq!(priority("travel-helper", None), (0, None));
    assert_eq!(priority("batch", Some("interactive")).0, 10);
}

#[test]
fn negative_priorities_are_shed_while_saturated_and_an_objective_can_lift_a_sheddable_model() {
    let snapshot = apix_snapshot();
    fresh_metrics(&snapshot, 50);
    let decide = |model: &str, objective: Option<&str>| {
        let mut request = Request::post(8081, "/v1/completions");
        request.hints.objective = objective.map(str::to_owned);
        decide_fully(&snapshot, &request, &format!(r#"{{"model":"{model}"}}"#))
    };
    let shed = decide("travel-helper", Some("batch-jobs"));
    assert_eq!(error_of(&shed).status(), 429);
    assert_eq!(
        error_of(&decide("batch", None)).status(),
        429,
        "Sheddable is priority -1"
    );
    // Priorities of 0 and above are not shed: they wait in the pool's queue with theirs.
    assert!(matches!(
        decide("batch", Some("interactive")).step,
        Step::Queue(w) if w.info.priority == 10
    ));
    assert!(matches!(
        decide("travel-helper", None).step,
        Step::Queue(w) if w.info.priority == 0
    ));
}

/// Where a request for `travel-helper` with `objective` goes.
fn travel_helper_step(snapshot: &Snapshot, objective: Option<&str>) -> Step {
    let mut request = Request::post(8081, "/v1/completions");
    request.hints.objective = objective.map(str::to_owned);
    decide_fully(
        snapshot,
        &request,
        r#"{"model":"travel-helper","prompt":"x"}"#,
    )
    .step
}

#[test]
fn a_lower_priority_keeps_headroom_while_a_higher_one_is_active() {
    let snapshot = apix_snapshot();
    // KV 0.75 on every endpoint: under the KV threshold (0.8), over the one a lower priority sees
    // while a higher one is active (0.8 × 0.9 = 0.72).
    for pool in snapshot.pools.values() {
        for endpoint in &pool.endpoints {
            endpoint.publish_metrics(crate::snapshot::ScrapedMetrics {
                metrics: plugins::EndpointMetrics {
                    kv_usage: 0.75,
                    ..Default::default()
                },
                at: std::time::Instant::now(),
            });
        }
    }
    let decide = |objective: Option<&str>| travel_helper_step(&snapshot, objective);
    assert!(
        matches!(decide(None), Step::Forward(_)),
        "nothing of higher priority has been seen: the whole threshold"
    );
    assert!(matches!(decide(Some("interactive")), Step::Forward(_)));
    assert!(
        matches!(decide(None), Step::Queue(w) if w.info.priority == 0),
        "priority 0 leaves the rest to the active priority 10"
    );
    assert!(matches!(decide(Some("interactive")), Step::Forward(_)));
}

#[test]
fn a_lower_priority_is_held_back_by_the_growth_its_requests_will_take() {
    let snapshot = apix_snapshot();
    // Every endpoint half full now, with room for 16,000 tokens, and one request in flight past
    // its first token with `output` tokens still to come.
    let with_output_to_come = |output: u64| {
        let mut held = Vec::new();
        for pool in snapshot.pools.values() {
            for endpoint in &pool.endpoints {
                let mut guard = endpoint.dispatch(0, 0, output);
                guard.first_token();
                held.push(guard);
                endpoint.publish_metrics(crate::snapshot::ScrapedMetrics {
                    metrics: plugins::EndpointMetrics {
                        kv_usage: 0.5,
                        block_size: Some(16),
                        num_blocks: Some(1_000),
                        ..Default::default()
                    },
                    at: std::time::Instant::now(),
                });
            }
        }
        held
    };
    let decide = |objective: Option<&str>| travel_helper_step(&snapshot, objective);
    // 0.5 + 7,000 / 16,000 = 0.94 once grown: past the 0.9 a lower priority may fill.
    let held = with_output_to_come(7_000);
    assert!(
        matches!(decide(None), Step::Forward(_)),
        "alone, the current usage counts (0.5 of 0.8)"
    );
    assert!(matches!(decide(Some("interactive")), Step::Forward(_)));
    assert!(
        matches!(decide(None), Step::Queue(w) if w.info.priority == 0),
        "the growth to come leaves no room for priority 0 under the active priority 10"
    );
    drop(held);
    // 0.5 + 4,000 / 16,000 = 0.75: room for the lower priority too.
    let _held = with_output_to_come(4_000);
    assert!(matches!(decide(Some("interactive")), Step::Forward(_)));
    assert!(matches!(decide(None), Step::Forward(_)));
}

#[test]
fn the_llm_d_group_wins_over_the_older_group_for_the_same_name() {
    let shadowing = r#"
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: interactive}
spec: {priority: 99, poolRef: {name: qwen-pool}}
"#;
    let (snapshot, issues) = snapshot_of(&format!("{OBJECTS}{APIX}{shadowing}"));
    assert!(!has_errors(&issues), "{issues:#?}");
    let shadowed: Vec<_> = issues
        .iter()
        .filter(|i| i.object == "InferenceObjective default/interactive")
        .collect();
    assert_eq!(shadowed.len(), 1, "{issues:#?}");
    assert!(shadowed[0].message.contains("shadowed by the llm-d.ai"));
    fresh_metrics(&snapshot, 0);
    let (info, _) = sent(&snapshot, r#"{"model":"batch"}"#, Some("interactive"));
    assert_eq!(info.priority, 10);
}

#[test]
fn invalid_rewrites_and_objectives_name_the_field_and_are_left_out() {
    let invalid = r#"
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceModelRewrite
metadata: {name: bad}
spec:
  poolRef: {name: qwen-pool}
  rules:
  - matches: [{model: {type: Prefix, value: a}}]
    targets: [{modelRewrite: x, weight: 0}]
  - matches: [{model: {value: b}}]
    targets: [{modelRewrite: y, weight: 2}, {modelRewrite: z}]
  - matches: [{model: {value: c}}]
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: elsewhere}
spec: {poolRef: {kind: Service, name: qwen-pool}}
"#;
    let (snapshot, issues) = snapshot_of(&format!("{OBJECTS}{invalid}"));
    let fields: Vec<(&str, &str)> = issues
        .iter()
        .map(|i| (i.object.as_str(), i.field.as_str()))
        .collect();
    for expected in [
        (
            "InferenceModelRewrite default/bad",
            "spec.rules[0].matches[0].model.type",
        ),
        (
            "InferenceModelRewrite default/bad",
            "spec.rules[0].targets[0].weight",
        ),
        ("InferenceModelRewrite default/bad", "spec.rules[1].targets"),
        ("InferenceModelRewrite default/bad", "spec.rules[2].targets"),
        ("InferenceObjective default/elsewhere", "spec.poolRef.kind"),
    ] {
        assert!(
            fields.contains(&expected),
            "{expected:?} not in {fields:#?}"
        );
    }
    let pool = qwen_pool(&snapshot);
    assert!(pool.rewrites.is_empty() && pool.objectives.is_empty());
}

/// The pool `default/qwen-pool` of `snapshot`.
fn qwen_pool(snapshot: &Snapshot) -> &crate::snapshot::Pool {
    snapshot
        .pools
        .values()
        .find(|p| p.name == "default/qwen-pool")
        .expect("the qwen pool")
}

#[test]
fn an_objective_can_set_its_own_queue_ttl() {
    let objectives = r#"
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata:
  name: patient
  annotations: {flow-control.inference-gateway.dev/ttl-ms: "600000"}
spec: {priority: 1, poolRef: {name: qwen-pool}}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata:
  name: garbled
  annotations: {flow-control.inference-gateway.dev/ttl-ms: "10 minutes"}
spec: {priority: 1, poolRef: {name: qwen-pool}}
"#;
    let (snapshot, issues) = snapshot_of(&format!("{OBJECTS}{APIX}{objectives}"));
    let garbled: Vec<_> = issues
        .iter()
        .filter(|i| i.object == "InferenceObjective default/garbled")
        .map(|i| (i.field.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        garbled,
        [(
            "metadata.annotations[flow-control.inference-gateway.dev/ttl-ms]",
            "10 minutes"
        )]
    );
    let pool = qwen_pool(&snapshot);
    assert_eq!(
        pool.objectives["patient"].ttl,
        Some(std::time::Duration::from_secs(600))
    );
    assert_eq!(pool.objectives["interactive"].ttl, None);
    assert!(!pool.objectives.contains_key("garbled"), "left out whole");
}

#[test]
fn models_lists_rewrite_sources_beside_inference_model_names() {
    let snapshot = apix_snapshot();
    let mut request = Request::post(8081, "/v1/models");
    request.method = Method::GET;
    request.has_body = false;
    let names: Vec<String> = listed(&route(&snapshot, &request.head(), None))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(names, ["alias", "batch", "canary", "travel-helper"]);
}
