//! Writing status: the latest computed [`StatusUpdate`]s, applied by the Lease holder only.
//!
//! Each update is a JSON merge patch of `.status`, sent to the status subresource together with
//! `metadata.resourceVersion` of the object it was computed from
//! (`{"metadata":{"resourceVersion":"…"},"status":{…}}`). The API server takes that resourceVersion
//! as a precondition: if the object changed since, it answers `409 Conflict` and applies nothing.
//! That matters because some of what the gateway writes is a whole array shared with other
//! controllers (HTTPRoute `status.parents[]`, InferencePool parent entries), whose other entries
//! are copied from the version the update was computed from; without the precondition, an entry
//! another controller added after that version would be silently dropped.
//!
//! For each update the writer looks at the object in the reflector store ([`Stores::status`]):
//! - when applying the patch to the stored status changes nothing but transition times, nothing
//!   is written, so an unchanged cluster costs no API calls;
//! - when the store already holds a newer version than the update was computed from (another
//!   writer changed the status; status-only changes do not wake the rebuild loop), the update is
//!   stale: the writer asks the rebuild loop to recompute the plan from the store and writes the
//!   recomputed update, which carries the newer resourceVersion;
//! - on `409 Conflict` (the API server is ahead of the store) the writer logs it at debug level,
//!   remembers the refused version and asks for a recompute too; while the store still holds the
//!   refused version it waits ([`RETRY_AFTER`]) instead of sending a patch that must fail again,
//!   and once the store has caught up the update is recomputed from the newer version.
//!
//! Other failed writes are retried on the next plan or after [`RETRY_AFTER`]. The writer never
//! blocks the rebuild loop: it only ever sees the newest plan (a `watch` channel), never a
//! backlog.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::KubeError;
use super::conditions::merge_patch;
use super::reflect::{StoredStatus, Stores};
use super::status::{StatusKind, StatusUpdate};
use crate::config::crds::apix::{ApixGroup, llmd, xk8s};
use crate::config::crds::{v1, v1alpha2};

/// How long to wait before retrying failed or refused writes when nothing else changes.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Whether applying `patch` to `current` changes anything other than `lastTransitionTime`s.
pub fn needs_write(current: &Value, patch: &Value) -> bool {
    let mut merged = current.clone();
    merge_patch(&mut merged, patch);
    let mut before = current.clone();
    strip_transition_times(&mut merged);
    strip_transition_times(&mut before);
    merged != before
}

fn strip_transition_times(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("lastTransitionTime");
            map.values_mut().for_each(strip_transition_times);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_transition_times),
        _ => {}
    }
}

/// The JSON merge patch sent for `update`: its `.status` patch and, as the write's precondition,
/// the resourceVersion of the object it was computed from.
pub fn patch_body(update: &StatusUpdate) -> Value {
    let mut body = json!({ "status": update.patch });
    if let Some(resource_version) = &update.resource_version {
        body["metadata"] = json!({ "resourceVersion": resource_version });
    }
    body
}

/// What the writer does with one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing but transition times would change: no write.
    Skip,
    /// The API server refused the stored version and the store has not seen the newer one yet:
    /// wait for it rather than send a patch that must be refused again.
    Wait,
    /// The store holds a newer version than the update was computed from: recompute the update.
    Recompute,
    /// Write the update with its resourceVersion as the precondition.
    Write,
}

/// What to do with `update`, given its object as stored and the resourceVersion the API server
/// last refused for it, if any.
pub fn step(stored: &StoredStatus, update: &StatusUpdate, refused: Option<&str>) -> Step {
    if !needs_write(&stored.status, &update.patch) {
        Step::Skip
    } else if refused.is_some() && stored.resource_version.as_deref() == refused {
        Step::Wait
    } else if stored.resource_version != update.resource_version {
        Step::Recompute
    } else {
        Step::Write
    }
}

/// What one pass over a plan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Updates written.
    pub written: usize,
    /// Writes that failed (other than conflicts); retried.
    pub failed: usize,
    /// Updates computed from an older version of their object than the store's or the API
    /// server's; the plan has to be recomputed.
    pub stale: usize,
    /// Updates waiting for the store to see the version that made the API server refuse them.
    pub waiting: usize,
}

/// An object whose status the gateway writes: kind, namespace, name.
type ObjectId = (StatusKind, String, String);

/// The status writer.
pub struct StatusWriter {
    client: kube::Client,
    stores: Stores,
    /// Woken to make the rebuild loop recompute the plan from the stores.
    recompute: Arc<Notify>,
    /// The resourceVersion the API server last refused (`409 Conflict`), per object.
    refused: HashMap<ObjectId, String>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// A writer comparing against `stores`, waking `recompute` when a plan is stale.
    pub fn new(client: kube::Client, stores: Stores, recompute: Arc<Notify>) -> Self {
        Self {
            client,
            stores,
            recompute,
            refused: HashMap::new(),
        }
    }

    async fn patch(&self, update: &StatusUpdate) -> Result<(), KubeError> {
        let body = Patch::Merge(patch_body(update));
        let params = PatchParams::default();
        let (ns, name) = (update.namespace.as_str(), update.name.as_str());
        let result = match update.kind {
            StatusKind::GatewayClass => {
                Api::<gateway_api::gatewayclasses::GatewayClass>::all(self.client.clone())
                    .patch_status(name, &params, &body)
                    .await
                    .map(|_| ())
            }
            StatusKind::Gateway => {
                Api::<gateway_api::gateways::Gateway>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &body)
                    .await
                    .map(|_| ())
            }
            StatusKind::HttpRoute => {
                Api::<gateway_api::httproutes::HttpRoute>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &body)
                    .await
                    .map(|_| ())
            }
            StatusKind::PoolV1Alpha2 => {
                Api::<v1alpha2::InferencePool>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &body)
                    .await
                    .map(|_| ())
            }
            StatusKind::PoolV1 => Api::<v1::InferencePool>::namespaced(self.client.clone(), ns)
                .patch_status(name, &params, &body)
                .await
                .map(|_| ()),
            StatusKind::InferenceModel => {
                Api::<v1alpha2::InferenceModel>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &body)
                    .await
                    .map(|_| ())
            }
            StatusKind::Objective(ApixGroup::LlmD) => {
                Api::<llmd::InferenceObjective>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &body)
                    .await
                    .map(|_| ())
            }
            StatusKind::Objective(ApixGroup::XK8s) => {
                Api::<xk8s::InferenceObjective>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &body)
                    .await
                    .map(|_| ())
            }
            StatusKind::Rewrite(ApixGroup::LlmD) => {
                Api::<llmd::InferenceModelRewrite>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &body)
                    .await
                    .map(|_| ())
            }
            StatusKind::Rewrite(ApixGroup::XK8s) => {
                Api::<xk8s::InferenceModelRewrite>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &body)
                    .await
                    .map(|_| ())
            }
        };
        result.map_err(|source| match &source {
            kube::Error::Api(status) if status.code == 409 => KubeError::StatusConflict {
                object: update.object(),
                resource_version: update.resource_version.clone().unwrap_or_default(),
            },
            _ => KubeError::StatusWrite {
                object: update.object(),
                source: Box::new(source),
            },
        })
    }

    /// Write every update that changes the stored status and was computed from the stored
    /// version of its object.
    pub async fn apply(&mut self, updates: &[StatusUpdate]) -> Applied {
        let mut applied = Applied::default();
        let planned: HashSet<ObjectId> = updates
            .iter()
            .map(|u| (u.kind, u.namespace.clone(), u.name.clone()))
            .collect();
        // A refusal matters only while the object is in the plan.
        self.refused.retain(|id, _| planned.contains(id));
        for update in updates {
            let id = (update.kind, update.namespace.clone(), update.name.clone());
            let Some(stored) = self
                .stores
                .status(update.kind, &update.namespace, &update.name)
            else {
                self.refused.remove(&id);
                continue; // Deleted since the plan was made.
            };
            let refused = self.refused.get(&id).map(String::as_str);
            let step = step(&stored, update, refused);
            if step != Step::Wait {
                // The store has moved past the refused version (or it no longer matters).
                self.refused.remove(&id);
            }
            match step {
                Step::Skip => {}
                Step::Wait => applied.waiting += 1,
                Step::Recompute => {
                    applied.stale += 1;
                    tracing::debug!(target: "kube", object = %update.object(), computed_from = update.resource_version.as_deref(), stored = stored.resource_version.as_deref(), "the object changed since its status was computed; recomputing");
                }
                Step::Write => match self.patch(update).await {
                    Ok(()) => {
                        applied.written += 1;
                        tracing::debug!(target: "kube", object = %update.object(), "status written");
                    }
                    Err(KubeError::StatusWrite { source, .. }) if matches!(&*source, kube::Error::Api(s) if s.code == 404) =>
                        {}
                    Err(error @ KubeError::StatusConflict { .. }) => {
                        applied.stale += 1;
                        tracing::debug!(target: "kube", %error, kind = error.metric_label(), "status write refused: the object changed on the API server; recomputing from the newer version");
                        if let Some(version) = update.resource_version.clone() {
                            self.refused.insert(id, version);
                        }
                    }
                    Err(error) => {
                        applied.failed += 1;
                        tracing::warn!(target: "kube", %error, kind = error.metric_label(), "status write failed; retrying");
                    }
                },
            }
        }
        if applied.written > 0 {
            tracing::info!(target: "kube", written = applied.written, failed = applied.failed, stale = applied.stale, "status updated");
        }
        applied
    }

    /// Write the newest plan whenever it changes or leadership is gained, while leading. A stale
    /// update makes the rebuild loop recompute the plan; a pass that left anything undone (failed,
    /// stale or waiting for the store) is repeated after [`RETRY_AFTER`] even if no new plan
    /// arrives, against the store's view at that time.
    pub async fn run(
        mut self,
        mut plans: watch::Receiver<Arc<Vec<StatusUpdate>>>,
        mut leading: watch::Receiver<bool>,
    ) {
        let mut retry = false;
        loop {
            tokio::select! {
                changed = plans.changed() => if changed.is_err() { return },
                changed = leading.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY_AFTER), if retry => {}
            }
            if !*leading.borrow_and_update() {
                retry = false;
                continue;
            }
            let plan = Arc::clone(&plans.borrow_and_update());
            let applied = self.apply(&plan).await;
            if applied.stale > 0 {
                self.recompute.notify_one();
            }
            retry = applied.failed + applied.stale + applied.waiting > 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_changes_need_a_write() {
        let current = json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": "2026-01-01T00:00:00Z"}], "addresses": [{"value": "10.0.0.1"}]});
        let same = json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": "2026-02-01T00:00:00Z"}]});
        assert!(!needs_write(&current, &same));
        let flipped = json!({"conditions": [{"type": "Accepted", "status": "False", "reason": "Invalid", "lastTransitionTime": "2026-02-01T00:00:00Z"}]});
        assert!(needs_write(&current, &flipped));
        assert!(needs_write(&Value::Null, &same));
    }

    fn route_update(resource_version: Option<&str>) -> StatusUpdate {
        StatusUpdate {
            kind: StatusKind::HttpRoute,
            namespace: "default".into(),
            name: "r".into(),
            patch: json!({"parents": [{"controllerName": "example.com/other"}, {"controllerName": "ours"}]}),
            resource_version: resource_version.map(str::to_owned),
        }
    }

    #[test]
    fn the_patch_carries_the_resource_version_it_was_computed_from() {
        let update = route_update(Some("41"));
        assert_eq!(
            patch_body(&update),
            json!({
                "metadata": {"resourceVersion": "41"},
                "status": {"parents": [{"controllerName": "example.com/other"}, {"controllerName": "ours"}]},
            })
        );
        assert_eq!(
            patch_body(&route_update(None)),
            json!({"status": update.patch}),
            "no precondition only for an object without a version"
        );
    }

    #[test]
    fn an_update_from_an_older_version_is_recomputed_and_a_refused_one_waits_for_the_store() {
        let stored = |version: &str, status: Value| StoredStatus {
            resource_version: Some(version.to_owned()),
            status,
        };
        let update = route_update(Some("41"));
        let old = json!({"parents": [{"controllerName": "ours", "conditions": []}]});
        assert_eq!(step(&stored("41", old.clone()), &update, None), Step::Write);
        assert_eq!(
            step(&stored("41", update.patch.clone()), &update, None),
            Step::Skip,
            "nothing to change, whatever the version"
        );
        assert_eq!(
            step(&stored("42", update.patch.clone()), &update, None),
            Step::Skip
        );
        // Another controller wrote since: the store holds a newer version.
        assert_eq!(
            step(&stored("42", old.clone()), &update, None),
            Step::Recompute
        );
        // The API server refused 41 and the store has not seen the newer version yet.
        assert_eq!(
            step(&stored("41", old.clone()), &update, Some("41")),
            Step::Wait
        );
        // The store caught up: recompute from it, then write the recomputed update.
        assert_eq!(
            step(&stored("42", old.clone()), &update, Some("41")),
            Step::Recompute
        );
        assert_eq!(
            step(&stored("42", old), &route_update(Some("42")), Some("41")),
            Step::Write
        );
    }

    #[test]
    fn a_conflict_has_its_own_metric_label() {
        let error = KubeError::StatusConflict {
            object: "HTTPRoute default/r".into(),
            resource_version: "41".into(),
        };
        assert_eq!(error.metric_label(), "status_conflict");
        assert!(error.to_string().contains("resourceVersion 41"), "{error}");
    }
}
