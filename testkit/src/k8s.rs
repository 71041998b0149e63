//! Builders for the Kubernetes objects a test configures the gateway with: GatewayClass, Gateway,
//! HTTPRoute, Service, Pod, InferencePool, InferenceModel and Envoy's BackendTrafficPolicy.
//!
//! A test states what differs (ports, addresses, a strategy, a criticality) and the builders fill
//! in the rest the same way for every test. Each builder renders a `serde_json::Value`; YAML text
//! is made in one place ([`Object::to_yaml`], [`Manifest::render`]) by `serde_yaml`, so quoting is
//! never a test's concern. This module knows only the object shapes, not the gateway's types (this
//! crate does not depend on the gateway): `gateway/tests/testkit_objects.rs` loads what the
//! builders render through the gateway's own parser and snapshot build.

use std::fmt;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

/// The controller name this gateway answers to (its `--controller-name` default).
pub const CONTROLLER_NAME: &str = "inference-gateway.dev/controller";
/// The pool annotation that names a routing strategy.
pub const ROUTING_STRATEGY: &str = "inference.networking.x-k8s.io/routing-strategy";
/// The GatewayClass of [`Manifest::test_gateway`].
pub const TEST_CLASS: &str = "test-class";
/// The Gateway of [`Manifest::test_gateway`].
pub const TEST_GATEWAY: &str = "gw";

const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const POOL_GROUP_V1ALPHA2: &str = "inference.networking.x-k8s.io";
const POOL_GROUP_V1: &str = "inference.networking.k8s.io";
/// The v1alpha2 `extensionRef` every test pool carries: the CRD requires one, and this gateway
/// picks endpoints itself, so it names a Service that does not exist.
const UNUSED_EXTENSION: &str = "unused";

/// A Kubernetes object a test puts in a configuration.
pub trait Object {
    /// The object as JSON (what the YAML document holds).
    fn to_value(&self) -> Value;

    /// The object as one YAML document, starting with `---`.
    fn to_yaml(&self) -> String {
        yaml_document(&self.to_value())
    }
}

fn yaml_document(value: &Value) -> String {
    let text = serde_yaml::to_string(value).expect("a JSON value renders as YAML");
    format!("---\n{text}")
}

/// A JSON object of string pairs (labels, annotations, selectors).
fn string_map(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

fn pair(key: &str, value: &str) -> (String, String) {
    (key.to_owned(), value.to_owned())
}

/// `metadata`: a name, and a namespace, labels and annotations when set.
#[derive(Debug, Clone, Default)]
struct Meta {
    name: String,
    namespace: Option<String>,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
}

impl Meta {
    fn named(name: &str) -> Meta {
        Meta {
            name: name.to_owned(),
            ..Meta::default()
        }
    }

    fn to_value(&self) -> Value {
        let mut meta = json!({"name": self.name});
        if let Some(namespace) = &self.namespace {
            meta["namespace"] = json!(namespace);
        }
        if !self.labels.is_empty() {
            meta["labels"] = string_map(&self.labels);
        }
        if !self.annotations.is_empty() {
            meta["annotations"] = string_map(&self.annotations);
        }
        meta
    }
}

/// Several objects, rendered as one multi-document YAML configuration.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    documents: Vec<Value>,
}

impl Manifest {
    /// An empty configuration.
    pub fn new() -> Manifest {
        Manifest::default()
    }

    /// The GatewayClass [`TEST_CLASS`] for this gateway's controller and the Gateway
    /// [`TEST_GATEWAY`] with an `http` and an `llm` HTTP listener.
    pub fn test_gateway(http_port: u16, llm_port: u16) -> Manifest {
        Manifest::new().with(GatewayClass::new(TEST_CLASS)).with(
            Gateway::new(TEST_GATEWAY, TEST_CLASS)
                .listener("http", http_port)
                .listener("llm", llm_port),
        )
    }

    /// Add `pods`, then `pool`, then the HTTPRoute `llm-route` sending every request on the `llm`
    /// listener of [`Manifest::test_gateway`] to the pool.
    pub fn with_pool(self, pool: InferencePool, pods: impl IntoIterator<Item = Pod>) -> Manifest {
        let route = HttpRoute::new("llm-route")
            .on(TEST_GATEWAY, "llm")
            .to(BackendRef::pool(&pool.meta.name));
        self.with_all(pods).with(pool).with(route)
    }

    /// Add the Service `name` (port 80 to the `target_port` of the pods labelled `app: {app}`) and
    /// the HTTPRoute `plain` sending every request on the `http` listener of
    /// [`Manifest::test_gateway`] to it.
    pub fn with_plain_service(self, name: &str, app: &str, target_port: u16) -> Manifest {
        self.with(
            Service::new(name)
                .selector("app", app)
                .port(80, target_port),
        )
        .with(
            HttpRoute::new("plain")
                .on(TEST_GATEWAY, "http")
                .to(BackendRef::service(name, 80)),
        )
    }

    /// Add `object` at the end.
    pub fn with(mut self, object: impl Object) -> Manifest {
        self.documents.push(object.to_value());
        self
    }

    /// Add every object of `objects` at the end, in order.
    pub fn with_all<O: Object>(mut self, objects: impl IntoIterator<Item = O>) -> Manifest {
        self.documents
            .extend(objects.into_iter().map(|o| o.to_value()));
        self
    }

    /// Put `object` in the place of the object of the same kind, namespace and name; panics when
    /// there is none (a test that means to change an object must not silently add one).
    pub fn replacing(mut self, object: impl Object) -> Manifest {
        let object = object.to_value();
        let identity = |v: &Value| {
            (
                v["kind"].clone(),
                v["metadata"]["namespace"].clone(),
                v["metadata"]["name"].clone(),
            )
        };
        let wanted = identity(&object);
        let slot = self
            .documents
            .iter_mut()
            .find(|d| identity(d) == wanted)
            .unwrap_or_else(|| panic!("no object {wanted:?} to replace"));
        *slot = object;
        self
    }

    /// The configuration as YAML documents, each starting with `---`.
    pub fn render(&self) -> String {
        self.documents.iter().map(yaml_document).collect()
    }
}

impl fmt::Display for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// A `gateway.networking.k8s.io/v1` GatewayClass for this gateway's controller.
#[derive(Debug, Clone)]
pub struct GatewayClass {
    meta: Meta,
}

impl GatewayClass {
    /// A class named `name` whose controller is [`CONTROLLER_NAME`].
    pub fn new(name: &str) -> GatewayClass {
        GatewayClass {
            meta: Meta::named(name),
        }
    }
}

impl Object for GatewayClass {
    fn to_value(&self) -> Value {
        json!({
            "apiVersion": GATEWAY_API,
            "kind": "GatewayClass",
            "metadata": self.meta.to_value(),
            "spec": {"controllerName": CONTROLLER_NAME},
        })
    }
}

/// A `gateway.networking.k8s.io/v1` Gateway with HTTP listeners.
#[derive(Debug, Clone)]
pub struct Gateway {
    meta: Meta,
    class: String,
    listeners: Vec<(String, u16)>,
}

impl Gateway {
    /// A Gateway of class `class`, without listeners yet.
    pub fn new(name: &str, class: &str) -> Gateway {
        Gateway {
            meta: Meta::named(name),
            class: class.to_owned(),
            listeners: Vec::new(),
        }
    }

    /// In `namespace` (default: none, which the gateway reads as `default`).
    pub fn namespace(mut self, namespace: &str) -> Gateway {
        self.meta.namespace = Some(namespace.to_owned());
        self
    }

    /// An HTTP listener named `name` on `port`.
    pub fn listener(mut self, name: &str, port: u16) -> Gateway {
        self.listeners.push((name.to_owned(), port));
        self
    }
}

impl Object for Gateway {
    fn to_value(&self) -> Value {
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|(name, port)| json!({"name": name, "protocol": "HTTP", "port": port}))
            .collect();
        json!({
            "apiVersion": GATEWAY_API,
            "kind": "Gateway",
            "metadata": self.meta.to_value(),
            "spec": {"gatewayClassName": self.class, "listeners": listeners},
        })
    }
}

/// Where an HTTPRoute rule sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendRef {
    /// A Service port.
    Service { name: String, port: u16 },
    /// An InferencePool of API group `group`.
    Pool { group: &'static str, name: String },
}

impl BackendRef {
    /// Port `port` of Service `name`.
    pub fn service(name: &str, port: u16) -> BackendRef {
        BackendRef::Service {
            name: name.to_owned(),
            port,
        }
    }

    /// The `inference.networking.x-k8s.io` (v1alpha2) InferencePool `name`.
    pub fn pool(name: &str) -> BackendRef {
        BackendRef::Pool {
            group: POOL_GROUP_V1ALPHA2,
            name: name.to_owned(),
        }
    }

    /// The `inference.networking.k8s.io` (v1) InferencePool `name`.
    pub fn pool_v1(name: &str) -> BackendRef {
        BackendRef::Pool {
            group: POOL_GROUP_V1,
            name: name.to_owned(),
        }
    }

    fn to_value(&self) -> Value {
        match self {
            BackendRef::Service { name, port } => {
                json!({"kind": "Service", "name": name, "port": port})
            }
            BackendRef::Pool { group, name } => {
                json!({"group": group, "kind": "InferencePool", "name": name})
            }
        }
    }
}

/// One rule of an HTTPRoute: path matches (none: every path), a request timeout, backends.
#[derive(Debug, Clone)]
pub struct Rule {
    paths: Vec<(&'static str, String)>,
    request_timeout: Option<String>,
    backends: Vec<BackendRef>,
}

impl Rule {
    /// A rule sending every request it matches to `backend`.
    pub fn to(backend: BackendRef) -> Rule {
        Rule {
            paths: Vec::new(),
            request_timeout: None,
            backends: vec![backend],
        }
    }

    /// Also match paths starting with `prefix`.
    pub fn path_prefix(mut self, prefix: &str) -> Rule {
        self.paths.push(("PathPrefix", prefix.to_owned()));
        self
    }

    /// Also match exactly `path`.
    pub fn exact_path(mut self, path: &str) -> Rule {
        self.paths.push(("Exact", path.to_owned()));
        self
    }

    /// `timeouts.request` (a Gateway API duration such as `300ms`).
    pub fn request_timeout(mut self, timeout: &str) -> Rule {
        self.request_timeout = Some(timeout.to_owned());
        self
    }

    fn to_value(&self) -> Value {
        let backends: Vec<Value> = self.backends.iter().map(BackendRef::to_value).collect();
        let mut rule = json!({"backendRefs": backends});
        if !self.paths.is_empty() {
            let matches: Vec<Value> = self
                .paths
                .iter()
                .map(|(kind, value)| json!({"path": {"type": kind, "value": value}}))
                .collect();
            rule["matches"] = json!(matches);
        }
        if let Some(timeout) = &self.request_timeout {
            rule["timeouts"] = json!({"request": timeout});
        }
        rule
    }
}

/// A `gateway.networking.k8s.io/v1` HTTPRoute.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    meta: Meta,
    parents: Vec<(String, String)>,
    rules: Vec<Rule>,
}

impl HttpRoute {
    /// A route without parents or rules yet.
    pub fn new(name: &str) -> HttpRoute {
        HttpRoute {
            meta: Meta::named(name),
            parents: Vec::new(),
            rules: Vec::new(),
        }
    }

    /// In `namespace` (default: none, which the gateway reads as `default`).
    pub fn namespace(mut self, namespace: &str) -> HttpRoute {
        self.meta.namespace = Some(namespace.to_owned());
        self
    }

    /// Attach to the listener `section` of the Gateway `gateway`.
    pub fn on(mut self, gateway: &str, section: &str) -> HttpRoute {
        self.parents.push((gateway.to_owned(), section.to_owned()));
        self
    }

    /// Add `rule`.
    pub fn rule(mut self, rule: Rule) -> HttpRoute {
        self.rules.push(rule);
        self
    }

    /// Add a rule sending every request to `backend`.
    pub fn to(self, backend: BackendRef) -> HttpRoute {
        self.rule(Rule::to(backend))
    }
}

impl Object for HttpRoute {
    fn to_value(&self) -> Value {
        let parents: Vec<Value> = self
            .parents
            .iter()
            .map(|(name, section)| json!({"name": name, "sectionName": section}))
            .collect();
        let rules: Vec<Value> = self.rules.iter().map(Rule::to_value).collect();
        json!({
            "apiVersion": GATEWAY_API,
            "kind": "HTTPRoute",
            "metadata": self.meta.to_value(),
            "spec": {"parentRefs": parents, "rules": rules},
        })
    }
}

/// A `v1` Service selecting pods by label.
#[derive(Debug, Clone)]
pub struct Service {
    meta: Meta,
    selector: Vec<(String, String)>,
    ports: Vec<(u16, u16)>,
}

impl Service {
    /// A Service without selector or ports yet.
    pub fn new(name: &str) -> Service {
        Service {
            meta: Meta::named(name),
            selector: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// Select pods labelled `key: value`.
    pub fn selector(mut self, key: &str, value: &str) -> Service {
        self.selector.push(pair(key, value));
        self
    }

    /// Serve `port`, forwarding to the pods' `target_port`.
    pub fn port(mut self, port: u16, target_port: u16) -> Service {
        self.ports.push((port, target_port));
        self
    }
}

impl Object for Service {
    fn to_value(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(port, target)| json!({"port": port, "targetPort": target}))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.meta.to_value(),
            "spec": {"selector": string_map(&self.selector), "ports": ports},
        })
    }
}

/// A `v1` Pod as the gateway sees one: labels, an address, and whether it is Ready.
#[derive(Debug, Clone)]
pub struct Pod {
    meta: Meta,
    ip: IpAddr,
    ready: bool,
    running: bool,
    container: Option<(String, String, u16)>,
}

impl Pod {
    /// A Ready pod at `ip`, without labels yet.
    pub fn new(name: &str, ip: IpAddr) -> Pod {
        Pod {
            meta: Meta::named(name),
            ip,
            ready: true,
            running: false,
            container: None,
        }
    }

    /// In `namespace` (default: none, which the gateway reads as `default`).
    pub fn namespace(mut self, namespace: &str) -> Pod {
        self.meta.namespace = Some(namespace.to_owned());
        self
    }

    /// Label it `key: value`.
    pub fn label(mut self, key: &str, value: &str) -> Pod {
        self.meta.labels.push(pair(key, value));
        self
    }

    /// Its `Ready` condition: `True` or `False`.
    pub fn ready(mut self, ready: bool) -> Pod {
        self.ready = ready;
        self
    }

    /// `status.phase: Running`, as the API server reports a started pod.
    pub fn running(mut self) -> Pod {
        self.running = true;
        self
    }

    /// A container `name` of `image` with a port named `http` on `port`.
    pub fn container(mut self, name: &str, image: &str, port: u16) -> Pod {
        self.container = Some((name.to_owned(), image.to_owned(), port));
        self
    }
}

impl Object for Pod {
    fn to_value(&self) -> Value {
        let ready = if self.ready { "True" } else { "False" };
        let mut status = json!({
            "podIP": self.ip.to_string(),
            "conditions": [{"type": "Ready", "status": ready}],
        });
        if self.running {
            status["phase"] = json!("Running");
        }
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.meta.to_value(),
            "status": status,
        });
        if let Some((name, image, port)) = &self.container {
            pod["spec"] = json!({"containers": [{
                "name": name,
                "image": image,
                "ports": [{"name": "http", "containerPort": port}],
            }]});
        }
        pod
    }
}

/// Ready pods `{prefix}-0`, `{prefix}-1`, ... labelled `app: {app}`, one per address.
pub fn ready_pods(prefix: &str, app: &str, ips: impl IntoIterator<Item = IpAddr>) -> Vec<Pod> {
    ips.into_iter()
        .enumerate()
        .map(|(i, ip)| Pod::new(&format!("{prefix}-{i}"), ip).label("app", app))
        .collect()
}

/// An InferencePool, `inference.networking.x-k8s.io/v1alpha2` or `inference.networking.k8s.io/v1`.
#[derive(Debug, Clone)]
pub struct InferencePool {
    meta: Meta,
    v1: bool,
    selector: Vec<(String, String)>,
    target_port: u16,
}

impl InferencePool {
    /// A v1alpha2 pool whose endpoints listen on `target_port`, without selector yet.
    pub fn new(name: &str, target_port: u16) -> InferencePool {
        InferencePool {
            meta: Meta::named(name),
            v1: false,
            selector: Vec::new(),
            target_port,
        }
    }

    /// A v1 pool whose endpoints listen on `target_port`, without selector yet.
    pub fn v1(name: &str, target_port: u16) -> InferencePool {
        InferencePool {
            v1: true,
            ..InferencePool::new(name, target_port)
        }
    }

    /// In `namespace` (default: none, which the gateway reads as `default`).
    pub fn namespace(mut self, namespace: &str) -> InferencePool {
        self.meta.namespace = Some(namespace.to_owned());
        self
    }

    /// Select pods labelled `key: value`.
    pub fn selector(mut self, key: &str, value: &str) -> InferencePool {
        self.selector.push(pair(key, value));
        self
    }

    /// The routing strategy annotation ([`ROUTING_STRATEGY`]).
    pub fn strategy(self, strategy: &str) -> InferencePool {
        self.annotation(ROUTING_STRATEGY, strategy)
    }

    /// Any annotation (strategy parameters, the model-server runtime).
    pub fn annotation(mut self, key: &str, value: &str) -> InferencePool {
        self.meta.annotations.push(pair(key, value));
        self
    }
}

impl Object for InferencePool {
    fn to_value(&self) -> Value {
        let selector = string_map(&self.selector);
        let (api_version, spec) = if self.v1 {
            (
                format!("{POOL_GROUP_V1}/v1"),
                json!({
                    "selector": {"matchLabels": selector},
                    "targetPorts": [{"number": self.target_port}],
                }),
            )
        } else {
            (
                format!("{POOL_GROUP_V1ALPHA2}/v1alpha2"),
                json!({
                    "targetPortNumber": self.target_port,
                    "selector": selector,
                    "extensionRef": {"name": UNUSED_EXTENSION},
                }),
            )
        };
        json!({
            "apiVersion": api_version,
            "kind": "InferencePool",
            "metadata": self.meta.to_value(),
            "spec": spec,
        })
    }
}

/// A v1alpha2 InferenceModel: a model name clients send, in a pool, with a criticality and target
/// models.
#[derive(Debug, Clone)]
pub struct InferenceModel {
    meta: Meta,
    model_name: String,
    pool: String,
    criticality: Option<String>,
    targets: Vec<(String, Option<u32>)>,
}

impl InferenceModel {
    /// `model_name` served by `pool`, with no criticality (Standard) and no targets (sent as
    /// requested).
    pub fn new(name: &str, model_name: &str, pool: &str) -> InferenceModel {
        InferenceModel {
            meta: Meta::named(name),
            model_name: model_name.to_owned(),
            pool: pool.to_owned(),
            criticality: None,
            targets: Vec::new(),
        }
    }

    /// `Critical`, `Standard` or `Sheddable`.
    pub fn criticality(mut self, criticality: &str) -> InferenceModel {
        self.criticality = Some(criticality.to_owned());
        self
    }

    /// A target model without a weight (targets without weights share equally).
    pub fn target(mut self, name: &str) -> InferenceModel {
        self.targets.push((name.to_owned(), None));
        self
    }

    /// A target model with `weight`.
    pub fn weighted_target(mut self, name: &str, weight: u32) -> InferenceModel {
        self.targets.push((name.to_owned(), Some(weight)));
        self
    }
}

impl Object for InferenceModel {
    fn to_value(&self) -> Value {
        let mut spec = json!({"modelName": self.model_name, "poolRef": {"name": self.pool}});
        if let Some(criticality) = &self.criticality {
            spec["criticality"] = json!(criticality);
        }
        if !self.targets.is_empty() {
            let targets: Vec<Value> = self
                .targets
                .iter()
                .map(|(name, weight)| match weight {
                    Some(weight) => json!({"name": name, "weight": weight}),
                    None => json!({"name": name}),
                })
                .collect();
            spec["targetModels"] = json!(targets);
        }
        json!({
            "apiVersion": format!("{POOL_GROUP_V1ALPHA2}/v1alpha2"),
            "kind": "InferenceModel",
            "metadata": self.meta.to_value(),
            "spec": spec,
        })
    }
}

/// The seed's two InferenceModels in `pool`: `base`, the Critical model `/model/qwen`, and
/// `travel`, the model `travel-helper` sent to `travel-helper-v1` and `travel-helper-v2` with
/// `weights` (the seed's are 90 and 10).
pub fn seed_models(pool: &str, weights: (u32, u32)) -> [InferenceModel; 2] {
    [
        InferenceModel::new("base", "/model/qwen", pool).criticality("Critical"),
        InferenceModel::new("travel", "travel-helper", pool)
            .weighted_target("travel-helper-v1", weights.0)
            .weighted_target("travel-helper-v2", weights.1),
    ]
}

/// Envoy Gateway's BackendTrafficPolicy setting the request timeout of a Gateway (the seed's
/// `timeout.http.requestTimeout`).
#[derive(Debug, Clone)]
pub struct BackendTrafficPolicy {
    meta: Meta,
    gateway: String,
    request_timeout: String,
}

impl BackendTrafficPolicy {
    /// A policy giving every request through Gateway `gateway` at most `request_timeout`.
    pub fn new(name: &str, gateway: &str, request_timeout: &str) -> BackendTrafficPolicy {
        BackendTrafficPolicy {
            meta: Meta::named(name),
            gateway: gateway.to_owned(),
            request_timeout: request_timeout.to_owned(),
        }
    }

    /// In `namespace` (default: none, which the gateway reads as `default`), with its Gateway.
    pub fn namespace(mut self, namespace: &str) -> BackendTrafficPolicy {
        self.meta.namespace = Some(namespace.to_owned());
        self
    }
}

impl Object for BackendTrafficPolicy {
    fn to_value(&self) -> Value {
        json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1",
            "kind": "BackendTrafficPolicy",
            "metadata": self.meta.to_value(),
            "spec": {
                "targetRef": {"group": GATEWAY_GROUP, "kind": "Gateway", "name": self.gateway},
                "timeout": {"http": {"requestTimeout": self.request_timeout}},
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    /// Every document of `text`, parsed back.
    fn documents(text: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn the_test_gateway_is_a_class_and_a_gateway_with_two_listeners() {
        let docs = documents(&Manifest::test_gateway(8080, 8081).render());
        assert_eq!(
            docs,
            vec![
                yaml(
                    "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: test-class}
spec: {controllerName: inference-gateway.dev/controller}"
                ),
                yaml(
                    "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: test-class
  listeners:
  - {name: http, protocol: HTTP, port: 8080}
  - {name: llm, protocol: HTTP, port: 8081}"
                ),
            ]
        );
    }

    #[test]
    fn pods_render_readiness_as_the_strings_kubernetes_uses() {
        let pods = ready_pods("sim", "sim", [ip(2), ip(3)]);
        let text = Manifest::new()
            .with_all(pods)
            .with(Pod::new("down", ip(9)).label("app", "sim").ready(false))
            .render();
        let docs = documents(&text);
        assert_eq!(docs.len(), 3);
        assert_eq!(
            docs[1],
            yaml(
                "apiVersion: v1
kind: Pod
metadata: {name: sim-1, labels: {app: sim}}
status: {podIP: 127.0.0.3, conditions: [{type: Ready, status: 'True'}]}"
            )
        );
        assert_eq!(
            docs[2]["status"]["conditions"][0]["status"],
            yaml("'False'"),
            "a string, not a YAML boolean: {text}"
        );
    }

    #[test]
    fn a_kube_pod_has_a_phase_a_container_and_a_namespace() {
        let pod = Pod::new("qwen-0", ip(5))
            .namespace("team-a")
            .label("app", "qwen")
            .running()
            .container("vllm", "vllm-sim", 8000);
        assert_eq!(
            documents(&pod.to_yaml()),
            vec![yaml(
                "apiVersion: v1
kind: Pod
metadata: {name: qwen-0, namespace: team-a, labels: {app: qwen}}
spec: {containers: [{name: vllm, image: vllm-sim, ports: [{name: http, containerPort: 8000}]}]}
status: {phase: Running, podIP: 127.0.0.5, conditions: [{type: Ready, status: 'True'}]}"
            )]
        );
    }

    #[test]
    fn routes_render_parents_matches_timeouts_and_both_backend_kinds() {
        let route = HttpRoute::new("edge-cases")
            .on("gw", "http")
            .rule(Rule::to(BackendRef::service("empty", 80)).exact_path("/no-pods"))
            .rule(
                Rule::to(BackendRef::pool("pool"))
                    .path_prefix("/slow")
                    .request_timeout("300ms"),
            )
            .to(BackendRef::pool_v1("pool-v1"));
        assert_eq!(
            documents(&route.to_yaml())[0],
            yaml(
                "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: edge-cases}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: Exact, value: /no-pods}}]
    backendRefs: [{kind: Service, name: empty, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{group: inference.networking.x-k8s.io, kind: InferencePool, name: pool}]
  - backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: pool-v1}]"
            )
        );
    }

    #[test]
    fn pools_of_both_versions_models_services_and_policies() {
        let text = Manifest::new()
            .with(
                InferencePool::new("pool", 8000)
                    .selector("app", "sim")
                    .strategy("PREFIX_CACHE"),
            )
            .with(
                InferencePool::v1("pool-v1", 9000)
                    .namespace("team-a")
                    .selector("app", "qwen"),
            )
            .with(
                InferenceModel::new("travel", "travel-helper", "pool")
                    .criticality("Critical")
                    .weighted_target("travel-helper-v1", 70)
                    .target("travel-helper-v2"),
            )
            .with(Service::new("qwen").selector("app", "qwen").port(80, 8000))
            .with(BackendTrafficPolicy::new("timeout", "gw", "1h"))
            .render();
        let expected = "
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata:
  name: pool
  annotations: {inference.networking.x-k8s.io/routing-strategy: PREFIX_CACHE}
spec: {targetPortNumber: 8000, selector: {app: sim}, extensionRef: {name: unused}}
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool-v1, namespace: team-a}
spec: {selector: {matchLabels: {app: qwen}}, targetPorts: [{number: 9000}]}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: travel}
spec:
  modelName: travel-helper
  criticality: Critical
  poolRef: {name: pool}
  targetModels: [{name: travel-helper-v1, weight: 70}, {name: travel-helper-v2}]
---
apiVersion: v1
kind: Service
metadata: {name: qwen}
spec: {selector: {app: qwen}, ports: [{port: 80, targetPort: 8000}]}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: timeout}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}
  timeout: {http: {requestTimeout: 1h}}
";
        assert_eq!(documents(&text), documents(expected));
    }

    #[test]
    fn replacing_swaps_the_object_of_the_same_kind_and_name_in_place() {
        let base = Manifest::new()
            .with(InferenceModel::new("base", "/model/qwen", "pool"))
            .with(InferenceModel::new("travel", "travel-helper", "pool").target("v1"))
            .with(Service::new("travel"));
        let edited = base
            .clone()
            .replacing(InferenceModel::new("travel", "travel-helper", "pool").target("v2"));
        let (before, after) = (documents(&base.render()), documents(&edited.render()));
        assert_eq!(after.len(), 3);
        assert_eq!(after[0], before[0]);
        assert_eq!(after[1]["spec"]["targetModels"][0]["name"], yaml("v2"));
        assert_eq!(after[2], before[2], "the Service of the same name stays");
    }

    #[test]
    #[should_panic(expected = "no object")]
    fn replacing_an_object_that_is_not_there_fails() {
        let _ = Manifest::new()
            .with(Pod::new("a", ip(2)))
            .replacing(Pod::new("b", ip(2)));
    }
}
