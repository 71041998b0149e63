//! Built-in strategies.
//!
//! `ROUND_ROBIN` and `RANDOM` ignore load: they are baselines, and what a plain Kubernetes Service
//! does. `DEFAULT`, `PREFIX_CACHE` and `LORA_AFFINITY` are built from the scorers, load estimates
//! and prefix index of this crate on the shared skeleton of [`crate::load_scoring`]; each
//! documents its algorithm and every parameter in its module header.

pub mod default;
pub mod lora_affinity;
pub mod prefix_cache;
mod random;
mod round_robin;

pub use crate::load_scoring::LoadScoring;
pub use default::DefaultStrategy;
pub use lora_affinity::LoraAffinity;
pub use prefix_cache::PrefixCache;
pub use random::Random;
pub use round_robin::RoundRobin;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    use crate::PoolView;
    use crate::endpoint::{EndpointMetrics, LoraState};
    use crate::load::{LoadConfig, pool_saturation};
    use crate::registry::{Registry, StrategyConfig};
    use crate::testing::{pool_of, request, with_metrics};

    /// A pool's `stale-after-ms` reaches the strategy's load configuration, which is what the
    /// gateway's saturation check uses: metrics 500 ms old are stale by default (the pool counts
    /// as saturated) and fresh for a pool that allows a second.
    #[test]
    fn load_config_is_the_pools_own() {
        let (_ids, mut views) = pool_of(2);
        with_metrics(
            &mut views,
            &[EndpointMetrics::default(), EndpointMetrics::default()],
        );
        for view in &mut views {
            view.metrics_age = Some(Duration::from_millis(500));
        }
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let config: StrategyConfig = [("stale-after-ms".to_owned(), "1000".to_owned())].into();
        let registry = Registry::with_builtins();
        for name in ["DEFAULT", "PREFIX_CACHE", "LORA_AFFINITY"] {
            let strategy = registry.build(name, &config).unwrap();
            let own = strategy.load_config();
            assert_eq!(
                own,
                LoadConfig {
                    stale_after: Duration::from_secs(1),
                    ..LoadConfig::default()
                },
                "{name}"
            );
            assert_eq!(pool_saturation(&pool, &own), 0.0, "{name}");
            let defaults = registry.build(name, &StrategyConfig::new()).unwrap();
            assert_eq!(defaults.load_config(), LoadConfig::default(), "{name}");
            assert!(
                pool_saturation(&pool, &defaults.load_config()) >= 1.0,
                "{name}"
            );
        }
        for name in ["ROUND_ROBIN", "RANDOM"] {
            let strategy = registry.build(name, &StrategyConfig::new()).unwrap();
            assert_eq!(strategy.load_config(), LoadConfig::default(), "{name}");
        }
    }

    proptest! {
        /// Whatever the metrics and loads, every built-in strategy returns each endpoint of the
        /// pool view (all eligible) at most once, and at least one.
        #[test]
        fn picks_are_endpoints_of_the_pool(
            n in 1usize..12,
            waiting in proptest::collection::vec(0u32..50, 12),
            kv in proptest::collection::vec(0.0f64..1.0, 12),
            stale in proptest::collection::vec(any::<bool>(), 12),
            in_flight in proptest::collection::vec(0u32..20, 12),
            adapter in 0usize..4,
        ) {
            let (_ids, mut views) = pool_of(n);
            let metrics: Vec<EndpointMetrics> = (0..n)
                .map(|i| EndpointMetrics {
                    waiting: waiting[i],
                    kv_usage: kv[i],
                    lora: Some(LoraState { max_loras: 2, running: vec![format!("a{}", i % 3)], waiting: vec![] }),
                    model_name: Some("base".into()),
                    ..Default::default()
                })
                .collect();
            for (i, view) in views.iter_mut().enumerate() {
                view.metrics = Some(Box::leak(Box::new(metrics[i].clone())));
                view.metrics_age = Some(std::time::Duration::from_millis(if stale[i] { 5_000 } else { 10 }));
                view.in_flight = in_flight[i];
                view.dispatched_since_scrape = in_flight[i] / 2;
            }
            let pool = PoolView { name: "p", endpoints: &views };
            let headers = http::HeaderMap::new();
            let mut req = request(&headers);
            let target = format!("a{adapter}");
            req.target_model = &target;
            let prompt = "a shared document ".repeat(40);
            req.prompt = Some(&prompt);
            let registry = Registry::with_builtins();
            for name in registry.names() {
                let strategy = registry.build(name, &StrategyConfig::new()).unwrap();
                let picked = strategy.pick(&req, &pool).unwrap();
                prop_assert!(!picked.is_empty(), "{name} picked nothing");
                let mut seen = picked.as_slice().to_vec();
                prop_assert!(seen.iter().all(|&i| i < n), "{name} picked outside the pool");
                seen.sort_unstable();
                seen.dedup();
                prop_assert_eq!(seen.len(), picked.len(), "{} listed an endpoint twice", name);
                strategy.on_dispatched(&req, &views[picked.first().unwrap()]);
            }
        }
    }
}
