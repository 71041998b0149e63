//! The decision step: what to do with a request, from the snapshot, the request head and, when
//! the route needs it, the body.
//!
//! [`route`] finds the listener (port, then host), the route entry and a backend drawn by weight,
//! and returns a [`Decision`]: answer now with a typed [`ClientError`] (or, for `GET /v1/models`
//! through a pool route, with the listener's model list: [`models`]), let Pingora proxy the
//! request to a Service (the body streams through untouched), read the body first, or forward a
//! body already read. A body is read when a listener routes on the model (body-based routing) or
//! when the backend is an InferencePool; [`pool::decide`] then resolves the model, rewrites it,
//! sheds, and asks the pool's strategy for candidates.
//!
//! Nothing here does I/O or sees a Pingora `Session`: the proxy's phases read the body and run
//! the plan, and the unit tests drive every branch with a snapshot built from YAML.

pub mod models;
mod plan;
pub mod pool;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_apix;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

pub use self::plan::{
    BackendKind, BodyNeeded, Candidate, Decision, Dispatch, Forward, Head, InferenceInfo,
    MatchedRoute, PickedUpstreams, PickerCall, Step, TokenizeCall, Upstreams, Waiting,
};
use super::error::ClientError;
use crate::headers;
use crate::snapshot::{Backend, RouteEntry, Snapshot};

/// Decide what to do with a request arriving at `head`; `body` is the body if it was read.
pub fn route(snapshot: &Snapshot, head: &Head<'_>, body: Option<Bytes>) -> Decision {
    let Some(listener) = snapshot.port(head.port).and_then(|p| p.listener(head.host)) else {
        return Decision::answer(ClientError::NoListener);
    };
    let mut model_header = None;
    let mut headers = Cow::Borrowed(head.headers);
    if listener.routes_on_model && head.has_body {
        let Some(body) = &body else {
            return Decision::new(BackendKind::None, Step::ReadBody(BodyNeeded::Routing));
        };
        if let Some((model, value)) = model_of(body) {
            headers.to_mut().insert(headers::MODEL_NAME, value);
            model_header = Some(model);
        }
    }
    let head = Head {
        headers: &headers,
        ..*head
    };
    let Some(entry) = listener.route(&head.parts()) else {
        return Decision::answer(ClientError::NoRoute {
            method: head.method.to_string(),
            path: head.path.to_owned(),
        });
    };
    let mut decision = if models::is_listing(&head) && models::reaches_pool(entry) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Decision::new(
            BackendKind::Pool,
            Step::Respond(models::listing(listener, now)),
        )
    } else {
        backend_decision(entry, &head, body, model_header)
    };
    decision.route = Some(MatchedRoute {
        label: Arc::clone(&entry.label),
        timeout: entry.action.timeout,
    });
    decision
}

/// The body's `model` and its header value, for body-based routing; `None` when the body is not
/// an OpenAI request or the name cannot be a header value.
fn model_of(body: &[u8]) -> Option<(String, HeaderValue)> {
    let model = crate::openai::parse(body).ok()?.model?;
    let value = HeaderValue::from_str(&model).ok()?;
    Some((model.into_owned(), value))
}

/// Draw the matched rule's backend by weight and decide for it.
fn backend_decision(
    entry: &RouteEntry,
    head: &Head<'_>,
    body: Option<Bytes>,
    model_header: Option<String>,
) -> Decision {
    match entry.action.pick_backend() {
        None => Decision::answer(ClientError::NoBackendWeight),
        Some(Backend::Invalid(reason)) => {
            Decision::answer(ClientError::InvalidBackend(Arc::clone(reason)))
        }
        Some(Backend::Service(service)) => {
            let step = if service.balancer.is_none() {
                Step::Answer(ClientError::NoReadyEndpoints {
                    service: service.key.qualified_name(),
                })
            } else {
                match body {
                    Some(body) => Step::Forward(Forward {
                        body,
                        model_header,
                        upstreams: Upstreams::Service(Arc::clone(service)),
                    }),
                    None => Step::Proxy(Arc::clone(service)),
                }
            };
            Decision::new(BackendKind::Service, step)
        }
        Some(Backend::Pool(pool)) => match body {
            Some(body) => {
                let mut decision = pool::decide(Arc::clone(pool), head, body);
                if let Step::Forward(forward) = &mut decision.step {
                    forward.model_header = model_header;
                }
                decision
            }
            None => Decision::new(
                BackendKind::Pool,
                Step::ReadBody(BodyNeeded::Pool(Arc::clone(pool))),
            ),
        },
    }
}
