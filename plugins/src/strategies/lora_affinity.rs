//! `LORA_AFFINITY`: adapter requests go where the adapter is already loaded, then where it can be
//! loaded without evicting another, and only then anywhere; load decides within each tier.
//!
//! Every endpoint gets a residency tier for the request's target model:
//!
//! | Tier | Meaning |
//! |---|---|
//! | 0 | the adapter has running requests there, or this gateway sent it there in the last `pending-ttl-ms` (it is loading) |
//! | 1 | the adapter has waiting requests there |
//! | 2 | a slot is free: fewer distinct adapters running or pending than `max_lora` |
//! | 3 | every slot is taken by other adapters |
//!
//! The best tier that has an endpoint inside the load window (see
//! [`crate::load::LoadWindow`]) wins, and the best-scoring (DEFAULT scores) endpoint of that tier
//! inside the window goes first. If no endpoint of tiers 0-2 is inside the window, the best tier
//! 0-2 endpoint outside it is still preferred over tier 3: an endpoint never takes more distinct
//! adapters than its `max_lora` while another endpoint has room, because swapping adapters in and
//! out of a full batch costs every request on it. The "sent it there" memory closes the gap
//! between dispatch and the next scrape, when the adapter is loading but not yet reported.
//!
//! Requests for a base model (a name an endpoint reports as its `model_name`) are ranked by DEFAULT
//! scores alone.
//!
//! | Parameter | Default | Why |
//! |---|---|---|
//! | DEFAULT's weights and `stale-after-ms` | as DEFAULT, except `lora-weight` 0 | load order within a tier; tiers replace the LoRA score |
//! | `window-requests` | 8 | as PREFIX_CACHE: a few more sequences cost less than an adapter swap |
//! | `window-ratio` | 0.5 | the window grows with load |
//! | `pending-ttl-ms` | 2000 | An adapter load takes about 100 ms cold; two seconds covers it and many scrapes, then the scraped state is the truth again |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::endpoint::{EndpointId, EndpointView, PoolView};
use crate::load::{LoadConfig, LoadWindow};
use crate::load_scoring::LoadScoring;
use crate::params::Params;
use crate::registry::StrategyConfig;
use crate::request::RequestView;
use crate::scorers::is_base_model;
use crate::strategy::{Candidates, ConfigError, NoEndpoint, Strategy};

/// The adapter-affinity strategy.
#[derive(Debug)]
pub struct LoraAffinity {
    scoring: LoadScoring,
    window: LoadWindow,
    pending_ttl: Duration,
    /// Adapters this gateway recently sent to each endpoint.
    pending: Mutex<HashMap<SocketAddr, Vec<(String, Instant)>>>,
}

impl LoraAffinity {
    /// Registry name.
    pub const NAME: &'static str = "LORA_AFFINITY";

    /// Build from parameters (see the module documentation).
    pub fn from_config(config: &StrategyConfig) -> Result<Self, ConfigError> {
        let mut config = config.clone();
        config
            .entry("lora-weight".into())
            .or_insert_with(|| "0".into());
        let mut params = Params::new(Self::NAME, &config);
        let scoring = LoadScoring::from_params(&mut params)?;
        let window = LoadWindow::from_params(&mut params)?;
        let pending_ttl = params.millis("pending-ttl-ms", Duration::from_secs(2), 1..=600_000)?;
        params.finish()?;
        Ok(Self {
            scoring,
            window,
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
    fn load_config(&self) -> LoadConfig {
        self.scoring.load
    }

    fn pick(
        &self,
        request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint> {
        let scored = self.scoring.score(request, pool)?;
        let adapter = request.target_model;
        if is_base_model(pool, adapter) {
            return Ok(scored.ranked());
        }
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
        let in_window = scored.window_members(&self.window);
        let best_tier = (0..pool.len())
            .filter(|&i| in_window[i] && tiers[i] < 3)
            .map(|i| tiers[i])
            .min()
            .or_else(|| tiers.iter().copied().filter(|&t| t < 3).min())
            .unwrap_or(3);
        let mut order: Vec<usize> = scored.ranked().into_iter().collect();
        // Stable sort: the winning tier inside the window first, then by tier; DEFAULT order within.
        order.sort_by_key(|&i| {
            (
                !(tiers[i] == best_tier && in_window[i]),
                tiers[i] != best_tier,
                tiers[i],
            )
        });
        Ok(Candidates::new(order))
    }

    fn on_dispatched(&self, request: &RequestView<'_>, endpoint: &EndpointView<'_>) {
        let adapter = request.target_model;
        if endpoint.metrics.and_then(|m| m.model_name.as_deref()) == Some(adapter) {
            return;
        }
        let mut pending = self.pending.lock();
        let list = pending.entry(endpoint.id.address()).or_default();
        list.retain(|(a, _)| a != adapter);
        list.push((adapter.to_owned(), Instant::now()));
    }

    fn on_endpoints_changed(&self, endpoints: &[EndpointId]) {
        let keep: std::collections::HashSet<SocketAddr> =
            endpoints.iter().map(EndpointId::address).collect();
        self.pending
            .lock()
            .retain(|address, _| keep.contains(address));
    }

    fn debug_state(&self) -> serde_json::Value {
        let pending: usize = self.pending.lock().values().map(Vec::len).sum();
        serde_json::json!({
            "scorers": self.scoring.scorers.describe(),
            "window": self.window,
            "pending_ttl_ms": self.pending_ttl.as_millis() as u64,
            "pending_adapters": pending,
        })
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
                lora(&["x"], &[], 1),
                lora(&["a", "x"], &[], 2),
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
    fn residency_yields_to_the_window_but_never_overfills_slots() {
        let (_ids, mut views) = pool_of(3);
        with_metrics(
            &mut views,
            &[
                lora(&["a"], &[], 40),
                lora(&["x"], &[], 0),
                lora(&["x", "y"], &[], 0),
            ],
        );
        let headers = http::HeaderMap::new();
        let mut req = request(&headers);
        req.target_model = "a";
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        // Endpoint 0 has the adapter but 40 queued: endpoint 1's free slot is inside the window.
        assert_eq!(strategy().pick(&req, &pool).unwrap().as_slice(), &[1, 0, 2]);
        // With no free slot inside the window, the resident endpoint still beats a full one.
        with_metrics(
            &mut views,
            &[
                lora(&["a"], &[], 40),
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
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(strategy().pick(&req, &pool).unwrap().first(), Some(1));
    }
}
