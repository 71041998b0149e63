//! The gateway's own Prometheus metrics, served on the admin listener's `/metrics`.
//!
//! One registry per process, created at start-up and shared by reference; every metric is
//! registered once here so names and labels live in one place. Label values come from the
//! configuration (route, pool, endpoint names), never from unbounded client input.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds: sub-millisecond proxy overhead up to hour-long streams.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Registry,
    /// Requests by listener port, backend kind and status code.
    pub requests: IntCounterVec,
    /// Request duration by listener port and backend kind.
    pub request_duration: HistogramVec,
    /// Time to the first response byte by listener port and backend kind.
    pub time_to_first_byte: HistogramVec,
    /// Upstream connection attempts by result (`ok`, `connect_error`, `reused_error`).
    pub upstream_attempts: IntCounterVec,
    /// Picks by pool, strategy and endpoint.
    pub picks: IntCounterVec,
    /// Failed metrics scrapes by endpoint and reason.
    pub scrape_errors: IntCounterVec,
    /// Duration of metrics scrapes.
    pub scrape_duration: Histogram,
    /// Requests rejected with 429 because their pool was saturated, by pool.
    pub sheds: IntCounterVec,
    /// Configuration reloads by result (`applied`, `rejected`, `unchanged`).
    pub config_reloads: IntCounterVec,
    /// Generation of the snapshot being served.
    pub snapshot_generation: IntGauge,
}

impl GatewayMetrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests handled, by listener port, backend kind and status.",
            ),
            &["port", "backend", "code"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from request start to the end of the response.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["port", "backend"],
        )
        .expect("valid metric");
        let time_to_first_byte = HistogramVec::new(
            HistogramOpts::new(
                "gateway_time_to_first_byte_seconds",
                "Time from request start to the first response body byte from the upstream.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["port", "backend"],
        )
        .expect("valid metric");
        let upstream_attempts = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_attempts_total",
                "Upstream connection attempts by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let picks = IntCounterVec::new(
            Opts::new(
                "gateway_picks_total",
                "Endpoints chosen for inference requests, by pool, strategy and endpoint.",
            ),
            &["pool", "strategy", "endpoint"],
        )
        .expect("valid metric");
        let scrape_errors = IntCounterVec::new(
            Opts::new(
                "gateway_scrape_errors_total",
                "Failed model-server metrics scrapes, by endpoint and reason.",
            ),
            &["endpoint", "reason"],
        )
        .expect("valid metric");
        let scrape_duration = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_scrape_duration_seconds",
                "Duration of model-server metrics scrapes.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid metric");
        let sheds = IntCounterVec::new(
            Opts::new(
                "gateway_sheds_total",
                "Sheddable requests rejected with 429 because their pool was saturated.",
            ),
            &["pool"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "gateway_config_reloads_total",
                "Configuration reloads by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let snapshot_generation = IntGauge::new(
            "gateway_snapshot_generation",
            "Generation of the routing snapshot being served.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(time_to_first_byte.clone()),
            Box::new(upstream_attempts.clone()),
            Box::new(picks.clone()),
            Box::new(scrape_errors.clone()),
            Box::new(scrape_duration.clone()),
            Box::new(sheds.clone()),
            Box::new(config_reloads.clone()),
            Box::new(snapshot_generation.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            request_duration,
            time_to_first_byte,
            upstream_attempts,
            picks,
            scrape_errors,
            scrape_duration,
            sheds,
            config_reloads,
            snapshot_generation,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let metrics = GatewayMetrics::new();
        metrics
            .requests
            .with_label_values(&["8081", "pool", "200"])
            .inc();
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains("gateway_requests_total{backend=\"pool\",code=\"200\",port=\"8081\"} 1"),
            "{text}"
        );
    }
}
