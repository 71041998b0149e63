//! The proxy: Pingora's `ProxyHttp` phases, wired to the decision step and the forwarder.
//!
//! Every request goes through [`decide`] first: a pure function of the snapshot, the request head
//! and, when needed, the body, that returns what to do. This module only carries out the plan in
//! Pingora's phases:
//!
//! - answer with a typed [`error::ClientError`] ([`respond`]);
//! - let Pingora proxy a Service request (`upstream_peer` picks round-robin, the body streams
//!   through untouched, `fail_to_connect` moves to the next pod);
//! - read the body ([`respond::read_body`]) and decide again with it;
//! - forward a request whose body was read with the [`forward::Forwarder`], which answers the
//!   client itself, so `request_filter` returns `true`.
//!
//! Both paths record into the request's [`exchange::Exchange`]; `logging` always runs last and
//! hands it to [`record`], where counts are released and metrics recorded.

pub mod connections;
pub mod context;
pub mod decide;
pub mod error;
pub mod exchange;
pub mod forward;
pub mod head;
pub mod picker;
pub mod queue;
pub mod record;
pub mod respond;
pub mod response;
pub mod targets;
pub mod tokenize;
pub mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorSource, ErrorType, Result};

use self::context::RequestCtx;
use self::decide::{BodyNeeded, Decision, Forward, Step, Upstreams};
use self::error::ClientError;
use self::forward::Forwarder;
use self::respond::BodyError;
use self::targets::{PickedTargets, PoolTargets, ServiceTargets};
use crate::headers;
use crate::snapshot::Snapshot;
use crate::state::GatewayState;

/// Limits on what clients send.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Largest request body read for routing (413 above).
    pub max_body_bytes: usize,
    /// Deadline for each read of a client's request body; `None` waits forever.
    pub read_timeout: Option<Duration>,
    /// Largest request head accepted (431 above).
    pub max_header_bytes: usize,
}

/// The `ProxyHttp` implementation.
#[derive(Debug)]
pub struct GatewayProxy {
    state: Arc<GatewayState>,
    limits: ClientLimits,
    forwarder: Forwarder,
}

impl GatewayProxy {
    /// A proxy serving `state`'s snapshots.
    pub fn new(state: Arc<GatewayState>, limits: ClientLimits, forwarder: Forwarder) -> Self {
        Self {
            state,
            limits,
            forwarder,
        }
    }

    /// Keep what `decision` says about the request and return its next step.
    fn take(&self, ctx: &mut RequestCtx, decision: Decision) -> Step {
        if let Some(info) = &decision.inference {
            record::decided(&self.state.metrics, info);
        }
        ctx.follow(decision)
    }

    /// Carry out `step` and the steps that follow it. Boxed where it is called: a future is
    /// copied whole into the box Pingora makes for every `request_filter` call, so what only some
    /// requests need stays out of it.
    async fn run(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &Snapshot,
        mut step: Step,
    ) -> Result<bool> {
        loop {
            step = match step {
                Step::Answer(error) => return self.answer(session, ctx, error).await,
                Step::Proxy(service) => {
                    ctx.service = Some(service);
                    return Ok(false);
                }
                Step::Forward(forward) => {
                    self.forward(session, ctx, forward).await;
                    return Ok(true);
                }
                Step::Respond(body) => {
                    ctx.exchange.status = Some(200);
                    Box::pin(respond::json(session, body)).await?;
                    return Ok(true);
                }
                Step::Pick(call) => {
                    let metrics = &self.state.metrics;
                    match Box::pin(picker::consult(call, session, ctx, metrics)).await {
                        picker::Consulted::Decided(decision) => self.take(ctx, *decision),
                        picker::Consulted::Refused(immediate) => {
                            ctx.exchange.status = Some(immediate.status);
                            Box::pin(picker::refuse(session, &immediate)).await?;
                            return Ok(true);
                        }
                    }
                }
                Step::Queue(waiting) => {
                    // The body is read: the connection answers a read again only when the
                    // client closes it (or breaks HTTP by sending before its answer).
                    let fairness_id = ctx.hints.fairness_id.clone();
                    let turn = queue::wait_turn(
                        &self.state,
                        waiting,
                        fairness_id.as_deref(),
                        ctx.exchange.deadline,
                        async {
                            let _ = session.read_body_or_idle(true).await;
                        },
                    );
                    match Box::pin(turn).await {
                        queue::Turn::Admitted { info, body, admit } => {
                            let header = session.req_header();
                            let head = head::view(header, ctx.port, None, true, ctx);
                            let decision = decide::pool::pick_admitted(*info, &head, body, admit);
                            self.take(ctx, decision)
                        }
                        queue::Turn::Refused(info, error) => {
                            ctx.inference = Some(*info);
                            return self.answer(session, ctx, error).await;
                        }
                        queue::Turn::ClientGone(info) => {
                            ctx.inference = Some(*info);
                            ctx.exchange.status = Some(499);
                            return Ok(true);
                        }
                    }
                }
                Step::Tokenize(call) => {
                    let connector = self.forwarder.connector();
                    let (info, body) =
                        Box::pin(tokenize::prepare(&self.state, connector, call)).await;
                    let header = session.req_header();
                    let head = head::view(header, ctx.port, None, true, ctx);
                    let decision = decide::pool::pick_tokenized(info, &head, body);
                    self.take(ctx, decision)
                }
                Step::ReadBody(BodyNeeded::Routing) if session.is_body_empty() => {
                    // Nothing to route on: decide as for any bodyless request.
                    let header = session.req_header();
                    let host = head::host(header);
                    let view = head::view(header, ctx.port, host.as_deref(), false, ctx);
                    let decision = decide::route(snapshot, &view, None);
                    self.take(ctx, decision)
                }
                Step::ReadBody(needed) => {
                    let Some(body) = self.read_body(session, ctx).await? else {
                        return Ok(true);
                    };
                    let decision = decide_with_body(snapshot, session, ctx, needed, body);
                    self.take(ctx, decision)
                }
            };
        }
    }

    /// Answer `error` to the client.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: ClientError,
    ) -> Result<bool> {
        ctx.exchange.answer(&error);
        if let ClientError::Shed { pool, .. } = &error {
            self.state
                .metrics
                .sheds
                .with_label_values(&[pool.as_str()])
                .inc();
        }
        Box::pin(respond::error(session, &error)).await?;
        Ok(true)
    }

    /// Read the body, or answer 413 (or give up on a failed client) and return `None`.
    async fn read_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        match respond::read_body(session, self.limits.max_body_bytes).await {
            Ok(body) => Ok(Some(body)),
            Err(BodyError::TooLarge(error)) => {
                session.set_keepalive(None);
                self.answer(session, ctx, error).await?;
                Ok(None)
            }
            Err(BodyError::Client(e)) => {
                // The client went away or broke the framing while sending the body.
                ctx.exchange.status = Some(499);
                Err(e)
            }
        }
    }

    /// Forward a request whose body was read.
    async fn forward(&self, session: &mut Session, ctx: &mut RequestCtx, forward: Forward) {
        let Forward {
            body,
            model_header,
            upstreams,
        } = forward;
        if let Some(model) = model_header {
            // Validated as a header value by the decision.
            let _ = session
                .req_header_mut()
                .insert_header(headers::MODEL_NAME, model);
        }
        let header = forward::upstream_header(session.req_header(), body.len());
        let exchange = &mut ctx.exchange;
        match upstreams {
            Upstreams::Service(service) => {
                let mut targets = ServiceTargets(&service);
                self.forwarder
                    .forward(session, header, body, &mut targets, exchange)
                    .await;
            }
            Upstreams::Picked(picked) => {
                let mut targets = PickedTargets {
                    picked,
                    metrics: &self.state.metrics,
                };
                self.forwarder
                    .forward(session, header, body, &mut targets, exchange)
                    .await;
            }
            Upstreams::Pool(dispatch) => {
                let mut targets = PoolTargets {
                    dispatch,
                    inference: ctx.inference.as_ref(),
                    request_id: &ctx.request_id,
                    metrics: &self.state.metrics,
                };
                self.forwarder
                    .forward(session, header, body, &mut targets, exchange)
                    .await;
            }
        }
    }
}

/// The decision for a request whose body was read because of `needed`.
fn decide_with_body(
    snapshot: &Snapshot,
    session: &Session,
    ctx: &RequestCtx,
    needed: BodyNeeded,
    body: Bytes,
) -> Decision {
    let header = session.req_header();
    // Only routing looks at the host; a pool's decision does not.
    let host = match needed {
        BodyNeeded::Routing => head::host(header),
        BodyNeeded::Pool(_) => None,
    };
    let head = head::view(header, ctx.port, host.as_deref(), true, ctx);
    match needed {
        BodyNeeded::Routing => decide::route(snapshot, &head, Some(body)),
        BodyNeeded::Pool(pool) => decide::pool::decide(pool, &head, body),
    }
}

/// The status a client gets for Pingora's `error` (0: the client went away).
fn proxy_error_status(error: &Error) -> u16 {
    match error.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectError
        | ErrorType::ConnectNoRoute => 502,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ => match error.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match error.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new(self.state.active.start())
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // No response compression: model servers' SSE must pass byte for byte, unbuffered.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        connections::request_started();
        if self.state.active.draining() {
            // Shutting down: answer with `Connection: close` so the client reconnects elsewhere
            // rather than reusing a connection this process is about to drop.
            session.set_keepalive(None);
        }
        session.set_read_timeout(self.limits.read_timeout);
        ctx.request_id = head::request_id(session.req_header());
        ctx.port = head::local_port(session);
        let size = connections::header_bytes(session.req_header());
        if size > self.limits.max_header_bytes {
            let limit = self.limits.max_header_bytes;
            let error = ClientError::HeadTooLarge { size, limit };
            return self.answer(session, ctx, error).await;
        }
        ctx.hints = head::prepare(session.req_header_mut(), &ctx.request_id)?;
        let snapshot = self.state.snapshots.load();
        let header = session.req_header();
        let host = head::host(header);
        // Whether the body is empty is asked of Pingora (which costs) only where routing needs it.
        let view = head::view(header, ctx.port, host.as_deref(), true, ctx);
        let decision = decide::route(&snapshot, &view, None);
        match self.take(ctx, decision) {
            Step::Proxy(service) => {
                ctx.service = Some(service);
                Ok(false)
            }
            step => Box::pin(self.run(session, ctx, &snapshot, step)).await,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let service = ctx
            .service
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no service backend chosen"))?;
        let attempts = &mut ctx.exchange.attempts;
        let address = service.next_untried(&attempts.tried).ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(502),
                "every endpoint of the Service failed",
            )
        })?;
        attempts.tried.push(address);
        attempts.made += 1;
        ctx.exchange.served_by = Some(address);
        let mut peer = self.forwarder.settings.peer(address);
        if let Some(deadline) = ctx.exchange.deadline {
            peer.options.read_timeout = Some(deadline.saturating_duration_since(Instant::now()));
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.exchange.attempts.connect_failures += 1;
        tracing::warn!(endpoint = %peer.address(), error = %e, "connect failed; trying the next endpoint");
        let endpoints = ctx.service.as_ref().map_or(0, |s| s.endpoints.len());
        if ctx.exchange.attempts.tried.len() < endpoints {
            e.set_retry(true);
        }
        e
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(chunk) = body {
            ctx.exchange.on_body(chunk);
        }
        if end_of_stream {
            ctx.exchange.observer.on_end();
        }
        if ctx.exchange.past_deadline() {
            return Error::e_explain(ErrorType::HTTPStatus(504), "request timeout");
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let content_type = upstream_response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        // A Service route's first token and token usage only go to the access log; finding them
        // costs a JSON parse per response, so it is skipped while that log is off.
        let scan = tracing::enabled!(target: "access", tracing::Level::INFO);
        ctx.exchange.observer.on_header(content_type, scan);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = proxy_error_status(e);
        if code > 0 && !ctx.exchange.observer.response_started() {
            let error = ClientError::ProxyFailed {
                status: code,
                cause: e.etype().as_str(),
            };
            ctx.exchange.answer(&error);
            let _ = respond::error(session, &error).await;
        } else if code == 0 {
            ctx.exchange.status = Some(499);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        connections::request_finished();
        let status = ctx
            .exchange
            .status
            .or_else(|| session.response_written().map(|h| h.status.as_u16()))
            .unwrap_or(0);
        let header = session.req_header();
        let finished = record::Finished {
            request_id: &ctx.request_id,
            port: ctx.port,
            method: header.method.as_str(),
            path: header.uri.path(),
            route: ctx.route.as_deref(),
            backend: ctx.backend,
            status,
            elapsed: ctx.started.elapsed(),
            exchange: &ctx.exchange,
            inference: ctx.inference.as_ref(),
            hints: &ctx.hints,
            proxy_error: error,
        };
        record::finished(&self.state.metrics, &finished);
        // Dropping the in-flight count releases the serving endpoint.
        ctx.exchange.in_flight = None;
    }
}
