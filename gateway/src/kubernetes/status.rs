//! The status the gateway owes each object, derived from one snapshot build.
//!
//! Inputs are the objects the build read, the snapshot it produced and its
//! [`ConfigIssue`]s; the reason strings at the start of the issues (`NoMatchingParent:`,
//! `BackendNotFound:`, `ModelNameInUse:`, ...) are the Gateway API's and the Inference Extension's
//! condition reasons, so they map directly. The output is one JSON merge patch of `.status` per
//! object; [`super::writer`] writes the ones that differ from what is stored.
//!
//! What is ours to write: the `Accepted` condition of GatewayClasses naming our controller; the
//! whole status of their Gateways (conditions, listeners, and `addresses` from the gateway's own
//! Service when `--kube-gateway-service` names it, as the seed's `kubectl get gateway -o
//! jsonpath='{.status.addresses[0].value}'` expects); the
//! HTTPRoute `parents[]` entries for our Gateways (other controllers' entries are kept); the
//! InferencePool parent entries for our Gateways routing to the pool (v1 `parents[]` with our
//! controllerName, v1alpha2 `parent[]`; the CRD's `kind: Status` placeholder is dropped); the
//! `Accepted` condition of InferenceModels whose pool one of our Gateways routes to.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use serde_json::{Value, json};

use super::conditions::{Desired, conditions};
use crate::config::crds::v1alpha2;
use crate::config::{ConfigIssue, Kind, Object, ObjectKey, ObjectSet, Severity};
use crate::snapshot::Snapshot;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const INFERENCE_GROUPS: [&str; 2] = [
    "inference.networking.x-k8s.io",
    "inference.networking.k8s.io",
];

/// Kinds whose status the gateway writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusKind {
    /// GatewayClass.
    GatewayClass,
    /// Gateway.
    Gateway,
    /// HTTPRoute.
    HttpRoute,
    /// InferencePool v1alpha2.
    PoolV1Alpha2,
    /// InferencePool v1.
    PoolV1,
    /// InferenceModel v1alpha2.
    InferenceModel,
}

impl StatusKind {
    /// Kind name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::GatewayClass => "GatewayClass",
            StatusKind::Gateway => "Gateway",
            StatusKind::HttpRoute => "HTTPRoute",
            StatusKind::PoolV1Alpha2 => "InferencePool (v1alpha2)",
            StatusKind::PoolV1 => "InferencePool (v1)",
            StatusKind::InferenceModel => "InferenceModel",
        }
    }
}

/// The status one object should have: a merge patch of its `.status`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// Its kind.
    pub kind: StatusKind,
    /// Its namespace (`""` for GatewayClasses).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The merge patch of `.status`.
    pub patch: Value,
}

impl StatusUpdate {
    /// `Kind namespace/name`.
    pub fn object(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind.as_str(), self.name)
        } else {
            format!("{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// Settings of a status computation.
#[derive(Debug, Clone)]
pub struct StatusContext<'a> {
    /// Our controller name.
    pub controller_name: &'a str,
    /// Ports the proxy listens on (a listener on another port is not programmed yet).
    pub bound_ports: &'a [u16],
    /// The Service in front of the gateway's replicas, whose address the Gateways report.
    pub gateway_service: Option<&'a ObjectKey>,
    /// The time a condition that changes now gets.
    pub now: Time,
}

/// Issues by the object they name.
struct Issues<'a>(HashMap<&'a str, Vec<&'a ConfigIssue>>);

impl<'a> Issues<'a> {
    fn new(issues: &'a [ConfigIssue]) -> Self {
        let mut map: HashMap<&str, Vec<&ConfigIssue>> = HashMap::new();
        for issue in issues {
            map.entry(issue.object.as_str()).or_default().push(issue);
        }
        Self(map)
    }

    fn of(&self, key: &ObjectKey) -> &[&'a ConfigIssue] {
        self.0
            .get(key.to_string().as_str())
            .map_or(&[], Vec::as_slice)
    }
}

/// The reason an issue starts with (`BackendNotFound: ...`), if it is one of `known`.
fn reason_of(issue: &ConfigIssue, known: &[&'static str]) -> Option<&'static str> {
    let prefix = issue.reason.split_once(':').map(|(p, _)| p)?;
    known.iter().copied().find(|k| *k == prefix)
}

fn messages(issues: &[&ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| {
            if i.value.is_empty() {
                format!("{}: {}", i.field, i.reason)
            } else {
                format!("{} = {:?}: {}", i.field, i.value, i.reason)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn existing_conditions(status: Option<&Value>, path: &[&str]) -> Vec<Condition> {
    let mut value = status;
    for key in path {
        value = value.and_then(|v| v.get(key));
    }
    value
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn status_json<T: serde::Serialize>(status: Option<&T>) -> Option<Value> {
    status.and_then(|s| serde_json::to_value(s).ok())
}

/// A Gateway of ours and what the build made of it.
struct OurGateway<'a> {
    key: ObjectKey,
    meta: &'a ObjectMeta,
    gateway: &'a gateway_api::gateways::Gateway,
}

/// Compute the status of every object the gateway is responsible for.
pub fn compute(
    objects: &ObjectSet,
    snapshot: &Snapshot,
    issues: &[ConfigIssue],
    cx: &StatusContext<'_>,
) -> Vec<StatusUpdate> {
    let issues = Issues::new(issues);
    let mut updates = Vec::new();

    let mut our_classes = BTreeSet::new();
    for document in objects.iter() {
        if let Object::GatewayClass(class) = &document.object
            && class.spec.controller_name == cx.controller_name
        {
            let key = document.object.key();
            our_classes.insert(key.name.clone());
            let existing =
                existing_conditions(status_json(class.status.as_ref()).as_ref(), &["conditions"]);
            let desired = vec![Desired::ok(
                "Accepted",
                "Accepted",
                format!("Handled by {}", cx.controller_name),
            )];
            updates.push(StatusUpdate {
                kind: StatusKind::GatewayClass,
                namespace: String::new(),
                name: key.name,
                patch: json!({"conditions": conditions(desired, &existing, class.metadata.generation, &cx.now)}),
            });
        }
    }

    let gateways: Vec<OurGateway<'_>> = objects
        .iter()
        .filter_map(|d| match &d.object {
            Object::Gateway(g) if our_classes.contains(&g.spec.gateway_class_name) => {
                Some(OurGateway {
                    key: d.object.key(),
                    meta: &g.metadata,
                    gateway: g,
                })
            }
            _ => None,
        })
        .collect();
    let addresses = cx
        .gateway_service
        .map(|key| service_addresses(objects, key));
    for gateway in &gateways {
        updates.push(gateway_status(
            gateway,
            snapshot,
            &issues,
            addresses.as_ref(),
            cx,
        ));
    }

    // Routes: which of our Gateways accepted each, and which pools each names.
    let ours: BTreeSet<&ObjectKey> = gateways.iter().map(|g| &g.key).collect();
    let mut accepted_by: HashMap<ObjectKey, BTreeSet<ObjectKey>> = HashMap::new();
    let mut parents_of_pool: BTreeMap<ObjectKey, BTreeMap<ObjectKey, bool>> = BTreeMap::new();
    for document in objects.iter() {
        let Object::HttpRoute(route) = &document.object else {
            continue;
        };
        let key = document.object.key();
        let (update, accepted, referenced) = route_status(route, &key, &ours, &issues, cx);
        if let Some(update) = update {
            updates.push(update);
        }
        for pool in route_pools(route, &key) {
            for (gateway, is_accepted) in &referenced {
                let entry = parents_of_pool
                    .entry(pool.clone())
                    .or_default()
                    .entry(gateway.clone())
                    .or_insert(false);
                *entry |= *is_accepted;
            }
        }
        accepted_by.insert(key, accepted);
    }

    // Pools, and the models of pools our Gateways route to.
    let services: BTreeSet<ObjectKey> = objects
        .iter()
        .filter(|d| matches!(d.object, Object::Service(_)))
        .map(|d| d.object.key())
        .collect();
    let mut served_pools = BTreeSet::new();
    for document in objects.iter() {
        let key = document.object.key();
        let parents = parents_of_pool.get(&key);
        if let Some(update) = pool_status(
            &document.object,
            &key,
            parents,
            &services,
            snapshot,
            &issues,
            cx,
        ) {
            if parents.is_some_and(|p| !p.is_empty()) {
                served_pools.insert(key);
            }
            updates.push(update);
        }
    }
    for document in objects.iter() {
        let Object::InferenceModel(model) = &document.object else {
            continue;
        };
        let key = document.object.key();
        let pool = ObjectKey::new(
            Kind::InferencePool,
            key.namespace.clone(),
            model.spec.pool_ref.name.clone(),
        );
        if served_pools.contains(&pool) {
            updates.push(model_status(model, &key, &issues, cx));
        }
    }
    updates
}

/// The addresses of the gateway's Service: its load-balancer ingress for a LoadBalancer Service,
/// its cluster IP otherwise. `Err` says why there is none yet.
fn service_addresses(objects: &ObjectSet, key: &ObjectKey) -> Result<Vec<Value>, String> {
    let service = objects
        .iter()
        .find_map(|d| match &d.object {
            Object::Service(s) if d.object.key() == *key => Some(s),
            _ => None,
        })
        .ok_or_else(|| {
            format!(
                "Service {} (--kube-gateway-service) not found",
                key.qualified_name()
            )
        })?;
    let spec = service.spec.as_ref();
    let load_balancer = spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let addresses: Vec<Value> = if load_balancer {
        service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| match (&i.ip, &i.hostname) {
                (Some(ip), _) => Some(json!({"type": "IPAddress", "value": ip})),
                (None, Some(host)) => Some(json!({"type": "Hostname", "value": host})),
                _ => None,
            })
            .collect()
    } else {
        spec.and_then(|s| s.cluster_ip.as_deref())
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(|ip| json!({"type": "IPAddress", "value": ip}))
            .into_iter()
            .collect()
    };
    if addresses.is_empty() {
        return Err(format!(
            "Service {} has no {} yet",
            key.qualified_name(),
            if load_balancer {
                "load-balancer address"
            } else {
                "cluster IP"
            }
        ));
    }
    Ok(addresses)
}

fn gateway_status(
    gateway: &OurGateway<'_>,
    snapshot: &Snapshot,
    issues: &Issues<'_>,
    addresses: Option<&Result<Vec<Value>, String>>,
    cx: &StatusContext<'_>,
) -> StatusUpdate {
    let status = status_json(gateway.gateway.status.as_ref());
    let generation = gateway.meta.generation;
    let gateway_issues = issues.of(&gateway.key);
    // Listeners the build kept, with the distinct routes attached to each.
    let mut served: HashMap<&str, (u16, BTreeSet<&ObjectKey>)> = HashMap::new();
    for (port, routes) in &snapshot.ports {
        for listener in routes.listeners.iter().filter(|l| l.gateway == gateway.key) {
            let routes: BTreeSet<&ObjectKey> = listener.entries.iter().map(|e| &e.route).collect();
            served.insert(listener.name.as_str(), (*port, routes));
        }
    }
    let existing_listeners: Vec<Value> = status
        .as_ref()
        .and_then(|s| s.get("listeners"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut listeners = Vec::new();
    let mut names = BTreeSet::new();
    let (mut any_accepted, mut any_programmed) = (false, false);
    for (i, listener) in gateway.gateway.spec.listeners.iter().enumerate() {
        if !names.insert(listener.name.as_str()) {
            continue;
        }
        let prefix = format!("spec.listeners[{i}].");
        let mine: Vec<&ConfigIssue> = gateway_issues
            .iter()
            .copied()
            .filter(|i| i.field.starts_with(&prefix))
            .collect();
        let find = |suffix: &str| {
            mine.iter()
                .copied()
                .filter(|i| i.field[prefix.len()..].starts_with(suffix))
                .collect::<Vec<_>>()
        };
        let mut desired = Vec::new();
        let protocol = find("protocol");
        let port = find("port");
        let conflicted: Vec<&ConfigIssue> = port
            .iter()
            .copied()
            .filter(|i| i.reason.starts_with("Conflicted"))
            .collect();
        let kinds = find("allowedRoutes.kinds");
        match served.get(listener.name.as_str()) {
            Some((port, _)) => {
                any_accepted = true;
                desired.push(Desired::ok("Accepted", "Accepted", "Listener is valid"));
                if cx.bound_ports.contains(port) {
                    any_programmed = true;
                    desired.push(Desired::ok(
                        "Programmed",
                        "Programmed",
                        format!("Serving on port {port}"),
                    ));
                } else {
                    desired.push(Desired::fail(
                        "Programmed",
                        "Pending",
                        format!(
                            "Port {port} is bound when the gateway restarts (listener ports are fixed at start-up)"
                        ),
                    ));
                }
            }
            None => {
                let (reason, message) = if !protocol.is_empty() {
                    ("UnsupportedProtocol", messages(&protocol))
                } else if !port.is_empty() {
                    ("PortUnavailable", messages(&port))
                } else {
                    ("Invalid", messages(&mine))
                };
                desired.push(Desired::fail("Accepted", reason, message.clone()));
                desired.push(Desired::fail("Programmed", "Invalid", message));
            }
        }
        desired.push(if kinds.is_empty() {
            Desired::ok("ResolvedRefs", "ResolvedRefs", "All references resolved")
        } else {
            Desired::fail("ResolvedRefs", "InvalidRouteKinds", messages(&kinds))
        });
        // `Conflicted` holds when there is a conflict.
        desired.push(if conflicted.is_empty() {
            Desired::fail("Conflicted", "NoConflicts", "No conflicts")
        } else {
            Desired::ok("Conflicted", "HostnameConflict", messages(&conflicted))
        });
        let existing = existing_listeners
            .iter()
            .find(|l| l.get("name").and_then(Value::as_str) == Some(listener.name.as_str()))
            .map(|l| existing_conditions(Some(l), &["conditions"]))
            .unwrap_or_default();
        let attached = served
            .get(listener.name.as_str())
            .map_or(0, |(_, routes)| routes.len());
        let supported = if kinds.is_empty() && protocol.is_empty() {
            json!([{"group": GATEWAY_GROUP, "kind": "HTTPRoute"}])
        } else {
            json!([])
        };
        listeners.push(json!({
            "name": listener.name,
            "supportedKinds": supported,
            "attachedRoutes": attached,
            "conditions": conditions(desired, &existing, generation, &cx.now),
        }));
    }
    let mut desired = Vec::new();
    desired.push(if any_accepted {
        Desired::ok("Accepted", "Accepted", "Gateway is accepted")
    } else {
        Desired::fail(
            "Accepted",
            "ListenersNotValid",
            "No listener is valid (only HTTP listeners are supported)",
        )
    });
    desired.push(
        if let (true, Some(Err(why))) = (any_programmed, addresses) {
            Desired::fail("Programmed", "AddressNotAssigned", why.clone())
        } else if any_programmed {
            Desired::ok("Programmed", "Programmed", "Gateway is serving")
        } else if any_accepted {
            Desired::fail(
                "Programmed",
                "Pending",
                "Listener ports are bound when the gateway restarts",
            )
        } else {
            Desired::fail("Programmed", "Invalid", "No listener is valid")
        },
    );
    let existing = existing_conditions(status.as_ref(), &["conditions"]);
    let mut patch = json!({
        "conditions": conditions(desired, &existing, generation, &cx.now),
        "listeners": listeners,
    });
    if let Some(addresses) = addresses {
        patch["addresses"] = json!(addresses.as_ref().map_or(&[][..], Vec::as_slice));
    }
    StatusUpdate {
        kind: StatusKind::Gateway,
        namespace: gateway.key.namespace.clone(),
        name: gateway.key.name.clone(),
        patch,
    }
}

/// The route's status (when it names one of our Gateways or carries our old entries), the
/// Gateways that accepted it, and every Gateway of ours it names with whether it was accepted.
fn route_status(
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
        let Some(rest) = issue.field.strip_prefix("spec.rules[") else {
            continue;
        };
        let rule: usize = rest
            .split(']')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if issue.severity == Severity::Error || issue.field.contains(".filters[") {
            invalid_rules.insert(rule);
            invalid.push(issue);
        } else if issue.field.contains(".backendRefs[") {
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
        let field = format!("spec.parentRefs[{i}]");
        let refused: Vec<&ConfigIssue> = route_issues
            .iter()
            .copied()
            .filter(|i| i.field == field)
            .collect();
        let mut desired = Vec::new();
        let is_accepted = if let Some(issue) = refused.first() {
            let reason = reason_of(
                issue,
                &[
                    "NoMatchingParent",
                    "NotAllowedByListeners",
                    "NoMatchingListenerHostname",
                ],
            )
            .unwrap_or("NotAllowedByListeners");
            desired.push(Desired::fail("Accepted", reason, messages(&refused)));
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
                reason_of(
                    first,
                    &[
                        "RefNotPermitted",
                        "InvalidKind",
                        "BackendNotFound",
                        "UnsupportedProtocol",
                    ],
                )
                .unwrap_or("BackendNotFound"),
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

/// The pools a route's backendRefs name.
fn route_pools(route: &gateway_api::httproutes::HttpRoute, key: &ObjectKey) -> Vec<ObjectKey> {
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

/// The picker reference of a pool: (group, kind, name), if any.
fn picker_ref(object: &Object) -> Option<(String, String, String)> {
    match object {
        Object::PoolV1Alpha2(p) => p.spec.extension_ref.as_ref().map(|r| {
            (
                r.group.clone().unwrap_or_default(),
                r.kind.clone().unwrap_or_else(|| "Service".into()),
                r.name.clone(),
            )
        }),
        Object::PoolV1(p) => p.spec.endpoint_picker_ref.as_ref().map(|r| {
            (
                r.group.clone().unwrap_or_default(),
                r.kind.clone().unwrap_or_else(|| "Service".into()),
                r.name.clone(),
            )
        }),
        _ => None,
    }
}

fn pool_status(
    object: &Object,
    key: &ObjectKey,
    parents: Option<&BTreeMap<ObjectKey, bool>>,
    services: &BTreeSet<ObjectKey>,
    snapshot: &Snapshot,
    issues: &Issues<'_>,
    cx: &StatusContext<'_>,
) -> Option<StatusUpdate> {
    let (kind, meta, status, list_field) = match object {
        Object::PoolV1Alpha2(p) => (
            StatusKind::PoolV1Alpha2,
            &p.metadata,
            status_json(p.status.as_ref()),
            "parent",
        ),
        Object::PoolV1(p) => (
            StatusKind::PoolV1,
            &p.metadata,
            status_json(p.status.as_ref()),
            "parents",
        ),
        _ => return None,
    };
    let parents = parents.cloned().unwrap_or_default();
    let existing: Vec<Value> = status
        .as_ref()
        .and_then(|s| s.get(list_field))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_ours = |entry: &Value| {
        let parent = entry.get("parentRef");
        let kind = parent.and_then(|p| p.get("kind")).and_then(Value::as_str);
        if kind == Some("Status") {
            return true; // The CRD's "waiting for controller" placeholder.
        }
        match object {
            Object::PoolV1(_) => {
                entry.get("controllerName").and_then(Value::as_str) == Some(cx.controller_name)
            }
            _ => {
                let name = parent.and_then(|p| p.get("name")).and_then(Value::as_str);
                let namespace = parent
                    .and_then(|p| p.get("namespace"))
                    .and_then(Value::as_str)
                    .unwrap_or(&key.namespace);
                kind == Some("Gateway")
                    && name.is_some_and(|n| {
                        parents
                            .keys()
                            .any(|g| g.name == n && g.namespace == namespace)
                    })
            }
        }
    };
    let others: Vec<Value> = existing.iter().filter(|e| !is_ours(e)).cloned().collect();
    if parents.is_empty() && others.len() == existing.len() {
        return None;
    }
    let pool_issues = issues.of(key);
    let errors: Vec<&ConfigIssue> = pool_issues
        .iter()
        .copied()
        .filter(|i| i.severity == Severity::Error)
        .collect();
    let valid = snapshot.pools.contains_key(key) && errors.is_empty();
    let resolved = match picker_ref(object) {
        None => Desired::ok(
            "ResolvedRefs",
            "ResolvedRefs",
            "No endpoint picker is referenced; the gateway picks endpoints itself",
        ),
        Some((group, kind, _)) if !group.is_empty() || kind != "Service" => Desired::fail(
            "ResolvedRefs",
            "InvalidExtensionRef",
            format!(
                "The endpoint picker must be a core Service, not {kind} in group {group:?}; the gateway picks endpoints itself, so routing is not affected"
            ),
        ),
        Some((_, _, name)) => {
            let service = ObjectKey::new(Kind::Service, key.namespace.clone(), name.clone());
            if services.contains(&service) {
                Desired::ok(
                    "ResolvedRefs",
                    "ResolvedRefs",
                    format!(
                        "Endpoint picker Service {} exists (the gateway picks endpoints itself and does not call it)",
                        service.qualified_name()
                    ),
                )
            } else {
                Desired::fail(
                    "ResolvedRefs",
                    "InvalidExtensionRef",
                    format!(
                        "Endpoint picker Service {} not found; the gateway picks endpoints itself, so routing is not affected",
                        service.qualified_name()
                    ),
                )
            }
        }
    };
    let not_supported = if kind == StatusKind::PoolV1 {
        "NotSupportedByParent"
    } else {
        "NotSupportedByGateway"
    };
    let mut entries = others;
    for (gateway, route_accepted) in &parents {
        let accepted = if !valid {
            Desired::fail("Accepted", not_supported, messages(&errors))
        } else if *route_accepted {
            Desired::ok("Accepted", "Accepted", "Routed to by an accepted HTTPRoute")
        } else {
            Desired::fail(
                "Accepted",
                "HTTPRouteNotAccepted",
                "No HTTPRoute that names this pool is accepted by the Gateway",
            )
        };
        let parent_ref = if kind == StatusKind::PoolV1 {
            json!({"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": gateway.namespace, "name": gateway.name})
        } else {
            json!({"apiVersion": format!("{GATEWAY_GROUP}/v1"), "kind": "Gateway", "namespace": gateway.namespace, "name": gateway.name})
        };
        let previous = existing
            .iter()
            .find(|e| {
                let p = e.get("parentRef");
                p.and_then(|p| p.get("name")).and_then(Value::as_str) == Some(gateway.name.as_str())
                    && p.and_then(|p| p.get("namespace")).and_then(Value::as_str)
                        == Some(gateway.namespace.as_str())
                    && p.and_then(|p| p.get("kind")).and_then(Value::as_str) == Some("Gateway")
            })
            .map(|e| existing_conditions(Some(e), &["conditions"]))
            .unwrap_or_default();
        let conditions = conditions(
            vec![accepted, resolved.clone()],
            &previous,
            meta.generation,
            &cx.now,
        );
        entries.push(if kind == StatusKind::PoolV1 {
            json!({"parentRef": parent_ref, "controllerName": cx.controller_name, "conditions": conditions})
        } else {
            json!({"parentRef": parent_ref, "conditions": conditions})
        });
    }
    Some(StatusUpdate {
        kind,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        patch: json!({ list_field: entries }),
    })
}

fn model_status(
    model: &v1alpha2::InferenceModel,
    key: &ObjectKey,
    issues: &Issues<'_>,
    cx: &StatusContext<'_>,
) -> StatusUpdate {
    let model_issues = issues.of(key);
    let existing =
        existing_conditions(status_json(model.status.as_ref()).as_ref(), &["conditions"]);
    let errors: Vec<&ConfigIssue> = model_issues
        .iter()
        .copied()
        .filter(|i| i.severity == Severity::Error)
        .collect();
    let in_use: Vec<&ConfigIssue> = model_issues
        .iter()
        .copied()
        .filter(|i| i.reason.starts_with("ModelNameInUse"))
        .collect();
    let accepted = if !errors.is_empty() {
        Desired::fail("Accepted", "Invalid", messages(&errors))
    } else if !in_use.is_empty() {
        Desired::fail("Accepted", "ModelNameInUse", messages(&in_use))
    } else {
        Desired::ok("Accepted", "Accepted", "Model is served by its pool")
    };
    // Our condition replaces the CRD's `Ready`/`Pending` placeholder; other types are kept.
    let mut all: Vec<Condition> = existing
        .iter()
        .filter(|c| c.type_ != "Accepted" && !(c.type_ == "Ready" && c.reason == "Pending"))
        .cloned()
        .collect();
    all.extend(conditions(
        vec![accepted],
        &existing,
        model.metadata.generation,
        &cx.now,
    ));
    StatusUpdate {
        kind: StatusKind::InferenceModel,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        patch: json!({ "conditions": all }),
    }
}

#[cfg(test)]
mod tests;
