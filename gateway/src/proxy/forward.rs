//! The forwarder: sends a request whose body the gateway has already read, and streams the
//! response back.
//!
//! Stock Pingora sends a body read in `request_filter` upstream only through its 64 KiB retry
//! buffer; a larger body never reaches the upstream. Inference requests must be read before an
//! endpoint can be picked, and long prompts are megabytes, so the [`Forwarder`] sends them itself
//! with Pingora's public connector: it takes a pooled or new upstream connection, writes the request
//! header and the (possibly rewritten) body, then streams the response to the client chunk by chunk
//! while watching the client connection, and finally returns the connection to the pool. See
//! `docs/architecture.md` for why and how.
//!
//! Where to go comes from a [`Targets`] source (a Service's round-robin, or a pool's ranked
//! endpoints). A candidate that cannot be connected to is skipped for the next one, and so is a
//! pooled connection that turns out to be dead before any response byte (the upstream closed it
//! while idle); nothing is retried once the upstream may have started on the request. A client
//! that goes away aborts the upstream request by closing its connection, which vLLM takes as an
//! abort. A deadline bounds the whole exchange. Everything that happened is written into the
//! request's [`Exchange`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::{HttpPeer, Peer};

use super::error::{ClientError, UpstreamFailure};
use super::exchange::{Ending, Exchange};
use super::respond;
use crate::headers;
use crate::snapshot::{Endpoint, HealthPolicy, InFlight};

/// How many dead pooled connections to skip for one candidate before giving up on it.
const MAX_STALE_RETRIES: u32 = 3;

/// Idle upstream connections kept per process.
pub const UPSTREAM_POOL_SIZE: usize = 1024;

/// One endpoint to try, with the in-flight count taken on it (released when this is dropped).
#[derive(Debug)]
pub struct Target {
    /// Where to connect.
    pub address: SocketAddr,
    /// The in-flight count, for pool endpoints.
    pub in_flight: Option<InFlight>,
}

/// Where a forwarded request may go next.
pub trait Targets: Send {
    /// The next endpoint to try, given those `tried` so far and the client's request `header`.
    fn next(&mut self, tried: &[SocketAddr], header: &RequestHeader) -> Option<Target>;

    /// Called once with the response header of the endpoint that answered (`served`), before the
    /// client gets it; it may change it. An external endpoint picker's served report runs here.
    fn on_response<'a>(
        &'a mut self,
        _served: SocketAddr,
        _response: &'a mut ResponseHeader,
    ) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Connection settings for upstream attempts.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Passive health of pool endpoints.
    pub health: HealthPolicy,
}

impl UpstreamSettings {
    /// A peer for `address` with these settings.
    pub fn peer(&self, address: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(address, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        peer
    }
}

/// Sends requests whose body was read, over a pool of upstream connections.
pub struct Forwarder {
    connector: Connector,
    /// Connection settings.
    pub settings: UpstreamSettings,
}

impl Forwarder {
    /// The pooled connections to upstreams, for the gateway's own calls to model servers.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("settings", &self.settings)
            .finish()
    }
}

/// What one attempt on one candidate came to.
enum Attempt {
    /// The client has its answer (or went away); `health` is what the attempt says of the endpoint.
    Done(Health),
    /// Nothing reached the endpoint's request handling; try the next candidate.
    NextCandidate(String),
    /// The pooled connection was dead; try the same candidate on another connection.
    SameCandidate(String),
}

/// What an attempt says of the endpoint's health.
#[derive(Clone, Copy)]
enum Health {
    /// It answered with this status.
    Answered(u16),
    /// Its connection failed after the request was sent.
    Failed,
    /// Nothing to say (the client went away before an answer).
    Unknown,
}

impl Forwarder {
    /// A forwarder with its own connection pool.
    pub fn new(settings: UpstreamSettings) -> Self {
        Self {
            connector: Connector::new(Some(ConnectorOptions::new(UPSTREAM_POOL_SIZE))),
            settings,
        }
    }

    /// Forward `header` + `body` to the candidates `targets` yields, streaming the response to
    /// `session`. Always answers the client (an error in OpenAI's shape when no candidate works)
    /// unless the client went away.
    pub async fn forward(
        &self,
        session: &mut Session,
        header: RequestHeader,
        body: Bytes,
        targets: &mut dyn Targets,
        exchange: &mut Exchange,
    ) {
        // While the gateway waits on the upstream it watches the client connection for a close. A
        // client that sends its next request early must not lose those bytes to that watch:
        // Pingora's pipelining support keeps them for the next request on the connection.
        session.as_downstream_mut().set_pipelining_enabled(true);
        let deadline = exchange.deadline;
        let candidates = self.candidates(session, &header, &body, targets, exchange);
        let finished = match deadline {
            None => {
                candidates.await;
                true
            }
            Some(deadline) => tokio::time::timeout_at(deadline.into(), candidates)
                .await
                .is_ok(),
        };
        if !finished {
            exchange.ending = Some(Ending::TimedOut);
            if exchange.observer.response_started() {
                // The client sees the stream end without its terminator; the connection is closed.
                session.set_keepalive(None);
            } else {
                answer(session, exchange, &ClientError::Timeout).await;
            }
        }
    }

    /// Try candidates until one answers, or answer the client with why none could.
    async fn candidates(
        &self,
        session: &mut Session,
        header: &RequestHeader,
        body: &Bytes,
        targets: &mut dyn Targets,
        exchange: &mut Exchange,
    ) {
        let mut last_error = None;
        while let Some(target) = targets.next(&exchange.attempts.tried, session.req_header()) {
            exchange.attempts.tried.push(target.address);
            let endpoint = target.in_flight.as_ref().map(|f| Arc::clone(f.endpoint()));
            // Held by the exchange from now on, so a deadline that cuts the attempt still reports
            // the request to the strategy; replaced (and released) by the next candidate's.
            exchange.in_flight = target.in_flight;
            let peer = self.settings.peer(target.address);
            let mut stale_retries = 0;
            loop {
                exchange.attempts.made += 1;
                match self
                    .attempt(session, &peer, header, body, &mut *targets, exchange)
                    .await
                {
                    Attempt::Done(health) => {
                        if let Some(endpoint) = &endpoint {
                            self.record_health(endpoint, &health);
                        }
                        exchange.served_by = Some(target.address);
                        return;
                    }
                    Attempt::SameCandidate(_) if stale_retries < MAX_STALE_RETRIES => {
                        stale_retries += 1;
                    }
                    Attempt::SameCandidate(error) | Attempt::NextCandidate(error) => {
                        if let Some(endpoint) = &endpoint {
                            endpoint.record_connect_failure(&self.settings.health);
                        }
                        exchange.attempts.connect_failures += 1;
                        exchange.in_flight = None;
                        last_error = Some(error);
                        break;
                    }
                }
            }
        }
        let tried = exchange.attempts.tried.len();
        let error = match &last_error {
            None => ClientError::NoEndpointToTry,
            Some(error) => ClientError::Unreachable {
                tried,
                error: error.clone(),
            },
        };
        exchange.ending = Some(Ending::Unreachable(last_error));
        answer(session, exchange, &error).await;
    }

    fn record_health(&self, endpoint: &Endpoint, health: &Health) {
        match health {
            Health::Failed => endpoint.record_connect_failure(&self.settings.health),
            Health::Answered(status) => endpoint.record_response(*status, &self.settings.health),
            Health::Unknown => {}
        }
    }

    /// One attempt on `peer`: send the request, relay the response.
    async fn attempt(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        header: &RequestHeader,
        body: &Bytes,
        targets: &mut dyn Targets,
        exchange: &mut Exchange,
    ) -> Attempt {
        let (mut upstream, reused) = match self.connector.get_http_session(peer).await {
            Ok(connection) => connection,
            Err(e) => {
                tracing::warn!(endpoint = %peer.address(), error = %e, "connect failed; trying the next endpoint");
                return Attempt::NextCandidate(format!(
                    "connect to {}: {}",
                    peer.address(),
                    e.etype().as_str()
                ));
            }
        };
        if let Err(e) = send(&mut upstream, header, body).await {
            let error = format!("send to {}: {}", peer.address(), e.etype().as_str());
            return if reused {
                Attempt::SameCandidate(error)
            } else {
                let failure = UpstreamFailure::ClosedWhileSending;
                upstream_failed(session, exchange, failure, error).await
            };
        }
        let mut watch = ClientWatch::default();
        let header_read = tokio::select! {
            read = upstream.read_response_header() => read,
            gone = watch.closed(session) => {
                if gone {
                    return client_gone(session, exchange, upstream, Health::Unknown).await;
                }
                upstream.read_response_header().await
            }
        };
        if let Err(e) = header_read {
            let error = format!("response from {}: {}", peer.address(), e.etype().as_str());
            return if reused {
                Attempt::SameCandidate(error)
            } else {
                let failure = UpstreamFailure::ClosedWithoutResponse;
                upstream_failed(session, exchange, failure, error).await
            };
        }
        let Some(response) = upstream.response_header() else {
            let error = format!("response from {}: no header", peer.address());
            let failure = UpstreamFailure::NoResponseHeader;
            return upstream_failed(session, exchange, failure, error).await;
        };
        let mut response: ResponseHeader = response.clone();
        let status = response.status.as_u16();
        exchange.status = Some(status);
        let _ = response.insert_header(headers::SERVED_BY, peer.address().to_string());
        if let Some(served) = peer.address().as_inet() {
            targets.on_response(*served, &mut response).await;
        }
        let content_type = response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let end_of_stream = upstream.response_done();
        if let Err(e) = session
            .write_response_header(Box::new(response), end_of_stream)
            .await
        {
            tracing::debug!(error = %e, "client went away before the response header");
            return client_gone(session, exchange, upstream, Health::Answered(status)).await;
        }
        exchange.observer.on_header(content_type.as_deref(), true);
        let relay = Relay {
            peer,
            status,
            complete: end_of_stream,
            watch,
        };
        self.relay(session, upstream, relay, exchange).await
    }

    /// Stream the response body to the client.
    async fn relay(
        &self,
        session: &mut Session,
        mut upstream: UpstreamSession,
        relay: Relay<'_>,
        exchange: &mut Exchange,
    ) -> Attempt {
        let Relay {
            peer,
            status,
            mut complete,
            mut watch,
        } = relay;
        let answered = Health::Answered(status);
        while !complete {
            let chunk = tokio::select! {
                chunk = upstream.read_response_body() => chunk,
                gone = watch.closed(session) => {
                    if gone {
                        return client_gone(session, exchange, upstream, answered).await;
                    }
                    continue;
                }
            };
            match chunk {
                Ok(Some(bytes)) => {
                    exchange.on_body(&bytes);
                    if let Err(e) = session.write_response_body(Some(bytes), false).await {
                        tracing::debug!(error = %e, "client went away mid-stream");
                        return client_gone(session, exchange, upstream, answered).await;
                    }
                    // With a Content-Length the client now has the whole response and may send
                    // its next request at once: stop watching the connection before reading that.
                    complete = upstream.response_done();
                }
                Ok(None) => complete = true,
                Err(e) => {
                    exchange.ending = Some(Ending::UpstreamFailed(format!(
                        "response body from {}: {}",
                        peer.address(),
                        e.etype().as_str()
                    )));
                    // The client sees a truncated stream and a closed connection.
                    session.set_keepalive(None);
                    upstream.shutdown().await;
                    return Attempt::Done(Health::Failed);
                }
            }
        }
        exchange.observer.on_end();
        exchange.ending = Some(if session.write_response_body(None, true).await.is_err() {
            Ending::ClientGone
        } else {
            Ending::Completed
        });
        if upstream.response_done() {
            self.connector
                .release_http_session(upstream, peer, Some(self.settings.idle_timeout))
                .await;
        }
        Attempt::Done(answered)
    }
}

/// A response being relayed: where from, its status, whether the body is complete already, and
/// the watch on the client.
struct Relay<'a> {
    peer: &'a HttpPeer,
    status: u16,
    complete: bool,
    watch: ClientWatch,
}

/// Write the request header and body upstream.
async fn send(
    upstream: &mut UpstreamSession,
    header: &RequestHeader,
    body: &Bytes,
) -> pingora::Result<()> {
    upstream
        .write_request_header(Box::new(header.clone()))
        .await?;
    if !body.is_empty() {
        upstream.write_request_body(body.clone(), true).await?;
    }
    upstream.finish_request_body().await
}

/// Watches the client connection for a close while the gateway waits on the upstream. After the
/// first event (data or close) it stops: any further bytes belong to the client's next request.
#[derive(Default)]
struct ClientWatch {
    done: bool,
}

impl ClientWatch {
    /// Resolves with `true` when the client went away, `false` when it sent data (the watch then
    /// ends); never resolves once ended.
    async fn closed(&mut self, session: &mut Session) -> bool {
        if self.done {
            return std::future::pending().await;
        }
        let gone = session.as_downstream_mut().read_body_or_idle(true).await;
        self.done = true;
        gone.is_err()
    }
}

/// Write `error` as the whole response.
async fn answer(session: &mut Session, exchange: &mut Exchange, error: &ClientError) {
    exchange.answer(error);
    let _ = respond::error(session, error).await;
}

/// The chosen endpoint failed before a response header (`detail` says how): answer 502.
async fn upstream_failed(
    session: &mut Session,
    exchange: &mut Exchange,
    failure: UpstreamFailure,
    detail: String,
) -> Attempt {
    exchange.ending = Some(Ending::UpstreamFailed(detail));
    answer(session, exchange, &ClientError::UpstreamFailed(failure)).await;
    Attempt::Done(Health::Failed)
}

/// The client went away: close the upstream connection so the model server aborts the request.
/// `health` is what the endpoint had shown by then.
async fn client_gone(
    session: &mut Session,
    exchange: &mut Exchange,
    mut upstream: UpstreamSession,
    health: Health,
) -> Attempt {
    exchange.ending = Some(Ending::ClientGone);
    session.set_keepalive(None);
    upstream.shutdown().await;
    Attempt::Done(health)
}

/// Hop-by-hop headers never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// The upstream request header for a buffered body: hop-by-hop headers removed, the body's exact
/// length, and a Host header.
pub fn upstream_header(original: &RequestHeader, body_len: usize) -> RequestHeader {
    let mut header = original.clone();
    for name in HOP_BY_HOP {
        header.remove_header(name);
    }
    if header.headers.get(http::header::HOST).is_none()
        && let Some(authority) = original.uri.authority().map(|a| a.as_str().to_owned())
    {
        let _ = header.insert_header(http::header::HOST, authority);
    }
    if let Some(path) = original.uri.path_and_query().map(|p| p.as_str().to_owned())
        && let Ok(uri) = path.parse::<http::Uri>()
    {
        header.set_uri(uri);
    }
    let _ = header.insert_header(http::header::CONTENT_LENGTH, body_len);
    header
}
