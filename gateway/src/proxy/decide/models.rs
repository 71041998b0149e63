//! `GET /v1/models` on a listener whose matching route reaches an InferencePool: the gateway answers
//! itself, in OpenAI's list shape, with the model names a client can send through that listener.
//! Forwarded to one pod, the request would list that pod's base model and adapters instead, which
//! are neither all the names the gateway serves (an InferenceModel's `travel-helper`) nor only
//! names it accepts.
//!
//! For every pool the listener's routes reach: the names its InferenceModels declare and the names
//! its InferenceModelRewrites match exactly; and, when it declares no InferenceModel (so every
//! name passes through), the base models its endpoints report (the `model_name` label of their
//! metrics). A generic rewrite rule accepts any name and adds none to the list. A route to a
//! Service still passes `/v1/models` through to the Service.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::Method;
use serde_json::json;

use super::plan::Head;
use crate::snapshot::routes::{ListenerRoutes, RouteEntry};
use crate::snapshot::{Backend, Pool};

/// Whether `head` asks for the model list.
pub fn is_listing(head: &Head<'_>) -> bool {
    head.method == Method::GET && head.path == "/v1/models"
}

/// Whether a request matching `entry` would reach a pool (any of its backends is one).
pub fn reaches_pool(entry: &RouteEntry) -> bool {
    entry
        .action
        .backends
        .iter()
        .any(|b| matches!(b.backend, Backend::Pool(_)))
}

/// The names `pool` accepts from clients, as described in the module documentation.
fn client_models(pool: &Pool) -> Vec<String> {
    let mut names: Vec<String> = pool.models.keys().cloned().collect();
    names.extend(pool.rewrites.exact.keys().cloned());
    if pool.models.is_empty() {
        names.extend(
            pool.endpoints
                .iter()
                .filter_map(|endpoint| endpoint.metrics()?.metrics.model_name.clone()),
        );
    }
    names
}

/// The OpenAI model list of every pool `listener`'s routes reach, sorted by name; a name served
/// by several pools is listed once, owned by the first pool in `namespace/name` order. `created`
/// is `now` (Unix seconds), as vLLM reports it.
pub fn listing(listener: &ListenerRoutes, now: u64) -> Bytes {
    let mut pools: BTreeMap<&str, &Pool> = BTreeMap::new();
    for entry in &listener.entries {
        for weighted in &entry.action.backends {
            if let Backend::Pool(pool) = &weighted.backend {
                pools.insert(&pool.name, pool);
            }
        }
    }
    let mut models: BTreeMap<String, &str> = BTreeMap::new();
    for (name, pool) in pools {
        for model in client_models(pool) {
            models.entry(model).or_insert(name);
        }
    }
    let data: Vec<_> = models
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": now, "owned_by": owner}))
        .collect();
    Bytes::from(json!({"object": "list", "data": data}).to_string())
}
