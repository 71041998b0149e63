//! `PREFIX_CACHE`: requests that share a prompt prefix go where that prefix is cached, for as long
//! as waiting there costs less than a penalty more than the best alternative.
//!
//! The algorithm, per request:
//!
//! 1. Hash the prompt (the gateway renders chat messages as stable `role: text` lines) into
//!    chained 64-byte blocks seeded by the target model ([`crate::prefix::PrefixHasher`]) and look
//!    up how many leading blocks each endpoint has been sent ([`crate::prefix::PrefixIndex`]).
//!    Where the pool publishes KV-cache events, the gateway tells each endpoint's true holding
//!    of the prompt ([`crate::EndpointView::cached_prefix`], GPU and offloaded tokens of the
//!    server's own tokenization) and that replaces the estimate for that endpoint; the estimate
//!    stays for endpoints whose events are missing. Every gateway replica receives the same
//!    events, so replicas agree on matches they did not route themselves.
//! 2. Predict the time to first token on every endpoint with the latency cost model
//!    ([`crate::cost`]): prefill work in flight there, this request's uncached prefill (so a
//!    cached prefix already counts in seconds saved), one engine step, KV pressure.
//! 3. **Affinity**: the endpoint with the longest match, when the match covers at least
//!    `affinity-threshold` of the prompt's blocks (and `min-match-blocks`), goes first while its
//!    predicted TTFT is within `affinity-penalty-ms` of the best endpoint's. Beyond that the
//!    sticky endpoint is loaded enough that a second copy of the prefix is cheaper: new sessions
//!    behind one shared system prompt spread once their group's endpoint has a queue, instead of
//!    herding onto it.
//! 4. **Placement**: otherwise (a cold prompt, a weak match, a loaded sticky endpoint) the prompt
//!    goes where DEFAULT would send it, the near-best endpoint cheapest on the work ahead and the
//!    measured load ([`crate::cost_ranking::RankedPool::spread_tied`]), except that equals are
//!    told apart by rendezvous hashing of the prompt's first block instead of at random. Every
//!    gateway replica that sees the same state computes the same placement without talking to the
//!    others, so in a quiet pool the same document lands on the same endpoint whichever replica
//!    receives it, and distinct documents spread uniformly; under load the least loaded endpoint
//!    takes it (hashing over a wider window of "good enough" endpoints was measured: it ignores
//!    the load differences inside the window, and on identical requests TTFT p90 rose 7–22% over
//!    round-robin's).
//! 5. The rest of the pool follows by prediction, for failover.
//!
//! After dispatch the prompt's blocks are recorded for the chosen endpoint in the index, whose
//! per-endpoint capacity follows the endpoint's reported KV cache (`num_gpu_blocks × block_size`
//! tokens, about four bytes a token), so the index forgets roughly when vLLM evicts; endpoints
//! that leave the pool are forgotten at once.
//!
//! | Parameter | Default | Why |
//! |---|---|---|
//! | [`crate::cost_ranking`]'s (cost model priors, `stale-after-ms`, `tie-tolerance`, `block-bytes`, `max-blocks`, `index-capacity`) | as DEFAULT | predictions and the index |
//! | `affinity-threshold` | 0.8 | llm-d's prefix-affinity filter threshold: a match of most of the prompt is worth keeping; a short shared opening is priced by the cost model alone |
//! | `affinity-penalty-ms` | 100 | The extra predicted wait accepted to keep a group's prefix in one cache rather than two; small next to what a miss costs (a 6k-token prefill is over a second on an A10) |
//! | `min-match-blocks` | 4 | About 64 tokens: shorter shared openings ("You are a helpful assistant") save nothing |

use crate::cost_ranking::CostRanking;
use crate::endpoint::{EndpointId, EndpointView, PoolView};
use crate::load::LoadConfig;
use crate::params::Params;
use crate::prefix::PrefixIndex;
use crate::registry::StrategyConfig;
use crate::request::RequestView;
use crate::strategy::{
    Candidates, Completion, ConfigError, Inputs, NoEndpoint, Strategy, StrategyStats,
};

/// The prefix-affinity strategy.
#[derive(Debug)]
pub struct PrefixCache {
    ranking: CostRanking,
    affinity_threshold: f64,
    affinity_penalty: f64,
    min_match_blocks: usize,
}

impl PrefixCache {
    /// Registry name.
    pub const NAME: &'static str = "PREFIX_CACHE";

    /// Build from parameters (see the module documentation).
    pub fn from_config(config: &StrategyConfig) -> Result<Self, ConfigError> {
        let mut params = Params::new(Self::NAME, config);
        let ranking = CostRanking::from_params(&mut params)?;
        let affinity_threshold = params.f64("affinity-threshold", 0.8, 0.0..=1.0)?;
        let affinity_penalty = params.f64("affinity-penalty-ms", 100.0, 0.0..=600_000.0)? / 1e3;
        let min_match_blocks = params.usize("min-match-blocks", 4, 1..=1_000_000)?;
        params.finish()?;
        Ok(Self {
            ranking,
            affinity_threshold,
            affinity_penalty,
            min_match_blocks,
        })
    }

    /// The index (for tests and benches).
    pub fn index(&self) -> &PrefixIndex {
        &self.ranking.cache.index
    }
}

impl Strategy for PrefixCache {
    fn inputs(&self) -> Inputs {
        Inputs::PROMPT
    }

    fn load_config(&self) -> LoadConfig {
        self.ranking.load
    }

    fn pick(
        &self,
        request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint> {
        let ranked = self.ranking.rank(request, pool)?;
        let Some(prompt) = request.prompt else {
            return Ok(ranked.candidates(ranked.spread_best()));
        };
        let best = &ranked.predictions[ranked.best()];
        let matches = &ranked.matched_blocks;
        let sticky = (0..pool.len())
            .filter(|&i| matches[i] >= self.min_match_blocks)
            .filter(|&i| matches[i] as f64 >= self.affinity_threshold * ranked.prompt_blocks as f64)
            .max_by(|&a, &b| {
                matches[a]
                    .cmp(&matches[b])
                    .then(ranked.predictions[b].cmp_cost(&ranked.predictions[a]))
            })
            .filter(|&i| {
                let p = &ranked.predictions[i];
                p.stale == best.stale && p.ttft() <= best.ttft() + self.affinity_penalty
            });
        let first = sticky.unwrap_or_else(|| {
            let key = self
                .ranking
                .cache
                .hasher
                .placement_key(request.target_model, prompt);
            ranked
                .place(key, &ranked.spread_tied())
                .unwrap_or_else(|| ranked.best())
        });
        Ok(ranked.candidates(first))
    }

    fn on_dispatched(&self, request: &RequestView<'_>, endpoint: &EndpointView<'_>) {
        self.ranking.on_dispatched(request, endpoint);
    }

    fn on_completed(&self, completion: &Completion<'_>) {
        self.ranking.on_completed(completion);
    }

    fn on_endpoints_changed(&self, endpoints: &[EndpointId]) {
        self.ranking.on_endpoints_changed(endpoints);
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            indexed_blocks: Some(self.index().stats().blocks as u64),
        }
    }

    fn debug_state(&self) -> serde_json::Value {
        let mut state = self.ranking.debug_state();
        state["affinity_threshold"] = self.affinity_threshold.into();
        state["affinity_penalty_ms"] = (self.affinity_penalty * 1e3).into();
        state["min_match_blocks"] = self.min_match_blocks.into();
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointMetrics;
    use crate::testing::{pool_of, request, with_metrics};
    use proptest::{prop_assert_eq, proptest};

    fn strategy() -> PrefixCache {
        PrefixCache::from_config(&StrategyConfig::new()).unwrap()
    }

    fn idle(n: usize) -> Vec<EndpointMetrics> {
        vec![
            EndpointMetrics {
                kv_usage: 0.1,
                ..Default::default()
            };
            n
        ]
    }

    fn document(n: usize) -> String {
        format!("document {n}: ") + &"lorem ipsum dolor sit amet ".repeat(40)
    }

    #[test]
    fn a_cached_prefix_wins_until_its_wait_exceeds_the_penalty() {
        let (_ids, mut views) = pool_of(4);
        with_metrics(&mut views, &idle(4));
        let s = strategy();
        let headers = http::HeaderMap::new();
        let doc = document(1);
        let mut req = request(&headers);
        req.prompt = Some(&doc);
        req.prompt_tokens = doc.len() as u32 / 4;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let first = s.pick(&req, &pool).unwrap().first().unwrap();
        s.on_dispatched(&req, &views[first]);
        // A follow-up sharing the document goes to the same endpoint, even with some prefill in
        // flight there: 300 tokens (60 ms at the prior rate) against 270 saved tokens and the
        // 100 ms penalty.
        let follow = format!("{doc} and then a question");
        req.prompt = Some(&follow);
        req.prompt_tokens = follow.len() as u32 / 4;
        views[first].in_flight = 1;
        views[first].in_flight_prefill = 1;
        views[first].in_flight_prefill_tokens = 300;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let picked = s.pick(&req, &pool).unwrap();
        assert_eq!(picked.first(), Some(first));
        // The gateway is told the follow-up's uncached part there: the document's 17 blocks of
        // 64 bytes (16 tokens each) are cached.
        assert_eq!(
            picked.prefill_tokens().unwrap()[first],
            req.prompt_tokens - 17 * 16
        );
        // With 5,000 tokens of prefill ahead (a second) it goes elsewhere.
        views[first].in_flight_prefill_tokens = 5000;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_ne!(s.pick(&req, &pool).unwrap().first(), Some(first));
    }

    #[test]
    fn a_shared_opening_below_the_threshold_gets_no_penalty_slack() {
        let (_ids, mut views) = pool_of(2);
        with_metrics(&mut views, &idle(2));
        let s = strategy();
        let headers = http::HeaderMap::new();
        let system = document(3);
        let mut req = request(&headers);
        req.prompt = Some(&system);
        req.prompt_tokens = system.len() as u32 / 4;
        s.on_dispatched(&req, &views[0]);
        // A long new question behind the same system prompt: 16 of 64 blocks match on endpoint 0,
        // which has 700 tokens in flight; its saving (256 tokens) does not cover that, and a 25%
        // match gets no affinity slack: endpoint 1.
        let question = format!("{system}{}", "q".repeat(64 * 48));
        req.prompt = Some(&question);
        req.prompt_tokens = question.len() as u32 / 4;
        views[0].in_flight = 1;
        views[0].in_flight_prefill = 1;
        views[0].in_flight_prefill_tokens = 700;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(s.pick(&req, &pool).unwrap().first(), Some(1));
    }

    #[test]
    fn cold_placement_is_deterministic_across_instances() {
        let (_ids, mut views) = pool_of(5);
        with_metrics(&mut views, &idle(5));
        let headers = http::HeaderMap::new();
        let (a, b) = (strategy(), strategy());
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        for n in 0..50 {
            let doc = document(n);
            let mut req = request(&headers);
            req.prompt = Some(&doc);
            assert_eq!(
                a.pick(&req, &pool).unwrap().first(),
                b.pick(&req, &pool).unwrap().first()
            );
        }
    }

    #[test]
    fn kv_events_replace_the_estimate_so_replicas_with_different_histories_agree() {
        use crate::endpoint::CachedPrefix;
        let (_ids, mut views) = pool_of(4);
        with_metrics(&mut views, &idle(4));
        let headers = http::HeaderMap::new();
        let doc = document(7);
        let mut req = request(&headers);
        req.prompt = Some(&doc);
        req.prompt_tokens = 300;
        // Replica `a` sent the document to endpoint 0 itself; replica `b` never saw it.
        let (a, b) = (strategy(), strategy());
        a.on_dispatched(&req, &views[0]);
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(a.pick(&req, &pool).unwrap().first(), Some(0));
        // The events say endpoint 2 holds 288 of its 300 tokens (endpoint 0 evicted them), the
        // others nothing: both replicas go to 2, and tell the gateway the 12 tokens left.
        for (i, view) in views.iter_mut().enumerate() {
            let held = if i == 2 { 288 } else { 0 };
            view.cached_prefix = Some(CachedPrefix {
                gpu_tokens: held,
                total_tokens: held,
                prompt_tokens: 300,
            });
        }
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        for replica in [&a, &b] {
            let picked = replica.pick(&req, &pool).unwrap();
            assert_eq!(picked.first(), Some(2));
            assert_eq!(picked.prefill_tokens().unwrap()[2], 12);
            assert_eq!(picked.prefill_tokens().unwrap()[0], 300);
        }
        // Offloaded blocks count as held; an endpoint whose events are missing (None) keeps the
        // estimate: replica `a` still credits endpoint 0 with what it sent there.
        views[2].cached_prefix = None;
        // Counted in the server's tokens (600 for the prompt): the share, 580 / 600, is what
        // counts, in the request's units (290 of its 300 estimated tokens).
        views[1].cached_prefix = Some(CachedPrefix {
            gpu_tokens: 0,
            total_tokens: 580,
            prompt_tokens: 600,
        });
        views[0].cached_prefix = None;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let ranked = a.ranking.rank(&req, &pool).unwrap();
        // The document's 1,092 bytes are 17 blocks of 64 bytes, 16 tokens each.
        assert_eq!(ranked.uncached, [300 - 17 * 16, 10, 300, 300]);
        assert_eq!(b.pick(&req, &pool).unwrap().first(), Some(1));
    }

    /// The first candidate for each of 40 documents no endpoint has seen, of `prompt_tokens`.
    fn cold_picks(s: &PrefixCache, views: &[EndpointView<'_>], prompt_tokens: u32) -> Vec<usize> {
        let headers = http::HeaderMap::new();
        let pool = PoolView {
            name: "p",
            endpoints: views,
        };
        (0..40)
            .map(|n| {
                let doc = document(n);
                let mut req = request(&headers);
                req.prompt = Some(&doc);
                req.prompt_tokens = prompt_tokens;
                s.pick(&req, &pool).unwrap().first().unwrap()
            })
            .collect()
    }

    #[test]
    fn a_cold_prompt_goes_to_an_idle_endpoint_not_one_finishing_a_prefill() {
        let (_ids, mut views) = pool_of(4);
        with_metrics(&mut views, &idle(4));
        // Endpoints 0 to 2 are 50 tokens (10 ms at the prior rate) from finishing a prefill:
        // near the best for a 1,000-token prompt, but endpoint 3 can start on it at once.
        for view in &mut views[..3] {
            view.in_flight = 1;
            view.in_flight_prefill = 1;
            view.in_flight_prefill_tokens = 50;
        }
        let s = strategy();
        let headers = http::HeaderMap::new();
        let doc = document(0);
        let mut req = request(&headers);
        req.prompt = Some(&doc);
        req.prompt_tokens = 1000;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(s.ranking.rank(&req, &pool).unwrap().near_best(), [true; 4]);
        assert_eq!(cold_picks(&s, &views, 1000), [3; 40]);
    }

    #[test]
    fn a_cold_prompt_goes_to_the_least_loaded_of_equally_idle_endpoints() {
        let (_ids, mut views) = pool_of(3);
        let metrics = [0.32, 0.30, 0.31].map(|kv_usage| EndpointMetrics {
            kv_usage,
            running: 10,
            ..Default::default()
        });
        with_metrics(&mut views, &metrics);
        assert_eq!(cold_picks(&strategy(), &views, 10), [1; 40]);
    }

    #[test]
    fn forgets_endpoints_that_leave() {
        let (ids, mut views) = pool_of(2);
        with_metrics(&mut views, &idle(2));
        let s = strategy();
        let headers = http::HeaderMap::new();
        let doc = document(7);
        let mut req = request(&headers);
        req.prompt = Some(&doc);
        s.on_dispatched(&req, &views[0]);
        assert_eq!(s.index().stats().endpoints, 1);
        let blocks = s.index().stats().blocks;
        assert!(blocks > 0);
        assert_eq!(s.stats().indexed_blocks, Some(blocks as u64));
        s.on_endpoints_changed(&ids[1..]);
        assert_eq!(s.index().stats().endpoints, 0);
        assert_eq!(s.index().stats().blocks, 0);
        assert_eq!(s.stats().indexed_blocks, Some(0));
    }

    #[test]
    fn the_index_is_sized_from_the_kv_cache() {
        let (ids, mut views) = pool_of(1);
        let metrics = [EndpointMetrics {
            block_size: Some(16),
            num_blocks: Some(100),
            ..Default::default()
        }];
        with_metrics(&mut views, &metrics);
        let s = strategy();
        let headers = http::HeaderMap::new();
        let doc = "x".repeat(64 * 300);
        let mut req = request(&headers);
        req.prompt = Some(&doc);
        s.on_dispatched(&req, &views[0]);
        // 100 blocks × 16 tokens × 4 bytes / 64 bytes = 100 index blocks.
        assert_eq!(s.index().endpoint_usage(&ids[0]), Some((100, 100)));
    }

    proptest! {
        /// Stable affinity: while the endpoint set and load stay the same, a prompt keeps its endpoint.
        #[test]
        fn affinity_is_stable(docs in proptest::collection::vec(0usize..1000, 1..30)) {
            let (_ids, mut views) = pool_of(6);
            with_metrics(&mut views, &idle(6));
            let s = strategy();
            let headers = http::HeaderMap::new();
            let pool = PoolView { name: "p", endpoints: &views };
            let mut placed = std::collections::HashMap::new();
            for n in docs {
                let doc = document(n);
                let mut req = request(&headers);
                req.prompt = Some(&doc);
                let pick = s.pick(&req, &pool).unwrap().first().unwrap();
                s.on_dispatched(&req, &views[pick]);
                prop_assert_eq!(*placed.entry(n).or_insert(pick), pick);
            }
        }
    }

    #[test]
    fn cold_traffic_spreads_evenly_under_equal_load() {
        let (_ids, mut views) = pool_of(5);
        with_metrics(&mut views, &idle(5));
        let s = strategy();
        let headers = http::HeaderMap::new();
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let mut counts = [0usize; 5];
        let total = 5000;
        for n in 0..total {
            let doc = document(n);
            let mut req = request(&headers);
            req.prompt = Some(&doc);
            counts[s.pick(&req, &pool).unwrap().first().unwrap()] += 1;
        }
        let limit = (total as f64 * (1.0 / 5.0 + 0.05)) as usize;
        assert!(
            counts.iter().all(|&c| c <= limit),
            "{counts:?} over {limit}"
        );
    }
}
