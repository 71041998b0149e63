//! `LORA_AFFINITY`: adapter requests go where the adapter is loaded, unless the queue there costs
//! more than loading it elsewhere.
//!
//! Every endpoint gets the latency cost model's predicted time to first token ([`crate::cost`],
//! as DEFAULT) plus what the adapter would cost there, by residency tier:
//!
//! | Tier | Meaning | Added cost |
//! |---|---|---|
//! | 0 | the adapter has running requests there, or this gateway sent it there in the last `pending-ttl-ms` (it is loading) | none |
//! | 1 | the adapter has waiting requests there | `adapter-load-ms` |
//! | 2 | a slot is free: fewer distinct adapters running or pending than `max_lora` | `adapter-load-ms` |
//! | 3 | every slot is taken by other adapters | `adapter-load-ms` + the mean decode time of a request (learned), the wait for a slot to free |
//!
//! The lowest total wins, ties spread as in DEFAULT: an adapter load is weighed against the queue
//! it would avoid, so a resident adapter keeps its requests until its endpoint's queue is longer
//! than a load, and an endpoint takes an adapter beyond its `max_lora` only when every endpoint
//! with room is a slot's wait busier. The "sent it there" memory closes the gap between dispatch
//! and the next scrape, when the adapter is loading but not yet reported.
//!
//! Requests for a base model (a name an endpoint reports as its `model_name`) have no adapter
//! cost: they are ranked as DEFAULT ranks them.
//!
//! | Parameter | Default | Why |
//! |---|---|---|
//! | [`crate::cost_ranking`]'s | as DEFAULT | predictions |
//! | `adapter-load-ms` | 100 | Loading a LoRA adapter from disk takes about 100 ms on vLLM (7 ms from its CPU cache); the larger figure, since the gateway cannot see the CPU cache |
//! | `pending-ttl-ms` | 2000 | An adapter load takes about 100 ms cold; two seconds covers it and many scrapes, then the scraped state is the truth again |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cost_ranking::CostRanking;
use crate::endpoint::{EndpointId, EndpointView, PoolView};
use crate::load::LoadConfig;
use crate::params::Params;
use crate::registry::StrategyConfig;
use crate::request::RequestView;
use crate::scorers::is_base_model;
use crate::strategy::{
    Candidates, Completion, ConfigError, Inputs, NoEndpoint, Strategy, StrategyStats,
};

/// The adapter-affinity strategy.
#[derive(Debug)]
pub struct LoraAffinity {
    ranking: CostRanking,
    adapter_load: f64,
    pending_ttl: Duration,
    /// Adapters this gateway recently sent to each endpoint.
    pending: Mutex<HashMap<SocketAddr, Vec<(String, Instant)>>>,
}

impl LoraAffinity {
    /// Registry name.
    pub const NAME: &'static str = "LORA_AFFINITY";

    /// Build from parameters (see the module documentation).
    pub fn from_config(config: &StrategyConfig) -> Result<Self, ConfigError> {
        let mut params = Params::new(Self::NAME, config);
        let ranking = CostRanking::from_params(&mut params)?;
        let adapter_load = params.f64("adapter-load-ms", 100.0, 0.0..=600_000.0)? / 1e3;
        let pending_ttl = params.millis("pending-ttl-ms", Duration::from_secs(2), 1..=600_000)?;
        params.finish()?;
        Ok(Self {
            ranking,
            adapter_load,
            pending_ttl,
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn tier(
        &self,
        endpoint: &EndpointView<'_>,
        adapter: &str,
        pending: &[(String, Instant)],
    ) -> u8 {
        let pending_here = |name: &str| pending.iter().any(|(a, _)| a == name);
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
            .filter(|(a, _)| !lora.is_running(a))
            .map(|(a, _)| a.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if ((lora.running.len() + extra) as u64) < u64::from(lora.max_loras) {
            2
        } else {
            3
        }
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
        let mut ranked = self.ranking.rank(request, pool)?;
        let adapter = request.target_model;
        if !is_base_model(pool, adapter) {
            let now = Instant::now();
            let tiers: Vec<u8> = {
                let mut pending = self.pending.lock();
                pool.endpoints
                    .iter()
                    .map(|e| {
                        let list = pending.entry(e.id.address()).or_default();
                        list.retain(|(_, at)| now.duration_since(*at) < self.pending_ttl);
                        self.tier(e, adapter, list)
                    })
                    .collect()
            };
            let slot_wait = self.ranking.model.mean_decode_seconds();
            for (i, tier) in tiers.into_iter().enumerate() {
                let cost = match tier {
                    0 => 0.0,
                    1 | 2 => self.adapter_load,
                    _ => self.adapter_load + slot_wait,
                };
                ranked.add_cost(i, cost);
            }
        }
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
        list.retain(|(a, _)| a != adapter);
        list.push((adapter.to_owned(), Instant::now()));
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
        state["adapter_load_ms"] = (self.adapter_load * 1e3).into();
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
