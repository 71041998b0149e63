//! Status of HTTPRoutes: one `parents[]` entry per parentRef to a Gateway of ours, other
//! controllers' entries kept.
//!
//! Which parentRefs name our Gateways, and whether the route attached through each, is what the
//! build recorded ([`crate::snapshot::Snapshot::route_parents`]); this module does not resolve
//! parentRefs again. The route's issues say which rules are invalid and which backendRefs are
//! unresolved.

use std::collections::BTreeSet;

use gateway_api::httproutes::{HttpRoute, HttpRouteParentRefs};
use serde_json::{Value, json};

use super::{
    GATEWAY_GROUP, INFERENCE_GROUPS, Issues, StatusContext, StatusKind, StatusUpdate,
    existing_conditions, messages, status_json,
};
use crate::config::{ConfigIssue, IssueReason, Kind, ObjectKey, Severity, Subject};
use crate::kubernetes::conditions::{Desired, conditions};
use crate::snapshot::{Attachment, RouteParent};

/// The route's status (when it names one of our Gateways or carries our old entries), and every
/// Gateway of ours it names with whether that Gateway accepted it. `parents` is what the build
/// made of the route's parentRefs.
pub(super) fn route_status(
    route: &HttpRoute,
    key: &ObjectKey,
    parents: &[RouteParent],
    issues: &Issues<'_>,
    cx: &StatusContext<'_>,
) -> (Option<StatusUpdate>, Vec<(ObjectKey, bool)>) {
    let route_issues = issues.of(key);
    let rules = RuleIssues::new(route, route_issues);
    let status = status_json(route.status.as_ref());
    let existing_parents: Vec<Value> = status
        .as_ref()
        .and_then(|s| s.get("parents"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut entries = Vec::new();
    let mut referenced = Vec::new();
    for parent in parents.iter().filter(|p| p.attachment.is_ours()) {
        let Some(parent_ref) = route.spec.parent_refs.iter().flatten().nth(parent.index) else {
            continue;
        };
        let refused: Vec<&ConfigIssue> = route_issues
            .iter()
            .copied()
            .filter(|issue| issue.subject == Subject::ParentRef(parent.index))
            .collect();
        let (desired, is_accepted) = rules.conditions(parent.attachment, &refused);
        let parent_ref = parent_ref_json(parent_ref);
        let existing = existing_parents
            .iter()
            .find(|p| {
                p.get("controllerName").and_then(Value::as_str) == Some(cx.controller_name)
                    && p.get("parentRef") == Some(&parent_ref)
            })
            .map(|p| existing_conditions(Some(p), &["conditions"]))
            .unwrap_or_default();
        entries.push(json!({
            "parentRef": parent_ref,
            "controllerName": cx.controller_name,
            "conditions": conditions(desired, &existing, route.metadata.generation, &cx.now),
        }));
        referenced.push((parent.gateway.clone(), is_accepted));
    }
    let others: Vec<Value> = existing_parents
        .iter()
        .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(cx.controller_name))
        .cloned()
        .collect();
    let had_ours = others.len() != existing_parents.len();
    if entries.is_empty() && !had_ours {
        return (None, referenced);
    }
    let mut all = others;
    all.extend(entries);
    let update = StatusUpdate {
        kind: StatusKind::HttpRoute,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        patch: json!({"parents": all}),
        resource_version: route.metadata.resource_version.clone(),
    };
    (Some(update), referenced)
}

/// A parentRef as the status names it: group and kind spelled out.
fn parent_ref_json(parent: &HttpRouteParentRefs) -> Value {
    let mut parent_ref = serde_json::to_value(parent).unwrap_or(Value::Null);
    if let Some(map) = parent_ref.as_object_mut() {
        map.entry("group").or_insert(json!(GATEWAY_GROUP));
        map.entry("kind").or_insert(json!("Gateway"));
    }
    parent_ref
}

/// What a route's issues say about its rules.
struct RuleIssues<'a> {
    /// How many rules the route has (a route without rules has one implicit rule).
    rules: usize,
    /// Rules the build dropped (errors) or serves only with 500 (unsupported filters).
    invalid_rules: BTreeSet<usize>,
    /// The issues that make those rules invalid.
    invalid: Vec<&'a ConfigIssue>,
    /// backendRefs that cannot be resolved.
    unresolved: Vec<&'a ConfigIssue>,
}

impl<'a> RuleIssues<'a> {
    fn new(route: &HttpRoute, route_issues: &[&'a ConfigIssue]) -> Self {
        let mut rules = RuleIssues {
            rules: route.spec.rules.as_ref().map_or(1, |r| r.len().max(1)),
            invalid_rules: BTreeSet::new(),
            invalid: Vec::new(),
            unresolved: Vec::new(),
        };
        for issue in route_issues.iter().copied() {
            let Some(rule) = issue.subject.rule() else {
                continue;
            };
            if issue.severity == Severity::Error || issue.subject == Subject::RuleFilters(rule) {
                rules.invalid_rules.insert(rule);
                rules.invalid.push(issue);
            } else if matches!(issue.subject, Subject::BackendRef { .. }) {
                rules.unresolved.push(issue);
            }
        }
        rules
    }

    /// The conditions of one parent entry, and whether the route is accepted there. `refused`
    /// are the issues about the parentRef.
    fn conditions(&self, attachment: Attachment, refused: &[&ConfigIssue]) -> (Vec<Desired>, bool) {
        let mut desired = Vec::new();
        let is_accepted = if let Attachment::Refused(reason) = attachment {
            desired.push(Desired::fail(
                "Accepted",
                reason.as_str(),
                messages(refused),
            ));
            false
        } else if self.invalid_rules.len() >= self.rules {
            desired.push(Desired::fail(
                "Accepted",
                "UnsupportedValue",
                messages(&self.invalid),
            ));
            false
        } else {
            desired.push(Desired::ok("Accepted", "Accepted", "Route is accepted"));
            true
        };
        desired.push(match self.unresolved.first() {
            None => Desired::ok("ResolvedRefs", "ResolvedRefs", "All references resolved"),
            Some(first) => Desired::fail(
                "ResolvedRefs",
                unresolved_reason(first).as_str(),
                messages(&self.unresolved),
            ),
        });
        if is_accepted && !self.invalid_rules.is_empty() {
            desired.push(Desired::ok(
                "PartiallyInvalid",
                "UnsupportedValue",
                messages(&self.invalid),
            ));
        }
        (desired, is_accepted)
    }
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
pub(super) fn route_pools(route: &HttpRoute, key: &ObjectKey) -> Vec<ObjectKey> {
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
