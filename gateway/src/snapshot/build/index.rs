//! The build's first pass: objects sorted by kind, each with its key, origin and source order,
//! and duplicates reported.
//!
//! It only sorts and looks up; deciding what an object means is the other passes' job.

use std::collections::HashMap;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::config::crds::apix::{ApixGroup, Objective, Rewrite};
use crate::config::crds::v1alpha2::InferenceModel;
use crate::config::objects::BackendTrafficPolicy;
use crate::config::{ConfigIssue, Object, ObjectKey, ObjectSet, Origin};
use crate::snapshot::backends::PoolSpec;

/// An object with its key, where it was defined and its position in the source.
pub(super) struct Located<'a, T> {
    pub(super) key: ObjectKey,
    pub(super) origin: Option<&'a Origin>,
    pub(super) order: usize,
    pub(super) object: &'a T,
}

impl<T> Located<'_, T> {
    /// An error about this object.
    pub(super) fn error(
        &self,
        field: impl Into<String>,
        value: impl std::fmt::Display,
        message: impl Into<String>,
    ) -> ConfigIssue {
        ConfigIssue::error(self.key.to_string(), field, value, message).at(self.origin)
    }

    /// A warning about this object.
    pub(super) fn warning(
        &self,
        field: impl Into<String>,
        value: impl std::fmt::Display,
        message: impl Into<String>,
    ) -> ConfigIssue {
        ConfigIssue::warning(self.key.to_string(), field, value, message).at(self.origin)
    }
}

/// The objects of one build, by kind.
#[derive(Default)]
pub(super) struct Index<'a> {
    pub(super) gateway_classes: Vec<Located<'a, GatewayClass>>,
    pub(super) gateways: Vec<Located<'a, Gateway>>,
    pub(super) routes: Vec<Located<'a, HttpRoute>>,
    pub(super) services: HashMap<ObjectKey, Located<'a, Service>>,
    pub(super) pods: HashMap<String, Vec<&'a Pod>>,
    pub(super) namespaces: HashMap<String, &'a Namespace>,
    pub(super) pools: Vec<PoolSpec<'a>>,
    pub(super) models: Vec<Located<'a, InferenceModel>>,
    pub(super) objectives: Vec<Located<'a, Objective>>,
    pub(super) rewrites: Vec<Located<'a, Rewrite>>,
    pub(super) policies: Vec<Located<'a, BackendTrafficPolicy>>,
}

impl<'a> Index<'a> {
    /// The pods of `namespace`.
    pub(super) fn pods_in(&self, namespace: &str) -> &[&'a Pod] {
        self.pods.get(namespace).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// `items` oldest first: by creation time (objects without one last), then source order.
pub(super) fn oldest_first<'b, 'a, T>(
    items: &'b [Located<'a, T>],
    created: impl Fn(&T) -> Option<&Time>,
) -> Vec<&'b Located<'a, T>> {
    let mut ordered: Vec<&Located<'a, T>> = items.iter().collect();
    ordered.sort_by_key(|item| {
        let created = created(item.object).map(|t| t.0.as_second());
        (created.is_none(), created.unwrap_or(0), item.order)
    });
    ordered
}

/// The group of an InferenceObjective or InferenceModelRewrite, `None` for other kinds.
fn apix_group(object: &Object) -> Option<ApixGroup> {
    match object {
        Object::Objective(o) => Some(o.group),
        Object::Rewrite(o) => Some(o.group),
        _ => None,
    }
}

/// Sort `objects` by kind; an object defined twice is an error and its second definition is left
/// out. An InferenceObjective or InferenceModelRewrite defined in both of its API groups is not
/// an error: the `llm-d.ai` one wins and the other is reported as shadowed.
pub(super) fn index<'a>(objects: &'a ObjectSet, issues: &mut Vec<ConfigIssue>) -> Index<'a> {
    let mut index = Index::default();
    let mut seen: HashMap<ObjectKey, Option<&'a Origin>> = HashMap::new();
    let preferred: std::collections::HashSet<ObjectKey> = objects
        .iter()
        .filter(|d| apix_group(&d.object) == Some(ApixGroup::LlmD))
        .map(|d| d.object.key())
        .collect();
    for (order, document) in objects.iter().enumerate() {
        let key = document.object.key();
        let origin = document.origin.as_ref();
        if apix_group(&document.object) == Some(ApixGroup::XK8s) && preferred.contains(&key) {
            issues.push(
                ConfigIssue::warning(
                    key.to_string(),
                    "apiVersion",
                    "inference.networking.x-k8s.io/v1alpha2",
                    "shadowed by the llm-d.ai/v1alpha2 object of the same name, which is the one applied",
                )
                .at(origin),
            );
            continue;
        }
        if let Some(first) = seen.get(&key) {
            let at = first.map_or_else(|| "another source".to_owned(), ToString::to_string);
            issues.push(
                ConfigIssue::error(
                    key.to_string(),
                    "metadata.name",
                    &key.name,
                    format!("defined twice; first at {at}"),
                )
                .at(origin),
            );
            continue;
        }
        seen.insert(key.clone(), origin);
        macro_rules! located {
            ($o:expr) => {
                Located {
                    key: key.clone(),
                    origin,
                    order,
                    object: &**$o,
                }
            };
        }
        match &document.object {
            Object::GatewayClass(o) => index.gateway_classes.push(located!(o)),
            Object::Gateway(o) => index.gateways.push(located!(o)),
            Object::HttpRoute(o) => index.routes.push(located!(o)),
            Object::Service(o) => {
                index.services.insert(key.clone(), located!(o));
            }
            Object::Pod(o) => index.pods.entry(key.namespace.clone()).or_default().push(o),
            Object::Namespace(o) => {
                index.namespaces.insert(key.name.clone(), o);
            }
            Object::PoolV1Alpha2(o) => {
                index
                    .pools
                    .push(PoolSpec::from_v1alpha2(key.clone(), origin, o))
            }
            Object::PoolV1(o) => index.pools.push(PoolSpec::from_v1(key.clone(), origin, o)),
            Object::InferenceModel(o) => index.models.push(located!(o)),
            Object::Objective(o) => index.objectives.push(located!(o)),
            Object::Rewrite(o) => index.rewrites.push(located!(o)),
            Object::BackendTrafficPolicy(o) => index.policies.push(located!(o)),
        }
    }
    index
}
