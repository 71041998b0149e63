//! The routing-strategy contract of the inference gateway.
//!
//! A *strategy* decides which endpoint of an `InferencePool` serves a request. The gateway parses
//! the request, resolves its model, builds a [`RequestView`] and a [`PoolView`] (endpoints with their
//! latest scraped metrics, the metrics' age and the gateway's own in-flight counts) and asks the
//! pool's strategy for [`Candidates`]: endpoints in preference order. The gateway checks them against
//! the pool ([`Candidates::resolve`]), dials the first and walks the list when a connection fails.
//!
//! This crate is pure: no I/O, no async runtime, no proxy or Kubernetes types. Strategies are
//! synchronous and must return in microseconds, because they run on the request path of every
//! inference request. That also makes them easy to test: build a view by hand, call
//! [`Strategy::pick`], assert the exact pick.
//!
//! Strategies are found by name in a [`Registry`]; that name is the strategy's only name. The pool
//! annotation `inference.networking.x-k8s.io/routing-strategy` names one; parameters come from
//! pool annotations under [`STRATEGY_PARAM_PREFIX`]. A third-party crate registers its own factory and the
//! gateway treats it exactly like a built-in one.

pub mod cost;
pub mod cost_ranking;
pub mod endpoint;
pub mod load;
pub mod load_scoring;
pub mod params;
pub mod prefix;
pub mod registry;
pub mod request;
pub mod scorers;
pub mod strategies;
pub mod strategy;

pub use endpoint::{CachedPrefix, EndpointId, EndpointMetrics, EndpointView, LoraState, PoolView};
pub use registry::{Registry, RegistryError, StrategyConfig, StrategyFactory};
pub use request::{Criticality, RequestView};
pub use strategy::{
    Candidates, Completion, ConfigError, DispatchedLoad, Inputs, NoEndpoint, Outcome, Resolved,
    Strategy, StrategyStats,
};

/// Pool annotation that names the routing strategy (ACK's key, kept for compatibility).
pub const ROUTING_STRATEGY_ANNOTATION: &str = "inference.networking.x-k8s.io/routing-strategy";

/// Pool annotations whose key starts with this prefix are strategy parameters: the rest of the key is
/// the parameter name, for example `strategy.inference-gateway.dev/tie-tolerance: "0.2"`.
pub const STRATEGY_PARAM_PREFIX: &str = "strategy.inference-gateway.dev/";

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for building views in tests.
    use crate::{EndpointId, EndpointView, RequestView};

    /// `n` endpoints at 10.0.0.1:8000, 10.0.0.2:8000, ... with no metrics and no load.
    pub(crate) fn pool_of(n: usize) -> (Vec<EndpointId>, Vec<EndpointView<'static>>) {
        let ids: Vec<EndpointId> = (0..n)
            .map(|i| {
                let addr = std::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 8000));
                EndpointId::new(addr, format!("pod-{i}"))
            })
            .collect();
        let leaked: &'static [EndpointId] = Box::leak(ids.clone().into_boxed_slice());
        let views = leaked
            .iter()
            .map(|id| EndpointView {
                id,
                metrics: None,
                metrics_age: None,
                in_flight: 0,
                in_flight_tokens: 0,
                in_flight_prefill: 0,
                in_flight_prefill_tokens: 0,
                in_flight_output_tokens: 0,
                prefill_elapsed: std::time::Duration::ZERO,
                dispatched_since_scrape: 0,
                cached_prefix: None,
            })
            .collect();
        (ids, views)
    }

    /// Give `views` fresh copies of `metrics` (leaked: test-only).
    pub(crate) fn with_metrics(
        views: &mut [EndpointView<'static>],
        metrics: &[crate::EndpointMetrics],
    ) {
        for (view, metrics) in views.iter_mut().zip(metrics) {
            view.metrics = Some(Box::leak(Box::new(metrics.clone())));
            view.metrics_age = Some(std::time::Duration::ZERO);
        }
    }

    /// A plain Standard request for `model`.
    pub(crate) fn request(headers: &http::HeaderMap) -> RequestView<'_> {
        RequestView {
            request_id: "test",
            model: "model",
            target_model: "model",
            priority: 0,
            prompt: None,
            prompt_tokens: 10,
            max_tokens: None,
            stream: false,
            headers,
        }
    }
}
