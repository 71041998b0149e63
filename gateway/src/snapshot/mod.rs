//! The routable snapshot: listeners and their routes, Service backends and InferencePools.
//!
//! A source (file or kube) produces an [`crate::config::ObjectSet`]; [`build()`] turns it into an
//! immutable [`Snapshot`] plus the problems it found. The snapshot is published through
//! [`SnapshotStore`] (an `ArcSwap`): the request path does one `load` per request and never
//! locks. Runtime state that must survive a rebuild (in-flight counts, scraped metrics, strategy
//! instances with their indexes) is carried over from the previous snapshot by [`build()`].
//!
//! The snapshot also records what the build decided that the request path does not need but the
//! status writer reports ([`RouteParent`]), so that nothing resolves the objects a second time.

pub mod backends;
pub mod build;
pub mod endpoint;
pub mod models;
pub mod picker;
pub mod routes;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use plugins::registry::Resolution;
use plugins::{Strategy, StrategyConfig};

pub use build::{BuildOptions, build};
pub use endpoint::{Endpoint, EndpointSample, HealthPolicy, InFlight, ScrapedMetrics};
pub use models::{ModelEntry, Objective, PoolModels, RewriteRule, Rewrites, TargetModel};
pub use routes::{ListenerRoutes, PortRoutes, RequestParts, RouteEntry};

use crate::config::{IssueReason, ObjectKey};

/// A Service port as a backend: round-robin over the ready pods the Service selects.
pub struct ServiceBackend {
    /// The Service.
    pub key: ObjectKey,
    /// The Service port the route names.
    pub port: u16,
    /// Ready endpoints (`podIP:targetPort`), sorted.
    pub endpoints: Vec<SocketAddr>,
    /// Round-robin selection over `endpoints` (pingora-load-balancing), absent when empty.
    pub balancer: Option<Arc<LoadBalancer<RoundRobin>>>,
}

impl std::fmt::Debug for ServiceBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBackend")
            .field("key", &self.key)
            .field("port", &self.port)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl ServiceBackend {
    /// The next endpoint in round-robin order that is not in `tried`; `None` when every endpoint
    /// has been tried (or there is none).
    pub fn next_untried(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let backend =
            self.balancer
                .as_ref()?
                .select_with(b"", self.endpoints.len(), |b, healthy| {
                    healthy && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
                })?;
        backend.addr.as_inet().copied()
    }
}

/// An InferencePool: its endpoints, its strategy and the models it serves.
pub struct Pool {
    /// The pool object.
    pub key: ObjectKey,
    /// `namespace/name`, formatted once for metric labels, logs and messages.
    pub name: String,
    /// Its API version (`inference.networking.x-k8s.io/v1alpha2` or `inference.networking.k8s.io/v1`).
    pub api_version: &'static str,
    /// The strategy name from the routing-strategy annotation (`DEFAULT` when absent).
    pub strategy_name: String,
    /// Strategy parameters from the pool's annotations.
    pub strategy_config: StrategyConfig,
    /// What the name resolved to in the registry.
    pub resolution: Resolution,
    /// The strategy instance (kept across rebuilds while name and parameters stay the same).
    pub strategy: Arc<dyn Strategy>,
    /// Ready endpoints, sorted by address.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Models by the name clients send (InferenceModels).
    pub models: HashMap<String, Arc<ModelEntry>>,
    /// Model rewrites (InferenceModelRewrites), merged.
    pub rewrites: Rewrites,
    /// Objectives by name (InferenceObjectives).
    pub objectives: HashMap<String, Arc<Objective>>,
    /// The endpoint picker the pool names, as written.
    pub picker: Option<backends::PickerRef>,
    /// The external picker requests are routed by ([`backends::PickerRef::external`]): resolved,
    /// or why it cannot be (requests get 500). `None`: the built-in strategy routes the pool.
    pub picker_binding: Option<picker::PickerResolution>,
    /// Flow-control settings from the pool's annotations.
    pub flow: crate::flow::FlowSettings,
    /// Where the pool's model servers publish KV-cache events, when its annotations enable them.
    pub kv_events: Option<crate::kv_events::KvEventsSettings>,
    /// Where requests wait while the pool is saturated (kept across rebuilds, so nothing queued
    /// is lost when the configuration changes).
    pub queue: Arc<crate::flow::PoolQueue>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("key", &self.key)
            .field("strategy", &self.resolution)
            .field("endpoints", &self.endpoints.len())
            .field("models", &self.models.len())
            .finish()
    }
}

impl Pool {
    /// How the pool serves a request for `model` (`None`: the body names no model): the
    /// InferenceModel that declares the name and the rewrite rule that applies, if any.
    ///
    /// A name is unknown (`Err`) when the pool declares InferenceModels, none declares it and no
    /// rewrite rule matches it; a request without a model is unknown unless a generic rewrite
    /// rule gives it one. A pool without InferenceModels passes every name through.
    pub fn model(&self, model: Option<&str>) -> Result<ServedModel<'_>, UnknownModel> {
        let entry = model.and_then(|m| self.models.get(m));
        let rewrite = self.rewrites.rule_for(model);
        let known = match model {
            None => rewrite.is_some(),
            Some(_) => entry.is_some() || rewrite.is_some() || self.models.is_empty(),
        };
        if known {
            Ok(ServedModel { entry, rewrite })
        } else {
            Err(UnknownModel)
        }
    }

    /// The priority of a request that names `objective` and whose model resolved to `entry`:
    /// the objective's when the pool has it, else the InferenceModel's criticality, else `0`.
    pub fn priority(&self, objective: Option<&str>, entry: Option<&ModelEntry>) -> i32 {
        objective
            .and_then(|name| self.objectives.get(name))
            .map(|o| o.priority)
            .or_else(|| entry.map(|e| e.criticality.priority()))
            .unwrap_or(0)
    }
}

/// What serves a requested model in a pool (see [`Pool::model`]).
#[derive(Debug, Clone, Copy)]
pub struct ServedModel<'a> {
    /// The InferenceModel that declares the name.
    pub entry: Option<&'a Arc<ModelEntry>>,
    /// The rewrite rule that applies to it.
    pub rewrite: Option<&'a Arc<RewriteRule>>,
}

/// The requested model is not served by the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownModel;

/// Where a share of a rule's traffic goes.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A Service port.
    Service(Arc<ServiceBackend>),
    /// An InferencePool.
    Pool(Arc<Pool>),
    /// A reference that cannot be resolved; its share of traffic gets 500.
    Invalid(Arc<str>),
}

/// A backend with its weight.
#[derive(Debug, Clone)]
pub struct WeightedBackend {
    /// Relative weight (0 sends nothing).
    pub weight: u32,
    /// The backend.
    pub backend: Backend,
}

/// What a matching rule does.
#[derive(Debug, Clone)]
pub struct RuleAction {
    /// Weighted backends.
    pub backends: Vec<WeightedBackend>,
    /// Sum of weights.
    pub total_weight: u64,
    /// Whole-request timeout; `None` means none (`0s`).
    pub timeout: Option<Duration>,
}

impl RuleAction {
    /// A rule whose every request gets 500 for `reason`.
    pub fn invalid(reason: &str) -> Self {
        RuleAction {
            backends: vec![WeightedBackend {
                weight: 1,
                backend: Backend::Invalid(reason.into()),
            }],
            total_weight: 1,
            timeout: None,
        }
    }

    /// Draw a backend by weight. `None` when no backend has weight (the request gets 500).
    pub fn pick_backend(&self) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        let mut roll = fastrand::u64(0..self.total_weight);
        for choice in &self.backends {
            let weight = u64::from(choice.weight);
            if roll < weight {
                return Some(&choice.backend);
            }
            roll -= weight;
        }
        None
    }
}

/// What the build made of one `parentRef` of an HTTPRoute that names a Gateway (a parentRef of
/// another kind is never ours and is not recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteParent {
    /// Its position in the route's `spec.parentRefs`.
    pub index: usize,
    /// The Gateway it names, its namespace defaulted to the route's.
    pub gateway: ObjectKey,
    /// Whether the route attached through it.
    pub attachment: Attachment,
}

/// Whether a route attached to a Gateway through one parentRef.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// The Gateway is not ours: its GatewayClass names another controller, or it does not exist.
    NotOurs,
    /// One of our Gateways, none of whose listeners is served (none is a valid HTTP listener).
    /// Nothing attaches, and nothing refuses the route either: no issue is reported for it.
    NoServedListener,
    /// Attached to at least one listener.
    Attached,
    /// Refused, for this reason (the route's issues say more).
    Refused(IssueReason),
}

impl Attachment {
    /// Whether the Gateway is ours, so the route's status for it is ours to write.
    pub fn is_ours(self) -> bool {
        self != Attachment::NotOurs
    }
}

/// Everything the request path needs, immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every published snapshot.
    pub generation: u64,
    /// Routes by listening port.
    pub ports: BTreeMap<u16, PortRoutes>,
    /// Pools by key.
    pub pools: BTreeMap<ObjectKey, Arc<Pool>>,
    /// Service backends by Service key and port.
    pub services: BTreeMap<(ObjectKey, u16), Arc<ServiceBackend>>,
    /// For status: every HTTPRoute's Gateway parentRefs, in order, and what became of them.
    pub route_parents: BTreeMap<ObjectKey, Vec<RouteParent>>,
}

impl Snapshot {
    /// The routes of a listening port.
    pub fn port(&self, port: u16) -> Option<&PortRoutes> {
        self.ports.get(&port)
    }
}

/// The published snapshot.
#[derive(Debug)]
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
}

impl SnapshotStore {
    /// A store holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publish `snapshot`, stamping it with the next generation.
    pub fn publish(&self, mut snapshot: Snapshot) {
        snapshot.generation = self.current.load().generation + 1;
        self.current.store(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_backends_follow_weights_and_zero_weight_gets_nothing() {
        let action = RuleAction {
            backends: vec![
                WeightedBackend {
                    weight: 3,
                    backend: Backend::Invalid("a".into()),
                },
                WeightedBackend {
                    weight: 0,
                    backend: Backend::Invalid("never".into()),
                },
                WeightedBackend {
                    weight: 1,
                    backend: Backend::Invalid("b".into()),
                },
            ],
            total_weight: 4,
            timeout: None,
        };
        let mut a = 0;
        for _ in 0..4000 {
            match action.pick_backend() {
                Some(Backend::Invalid(r)) if &**r == "a" => a += 1,
                Some(Backend::Invalid(r)) => assert_eq!(&**r, "b"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((2800..3200).contains(&a), "{a}");
        let empty = RuleAction {
            backends: vec![],
            total_weight: 0,
            timeout: None,
        };
        assert!(empty.pick_backend().is_none());
    }
}
