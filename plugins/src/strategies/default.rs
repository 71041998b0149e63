//! `DEFAULT`: load-aware routing on queue length, KV-cache usage and in-flight requests, with LoRA
//! residency as a tie-breaker for adapter requests.
//!
//! Every endpoint gets `queue-weight × queue score + kv-weight × KV score + in-flight-weight ×
//! in-flight score + lora-weight × LoRA score`, and the highest total wins; exact ties are broken
//! at random. Scores are those of [`crate::scorers`]:
//!
//! - **queue**: the scraped waiting count *plus the requests this gateway dispatched there since
//!   that scrape*, min-max normalised. Without the correction every request of a burst sees the
//!   same scrape and lands on the same emptiest endpoint (the herding the Inference Extension,
//!   Dynamo and SGLang's router all reported).
//! - **kv-cache**: `1 - kv_cache_usage_perc`. KV usage is what decides whether vLLM must queue
//!   or preempt; it is the signal the seed's picture shows.
//! - **in-flight**: the gateway's own in-flight count, min-max normalised. It is exact and never
//!   stale, so balance survives missing metrics.
//! - **lora-affinity**: 1 where the adapter runs, 0.8 where a slot is free, 0.6 where it waits.
//!
//! Endpoints whose metrics are missing or older than `stale-after-ms` score 0 on queue and KV: they
//! are used last, never first (a silent endpoint is not an empty one).
//!
//! | Parameter | Default | Why |
//! |---|---|---|
//! | `queue-weight` | 2 | The Inference Extension's default; waiting requests are direct TTFT |
//! | `kv-weight` | 2 | Same as the Extension; KV usage predicts preemption and queueing |
//! | `in-flight-weight` | 1 | Breaks ties between scrapes and keeps balancing without metrics |
//! | `lora-weight` | 1 | Enough to prefer a resident adapter among equally loaded endpoints |
//! | `stale-after-ms` | 200 | Four missed scrapes at the default 50 ms interval |

use crate::endpoint::PoolView;
use crate::load::LoadConfig;
use crate::load_scoring::LoadScoring;
use crate::params::Params;
use crate::registry::StrategyConfig;
use crate::request::RequestView;
use crate::strategy::{Candidates, ConfigError, NoEndpoint, Strategy};

/// The load-aware default strategy.
#[derive(Debug)]
pub struct DefaultStrategy {
    scoring: LoadScoring,
}

impl DefaultStrategy {
    /// Registry name.
    pub const NAME: &'static str = "DEFAULT";

    /// Build from parameters (see the module documentation).
    pub fn from_config(config: &StrategyConfig) -> Result<Self, ConfigError> {
        let mut params = Params::new(Self::NAME, config);
        let scoring = LoadScoring::from_params(&mut params)?;
        params.finish()?;
        Ok(Self { scoring })
    }
}

impl Strategy for DefaultStrategy {
    fn load_config(&self) -> LoadConfig {
        self.scoring.load
    }

    fn pick(
        &self,
        request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint> {
        Ok(self.scoring.score(request, pool)?.ranked())
    }

    fn debug_state(&self) -> serde_json::Value {
        serde_json::json!({
            "scorers": self.scoring.scorers.describe(),
            "stale_after_ms": self.scoring.load.stale_after.as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointMetrics;
    use crate::testing::{pool_of, request, with_metrics};

    #[test]
    fn picks_the_least_loaded_endpoint_and_counts_recent_dispatches() {
        let (_ids, mut views) = pool_of(3);
        let metrics = [
            EndpointMetrics {
                waiting: 3,
                kv_usage: 0.6,
                ..Default::default()
            },
            EndpointMetrics {
                waiting: 0,
                kv_usage: 0.2,
                ..Default::default()
            },
            EndpointMetrics {
                waiting: 1,
                kv_usage: 0.3,
                ..Default::default()
            },
        ];
        with_metrics(&mut views, &metrics);
        let headers = http::HeaderMap::new();
        let strategy = DefaultStrategy::from_config(&StrategyConfig::new()).unwrap();
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(
            strategy.pick(&request(&headers), &pool).unwrap().as_slice(),
            &[1, 2, 0]
        );
        // Five requests went to endpoint 1 since the scrape: it is no longer the emptiest.
        views[1].dispatched_since_scrape = 5;
        views[1].in_flight = 5;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(
            strategy.pick(&request(&headers), &pool).unwrap().first(),
            Some(2)
        );
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
        let headers = http::HeaderMap::new();
        let strategy = DefaultStrategy::from_config(&StrategyConfig::new()).unwrap();
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(
            strategy.pick(&request(&headers), &pool).unwrap().as_slice(),
            &[1, 0]
        );
    }

    #[test]
    fn without_metrics_in_flight_balances() {
        let (_ids, mut views) = pool_of(3);
        views[0].in_flight = 4;
        views[1].in_flight = 1;
        views[2].in_flight = 2;
        let headers = http::HeaderMap::new();
        let strategy = DefaultStrategy::from_config(&StrategyConfig::new()).unwrap();
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(
            strategy.pick(&request(&headers), &pool).unwrap().as_slice(),
            &[1, 2, 0]
        );
    }

    #[test]
    fn parameters_are_validated() {
        let config: StrategyConfig = [("kv-weight".to_owned(), "-1".to_owned())].into();
        assert_eq!(
            DefaultStrategy::from_config(&config).unwrap_err().reason,
            "must be between 0 and 100"
        );
        let config: StrategyConfig = [("prefix-weight".to_owned(), "3".to_owned())].into();
        assert!(
            DefaultStrategy::from_config(&config)
                .unwrap_err()
                .reason
                .starts_with("unknown parameter of DEFAULT")
        );
    }
}
