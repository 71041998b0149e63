//! From objects to a [`Snapshot`]: which Gateways are ours, their listeners, the HTTPRoutes that
//! attach to them, and the backends those routes name.
//!
//! The rules are the Gateway API's: a Gateway is ours when its class names our controller; a route
//! attaches to listeners through `parentRefs` (`sectionName`, `port`), subject to
//! `allowedRoutes` and hostname intersection; a backend that cannot be resolved still takes its
//! share of traffic and answers 500. Every problem is collected as a [`ConfigIssue`].
//!
//! The passes, one module each: `index` sorts the objects by kind, `listeners` finds our
//! Gateways' listeners, `attach` attaches routes to them, `matches` and `actions` turn a rule
//! into matches and weighted backends, `models` groups InferenceModels by pool, `objectives`
//! InferenceObjectives and InferenceModelRewrites. Pools and Service
//! endpoints are built by [`super::backends`]. The build reads objects only: it does no I/O and
//! writes no status.

mod actions;
mod attach;
mod index;
mod listeners;
mod matches;
mod models;
mod objectives;

use std::sync::Arc;
use std::time::Duration;

use plugins::Registry;

use super::Snapshot;
use super::backends;
use super::backends::PickerRef;
use super::models::PoolModels;
use super::picker::{PickerBinding, PickerResolution};
use crate::config::{ConfigIssue, ObjectSet};
use index::Index;
use listeners::ListenerBuild;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const INFERENCE_GROUPS: [&str; 2] = [
    "inference.networking.x-k8s.io",
    "inference.networking.k8s.io",
];

/// Settings that are not part of the objects.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions<'a> {
    /// GatewayClasses whose `spec.controllerName` equals this are ours.
    pub controller_name: &'a str,
    /// Strategy factories.
    pub registry: &'a Registry,
    /// Whole-request timeout when neither the rule nor a BackendTrafficPolicy sets one.
    pub default_request_timeout: Option<Duration>,
    /// How the gateway talks to external endpoint pickers.
    pub picker: &'a epp::ClientSettings,
    /// Whether a configuration without a listener of ours is an error. Not when the process
    /// serves only as an endpoint picker (`--epp-pool`), where another proxy owns the Gateways.
    pub listeners_required: bool,
}

/// Build a snapshot from `objects`. `previous` donates runtime state (endpoint counters, strategy
/// instances). The snapshot is usable only when no returned issue is an error.
pub fn build(
    objects: &ObjectSet,
    options: &BuildOptions<'_>,
    previous: Option<&Snapshot>,
) -> (Snapshot, Vec<ConfigIssue>) {
    let mut issues = Vec::new();
    let index = index::index(objects, &mut issues);
    let mut snapshot = Snapshot::default();
    build_pools(&index, options, previous, &mut snapshot, &mut issues);
    let mut listeners = listeners::gateway_listeners(&index, options, &mut issues);
    for route in &index.routes {
        attach::attach_route(route, &index, &mut listeners, &mut snapshot, &mut issues);
    }
    publish_listeners(listeners.built, &mut snapshot);
    (snapshot, issues)
}

/// The InferencePools with their models.
fn build_pools(
    index: &Index<'_>,
    options: &BuildOptions<'_>,
    previous: Option<&Snapshot>,
    snapshot: &mut Snapshot,
    issues: &mut Vec<ConfigIssue>,
) {
    let pool_exists = |key: &_| index.pools.iter().any(|p| &p.key == key);
    let mut models = models::models_by_pool(&index.models, pool_exists, issues);
    let mut objectives = objectives::objectives_by_pool(&index.objectives, pool_exists, issues);
    let mut rewrites = objectives::rewrites_by_pool(&index.rewrites, pool_exists, issues);
    for spec in &index.pools {
        let pool_models = PoolModels {
            models: models.remove(&spec.key).unwrap_or_default(),
            rewrites: rewrites.remove(&spec.key).unwrap_or_default(),
            objectives: objectives.remove(&spec.key).unwrap_or_default(),
        };
        let pods = index.pods_in(&spec.key.namespace);
        let pool =
            backends::build_pool(spec, pods, pool_models, options.registry, previous, issues);
        if let Some(mut pool) = pool {
            let previous_binding = previous
                .and_then(|s| s.pools.get(&spec.key))
                .and_then(|p| p.picker_binding.as_ref()?.as_ref().ok());
            pool.picker_binding = spec
                .picker
                .as_ref()
                .filter(|p| p.is_external())
                .map(|p| picker_binding(&spec.key, p, index, options, previous_binding));
            snapshot.pools.insert(spec.key.clone(), Arc::new(pool));
        }
    }
}

/// The external picker `picker` of pool `pool`: its Service's ready endpoints for the named port,
/// or why requests cannot be routed (the Service is not a core Service, has no such port or does
/// not exist). Reported as the pool's `ResolvedRefs` condition by the status writer.
fn picker_binding(
    pool: &crate::config::ObjectKey,
    picker: &PickerRef,
    index: &Index<'_>,
    options: &BuildOptions<'_>,
    previous: Option<&Arc<PickerBinding>>,
) -> PickerResolution {
    if !(picker.kind == "Service" && picker.group.is_empty()) {
        return Err(format!(
            "the endpoint picker must be a core Service, not {} in group {:?}",
            picker.kind, picker.group
        )
        .into());
    }
    let port = picker
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| Arc::<str>::from("the endpoint picker Service needs a port (1-65535)"))?;
    let key = crate::config::ObjectKey::new(
        crate::config::Kind::Service,
        pool.namespace.clone(),
        picker.name.clone(),
    );
    let service = index.services.get(&key).ok_or_else(|| {
        Arc::<str>::from(format!(
            "endpoint picker Service {} does not exist",
            key.qualified_name()
        ))
    })?;
    let backend =
        backends::service_backend(&key, service.object, port, index.pods_in(&key.namespace))
            .map_err(|reason| Arc::<str>::from(format!("endpoint picker: {reason}")))?;
    let binding = PickerBinding::new(
        key,
        port,
        backend.endpoints,
        picker.failure_mode,
        options.picker.clone(),
    );
    Ok(Arc::new(match previous {
        Some(previous) => binding.reuse(previous),
        None => binding,
    }))
}

/// Sort every listener's routes by precedence and file the listeners by port.
fn publish_listeners(listeners: Vec<ListenerBuild>, snapshot: &mut Snapshot) {
    for listener in listeners {
        let mut routes = listener.routes;
        routes
            .entries
            .sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        snapshot
            .ports
            .entry(listener.port)
            .or_default()
            .listeners
            .push(routes);
    }
    for port in snapshot.ports.values_mut() {
        port.sort();
    }
}

/// Also read by `kubernetes::status`'s tests, which share the fixtures.
#[cfg(test)]
pub(crate) mod tests;
