//! `DEFAULT`: each request goes where its predicted time to first token is lowest.
//!
//! Per endpoint, the latency cost model ([`crate::cost`]) predicts the time to first token: the
//! prefill work already in flight there (credited when this gateway dispatches, released at each
//! request's first token, corrected by the scraped queue), this request's own prefill (its prompt
//! minus what the endpoint has cached of it, from the blocks this gateway sent there), one engine
//! step of the batch it joins, and the KV-cache pressure. Prefill rates and step times are learned
//! per endpoint from completions, so a faster pod takes more.
//!
//! The endpoint with the lowest prediction wins; predictions within `tie-tolerance` of the best
//! (plus one engine step) are equally good, and among them the endpoint with the lowest measured
//! terms (KV pressure and the step of its batch) goes first, then the one with the fewest requests
//! in flight, at random among equals: at light load this is round-robin's even spread (and evens
//! out KV usage), under load it is the shortest predicted wait. Endpoints whose metrics are missing or older than
//! `stale-after-ms` are ranked after every fresh one (a silent endpoint is not an empty one). The
//! rest of the pool follows by prediction, for failover.
//!
//! Why not weighted scores: the earlier weighted queue/KV/in-flight scores, min-max normalised,
//! turned a one-request difference into a whole point and chased differences between scrapes;
//! measured, they trailed round-robin on uniform requests. Predictions in seconds compare a
//! queued prefill with a cached prefix on one scale.
//!
//! Parameters: those of [`crate::cost_ranking`] (the cost model's priors, `stale-after-ms`,
//! `tie-tolerance`, the prefix index's `block-bytes`, `max-blocks`, `index-capacity`).

use crate::cost_ranking::CostRanking;
use crate::endpoint::{EndpointId, EndpointView, PoolView};
use crate::load::LoadConfig;
use crate::params::Params;
use crate::registry::StrategyConfig;
use crate::request::RequestView;
use crate::strategy::{
    Candidates, Completion, ConfigError, Inputs, NoEndpoint, Strategy, StrategyStats,
};

/// The default strategy: lowest predicted time to first token.
#[derive(Debug)]
pub struct DefaultStrategy {
    ranking: CostRanking,
}

impl DefaultStrategy {
    /// Registry name.
    pub const NAME: &'static str = "DEFAULT";

    /// Build from parameters (see the module documentation).
    pub fn from_config(config: &StrategyConfig) -> Result<Self, ConfigError> {
        let mut params = Params::new(Self::NAME, config);
        let ranking = CostRanking::from_params(&mut params)?;
        params.finish()?;
        Ok(Self { ranking })
    }

    /// The shared ranking state (for tests and benches).
    pub fn ranking(&self) -> &CostRanking {
        &self.ranking
    }
}

impl Strategy for DefaultStrategy {
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
        Ok(ranked.candidates(ranked.spread_best()))
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
            indexed_blocks: Some(self.ranking.cache.index.stats().blocks as u64),
        }
    }

    fn debug_state(&self) -> serde_json::Value {
        self.ranking.debug_state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointMetrics;
    use crate::testing::{pool_of, request, with_metrics};

    fn strategy() -> DefaultStrategy {
        DefaultStrategy::from_config(&StrategyConfig::new()).unwrap()
    }

    fn pick(strategy: &DefaultStrategy, views: &[EndpointView<'_>]) -> Vec<usize> {
        let headers = http::HeaderMap::new();
        let pool = PoolView {
            name: "p",
            endpoints: views,
        };
        strategy
            .pick(&request(&headers), &pool)
            .unwrap()
            .as_slice()
            .to_vec()
    }

    #[test]
    fn picks_the_shortest_predicted_wait_and_counts_prefill_in_flight() {
        let (_ids, mut views) = pool_of(3);
        let metrics = [
            EndpointMetrics {
                kv_usage: 0.6,
                ..Default::default()
            },
            EndpointMetrics {
                kv_usage: 0.2,
                ..Default::default()
            },
            EndpointMetrics {
                kv_usage: 0.3,
                ..Default::default()
            },
        ];
        with_metrics(&mut views, &metrics);
        // KV pressure: 0.225 s, 0.0375 s, 0.064 s; within 10% + a step of each other only 1 and 2.
        let s = strategy();
        let first = pick(&s, &views)[0];
        assert!(first == 1 || first == 2, "{first}");
        // Endpoint 1 has 5,000 tokens of prefill in flight (1 s at the prior rate): endpoint 2.
        views[1].in_flight = 5;
        views[1].in_flight_prefill = 5;
        views[1].in_flight_prefill_tokens = 5000;
        assert_eq!(pick(&s, &views), vec![2, 0, 1]);
    }

    #[test]
    fn stale_endpoints_come_last() {
        let (_ids, mut views) = pool_of(2);
        let metrics = [
            EndpointMetrics::default(),
            EndpointMetrics {
                waiting: 4,
                kv_usage: 0.7,
                ..Default::default()
            },
        ];
        with_metrics(&mut views, &metrics);
        views[0].metrics_age = Some(std::time::Duration::from_secs(5));
        assert_eq!(pick(&strategy(), &views), vec![1, 0]);
    }

    #[test]
    fn without_metrics_prefill_in_flight_balances() {
        let (_ids, mut views) = pool_of(3);
        for (view, tokens) in views.iter_mut().zip([4000, 1000, 2500]) {
            view.in_flight = 1;
            view.in_flight_prefill = 1;
            view.in_flight_prefill_tokens = tokens;
        }
        assert_eq!(pick(&strategy(), &views), vec![1, 2, 0]);
    }

    #[test]
    fn idle_pools_spread_like_round_robin() {
        let (_ids, mut views) = pool_of(4);
        with_metrics(&mut views, &vec![EndpointMetrics::default(); 4]);
        let s = strategy();
        let mut counts = [0u32; 4];
        for _ in 0..40 {
            let first = pick(&s, &views)[0];
            counts[first] += 1;
            // The request runs there: one more in flight, past its first token.
            views[first].in_flight += 1;
        }
        assert_eq!(counts, [10; 4]);
    }

    #[test]
    fn an_adapter_goes_where_it_is_loaded_when_queues_are_even() {
        let (_ids, mut views) = pool_of(3);
        let lora = |running: &[&str]| EndpointMetrics {
            model_name: Some("base".into()),
            lora: Some(crate::LoraState {
                max_loras: 1,
                running: running.iter().map(|s| s.to_string()).collect(),
                waiting: vec![],
            }),
            ..Default::default()
        };
        with_metrics(&mut views, &[lora(&["x"]), lora(&[]), lora(&["a"])]);
        let headers = http::HeaderMap::new();
        let mut req = request(&headers);
        req.target_model = "a";
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        // Resident on 2; a free slot on 1 (one load); 0's only slot holds another adapter.
        assert_eq!(strategy().pick(&req, &pool).unwrap().as_slice(), &[2, 1, 0]);
        // Base-model requests pay no adapter cost: the three are equal and share the traffic.
        req.target_model = "base";
        let s = strategy();
        let firsts: std::collections::HashSet<usize> = (0..60)
            .map(|_| s.pick(&req, &pool).unwrap().first().unwrap())
            .collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn parameters_are_validated() {
        let config: StrategyConfig = [("tie-tolerance".to_owned(), "-1".to_owned())].into();
        assert_eq!(
            DefaultStrategy::from_config(&config).unwrap_err().reason,
            "must be between 0 and 10"
        );
        let config: StrategyConfig = [("queue-weight".to_owned(), "3".to_owned())].into();
        assert!(
            DefaultStrategy::from_config(&config)
                .unwrap_err()
                .reason
                .starts_with("unknown parameter of DEFAULT")
        );
    }
}
