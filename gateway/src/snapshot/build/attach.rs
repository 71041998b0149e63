//! HTTPRoutes to listeners: each `parentRef` is resolved to the listeners of our Gateways it
//! names (`sectionName`, `port`), kept when the listener admits the route (`allowedRoutes`,
//! hostname intersection), and every rule of the route becomes route entries on those listeners.
//!
//! A refused parentRef is reported; it does not stop the route from attaching elsewhere. What
//! became of every parentRef is recorded in [`crate::snapshot::Snapshot::route_parents`] for the
//! status writer, which must not resolve parentRefs again.

use std::sync::Arc;

use gateway_api::httproutes::{HttpRoute, HttpRouteParentRefs, HttpRouteRules};

use super::GATEWAY_GROUP;
use super::actions::rule_action;
use super::index::{Index, Located};
use super::listeners::{ListenerBuild, Listeners};
use super::matches::rule_matches;
use crate::config::{ConfigIssue, IssueReason, Kind, ObjectKey, Subject};
use crate::headers::MODEL_NAME as MODEL_NAME_HEADER;
use crate::snapshot::routes::{RouteEntry, RouteMatch, hostname_matches};
use crate::snapshot::{Attachment, RouteParent, RuleAction, Snapshot};

/// Attach `route` to the listeners its parentRefs admit it to, and record what became of each
/// parentRef in `snapshot.route_parents`.
pub(super) fn attach_route(
    route: &Located<'_, HttpRoute>,
    index: &Index<'_>,
    listeners: &mut Listeners,
    snapshot: &mut Snapshot,
    issues: &mut Vec<ConfigIssue>,
) {
    let hostnames = route.object.spec.hostnames.clone().unwrap_or_default();
    let parents = ParentResolver {
        route,
        hostnames: &hostnames,
        index,
        listeners,
    };
    let mut recorded = Vec::new();
    let mut targets: Vec<usize> = Vec::new();
    for (i, parent) in route.object.spec.parent_refs.iter().flatten().enumerate() {
        if let Some((resolved, admitting)) = parents.resolve(i, parent, issues) {
            recorded.push(resolved);
            targets.extend(admitting);
        }
    }
    snapshot.route_parents.insert(route.key.clone(), recorded);
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
            rule.add_to(&mut listeners.built[n]);
        }
    }
}

/// Resolves the parentRefs of one route against our listeners.
struct ParentResolver<'r, 'a> {
    route: &'r Located<'a, HttpRoute>,
    hostnames: &'r [String],
    index: &'r Index<'a>,
    listeners: &'r Listeners,
}

impl ParentResolver<'_, '_> {
    /// What became of parentRef `i`, with the listeners (indexes into `listeners.built`) it
    /// admits the route to; a refusal is reported. `None` for a parentRef that is not a Gateway.
    fn resolve(
        &self,
        i: usize,
        parent: &HttpRouteParentRefs,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<(RouteParent, Vec<usize>)> {
        let route = self.route;
        let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        if group != GATEWAY_GROUP || kind != "Gateway" {
            return None;
        }
        let namespace = parent
            .namespace
            .clone()
            .unwrap_or_else(|| route.key.namespace.clone());
        let gateway = ObjectKey::new(Kind::Gateway, namespace, parent.name.clone());
        let (attachment, admitting) = if !self.index.gateways.iter().any(|g| g.key == gateway) {
            issues.push(
                route
                    .warning(
                        format!("spec.parentRefs[{i}].name"),
                        &parent.name,
                        format!("{gateway} does not exist"),
                    )
                    .about(Subject::ParentRef(i)),
            );
            (Attachment::NotOurs, Vec::new())
        } else if !self.listeners.ours.contains(&gateway) {
            (Attachment::NotOurs, Vec::new())
        } else {
            self.listeners_of(i, parent, &gateway, issues)
        };
        let resolved = RouteParent {
            index: i,
            gateway,
            attachment,
        };
        Some((resolved, admitting))
    }

    /// The listeners of our `gateway` that parentRef `i` matches and that admit the route.
    fn listeners_of(
        &self,
        i: usize,
        parent: &HttpRouteParentRefs,
        gateway: &ObjectKey,
        issues: &mut Vec<ConfigIssue>,
    ) -> (Attachment, Vec<usize>) {
        let built = &self.listeners.built;
        if !built.iter().any(|l| &l.gateway == gateway) {
            return (Attachment::NoServedListener, Vec::new());
        }
        let candidates: Vec<usize> = built
            .iter()
            .enumerate()
            .filter(|(_, l)| &l.gateway == gateway)
            .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
            .filter(|(_, l)| parent.port.is_none_or(|p| i32::from(l.port) == p))
            .map(|(n, _)| n)
            .collect();
        let refusal = |value: &str, message: String, reason| {
            self.route
                .warning(format!("spec.parentRefs[{i}]"), value, message)
                .because(reason)
                .about(Subject::ParentRef(i))
        };
        if candidates.is_empty() {
            let reason = IssueReason::NoMatchingParent;
            issues.push(refusal(
                parent.section_name.as_deref().unwrap_or(""),
                format!("{gateway} has no such HTTP listener"),
                reason,
            ));
            return (Attachment::Refused(reason), Vec::new());
        }
        let admitting: Vec<usize> = candidates
            .into_iter()
            .filter(|&n| {
                let l = &built[n];
                l.allows_http_routes
                    && l.admits_namespace(&self.route.key.namespace, self.index)
                    && hostnames_intersect(l.hostname.as_deref(), self.hostnames)
            })
            .collect();
        if admitting.is_empty() {
            let reason = IssueReason::NotAllowedByListeners;
            issues.push(refusal(
                &parent.name,
                "no listener admits this route (allowedRoutes or hostnames)".to_owned(),
                reason,
            ));
            return (Attachment::Refused(reason), Vec::new());
        }
        (Attachment::Attached, admitting)
    }
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
