//! From objects to a [`Snapshot`]: which Gateways are ours, their listeners, the HTTPRoutes that
//! attach to them, and the backends those routes name.
//!
//! The rules are the Gateway API's: a Gateway is ours when its class names our controller; a route
//! attaches to listeners through `parentRefs` (`sectionName`, `port`), subject to
//! `allowedRoutes` and hostname intersection; a backend that cannot be resolved still takes its
//! share of traffic and answers 500. Every problem is collected as a [`ConfigIssue`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteRules, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};
use http::{HeaderName, Method};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use plugins::Registry;

use super::backends::{self, ModelObject, PoolSpec};
use super::routes::{
    ListenerRoutes, PathMatch, PortRoutes, RouteEntry, RouteMatch, ValueMatch, full_match_regex,
    hostname_matches,
};
use super::{Backend, RuleAction, ServiceBackend, Snapshot, WeightedBackend};
use crate::config::{ConfigIssue, Kind, Object, ObjectKey, ObjectSet, Origin};

use crate::headers::MODEL_NAME as MODEL_NAME_HEADER;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const INFERENCE_GROUPS: [&str; 2] = [
    "inference.networking.x-k8s.io",
    "inference.networking.k8s.io",
];
const MAX_BACKEND_WEIGHT: i32 = 1_000_000;

/// Settings that are not part of the objects.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions<'a> {
    /// GatewayClasses whose `spec.controllerName` equals this are ours.
    pub controller_name: &'a str,
    /// Strategy factories.
    pub registry: &'a Registry,
    /// Whole-request timeout when neither the rule nor a BackendTrafficPolicy sets one.
    pub default_request_timeout: Option<Duration>,
}

struct Located<'a, T> {
    key: ObjectKey,
    origin: Option<&'a Origin>,
    order: usize,
    object: &'a T,
}

#[derive(Default)]
struct Index<'a> {
    gateway_classes: Vec<Located<'a, gateway_api::gatewayclasses::GatewayClass>>,
    gateways: Vec<Located<'a, Gateway>>,
    routes: Vec<Located<'a, HttpRoute>>,
    services: HashMap<ObjectKey, Located<'a, Service>>,
    pods: HashMap<String, Vec<&'a Pod>>,
    namespaces: HashMap<String, &'a Namespace>,
    pools: Vec<PoolSpec<'a>>,
    models: Vec<Located<'a, crate::config::crds::v1alpha2::InferenceModel>>,
    policies: Vec<Located<'a, crate::config::objects::BackendTrafficPolicy>>,
}

fn index<'a>(objects: &'a ObjectSet, issues: &mut Vec<ConfigIssue>) -> Index<'a> {
    let mut index = Index::default();
    let mut seen: HashMap<ObjectKey, Option<&'a Origin>> = HashMap::new();
    for (order, document) in objects.iter().enumerate() {
        let key = document.object.key();
        let origin = document.origin.as_ref();
        if let Some(first) = seen.get(&key) {
            let at = first.map_or_else(|| "another source".to_owned(), ToString::to_string);
            issues.push(
                ConfigIssue::error(
                    key.to_string(),
                    "metadata.name",
                    &key.name,
                    format!("defined twice; first at {at}"),
                )
                .at(origin),
            );
            continue;
        }
        seen.insert(key.clone(), origin);
        macro_rules! located {
            ($o:expr) => {
                Located {
                    key: key.clone(),
                    origin,
                    order,
                    object: &**$o,
                }
            };
        }
        match &document.object {
            Object::GatewayClass(o) => index.gateway_classes.push(located!(o)),
            Object::Gateway(o) => index.gateways.push(located!(o)),
            Object::HttpRoute(o) => index.routes.push(located!(o)),
            Object::Service(o) => {
                index.services.insert(key.clone(), located!(o));
            }
            Object::Pod(o) => index.pods.entry(key.namespace.clone()).or_default().push(o),
            Object::Namespace(o) => {
                index.namespaces.insert(key.name.clone(), o);
            }
            Object::PoolV1Alpha2(o) => {
                index
                    .pools
                    .push(PoolSpec::from_v1alpha2(key.clone(), origin, o))
            }
            Object::PoolV1(o) => index.pools.push(PoolSpec::from_v1(key.clone(), origin, o)),
            Object::InferenceModel(o) => index.models.push(located!(o)),
            Object::BackendTrafficPolicy(o) => index.policies.push(located!(o)),
        }
    }
    index
}

/// How a listener admits routes.
struct ListenerBuild {
    gateway: ObjectKey,
    name: String,
    port: u16,
    hostname: Option<String>,
    namespaces: AllowedNamespaces,
    allows_http_routes: bool,
    request_timeout: Option<Duration>,
    routes: ListenerRoutes,
}

enum AllowedNamespaces {
    Same,
    All,
    Selector(BTreeMap<String, String>),
}

/// Parse a Gateway API duration (`1h`, `30s`, `500ms`); `0s` means none.
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let parsed: gateway_api::Duration = text.parse()?;
    let duration = Duration::new(parsed.as_secs(), parsed.subsec_nanos());
    Ok((!duration.is_zero()).then_some(duration))
}

/// Build a snapshot from `objects`. `previous` donates runtime state (endpoint counters, strategy
/// instances). The snapshot is usable only when no returned issue is an error.
pub fn build(
    objects: &ObjectSet,
    options: &BuildOptions<'_>,
    previous: Option<&Snapshot>,
) -> (Snapshot, Vec<ConfigIssue>) {
    let mut issues = Vec::new();
    let index = index(objects, &mut issues);
    let mut snapshot = Snapshot::default();

    // Pools and their models.
    let pool_keys: Vec<ObjectKey> = index.pools.iter().map(|p| p.key.clone()).collect();
    let model_objects: Vec<ModelObject<'_>> = index
        .models
        .iter()
        .map(|m| ModelObject {
            model: m.object,
            key: &m.key,
            origin: m.origin,
            order: m.order,
        })
        .collect();
    let mut models =
        backends::models_by_pool(&model_objects, |k| pool_keys.contains(k), &mut issues);
    for spec in &index.pools {
        let pods = index
            .pods
            .get(&spec.key.namespace)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let pool_models = models.remove(&spec.key).unwrap_or_default();
        if let Some(pool) = backends::build_pool(
            spec,
            pods,
            pool_models,
            options.registry,
            previous,
            &mut issues,
        ) {
            snapshot.pools.insert(spec.key.clone(), Arc::new(pool));
        }
    }

    let mut listeners = gateway_listeners(&index, options, &mut issues);
    for route in &index.routes {
        attach_route(route, &index, &mut listeners, &mut snapshot, &mut issues);
    }

    for listener in listeners {
        let mut routes = listener.routes;
        routes
            .entries
            .sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        snapshot
            .ports
            .entry(listener.port)
            .or_insert_with(PortRoutes::default)
            .listeners
            .push(routes);
    }
    for port in snapshot.ports.values_mut() {
        port.sort();
    }
    (snapshot, issues)
}

fn gateway_listeners(
    index: &Index<'_>,
    options: &BuildOptions<'_>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<ListenerBuild> {
    let ours: Vec<&str> = index
        .gateway_classes
        .iter()
        .filter(|c| c.object.spec.controller_name == options.controller_name)
        .map(|c| c.key.name.as_str())
        .collect();
    let mut listeners: Vec<ListenerBuild> = Vec::new();
    for gateway in &index.gateways {
        if !ours.contains(&gateway.object.spec.gateway_class_name.as_str()) {
            continue;
        }
        let object = gateway.key.to_string();
        let timeout = gateway_request_timeout(index, &gateway.key, issues)
            .unwrap_or(options.default_request_timeout);
        for (i, listener) in gateway.object.spec.listeners.iter().enumerate() {
            let field = |name: &str| format!("spec.listeners[{i}].{name}");
            if listeners
                .iter()
                .any(|l| l.gateway == gateway.key && l.name == listener.name)
            {
                issues.push(
                    ConfigIssue::error(
                        &object,
                        field("name"),
                        &listener.name,
                        "listener names must be unique",
                    )
                    .at(gateway.origin),
                );
                continue;
            }
            if listener.protocol != "HTTP" {
                issues.push(
                    ConfigIssue::warning(&object, field("protocol"), &listener.protocol, "UnsupportedProtocol: only HTTP listeners are served; this listener is skipped")
                        .at(gateway.origin),
                );
                continue;
            }
            let Some(port) = u16::try_from(listener.port).ok().filter(|p| *p > 0) else {
                issues.push(
                    ConfigIssue::error(
                        &object,
                        field("port"),
                        listener.port,
                        "must be between 1 and 65535",
                    )
                    .at(gateway.origin),
                );
                continue;
            };
            if let Some(other) = listeners
                .iter()
                .find(|l| l.port == port && l.hostname == listener.hostname)
            {
                issues.push(
                    ConfigIssue::error(
                        &object,
                        field("port"),
                        port,
                        format!(
                            "Conflicted: listener {} of {} already serves this port and hostname",
                            other.name, other.gateway
                        ),
                    )
                    .at(gateway.origin),
                );
                continue;
            }
            let (namespaces, allows_http_routes) =
                allowed_routes(listener, &object, &field, gateway.origin, issues);
            listeners.push(ListenerBuild {
                gateway: gateway.key.clone(),
                name: listener.name.clone(),
                port,
                hostname: listener.hostname.clone(),
                namespaces,
                allows_http_routes,
                request_timeout: timeout,
                routes: ListenerRoutes {
                    gateway: gateway.key.clone(),
                    name: listener.name.clone(),
                    hostname: listener.hostname.clone(),
                    entries: Vec::new(),
                    routes_on_model: false,
                },
            });
        }
    }
    if listeners.is_empty() {
        let classes: Vec<String> = index
            .gateway_classes
            .iter()
            .map(|c| format!("{} names {:?}", c.key.name, c.object.spec.controller_name))
            .collect();
        issues.push(ConfigIssue::error(
            "configuration",
            "GatewayClass spec.controllerName",
            options.controller_name,
            if classes.is_empty() {
                "no GatewayClass names this controller, so there is no Gateway to serve".to_owned()
            } else {
                format!(
                    "no HTTP listener of a Gateway whose GatewayClass names this controller ({})",
                    classes.join("; ")
                )
            },
        ));
    }
    listeners
}

fn allowed_routes(
    listener: &GatewayListeners,
    object: &str,
    field: &dyn Fn(&str) -> String,
    origin: Option<&Origin>,
    issues: &mut Vec<ConfigIssue>,
) -> (AllowedNamespaces, bool) {
    let Some(allowed) = &listener.allowed_routes else {
        return (AllowedNamespaces::Same, true);
    };
    let kinds_ok = allowed.kinds.as_ref().is_none_or(|kinds| {
        kinds
            .iter()
            .any(|k| k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP))
    });
    if !kinds_ok {
        issues.push(
            ConfigIssue::warning(
                object,
                field("allowedRoutes.kinds"),
                "",
                "InvalidRouteKinds: HTTPRoute is not allowed, so no route attaches",
            )
            .at(origin),
        );
    }
    let namespaces = match allowed.namespaces.as_ref() {
        None => AllowedNamespaces::Same,
        Some(ns) => match ns.from {
            None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => {
                AllowedNamespaces::Same
            }
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => AllowedNamespaces::All,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
                let selector = ns.selector.as_ref();
                if selector
                    .is_some_and(|s| s.match_expressions.as_ref().is_some_and(|e| !e.is_empty()))
                {
                    issues.push(
                        ConfigIssue::warning(
                            object,
                            field("allowedRoutes.namespaces.selector.matchExpressions"),
                            "",
                            "matchExpressions are not supported; only matchLabels are used",
                        )
                        .at(origin),
                    );
                }
                AllowedNamespaces::Selector(
                    selector
                        .and_then(|s| s.match_labels.clone())
                        .unwrap_or_default(),
                )
            }
        },
    };
    (namespaces, kinds_ok)
}

fn gateway_request_timeout(
    index: &Index<'_>,
    gateway: &ObjectKey,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Option<Duration>> {
    let mut result = None;
    for policy in &index.policies {
        let spec = &policy.object.spec;
        let targets = spec.target_ref.iter().chain(&spec.target_refs);
        let targets_gateway = targets.into_iter().any(|t| {
            t.kind == "Gateway"
                && (t.group.is_empty() || t.group == GATEWAY_GROUP)
                && t.name == gateway.name
        }) && policy.key.namespace == gateway.namespace;
        if !targets_gateway {
            continue;
        }
        let Some(text) = spec
            .timeout
            .as_ref()
            .and_then(|t| t.http.as_ref())
            .and_then(|h| h.request_timeout.as_deref())
        else {
            continue;
        };
        match parse_duration(text) {
            Ok(timeout) => result = Some(timeout),
            Err(reason) => issues.push(
                ConfigIssue::error(
                    policy.key.to_string(),
                    "spec.timeout.http.requestTimeout",
                    text,
                    reason,
                )
                .at(policy.origin),
            ),
        }
    }
    result
}

fn namespace_allowed(
    allowed: &AllowedNamespaces,
    gateway_ns: &str,
    route_ns: &str,
    index: &Index<'_>,
) -> bool {
    match allowed {
        AllowedNamespaces::Same => gateway_ns == route_ns,
        AllowedNamespaces::All => true,
        AllowedNamespaces::Selector(labels) => index
            .namespaces
            .get(route_ns)
            .is_some_and(|ns| backends::selector_matches(labels, ns.metadata.labels.as_ref())),
    }
}

fn attach_route(
    route: &Located<'_, HttpRoute>,
    index: &Index<'_>,
    listeners: &mut [ListenerBuild],
    snapshot: &mut Snapshot,
    issues: &mut Vec<ConfigIssue>,
) {
    let object = route.key.to_string();
    let spec = &route.object.spec;
    let hostnames = spec.hostnames.clone().unwrap_or_default();
    let mut targets: Vec<usize> = Vec::new();
    for (i, parent) in spec.parent_refs.iter().flatten().enumerate() {
        let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        if group != GATEWAY_GROUP || kind != "Gateway" {
            continue;
        }
        let namespace = parent
            .namespace
            .clone()
            .unwrap_or_else(|| route.key.namespace.clone());
        let gateway = ObjectKey::new(Kind::Gateway, namespace, parent.name.clone());
        if !index.gateways.iter().any(|g| g.key == gateway) {
            issues.push(
                ConfigIssue::warning(
                    &object,
                    format!("spec.parentRefs[{i}].name"),
                    &parent.name,
                    format!("{gateway} does not exist"),
                )
                .at(route.origin),
            );
            continue;
        }
        let candidates: Vec<usize> = listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.gateway == gateway)
            .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
            .filter(|(_, l)| parent.port.is_none_or(|p| i32::from(l.port) == p))
            .map(|(n, _)| n)
            .collect();
        let is_ours = listeners.iter().any(|l| l.gateway == gateway);
        if !is_ours {
            continue;
        }
        if candidates.is_empty() {
            issues.push(
                ConfigIssue::warning(
                    &object,
                    format!("spec.parentRefs[{i}]"),
                    parent.section_name.as_deref().unwrap_or(""),
                    format!("NoMatchingParent: {gateway} has no such HTTP listener"),
                )
                .at(route.origin),
            );
            continue;
        }
        let accepted: Vec<usize> = candidates
            .into_iter()
            .filter(|&n| {
                let l = &listeners[n];
                l.allows_http_routes
                    && namespace_allowed(
                        &l.namespaces,
                        &l.gateway.namespace,
                        &route.key.namespace,
                        index,
                    )
                    && hostnames_intersect(l.hostname.as_deref(), &hostnames)
            })
            .collect();
        if accepted.is_empty() {
            issues.push(
                ConfigIssue::warning(
                    &object,
                    format!("spec.parentRefs[{i}]"),
                    &parent.name,
                    "NotAllowedByListeners: no listener admits this route (allowedRoutes or hostnames)",
                )
                .at(route.origin),
            );
        }
        targets.extend(accepted);
    }
    targets.sort_unstable();
    targets.dedup();
    if targets.is_empty() {
        return;
    }

    let created = route
        .object
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    let rules = spec
        .rules
        .clone()
        .unwrap_or_else(|| vec![HttpRouteRules::default()]);
    for (rule_index, rule) in rules.iter().enumerate() {
        let field = |rest: &str| format!("spec.rules[{rule_index}]{rest}");
        let Some(matchers) = rule_matches(
            rule.matches.as_deref(),
            &object,
            &field,
            route.origin,
            issues,
        ) else {
            continue;
        };
        let on_model = matchers
            .iter()
            .any(|m| m.headers.iter().any(|(name, _)| name == MODEL_NAME_HEADER));
        let Some((action, explicit_timeout)) =
            rule_action(rule, route, index, snapshot, &field, issues)
        else {
            continue;
        };
        let action = Arc::new(action);
        let label: Arc<str> = format!("{}#{rule_index}", route.key.qualified_name()).into();
        for &n in &targets {
            let listener = &mut listeners[n];
            // A rule without its own timeout takes its Gateway's (BackendTrafficPolicy or default).
            let action = if explicit_timeout || action.timeout == listener.request_timeout {
                Arc::clone(&action)
            } else {
                Arc::new(RuleAction {
                    timeout: listener.request_timeout,
                    ..(*action).clone()
                })
            };
            listener.routes.routes_on_model |= on_model;
            for (match_index, matcher) in matchers.iter().enumerate() {
                listener.routes.entries.push(RouteEntry {
                    route: route.key.clone(),
                    rule: rule_index,
                    match_index,
                    hostnames: hostnames.clone(),
                    matcher: matcher.clone(),
                    action: Arc::clone(&action),
                    created,
                    order: route.order,
                    label: Arc::clone(&label),
                });
            }
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
fn hostnames_overlap(a: &str, b: &str) -> bool {
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

fn rule_matches(
    matches: Option<&[HttpRouteRulesMatches]>,
    object: &str,
    field: &dyn Fn(&str) -> String,
    origin: Option<&Origin>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Vec<RouteMatch>> {
    let Some(matches) = matches.filter(|m| !m.is_empty()) else {
        return Some(vec![RouteMatch::any()]);
    };
    let before = issues.len();
    let mut out = Vec::with_capacity(matches.len());
    for (i, m) in matches.iter().enumerate() {
        let mut error = |rest: String, value: &str, reason: String| {
            issues.push(
                ConfigIssue::error(
                    object,
                    field(&format!(".matches[{i}]{rest}")),
                    value,
                    reason,
                )
                .at(origin),
            );
        };
        let value = m
            .path
            .as_ref()
            .and_then(|p| p.value.clone())
            .unwrap_or_else(|| "/".into());
        let path = match m
            .path
            .as_ref()
            .and_then(|p| p.r#type.clone())
            .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix)
        {
            HttpRouteRulesMatchesPathType::RegularExpression => match full_match_regex(&value) {
                Ok(regex) => PathMatch::Regex(regex),
                Err(e) => {
                    error(
                        ".path.value".into(),
                        &value,
                        format!("invalid regular expression: {e}"),
                    );
                    continue;
                }
            },
            kind => {
                if let Err(reason) = validate_path(&value) {
                    error(".path.value".into(), &value, reason.into());
                    continue;
                }
                match kind {
                    HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(value),
                    _ => PathMatch::prefix(&value),
                }
            }
        };
        let method = match &m.method {
            None => None,
            Some(method) => {
                let text = serde_json::to_value(method)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                Some(Method::from_bytes(text.as_bytes()).unwrap_or(Method::GET))
            }
        };
        let mut headers = Vec::new();
        for (h, header) in m.headers.iter().flatten().enumerate() {
            let Ok(name) = HeaderName::from_bytes(header.name.as_bytes()) else {
                error(
                    format!(".headers[{h}].name"),
                    &header.name,
                    "not a valid header name".into(),
                );
                continue;
            };
            let regex = matches!(
                header.r#type,
                Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
            );
            let value = match value_match(regex, &header.value) {
                Ok(value) => value,
                Err(reason) => {
                    error(format!(".headers[{h}].value"), &header.value, reason);
                    continue;
                }
            };
            headers.push((name, value));
        }
        let mut query = Vec::new();
        for (q, param) in m.query_params.iter().flatten().enumerate() {
            let regex = matches!(
                param.r#type,
                Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
            );
            let value = match value_match(regex, &param.value) {
                Ok(value) => value,
                Err(reason) => {
                    error(format!(".queryParams[{q}].value"), &param.value, reason);
                    continue;
                }
            };
            query.push((param.name.clone(), value));
        }
        out.push(RouteMatch {
            path,
            method,
            headers,
            query,
        });
    }
    (issues.len() == before).then_some(out)
}

/// An exact or regular-expression value match.
fn value_match(regex: bool, value: &str) -> Result<ValueMatch, String> {
    if regex {
        full_match_regex(value)
            .map(ValueMatch::Regex)
            .map_err(|e| format!("invalid regular expression: {e}"))
    } else {
        Ok(ValueMatch::Exact(value.to_owned()))
    }
}

/// The Gateway API's path value rules.
fn validate_path(value: &str) -> Result<(), &'static str> {
    if !value.starts_with('/') {
        return Err("must start with /");
    }
    let forbidden = ["//", "/./", "/../", "%2f", "%2F", "#"];
    if forbidden.iter().any(|f| value.contains(f))
        || value.ends_with("/..")
        || value.ends_with("/.")
    {
        return Err("must not contain //, /./, /../, %2f, %2F or #, nor end with /. or /..");
    }
    if value.len() > 1024 {
        return Err("must be at most 1024 characters");
    }
    Ok(())
}

/// The rule's action, and whether the rule sets its own timeout.
fn rule_action(
    rule: &HttpRouteRules,
    route: &Located<'_, HttpRoute>,
    index: &Index<'_>,
    snapshot: &mut Snapshot,
    field: &dyn Fn(&str) -> String,
    issues: &mut Vec<ConfigIssue>,
) -> Option<(RuleAction, bool)> {
    let object = route.key.to_string();
    let explicit = rule.timeouts.as_ref().and_then(|t| t.request.as_deref());
    let timeout = match explicit {
        None => None,
        Some(text) => match parse_duration(text) {
            Ok(timeout) => timeout,
            Err(reason) => {
                issues.push(
                    ConfigIssue::error(&object, field(".timeouts.request"), text, reason)
                        .at(route.origin),
                );
                return None;
            }
        },
    };
    if let Some(filter) = rule.filters.as_ref().and_then(|f| f.first()) {
        let name = serde_json::to_value(&filter.r#type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        issues.push(
            ConfigIssue::warning(
                &object,
                field(".filters[0].type"),
                &name,
                "filters are not supported yet; requests matching this rule get 500",
            )
            .at(route.origin),
        );
        let action = RuleAction {
            timeout,
            ..RuleAction::invalid("this route rule uses a filter the gateway does not support")
        };
        return Some((action, explicit.is_some()));
    }
    let mut backends = Vec::new();
    for (i, backend) in rule.backend_refs.iter().flatten().enumerate() {
        let field = |rest: &str| field(&format!(".backendRefs[{i}]{rest}"));
        let weight = backend.weight.unwrap_or(1);
        if !(0..=MAX_BACKEND_WEIGHT).contains(&weight) {
            issues.push(
                ConfigIssue::error(
                    &object,
                    field(".weight"),
                    weight,
                    "must be between 0 and 1000000",
                )
                .at(route.origin),
            );
            return None;
        }
        let group = backend.group.as_deref().unwrap_or("");
        let kind = backend.kind.as_deref().unwrap_or("Service");
        let namespace = backend
            .namespace
            .clone()
            .unwrap_or_else(|| route.key.namespace.clone());
        let resolved = if namespace != route.key.namespace {
            Err(format!(
                "RefNotPermitted: a backend in namespace {namespace} needs a ReferenceGrant, which is not supported"
            ))
        } else if group.is_empty() && kind == "Service" {
            let Some(port) = backend.port else {
                issues.push(
                    ConfigIssue::error(
                        &object,
                        field(".port"),
                        "",
                        "port is required for a Service backend",
                    )
                    .at(route.origin),
                );
                return None;
            };
            let key = ObjectKey::new(Kind::Service, namespace, backend.name.clone());
            service_backend(&key, port, index, snapshot).map(Backend::Service)
        } else if INFERENCE_GROUPS.contains(&group) && kind == "InferencePool" {
            let key = ObjectKey::new(Kind::InferencePool, namespace, backend.name.clone());
            match snapshot.pools.get(&key) {
                Some(pool) => Ok(Backend::Pool(Arc::clone(pool))),
                None if index.pools.iter().any(|p| p.key == key) => {
                    Err(format!("{key} is invalid"))
                }
                None => Err(format!("BackendNotFound: {key} does not exist")),
            }
        } else {
            Err(format!(
                "InvalidKind: backend kind {kind:?} in group {group:?} is not supported"
            ))
        };
        let backend = resolved.unwrap_or_else(|reason| {
            issues.push(
                ConfigIssue::warning(
                    &object,
                    field(".name"),
                    &backend.name,
                    format!("{reason}; its share of traffic gets 500"),
                )
                .at(route.origin),
            );
            Backend::Invalid(reason.into())
        });
        backends.push(WeightedBackend {
            weight: u32::try_from(weight).unwrap_or(0),
            backend,
        });
    }
    if backends.is_empty() {
        issues.push(
            ConfigIssue::warning(
                &object,
                field(".backendRefs"),
                "",
                "the rule has no backends; its requests get 500",
            )
            .at(route.origin),
        );
    }
    let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
    Some((
        RuleAction {
            backends,
            total_weight,
            timeout,
        },
        explicit.is_some(),
    ))
}

fn service_backend(
    key: &ObjectKey,
    port: i32,
    index: &Index<'_>,
    snapshot: &mut Snapshot,
) -> Result<Arc<ServiceBackend>, String> {
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {port} is out of range"))?;
    if let Some(existing) = snapshot.services.get(&(key.clone(), port)) {
        return Ok(Arc::clone(existing));
    }
    let service = index
        .services
        .get(key)
        .ok_or_else(|| format!("BackendNotFound: {key} does not exist"))?;
    let pods = index
        .pods
        .get(&key.namespace)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let backend = Arc::new(backends::service_backend(key, service.object, port, pods)?);
    snapshot
        .services
        .insert((key.clone(), port), Arc::clone(&backend));
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;

    const CONTROLLER: &str = "inference-gateway.dev/controller";

    fn build_yaml(yaml: &str) -> (Snapshot, Vec<ConfigIssue>) {
        let mut objects = ObjectSet::default();
        let parse_issues = objects.add_yaml(yaml, std::path::Path::new("t.yaml"));
        assert!(parse_issues.is_empty(), "{parse_issues:?}");
        build_objects(&objects)
    }

    fn build_objects(objects: &ObjectSet) -> (Snapshot, Vec<ConfigIssue>) {
        let registry = Registry::with_builtins();
        let options = BuildOptions {
            controller_name: CONTROLLER,
            registry: &registry,
            default_request_timeout: Some(Duration::from_secs(3600)),
        };
        build(objects, &options, None)
    }

    const GATEWAY: &str = "
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
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/local");
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
        assert!(errors[0].reason.contains("unknown routing strategy"));
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
        let warnings: Vec<&str> = issues.iter().map(|i| i.reason.as_str()).collect();
        assert!(
            warnings.iter().any(|w| w.starts_with("NoMatchingParent")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.starts_with("BackendNotFound")),
            "{warnings:?}"
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
                    && i.reason.starts_with("ModelNameInUse"))
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
                .reason
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
            errors(&issues)[0].reason,
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
}
