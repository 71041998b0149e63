//! `LORA_AFFINITY`: adapter requests go where the adapter is loaded, unless the queue there costs
//! more than loading it elsewhere, and adapters just sent somewhere count as loaded there.
//!
//! Every endpoint gets the latency cost model's predicted time to first token with the adapter's
//! cost, as DEFAULT ranks them ([`crate::cost_ranking`]): nothing where the adapter runs,
//! `adapter-load-ms` where it waits or a slot is free, and that plus the mean decode time of a
//! request (the wait for a slot to free) where every slot holds another adapter. The lowest total
//! wins, ties spread: an adapter load is weighed against the queue it would avoid, so a resident
//! adapter keeps its requests until its endpoint's queue is longer than a load, and an endpoint
//! takes an adapter beyond its `max_lora` only when every endpoint with room is a slot's wait
//! busier.
//!
//! What LORA_AFFINITY adds to DEFAULT is memory: an adapter this gateway sent to an endpoint in the
//! last `pending-ttl-ms` counts as running there (and as taking a slot), closing the gap between
//! dispatch and the next scrape, when the adapter is loading but not yet reported. Without it a
//! burst of requests for a new adapter, decided on one scrape, loads it on several endpoints.
//!
//! Requests for a base model (a name an endpoint reports as its `model_name`) have no adapter
//! cost: they are ranked as DEFAULT ranks them.
//!
//! | Parameter | Default | Why |
//! |---|---|---|
//! | [`crate::cost_ranking`]'s (including `adapter-load-ms`) | as DEFAULT | predictions |
//! | `pending-ttl-ms` | 2000 | An adapter load takes about 100 ms cold; two seconds covers it and many scrapes, then the scraped state is the truth again |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cost_ranking::CostRanking;
use crate::endpoint::{EndpointId, EndpointView, PoolView};
use crate::load::LoadConfig;
use crate::params::Params;
use crate::registry::StrategyConfig;
use crate::request::RequestView;
use crate::strategy::{
    Candidates, Completion, ConfigError, Inputs, NoEndpoint, Strategy, StrategyStats,
};

/// Adapters sent to each endpoint, with when they were sent.
type SentAdapters = HashMap<SocketAddr, Vec<(Arc<str>, Instant)>>;

/// The adapter-affinity strategy.
#[derive(Debug)]
pub struct LoraAffinity {
    ranking: CostRanking,
    pending_ttl: Duration,
    /// Adapters this gateway recently sent to each endpoint.
    pending: Mutex<SentAdapters>,
}

impl LoraAffinity {
    /// Registry name.
    pub const NAME: &'static str = "LORA_AFFINITY";

    /// Build from parameters (see the module documentation).
    pub fn from_config(config: &StrategyConfig) -> Result<Self, ConfigError> {
        let mut params = Params::new(Self::NAME, config);
        let ranking = CostRanking::from_params(&mut params)?;
        let pending_ttl = params.millis("pending-ttl-ms", Duration::from_secs(2), 1..=600_000)?;
        params.finish()?;
        Ok(Self {
            ranking,
            pending_ttl,
            pending: Mutex::new(HashMap::new()),
        })
    }
}

impl Strategy for LoraAffinity {
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
        let now = Instant::now();
        let recent: Vec<Vec<Arc<str>>> = {
            let mut pending = self.pending.lock();
            pool.endpoints
                .iter()
                .map(|e| match pending.get_mut(&e.id.address()) {
                    Some(list) => {
                        list.retain(|(_, at)| now.duration_since(*at) < self.pending_ttl);
                        list.iter().map(|(a, _)| Arc::clone(a)).collect()
                    }
                    None => Vec::new(),
                })
                .collect()
        };
        let ranked = self.ranking.rank_with_pending(request, pool, &recent)?;
        Ok(ranked.candidates(ranked.spread_best()))
    }

    fn on_dispatched(&self, request: &RequestView<'_>, endpoint: &EndpointView<'_>) {
        self.ranking.on_dispatched(request, endpoint);
        let adapter = request.target_model;
        if endpoint.metrics.and_then(|m| m.model_name.as_deref()) == Some(adapter) {
            return;
        }
        let mut pending = self.pending.lock();
        let list = pending.entry(endpoint.id.address()).or_default();
        list.retain(|(a, _)| &**a != adapter);
        list.push((Arc::from(adapter), Instant::now()));
    }

    fn on_completed(&self, completion: &Completion<'_>) {
        self.ranking.on_completed(completion);
    }

    fn on_endpoints_changed(&self, endpoints: &[EndpointId]) {
        self.ranking.on_endpoints_changed(endpoints);
        let keep: std::collections::HashSet<SocketAddr> =
            endpoints.iter().map(EndpointId::address).collect();
        self.pending
            .lock()
            .retain(|address, _| keep.contains(address));
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            indexed_blocks: Some(self.ranking.cache.index.stats().blocks as u64),
        }
    }

    fn debug_state(&self) -> serde_json::Value {
        let pending: usize = self.pending.lock().values().map(Vec::len).sum();
        let mut state = self.ranking.debug_state();
        state["pending_ttl_ms"] = (self.pending_ttl.as_millis() as u64).into();
        state["pending_adapters"] = pending.into();
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointMetrics, LoraState};
    use crate::testing::{pool_of, request, with_metrics};

    fn lora(running: &[&str], waiting: &[&str], waiting_requests: u32) -> EndpointMetrics {
        EndpointMetrics {
            waiting: waiting_requests,
            running: 8,
            kv_usage: 0.2,
            model_name: Some("base".into()),
            lora: Some(LoraState {
                max_loras: 2,
                running: running.iter().map(|s| s.to_string()).collect(),
                waiting: waiting.iter().map(|s| s.to_string()).collect(),
            }),
            ..Default::default()
        }
    }

    fn strategy() -> LoraAffinity {
        LoraAffinity::from_config(&StrategyConfig::new()).unwrap()
    }

    #[test]
    fn resident_first_then_free_slot_then_full() {
        let (_ids, mut views) = pool_of(3);
        with_metrics(
            &mut views,
            &[
                lora(&["x", "y"], &[], 0),
                lora(&["x"], &[], 0),
                lora(&["a", "x"], &[], 0),
            ],
        );
        let headers = http::HeaderMap::new();
        let mut req = request(&headers);
        req.target_model = "a";
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(strategy().pick(&req, &pool).unwrap().as_slice(), &[2, 1, 0]);
        req.target_model = "b";
        assert_eq!(
            strategy().pick(&req, &pool).unwrap().first(),
            Some(1),
            "the only free slot"
        );
    }

    #[test]
    fn residency_yields_to_a_queue_longer_than_a_load_but_not_to_a_full_endpoint() {
        let (_ids, mut views) = pool_of(3);
        with_metrics(
            &mut views,
            &[
                lora(&["a"], &[], 4),
                lora(&["x"], &[], 0),
                lora(&["x", "y"], &[], 0),
            ],
        );
        let headers = http::HeaderMap::new();
        let mut req = request(&headers);
        req.target_model = "a";
        req.prompt_tokens = 1000;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        // Endpoint 0 has the adapter but 4 requests queued behind a batch of 8 (3 s to admit them
        // at the prior 6 s mean decode time): loading it into endpoint 1's free slot (100 ms) is
        // cheaper.
        assert_eq!(strategy().pick(&req, &pool).unwrap().as_slice(), &[1, 0, 2]);
        // Without a free slot anywhere else, waiting 3 s beats waiting for a slot to free (the
        // mean decode time, 6 s).
        with_metrics(
            &mut views,
            &[
                lora(&["a"], &[], 4),
                lora(&["x", "z"], &[], 0),
                lora(&["x", "y"], &[], 0),
            ],
        );
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(strategy().pick(&req, &pool).unwrap().first(), Some(0));
    }

    #[test]
    fn recent_dispatches_count_as_loading() {
        let (_ids, mut views) = pool_of(2);
        with_metrics(&mut views, &[lora(&[], &[], 0), lora(&[], &[], 0)]);
        let s = strategy();
        let headers = http::HeaderMap::new();
        let mut req = request(&headers);
        req.target_model = "a";
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let first = s.pick(&req, &pool).unwrap().first().unwrap();
        s.on_dispatched(&req, &views[first]);
        for _ in 0..20 {
            assert_eq!(s.pick(&req, &pool).unwrap().first(), Some(first));
        }
        // Two adapters loading fill endpoint `first` (max 2): a third goes elsewhere.
        req.target_model = "b";
        s.on_dispatched(&req, &views[first]);
        req.target_model = "c";
        assert_ne!(s.pick(&req, &pool).unwrap().first(), Some(first));
    }

    #[test]
    fn base_model_requests_use_load_only() {
        let (_ids, mut views) = pool_of(2);
        with_metrics(&mut views, &[lora(&["a"], &[], 5), lora(&[], &[], 0)]);
        let headers = http::HeaderMap::new();
        let mut req = request(&headers);
        req.target_model = "base";
        req.prompt_tokens = 1000;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(strategy().pick(&req, &pool).unwrap().first(), Some(1));
    }
}
