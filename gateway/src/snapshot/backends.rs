//! Building backends from objects: ready pods, Service endpoints and InferencePools (with the
//! models the build grouped for them).
//!
//! A pod is an endpoint when it is Ready, has a pod IP, and is neither terminating nor finished;
//! this is what the kube source will read from real pods and what the file source's `Pod` objects
//! describe. Selectors are label maps that must all match. Nothing here routes or attaches.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pingora::lb::LoadBalancer;
use plugins::{EndpointId, Registry, STRATEGY_PARAM_PREFIX, Strategy, StrategyConfig};

use super::endpoint::Endpoint;
use super::models::ModelEntry;
use super::{Pool, ServiceBackend, Snapshot};
use crate::config::crds::{v1, v1alpha2};
use crate::config::{ConfigIssue, ObjectKey, Origin};
use crate::engine::Engine;

/// Pool annotation choosing the metric dialect of its model servers (ACK's key).
pub const MODEL_SERVER_RUNTIME_ANNOTATION: &str =
    "inference.networking.x-k8s.io/model-server-runtime";
/// Pod label choosing the metric dialect of one model server (the Inference Extension's key).
pub const ENGINE_TYPE_LABEL: &str = "inference.networking.k8s.io/engine-type";

/// The routing-strategy annotation's value when it is absent.
pub const DEFAULT_STRATEGY: &str = "DEFAULT";

/// Whether a pod can take traffic.
pub fn pod_is_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return false;
    }
    status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Whether `labels` carry every entry of a non-empty `selector`.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata
            .namespace
            .as_deref()
            .unwrap_or(crate::config::objects::DEFAULT_NAMESPACE),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Ready pods of one namespace matching `selector`.
fn selected_pods<'a>(
    pods: &'a [&'a Pod],
    selector: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = &'a Pod> + 'a {
    pods.iter().copied().filter(move |pod| {
        pod_is_ready(pod) && selector_matches(selector, pod.metadata.labels.as_ref())
    })
}

/// The endpoints of Service port `port`, or why there are none.
pub fn service_backend(
    key: &ObjectKey,
    service: &Service,
    port: u16,
    pods: &[&Pod],
) -> Result<ServiceBackend, String> {
    let spec = service.spec.as_ref().ok_or("the Service has no spec")?;
    let service_port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == i32::from(port))
        .ok_or_else(|| format!("Service {} has no port {port}", key.qualified_name()))?;
    let selector = spec.selector.clone().unwrap_or_default();
    if selector.is_empty() {
        return Err(format!(
            "Service {} has no selector; only selector-based Services are supported",
            key.qualified_name()
        ));
    }
    let mut endpoints: Vec<SocketAddr> = selected_pods(pods, &selector)
        .filter_map(|pod| {
            let ip = pod_ip(pod)?;
            let target = match &service_port.target_port {
                None => Some(port),
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(name)) => named_container_port(pod, name),
            }?;
            Some(SocketAddr::new(ip, target))
        })
        .collect();
    endpoints.sort();
    endpoints.dedup();
    let balancer = if endpoints.is_empty() {
        None
    } else {
        let lb = LoadBalancer::try_from_iter(endpoints.iter().map(|a| a.to_string()))
            .map_err(|e| format!("cannot build a balancer: {e}"))?;
        Some(Arc::new(lb))
    };
    Ok(ServiceBackend {
        key: key.clone(),
        port,
        endpoints,
        balancer,
    })
}

fn named_container_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// An InferencePool in either API version, reduced to what routing needs.
#[derive(Debug, Clone)]
pub struct PoolSpec<'a> {
    /// The pool.
    pub key: ObjectKey,
    /// Where it was defined.
    pub origin: Option<&'a Origin>,
    /// Its API version.
    pub api_version: &'static str,
    /// Pod selector.
    pub selector: BTreeMap<String, String>,
    /// Target ports, as written.
    pub target_ports: Vec<i32>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

impl<'a> PoolSpec<'a> {
    /// From a v1alpha2 pool.
    pub fn from_v1alpha2(
        key: ObjectKey,
        origin: Option<&'a Origin>,
        p: &v1alpha2::InferencePool,
    ) -> Self {
        Self {
            key,
            origin,
            api_version: "inference.networking.x-k8s.io/v1alpha2",
            selector: p.spec.selector.clone(),
            target_ports: vec![p.spec.target_port_number],
            annotations: p.metadata.annotations.clone().unwrap_or_default(),
        }
    }

    /// From a v1 pool.
    pub fn from_v1(key: ObjectKey, origin: Option<&'a Origin>, p: &v1::InferencePool) -> Self {
        Self {
            key,
            origin,
            api_version: "inference.networking.k8s.io/v1",
            selector: p.spec.selector.match_labels.clone(),
            target_ports: p.spec.target_ports.iter().map(|p| p.number).collect(),
            annotations: p.metadata.annotations.clone().unwrap_or_default(),
        }
    }

    fn port_field(&self, index: usize) -> String {
        if self.api_version.ends_with("v1alpha2") {
            "spec.targetPortNumber".into()
        } else {
            format!("spec.targetPorts[{index}].number")
        }
    }

    /// An error about this pool.
    fn error(
        &self,
        field: impl Into<String>,
        value: impl std::fmt::Display,
        message: impl Into<String>,
    ) -> ConfigIssue {
        ConfigIssue::error(self.key.to_string(), field, value, message).at(self.origin)
    }

    /// The selector and target ports, checked (every problem is reported); `None` when one is
    /// invalid.
    fn checked_ports(&self, issues: &mut Vec<ConfigIssue>) -> Option<Vec<u16>> {
        let before = issues.len();
        if self.selector.is_empty() {
            issues.push(self.error(
                "spec.selector",
                "{}",
                "a pool needs at least one selector label",
            ));
        }
        let mut ports = Vec::new();
        for (i, &port) in self.target_ports.iter().enumerate() {
            match u16::try_from(port) {
                Ok(p) if p > 0 && !ports.contains(&p) => ports.push(p),
                Ok(p) if p > 0 => {
                    issues.push(self.error(self.port_field(i), port, "target ports must be unique"))
                }
                _ => {
                    issues.push(self.error(self.port_field(i), port, "must be between 1 and 65535"))
                }
            }
        }
        if ports.is_empty() || ports.len() > 8 {
            issues.push(self.error(
                "spec.targetPorts",
                ports.len(),
                "a pool needs 1 to 8 target ports",
            ));
        }
        (issues.len() == before).then_some(ports)
    }

    /// The strategy named by the pool's annotations, and its parameters.
    fn strategy_choice(&self) -> (String, StrategyConfig) {
        let name = self
            .annotations
            .get(plugins::ROUTING_STRATEGY_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| DEFAULT_STRATEGY.to_owned());
        let config: StrategyConfig = self
            .annotations
            .iter()
            .filter_map(|(k, v)| {
                Some((k.strip_prefix(STRATEGY_PARAM_PREFIX)?.to_owned(), v.clone()))
            })
            .collect();
        (name, config)
    }

    /// A strategy instance: `previous`'s when name and parameters are unchanged, a new one
    /// otherwise; `None` (reported) when the registry refuses them.
    fn strategy(
        &self,
        name: &str,
        config: &StrategyConfig,
        registry: &Registry,
        previous: Option<&Pool>,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<Arc<dyn Strategy>> {
        if let Some(p) =
            previous.filter(|p| p.strategy_name == name && &p.strategy_config == config)
        {
            return Some(Arc::clone(&p.strategy));
        }
        registry
            .build(name, config)
            .map_err(|e| {
                let (field, value) = match &e {
                    plugins::RegistryError::Config { source, .. } => (
                        format!(
                            "metadata.annotations[{STRATEGY_PARAM_PREFIX}{}]",
                            source.parameter
                        ),
                        source.value.clone(),
                    ),
                    plugins::RegistryError::Unknown { name, .. } => (
                        format!(
                            "metadata.annotations[{}]",
                            plugins::ROUTING_STRATEGY_ANNOTATION
                        ),
                        name.clone(),
                    ),
                };
                issues.push(self.error(field, value, e.to_string()));
            })
            .ok()
    }

    /// The metric dialect of the pool's model servers (vLLM's without the annotation); `None`
    /// (reported) for an unknown one.
    fn engine(&self, issues: &mut Vec<ConfigIssue>) -> Option<Engine> {
        let Some(value) = self.annotations.get(MODEL_SERVER_RUNTIME_ANNOTATION) else {
            return Some(Engine::Vllm);
        };
        Engine::parse(value).or_else(|| {
            issues.push(self.error(
                format!("metadata.annotations[{MODEL_SERVER_RUNTIME_ANNOTATION}]"),
                value,
                "unknown model-server runtime; expected vllm, sglang, trtllm or triton",
            ));
            None
        })
    }
}

/// Build one pool, reusing endpoint state and the strategy instance from `previous`.
pub fn build_pool(
    spec: &PoolSpec<'_>,
    pods: &[&Pod],
    models: HashMap<String, Arc<ModelEntry>>,
    registry: &Registry,
    previous: Option<&Snapshot>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Pool> {
    let ports = spec.checked_ports(issues);
    let (strategy_name, strategy_config) = spec.strategy_choice();
    let previous_pool = previous.and_then(|s| s.pools.get(&spec.key));
    let strategy = spec.strategy(
        &strategy_name,
        &strategy_config,
        registry,
        previous_pool.map(|p| &**p),
        issues,
    );
    let resolution = registry.describe(&strategy_name).ok();
    let pool_engine = spec.engine(issues);
    let (Some(ports), Some(strategy), Some(resolution), Some(pool_engine)) =
        (ports, strategy, resolution, pool_engine)
    else {
        return None;
    };
    let endpoints = pool_endpoints(
        spec,
        pods,
        &ports,
        pool_engine,
        previous_pool.map(|p| &**p),
        issues,
    );
    let changed = previous_pool.is_none_or(|p| {
        p.endpoints.len() != endpoints.len()
            || p.endpoints
                .iter()
                .zip(&endpoints)
                .any(|(a, b)| !Arc::ptr_eq(a, b))
    });
    if changed {
        let ids: Vec<EndpointId> = endpoints.iter().map(|e| e.id.clone()).collect();
        strategy.on_endpoints_changed(&ids);
    }
    Some(Pool {
        name: spec.key.qualified_name(),
        key: spec.key.clone(),
        api_version: spec.api_version,
        strategy_name,
        strategy_config,
        resolution,
        strategy,
        endpoints,
        models,
    })
}

/// One endpoint per ready selected pod and target port, sorted by address; an endpoint whose
/// address and engine are unchanged is `previous`'s, with its counters.
fn pool_endpoints(
    spec: &PoolSpec<'_>,
    pods: &[&Pod],
    ports: &[u16],
    pool_engine: Engine,
    previous: Option<&Pool>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<Arc<Endpoint>> {
    let reuse: HashMap<SocketAddr, &Arc<Endpoint>> = previous
        .map(|p| p.endpoints.iter().map(|e| (e.id.address(), e)).collect())
        .unwrap_or_default();
    let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
    for pod in selected_pods(pods, &spec.selector) {
        let Some(ip) = pod_ip(pod) else { continue };
        let engine = pod_engine(pod, pool_engine, issues);
        for &port in ports {
            let address = SocketAddr::new(ip, port);
            let endpoint = match reuse.get(&address).filter(|e| e.engine == engine) {
                Some(existing) => Arc::clone(existing),
                None => {
                    let name = if ports.len() == 1 {
                        pod_name(pod)
                    } else {
                        format!("{}:{port}", pod_name(pod))
                    };
                    Arc::new(Endpoint::new(EndpointId::new(address, name), engine))
                }
            };
            endpoints.push(endpoint);
        }
    }
    endpoints.sort_by_key(|e| e.id.address());
    endpoints.dedup_by_key(|e| e.id.address());
    endpoints
}

/// The metric dialect of one pod: its engine-type label's, else its pool's.
fn pod_engine(pod: &Pod, pool_engine: Engine, issues: &mut Vec<ConfigIssue>) -> Engine {
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ENGINE_TYPE_LABEL));
    let Some(value) = label else {
        return pool_engine;
    };
    Engine::parse(value).unwrap_or_else(|| {
        issues.push(ConfigIssue::warning(
            format!("Pod {}", pod_name(pod)),
            format!("metadata.labels[{ENGINE_TYPE_LABEL}]"),
            value,
            "unknown engine type; the pool's model-server runtime is used",
        ));
        pool_engine
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Kind;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn readiness_needs_ip_ready_condition_and_no_deletion() {
        let ready = "metadata: {name: a, labels: {app: q}}\nstatus: {podIP: 10.0.0.1, conditions: [{type: Ready, status: 'True'}]}";
        assert!(pod_is_ready(&pod(ready)));
        assert!(!pod_is_ready(&pod(
            "metadata: {name: a}\nstatus: {podIP: 10.0.0.1, conditions: [{type: Ready, status: 'False'}]}"
        )));
        assert!(!pod_is_ready(&pod(
            "metadata: {name: a}\nstatus: {conditions: [{type: Ready, status: 'True'}]}"
        )));
        assert!(!pod_is_ready(&pod(
            "metadata: {name: a, deletionTimestamp: '2026-01-01T00:00:00Z'}\nstatus: {podIP: 10.0.0.1, conditions: [{type: Ready, status: 'True'}]}"
        )));
        assert!(!pod_is_ready(&pod(
            "metadata: {name: a}\nstatus: {phase: Failed, podIP: 10.0.0.1, conditions: [{type: Ready, status: 'True'}]}"
        )));
    }

    #[test]
    fn selectors_need_every_label_and_empty_selects_nothing() {
        let labels: BTreeMap<String, String> =
            [("app".into(), "q".into()), ("tier".into(), "gpu".into())].into();
        let selector: BTreeMap<String, String> = [("app".into(), "q".into())].into();
        assert!(selector_matches(&selector, Some(&labels)));
        let other: BTreeMap<String, String> =
            [("app".into(), "q".into()), ("x".into(), "y".into())].into();
        assert!(!selector_matches(&other, Some(&labels)));
        assert!(!selector_matches(&BTreeMap::new(), Some(&labels)));
        assert!(!selector_matches(&selector, None));
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let service: Service = serde_yaml::from_str(
            "metadata: {name: s}\nspec: {selector: {app: q}, ports: [{port: 80, targetPort: http}]}",
        )
        .unwrap();
        let p = pod(
            "metadata: {name: a, labels: {app: q}}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 8000}]}]}\nstatus: {podIP: 10.0.0.1, conditions: [{type: Ready, status: 'True'}]}",
        );
        let key = ObjectKey::new(Kind::Service, "default", "s");
        let backend = service_backend(&key, &service, 80, &[&p]).unwrap();
        assert_eq!(backend.endpoints, vec!["10.0.0.1:8000".parse().unwrap()]);
        assert!(
            service_backend(&key, &service, 81, &[&p])
                .unwrap_err()
                .contains("no port 81")
        );
    }
}
