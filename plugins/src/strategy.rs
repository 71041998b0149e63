//! The [`Strategy`] trait and the types that cross it.
//!
//! # Contract
//!
//! - [`Strategy::pick`] is synchronous, does no I/O and does not block. It runs on the proxy's
//!   worker threads for every inference request, concurrently with itself: state it keeps must be
//!   behind atomics or short, sharded locks.
//! - The [`PoolView`] holds only eligible endpoints; return indexes into `pool.endpoints`, best
//!   first. The gateway dials the first and moves to the next only when a connection fails, so
//!   listing every endpoint is cheap insurance, not a cost. Indexes outside the pool and repeats
//!   are dropped by the gateway ([`Candidates::resolve`]); the ones outside are counted as a
//!   strategy bug, never a crash.
//! - Hooks ([`Strategy::on_dispatched`], [`Strategy::on_completed`],
//!   [`Strategy::on_endpoints_changed`]) run on the request path too and have the same rules. Every
//!   dispatched request is completed exactly once, whatever happened to it.
//! - State must be bounded in memory, and must forget endpoints that leave the pool.

use std::time::Duration;

use crate::endpoint::{EndpointId, EndpointView, PoolView};
use crate::load::LoadConfig;
use crate::request::RequestView;

/// The request parts a strategy reads, so the gateway parses the body only as far as needed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The prompt as stable text ([`RequestView::prompt`]).
    pub prompt: bool,
}

impl Inputs {
    /// Nothing beyond model names, priority and sizes.
    pub const NONE: Inputs = Inputs { prompt: false };
    /// Everything, including the prompt text.
    pub const PROMPT: Inputs = Inputs { prompt: true };
}

/// Endpoints in preference order, as indexes into [`PoolView::endpoints`], and optionally the
/// prefill each endpoint would do for the request.
///
/// A strategy builds them freely: construction does no checking, so it costs nothing on the pick
/// path. The gateway turns them into endpoints with [`Candidates::resolve`], which drops indexes
/// outside the pool and repeated ones; whatever a strategy returns, the gateway neither panics nor
/// allocates beyond the pool's size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    order: Vec<usize>,
    prefill_tokens: Option<Vec<u32>>,
}

/// [`Candidates`] checked against a pool: what the gateway dials, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Indexes into the pool, best first: each below the pool's size, each once, in the order of
    /// their first occurrence in the candidates. Never longer than the pool.
    pub order: Vec<usize>,
    /// Candidates that were outside the pool (every occurrence counts): a strategy bug the gateway
    /// exports as `gateway_strategy_invalid_candidates_total`. Repeats of valid indexes are
    /// dropped without counting.
    pub dropped: usize,
    /// The strategy's prefill estimate per pool index ([`Candidates::with_prefill_tokens`]), as
    /// given, when it gave one. The gateway counts an index's figure, at most the prompt's
    /// estimated size, and the whole prompt for an index without one.
    pub prefill_tokens: Option<Vec<u32>>,
}

impl Candidates {
    /// Candidates in the given order, as given (see [`Candidates::resolve`] for what the gateway
    /// keeps).
    pub fn new(order: Vec<usize>) -> Self {
        Candidates {
            order,
            prefill_tokens: None,
        }
    }

    /// Every endpoint of a pool of `len`, starting at `first` and wrapping around.
    pub fn rotation(first: usize, len: usize) -> Self {
        Self::new((0..len).map(|k| (first + k) % len).collect())
    }

    /// The same candidates with the strategy's estimate of the prompt tokens each endpoint would
    /// have to prefill (the prompt minus what it has cached), indexed like
    /// [`PoolView::endpoints`]. The gateway counts the chosen endpoint's figure as in-flight
    /// prefill work ([`crate::EndpointView::in_flight_prefill_tokens`]) until the first token
    /// arrives; without an estimate it counts the whole prompt. Figures above the prompt's size
    /// count as the prompt's size.
    pub fn with_prefill_tokens(mut self, per_endpoint: Vec<u32>) -> Self {
        self.prefill_tokens = Some(per_endpoint);
        self
    }

    /// The indexes, best first, as the strategy returned them.
    pub fn as_slice(&self) -> &[usize] {
        &self.order
    }

    /// The prefill estimate per pool index, when the strategy gave one.
    pub fn prefill_tokens(&self) -> Option<&[u32]> {
        self.prefill_tokens.as_deref()
    }

    /// The best candidate, if any.
    pub fn first(&self) -> Option<usize> {
        self.order.first().copied()
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there is no candidate.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Check the candidates against a pool of `pool_len` endpoints: keep each index below
    /// `pool_len` at its first occurrence, drop repeats, and count what was out of range. Works in
    /// place with one `pool_len`-sized bitmap, so neither time nor memory depends on the values a
    /// strategy returned.
    pub fn resolve(self, pool_len: usize) -> Resolved {
        let mut order = self.order;
        let mut seen = vec![false; pool_len];
        let mut dropped = 0;
        order.retain(|&index| match seen.get_mut(index) {
            Some(seen) => !std::mem::replace(seen, true),
            None => {
                dropped += 1;
                false
            }
        });
        Resolved {
            order,
            dropped,
            prefill_tokens: self.prefill_tokens,
        }
    }
}

impl IntoIterator for Candidates {
    type Item = usize;
    type IntoIter = std::vec::IntoIter<usize>;

    fn into_iter(self) -> Self::IntoIter {
        self.order.into_iter()
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
    /// Time to the first token of a streamed answer. `None` when the answer was not streamed (its
    /// first byte is its last, so it says nothing about the prefill) or no token arrived.
    pub time_to_first_token: Option<Duration>,
    /// Time from dispatch to the end.
    pub duration: Duration,
    /// Prompt tokens, from the response's `usage` when present, else the gateway's estimate.
    pub prompt_tokens: u32,
    /// Completion tokens from the response's `usage`, when present.
    pub completion_tokens: Option<u32>,
    /// The prompt tokens counted as this request's prefill work at dispatch
    /// ([`Resolved::prefill_tokens`]).
    pub prefill_tokens: u32,
    /// The endpoint's load when the request was dispatched, not counting the request itself.
    pub at_dispatch: DispatchedLoad,
}

/// An endpoint's load as the gateway saw it when it dispatched a request, reported back with the
/// request's [`Completion`] so a strategy can relate what it observed to the load it predicted
/// from ([`crate::cost::CostModel::learn`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchedLoad {
    /// [`EndpointView::in_flight`].
    pub in_flight: u32,
    /// [`EndpointView::in_flight_prefill`].
    pub in_flight_prefill: u32,
    /// [`EndpointView::in_flight_prefill_tokens`].
    pub in_flight_prefill_tokens: u64,
    /// [`EndpointView::prefill_elapsed`].
    pub prefill_elapsed: Duration,
    /// The scraped running batch, when metrics were fresh enough to be read.
    pub running: Option<u32>,
}

impl DispatchedLoad {
    /// The load `view` shows.
    pub fn of(view: &EndpointView<'_>) -> Self {
        Self {
            in_flight: view.in_flight,
            in_flight_prefill: view.in_flight_prefill,
            in_flight_prefill_tokens: view.in_flight_prefill_tokens,
            prefill_elapsed: view.prefill_elapsed,
            running: view.metrics.map(|m| m.running),
        }
    }
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

/// Typed statistics of a strategy, read by the gateway's `/metrics` when it is scraped.
///
/// Every field is optional: a strategy fills in what it has and leaves the rest to
/// [`Default`], so build it as `StrategyStats { indexed_blocks: Some(n), ..Default::default() }`
/// (new fields come with a minor version while the crate is 0.x).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StrategyStats {
    /// Prompt blocks held in a prefix index ([`crate::prefix::PrefixIndex`]), exported as
    /// `inference_extension_prefix_indexer_size{pool}`. `None` for a strategy without one.
    pub indexed_blocks: Option<u64>,
}

/// A routing strategy: given a request and the pool's eligible endpoints, rank the endpoints.
///
/// A strategy has no name of its own: it is known by the name its factory is registered under
/// ([`crate::Registry::register`]), which is what the pool annotation says and what the gateway's
/// metrics and debug output show.
pub trait Strategy: Send + Sync + 'static {
    /// The request parts it reads. The default asks for nothing beyond names and sizes.
    fn inputs(&self) -> Inputs {
        Inputs::NONE
    }

    /// How it judges load: staleness of metrics and saturation thresholds. The gateway uses the
    /// same configuration for its own saturation check (sheddable requests get 429 when the pool
    /// is saturated), so a pool's `stale-after-ms` means one thing everywhere. The default is
    /// [`LoadConfig::default`]; strategies that read load parameters return theirs.
    fn load_config(&self) -> LoadConfig {
        LoadConfig::default()
    }

    /// Rank the pool's endpoints for this request, best first, or say why none fits.
    /// [`NoEndpoint::Shed`] is answered exactly like the gateway's own shedding (429, counted in
    /// `gateway_sheds_total`).
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

    /// Typed statistics for the gateway's metrics. The default reports nothing.
    fn stats(&self) -> StrategyStats {
        StrategyStats::default()
    }

    /// Free-form state for the gateway's `/debug/snapshot` (parameters, sizes of indexes,
    /// counters), for people to read; the gateway never reads values out of it. Keep it small.
    fn debug_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest};

    use super::*;

    #[test]
    fn candidates_drop_duplicates_and_keep_order() {
        let c = Candidates::new(vec![3, 1, 3, 200, 1, 0, 200]);
        assert_eq!(c.first(), Some(3));
        assert_eq!(
            c.clone().resolve(201),
            Resolved {
                order: vec![3, 1, 200, 0],
                dropped: 0,
                prefill_tokens: None,
            }
        );
        assert_eq!(
            c.resolve(4),
            Resolved {
                order: vec![3, 1, 0],
                dropped: 2,
                prefill_tokens: None,
            }
        );
    }

    #[test]
    fn huge_indexes_are_dropped_and_counted() {
        let c = Candidates::new(vec![usize::MAX, usize::MAX - 1, 0, 0, 1]);
        assert_eq!(
            c.resolve(3),
            Resolved {
                order: vec![0, 1],
                dropped: 2,
                prefill_tokens: None,
            }
        );
        assert_eq!(
            Candidates::new(vec![usize::MAX, 0]).resolve(0),
            Resolved {
                order: vec![],
                dropped: 2,
                prefill_tokens: None,
            }
        );
    }

    #[test]
    fn prefill_estimates_pass_through_resolution_by_pool_index() {
        let resolved = Candidates::new(vec![2, 0, 9])
            .with_prefill_tokens(vec![100, 7, 40])
            .resolve(3);
        assert_eq!(resolved.order, vec![2, 0]);
        assert_eq!(resolved.prefill_tokens, Some(vec![100, 7, 40]));
        assert_eq!(Candidates::new(vec![0]).resolve(1).prefill_tokens, None);
    }

    proptest! {
        /// Whatever a strategy returns, the resolved order is inside the pool, has no repeats,
        /// keeps first occurrences in order, and counts exactly the out-of-range entries.
        #[test]
        fn resolution_is_bounded_and_faithful(
            order in proptest::collection::vec(
                prop_oneof![0usize..40, any::<usize>(), (usize::MAX - 3)..=usize::MAX],
                0..80,
            ),
            pool_len in 0usize..48,
        ) {
            let resolved = Candidates::new(order.clone()).resolve(pool_len);
            prop_assert!(resolved.order.len() <= pool_len);
            prop_assert!(resolved.order.iter().all(|&i| i < pool_len));
            let mut expected = Vec::new();
            for &i in &order {
                if i < pool_len && !expected.contains(&i) {
                    expected.push(i);
                }
            }
            prop_assert_eq!(&resolved.order, &expected);
            prop_assert_eq!(resolved.dropped, order.iter().filter(|&&i| i >= pool_len).count());
        }
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
