//! Status of InferencePools (per parent Gateway, both API versions), InferenceModels,
//! InferenceObjectives and InferenceModelRewrites (an `Accepted` condition each).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use serde_json::{Value, json};

use super::{
    GATEWAY_GROUP, Issues, StatusContext, StatusKind, StatusUpdate, existing_conditions, messages,
    status_json, with_reason,
};
use crate::config::crds::v1alpha2;
use crate::config::{ConfigIssue, IssueReason, Kind, Object, ObjectKey, Severity};
use crate::kubernetes::conditions::{Desired, conditions};
use crate::snapshot::Snapshot;
use crate::snapshot::backends::PickerRef;
use crate::snapshot::picker::PickerResolution;

/// The picker reference of a pool, in the v1 shape, if any.
fn picker_ref(object: &Object) -> Option<PickerRef> {
    match object {
        Object::PoolV1Alpha2(p) => p.spec.extension_ref.as_ref().map(PickerRef::from_v1alpha2),
        Object::PoolV1(p) => p.spec.endpoint_picker_ref.as_ref().map(PickerRef::from_v1),
        _ => None,
    }
}

pub(super) fn pool_status(
    object: &Object,
    key: &ObjectKey,
    parents: Option<&BTreeMap<ObjectKey, bool>>,
    services: &BTreeSet<ObjectKey>,
    snapshot: &Snapshot,
    issues: &Issues<'_>,
    cx: &StatusContext<'_>,
) -> Option<StatusUpdate> {
    let (kind, meta, status, list_field) = match object {
        Object::PoolV1Alpha2(p) => (
            StatusKind::PoolV1Alpha2,
            &p.metadata,
            status_json(p.status.as_ref()),
            "parent",
        ),
        Object::PoolV1(p) => (
            StatusKind::PoolV1,
            &p.metadata,
            status_json(p.status.as_ref()),
            "parents",
        ),
        _ => return None,
    };
    let parents = parents.cloned().unwrap_or_default();
    let existing: Vec<Value> = status
        .as_ref()
        .and_then(|s| s.get(list_field))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let others: Vec<Value> = existing
        .iter()
        .filter(|e| !is_our_entry(e, kind, key, &parents, cx.controller_name))
        .cloned()
        .collect();
    if parents.is_empty() && others.len() == existing.len() {
        return None;
    }
    let pool_issues = issues.of(key);
    let errors: Vec<&ConfigIssue> = pool_issues
        .iter()
        .copied()
        .filter(|i| i.severity == Severity::Error)
        .collect();
    let valid = snapshot.pools.contains_key(key) && errors.is_empty();
    let resolved = match snapshot
        .pools
        .get(key)
        .and_then(|p| p.picker_binding.as_ref())
    {
        Some(binding) => external_picker_condition(binding),
        None => picker_condition(object, key, services),
    };
    let not_supported = if kind == StatusKind::PoolV1 {
        "NotSupportedByParent"
    } else {
        "NotSupportedByGateway"
    };
    let mut entries = others;
    for (gateway, route_accepted) in &parents {
        let accepted = if !valid {
            Desired::fail("Accepted", not_supported, messages(&errors))
        } else if *route_accepted {
            Desired::ok("Accepted", "Accepted", "Routed to by an accepted HTTPRoute")
        } else {
            Desired::fail(
                "Accepted",
                "HTTPRouteNotAccepted",
                "No HTTPRoute that names this pool is accepted by the Gateway",
            )
        };
        let conditions = conditions(
            vec![accepted, resolved.clone()],
            &entry_conditions(&existing, gateway),
            meta.generation,
            &cx.now,
        );
        entries.push(parent_entry(kind, gateway, conditions, cx.controller_name));
    }
    Some(StatusUpdate {
        kind,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        patch: json!({ list_field: entries }),
        resource_version: meta.resource_version.clone(),
    })
}

/// Whether an existing parent entry of pool `key` is ours to replace: the CRD's placeholder, a v1
/// entry with our controllerName, or a v1alpha2 entry for one of the Gateways in `parents`.
fn is_our_entry(
    entry: &Value,
    kind: StatusKind,
    key: &ObjectKey,
    parents: &BTreeMap<ObjectKey, bool>,
    controller_name: &str,
) -> bool {
    let parent = entry.get("parentRef");
    let parent_kind = parent.and_then(|p| p.get("kind")).and_then(Value::as_str);
    if parent_kind == Some("Status") {
        return true; // The CRD's "waiting for controller" placeholder.
    }
    if kind == StatusKind::PoolV1 {
        return entry.get("controllerName").and_then(Value::as_str) == Some(controller_name);
    }
    let name = parent.and_then(|p| p.get("name")).and_then(Value::as_str);
    let namespace = parent
        .and_then(|p| p.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(&key.namespace);
    parent_kind == Some("Gateway")
        && name.is_some_and(|n| {
            parents
                .keys()
                .any(|g| g.name == n && g.namespace == namespace)
        })
}

/// The conditions of the existing parent entry for `gateway`, if there is one.
fn entry_conditions(existing: &[Value], gateway: &ObjectKey) -> Vec<Condition> {
    existing
        .iter()
        .find(|e| {
            let p = e.get("parentRef");
            p.and_then(|p| p.get("name")).and_then(Value::as_str) == Some(gateway.name.as_str())
                && p.and_then(|p| p.get("namespace")).and_then(Value::as_str)
                    == Some(gateway.namespace.as_str())
                && p.and_then(|p| p.get("kind")).and_then(Value::as_str) == Some("Gateway")
        })
        .map(|e| existing_conditions(Some(e), &["conditions"]))
        .unwrap_or_default()
}

/// One parent entry of a pool's status, in the shape of its API version.
fn parent_entry(
    kind: StatusKind,
    gateway: &ObjectKey,
    conditions: Vec<Condition>,
    controller_name: &str,
) -> Value {
    if kind == StatusKind::PoolV1 {
        let parent_ref = json!({"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": gateway.namespace, "name": gateway.name});
        json!({"parentRef": parent_ref, "controllerName": controller_name, "conditions": conditions})
    } else {
        let parent_ref = json!({"apiVersion": format!("{GATEWAY_GROUP}/v1"), "kind": "Gateway", "namespace": gateway.namespace, "name": gateway.name});
        json!({"parentRef": parent_ref, "conditions": conditions})
    }
}

/// The `ResolvedRefs` condition of a pool: whether its endpoint picker reference names an
/// existing Service (the gateway never calls it, so routing does not depend on it).
/// `ResolvedRefs` of a pool routed by an external picker (a v1 `endpointPickerRef`).
fn external_picker_condition(binding: &PickerResolution) -> Desired {
    match binding {
        Ok(binding) => Desired::ok(
            "ResolvedRefs",
            "ResolvedRefs",
            format!(
                "Endpoint picker Service {} port {} routes the pool's requests ({} ready endpoint(s))",
                binding.service.qualified_name(),
                binding.port,
                binding.endpoints.len()
            ),
        ),
        Err(reason) => Desired::fail(
            "ResolvedRefs",
            "InvalidExtensionRef",
            format!("{reason}; requests to the pool get 500"),
        ),
    }
}

/// `ResolvedRefs` of a pool the built-in strategy routes (no reference, or a v1alpha2
/// `extensionRef`, which is recorded only).
fn picker_condition(object: &Object, key: &ObjectKey, services: &BTreeSet<ObjectKey>) -> Desired {
    match picker_ref(object) {
        None => Desired::ok(
            "ResolvedRefs",
            "ResolvedRefs",
            "No endpoint picker is referenced; the gateway picks endpoints itself",
        ),
        Some(PickerRef { group, kind, .. }) if !group.is_empty() || kind != "Service" => {
            Desired::fail(
                "ResolvedRefs",
                "InvalidExtensionRef",
                format!(
                    "The endpoint picker must be a core Service, not {kind} in group {group:?}; the gateway picks endpoints itself, so routing is not affected"
                ),
            )
        }
        Some(PickerRef { name, .. }) => {
            let service = ObjectKey::new(Kind::Service, key.namespace.clone(), name.clone());
            if services.contains(&service) {
                Desired::ok(
                    "ResolvedRefs",
                    "ResolvedRefs",
                    format!(
                        "Endpoint picker Service {} exists (the gateway picks endpoints itself and does not call it)",
                        service.qualified_name()
                    ),
                )
            } else {
                Desired::fail(
                    "ResolvedRefs",
                    "InvalidExtensionRef",
                    format!(
                        "Endpoint picker Service {} not found; the gateway picks endpoints itself, so routing is not affected",
                        service.qualified_name()
                    ),
                )
            }
        }
    }
}

pub(super) fn model_status(
    model: &v1alpha2::InferenceModel,
    key: &ObjectKey,
    issues: &Issues<'_>,
    cx: &StatusContext<'_>,
) -> StatusUpdate {
    let existing = status_json(model.status.as_ref());
    accepted_status(
        StatusKind::InferenceModel,
        &model.metadata,
        existing.as_ref(),
        key,
        issues,
        cx,
        "Model is served by its pool",
    )
}

/// The status of an InferenceObjective or an InferenceModelRewrite whose pool one of our
/// Gateways routes to.
pub(super) fn apix_status(
    object: &Object,
    key: &ObjectKey,
    issues: &Issues<'_>,
    cx: &StatusContext<'_>,
) -> Option<StatusUpdate> {
    let (kind, meta, status, message) = match object {
        Object::Objective(o) => (
            StatusKind::Objective(o.group),
            &o.metadata,
            status_json(o.status.as_ref()),
            "Objective applies to requests to its pool that name it",
        ),
        Object::Rewrite(r) => (
            StatusKind::Rewrite(r.group),
            &r.metadata,
            status_json(r.status.as_ref()),
            "Rewrite rules apply to requests to their pool",
        ),
        _ => return None,
    };
    Some(accepted_status(
        kind,
        meta,
        status.as_ref(),
        key,
        issues,
        cx,
        message,
    ))
}

/// An `Accepted` condition from the object's issues: `Invalid` for errors, `ModelNameInUse` when
/// an older object serves the name, else `Accepted`.
fn accepted_status(
    kind: StatusKind,
    meta: &ObjectMeta,
    status: Option<&Value>,
    key: &ObjectKey,
    issues: &Issues<'_>,
    cx: &StatusContext<'_>,
    accepted_message: &str,
) -> StatusUpdate {
    let object_issues = issues.of(key);
    let existing = existing_conditions(status, &["conditions"]);
    let errors: Vec<&ConfigIssue> = object_issues
        .iter()
        .copied()
        .filter(|i| i.severity == Severity::Error)
        .collect();
    let in_use = with_reason(object_issues, IssueReason::ModelNameInUse);
    let accepted = if !errors.is_empty() {
        Desired::fail("Accepted", "Invalid", messages(&errors))
    } else if !in_use.is_empty() {
        Desired::fail(
            "Accepted",
            IssueReason::ModelNameInUse.as_str(),
            messages(&in_use),
        )
    } else {
        Desired::ok("Accepted", "Accepted", accepted_message)
    };
    // Our condition replaces the CRDs' `Ready`/`Pending` placeholder; other types are kept.
    let mut all: Vec<Condition> = existing
        .iter()
        .filter(|c| c.type_ != "Accepted" && !(c.type_ == "Ready" && c.reason == "Pending"))
        .cloned()
        .collect();
    all.extend(conditions(
        vec![accepted],
        &existing,
        meta.generation,
        &cx.now,
    ));
    StatusUpdate {
        kind,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        patch: json!({ "conditions": all }),
        resource_version: meta.resource_version.clone(),
    }
}
