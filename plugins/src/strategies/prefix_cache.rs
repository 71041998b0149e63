//! `PREFIX_CACHE`: requests that share a prompt prefix go where that prefix is cached, without
//! overloading anyone.
//!
//! The algorithm, per request:
//!
//! 1. Hash the prompt (the gateway renders chat messages as stable `role: text` lines) into
//!    chained 64-byte blocks seeded by the target model ([`crate::prefix::PrefixHasher`]).
//! 2. Compute the **load window**: endpoints whose running plus queued requests are within
//!    `window-requests` (or `window-ratio` of the minimum, whichever is larger) of the least-loaded
//!    endpoint, and under the KV threshold while any endpoint is ([`crate::load::LoadWindow`]).
//!    Affinity and balance are one decision: affinity is honoured inside the window and never
//!    outside it, so a hot prefix spreads to a second endpoint instead of piling onto one, and
//!    is never dropped just because load is a little uneven.
//! 3. Inside the window, the endpoint with the longest cached prefix wins (at least
//!    `min-match-blocks` blocks); equal matches go to the better DEFAULT load score.
//! 4. A **cold** prompt (no match worth having in the window) is placed by rendezvous hashing of
//!    its first block over the window. Every gateway replica computes the same placement without
//!    talking to the others, so the same document lands on the same endpoint whichever replica
//!    receives it; distinct documents spread uniformly.
//! 5. The rest of the pool follows in DEFAULT order, for failover.
//!
//! After dispatch the prompt's blocks are recorded for the chosen endpoint in a
//! [`crate::prefix::PrefixIndex`] whose per-endpoint capacity follows the endpoint's reported KV
//! cache (`num_gpu_blocks × block_size` tokens, about four bytes a token), so the index forgets
//! roughly when vLLM evicts; endpoints that leave the pool are forgotten at once.
//!
//! | Parameter | Default | Why |
//! |---|---|---|
//! | DEFAULT's `queue-weight`, `kv-weight`, `in-flight-weight`, `lora-weight`, `stale-after-ms` | as DEFAULT | ranking of equal matches, of cold prompts outside the window, and of failover order |
//! | `window-requests` | 8 | Eight more sequences raise a decode step by a few percent (decode is memory-bound), while missing a cached prefix costs its whole prefill |
//! | `window-ratio` | 0.5 | At high load the window grows with it: 50% more than the least-loaded endpoint |
//! | `min-match-blocks` | 4 | About 64 tokens: shorter shared openings ("You are a helpful assistant") save nothing |
//! | `block-bytes` | 64 | One 16-token vLLM block at about four bytes a token |
//! | `max-blocks` | 1024 | 64 KiB of prompt, about 16k tokens, hashed at most |
//! | `index-capacity` | 31250 | Blocks per endpoint when it does not report its KV size: the Inference Extension's figure for an 80 GB GPU |

use crate::endpoint::{EndpointId, EndpointView, PoolView};
use crate::load::{LoadConfig, LoadWindow};
use crate::load_scoring::LoadScoring;
use crate::params::Params;
use crate::prefix::{PrefixHasher, PrefixIndex};
use crate::registry::StrategyConfig;
use crate::request::RequestView;
use crate::strategy::{Candidates, ConfigError, Inputs, NoEndpoint, Strategy, StrategyStats};

/// Bytes of prompt text per token, for sizing the index from the KV cache.
const BYTES_PER_TOKEN: u64 = 4;

/// The prefix-affinity strategy.
#[derive(Debug)]
pub struct PrefixCache {
    scoring: LoadScoring,
    window: LoadWindow,
    min_match_blocks: usize,
    hasher: PrefixHasher,
    index: PrefixIndex,
}

impl PrefixCache {
    /// Registry name.
    pub const NAME: &'static str = "PREFIX_CACHE";

    /// Build from parameters (see the module documentation).
    pub fn from_config(config: &StrategyConfig) -> Result<Self, ConfigError> {
        let mut params = Params::new(Self::NAME, config);
        let scoring = LoadScoring::from_params(&mut params)?;
        let window = LoadWindow::from_params(&mut params)?;
        let min_match_blocks = params.usize("min-match-blocks", 4, 1..=1_000_000)?;
        let hasher = PrefixHasher {
            block_bytes: params.usize("block-bytes", 64, 1..=65_536)?,
            max_blocks: params.usize("max-blocks", 1024, 1..=1_000_000)?,
        };
        let capacity = params.usize("index-capacity", 31_250, 1..=100_000_000)?;
        params.finish()?;
        Ok(Self {
            scoring,
            window,
            min_match_blocks,
            hasher,
            index: PrefixIndex::new(capacity),
        })
    }

    /// The index (for tests and benches).
    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }

    fn capacity_blocks(&self, endpoint: &EndpointView<'_>) -> Option<usize> {
        let tokens = endpoint.metrics?.kv_capacity_tokens()?;
        usize::try_from(tokens * BYTES_PER_TOKEN / self.hasher.block_bytes as u64).ok()
    }
}

impl Strategy for PrefixCache {
    fn inputs(&self) -> Inputs {
        Inputs::PROMPT
    }

    fn load_config(&self) -> LoadConfig {
        self.scoring.load
    }

    fn pick(
        &self,
        request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint> {
        let scored = self.scoring.score(request, pool)?;
        let Some(prompt) = request.prompt else {
            return Ok(scored.ranked());
        };
        let hashes = self.hasher.hashes(request.target_model, prompt);
        let matches = self.index.match_lengths(&hashes, pool.endpoints);
        let in_window = scored.window_members(&self.window);
        let totals = &scored.totals;
        let best = (0..pool.len())
            .filter(|&i| in_window[i] && matches[i] >= self.min_match_blocks)
            .max_by(|&a, &b| {
                matches[a]
                    .cmp(&matches[b])
                    .then(totals[a].total_cmp(&totals[b]))
            });
        let first = best.or_else(|| {
            let key = self.hasher.placement_key(request.target_model, prompt);
            scored.place(key, &in_window)
        });
        Ok(scored.first_then_ranked(first))
    }

    fn on_dispatched(&self, request: &RequestView<'_>, endpoint: &EndpointView<'_>) {
        if let Some(prompt) = request.prompt {
            let hashes = self.hasher.hashes(request.target_model, prompt);
            self.index
                .record(endpoint.id, &hashes, self.capacity_blocks(endpoint));
        }
    }

    fn on_endpoints_changed(&self, endpoints: &[EndpointId]) {
        self.index.retain(endpoints);
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            indexed_blocks: Some(self.index.stats().blocks as u64),
        }
    }

    fn debug_state(&self) -> serde_json::Value {
        serde_json::json!({
            "scorers": self.scoring.scorers.describe(),
            "window": self.window,
            "min_match_blocks": self.min_match_blocks,
            "block_bytes": self.hasher.block_bytes,
            "max_blocks": self.hasher.max_blocks,
            "stale_after_ms": self.scoring.load.stale_after.as_millis() as u64,
            "index": self.index.stats(),
        })
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
    fn a_cached_prefix_wins_inside_the_window() {
        let (_ids, mut views) = pool_of(4);
        with_metrics(&mut views, &idle(4));
        let s = strategy();
        let headers = http::HeaderMap::new();
        let doc = document(1);
        let mut req = request(&headers);
        req.prompt = Some(&doc);
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let first = s.pick(&req, &pool).unwrap().first().unwrap();
        s.on_dispatched(&req, &views[first]);
        // A follow-up sharing the document goes to the same endpoint, even with more load there.
        let follow = format!("{doc} and then a question");
        req.prompt = Some(&follow);
        views[first].dispatched_since_scrape = 3;
        views[first].in_flight = 3;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(s.pick(&req, &pool).unwrap().first(), Some(first));
        // Outside the window (far more loaded than the rest) it does not.
        views[first].dispatched_since_scrape = 20;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_ne!(s.pick(&req, &pool).unwrap().first(), Some(first));
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
