//! Status computation from YAML objects through the real snapshot build: the reasons that the
//! end-to-end test in `gateway/tests/kube.rs` does not reach.

use plugins::Registry;
use serde_json::Value;

use super::*;
use crate::snapshot::build::tests::{CONTROLLER, build_yaml, build_yaml_with};

const BASE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ours}
spec: {controllerName: inference-gateway.dev/controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: theirs}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: ours
  listeners:
  - {name: a, protocol: HTTP, port: 8080}
  - {name: b, protocol: HTTP, port: 8080}
  - {name: c, protocol: HTTP, port: 9000, allowedRoutes: {namespaces: {from: Same}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other}
spec:
  gatewayClassName: theirs
  listeners: [{name: a, protocol: HTTP, port: 7000}]
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool, namespace: team}
spec:
  selector: {matchLabels: {app: q}}
  targetPorts: [{number: 8000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: team}
spec:
  parentRefs: [{name: gw, namespace: default, sectionName: c}]
  rules:
  - backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: pool}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: half}
spec:
  parentRefs: [{name: gw, sectionName: a}, {name: other}]
  rules:
  - matches: [{path: {type: PathPrefix, value: 'no-slash'}}]
    backendRefs: [{kind: Service, name: s, port: 80}]
  - backendRefs: [{kind: Service, name: s, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {selector: {app: q}, ports: [{port: 80}]}
";

fn compute_yaml(yaml: &str, bound: &[u16], service: Option<&ObjectKey>) -> Vec<StatusUpdate> {
    let (objects, snapshot, issues) = build_yaml_with(yaml, &Registry::with_builtins());
    let cx = StatusContext {
        controller_name: CONTROLLER,
        bound_ports: bound,
        gateway_service: service,
        now: crate::kubernetes::conditions::now(),
    };
    compute(&objects, &snapshot, &issues, &cx)
}

fn find<'a>(updates: &'a [StatusUpdate], kind: StatusKind, name: &str) -> &'a Value {
    &updates
        .iter()
        .find(|u| u.kind == kind && u.name == name)
        .unwrap_or_else(|| panic!("no status for {kind:?} {name}: {updates:#?}"))
        .patch
}

fn state(conditions: &Value, type_: &str) -> (String, String) {
    let c = conditions
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {conditions:#}"));
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.into(), reason.into())
}

#[test]
fn only_our_classes_and_gateways_get_status() {
    let updates = compute_yaml(BASE, &[8080, 9000], None);
    assert!(
        updates
            .iter()
            .all(|u| !(u.name == "theirs" || u.name == "other"))
    );
    let class = find(&updates, StatusKind::GatewayClass, "ours");
    assert_eq!(
        state(&class["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
}

#[test]
fn conflicting_listeners_and_unbound_ports_are_reported() {
    let updates = compute_yaml(BASE, &[8080], None);
    let gw = find(&updates, StatusKind::Gateway, "gw");
    let listener = |name: &str| {
        gw["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()
            .clone()
    };
    let b = listener("b");
    assert_eq!(
        state(&b["conditions"], "Conflicted"),
        pair("True", "HostnameConflict")
    );
    assert_eq!(
        state(&b["conditions"], "Accepted"),
        pair("False", "PortUnavailable")
    );
    let c = listener("c");
    assert_eq!(
        state(&c["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        state(&c["conditions"], "Programmed"),
        pair("False", "Pending"),
        "port 9000 is not bound by this process"
    );
    assert!(
        gw.get("addresses").is_none(),
        "addresses are left alone without --kube-gateway-service"
    );
}

#[test]
fn routes_refused_by_namespace_make_their_pool_not_accepted() {
    let updates = compute_yaml(BASE, &[8080, 9000], None);
    let route = find(&updates, StatusKind::HttpRoute, "cross");
    let parent = &route["parents"][0];
    assert_eq!(
        state(&parent["conditions"], "Accepted"),
        pair("False", "NotAllowedByListeners")
    );
    let pool = find(&updates, StatusKind::PoolV1, "pool");
    let parent = &pool["parents"][0];
    assert_eq!(parent["parentRef"]["namespace"], "default");
    assert_eq!(
        state(&parent["conditions"], "Accepted"),
        pair("False", "HTTPRouteNotAccepted")
    );
    assert_eq!(
        state(&parent["conditions"], "ResolvedRefs"),
        pair("True", "ResolvedRefs"),
        "a v1 pool without endpointPickerRef is fine"
    );
}

#[test]
fn a_route_with_some_invalid_rules_is_partially_invalid_and_other_parents_are_not_ours() {
    let updates = compute_yaml(BASE, &[8080, 9000], None);
    let route = find(&updates, StatusKind::HttpRoute, "half");
    let parents = route["parents"].as_array().unwrap();
    assert_eq!(
        parents.len(),
        1,
        "the parent `other` belongs to another controller"
    );
    let conditions = &parents[0]["conditions"];
    assert_eq!(state(conditions, "Accepted"), pair("True", "Accepted"));
    assert_eq!(
        state(conditions, "PartiallyInvalid"),
        pair("True", "UnsupportedValue")
    );
    assert_eq!(
        state(conditions, "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );
}

#[test]
fn a_load_balancer_without_an_address_is_address_not_assigned() {
    let yaml = format!(
        "{BASE}---
apiVersion: v1
kind: Service
metadata: {{name: lb, namespace: infra}}
spec: {{type: LoadBalancer, ports: [{{port: 8080}}]}}
"
    );
    let key = ObjectKey::new(Kind::Service, "infra", "lb");
    let updates = compute_yaml(&yaml, &[8080, 9000], Some(&key));
    let gw = find(&updates, StatusKind::Gateway, "gw");
    assert_eq!(
        state(&gw["conditions"], "Programmed"),
        pair("False", "AddressNotAssigned")
    );
    assert_eq!(gw["addresses"], serde_json::json!([]));
}

#[test]
fn recomputing_an_unchanged_status_changes_nothing() {
    let updates = compute_yaml(BASE, &[8080, 9000], None);
    let route = find(&updates, StatusKind::HttpRoute, "half").clone();
    // Store the computed status, compute again later: identical, transition times included.
    let yaml = BASE.replace(
        "metadata: {name: half}",
        &format!(
            "metadata: {{name: half}}\nstatus: {}",
            serde_json::to_string(&route).unwrap()
        ),
    );
    let again = compute_yaml(&yaml, &[8080, 9000], None);
    assert_eq!(find(&again, StatusKind::HttpRoute, "half"), &route);
}

/// Where a condition is: the object's own conditions, a Gateway listener's, or an HTTPRoute's
/// `n`th parent entry's.
enum Place {
    Object,
    Listener(&'static str),
    Parent(usize),
}

/// Where the status shows `reason`: the object, the place, the condition type and the
/// condition's `(status, reason)`, for the build's `GATEWAY` and `EVERY_REASON` fixtures.
/// Exhaustive, so a new reason needs a case here.
fn shown_at(
    reason: IssueReason,
) -> (
    StatusKind,
    &'static str,
    Place,
    &'static str,
    (String, String),
) {
    use IssueReason::*;
    use StatusKind::{Gateway, HttpRoute, InferenceModel};
    match reason {
        NoMatchingParent => (
            HttpRoute,
            "r",
            Place::Parent(1),
            "Accepted",
            pair("False", "NoMatchingParent"),
        ),
        NotAllowedByListeners => (
            HttpRoute,
            "cross",
            Place::Parent(0),
            "Accepted",
            pair("False", "NotAllowedByListeners"),
        ),
        HostnameConflict => (
            Gateway,
            "gw3",
            Place::Listener("b"),
            "Conflicted",
            pair("True", "HostnameConflict"),
        ),
        UnsupportedProtocol => (
            Gateway,
            "tlsonly",
            Place::Listener("tls"),
            "Accepted",
            pair("False", "UnsupportedProtocol"),
        ),
        InvalidRouteKinds => (
            Gateway,
            "gw3",
            Place::Listener("k"),
            "ResolvedRefs",
            pair("False", "InvalidRouteKinds"),
        ),
        RefNotPermitted => (
            HttpRoute,
            "foreign",
            Place::Parent(0),
            "ResolvedRefs",
            pair("False", "RefNotPermitted"),
        ),
        InvalidKind => (
            HttpRoute,
            "odd",
            Place::Parent(0),
            "ResolvedRefs",
            pair("False", "InvalidKind"),
        ),
        BackendNotFound => (
            HttpRoute,
            "r",
            Place::Parent(0),
            "ResolvedRefs",
            pair("False", "BackendNotFound"),
        ),
        ModelNameInUse => (
            InferenceModel,
            "newer",
            Place::Object,
            "Accepted",
            pair("False", "ModelNameInUse"),
        ),
    }
}

#[test]
fn every_reason_the_build_emits_reaches_its_condition() {
    use crate::snapshot::build::tests::{EVERY_REASON, GATEWAY};
    let yaml = format!("{GATEWAY}{EVERY_REASON}");
    let (_, issues) = build_yaml(&yaml);
    let updates = compute_yaml(&yaml, &[8080, 8081, 9000, 9001], None);
    for reason in IssueReason::ALL {
        assert!(
            issues.iter().any(|i| i.reason == Some(reason)),
            "the build does not emit {reason:?}: {issues:#?}"
        );
        let (kind, name, place, type_, expected) = shown_at(reason);
        let status = find(&updates, kind, name);
        let conditions = match place {
            Place::Object => &status["conditions"],
            Place::Listener(listener) => &status["listeners"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["name"] == listener)
                .unwrap()["conditions"],
            Place::Parent(n) => &status["parents"][n]["conditions"],
        };
        assert_eq!(state(conditions, type_), expected, "{reason:?}");
        assert_eq!(expected.1, reason.as_str());
    }
}

#[test]
fn every_update_carries_the_resource_version_it_was_computed_from() {
    // Each object's resourceVersion is its name here.
    let yaml: String = BASE
        .lines()
        .map(|line| match line.strip_prefix("metadata: {name: ") {
            Some(rest) => {
                let name = rest.split([',', '}']).next().unwrap();
                format!("metadata: {{resourceVersion: '{name}', name: {rest}\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    let updates = compute_yaml(&yaml, &[8080, 9000], None);
    for kind in [
        StatusKind::GatewayClass,
        StatusKind::Gateway,
        StatusKind::HttpRoute,
        StatusKind::PoolV1,
    ] {
        assert!(updates.iter().any(|u| u.kind == kind), "{kind:?}");
    }
    for update in &updates {
        assert_eq!(
            update.resource_version.as_deref(),
            Some(update.name.as_str()),
            "{}",
            update.object()
        );
    }
}
