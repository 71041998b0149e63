//! Rust types of the Gateway API Inference Extension objects the gateway reads.
//!
//! `InferencePool` exists in two API versions with different shapes: the seed's
//! `inference.networking.x-k8s.io/v1alpha2` (flat `selector`, one `targetPortNumber`,
//! `extensionRef`) and the GA `inference.networking.k8s.io/v1` (`selector.matchLabels`, up to eight
//! `targetPorts`, `endpointPickerRef`). `InferenceModel` exists only as v1alpha2. Field names,
//! defaults and limits follow the upstream CRDs (GIE v0.5.1 and v1.x); values that need a clear
//! error (criticality, weights) are kept as plain data here and validated when the snapshot is
//! built, so the message can name the object and the field.
//!
//! These types only describe data; they carry no behaviour.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `inference.networking.x-k8s.io/v1alpha2`: the seed's API version.
pub mod v1alpha2 {
    use super::*;

    /// Spec of a v1alpha2 `InferencePool`.
    #[derive(
        CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema,
    )]
    #[kube(
        group = "inference.networking.x-k8s.io",
        version = "v1alpha2",
        kind = "InferencePool",
        namespaced,
        status = "InferencePoolStatus",
        derive = "Default",
        derive = "PartialEq"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct InferencePoolSpec {
        /// Labels a pod must carry (all of them) to belong to the pool.
        pub selector: BTreeMap<String, String>,
        /// The port the model servers listen on.
        pub target_port_number: i32,
        /// The endpoint-picker extension. This gateway picks endpoints itself and only records it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub extension_ref: Option<ExtensionReference>,
    }

    /// Reference to an endpoint-picker Service (v1alpha2 `extensionRef`).
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct ExtensionReference {
        /// API group, `""` for core.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub group: Option<String>,
        /// Kind, `Service` by default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
        /// Name of the referent.
        pub name: String,
        /// Port of the picker (9002 when unset).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub port_number: Option<i32>,
        /// `FailOpen` or `FailClose` (the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub failure_mode: Option<String>,
    }

    /// Status of a v1alpha2 pool: one entry per parent Gateway (JSON name `parent`, singular).
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct InferencePoolStatus {
        /// Per-parent conditions.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub parent: Vec<PoolParentStatus>,
    }

    /// Conditions of a pool under one parent.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct PoolParentStatus {
        /// The parent Gateway.
        pub parent_ref: k8s_openapi::api::core::v1::ObjectReference,
        /// `Accepted`, `ResolvedRefs`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub conditions: Vec<Condition>,
    }

    /// Spec of a v1alpha2 `InferenceModel`.
    #[derive(
        CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema,
    )]
    #[kube(
        group = "inference.networking.x-k8s.io",
        version = "v1alpha2",
        kind = "InferenceModel",
        namespaced,
        status = "InferenceModelStatus",
        derive = "Default",
        derive = "PartialEq"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct InferenceModelSpec {
        /// The name clients put in the request's `model` field.
        pub model_name: String,
        /// `Critical`, `Standard` or `Sheddable` (`Schedulable` is accepted as `Sheddable`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub criticality: Option<String>,
        /// Weighted models to send the request with (LoRA adapters or the base model).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target_models: Option<Vec<TargetModel>>,
        /// The pool that serves the model.
        pub pool_ref: PoolObjectReference,
    }

    /// A weighted target model.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct TargetModel {
        /// Model or adapter name sent upstream.
        pub name: String,
        /// Relative weight, 1..=1,000,000; set on all targets or on none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub weight: Option<i32>,
    }

    /// Reference from an `InferenceModel` to its pool.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct PoolObjectReference {
        /// API group, `inference.networking.x-k8s.io` by default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub group: Option<String>,
        /// Kind, `InferencePool` by default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
        /// Pool name, in the model's namespace.
        pub name: String,
    }

    /// Status of an `InferenceModel`.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct InferenceModelStatus {
        /// `Accepted` (reasons `Accepted`, `ModelNameInUse`, `Pending`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub conditions: Vec<Condition>,
    }
}

/// `inference.networking.k8s.io/v1`: the GA `InferencePool`.
pub mod v1 {
    use super::*;

    /// Spec of a v1 `InferencePool`.
    #[derive(
        CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema,
    )]
    #[kube(
        group = "inference.networking.k8s.io",
        version = "v1",
        kind = "InferencePool",
        namespaced,
        status = "InferencePoolStatus",
        derive = "Default",
        derive = "PartialEq"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct InferencePoolSpec {
        /// Pods in the pool's namespace whose labels match all of `matchLabels`.
        pub selector: LabelSelector,
        /// Ports the model servers listen on; each `podIP:port` is a separate endpoint.
        pub target_ports: Vec<Port>,
        /// `http` (the default) or `kubernetes.io/h2c`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub app_protocol: Option<String>,
        /// The endpoint picker. This gateway picks endpoints itself and only records it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub endpoint_picker_ref: Option<EndpointPickerRef>,
    }

    /// v1 label selector (`matchLabels` only, as the CRD allows).
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct LabelSelector {
        /// Labels a pod must carry, all of them.
        pub match_labels: BTreeMap<String, String>,
    }

    /// A port number.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct Port {
        /// 1..=65535.
        pub number: i32,
    }

    /// Reference to an endpoint picker (v1 `endpointPickerRef`).
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct EndpointPickerRef {
        /// API group, `""` for core.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub group: Option<String>,
        /// Kind, `Service` by default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
        /// Name of the referent.
        pub name: String,
        /// The Service port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub port: Option<Port>,
        /// `FailOpen` or `FailClose` (the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub failure_mode: Option<String>,
    }

    /// Status of a v1 pool.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct InferencePoolStatus {
        /// Per-parent conditions.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub parents: Vec<PoolParentStatus>,
    }

    /// Conditions of a pool under one parent Gateway.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct PoolParentStatus {
        /// The parent.
        pub parent_ref: ParentReference,
        /// Which controller wrote this entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub controller_name: Option<String>,
        /// `Accepted`, `ResolvedRefs`, `Exported`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub conditions: Vec<Condition>,
    }

    /// Reference to a parent Gateway.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct ParentReference {
        /// `gateway.networking.k8s.io`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub group: Option<String>,
        /// `Gateway`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
        /// Namespace of the parent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespace: Option<String>,
        /// Name of the parent.
        pub name: String,
    }
}
