//! The skeleton the built-in strategies share: per pick, what each endpoint has cached of the
//! prompt, the predicted time to first token there ([`crate::cost::CostModel`]), and the steps
//! built on them: the best endpoint with ties spread, the near-best set, deterministic placement
//! inside it, and candidates that carry each endpoint's prefill estimate to the gateway.
//!
//! An adapter request also pays for its adapter where it is not resident ([`adapter_tier`]):
//! nothing where it runs, `adapter-load-ms` where it waits or a slot is free, and that plus the mean
//! decode time of a request (the wait for a slot to free) where every slot holds another adapter.
//! Loading an adapter delays the first token like a queue does, so it is part of the prediction.
//!
//! A strategy keeps its own decision (which endpoint deserves to go first) and leaves the rest
//! here, so the built-ins rank failover order, treat stale metrics and count prefill work the same
//! way. The learned state (rates, the prefix index) is updated from the strategy's hooks
//! ([`CostRanking::on_dispatched`], [`CostRanking::on_completed`],
//! [`CostRanking::on_endpoints_changed`]).
//!
//! | Parameter | Default | Why |
//! |---|---|---|
//! | the cost model's (`prefill-tokens-per-second`, `decode-step-ms`, `decode-step-per-sequence-ms`, `kv-pressure-ms`, `learning-samples`) | see [`crate::cost`] | priors and learning speed |
//! | `adapter-load-ms` | 100 | Loading a LoRA adapter from disk takes about 100 ms on vLLM (7 ms from its CPU cache); the larger figure, since the gateway cannot see the CPU cache |
//! | `stale-after-ms` | 200 | Four missed scrapes at the default 50 ms interval: older metrics are not trusted |
//! | `tie-tolerance` | 0.1 | Predictions within 10% (plus one engine step) of the best are equally good: the rates behind them are estimates, and chasing smaller differences herds requests between scrapes |
//! | `block-bytes` | 64 | One 16-token vLLM block at about four bytes a token |
//! | `max-blocks` | 1024 | 64 KiB of prompt, about 16k tokens, hashed at most |
//! | `index-capacity` | 31250 | Blocks per endpoint when it does not report its KV size: the Inference Extension's figure for an 80 GB GPU |

use crate::cost::{CostModel, CostParams, Prediction};
use crate::endpoint::{CachedPrefix, EndpointId, EndpointView, PoolView};
use crate::load::{Load, LoadConfig, loads};
use crate::params::Params;
use crate::prefix::{PrefixHasher, PrefixIndex, rendezvous};
use crate::request::RequestView;
use crate::scorers::is_base_model;
use crate::strategy::{Candidates, Completion, ConfigError, NoEndpoint};

/// Where an adapter stands on an endpoint, from its scraped LoRA state and the adapters a strategy
/// recently sent there (`pending`, loading but not yet reported): 0 running or pending there,
/// 1 waiting there, 2 a slot is free (fewer distinct adapters running or pending than `max_lora`),
/// 3 every slot is taken by other adapters. An endpoint that reports no LoRA state is tier 2 (0
/// when the adapter is pending there).
pub fn adapter_tier<S: AsRef<str>>(
    endpoint: &EndpointView<'_>,
    adapter: &str,
    pending: &[S],
) -> u8 {
    let pending_here = |name: &str| pending.iter().any(|p| p.as_ref() == name);
    let Some(lora) = endpoint.metrics.and_then(|m| m.lora.as_ref()) else {
        return if pending_here(adapter) { 0 } else { 2 };
    };
    if lora.is_running(adapter) || pending_here(adapter) {
        return 0;
    }
    if lora.is_waiting(adapter) {
        return 1;
    }
    let extra = pending
        .iter()
        .map(AsRef::as_ref)
        .filter(|a| !lora.is_running(a))
        .collect::<std::collections::BTreeSet<&str>>()
        .len();
    if ((lora.running.len() + extra) as u64) < u64::from(lora.max_loras) {
        2
    } else {
        3
    }
}

/// Bytes of prompt text per token, for turning cached blocks into tokens and sizing the index from
/// the KV cache.
pub const BYTES_PER_TOKEN: u64 = 4;

/// What each endpoint is likely to have cached of a prompt: the blocks this gateway sent it,
/// bounded like its KV cache.
#[derive(Debug)]
pub struct CacheEstimate {
    /// How prompts are cut into blocks.
    pub hasher: PrefixHasher,
    /// Which endpoint has seen which blocks.
    pub index: PrefixIndex,
}

impl CacheEstimate {
    /// Read `block-bytes`, `max-blocks` and `index-capacity` from `params`.
    pub fn from_params(params: &mut Params<'_>) -> Result<Self, ConfigError> {
        let hasher = PrefixHasher {
            block_bytes: params.usize("block-bytes", 64, 1..=65_536)?,
            max_blocks: params.usize("max-blocks", 1024, 1..=1_000_000)?,
        };
        let capacity = params.usize("index-capacity", 31_250, 1..=100_000_000)?;
        Ok(Self {
            hasher,
            index: PrefixIndex::new(capacity),
        })
    }

    /// The endpoint's index capacity in blocks, from its KV cache size when it reports one.
    pub fn capacity_blocks(&self, endpoint: &EndpointView<'_>) -> Option<usize> {
        let tokens = endpoint.metrics?.kv_capacity_tokens()?;
        usize::try_from(tokens * BYTES_PER_TOKEN / self.hasher.block_bytes as u64).ok()
    }

    /// Tokens that `blocks` matched blocks stand for, at most `prompt_tokens`.
    pub fn cached_tokens(&self, blocks: usize, prompt_tokens: u32) -> u32 {
        let tokens = blocks as u64 * self.hasher.block_bytes as u64 / BYTES_PER_TOKEN;
        u32::try_from(tokens).unwrap_or(u32::MAX).min(prompt_tokens)
    }

    /// Record that `endpoint` received `request`'s prompt.
    pub fn record(&self, request: &RequestView<'_>, endpoint: &EndpointView<'_>) {
        if let Some(prompt) = request.prompt {
            let hashes = self.hasher.hashes(request.target_model, prompt);
            self.index
                .record(endpoint.id, &hashes, self.capacity_blocks(endpoint));
        }
    }
}

/// An endpoint's [`CachedPrefix`] as (matched blocks, cached tokens): the share of the prompt it
/// holds, in GPU memory or offloaded, of the request's `prompt_tokens` and of the
/// `prompt_blocks` the estimate cut the prompt text into. Shares, not the server's token counts,
/// keep every figure of a pick in one unit: an endpoint read from events and one estimated are
/// compared on the same scale, and the prefill work counted in flight adds up whichever source
/// it came from (the server's tokens are not the estimate's four bytes a token).
///
/// Offloaded tokens count as cached: copying a block back from host memory over PCIe (about
/// 25 GB/s, for a 7B model's 57 KB of KV per token some 400,000 tokens a second) is one to two
/// orders of magnitude faster than computing it again (a few thousand tokens a second of prefill
/// on an A10).
pub fn precise_match(
    cached: CachedPrefix,
    prompt_tokens: u32,
    prompt_blocks: usize,
) -> (usize, u32) {
    if cached.prompt_tokens == 0 {
        return (0, 0);
    }
    let held = cached.total_tokens.max(cached.gpu_tokens);
    let share = (f64::from(held) / f64::from(cached.prompt_tokens)).min(1.0);
    let tokens = (share * f64::from(prompt_tokens)) as u32;
    let blocks = (share * prompt_blocks as f64) as usize;
    (blocks, tokens.min(prompt_tokens))
}

/// The shared state and settings of a cost-ranked strategy.
#[derive(Debug)]
pub struct CostRanking {
    /// The latency cost model.
    pub model: CostModel,
    /// Cached-prefix estimates.
    pub cache: CacheEstimate,
    /// Staleness and saturation thresholds.
    pub load: LoadConfig,
    /// Relative tolerance within which predictions count as equal.
    pub tie_tolerance: f64,
    /// Seconds an adapter load costs.
    pub adapter_load: f64,
}

impl CostRanking {
    /// Read the parameters of the module table from `params`.
    pub fn from_params(params: &mut Params<'_>) -> Result<Self, ConfigError> {
        let model = CostModel::new(CostParams::from_params(params)?);
        let defaults = LoadConfig::default();
        let stale_after = params.millis("stale-after-ms", defaults.stale_after, 1..=600_000)?;
        let tie_tolerance = params.f64("tie-tolerance", 0.1, 0.0..=10.0)?;
        let adapter_load = params.f64("adapter-load-ms", 100.0, 0.0..=600_000.0)? / 1e3;
        let cache = CacheEstimate::from_params(params)?;
        Ok(Self {
            model,
            cache,
            load: LoadConfig {
                stale_after,
                ..defaults
            },
            tie_tolerance,
            adapter_load,
        })
    }

    /// Predictions for every endpoint of `pool` for `request`; [`NoEndpoint::NoneReady`] when the
    /// pool is empty. Hashes the prompt once when the request carries one.
    pub fn rank<'p>(
        &'p self,
        request: &RequestView<'_>,
        pool: &'p PoolView<'p>,
    ) -> Result<RankedPool<'p>, NoEndpoint> {
        self.rank_with_pending::<&str>(request, pool, &[])
    }

    /// [`CostRanking::rank`], with `pending[i]` the adapters the strategy sent to endpoint `i`
    /// recently and the scrape may not show yet (see [`adapter_tier`]); endpoints past the end of
    /// `pending` have none.
    pub fn rank_with_pending<'p, S: AsRef<str>>(
        &'p self,
        request: &RequestView<'_>,
        pool: &'p PoolView<'p>,
        pending: &[Vec<S>],
    ) -> Result<RankedPool<'p>, NoEndpoint> {
        if pool.is_empty() {
            return Err(NoEndpoint::NoneReady);
        }
        let loads = loads(pool, &self.load);
        // Where every endpoint's KV events say what it holds, the estimate is not consulted:
        // only the prompt's length in blocks is needed.
        let all_known = pool.endpoints.iter().all(|e| e.cached_prefix.is_some());
        let (matched_blocks, prompt_blocks) = match request.prompt {
            Some(prompt) if all_known => {
                (vec![0; pool.len()], self.cache.hasher.block_count(prompt))
            }
            Some(prompt) => {
                let hashes = self.cache.hasher.hashes(request.target_model, prompt);
                (
                    self.cache.index.match_lengths(&hashes, pool.endpoints),
                    hashes.len(),
                )
            }
            None => (vec![0; pool.len()], 0),
        };
        let mut matched_blocks = matched_blocks;
        let mut uncached: Vec<u32> = matched_blocks
            .iter()
            .map(|&blocks| {
                request.prompt_tokens - self.cache.cached_tokens(blocks, request.prompt_tokens)
            })
            .collect();
        // Where the endpoint's KV events say what it holds, that replaces the estimate.
        for (i, endpoint) in pool.endpoints.iter().enumerate() {
            if let Some(cached) = endpoint.cached_prefix {
                let (blocks, tokens) = precise_match(cached, request.prompt_tokens, prompt_blocks);
                matched_blocks[i] = blocks;
                uncached[i] = request.prompt_tokens - tokens;
            }
        }
        let mut predictions = self.model.predict(pool.endpoints, &loads, &uncached);
        let adapter = request.target_model;
        if !is_base_model(pool, adapter) {
            let slot_wait = self.model.mean_decode_seconds();
            for (i, (endpoint, prediction)) in
                pool.endpoints.iter().zip(&mut predictions).enumerate()
            {
                let recent = pending.get(i).map_or(&[][..], Vec::as_slice);
                prediction.extra += match adapter_tier(endpoint, adapter, recent) {
                    0 => 0.0,
                    1 | 2 => self.adapter_load,
                    _ => self.adapter_load + slot_wait,
                };
            }
        }
        Ok(RankedPool {
            pool,
            tie_tolerance: self.tie_tolerance,
            loads,
            matched_blocks,
            prompt_blocks,
            uncached,
            predictions,
        })
    }

    /// Record the prompt's blocks for the endpoint it was sent to.
    pub fn on_dispatched(&self, request: &RequestView<'_>, endpoint: &EndpointView<'_>) {
        self.cache.record(request, endpoint);
    }

    /// Learn from a finished request.
    pub fn on_completed(&self, completion: &Completion<'_>) {
        self.model.learn(completion);
    }

    /// Forget endpoints that left.
    pub fn on_endpoints_changed(&self, endpoints: &[EndpointId]) {
        self.cache.index.retain(endpoints);
        self.model.retain(endpoints);
    }

    /// Settings and learned figures, for `/debug/snapshot`.
    pub fn debug_state(&self) -> serde_json::Value {
        serde_json::json!({
            "cost_model": self.model.debug_state(),
            "stale_after_ms": self.load.stale_after.as_millis() as u64,
            "tie_tolerance": self.tie_tolerance,
            "adapter_load_ms": self.adapter_load * 1e3,
            "block_bytes": self.cache.hasher.block_bytes,
            "max_blocks": self.cache.hasher.max_blocks,
            "index": self.cache.index.stats(),
        })
    }
}

/// One pick's view of a non-empty pool: load, cached prefixes and predictions per endpoint, in
/// pool order ([`CostRanking::rank`]).
#[derive(Debug)]
pub struct RankedPool<'p> {
    pool: &'p PoolView<'p>,
    tie_tolerance: f64,
    /// Load estimate per endpoint.
    pub loads: Vec<Load>,
    /// Leading prompt blocks each endpoint has seen.
    pub matched_blocks: Vec<usize>,
    /// Blocks the prompt was cut into (0 without a prompt).
    pub prompt_blocks: usize,
    /// Prompt tokens each endpoint would have to prefill.
    pub uncached: Vec<u32>,
    /// Predicted time to first token per endpoint.
    pub predictions: Vec<Prediction>,
}

impl RankedPool<'_> {
    /// Add a strategy's own cost (seconds) to endpoint `i`'s prediction ([`Prediction::extra`]).
    pub fn add_cost(&mut self, i: usize, seconds: f64) {
        self.predictions[i].extra += seconds;
    }

    /// The endpoint with the lowest predicted cost (fresh before stale), first of equals.
    pub fn best(&self) -> usize {
        (0..self.predictions.len())
            .min_by(|&a, &b| self.predictions[a].cmp_cost(&self.predictions[b]))
            .unwrap_or(0)
    }

    /// Whether endpoint `i`'s prediction is as good as the best's: as fresh, and a predicted TTFT
    /// within `tie-tolerance` of the best plus one engine step.
    pub fn is_near_best(&self, i: usize) -> bool {
        self.near(&self.predictions[self.best()], i)
    }

    fn near(&self, best: &Prediction, i: usize) -> bool {
        let p = &self.predictions[i];
        p.stale == best.stale && p.ttft() <= best.ttft() * (1.0 + self.tie_tolerance) + best.step
    }

    /// [`RankedPool::is_near_best`] for every endpoint (one pass: the best is found once).
    pub fn near_best(&self) -> Vec<bool> {
        let best = self.predictions[self.best()];
        (0..self.predictions.len())
            .map(|i| self.near(&best, i))
            .collect()
    }

    /// The near-best endpoints that are cheapest on the wait and the measured terms (the prefill
    /// still ahead, KV pressure, the step of the batch and a strategy's own cost), then have the
    /// fewest requests in flight: the equally good choices, as a mask in pool order. The
    /// request's own prefill is left to the tolerance because it differs between endpoints only
    /// by their estimated rates; the work ahead is the gateway's own count, and KV usage and batch
    /// size are read, so they break the tie: the endpoint closest to finishing its prefill goes
    /// first, and KV usage evens out across endpoints. Usually one endpoint; several when they
    /// look the same (an idle pool).
    pub fn spread_tied(&self) -> Vec<bool> {
        let near = self.near_best();
        let key = |i: usize| {
            let p = &self.predictions[i];
            (
                p.wait + p.kv + p.step + p.extra,
                self.pool.endpoints[i].in_flight,
            )
        };
        let lowest = (0..near.len())
            .filter(|&i| near[i])
            .map(key)
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        (0..near.len())
            .map(|i| near[i] && Some(key(i)) == lowest)
            .collect()
    }

    /// One of [`RankedPool::spread_tied`], at random: equally good predictions are spread, not
    /// sent to the first endpoint in address order.
    pub fn spread_best(&self) -> usize {
        let tied: Vec<usize> = (0..self.predictions.len())
            .zip(self.spread_tied())
            .filter_map(|(i, tied)| tied.then_some(i))
            .collect();
        match tied.len() {
            0 => self.best(),
            1 => tied[0],
            n => tied[fastrand::usize(..n)],
        }
    }

    /// The endpoint among `members` that rendezvous hashing of `key` places first: every replica
    /// that sees the same members computes the same placement. `None` when no endpoint is a
    /// member.
    pub fn place(&self, key: u64, members: &[bool]) -> Option<usize> {
        let in_members = self
            .pool
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| members[*i]);
        rendezvous(key, in_members.map(|(i, e)| (i, e.id)))
    }

    /// `first`, then every other endpoint by predicted cost (random among equals), with each
    /// endpoint's prefill estimate for the gateway's in-flight accounting.
    pub fn candidates(&self, first: usize) -> Candidates {
        // Keys computed once (fresh first, then predicted TTFT), not per comparison.
        let mut order: Vec<(bool, f64, usize)> = self
            .predictions
            .iter()
            .enumerate()
            .map(|(i, p)| (p.stale, p.ttft(), i))
            .collect();
        fastrand::shuffle(&mut order);
        order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut order: Vec<usize> = order.into_iter().map(|(_, _, i)| i).collect();
        if let Some(position) = order.iter().position(|&i| i == first) {
            order[..=position].rotate_right(1);
        }
        Candidates::new(order).with_prefill_tokens(self.uncached.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointMetrics;
    use crate::registry::StrategyConfig;
    use crate::testing::{pool_of, request, with_metrics};

    fn ranking() -> CostRanking {
        CostRanking::from_params(&mut Params::new("T", &StrategyConfig::new())).unwrap()
    }

    #[test]
    fn an_empty_pool_has_no_endpoint() {
        let headers = http::HeaderMap::new();
        let pool = PoolView {
            name: "p",
            endpoints: &[],
        };
        assert_eq!(
            ranking().rank(&request(&headers), &pool).err(),
            Some(NoEndpoint::NoneReady)
        );
    }

    #[test]
    fn cached_blocks_lower_the_prefill_of_their_endpoint() {
        let (_ids, mut views) = pool_of(3);
        with_metrics(
            &mut views,
            &[
                EndpointMetrics::default(),
                EndpointMetrics::default(),
                EndpointMetrics::default(),
            ],
        );
        let ranking = ranking();
        let headers = http::HeaderMap::new();
        let prompt = "x".repeat(64 * 100);
        let mut req = request(&headers);
        req.prompt = Some(&prompt);
        req.prompt_tokens = 1600;
        ranking.on_dispatched(&req, &views[1]);
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let ranked = ranking.rank(&req, &pool).unwrap();
        assert_eq!(ranked.matched_blocks, vec![0, 100, 0]);
        // 100 blocks of 64 bytes are 1600 tokens: all of it cached.
        assert_eq!(ranked.uncached, vec![1600, 0, 1600]);
        assert_eq!(ranked.best(), 1);
        let candidates = ranked.candidates(1);
        assert_eq!(candidates.first(), Some(1));
        assert_eq!(candidates.prefill_tokens(), Some(&[1600, 0, 1600][..]));
    }

    #[test]
    fn equal_predictions_spread_by_batch_then_at_random() {
        let (_ids, mut views) = pool_of(4);
        with_metrics(&mut views, &vec![EndpointMetrics::default(); 4]);
        views[0].in_flight = 2;
        views[2].in_flight = 2;
        let ranking = ranking();
        let headers = http::HeaderMap::new();
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let ranked = ranking.rank(&request(&headers), &pool).unwrap();
        assert!(ranked.near_best().iter().all(|&near| near));
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[ranked.spread_best()] += 1;
        }
        assert_eq!((seen[0], seen[2]), (0, 0), "{seen:?}");
        assert!(seen[1] > 100 && seen[3] > 100, "{seen:?}");
    }

    #[test]
    fn among_near_best_the_lower_kv_usage_goes_first() {
        let (_ids, mut views) = pool_of(3);
        let metrics = [0.30, 0.25, 0.35].map(|kv_usage| EndpointMetrics {
            kv_usage,
            ..Default::default()
        });
        with_metrics(&mut views, &metrics);
        let ranking = ranking();
        let headers = http::HeaderMap::new();
        let mut req = request(&headers);
        req.prompt_tokens = 2000;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let ranked = ranking.rank(&req, &pool).unwrap();
        assert!(ranked.near_best().iter().all(|&near| near));
        assert_eq!(ranked.spread_best(), 1);
    }

    #[test]
    fn stale_endpoints_are_never_near_a_fresh_best() {
        let (_ids, mut views) = pool_of(2);
        with_metrics(&mut views, &vec![EndpointMetrics::default(); 2]);
        views[0].metrics_age = Some(std::time::Duration::from_secs(9));
        let ranking = ranking();
        let headers = http::HeaderMap::new();
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let ranked = ranking.rank(&request(&headers), &pool).unwrap();
        assert_eq!(ranked.best(), 1);
        assert_eq!(ranked.near_best(), vec![false, true]);
        assert_eq!(ranked.candidates(1).as_slice(), &[1, 0]);
    }
}
