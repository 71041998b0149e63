//! What a client gets when the gateway answers a request itself: [`ClientError`].
//!
//! Each variant fixes the HTTP status, OpenAI's error `type` and `code`, the parameter at fault and
//! a metric label, so no call site pairs a status with a kind by hand. The body is OpenAI's shape,
//! `{"error":{"message","type","param","code"}}`, which the OpenAI SDKs and `vllm bench serve`
//! read. Nothing here does I/O; [`ClientError::header`] and [`ClientError::body`] give what to write.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;

use crate::flow::Refusal;
use crate::openai::BadRequest;

/// An error the gateway answers on its own.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// No listener accepts the request's port and host (404).
    #[error("No listener of this gateway accepts this host and port.")]
    NoListener,
    /// No route of the listener matches (404).
    #[error("No route matches {method} {path}.")]
    NoRoute {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The matching rule's backends all have weight 0 (500, as the Gateway API requires).
    #[error("The matching route rule has no backend with a weight.")]
    NoBackendWeight,
    /// The drawn backend reference cannot be resolved (500, as the Gateway API requires).
    #[error("The route's backend is invalid: {0}")]
    InvalidBackend(Arc<str>),
    /// A Service backend without ready endpoints (503).
    #[error("Service {service} has no ready endpoints.")]
    NoReadyEndpoints {
        /// The Service, as `namespace/name`.
        service: String,
    },
    /// The request head is over `--max-header-bytes` (431).
    #[error("The request head is {size} bytes; this gateway accepts at most {limit}.")]
    HeadTooLarge {
        /// Size of the head as sent.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The request body is over `--max-body-bytes` (413).
    #[error("The request body is {size} bytes; this gateway accepts at most {limit} bytes.")]
    BodyTooLarge {
        /// Declared or received size.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The body is not an OpenAI request the gateway can route (400).
    #[error("{0}")]
    InvalidBody(BadRequest),
    /// The pool declares models and this is not one of them (404).
    #[error("The model `{model}` does not exist.")]
    ModelNotFound {
        /// The requested model.
        model: String,
    },
    /// A request refused to protect a saturated pool (429).
    #[error("The pool {pool} is saturated{cause}; retry later.")]
    Shed {
        /// The pool, as `namespace/name`.
        pool: String,
        /// Who shed it, and why.
        cause: ShedCause,
    },
    /// The pool's strategy found no endpoint for the request (503; a strategy that sheds gives
    /// [`ClientError::Shed`]).
    #[error("{0}.")]
    NoEndpoint(plugins::NoEndpoint),
    /// There was no endpoint to try (503).
    #[error("No endpoint is available to serve this request.")]
    NoEndpointToTry,
    /// Every endpoint tried refused the connection (502).
    #[error("Could not connect to any of {tried} endpoint(s): {error}")]
    Unreachable {
        /// How many endpoints were tried.
        tried: usize,
        /// The last failure.
        error: String,
    },
    /// The chosen model server failed before its response header (502).
    #[error("{0}")]
    UpstreamFailed(UpstreamFailure),
    /// The request deadline passed before the model server answered (504).
    #[error("The request timed out before the model server answered.")]
    Timeout,
    /// Pingora's proxy loop failed (Service routes); `status` is 400, 500, 502 or 504.
    #[error("The gateway could not complete the request: {cause}")]
    ProxyFailed {
        /// The status derived from Pingora's error.
        status: u16,
        /// Pingora's error type.
        cause: &'static str,
    },
    /// The pool's endpoint picker reference cannot be resolved (500, as the Inference
    /// Extension's conformance tests expect).
    #[error("The endpoint picker of pool {pool} is invalid: {reason}")]
    InvalidPicker {
        /// The pool, as `namespace/name`.
        pool: String,
        /// Why.
        reason: Arc<str>,
    },
    /// The pool's endpoint picker did not answer and its failure mode is `FailClose` (503).
    #[error("The endpoint picker of pool {pool} is unavailable: {error}")]
    PickerUnavailable {
        /// The pool, as `namespace/name`.
        pool: String,
        /// What went wrong.
        error: String,
    },
    /// The connection cap is reached (503).
    #[error("The gateway has its limit of {cap} client connections open; retry shortly.")]
    TooManyConnections {
        /// `--max-connections`.
        cap: usize,
    },
    /// The pool's flow-control queue did not give the request a turn (429; 503 when the pool
    /// was removed while it waited).
    #[error("The pool {pool} is saturated and {}; retry later.", queue_refusal_text(*refusal))]
    Queue {
        /// The pool, as `namespace/name`.
        pool: String,
        /// Why.
        refusal: Refusal,
    },
}

fn queue_refusal_text(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Rejected(flowcontrol::Rejection::QueueFull) => "its queue is full",
        Refusal::Rejected(flowcontrol::Rejection::BandFull) => {
            "its queue holds as many requests of this priority as it may"
        }
        Refusal::Displaced => "a request of higher priority took this one's place in its queue",
        Refusal::Expired => "this request's time to wait in its queue ran out",
        Refusal::PoolGone => "it was removed from the configuration while this request waited",
    }
}

/// Who shed a request, and why.
#[derive(Debug, Clone, PartialEq)]
pub enum ShedCause {
    /// The gateway: the model is sheddable and the pool's saturation is at least 1.
    Saturation(f64),
    /// The pool's strategy, with its reason.
    Strategy(String),
}

impl fmt::Display for ShedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShedCause::Saturation(saturation) => write!(
                f,
                " (saturation {saturation:.2}) and this model is sheddable"
            ),
            ShedCause::Strategy(reason) => write!(f, ": {reason}"),
        }
    }
}

/// How a chosen model server failed before a response header reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The connection closed while the request was written.
    ClosedWhileSending,
    /// The connection closed before a response header.
    ClosedWithoutResponse,
    /// The exchange ended without a response header.
    NoResponseHeader,
}

impl fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamFailure::ClosedWhileSending => {
                "The model server closed the connection while the request was sent."
            }
            UpstreamFailure::ClosedWithoutResponse => {
                "The model server closed the connection without a response."
            }
            UpstreamFailure::NoResponseHeader => "The model server sent no response header.",
        })
    }
}

impl ClientError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ClientError::InvalidBody(_) => 400,
            ClientError::NoListener | ClientError::NoRoute { .. } => 404,
            ClientError::ModelNotFound { .. } => 404,
            ClientError::BodyTooLarge { .. } => 413,
            ClientError::Shed { .. } => 429,
            ClientError::Queue {
                refusal: Refusal::PoolGone,
                ..
            } => 503,
            ClientError::Queue { .. } => 429,
            ClientError::HeadTooLarge { .. } => 431,
            ClientError::NoBackendWeight
            | ClientError::InvalidBackend(_)
            | ClientError::InvalidPicker { .. } => 500,
            ClientError::Unreachable { .. } | ClientError::UpstreamFailed(_) => 502,
            ClientError::NoReadyEndpoints { .. }
            | ClientError::NoEndpointToTry
            | ClientError::PickerUnavailable { .. }
            | ClientError::TooManyConnections { .. } => 503,
            ClientError::NoEndpoint(reason) => reason.status(),
            ClientError::Timeout => 504,
            ClientError::ProxyFailed { status, .. } => *status,
        }
    }

    /// OpenAI's error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::NoListener | ClientError::NoRoute { .. } => "not_found_error",
            ClientError::InvalidBody(_)
            | ClientError::ModelNotFound { .. }
            | ClientError::BodyTooLarge { .. }
            | ClientError::HeadTooLarge { .. } => "invalid_request_error",
            ClientError::Shed { .. } => "rate_limit_error",
            ClientError::Queue {
                refusal: Refusal::PoolGone,
                ..
            } => "service_unavailable",
            ClientError::Queue { .. } => "rate_limit_error",
            ClientError::NoBackendWeight
            | ClientError::InvalidBackend(_)
            | ClientError::InvalidPicker { .. } => "server_error",
            ClientError::NoReadyEndpoints { .. }
            | ClientError::PickerUnavailable { .. }
            | ClientError::NoEndpoint(_)
            | ClientError::NoEndpointToTry
            | ClientError::TooManyConnections { .. } => "service_unavailable",
            ClientError::Unreachable { .. } | ClientError::UpstreamFailed(_) => "upstream_error",
            ClientError::Timeout => "timeout_error",
            ClientError::ProxyFailed { status: 504, .. } => "timeout_error",
            ClientError::ProxyFailed { .. } => "upstream_error",
        }
    }

    /// OpenAI's machine-readable `code`, where one applies.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ClientError::ModelNotFound { .. } => Some("model_not_found"),
            ClientError::BodyTooLarge { .. } => Some("request_too_large"),
            _ => None,
        }
    }

    /// The request parameter at fault.
    pub fn param(&self) -> Option<&str> {
        match self {
            ClientError::InvalidBody(bad) => bad.param.as_deref(),
            ClientError::ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    /// A short, fixed label for metrics (`gateway_errors_total{reason}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            ClientError::NoListener => "no_listener",
            ClientError::NoRoute { .. } => "no_route",
            ClientError::NoBackendWeight => "no_backend_weight",
            ClientError::InvalidBackend(_) => "invalid_backend",
            ClientError::NoReadyEndpoints { .. } => "no_ready_endpoints",
            ClientError::HeadTooLarge { .. } => "head_too_large",
            ClientError::BodyTooLarge { .. } => "body_too_large",
            ClientError::InvalidBody(_) => "invalid_body",
            ClientError::ModelNotFound { .. } => "model_not_found",
            ClientError::Shed { .. } => "shed",
            ClientError::NoEndpoint(_) => "no_endpoint",
            ClientError::NoEndpointToTry => "no_endpoint",
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::UpstreamFailed(_) => "upstream_failed",
            ClientError::Timeout => "timeout",
            ClientError::ProxyFailed { .. } => "proxy_failed",
            ClientError::TooManyConnections { .. } => "too_many_connections",
            ClientError::InvalidPicker { .. } => "invalid_picker",
            ClientError::PickerUnavailable { .. } => "picker_unavailable",
            ClientError::Queue { .. } => "queue",
        }
    }

    /// Why the gateway dropped the request, for [`crate::headers::DROPPED_REASON`]: on every 429
    /// and 503 it answers itself (llm-d's values), `None` otherwise.
    pub fn dropped_reason(&self) -> Option<&'static str> {
        match self {
            ClientError::Shed { .. }
            | ClientError::NoEndpoint(plugins::NoEndpoint::Shed(_))
            | ClientError::TooManyConnections { .. } => Some("rejected-saturated"),
            ClientError::NoReadyEndpoints { .. }
            | ClientError::NoEndpointToTry
            | ClientError::PickerUnavailable { .. }
            | ClientError::NoEndpoint(_) => Some("rejected-no-endpoints"),
            ClientError::Queue { refusal, .. } => Some(refusal.reason()),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        Bytes::from(body.to_string())
    }

    /// The response header for a body of `len` bytes.
    pub fn header(&self, len: usize) -> pingora::Result<ResponseHeader> {
        let mut header = ResponseHeader::build(self.status(), Some(3))?;
        header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        header.insert_header(http::header::CONTENT_LENGTH, len)?;
        if let Some(reason) = self.dropped_reason() {
            header.insert_header(crate::headers::DROPPED_REASON, reason)?;
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(error: &ClientError) -> serde_json::Value {
        serde_json::from_slice(&error.body()).unwrap()
    }

    #[test]
    fn bodies_have_openai_shape() {
        let error = ClientError::ModelNotFound { model: "x".into() };
        assert_eq!(error.status(), 404);
        assert_eq!(
            json(&error),
            serde_json::json!({"error": {"message": "The model `x` does not exist.",
                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
        );
        let error = ClientError::BodyTooLarge {
            size: 20,
            limit: 10,
        };
        assert_eq!(
            json(&error),
            serde_json::json!({"error": {
                "message": "The request body is 20 bytes; this gateway accepts at most 10 bytes.",
                "type": "invalid_request_error", "param": null, "code": "request_too_large"}})
        );
        assert_eq!(error.status(), 413);
    }

    #[test]
    fn statuses_and_kinds_pair_up() {
        let bad = crate::openai::parse(br#"{"model":7}"#).unwrap_err();
        let cases = [
            (ClientError::NoListener, 404, "not_found_error"),
            (ClientError::InvalidBody(bad), 400, "invalid_request_error"),
            (
                ClientError::HeadTooLarge { size: 9, limit: 8 },
                431,
                "invalid_request_error",
            ),
            (ClientError::NoBackendWeight, 500, "server_error"),
            (
                ClientError::Shed {
                    pool: "p".into(),
                    cause: ShedCause::Saturation(1.25),
                },
                429,
                "rate_limit_error",
            ),
            (
                ClientError::NoEndpoint(plugins::NoEndpoint::NoneReady),
                503,
                "service_unavailable",
            ),
            (
                ClientError::UpstreamFailed(UpstreamFailure::NoResponseHeader),
                502,
                "upstream_error",
            ),
            (ClientError::Timeout, 504, "timeout_error"),
            (
                ClientError::ProxyFailed {
                    status: 504,
                    cause: "ReadTimedout",
                },
                504,
                "timeout_error",
            ),
            (
                ClientError::TooManyConnections { cap: 2 },
                503,
                "service_unavailable",
            ),
        ];
        for (error, status, kind) in cases {
            assert_eq!((error.status(), error.kind()), (status, kind), "{error:?}");
            assert_eq!(json(&error)["error"]["type"], kind);
            let header = error.header(0).unwrap();
            let dropped = header.headers.get(crate::headers::DROPPED_REASON);
            assert_eq!(
                dropped.is_some(),
                status == 429 || status == 503,
                "every 429 and 503 of the gateway says why it dropped the request: {error:?}"
            );
        }
        let reason = |error: ClientError| error.dropped_reason().unwrap();
        assert_eq!(
            reason(ClientError::NoEndpoint(plugins::NoEndpoint::Shed(
                "q".into()
            ))),
            "rejected-saturated"
        );
        assert_eq!(
            reason(ClientError::NoEndpoint(plugins::NoEndpoint::NoneReady)),
            "rejected-no-endpoints"
        );
        assert_eq!(
            reason(ClientError::NoReadyEndpoints {
                service: "ns/s".into()
            }),
            "rejected-no-endpoints"
        );
        let bad = crate::openai::parse(br#"{"model":7}"#).unwrap_err();
        assert_eq!(ClientError::InvalidBody(bad).param(), Some("model"));
        let gateway = ClientError::Shed {
            pool: "ns/p".into(),
            cause: ShedCause::Saturation(1.25),
        };
        assert_eq!(
            gateway.to_string(),
            "The pool ns/p is saturated (saturation 1.25) and this model is sheddable; retry later."
        );
        let strategy = ClientError::Shed {
            pool: "ns/p".into(),
            cause: ShedCause::Strategy("queue over 50".into()),
        };
        assert_eq!(
            strategy.to_string(),
            "The pool ns/p is saturated: queue over 50; retry later."
        );
    }
}
