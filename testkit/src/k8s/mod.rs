//! Builders for the Kubernetes objects a test configures the gateway with: GatewayClass, Gateway,
//! HTTPRoute, Service, Pod, InferencePool, InferenceModel and Envoy's BackendTrafficPolicy.
//!
//! A test states what differs (ports, addresses, a strategy, a criticality) and the builders fill
//! in the rest the same way for every test. Each builder renders a `serde_json::Value`; YAML text
//! is made in one place ([`Object::to_yaml`], [`Manifest::render`]) by `serde_yaml`, so quoting is
//! never a test's concern. This module knows only the object shapes, not the gateway's types (this
//! crate does not depend on the gateway): `gateway/tests/testkit_objects.rs` loads what the
//! builders render through the gateway's own parser and snapshot build.

mod gateway_api;
mod inference;
mod workloads;

use std::fmt;

use serde_json::{Map, Value, json};

pub use self::gateway_api::{
    BackendRef, BackendTrafficPolicy, Gateway, GatewayClass, HttpRoute, Rule,
};
pub use self::inference::{InferenceModel, InferencePool, seed_models};
pub use self::workloads::{Pod, Service, ready_pods};

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

    /// The kube tests' cluster: [`Manifest::test_gateway`] with the v1alpha2 pool `pool` (pods
    /// labelled `app: qwen`, target port `port`) behind `llm` and the Service `qwen` behind `http`.
    pub fn qwen_pool(http_port: u16, llm_port: u16, port: u16) -> Manifest {
        Manifest::test_gateway(http_port, llm_port)
            .with_pool(InferencePool::new("pool", port).selector("app", "qwen"), [])
            .with_plain_service("qwen", "qwen", port)
    }

    /// Add `pods`, then `pool`, then the HTTPRoute `llm-route` sending every request on the `llm`
    /// listener of [`Manifest::test_gateway`] to the pool.
    pub fn with_pool(self, pool: InferencePool, pods: impl IntoIterator<Item = Pod>) -> Manifest {
        let route = HttpRoute::new("llm-route")
            .on(TEST_GATEWAY, "llm")
            .to(BackendRef::pool(pool.name()));
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

#[cfg(test)]
fn documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[cfg(test)]
fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap()
}

#[cfg(test)]
fn ip(last: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
}

#[cfg(test)]
mod tests {
    use super::*;

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
