//! Building backends from objects: ready pods, Service endpoints, InferencePools and their models.
//!
//! A pod is an endpoint when it is Ready, has a pod IP, and is neither terminating nor finished;
//! this is what the kube source will read from real pods and what the file source's `Pod` objects
//! describe. Selectors are label maps that must all match.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pingora::lb::LoadBalancer;
use plugins::{Criticality, EndpointId, Registry, STRATEGY_PARAM_PREFIX, StrategyConfig};

use super::endpoint::Endpoint;
use super::models::{ModelEntry, TargetModel};
use super::{Pool, ServiceBackend, Snapshot};
use crate::config::crds::{v1, v1alpha2};
use crate::config::{ConfigIssue, Kind, ObjectKey, Origin};
use crate::engine::Engine;

/// Pool annotation choosing the metric dialect of its model servers (ACK's key).
pub const MODEL_SERVER_RUNTIME_ANNOTATION: &str =
    "inference.networking.x-k8s.io/model-server-runtime";
/// Pod label choosing the metric dialect of one model server (the Inference Extension's key).
pub const ENGINE_TYPE_LABEL: &str = "inference.networking.k8s.io/engine-type";

/// The routing-strategy annotation's value when it is absent.
pub const DEFAULT_STRATEGY: &str = "DEFAULT";

/// Upper bound on `spec.targetModels` (the CRD's limit).
const MAX_TARGET_MODELS: usize = 10;
/// Upper bound on a target model's weight (the CRD's limit).
const MAX_MODEL_WEIGHT: i32 = 1_000_000;
/// Upper bound on `spec.modelName` length (the CRD's limit).
const MAX_MODEL_NAME_LEN: usize = 256;

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
    let object = spec.key.to_string();
    let mut valid = true;
    if spec.selector.is_empty() {
        issues.push(
            ConfigIssue::error(
                &object,
                "spec.selector",
                "{}",
                "a pool needs at least one selector label",
            )
            .at(spec.origin),
        );
        valid = false;
    }
    let mut ports = Vec::new();
    for (i, &port) in spec.target_ports.iter().enumerate() {
        match u16::try_from(port) {
            Ok(p) if p > 0 && !ports.contains(&p) => ports.push(p),
            Ok(p) if p > 0 => {
                issues.push(
                    ConfigIssue::error(
                        &object,
                        spec.port_field(i),
                        port,
                        "target ports must be unique",
                    )
                    .at(spec.origin),
                );
                valid = false;
            }
            _ => {
                issues.push(
                    ConfigIssue::error(
                        &object,
                        spec.port_field(i),
                        port,
                        "must be between 1 and 65535",
                    )
                    .at(spec.origin),
                );
                valid = false;
            }
        }
    }
    if ports.is_empty() || ports.len() > 8 {
        issues.push(
            ConfigIssue::error(
                &object,
                "spec.targetPorts",
                ports.len(),
                "a pool needs 1 to 8 target ports",
            )
            .at(spec.origin),
        );
        valid = false;
    }

    let strategy_name = spec
        .annotations
        .get(plugins::ROUTING_STRATEGY_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| DEFAULT_STRATEGY.to_owned());
    let strategy_config: StrategyConfig = spec
        .annotations
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(STRATEGY_PARAM_PREFIX)?.to_owned(), v.clone())))
        .collect();
    let previous_pool = previous.and_then(|s| s.pools.get(&spec.key));
    let reusable = previous_pool
        .filter(|p| p.strategy_name == strategy_name && p.strategy_config == strategy_config);
    let strategy = match reusable {
        Some(p) => Some(Arc::clone(&p.strategy)),
        None => match registry.build(&strategy_name, &strategy_config) {
            Ok(strategy) => Some(strategy),
            Err(e) => {
                let field = match &e {
                    plugins::RegistryError::Config { source, .. } => format!(
                        "metadata.annotations[{STRATEGY_PARAM_PREFIX}{}]",
                        source.parameter
                    ),
                    plugins::RegistryError::Unknown { .. } => {
                        format!(
                            "metadata.annotations[{}]",
                            plugins::ROUTING_STRATEGY_ANNOTATION
                        )
                    }
                };
                let value = match &e {
                    plugins::RegistryError::Config { source, .. } => source.value.clone(),
                    plugins::RegistryError::Unknown { name, .. } => name.clone(),
                };
                issues
                    .push(ConfigIssue::error(&object, field, value, e.to_string()).at(spec.origin));
                None
            }
        },
    };
    let resolution = registry.describe(&strategy_name).ok();
    let pool_engine = match spec.annotations.get(MODEL_SERVER_RUNTIME_ANNOTATION) {
        None => Some(Engine::Vllm),
        Some(value) => Engine::parse(value).or_else(|| {
            issues.push(
                ConfigIssue::error(
                    &object,
                    format!("metadata.annotations[{MODEL_SERVER_RUNTIME_ANNOTATION}]"),
                    value,
                    "unknown model-server runtime; expected vllm, sglang, trtllm or triton",
                )
                .at(spec.origin),
            );
            None
        }),
    };
    let (Some(strategy), Some(resolution), Some(pool_engine), true) =
        (strategy, resolution, pool_engine, valid)
    else {
        return None;
    };

    let reuse: HashMap<SocketAddr, &Arc<Endpoint>> = previous_pool
        .map(|p| p.endpoints.iter().map(|e| (e.id.address(), e)).collect())
        .unwrap_or_default();
    let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
    for pod in selected_pods(pods, &spec.selector) {
        let Some(ip) = pod_ip(pod) else { continue };
        let label = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ENGINE_TYPE_LABEL));
        let engine = match label {
            None => pool_engine,
            Some(value) => Engine::parse(value).unwrap_or_else(|| {
                issues.push(ConfigIssue::warning(
                    format!("Pod {}", pod_name(pod)),
                    format!("metadata.labels[{ENGINE_TYPE_LABEL}]"),
                    value,
                    "unknown engine type; the pool's model-server runtime is used",
                ));
                pool_engine
            }),
        };
        for &port in &ports {
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

/// An InferenceModel with where it came from and its order, for "oldest wins".
#[derive(Debug, Clone, Copy)]
pub struct ModelObject<'a> {
    /// The object.
    pub model: &'a v1alpha2::InferenceModel,
    /// Its key.
    pub key: &'a ObjectKey,
    /// Where it was defined.
    pub origin: Option<&'a Origin>,
    /// Source order.
    pub order: usize,
}

/// Group InferenceModels by the pool they reference; the oldest of a duplicated model name wins.
pub fn models_by_pool(
    models: &[ModelObject<'_>],
    pool_exists: impl Fn(&ObjectKey) -> bool,
    issues: &mut Vec<ConfigIssue>,
) -> HashMap<ObjectKey, HashMap<String, Arc<ModelEntry>>> {
    let mut ordered: Vec<&ModelObject<'_>> = models.iter().collect();
    ordered.sort_by_key(|m| {
        let created = m
            .model
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        (created.is_none(), created.unwrap_or(0), m.order)
    });
    let mut by_pool: HashMap<ObjectKey, HashMap<String, Arc<ModelEntry>>> = HashMap::new();
    for m in ordered {
        let Some(entry) = model_entry(m, issues) else {
            continue;
        };
        let spec = &m.model.spec;
        let pool_key = ObjectKey::new(
            Kind::InferencePool,
            m.key.namespace.clone(),
            spec.pool_ref.name.clone(),
        );
        if !pool_exists(&pool_key) {
            issues.push(
                ConfigIssue::warning(
                    m.key.to_string(),
                    "spec.poolRef.name",
                    &spec.pool_ref.name,
                    format!("InferencePool {} does not exist", pool_key.qualified_name()),
                )
                .at(m.origin),
            );
            continue;
        }
        let models = by_pool.entry(pool_key).or_default();
        if let Some(winner) = models.get(&spec.model_name) {
            issues.push(
                ConfigIssue::warning(
                    m.key.to_string(),
                    "spec.modelName",
                    &spec.model_name,
                    format!(
                        "ModelNameInUse: already served by the older {}",
                        winner.object
                    ),
                )
                .at(m.origin),
            );
            continue;
        }
        models.insert(spec.model_name.clone(), Arc::new(entry));
    }
    by_pool
}

fn model_entry(m: &ModelObject<'_>, issues: &mut Vec<ConfigIssue>) -> Option<ModelEntry> {
    let spec = &m.model.spec;
    let object = m.key.to_string();
    let before = issues.len();
    let mut error = |field: String, value: String, reason: &str| {
        issues.push(ConfigIssue::error(&object, field, value, reason).at(m.origin));
    };
    if spec.model_name.is_empty() || spec.model_name.len() > MAX_MODEL_NAME_LEN {
        error(
            "spec.modelName".into(),
            spec.model_name.clone(),
            "must be 1 to 256 characters",
        );
    }
    let group = spec
        .pool_ref
        .group
        .as_deref()
        .unwrap_or("inference.networking.x-k8s.io");
    if !matches!(
        group,
        "inference.networking.x-k8s.io" | "inference.networking.k8s.io"
    ) {
        error(
            "spec.poolRef.group".into(),
            group.into(),
            "must be an Inference Extension API group",
        );
    }
    let kind = spec.pool_ref.kind.as_deref().unwrap_or("InferencePool");
    if kind != "InferencePool" {
        error(
            "spec.poolRef.kind".into(),
            kind.into(),
            "must be InferencePool",
        );
    }
    let criticality = match spec.criticality.as_deref() {
        None => Criticality::Standard,
        Some(text) => text
            .parse()
            .unwrap_or_else(|e: plugins::request::UnknownCriticality| {
                error("spec.criticality".into(), text.into(), &e.to_string());
                Criticality::Standard
            }),
    };
    let targets = spec.target_models.clone().unwrap_or_default();
    if targets.len() > MAX_TARGET_MODELS {
        error(
            "spec.targetModels".into(),
            targets.len().to_string(),
            "at most 10 target models",
        );
    }
    let weighted = targets.iter().filter(|t| t.weight.is_some()).count();
    if weighted != 0 && weighted != targets.len() {
        error(
            "spec.targetModels".into(),
            format!("{weighted} of {}", targets.len()),
            "weights must be set on all target models or on none",
        );
    }
    let mut resolved = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        if target.name.is_empty() {
            error(
                format!("spec.targetModels[{i}].name"),
                String::new(),
                "must not be empty",
            );
        }
        let weight = target.weight.unwrap_or(1);
        if !(1..=MAX_MODEL_WEIGHT).contains(&weight) {
            error(
                format!("spec.targetModels[{i}].weight"),
                weight.to_string(),
                "must be between 1 and 1000000",
            );
        }
        resolved.push(TargetModel {
            name: target.name.clone(),
            weight: u32::try_from(weight.max(1)).unwrap_or(1),
        });
    }
    (issues.len() == before).then(|| {
        ModelEntry::new(
            spec.model_name.clone(),
            m.key.clone(),
            criticality,
            resolved,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
