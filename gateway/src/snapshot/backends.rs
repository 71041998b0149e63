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
use super::models::PoolModels;
use super::{Pool, ServiceBackend, Snapshot};
use crate::config::crds::{v1, v1alpha2};
use crate::config::{ConfigIssue, ObjectKey, Origin};
use crate::engine::Engine;
use crate::flow::{FLOW_CONTROL_PREFIX, FlowSettings, PoolQueue};
use crate::kv_events::{KV_EVENTS_PREFIX, KvEventsSettings};

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

/// What a pool does when its endpoint picker does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FailureMode {
    /// Route with the gateway's own strategy instead.
    FailOpen,
    /// Refuse the request (the API's default).
    FailClose,
}

/// The endpoint picker a pool names, in the v1 shape (`endpointPickerRef`). A v1alpha2
/// `extensionRef` maps onto it as the upstream conversion maps it: group and kind as written (kind
/// `Service` when unset), `portNumber` as the port, 9002 when unset, `failureMode` as written,
/// `FailClose` when unset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PickerRef {
    /// API group, `""` for core.
    pub group: String,
    /// Kind (`Service` by default).
    pub kind: String,
    /// Name, in the pool's namespace.
    pub name: String,
    /// The port (required for a Service in v1; 9002 for a v1alpha2 `extensionRef` without one).
    pub port: Option<i32>,
    /// What to do when it does not answer.
    pub failure_mode: FailureMode,
    /// `FailOpen`/`FailClose` as written when it is neither (reported; `FailClose` applies).
    #[serde(skip)]
    pub unknown_failure_mode: Option<String>,
    /// Whether requests are routed by this picker over ext_proc: a v1 `endpointPickerRef` (optional
    /// since v1.5, so naming one is a choice). A v1alpha2 `extensionRef` is required by that API
    /// and names the picker the platform installed next to its own gateway (the seed's
    /// `inference-gateway-ext-proc`); this gateway replaces that picker and routes such a pool
    /// with its built-in strategy.
    pub external: bool,
}

/// The port a v1alpha2 `extensionRef` without `portNumber` means (the upstream conversion's and
/// the Inference Extension's default EPP port).
pub const DEFAULT_PICKER_PORT: i32 = 9002;

impl PickerRef {
    fn new(
        group: Option<&String>,
        kind: Option<&String>,
        name: &str,
        port: Option<i32>,
        failure_mode: Option<&String>,
    ) -> PickerRef {
        let (failure_mode, unknown_failure_mode) = match failure_mode.map(String::as_str) {
            Some("FailOpen") => (FailureMode::FailOpen, None),
            None | Some("FailClose") => (FailureMode::FailClose, None),
            Some(other) => (FailureMode::FailClose, Some(other.to_owned())),
        };
        PickerRef {
            group: group.cloned().unwrap_or_default(),
            kind: kind.cloned().unwrap_or_else(|| "Service".into()),
            name: name.to_owned(),
            port,
            failure_mode,
            unknown_failure_mode,
            external: false,
        }
    }

    /// Whether requests to the pool are routed by this picker (see [`PickerRef::external`]).
    pub fn is_external(&self) -> bool {
        self.external
    }

    /// From a v1alpha2 `extensionRef`.
    pub fn from_v1alpha2(r: &v1alpha2::ExtensionReference) -> PickerRef {
        let port = r.port_number.unwrap_or(DEFAULT_PICKER_PORT);
        PickerRef::new(
            r.group.as_ref(),
            r.kind.as_ref(),
            &r.name,
            Some(port),
            r.failure_mode.as_ref(),
        )
    }

    /// From a v1 `endpointPickerRef`.
    pub fn from_v1(r: &v1::EndpointPickerRef) -> PickerRef {
        PickerRef {
            external: true,
            ..PickerRef::new(
                r.group.as_ref(),
                r.kind.as_ref(),
                &r.name,
                r.port.as_ref().map(|p| p.number),
                r.failure_mode.as_ref(),
            )
        }
    }
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
    /// The endpoint picker it names, if any.
    pub picker: Option<PickerRef>,
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
            picker: p.spec.extension_ref.as_ref().map(PickerRef::from_v1alpha2),
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
            picker: p.spec.endpoint_picker_ref.as_ref().map(PickerRef::from_v1),
        }
    }

    /// A warning about this pool.
    fn warn(
        &self,
        field: impl Into<String>,
        value: impl std::fmt::Display,
        message: impl Into<String>,
    ) -> ConfigIssue {
        ConfigIssue::warning(self.key.to_string(), field, value, message).at(self.origin)
    }

    /// The field that holds the picker reference in this pool's API version.
    fn picker_field(&self) -> &'static str {
        if self.api_version.ends_with("v1alpha2") {
            "spec.extensionRef"
        } else {
            "spec.endpointPickerRef"
        }
    }

    /// Warnings about the picker reference (the gateway routes with its own strategy either
    /// way, so none of them stops the pool).
    fn check_picker(&self, issues: &mut Vec<ConfigIssue>) {
        let Some(picker) = &self.picker else {
            return;
        };
        if let Some(mode) = &picker.unknown_failure_mode {
            issues.push(self.warn(
                format!("{}.failureMode", self.picker_field()),
                mode,
                "must be FailOpen or FailClose; FailClose applies",
            ));
        }
        if picker.kind == "Service" && picker.group.is_empty() {
            match picker.port {
                None => issues.push(self.warn(
                    format!("{}.port", self.picker_field()),
                    "(unset)",
                    "a Service endpoint picker needs a port",
                )),
                Some(port) if !(1..=65535).contains(&port) => issues.push(self.warn(
                    format!("{}.port.number", self.picker_field()),
                    port,
                    "must be between 1 and 65535",
                )),
                Some(_) => {}
            }
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

    /// The flow-control settings; `None` (reported) when an annotation is invalid.
    fn flow_settings(&self, issues: &mut Vec<ConfigIssue>) -> Option<FlowSettings> {
        FlowSettings::from_annotations(&self.annotations)
            .map_err(|e| {
                issues.push(self.error(
                    format!("metadata.annotations[{FLOW_CONTROL_PREFIX}{}]", e.parameter),
                    e.value,
                    e.reason,
                ));
            })
            .ok()
    }

    /// The KV-event settings (`Ok(None)`: not enabled); `Err` (reported) when an annotation is
    /// invalid.
    fn kv_events(
        &self,
        ports: &[u16],
        issues: &mut Vec<ConfigIssue>,
    ) -> Result<Option<KvEventsSettings>, ()> {
        KvEventsSettings::from_annotations(&self.annotations, ports).map_err(|e| {
            issues.push(self.error(
                format!("metadata.annotations[{KV_EVENTS_PREFIX}{}]", e.parameter),
                e.value,
                e.reason,
            ));
        })
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
    models: PoolModels,
    registry: &Registry,
    previous: Option<&Snapshot>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Pool> {
    let ports = spec.checked_ports(issues);
    spec.check_picker(issues);
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
    let flow = spec.flow_settings(issues);
    let kv_events = ports.as_deref().map(|ports| spec.kv_events(ports, issues));
    let (
        Some(ports),
        Some(strategy),
        Some(resolution),
        Some(pool_engine),
        Some(flow),
        Some(Ok(kv_events)),
    ) = (ports, strategy, resolution, pool_engine, flow, kv_events)
    else {
        return None;
    };
    let queue = match previous_pool {
        Some(p) => {
            p.queue.set_limits(flow.queue, flow.band);
            Arc::clone(&p.queue)
        }
        None => PoolQueue::new(&flow),
    };
    let endpoints = pool_endpoints(
        spec,
        pods,
        &ports,
        pool_engine,
        previous_pool.map(|p| &**p),
        issues,
    );
    for endpoint in &endpoints {
        endpoint.attach_queue(&queue);
    }
    if !queue.is_empty() {
        // New endpoints, or new settings: requests waiting may fit now.
        queue.wake();
    }
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
        models: models.models,
        rewrites: models.rewrites,
        objectives: models.objectives,
        picker: spec.picker.clone(),
        picker_binding: None,
        flow,
        kv_events,
        queue,
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
    use crate::config::{Kind, Severity};

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn spec_v1alpha2(spec: &str) -> (ObjectKey, v1alpha2::InferencePool) {
        let pool: v1alpha2::InferencePool = serde_yaml::from_str(&format!(
            "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata: {{name: p}}\nspec: {spec}"
        ))
        .unwrap();
        (ObjectKey::new(Kind::InferencePool, "default", "p"), pool)
    }

    fn spec_v1(spec: &str) -> (ObjectKey, v1::InferencePool) {
        let pool: v1::InferencePool = serde_yaml::from_str(&format!(
            "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {{name: p}}\nspec: {spec}"
        ))
        .unwrap();
        (ObjectKey::new(Kind::InferencePool, "default", "p"), pool)
    }

    #[test]
    fn a_v1alpha2_pool_maps_onto_the_v1_shape_as_the_upstream_conversion_does() {
        let (key, old) = spec_v1alpha2(
            "{selector: {app: qwen}, targetPortNumber: 8000, extensionRef: {name: epp}}",
        );
        let old = PoolSpec::from_v1alpha2(key, None, &old);
        let (key, new) = spec_v1(
            "{selector: {matchLabels: {app: qwen}}, targetPorts: [{number: 8000}], endpointPickerRef: {name: epp, port: {number: 9002}}}",
        );
        let new = PoolSpec::from_v1(key, None, &new);
        assert_eq!(
            (&old.selector, &old.target_ports),
            (&new.selector, &new.target_ports)
        );
        let expected = PickerRef {
            group: String::new(),
            kind: "Service".into(),
            name: "epp".into(),
            port: Some(DEFAULT_PICKER_PORT),
            failure_mode: FailureMode::FailClose,
            unknown_failure_mode: None,
            external: false,
        };
        assert_eq!(old.picker.as_ref(), Some(&expected), "port 9002 when unset");
        // The same reference, except that only the v1 pool is routed by it.
        assert_eq!(
            new.picker,
            Some(PickerRef {
                external: true,
                ..expected
            })
        );

        let (key, old) = spec_v1alpha2(
            "{selector: {app: q}, targetPortNumber: 8000, extensionRef: {group: x.io, kind: Picker, name: e, portNumber: 9100, failureMode: FailOpen}}",
        );
        let picker = PoolSpec::from_v1alpha2(key, None, &old).picker.unwrap();
        assert_eq!(
            (picker.group.as_str(), picker.kind.as_str(), picker.port),
            ("x.io", "Picker", Some(9100))
        );
        assert_eq!(picker.failure_mode, FailureMode::FailOpen);
        let (key, plain) =
            spec_v1("{selector: {matchLabels: {app: q}}, targetPorts: [{number: 8000}]}");
        assert_eq!(PoolSpec::from_v1(key, None, &plain).picker, None);
    }

    #[test]
    fn picker_problems_are_warnings_that_name_the_field() {
        let (key, pool) = spec_v1(
            "{selector: {matchLabels: {app: q}}, targetPorts: [{number: 8000}], endpointPickerRef: {name: epp, failureMode: FailSometimes}}",
        );
        let spec = PoolSpec::from_v1(key, None, &pool);
        assert_eq!(
            spec.picker.as_ref().map(|p| p.failure_mode),
            Some(FailureMode::FailClose)
        );
        let mut issues = Vec::new();
        spec.check_picker(&mut issues);
        let found: Vec<(Severity, &str, &str)> = issues
            .iter()
            .map(|i| (i.severity, i.field.as_str(), i.value.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    Severity::Warning,
                    "spec.endpointPickerRef.failureMode",
                    "FailSometimes"
                ),
                (Severity::Warning, "spec.endpointPickerRef.port", "(unset)"),
            ]
        );
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
