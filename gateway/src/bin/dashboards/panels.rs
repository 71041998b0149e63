//! The gateway dashboard: traffic, latency, client connections, tokens and sizes, routing, flow
//! control, pools and model servers, all from the gateway's own `/metrics`.
//!
//! Gateway metrics are taken from [`GatewayMetrics`]' fields through the [`Catalogue`], never
//! spelled out, so a query cannot name a metric or a label the gateway does not export.

use gateway::metrics::GatewayMetrics;

use crate::grafana::{Dashboard, Panel, RATE, Row, Target, panel, target};
use crate::promql::{Catalogue, Expr, Metric};

/// The gateway's metrics and their catalogue.
pub struct Sources {
    pub metrics: GatewayMetrics,
    pub catalogue: Catalogue,
}

impl Sources {
    /// A fresh set of the gateway's metrics.
    pub fn new() -> Sources {
        let metrics = GatewayMetrics::new();
        let catalogue = Catalogue::new(&metrics);
        Sources { metrics, catalogue }
    }

    /// The gateway metric a field of [`GatewayMetrics`] holds.
    fn metric(&self, pick: impl Fn(&GatewayMetrics) -> &dyn prometheus::core::Collector) -> Metric {
        self.catalogue.metric(pick(&self.metrics))
    }
}

/// `histogram_quantile` of `metric` at each of `percents`, grouped by `by` (if any), legended
/// `{{by}} pNN`.
pub fn quantiles(metric: &Metric, by: Option<&str>, percents: &[u32]) -> Vec<Target> {
    let group: Vec<&str> = ["le"].into_iter().chain(by).collect();
    let legend = by.map(|by| format!("{{{{{by}}}}} ")).unwrap_or_default();
    percents
        .iter()
        .map(|&p| {
            let query = metric
                .buckets()
                .rate(RATE)
                .sum_by(&group)
                .quantile(f64::from(p) / 100.0);
            target(query, format!("{legend}p{p}"))
        })
        .collect()
}

/// The usual three: p50, p90, p99.
pub const P50_90_99: &[u32] = &[50, 90, 99];

/// `sum by (by) (rate(metric[RATE]))`.
fn rate_by(metric: &Metric, by: &[&str]) -> Expr {
    metric.series().rate(RATE).sum_by(by)
}

/// `sum(rate(series[RATE]))`.
fn total_rate(series: Expr) -> Expr {
    series.rate(RATE).sum()
}

fn row(title: &'static str, panels: Vec<Panel>) -> Row {
    Row { title, panels }
}

/// The gateway dashboard.
pub fn gateway(s: &Sources) -> Dashboard {
    Dashboard {
        title: "Inference gateway",
        uid: "inference-gateway",
        rows: vec![
            traffic(s),
            latency(s),
            client_connections(s),
            tokens_and_sizes(s),
            routing(s),
            flow_control(s),
            pools(s),
        ],
    }
}

fn traffic(s: &Sources) -> Row {
    let requests = s.metric(|m| &m.model_requests);
    let errors = s.metric(|m| &m.model_errors);
    let by_listener = s.metric(|m| &m.requests);
    let running = s.metric(|m| &m.model_running);
    row(
        "Traffic",
        vec![
            panel(
                "Inference requests/s by model",
                vec![target(
                    rate_by(&requests, &["model_name", "target_model_name"]),
                    "{{model_name}} -> {{target_model_name}}",
                )],
            )
            .unit("reqps"),
            panel(
                "Inference errors/s by code",
                vec![target(
                    rate_by(&errors, &["model_name", "error_code"]),
                    "{{model_name}} {{error_code}}",
                )],
            )
            .unit("reqps"),
            panel(
                "Requests/s by listener and status",
                vec![target(
                    rate_by(&by_listener, &["port", "backend", "code"]),
                    "{{port}} {{backend}} {{code}}",
                )],
            )
            .unit("reqps"),
            panel(
                "Requests in progress by model",
                vec![target(
                    running.series().sum_by(&["model_name"]),
                    "{{model_name}}",
                )],
            ),
        ],
    )
}

fn latency(s: &Sources) -> Row {
    let ttft = s.metric(|m| &m.time_to_first_token);
    let tpot = s.metric(|m| &m.time_per_output_token);
    let duration = s.metric(|m| &m.model_duration);
    let ntpot = s.metric(|m| &m.model_ntpot);
    let ttfb = s.metric(|m| &m.time_to_first_byte);
    row(
        "Latency",
        vec![
            panel(
                "Time to first token (gateway)",
                quantiles(&ttft, None, P50_90_99),
            )
            .unit("s")
            .description(
                "From the request's arrival to the first streamed event with a choice, as it \
                 passes the gateway.",
            ),
            panel(
                "Time per output token (gateway)",
                quantiles(&tpot, None, P50_90_99),
            )
            .unit("s"),
            panel(
                "End-to-end latency by model",
                quantiles(&duration, Some("model_name"), P50_90_99),
            )
            .unit("s"),
            panel(
                "Normalized time per output token",
                quantiles(&ntpot, None, &[50, 90]),
            )
            .unit("s"),
            panel(
                "Time to first byte by listener",
                quantiles(&ttfb, Some("port"), &[50, 99]),
            )
            .unit("s"),
        ],
    )
}

fn client_connections(s: &Sources) -> Row {
    let open = s.metric(|m| &m.connections_open);
    let refused = s.metric(|m| &m.connections_refused);
    let header_timeouts = s.metric(|m| &m.header_timeouts);
    row(
        "Client connections",
        vec![
            panel(
                "Open client connections",
                vec![target(open.series().sum(), "open")],
            ),
            panel(
                "Connections refused and timed out/s",
                vec![
                    target(total_rate(refused.series()), "refused at --max-connections"),
                    target(
                        total_rate(header_timeouts.series()),
                        "no header within --client-header-timeout",
                    ),
                ],
            )
            .unit("reqps"),
        ],
    )
}

fn tokens_and_sizes(s: &Sources) -> Row {
    let input = s.metric(|m| &m.model_input_tokens);
    let output = s.metric(|m| &m.model_output_tokens);
    let request_sizes = s.metric(|m| &m.model_request_sizes);
    let response_sizes = s.metric(|m| &m.model_response_sizes);
    let p90 = |metric: &Metric| metric.buckets().rate(RATE).sum_by(&["le"]).quantile(0.9);
    row(
        "Tokens and sizes",
        vec![
            panel(
                "Tokens/s",
                vec![
                    target(total_rate(input.sum()), "input"),
                    target(total_rate(output.sum()), "output"),
                ],
            ),
            panel(
                "Request and response sizes (p90)",
                vec![
                    target(p90(&request_sizes), "request"),
                    target(p90(&response_sizes), "response"),
                ],
            )
            .unit("bytes"),
        ],
    )
}

fn routing(s: &Sources) -> Row {
    let picks = s.metric(|m| &m.picks);
    let in_flight = s.metric(|m| &m.endpoint_in_flight);
    let scheduler = s.metric(|m| &m.pick_duration);
    let retries = s.metric(|m| &m.retries);
    let sheds = s.metric(|m| &m.sheds);
    let prefix_index = s.metric(|m| &m.prefix_index_size);
    row(
        "Routing",
        vec![
            panel(
                "Picks/s per endpoint",
                vec![target(
                    rate_by(&picks, &["pool", "strategy", "endpoint"]),
                    "{{endpoint}} ({{strategy}})",
                )],
            )
            .unit("reqps"),
            panel(
                "Requests in flight per endpoint",
                vec![target(
                    in_flight.series().sum_by(&["endpoint"]),
                    "{{endpoint}}",
                )],
            ),
            panel(
                "Scheduler latency (p99)",
                quantiles(&scheduler, Some("strategy"), &[99]),
            )
            .unit("s"),
            panel(
                "Retries/s and sheds/s",
                vec![
                    target(rate_by(&retries, &["pool"]), "retries {{pool}}"),
                    target(rate_by(&sheds, &["pool"]), "sheds {{pool}}"),
                ],
            )
            .unit("reqps"),
            panel(
                "Prefix index size (blocks)",
                vec![target(prefix_index.series().sum_by(&["pool"]), "{{pool}}")],
            ),
        ],
    )
}

fn flow_control(s: &Sources) -> Row {
    let size = s.metric(|m| &m.flow_queue_size);
    let age = s.metric(|m| &m.flow_queue_age);
    let bytes = s.metric(|m| &m.flow_queue_bytes);
    let duration = s.metric(|m| &m.flow_queue_duration);
    row(
        "Flow control",
        vec![
            panel(
                "Queued requests per pool and priority",
                vec![target(
                    size.series().max_by(&["inference_pool", "priority"]),
                    "{{inference_pool}} priority {{priority}}",
                )],
            )
            .description(
                "Requests waiting in the gateway for room in their pool: the signal for an \
                 autoscaler (KEDA or an HPA on an external metric).",
            ),
            panel(
                "Oldest queued request's wait",
                vec![target(
                    age.series().max_by(&["inference_pool", "priority"]),
                    "{{inference_pool}} priority {{priority}}",
                )],
            )
            .unit("s"),
            panel(
                "Queued bytes per pool",
                vec![target(
                    bytes.series().max_by(&["inference_pool"]),
                    "{{inference_pool}}",
                )],
            )
            .unit("bytes"),
            panel(
                "Queue exits/s by outcome",
                vec![target(
                    duration
                        .count()
                        .rate(RATE)
                        .sum_by(&["inference_pool", "outcome"]),
                    "{{inference_pool}} {{outcome}}",
                )],
            )
            .unit("reqps")
            .description(
                "dispatched, client-gone, or the reason a refused client was given \
                 (rejected-ttl-expired, rejected-capacity, evicted-capacity, ...).",
            ),
            panel(
                "Time in the queue",
                quantiles(&duration, Some("priority"), &[50, 95]),
            )
            .unit("s"),
        ],
    )
}

fn pools(s: &Sources) -> Row {
    let kv = s.metric(|m| &m.pool_kv);
    let queue = s.metric(|m| &m.pool_queue);
    let pod_queue = s.metric(|m| &m.pool_pod_queue);
    let ready = s.metric(|m| &m.pool_ready);
    let age = s.metric(|m| &m.scrape_age);
    let scrape_errors = s.metric(|m| &m.scrape_errors);
    let max_by = |metric: &Metric, by: &[&str]| metric.series().max_by(by);
    row(
        "Pools and model servers",
        vec![
            panel(
                "Average KV-cache usage per pool",
                vec![target(max_by(&kv, &["name"]), "{{name}}")],
            )
            .unit("percentunit"),
            panel(
                "Average queue per pool",
                vec![target(max_by(&queue, &["name"]), "{{name}}")],
            ),
            panel(
                "Queue per model server",
                vec![target(
                    max_by(&pod_queue, &["name", "model_server_pod"]),
                    "{{model_server_pod}}",
                )],
            ),
            panel(
                "Ready endpoints per pool",
                vec![target(max_by(&ready, &["name"]), "{{name}}")],
            ),
            panel(
                "Metrics age per endpoint",
                vec![target(max_by(&age, &["endpoint"]), "{{endpoint}}")],
            )
            .unit("s"),
            panel(
                "Scrape errors/s",
                vec![target(
                    rate_by(&scrape_errors, &["endpoint", "reason"]),
                    "{{endpoint}} {{reason}}",
                )],
            )
            .unit("reqps"),
        ],
    )
}
