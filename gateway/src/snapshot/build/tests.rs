use std::sync::Arc;
use std::time::Duration;

use plugins::Registry;

use super::attach::hostnames_overlap;
use super::*;
use crate::config::{IssueReason, Kind, ObjectKey, Severity, Subject};
use crate::snapshot::{Attachment, Backend, RouteParent};

/// The controller name the test GatewayClasses name.
pub(crate) const CONTROLLER: &str = "inference-gateway.dev/controller";

/// Parse `yaml` as the file `t.yaml` (it must parse without a problem) and build it with
/// `registry`: the objects, the snapshot and the build's issues. Shared by the tests of the build,
/// the status computation and the proxy's decision step.
pub(crate) fn build_yaml_with(
    yaml: &str,
    registry: &Registry,
) -> (ObjectSet, Snapshot, Vec<ConfigIssue>) {
    let objects = objects_of(yaml);
    let (snapshot, issues) = build_with(&objects, registry);
    (objects, snapshot, issues)
}

/// The objects of `yaml`, parsed as the file `t.yaml`; it must parse without a problem.
fn objects_of(yaml: &str) -> ObjectSet {
    let mut objects = ObjectSet::default();
    let parse_issues = objects.add_yaml(yaml, std::path::Path::new("t.yaml"));
    assert!(parse_issues.is_empty(), "{parse_issues:?}");
    objects
}

fn build_with(objects: &ObjectSet, registry: &Registry) -> (Snapshot, Vec<ConfigIssue>) {
    let options = BuildOptions {
        controller_name: CONTROLLER,
        registry,
        default_request_timeout: Some(Duration::from_secs(3600)),
        picker: &epp::ClientSettings::default(),
        listeners_required: true,
    };
    build(objects, &options, None)
}

/// [`build_yaml_with`] the built-in strategies, without the objects.
pub(crate) fn build_yaml(yaml: &str) -> (Snapshot, Vec<ConfigIssue>) {
    let (_, snapshot, issues) = build_yaml_with(yaml, &Registry::with_builtins());
    (snapshot, issues)
}

/// Build `objects` with the built-in strategies.
fn build_objects(objects: &ObjectSet) -> (Snapshot, Vec<ConfigIssue>) {
    build_with(objects, &Registry::with_builtins())
}

/// Our Gateway with two listeners, two pods and a pool (documents 1 to 5 of `t.yaml`).
pub(crate) const GATEWAY: &str = "
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
  - {name: http, protocol: HTTP, port: 8080}
  - {name: llm, protocol: HTTP, port: 8081}
---
apiVersion: v1
kind: Pod
metadata: {name: p0, labels: {app: q}}
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, labels: {app: q}}
status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: 'False'}]}
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool}
spec:
  selector: {matchLabels: {app: q}}
  targetPorts: [{number: 8000}, {number: 8001}]
";

fn errors(issues: &[ConfigIssue]) -> Vec<&ConfigIssue> {
    issues
        .iter()
        .filter(|i| i.severity == Severity::Error)
        .collect()
}

#[test]
fn the_local_example_builds_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/local");
    let loaded = crate::config::load::load(&[dir]);
    assert!(loaded.issues.is_empty(), "{:?}", loaded.issues);
    assert_eq!(
        loaded.objects.ignored.len(),
        1,
        "only the Deployment is ignored"
    );
    let (snapshot, issues) = build_objects(&loaded.objects);
    assert!(issues.is_empty(), "{issues:#?}");
    assert_eq!(
        snapshot.ports.keys().copied().collect::<Vec<_>>(),
        vec![8080, 8081]
    );
    let service = snapshot.services.values().next().unwrap();
    assert_eq!(service.endpoints.len(), 5);
    let pool = snapshot.pools.values().next().unwrap();
    assert_eq!(pool.endpoints.len(), 5);
    assert_eq!(
        pool.endpoints[0].id.address(),
        "127.0.0.2:8000".parse().unwrap()
    );
    assert_eq!(pool.endpoints[0].id.name(), "default/qwen-0");
    assert_eq!(pool.resolution.implementation, "DEFAULT");
    let mut models: Vec<&str> = pool.models.keys().map(String::as_str).collect();
    models.sort_unstable();
    assert_eq!(models, vec!["/model/qwen", "travel-helper"]);
    assert_eq!(
        pool.models["/model/qwen"].criticality,
        plugins::Criticality::Critical
    );
    let llm = &snapshot.ports[&8081].listeners[0];
    assert_eq!(llm.name, "llm-gw");
    assert_eq!(
        llm.entries[0].action.timeout,
        Some(Duration::from_secs(3600))
    );
    assert!(matches!(
        llm.entries[0].action.backends[0].backend,
        Backend::Pool(_)
    ));
}

#[test]
fn pools_take_ready_pods_on_every_target_port() {
    let (snapshot, issues) = build_yaml(GATEWAY);
    assert!(errors(&issues).is_empty(), "{issues:?}");
    let pool = snapshot.pools.values().next().unwrap();
    let addresses: Vec<String> = pool
        .endpoints
        .iter()
        .map(|e| e.id.address().to_string())
        .collect();
    assert_eq!(addresses, vec!["10.0.0.1:8000", "10.0.0.1:8001"]);
    assert_eq!(pool.endpoints[1].id.name(), "default/p0:8001");
}

#[test]
fn unknown_strategies_are_errors_naming_the_annotation() {
    let yaml = GATEWAY.replace(
            "metadata: {name: pool}",
            "metadata: {name: pool, annotations: {inference.networking.x-k8s.io/routing-strategy: FASTEST}}",
        );
    let (_, issues) = build_yaml(&yaml);
    let errors = errors(&issues);
    assert_eq!(errors.len(), 1, "{issues:?}");
    assert_eq!(errors[0].object, "InferencePool default/pool");
    assert_eq!(
        errors[0].field,
        "metadata.annotations[inference.networking.x-k8s.io/routing-strategy]"
    );
    assert_eq!(errors[0].value, "FASTEST");
    assert!(errors[0].message.contains("unknown routing strategy"));
}

#[test]
fn routes_attach_by_section_name_and_missing_backends_get_500() {
    let yaml = format!(
        "{GATEWAY}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: gw, sectionName: llm}}, {{name: gw, sectionName: nope}}]
  rules:
  - backendRefs:
    - {{group: inference.networking.k8s.io, kind: InferencePool, name: pool, weight: 3}}
    - {{kind: Service, name: missing, port: 80}}
"
    );
    let (snapshot, issues) = build_yaml(&yaml);
    assert!(errors(&issues).is_empty(), "{issues:?}");
    let reasons: Vec<Option<IssueReason>> = issues.iter().map(|i| i.reason).collect();
    assert!(
        reasons.contains(&Some(IssueReason::NoMatchingParent)),
        "{issues:?}"
    );
    assert!(
        reasons.contains(&Some(IssueReason::BackendNotFound)),
        "{issues:?}"
    );
    assert!(snapshot.ports[&8080].listeners[0].entries.is_empty());
    let entry = &snapshot.ports[&8081].listeners[0].entries[0];
    assert_eq!(entry.action.total_weight, 4);
    assert!(matches!(
        entry.action.backends[1].backend,
        Backend::Invalid(_)
    ));
}

#[test]
fn field_errors_name_field_and_value() {
    let yaml = format!(
        "{GATEWAY}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: 'v1//x'}}}}]
    backendRefs: [{{kind: Service, name: s, port: 80, weight: -2}}]
  - backendRefs: [{{kind: Service, name: s}}]
    timeouts: {{request: 10 minutes}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: m}}
spec:
  modelName: llama
  criticality: Urgent
  poolRef: {{name: pool}}
  targetModels: [{{name: a, weight: 1}}, {{name: b}}]
"
    );
    let (_, issues) = build_yaml(&yaml);
    let mut found: Vec<(String, String)> = errors(&issues)
        .iter()
        .map(|i| (i.field.clone(), i.value.clone()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("spec.criticality".into(), "Urgent".into()),
            ("spec.rules[0].matches[0].path.value".into(), "v1//x".into()),
            ("spec.rules[1].timeouts.request".into(), "10 minutes".into()),
            ("spec.targetModels".into(), "1 of 2".into()),
        ],
        "{issues:#?}"
    );
}

#[test]
fn oldest_model_wins_a_duplicated_name() {
    let yaml = format!(
            "{GATEWAY}---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: newer, creationTimestamp: '2026-02-01T00:00:00Z'}}
spec: {{modelName: llama, poolRef: {{group: inference.networking.k8s.io, name: pool}}}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: older, creationTimestamp: '2026-01-01T00:00:00Z'}}
spec: {{modelName: llama, criticality: Schedulable, poolRef: {{group: inference.networking.k8s.io, name: pool}}}}
"
        );
    let (snapshot, issues) = build_yaml(&yaml);
    assert!(errors(&issues).is_empty());
    assert!(
        issues
            .iter()
            .any(|i| i.object == "InferenceModel default/newer"
                && i.reason == Some(IssueReason::ModelNameInUse))
    );
    let pool = snapshot.pools.values().next().unwrap();
    assert_eq!(pool.models["llama"].object.name, "older");
    assert_eq!(
        pool.models["llama"].criticality,
        plugins::Criticality::Sheddable
    );
}

#[test]
fn without_our_gateway_class_the_config_is_unusable() {
    let yaml = GATEWAY.replace(
        "inference-gateway.dev/controller",
        "gateway.envoyproxy.io/gatewayclass-controller",
    );
    let (_, issues) = build_yaml(&yaml);
    let errors = errors(&issues);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .message
            .contains("ours names \"gateway.envoyproxy.io/gatewayclass-controller\""),
        "{}",
        errors[0]
    );
}

#[test]
fn duplicates_are_errors_and_rebuilds_keep_endpoint_state() {
    let yaml = format!("{GATEWAY}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p0}}\n");
    let (_, issues) = build_yaml(&yaml);
    assert_eq!(
        errors(&issues)[0].message,
        "defined twice; first at t.yaml, document 3"
    );

    let mut objects = ObjectSet::default();
    objects.add_yaml(GATEWAY, std::path::Path::new("t.yaml"));
    let (first, _) = build_objects(&objects);
    let registry = Registry::with_builtins();
    let options = BuildOptions {
        controller_name: CONTROLLER,
        registry: &registry,
        default_request_timeout: None,
        picker: &epp::ClientSettings::default(),
        listeners_required: true,
    };
    let (second, _) = build(&objects, &options, Some(&first));
    let a = &first.pools.values().next().unwrap();
    let b = &second.pools.values().next().unwrap();
    assert!(Arc::ptr_eq(&a.endpoints[0], &b.endpoints[0]));
    assert!(Arc::ptr_eq(&a.strategy, &b.strategy));
}

#[test]
fn hostname_overlap() {
    assert!(hostnames_overlap("*.ex.com", "a.ex.com"));
    assert!(hostnames_overlap("a.ex.com", "*.ex.com"));
    assert!(!hostnames_overlap("ex.com", "*.ex.com"));
    assert!(hostnames_overlap("*.com", "*.ex.com"));
    assert!(!hostnames_overlap("a.ex.com", "b.ex.com"));
}

/// Objects after [`GATEWAY`] that make the build emit every [`IssueReason`] and every kind of
/// parentRef outcome (documents 6 to 15 of `t.yaml`). Each unresolved backendRef has a route of
/// its own, since a route's status names the reason of its first one.
pub(crate) const EVERY_REASON: &str = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: theirs}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other}
spec:
  gatewayClassName: theirs
  listeners: [{name: a, protocol: HTTP, port: 7000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tlsonly}
spec:
  gatewayClassName: ours
  listeners: [{name: tls, protocol: HTTPS, port: 8443}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw3}
spec:
  gatewayClassName: ours
  listeners:
  - {name: a, protocol: HTTP, port: 9000}
  - {name: b, protocol: HTTP, port: 9000}
  - {name: k, protocol: HTTP, port: 9001, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs:
  - {name: gw, sectionName: llm}
  - {name: gw, sectionName: nope}
  - {name: other}
  - {name: ghost}
  - {kind: Service, name: s}
  - {name: tlsonly}
  rules:
  - backendRefs:
    - {group: inference.networking.k8s.io, kind: InferencePool, name: pool}
    - {kind: Service, name: missing, port: 80}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: foreign}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - backendRefs: [{kind: Service, name: s, namespace: team, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: odd}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - backendRefs: [{group: example.com, kind: Thing, name: t}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: team}
spec:
  parentRefs: [{name: gw, namespace: default}]
  rules:
  - backendRefs: [{kind: Service, name: s, port: 80}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: newer, creationTimestamp: '2026-02-01T00:00:00Z'}
spec: {modelName: llama, poolRef: {group: inference.networking.k8s.io, name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: older, creationTimestamp: '2026-01-01T00:00:00Z'}
spec: {modelName: llama, poolRef: {group: inference.networking.k8s.io, name: pool}}
";

#[test]
fn issues_with_a_reason_print_as_they_always_have() {
    let (_, issues) = build_yaml(&format!("{GATEWAY}{EVERY_REASON}"));
    let printed: Vec<String> = issues
        .iter()
        .filter(|i| i.reason.is_some())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        printed,
        [
            "warning: InferenceModel default/newer (t.yaml, document 14): spec.modelName = \"llama\": ModelNameInUse: already served by the older InferenceModel default/older",
            "warning: Gateway default/tlsonly (t.yaml, document 8): spec.listeners[0].protocol = \"HTTPS\": UnsupportedProtocol: only HTTP listeners are served; this listener is skipped",
            "error: Gateway default/gw3 (t.yaml, document 9): spec.listeners[1].port = \"9000\": Conflicted: listener a of Gateway default/gw3 already serves this port and hostname",
            "warning: Gateway default/gw3 (t.yaml, document 9): spec.listeners[2].allowedRoutes.kinds: InvalidRouteKinds: HTTPRoute is not allowed, so no route attaches",
            "warning: HTTPRoute default/r (t.yaml, document 10): spec.parentRefs[1] = \"nope\": NoMatchingParent: Gateway default/gw has no such HTTP listener",
            "warning: HTTPRoute default/r (t.yaml, document 10): spec.rules[0].backendRefs[1].name = \"missing\": BackendNotFound: Service default/missing does not exist; its share of traffic gets 500",
            "warning: HTTPRoute default/foreign (t.yaml, document 11): spec.rules[0].backendRefs[0].name = \"s\": RefNotPermitted: a backend in namespace team needs a ReferenceGrant, which is not supported; its share of traffic gets 500",
            "warning: HTTPRoute default/odd (t.yaml, document 12): spec.rules[0].backendRefs[0].name = \"t\": InvalidKind: backend kind \"Thing\" in group \"example.com\" is not supported; its share of traffic gets 500",
            "warning: HTTPRoute team/cross (t.yaml, document 13): spec.parentRefs[0] = \"gw\": NotAllowedByListeners: no listener admits this route (allowedRoutes or hostnames)",
        ],
        "{issues:#?}"
    );
}

#[test]
fn unresolved_backends_answer_with_the_reason_they_print() {
    let (snapshot, _) = build_yaml(&format!("{GATEWAY}{EVERY_REASON}"));
    let invalid: Vec<(&str, &str)> = snapshot
        .ports
        .values()
        .flat_map(|port| &port.listeners)
        .flat_map(|listener| &listener.entries)
        .flat_map(|entry| entry.action.backends.iter().map(move |b| (entry, b)))
        .filter_map(|(entry, b)| match &b.backend {
            Backend::Invalid(reason) => Some((&*entry.route.name, &**reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        invalid,
        [
            (
                "foreign",
                "RefNotPermitted: a backend in namespace team needs a ReferenceGrant, which is not supported"
            ),
            (
                "odd",
                "InvalidKind: backend kind \"Thing\" in group \"example.com\" is not supported"
            ),
            (
                "r",
                "BackendNotFound: Service default/missing does not exist"
            ),
        ]
    );
}

#[test]
fn every_gateway_parent_ref_is_recorded_with_its_outcome() {
    let (snapshot, issues) = build_yaml(&format!("{GATEWAY}{EVERY_REASON}"));
    let gateway = |name: &str| ObjectKey::new(Kind::Gateway, "default", name);
    let parent = |index, name, attachment| RouteParent {
        index,
        gateway: gateway(name),
        attachment,
    };
    let route = ObjectKey::new(Kind::HttpRoute, "default", "r");
    assert_eq!(
        snapshot.route_parents[&route],
        [
            parent(0, "gw", Attachment::Attached),
            parent(1, "gw", Attachment::Refused(IssueReason::NoMatchingParent)),
            parent(2, "other", Attachment::NotOurs),
            parent(3, "ghost", Attachment::NotOurs),
            // parentRefs[4] names a Service: not recorded.
            parent(5, "tlsonly", Attachment::NoServedListener),
        ],
        "{issues:#?}"
    );
    let cross = ObjectKey::new(Kind::HttpRoute, "team", "cross");
    assert_eq!(
        snapshot.route_parents[&cross],
        [parent(
            0,
            "gw",
            Attachment::Refused(IssueReason::NotAllowedByListeners)
        )]
    );
    // Each refusal is reported about its parentRef.
    for (route, index) in [("HTTPRoute default/r", 1), ("HTTPRoute team/cross", 0)] {
        assert!(
            issues
                .iter()
                .any(|i| i.object == route && i.subject == Subject::ParentRef(index)),
            "{route}: {issues:#?}"
        );
    }
}
