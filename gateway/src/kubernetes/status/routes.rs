//! Status of HTTPRoutes: one `parents[]` entry per parentRef to a Gateway of ours, other
//! controllers' entries kept.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{
    GATEWAY_GROUP, INFERENCE_GROUPS, Issues, StatusContext, StatusKind, StatusUpdate,
    existing_conditions, messages, status_json,
};
use crate::config::{ConfigIssue, IssueReason, Kind, ObjectKey, Severity, Subject};
use crate::kubernetes::conditions::{Desired, conditions};

/// The route's status (when it names one of our Gateways or carries our old entries), the
/// Gateways that accepted it, and every Gateway of ours it names with whether it was accepted.
pub(super) fn route_status(
    route: &gateway_api::httproutes::HttpRoute,
    key: &ObjectKey,
    ours: &BTreeSet<&ObjectKey>,
    issues: &Issues<'_>,
    cx: &StatusContext<'_>,
) -> (
    Option<StatusUpdate>,
    BTreeSet<ObjectKey>,
    Vec<(ObjectKey, bool)>,
) {
    let route_issues = issues.of(key);
    let status = status_json(route.status.as_ref());
    let existing_parents: Vec<Value> = status
        .as_ref()
        .and_then(|s| s.get("parents"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rules = route.spec.rules.as_ref().map_or(1, |r| r.len().max(1));
    // Rules the build dropped (errors) or serves only with 500 (unsupported filters).
    let mut invalid_rules = BTreeSet::new();
    let mut invalid: Vec<&ConfigIssue> = Vec::new();
    let mut unresolved: Vec<&ConfigIssue> = Vec::new();
    for issue in route_issues.iter().copied() {
        let Some(rule) = issue.subject.rule() else {
            continue;
        };
        if issue.severity == Severity::Error || issue.subject == Subject::RuleFilters(rule) {
            invalid_rules.insert(rule);
            invalid.push(issue);
        } else if matches!(issue.subject, Subject::BackendRef { .. }) {
            unresolved.push(issue);
        }
    }
    let mut parents = Vec::new();
    let mut accepted = BTreeSet::new();
    let mut referenced = Vec::new();
    for (i, parent) in route.spec.parent_refs.iter().flatten().enumerate() {
        let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        if group != GATEWAY_GROUP || kind != "Gateway" {
            continue;
        }
        let namespace = parent
            .namespace
            .clone()
            .unwrap_or_else(|| key.namespace.clone());
        let gateway = ObjectKey::new(Kind::Gateway, namespace, parent.name.clone());
        if !ours.contains(&gateway) {
            continue;
        }
        let refused: Vec<&ConfigIssue> = route_issues
            .iter()
            .copied()
            .filter(|issue| issue.subject == Subject::ParentRef(i))
            .collect();
        let mut desired = Vec::new();
        let is_accepted = if let Some(issue) = refused.first() {
            let reason = match issue.reason {
                Some(reason @ IssueReason::NoMatchingParent) => reason,
                _ => IssueReason::NotAllowedByListeners,
            };
            desired.push(Desired::fail(
                "Accepted",
                reason.as_str(),
                messages(&refused),
            ));
            false
        } else if invalid_rules.len() >= rules {
            desired.push(Desired::fail(
                "Accepted",
                "UnsupportedValue",
                messages(&invalid),
            ));
            false
        } else {
            desired.push(Desired::ok("Accepted", "Accepted", "Route is accepted"));
            true
        };
        desired.push(match unresolved.first() {
            None => Desired::ok("ResolvedRefs", "ResolvedRefs", "All references resolved"),
            Some(first) => Desired::fail(
                "ResolvedRefs",
                unresolved_reason(first).as_str(),
                messages(&unresolved),
            ),
        });
        if is_accepted && !invalid_rules.is_empty() {
            desired.push(Desired::ok(
                "PartiallyInvalid",
                "UnsupportedValue",
                messages(&invalid),
            ));
        }
        let mut parent_ref = serde_json::to_value(parent).unwrap_or(Value::Null);
        if let Some(map) = parent_ref.as_object_mut() {
            map.entry("group").or_insert(json!(GATEWAY_GROUP));
            map.entry("kind").or_insert(json!("Gateway"));
        }
        let existing = existing_parents
            .iter()
            .find(|p| {
                p.get("controllerName").and_then(Value::as_str) == Some(cx.controller_name)
                    && p.get("parentRef") == Some(&parent_ref)
            })
            .map(|p| existing_conditions(Some(p), &["conditions"]))
            .unwrap_or_default();
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": cx.controller_name,
            "conditions": conditions(desired, &existing, route.metadata.generation, &cx.now),
        }));
        if is_accepted {
            accepted.insert(gateway.clone());
        }
        referenced.push((gateway, is_accepted));
    }
    let others: Vec<Value> = existing_parents
        .iter()
        .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(cx.controller_name))
        .cloned()
        .collect();
    let had_ours = others.len() != existing_parents.len();
    if parents.is_empty() && !had_ours {
        return (None, accepted, referenced);
    }
    let mut all = others;
    all.extend(parents);
    let update = StatusUpdate {
        kind: StatusKind::HttpRoute,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        patch: json!({"parents": all}),
    };
    (Some(update), accepted, referenced)
}

/// The `ResolvedRefs` reason of an unresolved backendRef; one the specification has no name for
/// (an invalid pool, a Service without the port) is reported as not found.
fn unresolved_reason(issue: &ConfigIssue) -> IssueReason {
    match issue.reason {
        Some(
            reason @ (IssueReason::RefNotPermitted
            | IssueReason::InvalidKind
            | IssueReason::BackendNotFound),
        ) => reason,
        _ => IssueReason::BackendNotFound,
    }
}

/// The pools a route's backendRefs name.
pub(super) fn route_pools(
    route: &gateway_api::httproutes::HttpRoute,
    key: &ObjectKey,
) -> Vec<ObjectKey> {
    let mut pools = Vec::new();
    for rule in route.spec.rules.iter().flatten() {
        for backend in rule.backend_refs.iter().flatten() {
            let group = backend.group.as_deref().unwrap_or("");
            if backend.kind.as_deref() == Some("InferencePool") && INFERENCE_GROUPS.contains(&group)
            {
                let namespace = backend
                    .namespace
                    .clone()
                    .unwrap_or_else(|| key.namespace.clone());
                pools.push(ObjectKey::new(
                    Kind::InferencePool,
                    namespace,
                    backend.name.clone(),
                ));
            }
        }
    }
    pools.sort();
    pools.dedup();
    pools
}
