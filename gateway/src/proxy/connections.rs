//! Limits on client connections, which Pingora's `ProxyHttp` phases cannot see because they run
//! per request: how many connections may be open at once, and how long a connection may go
//! without delivering a complete request header.
//!
//! [`LimitedApp`] wraps the proxy's [`ServerApp`] and runs each accepted connection:
//! - **Connection cap.** A connection beyond `max_connections` is answered with an OpenAI-shaped
//!   503 (`Retry-After`, `Connection: close`) as soon as its request header arrives, and closed;
//!   it never reaches the proxy.
//! - **Header deadline.** A connection waiting for a request header (from accept, or from the end
//!   of the previous response on a keep-alive connection) must deliver the whole header within
//!   `header_timeout`, however the bytes trickle in; otherwise it is closed. Pingora's own limit
//!   is per read (60 s each), which a client sending a byte now and then never trips.
//!
//! The proxy tells the connection which state it is in through [`request_started`] and
//! [`request_finished`]; the connection's [`HeaderClock`] lives in a tokio task-local, since an
//! HTTP/1 connection and its requests run on one task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use super::error::ClientError;

/// How long an over-the-cap connection gets, first to send its request header (else it is closed
/// without an answer), then to take the 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most client connections open at once on the proxy listeners; `0` for no cap.
    pub max_connections: usize,
    /// Longest wait for a complete request header; `None` leaves only Pingora's per-read limit.
    pub header_timeout: Option<Duration>,
}

/// Connection metrics.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// Client connections open now.
    pub open: IntGauge,
    /// Connections refused because `max_connections` were open.
    pub refused: IntCounter,
    /// Connections closed because a request header did not arrive in time.
    pub header_timeouts: IntCounter,
}

/// A [`ServerApp`] that enforces [`ConnectionLimits`] around `A`.
pub struct LimitedApp<A> {
    inner: Arc<A>,
    limits: ConnectionLimits,
    open: AtomicUsize,
    metrics: ConnectionMetrics,
}

impl<A> LimitedApp<A> {
    /// Wrap `inner`.
    pub fn new(inner: A, limits: ConnectionLimits, metrics: ConnectionMetrics) -> Self {
        Self {
            inner: Arc::new(inner),
            limits,
            open: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Take one of the `max_connections` slots, if one is free.
    fn admit(&self) -> Option<Slot<'_, A>> {
        let cap = self.limits.max_connections;
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if cap != 0 && before >= cap {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.open.inc();
        Some(Slot(self))
    }
}

/// An open connection's place under the cap, given back when the connection ends.
struct Slot<'a, A>(&'a LimitedApp<A>);

impl<A> Drop for Slot<'_, A> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.open.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for LimitedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.admit() else {
            self.metrics.refused.inc();
            // Boxed so the rare refusal does not grow every connection's future.
            Box::pin(refuse(stream, self.limits.max_connections)).await;
            return None;
        };
        let stream_alpn = stream.selected_alpn_proto();
        let serve = async {
            let mut next = self.inner.process_new(stream, shutdown).await;
            while let Some(stream) = next {
                next = self.inner.process_new(stream, shutdown).await;
            }
        };
        // The clock follows HTTP/1 requests, which run on this task. An HTTP/2 connection (TLS with
        // ALPN h2) serves its streams on tasks of their own that cannot reach the clock, so it
        // would look idle while busy: it gets none.
        let http2 = matches!(stream_alpn, Some(ALPN::H2));
        match self.limits.header_timeout.filter(|_| !http2) {
            None => serve.await,
            Some(timeout) => {
                let clock = Arc::new(HeaderClock::new());
                tokio::select! {
                    biased;
                    () = CLOCK.scope(Arc::clone(&clock), serve) => {}
                    () = clock.expired(timeout) => self.metrics.header_timeouts.inc(),
                }
            }
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Answer an over-the-cap connection: read its request header (briefly), then a 503.
async fn refuse(stream: Stream, cap: usize) {
    let mut session = ServerSession::new_http1(stream);
    // Reading the header first lets the client see the answer instead of a reset.
    match tokio::time::timeout(REFUSAL_TIMEOUT, session.read_request()).await {
        Ok(Ok(true)) => {}
        _ => return,
    }
    session.set_keepalive(None);
    let error = ClientError::TooManyConnections { cap };
    let body = error.body();
    let Ok(header) = refusal_header(&error, body.len()) else {
        return;
    };
    let written = async {
        session.write_response_header(Box::new(header)).await?;
        session.write_response_body(body, true).await?;
        session.finish().await
    };
    if let Err(e) = tokio::time::timeout(REFUSAL_TIMEOUT, written).await {
        tracing::debug!(error = %e, "writing a connection-limit refusal timed out");
    }
}

fn refusal_header(error: &ClientError, len: usize) -> pingora::Result<ResponseHeader> {
    let mut header = error.header(len)?;
    header.insert_header(http::header::RETRY_AFTER, "1")?;
    header.insert_header(http::header::CONNECTION, "close")?;
    Ok(header)
}

tokio::task_local! {
    static CLOCK: Arc<HeaderClock>;
}

/// Mark the current connection as busy with a request (its header has arrived). A no-op outside
/// a [`LimitedApp`] connection task.
pub fn request_started() {
    let _ = CLOCK.try_with(|clock| clock.busy());
}

/// Mark the current connection as waiting for its next request header.
pub fn request_finished() {
    let _ = CLOCK.try_with(|clock| clock.waiting());
}

/// Whether a connection is waiting for a request header, and since when.
#[derive(Debug)]
pub struct HeaderClock {
    base: Instant,
    /// Milliseconds after `base` since which the connection waits for a header; [`BUSY`] while a
    /// request is being served.
    waiting_since_ms: AtomicU64,
}

const BUSY: u64 = u64::MAX;

impl HeaderClock {
    /// A clock for a connection accepted now (waiting for its first header).
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            waiting_since_ms: AtomicU64::new(0),
        }
    }

    /// A request is being served.
    pub fn busy(&self) {
        self.waiting_since_ms.store(BUSY, Ordering::Release);
    }

    /// The connection waits for its next request header from now.
    pub fn waiting(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(BUSY - 1);
        self.waiting_since_ms.store(now, Ordering::Release);
    }

    /// When the current wait ends, or `None` while a request is being served.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.waiting_since_ms.load(Ordering::Acquire) {
            BUSY => None,
            since => Some(self.base + Duration::from_millis(since) + timeout),
        }
    }

    /// Resolves once the connection has waited `timeout` for a request header. While requests
    /// are served it wakes once per `timeout` to look again.
    pub async fn expired(&self, timeout: Duration) {
        loop {
            match self.deadline(timeout) {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => tokio::time::sleep(timeout).await,
            }
        }
    }
}

impl Default for HeaderClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes of a request's head as it came on the wire (request line, header lines, blank line), for
/// the header size limit. Pingora has parsed the head already, so this adds up its parts.
pub fn header_bytes(header: &pingora::http::RequestHeader) -> usize {
    // "METHOD SP target SP HTTP/1.1 CRLF", the header lines, "CRLF".
    let line = header.method.as_str().len() + 1 + header.raw_path().len() + 11;
    let fields: usize = header
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + fields + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_expires_only_while_waiting_for_a_header() {
        let clock = HeaderClock::new();
        let timeout = Duration::from_secs(10);
        // Waiting for the first header since accept.
        assert_eq!(clock.deadline(timeout), Some(clock.base + timeout));
        clock.busy();
        assert_eq!(clock.deadline(timeout), None);
        // A request that runs for three timeouts does not expire the clock.
        let expired = tokio::time::timeout(Duration::from_secs(30), clock.expired(timeout)).await;
        assert!(expired.is_err());
        // Once the response is done, the next header has `timeout` from then.
        clock.waiting();
        let started = Instant::now();
        clock.expired(timeout).await;
        let waited = started.elapsed();
        assert!(waited >= timeout && waited < timeout + Duration::from_secs(1));
    }

    #[test]
    fn header_bytes_counts_the_head_as_sent() {
        let mut header = pingora::http::RequestHeader::build("POST", b"/v1/completions", None)
            .expect("valid header");
        header.insert_header("host", "gateway").unwrap();
        header.insert_header("content-length", "2").unwrap();
        let wire = "POST /v1/completions HTTP/1.1\r\nhost: gateway\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(header_bytes(&header), wire.len());
    }
}
