//! One reflector per kind: kube-runtime's self-healing `watcher` feeding a `reflector` store, and a
//! wake-up for the rebuild loop when something that matters for routing changed.
//!
//! The watcher lists, then watches from the list's resourceVersion (with bookmarks); a `410 Gone`
//! or a broken connection makes it relist with backoff, and the store swaps in the complete new
//! view only when the relist is done, so a rebuild never sees half a list. While the API server is
//! unreachable the stores keep their last view.
//!
//! Not every event wakes the rebuild: each object's routing-relevant content (the object without
//! `resourceVersion`, `managedFields` and, for kinds whose status the gateway writes, `status`) is
//! hashed, and only a changed hash, a deletion or a completed relist counts. So the gateway's own
//! status writes, and pod status churn that does not touch readiness or addresses, cost nothing.
//! (Another controller's status write does not wake it either; the status writer notices the newer
//! resourceVersion in the store, or gets `409 Conflict`, and asks for the recompute itself.)
//! Pods are slimmed to what routing reads (labels, container ports, phase, IP, Ready) before they
//! are stored.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodStatus, Service};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use xxhash_rust::xxh3::xxh3_64;

use super::crds::EnvoyBackendTrafficPolicy;
use super::status::StatusKind;
use crate::config::crds::apix::{ApixGroup, ApixObject, llmd, xk8s};
use crate::config::crds::{v1, v1alpha2};
use crate::config::objects::{
    BackendTrafficPolicy, BackendTrafficPolicySpec, PolicyHttpTimeout, PolicyTimeout,
};
use crate::config::{Object, ObjectSet};

/// What the reflectors tell the rebuild loop.
#[derive(Debug, Default)]
pub struct Changes {
    /// Woken (with a stored permit) when something that matters changed.
    pub notify: Notify,
    /// Kinds whose first list is complete.
    synced: Mutex<BTreeSet<&'static str>>,
}

impl Changes {
    /// Kinds among `kinds` whose first list is not complete yet.
    pub fn unsynced(&self, kinds: &[&'static str]) -> Vec<&'static str> {
        let synced = self.synced.lock();
        kinds
            .iter()
            .copied()
            .filter(|k| !synced.contains(k))
            .collect()
    }
}

/// The reflector stores of every kind the gateway reads.
#[derive(Clone)]
pub struct Stores {
    gateway_classes: Store<GatewayClass>,
    gateways: Store<Gateway>,
    routes: Store<HttpRoute>,
    services: Store<Service>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    pools_v1alpha2: Store<v1alpha2::InferencePool>,
    pools_v1: Store<v1::InferencePool>,
    models: Store<v1alpha2::InferenceModel>,
    objectives_llmd: Option<Store<llmd::InferenceObjective>>,
    objectives_xk8s: Option<Store<xk8s::InferenceObjective>>,
    rewrites_llmd: Option<Store<llmd::InferenceModelRewrite>>,
    rewrites_xk8s: Option<Store<xk8s::InferenceModelRewrite>>,
    policies: Option<Store<EnvoyBackendTrafficPolicy>>,
    /// Kind names of every store, for sync reporting.
    pub kinds: Vec<&'static str>,
}

impl Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("kinds", &self.kinds)
            .finish()
    }
}

/// The kind name of Envoy's policy, which is watched only when its CRD is installed.
pub const POLICY_KIND: &str = "BackendTrafficPolicy";

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

impl Stores {
    /// Start every reflector on the current runtime. Envoy's BackendTrafficPolicy and the
    /// InferenceObjective and InferenceModelRewrite kinds of both groups are watched only when
    /// listing them works (their CRD is installed and RBAC allows it) when the gateway starts; a
    /// CRD installed later is read after a restart.
    pub async fn start(
        client: &Client,
        namespace: Option<&str>,
        watch_timeout: std::time::Duration,
        changes: &Arc<Changes>,
    ) -> (Stores, Vec<JoinHandle<()>>) {
        let mut tasks = Vec::new();
        let mut kinds = Vec::new();
        let seconds = u32::try_from(watch_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
        let config = watcher::Config::default().timeout(seconds);
        macro_rules! reflect {
            ($api:expr, $kind:expr, $status:expr, $slim:expr) => {{
                let (store, task) =
                    spawn($api, $kind, $status, $slim, &config, Arc::clone(changes));
                tasks.push(task);
                kinds.push($kind);
                store
            }};
        }
        let probe = kube::api::ListParams::default().limit(1);
        // A kind whose CRD may be missing is watched only when listing it works; `why` says
        // what the gateway does without it.
        macro_rules! optional {
            ($type:ty, $kind:expr, $status:expr, $why:expr) => {{
                let optional_api: Api<$type> = api(client, namespace);
                match optional_api.list_metadata(&probe).await {
                    Ok(_) => Some(reflect!(optional_api, $kind, $status, slim)),
                    Err(kube::Error::Api(status)) if status.code == 404 || status.code == 403 => {
                        tracing::info!(target: "kube", kind = $kind, code = status.code, "cannot be listed (CRD not installed, or no RBAC grant); {}", $why);
                        None
                    }
                    Err(error) => {
                        // The API server is not answering yet: watch it anyway; the watcher
                        // retries.
                        tracing::warn!(target: "kube", kind = $kind, %error, "probing failed; watching it anyway");
                        Some(reflect!(optional_api, $kind, $status, slim))
                    }
                }
            }};
        }
        let policies = optional!(
            EnvoyBackendTrafficPolicy,
            POLICY_KIND,
            false,
            "request timeouts come from HTTPRoutes and --request-timeout only"
        );
        let objectives_llmd = optional!(
            llmd::InferenceObjective,
            "InferenceObjective (llm-d.ai)",
            true,
            "objectives of this group are not read"
        );
        let objectives_xk8s = optional!(
            xk8s::InferenceObjective,
            "InferenceObjective (inference.networking.x-k8s.io)",
            true,
            "objectives of this group are not read"
        );
        let rewrites_llmd = optional!(
            llmd::InferenceModelRewrite,
            "InferenceModelRewrite (llm-d.ai)",
            true,
            "rewrites of this group are not read"
        );
        let rewrites_xk8s = optional!(
            xk8s::InferenceModelRewrite,
            "InferenceModelRewrite (inference.networking.x-k8s.io)",
            true,
            "rewrites of this group are not read"
        );
        let stores = Stores {
            gateway_classes: reflect!(
                Api::<GatewayClass>::all(client.clone()),
                "GatewayClass",
                true,
                slim
            ),
            gateways: reflect!(api(client, namespace), "Gateway", true, slim),
            routes: reflect!(api(client, namespace), "HTTPRoute", true, slim),
            services: reflect!(api(client, namespace), "Service", false, slim),
            pods: reflect!(api(client, namespace), "Pod", false, slim_pod),
            namespaces: reflect!(
                Api::<Namespace>::all(client.clone()),
                "Namespace",
                true,
                slim
            ),
            pools_v1alpha2: reflect!(
                api(client, namespace),
                "InferencePool (v1alpha2)",
                true,
                slim
            ),
            pools_v1: reflect!(api(client, namespace), "InferencePool (v1)", true, slim),
            models: reflect!(api(client, namespace), "InferenceModel", true, slim),
            objectives_llmd,
            objectives_xk8s,
            rewrites_llmd,
            rewrites_xk8s,
            policies,
            kinds,
        };
        (stores, tasks)
    }

    /// Every stored object, oldest first (creation time, then namespace and name), as the
    /// [`ObjectSet`] the snapshot builder reads. Source order matters to the builder only for
    /// ties, so this order makes "oldest wins" hold across replicas and restarts.
    pub fn object_set(&self) -> ObjectSet {
        let mut objects: Vec<Object> = Vec::new();
        fn cloned<K>(store: &Store<K>) -> impl Iterator<Item = Box<K>> + '_
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            store.state().into_iter().map(|o| Box::new((*o).clone()))
        }
        objects.extend(cloned(&self.gateway_classes).map(Object::GatewayClass));
        objects.extend(cloned(&self.gateways).map(Object::Gateway));
        objects.extend(cloned(&self.routes).map(Object::HttpRoute));
        objects.extend(cloned(&self.services).map(Object::Service));
        objects.extend(cloned(&self.pods).map(Object::Pod));
        objects.extend(cloned(&self.namespaces).map(Object::Namespace));
        objects.extend(cloned(&self.pools_v1alpha2).map(Object::PoolV1Alpha2));
        objects.extend(cloned(&self.pools_v1).map(Object::PoolV1));
        objects.extend(cloned(&self.models).map(Object::InferenceModel));
        fn apix<K, S>(store: &Option<Store<K>>) -> Vec<Box<ApixObject<S>>>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
            ApixObject<S>: From<K>,
        {
            store
                .iter()
                .flat_map(|s| s.state())
                .map(|o| Box::new((*o).clone().into()))
                .collect()
        }
        objects.extend(
            apix(&self.objectives_llmd)
                .into_iter()
                .map(Object::Objective),
        );
        objects.extend(
            apix(&self.objectives_xk8s)
                .into_iter()
                .map(Object::Objective),
        );
        objects.extend(apix(&self.rewrites_llmd).into_iter().map(Object::Rewrite));
        objects.extend(apix(&self.rewrites_xk8s).into_iter().map(Object::Rewrite));
        if let Some(policies) = &self.policies {
            objects.extend(
                policies
                    .state()
                    .iter()
                    .map(|p| Object::BackendTrafficPolicy(Box::new(policy(p)))),
            );
        }
        objects.sort_by_cached_key(|o| {
            let meta = o.metadata();
            (
                meta.creation_timestamp.as_ref().map(|t| t.0),
                meta.namespace.clone(),
                meta.name.clone(),
            )
        });
        let mut set = ObjectSet::default();
        for object in objects {
            set.push(object);
        }
        set
    }

    /// The stored `status` and `metadata.resourceVersion` of an object whose status the gateway
    /// writes; `None` when the object is not in the store.
    pub fn status(&self, kind: StatusKind, namespace: &str, name: &str) -> Option<StoredStatus> {
        fn find<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<StoredStatus>
        where
            K: Resource<DynamicType = ()> + Serialize + Clone + 'static,
        {
            let mut key = reflector::ObjectRef::new(name);
            if !namespace.is_empty() {
                key = key.within(namespace);
            }
            let object = store.get(&key)?;
            let resource_version = object.meta().resource_version.clone();
            let value = serde_json::to_value(&*object).ok()?;
            Some(StoredStatus {
                resource_version,
                status: value.get("status").cloned().unwrap_or(Value::Null),
            })
        }
        match kind {
            StatusKind::GatewayClass => find(&self.gateway_classes, "", name),
            StatusKind::Gateway => find(&self.gateways, namespace, name),
            StatusKind::HttpRoute => find(&self.routes, namespace, name),
            StatusKind::PoolV1Alpha2 => find(&self.pools_v1alpha2, namespace, name),
            StatusKind::PoolV1 => find(&self.pools_v1, namespace, name),
            StatusKind::InferenceModel => find(&self.models, namespace, name),
            StatusKind::Objective(ApixGroup::LlmD) => {
                find(self.objectives_llmd.as_ref()?, namespace, name)
            }
            StatusKind::Objective(ApixGroup::XK8s) => {
                find(self.objectives_xk8s.as_ref()?, namespace, name)
            }
            StatusKind::Rewrite(ApixGroup::LlmD) => {
                find(self.rewrites_llmd.as_ref()?, namespace, name)
            }
            StatusKind::Rewrite(ApixGroup::XK8s) => {
                find(self.rewrites_xk8s.as_ref()?, namespace, name)
            }
        }
    }
}

/// An object's status as the store last saw it, and the version of the object it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredStatus {
    /// `metadata.resourceVersion` of the stored object.
    pub resource_version: Option<String>,
    /// Its `.status` as JSON (`Null` when it has none).
    pub status: Value,
}

/// Envoy's policy as the builder's type.
fn policy(p: &EnvoyBackendTrafficPolicy) -> BackendTrafficPolicy {
    let request_timeout = p
        .spec
        .timeout
        .as_ref()
        .and_then(|t| t.get("http"))
        .and_then(|h| h.get("requestTimeout"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    BackendTrafficPolicy {
        metadata: p.metadata.clone(),
        spec: BackendTrafficPolicySpec {
            target_ref: p.spec.target_ref.as_ref().map(Into::into),
            target_refs: p
                .spec
                .target_refs
                .iter()
                .flatten()
                .map(Into::into)
                .collect(),
            timeout: p.spec.timeout.as_ref().map(|_| PolicyTimeout {
                http: Some(PolicyHttpTimeout { request_timeout }),
            }),
        },
    }
}

/// Drop what no kind needs: managed fields (often most of an object's bytes).
fn slim<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Reduce a pod to what routing reads: labels, container ports (named Service target ports),
/// phase, pod IP, deletion and the Ready condition.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    if let Some(spec) = pod.spec.take() {
        let containers = spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                ..Container::default()
            })
            .collect();
        pod.spec = Some(PodSpec {
            containers,
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            conditions: status
                .conditions
                .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
            ..PodStatus::default()
        });
    }
}

/// A hash of what matters for routing: the object without resourceVersion and, when
/// `ignore_status`, without status.
fn fingerprint<K: Serialize>(object: &K, ignore_status: bool) -> u64 {
    let Ok(mut value) = serde_json::to_value(object) else {
        return 0;
    };
    if let Some(map) = value.as_object_mut() {
        if ignore_status {
            map.remove("status");
        }
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
    }
    xxh3_64(value.to_string().as_bytes())
}

fn object_key<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Start the watcher and reflector of one kind; the task runs until aborted.
fn spawn<K>(
    api: Api<K>,
    kind: &'static str,
    ignore_status: bool,
    slim: fn(&mut K),
    config: &watcher::Config,
    changes: Arc<Changes>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync,
    K: 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(api, config.clone())
        .default_backoff()
        .modify(slim)
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut relisting: HashMap<String, u64> = HashMap::new();
        let mut failing = false;
        while let Some(event) = stream.next().await {
            let changed = match event {
                Ok(Event::Apply(object)) => {
                    let hash = fingerprint(&object, ignore_status);
                    seen.insert(object_key(&object), hash) != Some(hash)
                }
                Ok(Event::Delete(object)) => {
                    seen.remove(&object_key(&object));
                    true
                }
                Ok(Event::Init) => {
                    relisting.clear();
                    false
                }
                Ok(Event::InitApply(object)) => {
                    relisting.insert(object_key(&object), fingerprint(&object, ignore_status));
                    false
                }
                Ok(Event::InitDone) => {
                    let changed = relisting != seen;
                    seen = std::mem::take(&mut relisting);
                    let first = changes.synced.lock().insert(kind);
                    if first {
                        tracing::debug!(target: "kube", kind, objects = seen.len(), "first list complete");
                    } else {
                        tracing::info!(target: "kube", kind, objects = seen.len(), changed, "relisted");
                    }
                    // The first list always counts: the initial sync waits on it.
                    changed || first
                }
                Err(error) => {
                    if failing {
                        tracing::debug!(target: "kube", kind, %error, "watch still failing");
                    } else {
                        tracing::warn!(target: "kube", kind, %error, "watch failed; serving the last known objects and retrying with backoff");
                    }
                    failing = true;
                    continue;
                }
            };
            if failing {
                tracing::info!(target: "kube", kind, "watch recovered");
                failing = false;
            }
            if changed {
                changes.notify.notify_one();
            }
        }
    });
    (reader, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_keep_only_what_routing_reads() {
        let mut pod: Pod = serde_yaml::from_str(
            "metadata: {name: a, labels: {app: q}, annotations: {big: x}}
spec:
  containers: [{name: c, image: vllm, args: [serve], ports: [{name: http, containerPort: 8000}]}]
  nodeName: n1
status:
  phase: Running
  podIP: 10.0.0.1
  hostIP: 192.0.2.1
  conditions: [{type: Ready, status: 'True'}, {type: PodScheduled, status: 'True'}]
  containerStatuses: [{name: c, image: vllm, imageID: x, ready: true, restartCount: 3}]",
        )
        .unwrap();
        slim_pod(&mut pod);
        let value = serde_json::to_value(&pod).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a", "labels": {"app": "q"}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}]},
                "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
            })
        );
        assert!(crate::snapshot::backends::pod_is_ready(&pod));
    }

    #[test]
    fn fingerprints_ignore_resource_version_and_optionally_status() {
        let a: Pod = serde_yaml::from_str(
            "metadata: {name: a, resourceVersion: '1'}\nstatus: {podIP: 10.0.0.1}",
        )
        .unwrap();
        let mut b = a.clone();
        b.metadata.resource_version = Some("2".into());
        assert_eq!(fingerprint(&a, false), fingerprint(&b, false));
        b.status.as_mut().unwrap().pod_ip = Some("10.0.0.2".into());
        assert_ne!(fingerprint(&a, false), fingerprint(&b, false));
        assert_eq!(fingerprint(&a, true), fingerprint(&b, true));
    }
}
