//! The gateway playing Envoy: asks an endpoint picker (EPP) where a request goes, over one
//! `ExternalProcessor/Process` stream per request, and later reports which endpoint served it.
//!
//! [`PickerClient::pick`] sends the request headers and body (full duplex, 64 KiB chunks) and reads
//! the answers until the body has come back; [`ServedReport::served`] finishes the same stream with
//! the response headers. This module talks the protocol only: it must not choose endpoints, retry,
//! apply the answer to a request or spawn tasks that outlive the handles it returns.

mod answer;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
    processing_request::Request,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use answer::{BodyStep, FirstAnswer};
pub use answer::{HeaderChanges, Immediate};

use crate::error::PickError;
use crate::wire;

/// How the client talks to a picker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// Bound on each exchange: [`PickerClient::pick`] from the first byte sent to the body having
    /// come back, and [`ServedReport::served`] from sending the response headers to the stream's end.
    pub deadline: Duration,
    /// Bound on establishing the TCP connection (part of the first exchange's deadline too).
    pub connect_timeout: Duration,
    /// Largest gRPC message accepted or sent. Chunks are 64 KiB, but a picker may answer with a
    /// whole-body replacement in one message.
    pub max_message_bytes: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A request to route: what the proxy received from its client.
#[derive(Clone, Debug, Default)]
pub struct PickRequest {
    /// Request headers including `:method`, `:path`, `:authority` and `:scheme` (names are sent
    /// lower-cased, values as bytes in `raw_value`).
    pub headers: Vec<(String, Bytes)>,
    /// The whole request body (empty: the headers carry `end_of_stream`).
    pub body: Bytes,
    /// The subset hint: endpoints (`ip:port`) the picker must choose from; `None` sends no hint,
    /// an empty list sends an empty hint (a picker answers that with 503).
    pub subset: Option<Vec<String>>,
}

/// The picker's decision.
#[derive(Debug)]
pub enum Picked {
    /// Send the request to these endpoints.
    Route(Route),
    /// Answer the proxy's client with this response instead.
    Reject(Immediate),
}

/// Where a request goes and what to change on it.
///
/// The proxy applies, to the upstream request: [`Route::set_headers`] (each replaces any value of
/// that name), [`Route::remove_headers`], and [`Route::body`] as the body with `content-length` set
/// to its length (the picker's `Content-Length` and other hop-by-hop headers are not in
/// `set_headers`; neither is the destination header). [`Route::pseudo_headers`] holds pseudo-headers
/// the picker changed (e.g. a rewritten `:path`); echoes of the values sent are dropped, as are echoes
/// of regular headers. Whether to honour a pseudo-header change is the proxy's decision.
#[derive(Debug)]
pub struct Route {
    /// Endpoints in preference order: the first is the primary, the rest the fallback list.
    pub destinations: Vec<SocketAddr>,
    /// Headers to set on the upstream request, names lower-cased.
    pub set_headers: Vec<(String, Bytes)>,
    /// Pseudo-headers the picker changed.
    pub pseudo_headers: Vec<(String, Bytes)>,
    /// Headers to remove from the upstream request, names lower-cased.
    pub remove_headers: Vec<String>,
    /// The request body as the picker returned it (possibly rewritten).
    pub body: Bytes,
    /// The open stream, for reporting the served endpoint; dropping it cancels the stream.
    pub served: ServedReport,
}

/// A cheap-to-clone client of one picker. The connection is made lazily on first use and remade
/// by itself after a failure; all requests share one HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct PickerClient {
    grpc: ExternalProcessorClient<Channel>,
    settings: ClientSettings,
}

impl PickerClient {
    /// A client of the picker at `target`: `host:port` or `http://host:port` (plain HTTP/2, no TLS).
    /// Must be called inside a Tokio runtime; does not connect yet.
    pub fn new(target: &str, settings: ClientSettings) -> Result<Self, PickError> {
        let uri = if target.contains("://") {
            target.to_owned()
        } else {
            format!("http://{target}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| PickError::Target {
            target: target.to_owned(),
            reason: e.to_string(),
        })?;
        if endpoint.uri().scheme_str() != Some("http") {
            return Err(PickError::Target {
                target: target.to_owned(),
                reason: "only http:// is supported".into(),
            });
        }
        let channel = endpoint
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .connect_lazy();
        let grpc = ExternalProcessorClient::new(channel)
            .max_decoding_message_size(settings.max_message_bytes)
            .max_encoding_message_size(settings.max_message_bytes);
        Ok(PickerClient { grpc, settings })
    }

    /// A client of the picker at `addr`.
    pub fn for_addr(addr: SocketAddr, settings: ClientSettings) -> Self {
        // A socket address always makes a valid http:// URI.
        match Self::new(&addr.to_string(), settings) {
            Ok(client) => client,
            Err(error) => unreachable!("socket address {addr} is not a valid URI: {error}"),
        }
    }

    /// The settings this client was made with.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Asks the picker where `request` goes; bounded by [`ClientSettings::deadline`].
    ///
    /// Sends `request_headers` and then the body in chunks without waiting for answers, reads the
    /// `request_headers` answer and then the body answers up to `end_of_stream`.
    pub async fn pick(&self, request: PickRequest) -> Result<Picked, PickError> {
        let deadline = self.settings.deadline;
        match tokio::time::timeout(deadline, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(PickError::Timeout {
                phase: "the request",
                deadline,
            }),
        }
    }

    async fn exchange(&self, request: PickRequest) -> Result<Picked, PickError> {
        let PickRequest {
            headers,
            body,
            subset,
        } = request;
        let body_expected = !body.is_empty();
        let metadata = subset.as_deref().map(wire::subset_metadata);
        let mut grpc = self.grpc.clone();
        let mut retried = false;
        let (later, mut inbound) = loop {
            let (later, later_rx) = mpsc::channel(1);
            let outbound =
                futures::stream::iter(request_messages(&headers, body.clone(), metadata.clone()))
                    .chain(ReceiverStream::new(later_rx));
            match grpc.process(outbound).await {
                Ok(response) => break (later, response.into_inner()),
                // The connection failed before any answer (a stale pooled connection to a picker
                // that restarted): the picker answered nothing, so one more try on a fresh
                // connection, within the same deadline, is safe.
                Err(status) if connection_failure(&status) && !retried => {
                    tracing::debug!(%status, "endpoint-picker connection failed before any answer; retrying once");
                    retried = true;
                }
                Err(status) => return Err(call_error(status)),
            }
        };

        let first = next(&mut inbound, "the request_headers answer").await?;
        let head = match answer::first_answer(first, &headers)? {
            FirstAnswer::Head(head) => head,
            FirstAnswer::Reject(reject) => return Ok(Picked::Reject(reject)),
        };
        let mut returned = BytesMut::new();
        if body_expected {
            loop {
                let message = next(&mut inbound, "the request body answers").await?;
                match answer::body_answer(message, &mut returned)? {
                    BodyStep::More => {}
                    BodyStep::Done => break,
                    BodyStep::Reject(reject) => return Ok(Picked::Reject(reject)),
                }
            }
        }
        Ok(Picked::Route(Route {
            destinations: head.destinations,
            set_headers: head.changes.set_headers,
            pseudo_headers: head.changes.pseudo_headers,
            remove_headers: head.changes.remove_headers,
            body: returned.freeze(),
            served: ServedReport {
                later,
                inbound: Box::new(inbound),
                deadline: self.settings.deadline,
            },
        }))
    }
}

/// The open stream after a [`Route`], for reporting which endpoint served the request.
///
/// Dropping it without calling [`ServedReport::served`] cancels the stream (an HTTP/2 reset); no task
/// is left behind.
pub struct ServedReport {
    later: mpsc::Sender<ProcessingRequest>,
    inbound: Box<Streaming<ProcessingResponse>>,
    deadline: Duration,
}

impl std::fmt::Debug for ServedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedReport")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl ServedReport {
    /// Reports the response: sends `response_headers` (`:status` and `headers`, with `envoy.lb` /
    /// `x-gateway-destination-endpoint-served` = `served` in the metadata), reads the answer,
    /// half-closes the stream and waits for the picker to end it. Bounded by the client's deadline.
    ///
    /// Returns the response header changes the picker asked for (echoes dropped, as for requests).
    /// No response body is sent to the picker.
    pub async fn served(
        self,
        served: SocketAddr,
        status: u16,
        headers: &[(String, Bytes)],
    ) -> Result<HeaderChanges, PickError> {
        let deadline = self.deadline;
        match tokio::time::timeout(deadline, self.finish(served, status, headers)).await {
            Ok(result) => result,
            Err(_) => Err(PickError::Timeout {
                phase: "the served report",
                deadline,
            }),
        }
    }

    async fn finish(
        self,
        served: SocketAddr,
        status: u16,
        headers: &[(String, Bytes)],
    ) -> Result<HeaderChanges, PickError> {
        let ServedReport {
            later, mut inbound, ..
        } = self;
        let mut sent = Vec::with_capacity(headers.len() + 1);
        sent.push((":status".to_owned(), Bytes::from(status.to_string())));
        sent.extend(headers.iter().cloned());
        let message = ProcessingRequest {
            metadata_context: Some(wire::served_metadata(served)),
            request: Some(Request::ResponseHeaders(HttpHeaders {
                headers: Some(wire::header_map(&sent)),
                end_of_stream: false,
                ..Default::default()
            })),
            ..Default::default()
        };
        if later.send(message).await.is_err() {
            // The request stream is gone: the picker ended the call. Report how it ended.
            return match inbound.message().await {
                Ok(Some(extra)) => Err(PickError::Protocol(format!(
                    "{} after the request body answers",
                    answer::kind(&extra)
                ))),
                Ok(None) => Err(PickError::StreamEnded {
                    missing: "the response_headers answer",
                }),
                Err(status) => Err(status_error(status)),
            };
        }
        let answer = next(&mut inbound, "the response_headers answer").await?;
        let changes = answer::response_headers_answer(answer, &sent)?;
        drop(later); // half-close: nothing more from the proxy
        match inbound.message().await {
            Ok(None) => Ok(changes),
            Ok(Some(extra)) => Err(PickError::Protocol(format!(
                "{} after the response_headers answer and the half-close",
                answer::kind(&extra)
            ))),
            Err(status) => Err(status_error(status)),
        }
    }
}

/// The request-direction messages: `request_headers` (with the protocol configuration and
/// `end_of_stream` when there is no body), then the body in chunks of at most 64 KiB with
/// `end_of_stream` on the last. Every message carries the subset hint when there is one, as the
/// Inference Extension's EPP reads the hint from the message that completes the request.
fn request_messages(
    headers: &[(String, Bytes)],
    body: Bytes,
    metadata: Option<Metadata>,
) -> impl Iterator<Item = ProcessingRequest> + Send + 'static {
    let has_body = !body.is_empty();
    let first = ProcessingRequest {
        metadata_context: metadata.clone(),
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: BodySendMode::FullDuplexStreamed as i32,
            response_body_mode: BodySendMode::None as i32,
            send_body_without_waiting_for_header_response: true,
        }),
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(wire::header_map(headers)),
            end_of_stream: !has_body,
            ..Default::default()
        })),
        ..Default::default()
    };
    let chunks = body.len().div_ceil(wire::CLIENT_CHUNK_BYTES);
    let chunk_messages = (0..chunks).map(move |i| {
        let start = i * wire::CLIENT_CHUNK_BYTES;
        let end = (start + wire::CLIENT_CHUNK_BYTES).min(body.len());
        ProcessingRequest {
            metadata_context: metadata.clone(),
            request: Some(Request::RequestBody(HttpBody {
                body: body[start..end].to_vec(),
                end_of_stream: i + 1 == chunks,
                ..Default::default()
            })),
            ..Default::default()
        }
    });
    std::iter::once(first).chain(chunk_messages)
}

/// The next answer; a clean end of stream is [`PickError::StreamEnded`] naming what was missing.
async fn next(
    inbound: &mut Streaming<ProcessingResponse>,
    missing: &'static str,
) -> Result<ProcessingResponse, PickError> {
    match inbound.message().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(PickError::StreamEnded { missing }),
        Err(status) => Err(status_error(status)),
    }
}

/// Whether a status from opening the call was made here from a connection failure rather than
/// sent by the picker: `Unavailable` (no connection), `Cancelled` (the connection went away before
/// the call was sent; this client cancels nothing itself, a deadline drops the call instead), or
/// any status carrying a transport error.
fn connection_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled
    ) || status
        .source()
        .is_some_and(|source| source.is::<tonic::transport::Error>())
}

/// A status from opening the call: a connection failure is [`PickError::Connect`].
fn call_error(status: tonic::Status) -> PickError {
    if connection_failure(&status) {
        PickError::Connect(status.message().to_owned())
    } else {
        status_error(status)
    }
}

fn status_error(status: tonic::Status) -> PickError {
    PickError::Status {
        code: status.code(),
        message: status.message().to_owned(),
    }
}
