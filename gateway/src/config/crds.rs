//! Rust types of the Gateway API Inference Extension objects the gateway reads.
//!
//! `InferencePool` exists in two API versions with different shapes: the seed's
//! `inference.networking.x-k8s.io/v1alpha2` (flat `selector`, one `targetPortNumber`,
//! `extensionRef`) and the GA `inference.networking.k8s.io/v1` (`selector.matchLabels`, up to eight
//! `targetPorts`, `endpointPickerRef`). `InferenceModel` exists only as v1alpha2. Its successors,
//! `InferenceObjective` (a priority) and `InferenceModelRewrite` (model-name rules), are
//! `v1alpha2` kinds of two API groups with the same shape: `llm-d.ai` (where they live today) and
//! `inference.networking.x-k8s.io` (where clusters installed them first); [`apix`] holds the shared
//! parts and one module per group the kinds. Field names, defaults and limits follow the upstream
//! CRDs (GIE v0.5.1 and v1.x, llm-d's `apix/v1alpha2`); values that need a clear error
//! (criticality, weights, match types) are kept as plain data here and validated when the
//! snapshot is built, so the message can name the object and the field.
//!
//! These types only describe data; they carry no behaviour.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Reference to the InferencePool of an InferenceModel, InferenceObjective or
/// InferenceModelRewrite, in the referrer's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PoolObjectReference {
    /// API group of the pool. When unset: `inference.networking.x-k8s.io` for an InferenceModel,
    /// `inference.networking.k8s.io` for an InferenceObjective or InferenceModelRewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind, `InferencePool` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Pool name, in the referrer's namespace.
    pub name: String,
}

/// Status of an object whose only condition is `Accepted` (InferenceModel, InferenceObjective,
/// InferenceModelRewrite).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct AcceptedStatus {
    /// `Accepted` (reasons `Accepted`, `Pending`, and for an InferenceModel `ModelNameInUse`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `inference.networking.x-k8s.io/v1alpha2`: the seed's API version.
pub mod v1alpha2 {
    pub use super::AcceptedStatus as InferenceModelStatus;
    pub use super::PoolObjectReference;
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
        /// The endpoint picker: a core Service the gateway asks over ext_proc where each request
        /// goes (without one, the gateway's built-in strategy picks).
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

/// The parts `InferenceObjective` and `InferenceModelRewrite` share in both of their API groups.
pub mod apix {
    pub use super::AcceptedStatus as ApixStatus;
    pub use super::PoolObjectReference as PoolRef;
    use super::*;

    /// The `llm-d.ai` API group, preferred when both groups hold an object of the same name.
    pub const LLMD_GROUP: &str = "llm-d.ai";
    /// The older `inference.networking.x-k8s.io` API group.
    pub const XK8S_GROUP: &str = "inference.networking.x-k8s.io";

    /// Which of the two API groups an object came from.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
    pub enum ApixGroup {
        /// `llm-d.ai`.
        LlmD,
        /// `inference.networking.x-k8s.io`.
        XK8s,
    }

    impl ApixGroup {
        /// The group name.
        pub fn as_str(self) -> &'static str {
            match self {
                ApixGroup::LlmD => LLMD_GROUP,
                ApixGroup::XK8s => XK8S_GROUP,
            }
        }
    }

    /// One rewrite rule: which requests it matches and the weighted models it sends them with.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct RewriteRule {
        /// OR-ed criteria; empty matches every request, including one without a `model`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub matches: Vec<RewriteMatch>,
        /// Weighted models to send a matching request with (at least one).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub targets: Vec<RewriteTarget>,
    }

    /// One match criterion.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct RewriteMatch {
        /// Criterion on the body's `model` field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub model: Option<ModelMatch>,
    }

    /// How a request's `model` is matched.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct ModelMatch {
        /// `Exact` (the default and only type).
        #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
        pub type_: Option<String>,
        /// The model name.
        pub value: String,
    }

    /// A weighted model a rule rewrites to.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct RewriteTarget {
        /// The model name sent upstream.
        pub model_rewrite: String,
        /// Relative weight, 1..=1,000,000; set on all targets of a rule or on none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub weight: Option<i32>,
    }

    /// The spec of an `InferenceObjective`, whichever group it came from.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct ObjectiveSpec {
        /// Higher is more important; negatives allowed; unset is `0`.
        pub priority: Option<i32>,
        /// The pool.
        pub pool_ref: PoolRef,
    }

    /// The spec of an `InferenceModelRewrite`, whichever group it came from.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct RewriteSpec {
        /// The pool.
        pub pool_ref: PoolRef,
        /// Ordered rules.
        pub rules: Vec<RewriteRule>,
    }

    /// An objective or a rewrite, with the group it came from.
    #[derive(Clone, Debug, PartialEq)]
    pub struct ApixObject<S> {
        /// Its API group.
        pub group: ApixGroup,
        /// Its metadata.
        pub metadata: ObjectMeta,
        /// Its spec.
        pub spec: S,
        /// Its status.
        pub status: Option<ApixStatus>,
    }

    /// An `InferenceObjective` of either group.
    pub type Objective = ApixObject<ObjectiveSpec>;
    /// An `InferenceModelRewrite` of either group.
    pub type Rewrite = ApixObject<RewriteSpec>;

    /// The kinds of one API group, with the conversions to the group-independent forms.
    macro_rules! apix_group {
        ($group:literal, $variant:expr) => {
            use super::{ApixGroup, ApixObject, ApixStatus, ObjectiveSpec, PoolRef, RewriteRule,
                RewriteSpec};
            use kube::CustomResource;
            use schemars::JsonSchema;
            use serde::{Deserialize, Serialize};

            /// Spec of an `InferenceObjective`: the priority of the requests that name it.
            #[derive(
                CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema,
            )]
            #[kube(
                group = $group,
                version = "v1alpha2",
                kind = "InferenceObjective",
                namespaced,
                status = "ApixStatus",
                derive = "Default",
                derive = "PartialEq"
            )]
            #[serde(rename_all = "camelCase")]
            pub struct InferenceObjectiveSpec {
                /// Higher is more important; negatives allowed; unset is `0`.
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub priority: Option<i32>,
                /// The pool, in the objective's namespace.
                pub pool_ref: PoolRef,
            }

            /// Spec of an `InferenceModelRewrite`: rules that rewrite a request's `model`.
            #[derive(
                CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema,
            )]
            #[kube(
                group = $group,
                version = "v1alpha2",
                kind = "InferenceModelRewrite",
                namespaced,
                status = "ApixStatus",
                derive = "Default",
                derive = "PartialEq"
            )]
            #[serde(rename_all = "camelCase")]
            pub struct InferenceModelRewriteSpec {
                /// The pool, in the rewrite's namespace.
                pub pool_ref: PoolRef,
                /// Ordered rules; the first that matches a request applies.
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub rules: Vec<RewriteRule>,
            }

            impl From<InferenceObjective> for ApixObject<ObjectiveSpec> {
                fn from(o: InferenceObjective) -> Self {
                    ApixObject {
                        group: $variant,
                        metadata: o.metadata,
                        spec: ObjectiveSpec {
                            priority: o.spec.priority,
                            pool_ref: o.spec.pool_ref,
                        },
                        status: o.status,
                    }
                }
            }

            impl From<InferenceModelRewrite> for ApixObject<RewriteSpec> {
                fn from(o: InferenceModelRewrite) -> Self {
                    ApixObject {
                        group: $variant,
                        metadata: o.metadata,
                        spec: RewriteSpec {
                            pool_ref: o.spec.pool_ref,
                            rules: o.spec.rules,
                        },
                        status: o.status,
                    }
                }
            }
        };
    }

    /// `llm-d.ai/v1alpha2`.
    pub mod llmd {
        apix_group!("llm-d.ai", ApixGroup::LlmD);
    }

    /// `inference.networking.x-k8s.io/v1alpha2`.
    pub mod xk8s {
        apix_group!("inference.networking.x-k8s.io", ApixGroup::XK8s);
    }
}
