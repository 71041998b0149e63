//! Writing status: the latest computed [`StatusUpdate`]s, applied by the Lease holder only.
//!
//! Each update is a JSON merge patch of `.status`, sent to the status subresource. Before writing,
//! the patch is applied to the stored status in memory; when nothing but transition times would
//! change, nothing is written, so an unchanged cluster costs no API calls. Failed writes are retried
//! on the next update or after a short pause. The writer never blocks the rebuild loop: it only
//! ever sees the newest set of updates (a `watch` channel), never a backlog.

use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::KubeError;
use super::conditions::merge_patch;
use super::reflect::Stores;
use super::status::{StatusKind, StatusUpdate};
use crate::config::crds::{v1, v1alpha2};

/// How long to wait before retrying failed writes when nothing else changes.
const RETRY_AFTER: Duration = Duration::from_secs(2);

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

/// The status writer.
#[derive(Clone)]
pub struct StatusWriter {
    client: kube::Client,
    stores: Stores,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// A writer comparing against `stores`.
    pub fn new(client: kube::Client, stores: Stores) -> Self {
        Self { client, stores }
    }

    async fn patch(&self, update: &StatusUpdate) -> Result<(), KubeError> {
        let body = Patch::Merge(json!({ "status": update.patch }));
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
        };
        result.map_err(|source| KubeError::StatusWrite {
            object: update.object(),
            source: Box::new(source),
        })
    }

    /// Write every update that changes the stored status. Returns (written, failed).
    pub async fn apply(&self, updates: &[StatusUpdate]) -> (usize, usize) {
        let (mut written, mut failed) = (0, 0);
        for update in updates {
            let Some(current) = self
                .stores
                .status(update.kind, &update.namespace, &update.name)
            else {
                continue; // Deleted since the plan was made.
            };
            if !needs_write(&current, &update.patch) {
                continue;
            }
            match self.patch(update).await {
                Ok(()) => {
                    written += 1;
                    tracing::debug!(target: "kube", object = %update.object(), "status written");
                }
                Err(KubeError::StatusWrite { source, .. }) if matches!(&*source, kube::Error::Api(s) if s.code == 404) =>
                    {}
                Err(error) => {
                    failed += 1;
                    tracing::warn!(target: "kube", %error, kind = error.metric_label(), "status write failed; retrying");
                }
            }
        }
        if written > 0 {
            tracing::info!(target: "kube", written, failed, "status updated");
        }
        (written, failed)
    }

    /// Write the newest plan whenever it changes or leadership is gained, while leading.
    pub async fn run(
        self,
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
            let (_, failed) = self.apply(&plan).await;
            retry = failed > 0;
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
}
