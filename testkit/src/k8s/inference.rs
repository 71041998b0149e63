//! Gateway API Inference Extension objects: InferencePool (v1alpha2 and v1) and InferenceModel.
//! Shapes only; see [`super`].

use serde_json::{Value, json};

use super::{
    Meta, Object, POOL_GROUP_V1, POOL_GROUP_V1ALPHA2, ROUTING_STRATEGY, UNUSED_EXTENSION, pair,
    string_map,
};

/// An InferencePool, `inference.networking.x-k8s.io/v1alpha2` or `inference.networking.k8s.io/v1`.
#[derive(Debug, Clone)]
pub struct InferencePool {
    meta: Meta,
    v1: bool,
    selector: Vec<(String, String)>,
    target_port: u16,
    picker: Option<Value>,
}

impl InferencePool {
    /// A v1alpha2 pool whose endpoints listen on `target_port`, without selector yet.
    pub fn new(name: &str, target_port: u16) -> InferencePool {
        InferencePool {
            meta: Meta::named(name),
            v1: false,
            selector: Vec::new(),
            target_port,
            picker: None,
        }
    }

    /// A v1 pool whose endpoints listen on `target_port`, without selector yet.
    pub fn v1(name: &str, target_port: u16) -> InferencePool {
        InferencePool {
            v1: true,
            ..InferencePool::new(name, target_port)
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.meta.name
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

    /// A v1 pool's external endpoint picker: the Service `service` port `port`, with
    /// `failure_mode` (`FailOpen` or `FailClose`).
    pub fn picker(mut self, service: &str, port: u16, failure_mode: &str) -> InferencePool {
        self.picker = Some(json!({
            "name": service,
            "port": {"number": port},
            "failureMode": failure_mode,
        }));
        self
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
            let mut spec = json!({
                "selector": {"matchLabels": selector},
                "targetPorts": [{"number": self.target_port}],
            });
            if let Some(picker) = &self.picker {
                spec["endpointPickerRef"] = picker.clone();
            }
            (format!("{POOL_GROUP_V1}/v1"), spec)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{Manifest, documents};

    #[test]
    fn pools_of_both_versions_and_models_with_criticality_and_targets() {
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
";
        assert_eq!(documents(&text), documents(expected));
    }
}
