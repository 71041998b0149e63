//! The Gateway API Inference Extension's endpoint-picker (EPP) protocol, both ways: a
//! [`client`] through which the gateway asks an external EPP where a request goes (the gateway
//! playing Envoy), and a [`server`] that serves the gateway's own routing as an EPP to Envoy or
//! any other proxy. It is a library only: wiring it into the proxy lives elsewhere, and this crate
//! must not depend on the gateway's own types (no pingora, no Kubernetes).
//!
//! # The protocol as implemented
//!
//! One bidirectional `envoy.service.ext_proc.v3.ExternalProcessor/Process` gRPC stream per HTTP
//! request (plain HTTP/2, no TLS), request body in `FULL_DUPLEX_STREAMED` mode:
//!
//! 1. The proxy sends `request_headers`: always a `HeaderMap`, names lower-cased, values in
//!    `raw_value`, pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) included, and
//!    `end_of_stream` when there is no body. Then the body as `request_body` chunks of at most
//!    64 KiB, `end_of_stream` on the last, without waiting for answers. With a subset hint, every
//!    request-direction message carries it in `metadata_context.filter_metadata`:
//!    `envoy.lb.subset_hint` / `x-gateway-destination-endpoint-subset`, a list of `ip:port` strings
//!    (the Inference Extension's EPP reads it from the message that completes the request).
//! 2. The picker answers nothing until the whole body has arrived. Then the `request_headers`
//!    answer: `clear_route_cache`, `set_headers` with `x-gateway-destination-endpoint:
//!    ip:port[,ip:port...]` (primary first, then the fallback list; IPv6 as `[addr]:port`) and any
//!    other changes, and `dynamic_metadata` `{"envoy.lb": {"x-gateway-destination-endpoint": same}}`.
//!    Then the body, possibly rewritten, as `streamed_response` chunks (this crate's server sends at
//!    most 62,000 bytes each), `end_of_stream` on the last.
//! 3. Or, at any point, an `ImmediateResponse` (status, headers, body, details), after which the
//!    stream ends: the request is refused.
//! 4. After the upstream answered, the proxy sends `response_headers` with
//!    `metadata_context.filter_metadata["envoy.lb"]["x-gateway-destination-endpoint-served"] =
//!    "ip:port"`; the picker answers it (header changes apply to the response) and, when a proxy
//!    streams the response body, answers each chunk. The proxy then half-closes and the picker
//!    ends the stream.
//!
//! # What the client does
//!
//! [`client::PickerClient::pick`] runs steps 1 to 3 under one deadline
//! ([`client::ClientSettings::deadline`]); a picker too slow is [`PickError::Timeout`], no connection
//! [`PickError::Connect`], a gRPC error [`PickError::Status`], a stream ended early
//! [`PickError::StreamEnded`], answers out of order or malformed [`PickError::Protocol`] and a
//! destination that is not `ip:port` [`PickError::Destination`]. All requests share one lazily made
//! HTTP/2 connection; a call that fails on the connection before any answer arrived (a stale
//! connection to a picker that restarted) is tried once more on a fresh one, within the deadline. It accepts the destination from the
//! header or the metadata (also the metadata's single `x-gateway-destination-endpoint-fallback`
//! entry); when both are present and differ, **the header wins**, as in Envoy's dynamic-forwarding
//! load balancer, and a warning is logged. Body answers may be `streamed_response` chunks, a whole
//! `body` replacement or `clear_body`.
//!
//! The answer is a [`client::Route`]: destinations, the headers to set and remove on the upstream
//! request (echoes of what was sent, the destination header, `content-length` and hop-by-hop
//! headers left out; changed pseudo-headers listed apart), the body to send, and the open stream as a
//! [`client::ServedReport`]. [`client::ServedReport::served`] runs step 4 with its own deadline. The
//! client never sends a response body to the picker (Envoy's `response_body_mode: NONE`), nor
//! trailers; dropping the report cancels the stream.
//!
//! # What the server does
//!
//! [`server::EppServer`] collects a request (at most [`server::ServerSettings::max_body_bytes`],
//! else 413), asks the [`server::Picker`], answers as in step 2 (adding `content-length` when the
//! picker replaced the body) or 3, answers `response_headers` without changes, echoes response body
//! chunks unchanged, hands the served endpoint to [`server::Picker::served`], and ends the stream
//! when the proxy half-closes. A stream out of order ends with gRPC `InvalidArgument` naming what
//! arrived. gRPC health (`grpc.health.v1`) reports SERVING for `""`, `liveness`, `readiness` and
//! `envoy.service.ext_proc.v3.ExternalProcessor` on the ext_proc port and on an optional separate
//! health port (conventionally 9003, ext_proc 9002), and NOT_SERVING once shutdown begins.

pub mod client;
pub mod error;
pub mod server;
pub mod wire;

pub use client::{
    ClientSettings, HeaderChanges, Immediate, PickRequest, Picked, PickerClient, Route,
    ServedReport,
};
pub use error::{PickError, ServeError};
pub use server::{
    EppServer, Held, Picker, PickerAnswer, PickerRequest, Rejection, ServedRecord, ServerSettings,
    serve,
};
