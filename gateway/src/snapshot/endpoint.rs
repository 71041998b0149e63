//! Per-endpoint runtime state that outlives snapshots: in-flight counts and scraped metrics.
//!
//! A snapshot rebuild reuses the [`Endpoint`] of every address that stays in a pool, so a reload
//! never loses the load it has counted, and a request that started on an older snapshot releases its
//! count on the very object the new snapshot reads. Everything here is atomics or `ArcSwap`: the
//! request path never takes a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use plugins::{EndpointId, EndpointMetrics, EndpointView};

use crate::scrape::Engine;

/// Metrics of one endpoint with the time they were scraped.
#[derive(Debug, Clone)]
pub struct ScrapedMetrics {
    /// The values.
    pub metrics: EndpointMetrics,
    /// When the scrape completed.
    pub at: Instant,
}

/// One model-server endpoint (`podIP:port`) of a pool.
#[derive(Debug)]
pub struct Endpoint {
    /// Identity.
    pub id: EndpointId,
    /// The metric dialect its `/metrics` speaks.
    pub engine: Engine,
    in_flight: AtomicU32,
    in_flight_tokens: AtomicU64,
    dispatched_total: AtomicU64,
    dispatched_since_scrape: AtomicU32,
    metrics: ArcSwapOption<ScrapedMetrics>,
}

impl Endpoint {
    /// A fresh endpoint with no load and no metrics.
    pub fn new(id: EndpointId, engine: Engine) -> Self {
        Self {
            id,
            engine,
            in_flight: AtomicU32::new(0),
            in_flight_tokens: AtomicU64::new(0),
            dispatched_total: AtomicU64::new(0),
            dispatched_since_scrape: AtomicU32::new(0),
            metrics: ArcSwapOption::empty(),
        }
    }

    /// Requests dispatched here and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Estimated prompt tokens of those requests.
    pub fn in_flight_tokens(&self) -> u64 {
        self.in_flight_tokens.load(Ordering::Relaxed)
    }

    /// Requests ever dispatched here.
    pub fn dispatched_total(&self) -> u64 {
        self.dispatched_total.load(Ordering::Relaxed)
    }

    /// Requests dispatched since the last scrape was published.
    pub fn dispatched_since_scrape(&self) -> u32 {
        self.dispatched_since_scrape.load(Ordering::Relaxed)
    }

    /// The latest scraped metrics.
    pub fn metrics(&self) -> Option<Arc<ScrapedMetrics>> {
        self.metrics.load_full()
    }

    /// Publish a new scrape; the dispatched-since-scrape count starts over.
    pub fn publish_metrics(&self, scraped: ScrapedMetrics) {
        self.metrics.store(Some(Arc::new(scraped)));
        self.dispatched_since_scrape.store(0, Ordering::Relaxed);
    }

    /// Count a request as in flight here until the returned guard is dropped.
    pub fn dispatch(self: &Arc<Self>, tokens: u64) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_tokens.fetch_add(tokens, Ordering::Relaxed);
        self.dispatched_total.fetch_add(1, Ordering::Relaxed);
        self.dispatched_since_scrape.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: Arc::clone(self),
            tokens,
        }
    }
}

/// A request counted in flight on an endpoint; dropping it releases the count, on every path.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    tokens: u64,
}

impl InFlight {
    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.endpoint
            .in_flight_tokens
            .fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

/// Views of `endpoints` for a strategy, borrowing from `metrics` (one load per endpoint).
pub fn endpoint_views<'a>(
    endpoints: &'a [Arc<Endpoint>],
    metrics: &'a [Option<Arc<ScrapedMetrics>>],
    now: Instant,
) -> Vec<EndpointView<'a>> {
    endpoints
        .iter()
        .zip(metrics)
        .map(|(endpoint, scraped)| EndpointView {
            id: &endpoint.id,
            metrics: scraped.as_ref().map(|s| &s.metrics),
            metrics_age: scraped
                .as_ref()
                .map(|s| now.saturating_duration_since(s.at)),
            in_flight: endpoint.in_flight(),
            in_flight_tokens: endpoint.in_flight_tokens(),
            dispatched_since_scrape: endpoint.dispatched_since_scrape(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_released_when_the_guard_drops() {
        let endpoint = Arc::new(Endpoint::new(
            EndpointId::new("127.0.0.1:1".parse().unwrap(), "e"),
            Engine::Vllm,
        ));
        let a = endpoint.dispatch(100);
        let b = endpoint.dispatch(50);
        assert_eq!(
            (endpoint.in_flight(), endpoint.in_flight_tokens()),
            (2, 150)
        );
        drop(a);
        assert_eq!((endpoint.in_flight(), endpoint.in_flight_tokens()), (1, 50));
        drop(b);
        assert_eq!((endpoint.in_flight(), endpoint.in_flight_tokens()), (0, 0));
        assert_eq!(endpoint.dispatched_total(), 2);
        assert_eq!(endpoint.dispatched_since_scrape(), 2);
        endpoint.publish_metrics(ScrapedMetrics {
            metrics: EndpointMetrics::default(),
            at: Instant::now(),
        });
        assert_eq!(endpoint.dispatched_since_scrape(), 0);
    }
}
