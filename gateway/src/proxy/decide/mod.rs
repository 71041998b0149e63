//! The decision step: what to do with a request, from the snapshot, the request head and, when
//! the route needs it, the body.
//!
//! [`route`] finds the listener (port, then host), the route entry and a backend drawn by weight,
//! and returns a [`Decision`]: answer now with a typed [`ClientError`], let Pingora proxy the
//! request to a Service (the body streams through untouched), read the body first, or forward a
//! body already read. A body is read when a listener routes on the model (body-based routing) or
//! when the backend is an InferencePool; [`pool::decide`] then resolves the model, rewrites it,
//! sheds, and asks the pool's strategy for candidates.
//!
//! Nothing here does I/O or sees a Pingora `Session`: the proxy's phases read the body and run
//! the plan, and the unit tests drive every branch with a snapshot built from YAML.

pub mod pool;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

pub use self::pool::{Dispatch, InferenceInfo};
use super::error::ClientError;
use crate::headers;
use crate::snapshot::routes::RequestParts;
use crate::snapshot::{Backend, Pool, RouteEntry, ServiceBackend, Snapshot};

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The local port the request arrived on.
    pub port: u16,
    /// Host, lowercase, without the port.
    pub host: Option<&'a str>,
    /// Method.
    pub method: &'a Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: Option<&'a str>,
    /// Headers, control headers already stripped.
    pub headers: &'a HeaderMap,
    /// Whether the request may have a body.
    pub has_body: bool,
    /// The request id.
    pub request_id: &'a str,
}

impl<'a> Head<'a> {
    fn parts(&self) -> RequestParts<'a> {
        RequestParts {
            method: self.method,
            path: self.path,
            query: self.query,
            host: self.host,
            headers: self.headers,
        }
    }
}

/// Which kind of backend serves a request (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// No backend: the gateway answered (404, 500, ...).
    #[default]
    None,
    /// A Service.
    Service,
    /// An InferencePool.
    Pool,
}

impl BackendKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::None => "none",
            BackendKind::Service => "service",
            BackendKind::Pool => "pool",
        }
    }
}

/// The route entry a request matched.
#[derive(Debug, Clone)]
pub struct MatchedRoute {
    /// `namespace/name#rule`, for logs.
    pub label: Arc<str>,
    /// The rule's whole-request timeout, if any.
    pub timeout: Option<Duration>,
}

/// What to do with a request, and what logging needs to know about the decision.
#[derive(Debug)]
pub struct Decision {
    /// The route entry, once one matched.
    pub route: Option<MatchedRoute>,
    /// The backend kind, once one was drawn.
    pub backend: BackendKind,
    /// The inference request, once a pool's strategy was asked.
    pub inference: Option<InferenceInfo>,
    /// The next step.
    pub step: Step,
}

/// The next step for a request.
#[derive(Debug)]
pub enum Step {
    /// Answer the client with this error.
    Answer(ClientError),
    /// Let Pingora's phases proxy the request to this Service; the body streams through.
    Proxy(Arc<ServiceBackend>),
    /// Read the body, then decide again ([`route`] with the body, or [`pool::decide`]).
    ReadBody(BodyNeeded),
    /// Forward the body, already read, to these upstreams.
    Forward(Forward),
}

/// Why the body must be read before going on.
#[derive(Debug)]
pub enum BodyNeeded {
    /// The listener routes on the body's `model`: call [`route`] again with the body.
    Routing,
    /// The backend is this pool: call [`pool::decide`] with the body.
    Pool(Arc<Pool>),
}

/// A request whose body was read, ready for the forwarder.
#[derive(Debug)]
pub struct Forward {
    /// The body to send (with `model` rewritten for pools).
    pub body: Bytes,
    /// The value of the model-name header body-based routing matched on, to send upstream.
    pub model_header: Option<String>,
    /// Where to send it.
    pub upstreams: Upstreams,
}

/// The endpoints a forwarded request may go to.
#[derive(Debug)]
pub enum Upstreams {
    /// A Service's endpoints, round-robin.
    Service(Arc<ServiceBackend>),
    /// A pool's endpoints in the order its strategy ranked them.
    Pool(Dispatch),
}

impl Decision {
    /// A decision with no route or inference request (yet).
    pub fn new(backend: BackendKind, step: Step) -> Self {
        Self {
            route: None,
            backend,
            inference: None,
            step,
        }
    }

    fn answer(error: ClientError) -> Self {
        Self::new(BackendKind::None, Step::Answer(error))
    }
}

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
    let mut decision = backend_decision(entry, &head, body, model_header);
    decision.route = Some(MatchedRoute {
        label: Arc::clone(&entry.label),
        timeout: entry.action.timeout,
    });
    decision
}

/// The body's `model` and its header value, for body-based routing; `None` when the body is not
/// an OpenAI request or the name cannot be a header value.
fn model_of(body: &[u8]) -> Option<(String, HeaderValue)> {
    let request = crate::openai::parse(body).ok()?;
    let value = HeaderValue::from_str(&request.model).ok()?;
    Some((request.model.into_owned(), value))
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
