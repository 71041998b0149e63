//! The Kubernetes objects the gateway understands, and their parsing from YAML documents.
//!
//! Both sources produce an [`ObjectSet`]: the file source by parsing multi-document YAML (this
//! module), the kube source from its reflector stores. Parsing keeps every document's origin so
//! problems can be reported against the file they came from. Kinds the gateway does not use (the
//! seed's `Deployment`, for example) are recorded as ignored, not rejected, so the seed's YAML loads
//! as written.

use std::collections::BTreeMap;
use std::fmt;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::crds::apix::{self, llmd, xk8s};
use super::crds::{v1, v1alpha2};
use super::issues::{ConfigIssue, Origin};

/// Namespace of objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Kinds of objects the gateway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    /// `gateway.networking.k8s.io` GatewayClass.
    GatewayClass,
    /// `gateway.networking.k8s.io` Gateway.
    Gateway,
    /// `gateway.networking.k8s.io` HTTPRoute.
    HttpRoute,
    /// Core Service.
    Service,
    /// Core Pod.
    Pod,
    /// Core Namespace (for `allowedRoutes` namespace selectors).
    Namespace,
    /// InferencePool, either API version.
    InferencePool,
    /// `inference.networking.x-k8s.io/v1alpha2` InferenceModel.
    InferenceModel,
    /// InferenceObjective, `llm-d.ai` or `inference.networking.x-k8s.io` (`v1alpha2`).
    InferenceObjective,
    /// InferenceModelRewrite, `llm-d.ai` or `inference.networking.x-k8s.io` (`v1alpha2`).
    InferenceModelRewrite,
    /// Envoy Gateway's BackendTrafficPolicy (only `timeout.http.requestTimeout` is read).
    BackendTrafficPolicy,
}

impl Kind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::InferencePool => "InferencePool",
            Kind::InferenceModel => "InferenceModel",
            Kind::InferenceObjective => "InferenceObjective",
            Kind::InferenceModelRewrite => "InferenceModelRewrite",
            Kind::BackendTrafficPolicy => "BackendTrafficPolicy",
        }
    }
}

/// Identity of an object: kind, namespace and name. Cluster-scoped kinds have an empty namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace (`""` for cluster-scoped objects).
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `namespace/name` (or `name` when cluster-scoped).
    pub fn qualified_name(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.qualified_name())
    }
}

/// Envoy Gateway's `BackendTrafficPolicy`, reduced to what the gateway honours: the request timeout
/// of the Gateway it targets (the seed sets `timeout.http.requestTimeout: 1h`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTrafficPolicy {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: BackendTrafficPolicySpec,
}

/// The honoured part of a BackendTrafficPolicy spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTrafficPolicySpec {
    /// A single target (older form).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetRef>,
    /// Targets (newer form).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeout: Option<PolicyTimeout>,
}

/// A policy target.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyTargetRef {
    /// API group of the target.
    #[serde(default)]
    pub group: String,
    /// Kind of the target.
    #[serde(default)]
    pub kind: String,
    /// Name of the target, in the policy's namespace.
    pub name: String,
}

/// `spec.timeout`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyTimeout {
    /// `spec.timeout.http`.
    #[serde(default)]
    pub http: Option<PolicyHttpTimeout>,
}

/// `spec.timeout.http`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyHttpTimeout {
    /// The whole-request timeout, as a Gateway API duration (`1h`, `30s`).
    #[serde(default)]
    pub request_timeout: Option<String>,
}

/// One parsed object.
#[derive(Debug, Clone)]
pub enum Object {
    /// A GatewayClass.
    GatewayClass(Box<GatewayClass>),
    /// A Gateway.
    Gateway(Box<Gateway>),
    /// An HTTPRoute.
    HttpRoute(Box<HttpRoute>),
    /// A Service.
    Service(Box<Service>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A Namespace.
    Namespace(Box<Namespace>),
    /// A v1alpha2 InferencePool.
    PoolV1Alpha2(Box<v1alpha2::InferencePool>),
    /// A v1 InferencePool.
    PoolV1(Box<v1::InferencePool>),
    /// A v1alpha2 InferenceModel.
    InferenceModel(Box<v1alpha2::InferenceModel>),
    /// An InferenceObjective of either group.
    Objective(Box<apix::Objective>),
    /// An InferenceModelRewrite of either group.
    Rewrite(Box<apix::Rewrite>),
    /// An Envoy Gateway BackendTrafficPolicy.
    BackendTrafficPolicy(Box<BackendTrafficPolicy>),
}

impl Object {
    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::GatewayClass(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::PoolV1Alpha2(o) => &o.metadata,
            Object::PoolV1(o) => &o.metadata,
            Object::InferenceModel(o) => &o.metadata,
            Object::Objective(o) => &o.metadata,
            Object::Rewrite(o) => &o.metadata,
            Object::BackendTrafficPolicy(o) => &o.metadata,
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::Service(_) => Kind::Service,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::PoolV1Alpha2(_) | Object::PoolV1(_) => Kind::InferencePool,
            Object::InferenceModel(_) => Kind::InferenceModel,
            Object::Objective(_) => Kind::InferenceObjective,
            Object::Rewrite(_) => Kind::InferenceModelRewrite,
            Object::BackendTrafficPolicy(_) => Kind::BackendTrafficPolicy,
        }
    }

    /// The object's key. Namespaced kinds without a namespace are in [`DEFAULT_NAMESPACE`].
    pub fn key(&self) -> ObjectKey {
        let kind = self.kind();
        let meta = self.metadata();
        let namespace = match kind {
            Kind::GatewayClass | Kind::Namespace => String::new(),
            _ => meta
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        };
        ObjectKey::new(kind, namespace, meta.name.clone().unwrap_or_default())
    }
}

/// An object with the place it came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// File and document number, when the object came from a file.
    pub origin: Option<Origin>,
    /// The object.
    pub object: Object,
}

/// A document the gateway does not use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IgnoredDocument {
    /// Where it was.
    pub origin: Option<Origin>,
    /// Its `apiVersion`.
    pub api_version: String,
    /// Its `kind`.
    pub kind: String,
    /// Its `metadata.name`, if any.
    pub name: String,
}

/// Every object from one source, in source order.
#[derive(Debug, Clone, Default)]
pub struct ObjectSet {
    /// Objects the gateway reads.
    pub documents: Vec<Document>,
    /// Documents of kinds the gateway does not use.
    pub ignored: Vec<IgnoredDocument>,
}

impl ObjectSet {
    /// Parse every YAML document of `text` (one file) into this set, returning the problems.
    pub fn add_yaml(&mut self, text: &str, file: &std::path::Path) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let origin = Origin {
                file: file.to_path_buf(),
                document: index + 1,
            };
            match serde_yaml::Value::deserialize(document) {
                Ok(serde_yaml::Value::Null) => {}
                Ok(value) => self.add_value(value, &origin, &mut issues),
                Err(e) => {
                    issues.push(
                        ConfigIssue::error("document", "(yaml)", "", e.to_string())
                            .at(Some(&origin)),
                    );
                    // The YAML stream cannot be resynchronised after a syntax error.
                    break;
                }
            }
        }
        issues
    }

    fn add_value(
        &mut self,
        value: serde_yaml::Value,
        origin: &Origin,
        issues: &mut Vec<ConfigIssue>,
    ) {
        let text = |key: &str| {
            value
                .get(key)
                .and_then(serde_yaml::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let api_version = text("apiVersion");
        let kind = text("kind");
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if api_version.is_empty() || kind.is_empty() {
            issues.push(
                ConfigIssue::error(
                    "document",
                    if api_version.is_empty() {
                        "apiVersion"
                    } else {
                        "kind"
                    },
                    "",
                    "every document must have apiVersion and kind",
                )
                .at(Some(origin)),
            );
            return;
        }
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", api_version.as_str()),
        };
        if group.is_empty() && version == "v1" && kind == "List" {
            if let Some(serde_yaml::Value::Sequence(items)) = value.get("items") {
                for item in items.clone() {
                    self.add_value(item, origin, issues);
                }
            }
            return;
        }
        let label = format!("{kind} {name}");
        let parsed = match (group, version, kind.as_str()) {
            ("gateway.networking.k8s.io", "v1" | "v1beta1", "GatewayClass") => {
                typed(value, &label, origin).map(Object::GatewayClass)
            }
            ("gateway.networking.k8s.io", "v1" | "v1beta1", "Gateway") => {
                typed(value, &label, origin).map(Object::Gateway)
            }
            ("gateway.networking.k8s.io", "v1" | "v1beta1", "HTTPRoute") => {
                typed(value, &label, origin).map(Object::HttpRoute)
            }
            ("", "v1", "Service") => typed(value, &label, origin).map(Object::Service),
            ("", "v1", "Pod") => typed(value, &label, origin).map(Object::Pod),
            ("", "v1", "Namespace") => typed(value, &label, origin).map(Object::Namespace),
            ("inference.networking.x-k8s.io", "v1alpha2", "InferencePool") => {
                typed(value, &label, origin).map(Object::PoolV1Alpha2)
            }
            ("inference.networking.k8s.io", "v1", "InferencePool") => {
                typed(value, &label, origin).map(Object::PoolV1)
            }
            ("inference.networking.x-k8s.io", "v1alpha2", "InferenceModel") => {
                typed(value, &label, origin).map(Object::InferenceModel)
            }
            ("llm-d.ai", "v1alpha2", "InferenceObjective") => {
                typed::<llmd::InferenceObjective>(value, &label, origin)
                    .map(|o| Object::Objective(Box::new((*o).into())))
            }
            ("inference.networking.x-k8s.io", "v1alpha2", "InferenceObjective") => {
                typed::<xk8s::InferenceObjective>(value, &label, origin)
                    .map(|o| Object::Objective(Box::new((*o).into())))
            }
            ("llm-d.ai", "v1alpha2", "InferenceModelRewrite") => {
                typed::<llmd::InferenceModelRewrite>(value, &label, origin)
                    .map(|o| Object::Rewrite(Box::new((*o).into())))
            }
            ("inference.networking.x-k8s.io", "v1alpha2", "InferenceModelRewrite") => {
                typed::<xk8s::InferenceModelRewrite>(value, &label, origin)
                    .map(|o| Object::Rewrite(Box::new((*o).into())))
            }
            ("gateway.envoyproxy.io", "v1alpha1", "BackendTrafficPolicy") => {
                typed(value, &label, origin).map(Object::BackendTrafficPolicy)
            }
            (
                "inference.networking.x-k8s.io"
                | "inference.networking.k8s.io"
                | "llm-d.ai"
                | "gateway.networking.k8s.io",
                _,
                "InferencePool"
                | "InferenceModel"
                | "InferenceObjective"
                | "InferenceModelRewrite"
                | "GatewayClass"
                | "Gateway"
                | "HTTPRoute",
            ) => Err(Box::new(
                ConfigIssue::error(
                    label.clone(),
                    "apiVersion",
                    &api_version,
                    format!("unsupported API version for {kind}"),
                )
                .at(Some(origin)),
            )),
            _ => {
                self.ignored.push(IgnoredDocument {
                    origin: Some(origin.clone()),
                    api_version,
                    kind,
                    name,
                });
                return;
            }
        };
        match parsed {
            Ok(object) if object.metadata().name.as_deref().unwrap_or("").is_empty() => {
                issues.push(
                    ConfigIssue::error(label, "metadata.name", "", "every object needs a name")
                        .at(Some(origin)),
                );
            }
            Ok(object) => self.documents.push(Document {
                origin: Some(origin.clone()),
                object,
            }),
            Err(issue) => issues.push(*issue),
        }
    }

    /// Add an object that did not come from a file (the kube source, tests).
    pub fn push(&mut self, object: Object) {
        self.documents.push(Document {
            origin: None,
            object,
        });
    }

    /// Objects with their keys, in source order.
    pub fn iter(&self) -> impl Iterator<Item = &Document> {
        self.documents.iter()
    }

    /// How many documents of each kind, for logs and the debug endpoint.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for document in &self.documents {
            *counts.entry(document.object.kind().as_str()).or_insert(0) += 1;
        }
        counts
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    label: &str,
    origin: &Origin,
) -> Result<Box<T>, Box<ConfigIssue>> {
    serde_path_to_error::deserialize(value)
        .map(Box::new)
        .map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                String::from("(object)")
            } else {
                path
            };
            Box::new(
                ConfigIssue::error(label, field, "", e.into_inner().to_string()).at(Some(origin)),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (ObjectSet, Vec<ConfigIssue>) {
        let mut set = ObjectSet::default();
        let issues = set.add_yaml(text, std::path::Path::new("test.yaml"));
        (set, issues)
    }

    #[test]
    fn unknown_kinds_are_ignored_and_known_ones_parsed() {
        let (set, issues) = parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: qwen}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: qwen}\nspec: {selector: {app: qwen}}\n---\n",
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(set.documents.len(), 1);
        assert_eq!(
            set.documents[0].object.key(),
            ObjectKey::new(Kind::Service, "default", "qwen")
        );
        assert_eq!(set.ignored[0].kind, "Deployment");
        assert_eq!(set.ignored[0].origin.as_ref().unwrap().document, 1);
    }

    #[test]
    fn type_errors_name_the_field_and_document() {
        let (_, issues) = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n\
             apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\n\
             metadata: {name: pool}\nspec: {selector: {app: x}, targetPortNumber: eight}\n",
        );
        assert_eq!(issues.len(), 1);
        let issue = &issues[0];
        assert_eq!(issue.field, "spec.targetPortNumber");
        assert_eq!(issue.object, "InferencePool pool");
        assert_eq!(issue.origin.as_ref().unwrap().document, 2);
        assert!(issue.message.contains("invalid type"), "{}", issue.message);
    }

    #[test]
    fn missing_kind_and_name_are_errors() {
        let (_, issues) =
            parse("apiVersion: v1\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\n");
        assert_eq!(issues.len(), 2);
        assert_eq!(issues[0].field, "kind");
        assert_eq!(issues[1].field, "metadata.name");
    }

    #[test]
    fn yaml_syntax_errors_are_reported() {
        let (_, issues) = parse("apiVersion: v1\nkind: [Pod\n");
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].field, "(yaml)");
    }

    #[test]
    fn lists_are_flattened() {
        let (set, issues) = parse(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a}\n\
             - apiVersion: v1\n  kind: Pod\n  metadata: {name: b}\n",
        );
        assert!(issues.is_empty());
        assert_eq!(set.documents.len(), 2);
    }

    #[test]
    fn unsupported_versions_of_our_kinds_are_errors() {
        let (_, issues) = parse(
            "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool\nmetadata: {name: p}\n",
        );
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].field, "apiVersion");
    }
}
