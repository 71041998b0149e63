//! The status the gateway owes each object, derived from one snapshot build.
//!
//! Inputs are the objects the build read, the snapshot it produced and its
//! [`ConfigIssue`]s. An issue carries its condition reason typed ([`IssueReason`]: the Gateway
//! API's and the Inference Extension's) and the part of the object it is about
//! ([`crate::config::Subject`]), so reasons map directly and nothing here parses an issue's text
//! or field path; what became of each route's parentRefs is the build's record
//! ([`Snapshot::route_parents`]), not resolved again here. The output is one JSON merge patch of
//! `.status` per object, with the `metadata.resourceVersion` of the object it was computed from;
//! [`super::writer`] writes the ones that differ from what is stored, with that resourceVersion as
//! the write's precondition.
//!
//! What is ours to write: the `Accepted` condition of GatewayClasses naming our controller; the
//! whole status of their Gateways (conditions, listeners, and `addresses` from the gateway's own
//! Service when `--kube-gateway-service` names it, as the seed's `kubectl get gateway -o
//! jsonpath='{.status.addresses[0].value}'` expects); the
//! HTTPRoute `parents[]` entries for our Gateways (other controllers' entries are kept); the
//! InferencePool parent entries for our Gateways routing to the pool (v1 `parents[]` with our
//! controllerName, v1alpha2 `parent[]`; the CRD's `kind: Status` placeholder is dropped); the
//! `Accepted` condition of InferenceModels whose pool one of our Gateways routes to. A merge patch
//! replaces a whole array, so "kept" means copied from the version the update was computed from:
//! the resourceVersion precondition is what keeps an entry another controller added since from
//! being dropped (the write is refused and recomputed instead).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use serde_json::{Value, json};

use super::conditions::{Desired, conditions};
use crate::config::crds::apix::ApixGroup;
use crate::config::{ConfigIssue, IssueReason, Kind, Object, ObjectKey, ObjectSet};
use crate::snapshot::Snapshot;

mod gateways;
mod inference;
mod routes;

use gateways::{gateway_status, service_addresses};
use inference::{apix_status, model_status, pool_status};
use routes::{route_pools, route_status};

pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub(crate) const INFERENCE_GROUPS: [&str; 2] = [
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
    /// InferenceObjective v1alpha2 of a group.
    Objective(ApixGroup),
    /// InferenceModelRewrite v1alpha2 of a group.
    Rewrite(ApixGroup),
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
            StatusKind::Objective(ApixGroup::LlmD) => "InferenceObjective (llm-d.ai)",
            StatusKind::Objective(ApixGroup::XK8s) => {
                "InferenceObjective (inference.networking.x-k8s.io)"
            }
            StatusKind::Rewrite(ApixGroup::LlmD) => "InferenceModelRewrite (llm-d.ai)",
            StatusKind::Rewrite(ApixGroup::XK8s) => {
                "InferenceModelRewrite (inference.networking.x-k8s.io)"
            }
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
    /// `metadata.resourceVersion` of the object the patch was computed from. The write sends it
    /// as a precondition, so a patch made from an older view of the object than the API server's
    /// is refused (`409 Conflict`) instead of overwriting what another writer added since.
    pub resource_version: Option<String>,
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
pub(crate) struct Issues<'a>(HashMap<&'a str, Vec<&'a ConfigIssue>>);

impl<'a> Issues<'a> {
    pub(crate) fn new(issues: &'a [ConfigIssue]) -> Self {
        let mut map: HashMap<&str, Vec<&ConfigIssue>> = HashMap::new();
        for issue in issues {
            map.entry(issue.object.as_str()).or_default().push(issue);
        }
        Self(map)
    }

    pub(crate) fn of(&self, key: &ObjectKey) -> &[&'a ConfigIssue] {
        self.0
            .get(key.to_string().as_str())
            .map_or(&[], Vec::as_slice)
    }
}

/// The issues among `issues` that are `reason`.
pub(crate) fn with_reason<'a>(
    issues: &[&'a ConfigIssue],
    reason: IssueReason,
) -> Vec<&'a ConfigIssue> {
    issues
        .iter()
        .copied()
        .filter(|i| i.reason == Some(reason))
        .collect()
}

/// A condition message: the issues' fields, values and reasons.
pub(crate) fn messages(issues: &[&ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| {
            if i.value.is_empty() {
                format!("{}: {}", i.field, i.explanation())
            } else {
                format!("{} = {:?}: {}", i.field, i.value, i.explanation())
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn existing_conditions(status: Option<&Value>, path: &[&str]) -> Vec<Condition> {
    let mut value = status;
    for key in path {
        value = value.and_then(|v| v.get(key));
    }
    value
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

pub(crate) fn status_json<T: serde::Serialize>(status: Option<&T>) -> Option<Value> {
    status.and_then(|s| serde_json::to_value(s).ok())
}

/// A Gateway of ours and what the build made of it.
pub(crate) struct OurGateway<'a> {
    pub(crate) key: ObjectKey,
    pub(crate) meta: &'a ObjectMeta,
    pub(crate) gateway: &'a gateway_api::gateways::Gateway,
}

/// Compute the status of every object the gateway is responsible for.
pub fn compute(
    objects: &ObjectSet,
    snapshot: &Snapshot,
    issues: &[ConfigIssue],
    cx: &StatusContext<'_>,
) -> Vec<StatusUpdate> {
    let mut computation = Computation {
        objects,
        snapshot,
        issues: Issues::new(issues),
        cx,
        updates: Vec::new(),
    };
    let our_classes = computation.classes();
    computation.gateways(&our_classes);
    let parents_of_pool = computation.routes();
    computation.pools_and_models(&parents_of_pool);
    computation.updates
}

/// One status computation: its inputs, and the updates so far.
struct Computation<'a> {
    objects: &'a ObjectSet,
    snapshot: &'a Snapshot,
    issues: Issues<'a>,
    cx: &'a StatusContext<'a>,
    updates: Vec<StatusUpdate>,
}

impl Computation<'_> {
    /// The GatewayClasses naming our controller are accepted; their names.
    fn classes(&mut self) -> BTreeSet<String> {
        let cx = self.cx;
        let mut our_classes = BTreeSet::new();
        for document in self.objects.iter() {
            if let Object::GatewayClass(class) = &document.object
                && class.spec.controller_name == cx.controller_name
            {
                let key = document.object.key();
                our_classes.insert(key.name.clone());
                let existing = existing_conditions(
                    status_json(class.status.as_ref()).as_ref(),
                    &["conditions"],
                );
                let desired = vec![Desired::ok(
                    "Accepted",
                    "Accepted",
                    format!("Handled by {}", cx.controller_name),
                )];
                self.updates.push(StatusUpdate {
                    kind: StatusKind::GatewayClass,
                    namespace: String::new(),
                    name: key.name,
                    patch: json!({"conditions": conditions(desired, &existing, class.metadata.generation, &cx.now)}),
                    resource_version: class.metadata.resource_version.clone(),
                });
            }
        }
        our_classes
    }

    /// The Gateways of `our_classes`.
    fn gateways(&mut self, our_classes: &BTreeSet<String>) {
        let addresses = self
            .cx
            .gateway_service
            .map(|key| service_addresses(self.objects, key));
        for document in self.objects.iter() {
            let Object::Gateway(g) = &document.object else {
                continue;
            };
            if !our_classes.contains(&g.spec.gateway_class_name) {
                continue;
            }
            let gateway = OurGateway {
                key: document.object.key(),
                meta: &g.metadata,
                gateway: g,
            };
            let update = gateway_status(
                &gateway,
                self.snapshot,
                &self.issues,
                addresses.as_ref(),
                self.cx,
            );
            self.updates.push(update);
        }
    }

    /// The HTTPRoutes naming our Gateways (as the build recorded); for each pool a route names,
    /// the Gateways of ours the route names and whether one of them accepted it.
    fn routes(&mut self) -> BTreeMap<ObjectKey, BTreeMap<ObjectKey, bool>> {
        let mut parents_of_pool: BTreeMap<ObjectKey, BTreeMap<ObjectKey, bool>> = BTreeMap::new();
        for document in self.objects.iter() {
            let Object::HttpRoute(route) = &document.object else {
                continue;
            };
            let key = document.object.key();
            let parents = self
                .snapshot
                .route_parents
                .get(&key)
                .map_or(&[][..], Vec::as_slice);
            let (update, referenced) = route_status(route, &key, parents, &self.issues, self.cx);
            self.updates.extend(update);
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
        }
        parents_of_pool
    }

    /// The pools, with `parents_of_pool` from [`Self::routes`], and the models of pools our
    /// Gateways route to.
    fn pools_and_models(
        &mut self,
        parents_of_pool: &BTreeMap<ObjectKey, BTreeMap<ObjectKey, bool>>,
    ) {
        let services: BTreeSet<ObjectKey> = self
            .objects
            .iter()
            .filter(|d| matches!(d.object, Object::Service(_)))
            .map(|d| d.object.key())
            .collect();
        let mut served_pools = BTreeSet::new();
        for document in self.objects.iter() {
            let key = document.object.key();
            let parents = parents_of_pool.get(&key);
            if let Some(update) = pool_status(
                &document.object,
                &key,
                parents,
                &services,
                self.snapshot,
                &self.issues,
                self.cx,
            ) {
                if parents.is_some_and(|p| !p.is_empty()) {
                    served_pools.insert(key);
                }
                self.updates.push(update);
            }
        }
        for document in self.objects.iter() {
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
                self.updates
                    .push(model_status(model, &key, &self.issues, self.cx));
            }
        }
        // Objectives and rewrites; of two with the same name in both groups only the llm-d.ai
        // one applies, and only it gets a status.
        let preferred: BTreeSet<ObjectKey> = self
            .objects
            .iter()
            .filter(|d| match &d.object {
                Object::Objective(o) => o.group == ApixGroup::LlmD,
                Object::Rewrite(r) => r.group == ApixGroup::LlmD,
                _ => false,
            })
            .map(|d| d.object.key())
            .collect();
        for document in self.objects.iter() {
            let (group, pool_ref) = match &document.object {
                Object::Objective(o) => (o.group, &o.spec.pool_ref),
                Object::Rewrite(r) => (r.group, &r.spec.pool_ref),
                _ => continue,
            };
            let key = document.object.key();
            if group == ApixGroup::XK8s && preferred.contains(&key) {
                continue;
            }
            let pool = ObjectKey::new(
                Kind::InferencePool,
                key.namespace.clone(),
                pool_ref.name.clone(),
            );
            if served_pools.contains(&pool)
                && let Some(update) = apix_status(&document.object, &key, &self.issues, self.cx)
            {
                self.updates.push(update);
            }
        }
    }
}

#[cfg(test)]
mod tests;
