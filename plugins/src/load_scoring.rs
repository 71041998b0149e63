//! The skeleton every load-aware strategy shares: DEFAULT's scorers and load settings read from
//! parameters ([`LoadScoring`]), and, once per pick, the pool's load estimates and DEFAULT totals
//! ([`ScoredPool`]) with the steps built on them: the load window, rendezvous placement inside it,
//! and "this endpoint first, then the rest by score".
//!
//! A strategy keeps its own decision (which endpoint deserves to go first) and leaves the rest
//! here, so the built-ins and third-party strategies rank failover order, treat stale metrics and
//! bound affinity by load the same way. Pure computation over the views, like the rest of the
//! crate: no I/O, no clocks, no state.

use crate::endpoint::PoolView;
use crate::load::{Load, LoadConfig, LoadWindow, loads};
use crate::params::Params;
use crate::prefix::rendezvous;
use crate::request::RequestView;
use crate::scorers::{
    InFlightScorer, KvCacheScorer, LoraAffinityScorer, QueueScorer, ScoreInput, WeightedScorers,
    rank,
};
use crate::strategy::{Candidates, ConfigError, NoEndpoint};

/// Scorer weights and load settings shared by the load-aware strategies.
#[derive(Debug)]
pub struct LoadScoring {
    /// The weighted scorers.
    pub scorers: WeightedScorers,
    /// Staleness and thresholds.
    pub load: LoadConfig,
}

impl LoadScoring {
    /// Read the load parameters (`queue-weight`, `kv-weight`, `in-flight-weight`, `lora-weight`,
    /// `stale-after-ms`) from `params`.
    pub fn from_params(params: &mut Params<'_>) -> Result<Self, ConfigError> {
        let queue = params.f64("queue-weight", 2.0, 0.0..=100.0)?;
        let kv = params.f64("kv-weight", 2.0, 0.0..=100.0)?;
        let in_flight = params.f64("in-flight-weight", 1.0, 0.0..=100.0)?;
        let lora = params.f64("lora-weight", 1.0, 0.0..=100.0)?;
        let defaults = LoadConfig::default();
        let stale_after = params.millis("stale-after-ms", defaults.stale_after, 1..=600_000)?;
        Ok(Self {
            scorers: WeightedScorers::new()
                .with(QueueScorer, queue)
                .with(KvCacheScorer, kv)
                .with(InFlightScorer, in_flight)
                .with(LoraAffinityScorer, lora),
            load: LoadConfig {
                stale_after,
                ..defaults
            },
        })
    }

    /// Load estimates and weighted totals of `pool` for `request`;
    /// [`NoEndpoint::NoneReady`] when the pool is empty.
    pub fn score<'p>(
        &'p self,
        request: &RequestView<'_>,
        pool: &'p PoolView<'p>,
    ) -> Result<ScoredPool<'p>, NoEndpoint> {
        if pool.is_empty() {
            return Err(NoEndpoint::NoneReady);
        }
        let loads = loads(pool, &self.load);
        let totals = self.scorers.totals(&ScoreInput {
            request,
            pool,
            loads: &loads,
        });
        Ok(ScoredPool {
            pool,
            config: &self.load,
            loads,
            totals,
        })
    }

    /// Weighted totals per endpoint.
    pub fn totals(&self, request: &RequestView<'_>, pool: &PoolView<'_>) -> Vec<f64> {
        let loads = loads(pool, &self.load);
        self.scorers.totals(&ScoreInput {
            request,
            pool,
            loads: &loads,
        })
    }
}

/// One pick's view of a non-empty pool: load estimates and DEFAULT totals, computed once
/// ([`LoadScoring::score`]).
#[derive(Debug)]
pub struct ScoredPool<'p> {
    pool: &'p PoolView<'p>,
    config: &'p LoadConfig,
    /// Load estimate per endpoint, in pool order.
    pub loads: Vec<Load>,
    /// Weighted total per endpoint, in pool order (higher is better).
    pub totals: Vec<f64>,
}

impl ScoredPool<'_> {
    /// The load configuration the estimates were made with.
    pub fn config(&self) -> &LoadConfig {
        self.config
    }

    /// Every endpoint by total, best first; equal totals in random order.
    pub fn ranked(&self) -> Candidates {
        rank(&self.totals)
    }

    /// Which endpoints are inside `window` ([`LoadWindow::members`]).
    pub fn window_members(&self, window: &LoadWindow) -> Vec<bool> {
        window.members(&self.loads, self.config)
    }

    /// Endpoint `index`'s saturation ([`Load::saturation`]); at least 1 means saturated.
    pub fn saturation(&self, index: usize) -> f64 {
        self.loads[index].saturation(self.config)
    }

    /// The endpoint among `members` (a [`ScoredPool::window_members`] result) that rendezvous
    /// hashing of `key` places first: every replica computes the same placement. `None` when no
    /// endpoint is a member.
    pub fn place(&self, key: u64, members: &[bool]) -> Option<usize> {
        let in_members = self
            .pool
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| members[*i]);
        rendezvous(key, in_members.map(|(i, e)| (i, e.id)))
    }

    /// `first` (when it is an endpoint of the pool), then every other endpoint by total.
    pub fn first_then_ranked(&self, first: Option<usize>) -> Candidates {
        let mut order: Vec<usize> = self.ranked().into_iter().collect();
        if let Some(position) = first.and_then(|f| order.iter().position(|&i| i == f)) {
            order[..=position].rotate_right(1);
        }
        Candidates::new(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointMetrics, EndpointView};
    use crate::registry::StrategyConfig;
    use crate::testing::{pool_of, request, with_metrics};

    fn scoring() -> LoadScoring {
        LoadScoring::from_params(&mut Params::new("T", &StrategyConfig::new())).unwrap()
    }

    /// Score `views` with DEFAULT's settings for a plain request and hand the result to `check`.
    fn with_scored(views: &[EndpointView<'_>], check: impl FnOnce(&ScoredPool<'_>)) {
        let pool = PoolView {
            name: "p",
            endpoints: views,
        };
        let headers = http::HeaderMap::new();
        let scoring = scoring();
        check(&scoring.score(&request(&headers), &pool).unwrap());
    }

    #[test]
    fn an_empty_pool_has_no_endpoint() {
        let headers = http::HeaderMap::new();
        let pool = PoolView {
            name: "p",
            endpoints: &[],
        };
        assert_eq!(
            scoring().score(&request(&headers), &pool).err(),
            Some(NoEndpoint::NoneReady)
        );
    }

    #[test]
    fn first_goes_first_and_the_rest_keep_their_rank() {
        let (_ids, mut views) = pool_of(4);
        let metrics = [0.7, 0.1, 0.5, 0.3].map(|kv| EndpointMetrics {
            kv_usage: kv,
            ..Default::default()
        });
        with_metrics(&mut views, &metrics);
        with_scored(&views, |scored| {
            assert_eq!(scored.ranked().as_slice(), &[1, 3, 2, 0]);
            assert_eq!(scored.first_then_ranked(Some(2)).as_slice(), &[2, 1, 3, 0]);
            assert_eq!(scored.first_then_ranked(Some(1)).as_slice(), &[1, 3, 2, 0]);
            assert_eq!(scored.first_then_ranked(None).as_slice(), &[1, 3, 2, 0]);
            assert_eq!(scored.first_then_ranked(Some(9)).as_slice(), &[1, 3, 2, 0]);
        });
    }

    #[test]
    fn placement_stays_inside_the_members() {
        let (_ids, views) = pool_of(5);
        let members = [false, true, false, true, false];
        with_scored(&views, |scored| {
            for key in 0..200 {
                let placed = scored.place(key, &members).unwrap();
                assert!(members[placed], "{placed}");
            }
            assert_eq!(scored.place(7, &[false; 5]), None);
        });
    }
}
