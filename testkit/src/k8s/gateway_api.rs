//! Gateway API and Envoy Gateway objects: GatewayClass, Gateway, HTTPRoute (rules, matches,
//! timeouts, backend references) and BackendTrafficPolicy. Shapes only; see [`super`].

use serde_json::{Value, json};

use super::{
    CONTROLLER_NAME, GATEWAY_API, GATEWAY_GROUP, Meta, Object, POOL_GROUP_V1, POOL_GROUP_V1ALPHA2,
};

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
    use super::*;
    use crate::k8s::{documents, yaml};

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
    fn a_policy_sets_the_request_timeout_of_a_gateway() {
        let policy = BackendTrafficPolicy::new("timeout", "gw", "1h").namespace("team-a");
        assert_eq!(
            documents(&policy.to_yaml()),
            vec![yaml(
                "apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: timeout, namespace: team-a}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}
  timeout: {http: {requestTimeout: 1h}}"
            )]
        );
    }
}
