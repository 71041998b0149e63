//! Per-request state carried through Pingora's phases: [`RequestCtx`].

use std::sync::Arc;
use std::time::Instant;

use super::decide::{BackendKind, Decision, InferenceInfo, Step};
use super::exchange::Exchange;
use crate::headers::ClientHints;
use crate::snapshot::ServiceBackend;
use crate::state::WorkGuard;

/// What the phases of one request share.
#[derive(Debug)]
pub struct RequestCtx {
    /// When the request's header arrived.
    pub started: Instant,
    /// The request id (the client's `x-request-id` or a new one).
    pub request_id: String,
    /// The local port it arrived on.
    pub port: u16,
    /// The client hints it carried (objective, fairness id, model rewrite), removed from it.
    pub hints: ClientHints,
    /// The backend kind drawn for it.
    pub backend: BackendKind,
    /// The route entry it matched, for logs.
    pub route: Option<Arc<str>>,
    /// The Service that Pingora's phases proxy it to, when they do.
    pub service: Option<Arc<ServiceBackend>>,
    /// The inference request, once a pool's strategy was asked.
    pub inference: Option<InferenceInfo>,
    /// The exchange with upstreams, whichever path ran it.
    pub exchange: Exchange,
    _active: WorkGuard,
}

impl RequestCtx {
    /// A context counted as active work until it drops.
    pub fn new(active: WorkGuard) -> Self {
        let started = Instant::now();
        Self {
            started,
            request_id: String::new(),
            port: 0,
            hints: ClientHints::default(),
            backend: BackendKind::None,
            route: None,
            service: None,
            inference: None,
            exchange: Exchange::new(started),
            _active: active,
        }
    }

    /// Keep what `decision` says about the request (its route, backend and inference request)
    /// and return its next step.
    pub fn follow(&mut self, decision: Decision) -> Step {
        let Decision {
            route,
            backend,
            inference,
            step,
        } = decision;
        if let Some(route) = route {
            self.route = Some(route.label);
            self.exchange.deadline = route.timeout.map(|t| self.started + t);
        }
        if backend != BackendKind::None {
            self.backend = backend;
        }
        if inference.is_some() {
            self.inference = inference;
        }
        step
    }
}
