//! The [`Strategy`] trait and the types that cross it.
//!
//! # Contract
//!
//! - [`Strategy::pick`] is synchronous, does no I/O and does not block. It runs on the proxy's
//!   worker threads for every inference request, concurrently with itself: state it keeps must be
//!   behind atomics or short, sharded locks.
//! - The [`PoolView`] holds only eligible endpoints; return indexes into `pool.endpoints`, best
//!   first. The gateway dials the first and moves to the next only when a connection fails, so
//!   listing every endpoint is cheap insurance, not a cost.
//! - Hooks ([`Strategy::on_dispatched`], [`Strategy::on_completed`],
//!   [`Strategy::on_endpoints_changed`]) run on the request path too and have the same rules. Every
//!   dispatched request is completed exactly once, whatever happened to it.
//! - State must be bounded in memory, and must forget endpoints that leave the pool.

use std::time::Duration;

use crate::endpoint::{EndpointId, EndpointView, PoolView};
use crate::request::RequestView;

/// The request parts a strategy reads, so the gateway parses the body only as far as needed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The prompt as stable text ([`RequestView::prompt`]).
    pub prompt: bool,
}

impl Inputs {
    /// Nothing beyond model names, criticality and sizes.
    pub const NONE: Inputs = Inputs { prompt: false };
    /// Everything, including the prompt text.
    pub const PROMPT: Inputs = Inputs { prompt: true };
}

/// Endpoints in preference order, as indexes into [`PoolView::endpoints`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates(Vec<usize>);

impl Candidates {
    /// Candidates in the given order. Duplicates are removed, keeping the first occurrence.
    pub fn new(mut order: Vec<usize>) -> Self {
        let mut seen = vec![false; order.iter().max().map_or(0, |&m| m + 1)];
        order.retain(|&i| !std::mem::replace(&mut seen[i], true));
        Candidates(order)
    }

    /// Every endpoint of a pool of `len`, starting at `first` and wrapping around.
    pub fn rotation(first: usize, len: usize) -> Self {
        Candidates((0..len).map(|k| (first + k) % len).collect())
    }

    /// The indexes, best first.
    pub fn as_slice(&self) -> &[usize] {
        &self.0
    }

    /// The best candidate, if any.
    pub fn first(&self) -> Option<usize> {
        self.0.first().copied()
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no candidate.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for Candidates {
    type Item = usize;
    type IntoIter = std::vec::IntoIter<usize>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Why a strategy returned no endpoint. The gateway maps it to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoEndpoint {
    /// The pool has no eligible endpoint (503).
    #[error("no ready endpoint in the pool")]
    NoneReady,
    /// The strategy's filters left nothing (503).
    #[error("no endpoint can serve this request: {0}")]
    Filtered(String),
    /// The request was shed because the pool is saturated (429).
    #[error("the pool is saturated: {0}")]
    Shed(String),
}

impl NoEndpoint {
    /// The HTTP status the gateway answers with.
    pub fn status(&self) -> u16 {
        match self {
            NoEndpoint::NoneReady | NoEndpoint::Filtered(_) => 503,
            NoEndpoint::Shed(_) => 429,
        }
    }
}

/// How a dispatched request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered and the response was delivered (any status).
    Completed,
    /// The connection or the stream failed on the endpoint's side.
    Failed,
    /// The client went away before the response was complete.
    Aborted,
}

/// A finished request, as reported to [`Strategy::on_completed`].
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The endpoint that served (or failed) the request.
    pub endpoint: &'a EndpointId,
    /// The model the request was sent with.
    pub target_model: &'a str,
    /// How it ended.
    pub outcome: Outcome,
    /// HTTP status from the endpoint, if a response header arrived.
    pub status: Option<u16>,
    /// Time to the first response body byte.
    pub time_to_first_byte: Option<Duration>,
    /// Time from dispatch to the end.
    pub duration: Duration,
    /// Prompt tokens, from the response's `usage` when present, else the gateway's estimate.
    pub prompt_tokens: u32,
    /// Completion tokens from the response's `usage`, when present.
    pub completion_tokens: Option<u32>,
}

/// Error of a strategy's configuration: which parameter, its value and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {parameter:?} = {value:?}: {reason}")]
pub struct ConfigError {
    /// The parameter name (without the annotation prefix).
    pub parameter: String,
    /// The offending value.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

impl ConfigError {
    /// Build an error.
    pub fn new(
        parameter: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            parameter: parameter.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// A routing strategy: given a request and the pool's eligible endpoints, rank the endpoints.
pub trait Strategy: Send + Sync + 'static {
    /// The name it is registered under (for example `ROUND_ROBIN`).
    fn name(&self) -> &str;

    /// The request parts it reads. The default asks for nothing beyond names and sizes.
    fn inputs(&self) -> Inputs {
        Inputs::NONE
    }

    /// Rank the pool's endpoints for this request, best first, or say why none fits.
    fn pick(
        &self,
        request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint>;

    /// The gateway sent `request` to `endpoint` (called once per attempt, before any byte is sent),
    /// with the endpoint's view as the pick saw it.
    fn on_dispatched(&self, _request: &RequestView<'_>, _endpoint: &EndpointView<'_>) {}

    /// A dispatched request ended.
    fn on_completed(&self, _completion: &Completion<'_>) {}

    /// The pool's endpoint set changed; `endpoints` is the new set, sorted by address.
    fn on_endpoints_changed(&self, _endpoints: &[EndpointId]) {}

    /// State for the gateway's `/debug/snapshot` (sizes of indexes, counters). Keep it small.
    fn debug_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_drop_duplicates_and_keep_order() {
        let c = Candidates::new(vec![3, 1, 3, 200, 1, 0, 200]);
        assert_eq!(c.as_slice(), &[3, 1, 200, 0]);
        assert_eq!(c.first(), Some(3));
    }

    #[test]
    fn rotation_wraps() {
        assert_eq!(Candidates::rotation(2, 4).as_slice(), &[2, 3, 0, 1]);
        assert!(Candidates::rotation(0, 0).is_empty());
    }

    #[test]
    fn statuses() {
        assert_eq!(NoEndpoint::NoneReady.status(), 503);
        assert_eq!(NoEndpoint::Filtered("x".into()).status(), 503);
        assert_eq!(NoEndpoint::Shed("x".into()).status(), 429);
    }
}
