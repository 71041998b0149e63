//! HTTPRoutes to listeners: each `parentRef` is resolved to the listeners of our Gateways it
//! names (`sectionName`, `port`), kept when the listener admits the route (`allowedRoutes`,
//! hostname intersection), and every rule of the route becomes route entries on those listeners.
//!
//! A refused parentRef is reported; it does not stop the route from attaching elsewhere.

use std::sync::Arc;

use gateway_api::httproutes::{HttpRoute, HttpRouteParentRefs, HttpRouteRules};

use super::actions::rule_action;
use super::index::{Index, Located};
use super::listeners::ListenerBuild;
use super::matches::rule_matches;
use super::{GATEWAY_GROUP, MODEL_NAME_HEADER};
use crate::config::{ConfigIssue, IssueReason, Kind, ObjectKey, Subject};
use crate::snapshot::routes::{RouteEntry, RouteMatch, hostname_matches};
use crate::snapshot::{RuleAction, Snapshot};

/// Attach `route` to the listeners its parentRefs admit it to.
pub(super) fn attach_route(
    route: &Located<'_, HttpRoute>,
    index: &Index<'_>,
    listeners: &mut [ListenerBuild],
    snapshot: &mut Snapshot,
    issues: &mut Vec<ConfigIssue>,
) {
    let hostnames = route.object.spec.hostnames.clone().unwrap_or_default();
    let mut targets: Vec<usize> = Vec::new();
    for (i, parent) in route.object.spec.parent_refs.iter().flatten().enumerate() {
        targets.extend(parent_listeners(
            route, i, parent, &hostnames, index, listeners, issues,
        ));
    }
    targets.sort_unstable();
    targets.dedup();
    if targets.is_empty() {
        return;
    }
    let rules = route
        .object
        .spec
        .rules
        .clone()
        .unwrap_or_else(|| vec![HttpRouteRules::default()]);
    for (rule_index, rule) in rules.iter().enumerate() {
        let Some(matchers) = rule_matches(rule.matches.as_deref(), route, rule_index, issues)
        else {
            continue;
        };
        let Some((action, explicit_timeout)) =
            rule_action(rule, rule_index, route, index, snapshot, issues)
        else {
            continue;
        };
        let rule = AttachedRule {
            route,
            index: rule_index,
            hostnames: &hostnames,
            on_model: matchers
                .iter()
                .any(|m| m.headers.iter().any(|(name, _)| name == MODEL_NAME_HEADER)),
            matchers,
            action: Arc::new(action),
            explicit_timeout,
        };
        for &n in &targets {
            rule.add_to(&mut listeners[n]);
        }
    }
}

/// The listeners parentRef `i` admits the route to; a refusal is reported.
fn parent_listeners(
    route: &Located<'_, HttpRoute>,
    i: usize,
    parent: &HttpRouteParentRefs,
    hostnames: &[String],
    index: &Index<'_>,
    listeners: &[ListenerBuild],
    issues: &mut Vec<ConfigIssue>,
) -> Vec<usize> {
    let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
    let kind = parent.kind.as_deref().unwrap_or("Gateway");
    if group != GATEWAY_GROUP || kind != "Gateway" {
        return Vec::new();
    }
    let namespace = parent
        .namespace
        .clone()
        .unwrap_or_else(|| route.key.namespace.clone());
    let gateway = ObjectKey::new(Kind::Gateway, namespace, parent.name.clone());
    if !index.gateways.iter().any(|g| g.key == gateway) {
        issues.push(
            route
                .warning(
                    format!("spec.parentRefs[{i}].name"),
                    &parent.name,
                    format!("{gateway} does not exist"),
                )
                .about(Subject::ParentRef(i)),
        );
        return Vec::new();
    }
    let is_ours = listeners.iter().any(|l| l.gateway == gateway);
    if !is_ours {
        return Vec::new();
    }
    let candidates: Vec<usize> = listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.gateway == gateway)
        .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| i32::from(l.port) == p))
        .map(|(n, _)| n)
        .collect();
    if candidates.is_empty() {
        issues.push(
            route
                .warning(
                    format!("spec.parentRefs[{i}]"),
                    parent.section_name.as_deref().unwrap_or(""),
                    format!("{gateway} has no such HTTP listener"),
                )
                .because(IssueReason::NoMatchingParent)
                .about(Subject::ParentRef(i)),
        );
        return Vec::new();
    }
    let accepted: Vec<usize> = candidates
        .into_iter()
        .filter(|&n| {
            let l = &listeners[n];
            l.allows_http_routes
                && l.admits_namespace(&route.key.namespace, index)
                && hostnames_intersect(l.hostname.as_deref(), hostnames)
        })
        .collect();
    if accepted.is_empty() {
        issues.push(
            route
                .warning(
                    format!("spec.parentRefs[{i}]"),
                    &parent.name,
                    "no listener admits this route (allowedRoutes or hostnames)",
                )
                .because(IssueReason::NotAllowedByListeners)
                .about(Subject::ParentRef(i)),
        );
    }
    accepted
}

/// One valid rule of an attached route, ready to become route entries.
struct AttachedRule<'r, 'a> {
    route: &'r Located<'a, HttpRoute>,
    index: usize,
    hostnames: &'r [String],
    /// Whether a match reads the model name header (the listener must then set it).
    on_model: bool,
    matchers: Vec<RouteMatch>,
    action: Arc<RuleAction>,
    /// Whether the rule sets its own timeout (otherwise it takes its listener's).
    explicit_timeout: bool,
}

impl AttachedRule<'_, '_> {
    /// Add one route entry per match to `listener`.
    fn add_to(&self, listener: &mut ListenerBuild) {
        let route = self.route;
        // A rule without its own timeout takes its Gateway's (BackendTrafficPolicy or default).
        let action = if self.explicit_timeout || self.action.timeout == listener.request_timeout {
            Arc::clone(&self.action)
        } else {
            Arc::new(RuleAction {
                timeout: listener.request_timeout,
                ..(*self.action).clone()
            })
        };
        listener.routes.routes_on_model |= self.on_model;
        let created = route
            .object
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        let label: Arc<str> = format!("{}#{}", route.key.qualified_name(), self.index).into();
        for (match_index, matcher) in self.matchers.iter().enumerate() {
            listener.routes.entries.push(RouteEntry {
                route: route.key.clone(),
                rule: self.index,
                match_index,
                hostnames: self.hostnames.to_vec(),
                matcher: matcher.clone(),
                action: Arc::clone(&action),
                created,
                order: route.order,
                label: Arc::clone(&label),
            });
        }
    }
}

fn hostnames_intersect(listener: Option<&str>, route: &[String]) -> bool {
    let Some(listener) = listener else {
        return true;
    };
    route.is_empty() || route.iter().any(|r| hostnames_overlap(listener, r))
}

/// Whether some host matches both Gateway API hostnames.
pub(super) fn hostnames_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix("*."), b.strip_prefix("*.")) {
        (None, None) => a.eq_ignore_ascii_case(b),
        (Some(_), None) => hostname_matches(a, b),
        (None, Some(_)) => hostname_matches(b, a),
        (Some(a_rest), Some(b_rest)) => {
            a_rest.eq_ignore_ascii_case(b_rest)
                || hostname_matches(a, b_rest)
                || hostname_matches(b, a_rest)
        }
    }
}
