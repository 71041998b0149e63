//! The crate's error types: what can go wrong when the gateway asks an endpoint picker
//! ([`PickError`]) and when it serves one ([`ServeError`]).
//!
//! Each variant says which side or which step failed, so that the gateway can tell a picker that is
//! down from one that is slow or one that speaks the protocol wrongly, and count them apart with
//! [`PickError::metric_label`]. This module only describes failures: it must not log, retry or
//! decide what the proxy answers its own client.

use std::time::Duration;

/// Why [`crate::client::PickerClient::pick`] or [`crate::client::ServedReport::served`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PickError {
    /// The target could not be parsed into a gRPC endpoint.
    #[error("bad endpoint-picker target {target:?}: {reason}")]
    Target {
        /// The target as given.
        target: String,
        /// What was wrong with it.
        reason: String,
    },
    /// No connection to the picker could be made (refused, unreachable, connect timeout).
    #[error("cannot connect to the endpoint picker: {0}")]
    Connect(String),
    /// The picker did not finish its part within the deadline.
    #[error("the endpoint picker did not answer {phase} within {deadline:?}")]
    Timeout {
        /// Which exchange timed out: `"the request"` or `"the served report"`.
        phase: &'static str,
        /// The deadline that ran out.
        deadline: Duration,
    },
    /// The picker ended the stream with a gRPC error status.
    #[error("the endpoint picker failed the stream: gRPC {code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The picker ended the stream cleanly before it had answered everything it must answer.
    #[error("the endpoint picker ended the stream before {missing}")]
    StreamEnded {
        /// What was still missing, e.g. `"the request_headers answer"`.
        missing: &'static str,
    },
    /// An answer out of order or malformed; the text names what was wrong.
    #[error("endpoint-picker protocol violation: {0}")]
    Protocol(String),
    /// A destination entry that is not `ip:port` (IPv6 as `[addr]:port`), or no entry at all.
    #[error("the endpoint picker chose an unparsable destination {entry:?} (in {value:?})")]
    Destination {
        /// The entry that did not parse (empty when the value held no entry).
        entry: String,
        /// The whole destination value as sent.
        value: String,
    },
}

impl PickError {
    /// A short, stable label for metrics (one per variant).
    pub fn metric_label(&self) -> &'static str {
        match self {
            PickError::Target { .. } => "bad_target",
            PickError::Connect(_) => "connect",
            PickError::Timeout { .. } => "timeout",
            PickError::Status { .. } => "grpc_status",
            PickError::StreamEnded { .. } => "stream_ended",
            PickError::Protocol(_) => "protocol",
            PickError::Destination { .. } => "bad_destination",
        }
    }
}

/// Why [`crate::server::EppServer::serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener's local address could not be read.
    #[error("cannot read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("the ext_proc gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ServeError {
    /// A short, stable label for metrics (one per variant).
    pub fn metric_label(&self) -> &'static str {
        match self {
            ServeError::Listener(_) => "listener",
            ServeError::Transport(_) => "transport",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pick_error_has_its_own_label() {
        let errors = [
            PickError::Target {
                target: "x".into(),
                reason: "y".into(),
            },
            PickError::Connect("refused".into()),
            PickError::Timeout {
                phase: "the request",
                deadline: Duration::from_millis(5),
            },
            PickError::Status {
                code: tonic::Code::Unknown,
                message: "boom".into(),
            },
            PickError::StreamEnded {
                missing: "the request_headers answer",
            },
            PickError::Protocol("odd".into()),
            PickError::Destination {
                entry: "nope".into(),
                value: "nope".into(),
            },
        ];
        let mut labels: Vec<_> = errors.iter().map(PickError::metric_label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), errors.len());
    }
}
