//! This project's routing served as an endpoint picker (EPP): a [`Picker`] the gateway implements,
//! wrapped in Envoy's `ExternalProcessor` gRPC service and the standard gRPC health service.
//!
//! A proxy (Envoy, or this crate's client) opens one stream per HTTP request; the server collects
//! the request, asks the [`Picker`], answers with the destination and the body, and reports the
//! served endpoint back to the picker. This module owns the service plumbing and the picker's
//! contract; it must not choose endpoints itself, and it must not depend on the gateway's types.

mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::error::ServeError;
use crate::wire;

/// What a picker sees of a request.
#[derive(Clone, Debug, Default)]
pub struct PickerRequest {
    /// Request headers as the proxy sent them, pseudo-headers included, names lower-cased.
    pub headers: Vec<(String, Bytes)>,
    /// The whole request body.
    pub body: Bytes,
    /// The proxy's subset hint (`ip:port` strings) when it sent one; the picker must choose
    /// among these (see [`PickerRequest::subset_allows`]). An empty list allows nothing.
    pub subset: Option<Vec<String>>,
}

impl PickerRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether the subset hint allows `endpoint`: true without a hint; otherwise when an entry
    /// names the endpoint exactly or names its IP (`ip`, `ip:port` with another port, IPv6 bracketed
    /// or not). Matching on the IP follows the Inference Extension, whose pods are hinted by IP.
    pub fn subset_allows(&self, endpoint: SocketAddr) -> bool {
        let Some(subset) = &self.subset else {
            return true;
        };
        subset
            .iter()
            .any(|entry| entry_names_ip(entry, endpoint.ip()))
    }
}

/// Whether a hint entry names `ip`: `ip:port`, `[v6]:port`, a bare IP, or `v6:port` written
/// unbracketed (ambiguous, so both readings are tried).
fn entry_names_ip(entry: &str, ip: std::net::IpAddr) -> bool {
    let entry = entry.trim();
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return addr.ip() == ip;
    }
    let bare = entry.trim_start_matches('[').trim_end_matches(']');
    if bare.parse() == Ok(ip) {
        return true;
    }
    entry
        .rsplit_once(':')
        .is_some_and(|(host, _port)| host.parse() == Ok(ip))
}

/// Where a request goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PickerAnswer {
    /// Endpoints in preference order: the primary, then the fallback list. Must not be empty.
    pub destinations: Vec<SocketAddr>,
    /// Request headers for the proxy to set (besides the destination header).
    pub set_headers: Vec<(String, Bytes)>,
    /// Request headers for the proxy to remove.
    pub remove_headers: Vec<String>,
    /// A replacement body (e.g. with the model renamed); `None` keeps the body as received.
    pub body: Option<Bytes>,
    /// Whatever the picker needs kept while the request is in flight (the gateway's in-flight
    /// count on the chosen endpoint): held by the stream and dropped when it ends, whether the
    /// proxy half-closed after the response, the stream failed or the proxy went away.
    pub held: Held,
}

/// A value kept alive for the life of one ext_proc stream ([`PickerAnswer::held`]).
#[derive(Clone, Default)]
pub struct Held(pub Option<Arc<dyn std::any::Any + Send + Sync>>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Held(..)"
        } else {
            "Held(None)"
        })
    }
}

impl PartialEq for Held {
    /// Two answers hold "the same" when both hold nothing or both hold the same value.
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Held {}

impl PickerAnswer {
    /// An answer that only routes.
    pub fn to(destinations: Vec<SocketAddr>) -> Self {
        PickerAnswer {
            destinations,
            ..Default::default()
        }
    }
}

/// A refusal, sent to the proxy as an `ImmediateResponse` that it returns to its client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status: 400, 404, 429 and 503 are the usual ones.
    pub status: u16,
    /// Response headers, e.g. [`wire::DROPPED_REASON_HEADER`].
    pub headers: Vec<(String, Bytes)>,
    /// Response body.
    pub body: Bytes,
    /// Text for the proxy's logs (`ImmediateResponse.details`).
    pub details: String,
}

impl Rejection {
    /// A rejection with this status and body.
    pub fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Rejection {
            status,
            body: body.into(),
            ..Default::default()
        }
    }

    /// Adds the `x-llm-d-request-dropped-reason` header.
    pub fn with_dropped_reason(mut self, reason: &str) -> Self {
        self.headers.push((
            wire::DROPPED_REASON_HEADER.to_owned(),
            Bytes::copy_from_slice(reason.as_bytes()),
        ));
        self
    }
}

/// What the proxy reported on the response path of a routed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedRecord {
    /// The request's headers (to correlate, e.g. by `x-request-id`).
    pub request_headers: Vec<(String, Bytes)>,
    /// What the picker chose.
    pub destinations: Vec<SocketAddr>,
    /// The served endpoint as reported (`envoy.lb` / `x-gateway-destination-endpoint-served`);
    /// `None` when the proxy sent none.
    pub served: Option<String>,
    /// The response `:status`, when present and numeric.
    pub status: Option<u16>,
    /// The response headers as reported, pseudo-headers included.
    pub response_headers: Vec<(String, Bytes)>,
}

/// The decision the gateway plugs in. Called once per request, after the whole body arrived.
#[async_trait::async_trait]
pub trait Picker: Send + Sync + 'static {
    /// Where `request` goes, or why it is refused.
    async fn pick(&self, request: &PickerRequest) -> Result<PickerAnswer, Rejection>;

    /// The proxy reported the response headers of a request this picker routed.
    fn served(&self, _record: &ServedRecord) {}
}

/// Limits of the server.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Largest request body collected; a larger one is refused with 413.
    pub max_body_bytes: usize,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Concurrent streams allowed per HTTP/2 connection (one per in-flight request).
    pub max_concurrent_streams: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_body_bytes: 64 * 1024 * 1024,
            max_message_bytes: 16 * 1024 * 1024,
            max_concurrent_streams: 10_000,
        }
    }
}

/// The endpoint-picker server around a [`Picker`].
pub struct EppServer<P> {
    picker: Arc<P>,
    settings: ServerSettings,
    open: Arc<watch::Sender<usize>>,
}

impl<P> Clone for EppServer<P> {
    fn clone(&self) -> Self {
        EppServer {
            picker: self.picker.clone(),
            settings: self.settings.clone(),
            open: self.open.clone(),
        }
    }
}

impl<P: Picker> EppServer<P> {
    /// A server with default settings.
    pub fn new(picker: Arc<P>) -> Self {
        Self::with_settings(picker, ServerSettings::default())
    }

    /// A server with these settings.
    pub fn with_settings(picker: Arc<P>, settings: ServerSettings) -> Self {
        EppServer {
            picker,
            settings,
            open: Arc::new(watch::channel(0).0),
        }
    }

    /// The number of streams being processed now, as a watch (for metrics, draining and tests).
    pub fn open_streams(&self) -> watch::Receiver<usize> {
        self.open.subscribe()
    }

    /// The tonic service, for mounting on a server of the caller's own.
    pub fn service(&self) -> ExternalProcessorServer<Self> {
        ExternalProcessorServer::new(self.clone())
            .max_decoding_message_size(self.settings.max_message_bytes)
            .max_encoding_message_size(self.settings.max_message_bytes)
    }

    /// Serves ext_proc (with gRPC health) on `ext_proc` and, when given, gRPC health on `health`,
    /// until `shutdown` completes; then reports NOT_SERVING and drains open streams.
    pub async fn serve(
        self,
        ext_proc: TcpListener,
        health: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        for name in wire::HEALTH_SERVICES {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let shutdown = {
            let reporter = reporter.clone();
            async move {
                shutdown.await;
                for name in wire::HEALTH_SERVICES {
                    reporter
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
            }
            .boxed()
            .shared()
        };
        tracing::info!(ext_proc = %ext_proc.local_addr()?, "endpoint picker serving");
        let main = Server::builder()
            .max_concurrent_streams(self.settings.max_concurrent_streams)
            .add_service(health_service.clone())
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming(ext_proc), shutdown.clone());
        match health {
            None => main.await?,
            Some(listener) => {
                tracing::info!(health = %listener.local_addr()?, "endpoint picker health serving");
                let health = Server::builder()
                    .add_service(health_service)
                    .serve_with_incoming_shutdown(incoming(listener), shutdown);
                let (main, health) = tokio::join!(main, health);
                main?;
                health?;
            }
        }
        Ok(())
    }
}

/// Accepted connections with Nagle's algorithm off: answers are small messages written as soon as
/// they are ready, and with Nagle on, each waits for the peer's delayed ACK (about 40 ms).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves `picker` as an EPP with default settings; see [`EppServer::serve`].
pub async fn serve<P: Picker>(
    ext_proc: TcpListener,
    health: Option<TcpListener>,
    picker: Arc<P>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    EppServer::new(picker)
        .serve(ext_proc, health, shutdown)
        .await
}

#[async_trait::async_trait]
impl<P: Picker> ExternalProcessor for EppServer<P> {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, tonic::Status>>;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let guard = OpenStream::new(self.open.clone());
        let picker = self.picker.clone();
        let settings = self.settings.clone();
        tokio::spawn(async move {
            stream::run(picker.as_ref(), &settings, inbound, tx).await;
            drop(guard);
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// Counts a stream as open while alive.
struct OpenStream(Arc<watch::Sender<usize>>);

impl OpenStream {
    fn new(open: Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|n| *n += 1);
        OpenStream(open)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_subset(subset: &[&str]) -> PickerRequest {
        PickerRequest {
            subset: Some(subset.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn subset_matches_on_the_ip_in_every_spelling() {
        let v4: SocketAddr = "10.0.0.1:8000".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:8000".parse().unwrap();
        assert!(PickerRequest::default().subset_allows(v4));
        assert!(with_subset(&["10.0.0.1:9999"]).subset_allows(v4));
        assert!(with_subset(&["10.0.0.1"]).subset_allows(v4));
        assert!(!with_subset(&["10.0.0.2:8000"]).subset_allows(v4));
        assert!(!with_subset(&[]).subset_allows(v4));
        for spelling in ["[fd00::1]:8000", "fd00::1", "[fd00::1]", "fd00::1:8000"] {
            assert!(with_subset(&[spelling]).subset_allows(v6), "{spelling}");
        }
        assert!(!with_subset(&["pod-a:8000", "garbage"]).subset_allows(v4));
    }

    #[test]
    fn rejection_carries_the_dropped_reason_header() {
        let r = Rejection::new(429, "busy").with_dropped_reason("queue full");
        assert_eq!(
            r.headers,
            vec![(
                wire::DROPPED_REASON_HEADER.to_owned(),
                Bytes::from_static(b"queue full")
            )]
        );
    }
}
