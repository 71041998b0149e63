//! The gateway's own Prometheus metrics, served on the admin listener's `/metrics`.
//!
//! Names follow the Gateway API Inference Extension's endpoint picker where it has one
//! (`inference_model_*`, `inference_pool_*`, `inference_extension_*`), so its dashboards and alerts
//! work against this gateway, plus `gateway_*` metrics for what only a proxy sees (picks per
//! endpoint, retries, sheds, scrapes, time to first token). Label values come from configuration
//! (model names declared by InferenceModels, pools, endpoints) or from a small fixed set (status
//! classes), never from raw client input: a request for an undeclared model is labelled
//! `model_name=""` in a pool that declares models.
//!
//! Pool gauges are not updated on the request path: they are computed from the current snapshot
//! when `/metrics` is scraped ([`GatewayMetrics::render`]).

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector,
};

use crate::snapshot::Snapshot;

/// Latency buckets in seconds: sub-millisecond proxy overhead up to hour-long streams.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Time to first token: vLLM's own buckets (`vllm:time_to_first_token_seconds`), so the two
/// histograms can be compared bucket by bucket.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// Time per output token: vLLM's inter-token latency buckets.
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// Sizes in bytes: a short chat turn up to the 16 MiB body limit.
const SIZE_BUCKETS: &[f64] = &[
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];
/// Token counts.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
    32768.0, 65536.0, 131_072.0,
];
/// Scheduler (pick) durations, in seconds.
const PICK_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.0025,
    0.01,
];

fn histogram_vec(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Registry,
    // Inference Extension names.
    /// `inference_model_request_total{model_name, target_model_name}`.
    pub model_requests: IntCounterVec,
    /// `inference_model_request_error_total{model_name, target_model_name, error_code}`.
    pub model_errors: IntCounterVec,
    /// `inference_model_request_duration_seconds{model_name, target_model_name}`.
    pub model_duration: HistogramVec,
    /// `normalized_time_per_output_token_seconds{model_name, target_model_name}`.
    pub model_ntpot: HistogramVec,
    /// `inference_model_request_sizes{model_name, target_model_name}` (bytes).
    pub model_request_sizes: HistogramVec,
    /// `inference_model_response_sizes{model_name, target_model_name}` (bytes).
    pub model_response_sizes: HistogramVec,
    /// `inference_model_input_tokens{model_name, target_model_name}`.
    pub model_input_tokens: HistogramVec,
    /// `inference_model_output_tokens{model_name, target_model_name}`.
    pub model_output_tokens: HistogramVec,
    /// `inference_model_running_requests{model_name}`.
    pub model_running: IntGaugeVec,
    /// `inference_pool_average_kv_cache_utilization{name}` (computed at scrape time).
    pub pool_kv: prometheus::GaugeVec,
    /// `inference_pool_average_queue_size{name}` (computed at scrape time).
    pub pool_queue: prometheus::GaugeVec,
    /// `inference_pool_per_pod_queue_size{name, model_server_pod}` (computed at scrape time).
    pub pool_pod_queue: prometheus::GaugeVec,
    /// `inference_pool_ready_pods{name}` (computed at scrape time).
    pub pool_ready: prometheus::GaugeVec,
    /// `inference_extension_scheduler_e2e_duration_seconds{pool, strategy}`: time to pick.
    pub pick_duration: HistogramVec,
    /// `inference_extension_prefix_indexer_size{pool}`: blocks in a PREFIX_CACHE index.
    pub prefix_index_size: prometheus::GaugeVec,
    /// `inference_extension_info{commit, build_ref}`.
    pub info: IntGaugeVec,
    // Gateway names.
    /// Requests by listener port, backend kind and status code.
    pub requests: IntCounterVec,
    /// Request duration by listener port and backend kind.
    pub request_duration: HistogramVec,
    /// Time to the first response body byte by listener port and backend kind.
    pub time_to_first_byte: HistogramVec,
    /// Time to the first token of inference responses, by model and target model.
    pub time_to_first_token: HistogramVec,
    /// Time per output token after the first, by model and target model.
    pub time_per_output_token: HistogramVec,
    /// Upstream connection attempts by result (`ok`, `connect_error`).
    pub upstream_attempts: IntCounterVec,
    /// Requests retried on another endpoint after a connection failure, by pool.
    pub retries: IntCounterVec,
    /// Picks by pool, strategy and endpoint.
    pub picks: IntCounterVec,
    /// Endpoint indexes outside the pool that a strategy returned (dropped), by pool and strategy.
    pub invalid_candidates: IntCounterVec,
    /// Exchanges with external endpoint pickers by pool and result (`routed`, `rejected`, or why
    /// the picker could not be used: `connect`, `timeout`, `status`, ...).
    pub picker_requests: IntCounterVec,
    /// Duration of the request part of an exchange with an external endpoint picker, by pool.
    pub picker_duration: HistogramVec,
    /// Failed metrics scrapes by endpoint and reason.
    pub scrape_errors: IntCounterVec,
    /// Duration of metrics scrapes.
    pub scrape_duration: Histogram,
    /// Age of each endpoint's metrics, by pool and endpoint (computed at scrape time).
    pub scrape_age: prometheus::GaugeVec,
    /// Requests rejected with 429 because their pool was saturated (the gateway's check of
    /// sheddable requests, or the strategy's own [`plugins::NoEndpoint::Shed`]), by pool.
    pub sheds: IntCounterVec,
    /// `inference_extension_flow_control_queue_size{inference_pool, priority}`: requests waiting
    /// in a pool's flow-control queue (computed at scrape time).
    pub flow_queue_size: prometheus::GaugeVec,
    /// `inference_extension_flow_control_queue_bytes{inference_pool}` (computed at scrape time).
    pub flow_queue_bytes: prometheus::GaugeVec,
    /// `inference_extension_flow_control_queue_oldest_age_seconds{inference_pool, priority}`: how
    /// long the oldest waiting request of a band has waited (computed at scrape time).
    pub flow_queue_age: prometheus::GaugeVec,
    /// `inference_extension_flow_control_request_queue_duration_seconds{inference_pool, priority,
    /// outcome}`: time in the queue, by how the wait ended (`dispatched`, `client-gone`, or the
    /// dropped reason the client was given); its `_count` counts admitted, rejected and expired
    /// requests.
    pub flow_queue_duration: HistogramVec,
    /// Inference requests in flight per endpoint (computed at scrape time).
    pub endpoint_in_flight: prometheus::GaugeVec,
    /// Prompt tokens of requests in flight per endpoint that have not produced their first token
    /// (the prefill work the cost model waits for; computed at scrape time).
    pub endpoint_prefill_tokens: prometheus::GaugeVec,
    /// Output tokens requests in flight per endpoint may still generate (their `max_tokens` less
    /// what streamed back; computed at scrape time).
    pub endpoint_output_tokens: prometheus::GaugeVec,
    /// Configuration reloads by result (`applied`, `rejected`).
    pub config_reloads: IntCounterVec,
    /// Generation of the snapshot being served.
    pub snapshot_generation: IntGauge,
    /// Client connections open on the proxy listeners.
    pub connections_open: IntGauge,
    /// Client connections refused at the connection cap.
    pub connections_refused: prometheus::IntCounter,
    /// Client connections closed because a request header did not arrive in time.
    pub header_timeouts: prometheus::IntCounter,
    /// `gateway_errors_total{reason}`: requests the gateway answered itself with an error.
    pub errors: IntCounterVec,
    /// Endpoints whose KV events are watched / arriving (computed at scrape time).
    pub kv_events_endpoints: IntGaugeVec,
    /// (endpoint, block) entries in the KV-event index (computed at scrape time).
    pub kv_events_index_blocks: IntGauge,
    /// KV-event subscriber work by kind (`batch`, `gap`, `replay`, `reset`, `malformed`,
    /// `orphan_block`; copied from the subscriber at scrape time).
    pub kv_events: IntCounterVec,
    /// `/tokenize` calls for KV-event matching, by pool and result.
    pub tokenizations: IntCounterVec,
}

const MODEL: &[&str] = &["model_name", "target_model_name"];

impl GatewayMetrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let metrics = Self {
            registry: Registry::new(),
            model_requests: counter_vec(
                "inference_model_request_total",
                "Inference requests, by model and target model.",
                MODEL,
            ),
            model_errors: counter_vec(
                "inference_model_request_error_total",
                "Inference requests that failed, by model, target model and error code.",
                &["model_name", "target_model_name", "error_code"],
            ),
            model_duration: histogram_vec(
                "inference_model_request_duration_seconds",
                "Inference request latency, from the request to the end of the response.",
                LATENCY_BUCKETS,
                MODEL,
            ),
            model_ntpot: histogram_vec(
                "normalized_time_per_output_token_seconds",
                "Request latency divided by the output tokens of the response.",
                TPOT_BUCKETS,
                MODEL,
            ),
            model_request_sizes: histogram_vec(
                "inference_model_request_sizes",
                "Request body sizes in bytes.",
                SIZE_BUCKETS,
                MODEL,
            ),
            model_response_sizes: histogram_vec(
                "inference_model_response_sizes",
                "Response body sizes in bytes.",
                SIZE_BUCKETS,
                MODEL,
            ),
            model_input_tokens: histogram_vec(
                "inference_model_input_tokens",
                "Prompt tokens, from the response's usage.",
                TOKEN_BUCKETS,
                MODEL,
            ),
            model_output_tokens: histogram_vec(
                "inference_model_output_tokens",
                "Completion tokens, from the response's usage.",
                TOKEN_BUCKETS,
                MODEL,
            ),
            model_running: IntGaugeVec::new(
                Opts::new(
                    "inference_model_running_requests",
                    "Inference requests in progress, by model.",
                ),
                &["model_name"],
            )
            .expect("valid metric"),
            pool_kv: gauge_vec(
                "inference_pool_average_kv_cache_utilization",
                "Average KV-cache usage of a pool's endpoints with fresh metrics.",
                &["name"],
            ),
            pool_queue: gauge_vec(
                "inference_pool_average_queue_size",
                "Average waiting requests of a pool's endpoints with fresh metrics.",
                &["name"],
            ),
            pool_pod_queue: gauge_vec(
                "inference_pool_per_pod_queue_size",
                "Waiting requests per model server.",
                &["name", "model_server_pod"],
            ),
            pool_ready: gauge_vec(
                "inference_pool_ready_pods",
                "Ready endpoints of a pool.",
                &["name"],
            ),
            pick_duration: histogram_vec(
                "inference_extension_scheduler_e2e_duration_seconds",
                "Time the pool's strategy took to rank endpoints for one request.",
                PICK_BUCKETS,
                &["pool", "strategy"],
            ),
            prefix_index_size: gauge_vec(
                "inference_extension_prefix_indexer_size",
                "Prompt blocks held in a PREFIX_CACHE index.",
                &["pool"],
            ),
            info: IntGaugeVec::new(
                Opts::new("inference_extension_info", "Build information."),
                &["commit", "build_ref"],
            )
            .expect("valid metric"),
            requests: counter_vec(
                "gateway_requests_total",
                "Requests handled, by listener port, backend kind and status.",
                &["port", "backend", "code"],
            ),
            request_duration: histogram_vec(
                "gateway_request_duration_seconds",
                "Time from request start to the end of the response.",
                LATENCY_BUCKETS,
                &["port", "backend"],
            ),
            time_to_first_byte: histogram_vec(
                "gateway_time_to_first_byte_seconds",
                "Time from request start to the first response body byte from the upstream.",
                LATENCY_BUCKETS,
                &["port", "backend"],
            ),
            time_to_first_token: histogram_vec(
                "gateway_time_to_first_token_seconds",
                "Time from request start to the first token passing the gateway (first event with a choice).",
                TTFT_BUCKETS,
                MODEL,
            ),
            time_per_output_token: histogram_vec(
                "gateway_time_per_output_token_seconds",
                "Time per output token after the first, as the gateway saw the stream.",
                TPOT_BUCKETS,
                MODEL,
            ),
            upstream_attempts: counter_vec(
                "gateway_upstream_attempts_total",
                "Upstream connection attempts by result.",
                &["result"],
            ),
            retries: counter_vec(
                "gateway_retries_total",
                "Requests moved to another endpoint after a connection failure, by pool.",
                &["pool"],
            ),
            picks: counter_vec(
                "gateway_picks_total",
                "Endpoints chosen for inference requests, by pool, strategy and endpoint.",
                &["pool", "strategy", "endpoint"],
            ),
            picker_requests: counter_vec(
                "gateway_endpoint_picker_requests_total",
                "Exchanges with external endpoint pickers (ext_proc), by pool and result: routed, rejected, or why the picker could not be used.",
                &["pool", "result"],
            ),
            picker_duration: histogram_vec(
                "gateway_endpoint_picker_duration_seconds",
                "Time from sending a request to an external endpoint picker to having its destination and body back, by pool.",
                LATENCY_BUCKETS,
                &["pool"],
            ),
            invalid_candidates: counter_vec(
                "gateway_strategy_invalid_candidates_total",
                "Endpoint indexes outside the pool returned by a strategy and dropped (a strategy bug), by pool and strategy.",
                &["pool", "strategy"],
            ),
            scrape_errors: counter_vec(
                "gateway_scrape_errors_total",
                "Failed model-server metrics scrapes, by endpoint and reason.",
                &["endpoint", "reason"],
            ),
            scrape_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "gateway_scrape_duration_seconds",
                    "Duration of model-server metrics scrapes.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )
            .expect("valid metric"),
            scrape_age: gauge_vec(
                "gateway_endpoint_metrics_age_seconds",
                "Age of each endpoint's latest scraped metrics.",
                &["pool", "endpoint"],
            ),
            errors: counter_vec(
                "gateway_errors_total",
                "Requests the gateway answered itself with an error (404, 413, 429, 502, ...), by reason.",
                &["reason"],
            ),
            sheds: counter_vec(
                "gateway_sheds_total",
                "Requests rejected with 429 because their pool was saturated: sheddable requests by the gateway's check, any request by the pool's strategy.",
                &["pool"],
            ),
            flow_queue_size: gauge_vec(
                "inference_extension_flow_control_queue_size",
                "Requests waiting in a pool's flow-control queue, by priority band.",
                &["inference_pool", "priority"],
            ),
            flow_queue_bytes: gauge_vec(
                "inference_extension_flow_control_queue_bytes",
                "Bytes of the request bodies waiting in a pool's flow-control queue.",
                &["inference_pool"],
            ),
            flow_queue_age: gauge_vec(
                "inference_extension_flow_control_queue_oldest_age_seconds",
                "How long the oldest request waiting in a priority band has waited.",
                &["inference_pool", "priority"],
            ),
            flow_queue_duration: histogram_vec(
                "inference_extension_flow_control_request_queue_duration_seconds",
                "Time requests spent in a pool's flow-control queue, by how the wait ended.",
                LATENCY_BUCKETS,
                &["inference_pool", "priority", "outcome"],
            ),
            endpoint_in_flight: gauge_vec(
                "gateway_endpoint_in_flight_requests",
                "Inference requests in flight per endpoint.",
                &["pool", "endpoint"],
            ),
            endpoint_prefill_tokens: gauge_vec(
                "gateway_endpoint_in_flight_prefill_tokens",
                "Prompt tokens the gateway expects each endpoint to prefill for requests that have not produced their first token.",
                &["pool", "endpoint"],
            ),
            endpoint_output_tokens: gauge_vec(
                "gateway_endpoint_in_flight_output_tokens",
                "Output tokens the gateway's requests in flight on each endpoint may still generate (their max_tokens, or 256, less the tokens streamed back).",
                &["pool", "endpoint"],
            ),
            config_reloads: counter_vec(
                "gateway_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            snapshot_generation: IntGauge::new(
                "gateway_snapshot_generation",
                "Generation of the routing snapshot being served.",
            )
            .expect("valid metric"),
            connections_open: IntGauge::new(
                "gateway_downstream_connections",
                "Client connections open on the proxy listeners.",
            )
            .expect("valid metric"),
            kv_events_endpoints: IntGaugeVec::new(
                Opts::new(
                    "gateway_kv_events_endpoints",
                    "Pool endpoints whose KV-cache events the gateway subscribes to (state=watched) and from which a batch has arrived since (state=receiving); the others are routed on the strategy's estimate.",
                ),
                &["state"],
            )
            .expect("valid metric"),
            kv_events_index_blocks: IntGauge::new(
                "gateway_kv_events_index_blocks",
                "(endpoint, block) entries in the index the KV-cache events build (bounded by --kv-events-max-blocks).",
            )
            .expect("valid metric"),
            kv_events: counter_vec(
                "gateway_kv_events_total",
                "KV-cache event subscriber work: batches applied, sequence gaps, replays asked for, endpoint resets (restart, clear, gap beyond replay), malformed messages, stored blocks whose parent was unknown.",
                &["kind"],
            ),
            tokenizations: counter_vec(
                "gateway_prompt_tokenizations_total",
                "Prompts tokenized by a pool's model server to match them against KV-cache events, by pool and result (ok, ids: the client sent token ids, or the failure: connection, status, answer, timeout).",
                &["pool", "result"],
            ),
            connections_refused: prometheus::IntCounter::new(
                "gateway_downstream_connections_refused_total",
                "Client connections refused with 503 because --max-connections were open.",
            )
            .expect("valid metric"),
            header_timeouts: prometheus::IntCounter::new(
                "gateway_downstream_header_timeouts_total",
                "Client connections closed because a request header did not arrive within \
                 --client-header-timeout (idle keep-alive connections included).",
            )
            .expect("valid metric"),
        };
        for collector in metrics.collectors() {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        metrics
            .info
            .with_label_values(&[
                option_env!("GATEWAY_COMMIT").unwrap_or("unknown"),
                env!("CARGO_PKG_VERSION"),
            ])
            .set(1);
        metrics
    }

    /// Update the gauges derived from `snapshot` (pool averages, per-endpoint queue, in-flight
    /// and metrics age, prefix index sizes).
    pub fn observe_snapshot(&self, snapshot: &Snapshot) {
        let now = Instant::now();
        for gauge in [
            &self.pool_kv,
            &self.pool_queue,
            &self.pool_pod_queue,
            &self.pool_ready,
            &self.scrape_age,
            &self.endpoint_in_flight,
            &self.endpoint_prefill_tokens,
            &self.endpoint_output_tokens,
            &self.prefix_index_size,
            &self.flow_queue_size,
            &self.flow_queue_bytes,
            &self.flow_queue_age,
        ] {
            gauge.reset();
        }
        for pool in snapshot.pools.values() {
            let name = pool.key.name.as_str();
            let qualified = pool.key.qualified_name();
            self.pool_ready
                .with_label_values(&[name])
                .set(pool.endpoints.len() as f64);
            // Zero-valued series for every known pool and endpoint, so rates read 0 rather than
            // nothing before the first event.
            self.retries.with_label_values(&[qualified.as_str()]);
            self.sheds.with_label_values(&[qualified.as_str()]);
            self.invalid_candidates
                .with_label_values(&[qualified.as_str(), pool.resolution.implementation.as_str()]);
            let (mut kv, mut queue, mut fresh) = (0.0, 0.0, 0usize);
            for endpoint in &pool.endpoints {
                let endpoint_name = endpoint.id.name();
                self.picks.with_label_values(&[
                    qualified.as_str(),
                    pool.resolution.implementation.as_str(),
                    endpoint_name,
                ]);
                self.endpoint_in_flight
                    .with_label_values(&[qualified.as_str(), endpoint_name])
                    .set(f64::from(endpoint.in_flight()));
                self.endpoint_prefill_tokens
                    .with_label_values(&[qualified.as_str(), endpoint_name])
                    .set(endpoint.in_flight_prefill_tokens() as f64);
                self.endpoint_output_tokens
                    .with_label_values(&[qualified.as_str(), endpoint_name])
                    .set(endpoint.in_flight_output_tokens() as f64);
                if let Some(scraped) = endpoint.metrics() {
                    let age = now.saturating_duration_since(scraped.at).as_secs_f64();
                    self.scrape_age
                        .with_label_values(&[qualified.as_str(), endpoint_name])
                        .set(age);
                    self.pool_pod_queue
                        .with_label_values(&[name, endpoint_name])
                        .set(f64::from(scraped.metrics.waiting));
                    kv += scraped.metrics.kv_usage;
                    queue += f64::from(scraped.metrics.waiting);
                    fresh += 1;
                }
            }
            if fresh > 0 {
                self.pool_kv
                    .with_label_values(&[name])
                    .set(kv / fresh as f64);
                self.pool_queue
                    .with_label_values(&[name])
                    .set(queue / fresh as f64);
            }
            self.flow_queue_bytes
                .with_label_values(&[qualified.as_str()])
                .set(pool.queue.bytes() as f64);
            // The default band (priority 0) always has a series, empty or not, and so does its
            // dispatched outcome, so the queue's panels read 0 rather than nothing.
            self.flow_queue_size
                .with_label_values(&[qualified.as_str(), "0"])
                .set(0.0);
            self.flow_queue_age
                .with_label_values(&[qualified.as_str(), "0"])
                .set(0.0);
            self.flow_queue_duration
                .with_label_values(&[qualified.as_str(), "0", "dispatched"]);
            for (priority, waiting) in pool.queue.band_lengths() {
                self.flow_queue_size
                    .with_label_values(&[qualified.as_str(), &priority.to_string()])
                    .set(waiting as f64);
            }
            for (priority, age) in pool.queue.oldest_ages(now) {
                self.flow_queue_age
                    .with_label_values(&[qualified.as_str(), &priority.to_string()])
                    .set(age.as_secs_f64());
            }
            if let Some(blocks) = pool.strategy.stats().indexed_blocks {
                self.prefix_index_size
                    .with_label_values(&[qualified.as_str()])
                    .set(blocks as f64);
            }
        }
    }

    /// The Prometheus text exposition of every metric, with gauges derived from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> Vec<u8> {
        self.observe_snapshot(snapshot);
        let mut out = Vec::with_capacity(32 * 1024);
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

impl GatewayMetrics {
    /// Every metric, once: what [`GatewayMetrics::new`] registers.
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.model_requests.clone()),
            Box::new(self.model_errors.clone()),
            Box::new(self.model_duration.clone()),
            Box::new(self.model_ntpot.clone()),
            Box::new(self.model_request_sizes.clone()),
            Box::new(self.model_response_sizes.clone()),
            Box::new(self.model_input_tokens.clone()),
            Box::new(self.model_output_tokens.clone()),
            Box::new(self.model_running.clone()),
            Box::new(self.pool_kv.clone()),
            Box::new(self.pool_queue.clone()),
            Box::new(self.pool_pod_queue.clone()),
            Box::new(self.pool_ready.clone()),
            Box::new(self.pick_duration.clone()),
            Box::new(self.prefix_index_size.clone()),
            Box::new(self.info.clone()),
            Box::new(self.requests.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.time_to_first_byte.clone()),
            Box::new(self.time_to_first_token.clone()),
            Box::new(self.time_per_output_token.clone()),
            Box::new(self.upstream_attempts.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.picks.clone()),
            Box::new(self.invalid_candidates.clone()),
            Box::new(self.picker_requests.clone()),
            Box::new(self.picker_duration.clone()),
            Box::new(self.scrape_errors.clone()),
            Box::new(self.scrape_duration.clone()),
            Box::new(self.scrape_age.clone()),
            Box::new(self.sheds.clone()),
            Box::new(self.flow_queue_size.clone()),
            Box::new(self.flow_queue_bytes.clone()),
            Box::new(self.flow_queue_age.clone()),
            Box::new(self.flow_queue_duration.clone()),
            Box::new(self.endpoint_in_flight.clone()),
            Box::new(self.endpoint_prefill_tokens.clone()),
            Box::new(self.endpoint_output_tokens.clone()),
            Box::new(self.config_reloads.clone()),
            Box::new(self.snapshot_generation.clone()),
            Box::new(self.connections_open.clone()),
            Box::new(self.connections_refused.clone()),
            Box::new(self.header_timeouts.clone()),
            Box::new(self.kv_events_endpoints.clone()),
            Box::new(self.kv_events_index_blocks.clone()),
            Box::new(self.kv_events.clone()),
            Box::new(self.tokenizations.clone()),
        ]
    }

    /// Every metric [`GatewayMetrics::new`] registers, as its collector describes it (name, help,
    /// label names) with its type: what generated dashboards and alert rules check their queries
    /// against (`src/bin/dashboards/`).
    pub fn descriptors(&self) -> Vec<(prometheus::core::Desc, prometheus::proto::MetricType)> {
        self.collectors()
            .iter()
            .map(|c| (c.desc()[0].clone(), c.collect()[0].get_field_type()))
            .collect()
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
        metrics
            .model_requests
            .with_label_values(&["/model/qwen", "travel-helper-v1"])
            .inc();
        let text = String::from_utf8(metrics.render(&Snapshot::default())).unwrap();
        assert!(
            text.contains("gateway_requests_total{backend=\"pool\",code=\"200\",port=\"8081\"} 1"),
            "{text}"
        );
        assert!(text.contains("inference_model_request_total{model_name=\"/model/qwen\",target_model_name=\"travel-helper-v1\"} 1"));
        assert!(text.contains("inference_extension_info{"));
    }
}
