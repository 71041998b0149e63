//! What is recorded about a request: when its pool's strategy decided (the pick's duration, the
//! running-requests gauge) and when it finished (the gateway's and the Inference Extension's
//! metrics, the strategy's `on_completed` hook, and the access-log line).
//!
//! Called from the proxy's phases only; nothing here touches the client session.

use std::time::Duration;

use plugins::{Completion, Outcome};

use super::decide::{BackendKind, InferenceInfo};
use super::exchange::{Ending, Exchange};
use crate::headers::ClientHints;
use crate::metrics::GatewayMetrics;

/// A pool's strategy ranked endpoints for `info`.
pub fn decided(metrics: &GatewayMetrics, info: &InferenceInfo) {
    let pool = &info.pool.name;
    metrics
        .pick_duration
        .with_label_values(&[pool.as_str(), info.strategy()])
        .observe(info.pick_duration.as_secs_f64());
    if info.running {
        metrics
            .model_running
            .with_label_values(&[info.model.as_str()])
            .inc();
    }
    if info.invalid_candidates > 0 {
        metrics
            .invalid_candidates
            .with_label_values(&[pool.as_str(), info.strategy()])
            .inc_by(info.invalid_candidates as u64);
        tracing::debug!(
            pool = %pool,
            strategy = info.strategy(),
            dropped = info.invalid_candidates,
            "the strategy returned endpoint indexes outside the pool"
        );
    }
}

/// A finished request, as the logging phase sees it.
#[derive(Debug)]
pub struct Finished<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The local port it arrived on.
    pub port: u16,
    /// Its method and path.
    pub method: &'a str,
    /// Its path.
    pub path: &'a str,
    /// The route entry it matched.
    pub route: Option<&'a str>,
    /// The backend kind drawn for it.
    pub backend: BackendKind,
    /// The status the client got (0 when it got none).
    pub status: u16,
    /// Time from its header to now.
    pub elapsed: Duration,
    /// The exchange with upstreams.
    pub exchange: &'a Exchange,
    /// The inference request, if a pool's strategy was asked.
    pub inference: Option<&'a InferenceInfo>,
    /// The client hints it carried.
    pub hints: &'a ClientHints,
    /// The error Pingora's proxy loop ended with, if any.
    pub proxy_error: Option<&'a pingora::Error>,
}

/// Record everything about `finished`: metrics, the strategy's hook, the access log.
pub fn finished(metrics: &GatewayMetrics, finished: &Finished<'_>) {
    requests(metrics, finished);
    if let Some(info) = finished.inference {
        completed(info, finished);
        model_requests(metrics, info, finished);
        model_timings(metrics, info, finished);
    }
    access_log(finished);
}

/// The gateway's own per-request metrics.
fn requests(metrics: &GatewayMetrics, f: &Finished<'_>) {
    let mut digits = [0u8; 5];
    let labels = [port_label(f.port, &mut digits), f.backend.label()];
    let status = http::StatusCode::from_u16(f.status).ok();
    let code = status.as_ref().map_or("0", http::StatusCode::as_str);
    metrics
        .requests
        .with_label_values(&[labels[0], labels[1], code])
        .inc();
    metrics
        .request_duration
        .with_label_values(&labels)
        .observe(f.elapsed.as_secs_f64());
    if let Some(ttfb) = f.exchange.observer.time_to_first_byte() {
        metrics
            .time_to_first_byte
            .with_label_values(&labels)
            .observe(ttfb.as_secs_f64());
    }
    let attempts = &f.exchange.attempts;
    if attempts.succeeded() > 0 {
        metrics
            .upstream_attempts
            .with_label_values(&["ok"])
            .inc_by(u64::from(attempts.succeeded()));
    }
    if attempts.connect_failures > 0 {
        metrics
            .upstream_attempts
            .with_label_values(&["connect_error"])
            .inc_by(u64::from(attempts.connect_failures));
    }
    if let Some(reason) = f.exchange.answered {
        metrics.errors.with_label_values(&[reason]).inc();
    }
}

/// `port` in decimal, written into `digits` (no allocation on the request path).
fn port_label(port: u16, digits: &mut [u8; 5]) -> &str {
    let mut start = digits.len();
    let mut rest = port;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[start..]).unwrap_or("0")
}

/// Report the request to the pool's strategy, if it was dispatched to an endpoint.
fn completed(info: &InferenceInfo, f: &Finished<'_>) {
    let Some(in_flight) = &f.exchange.in_flight else {
        return;
    };
    let observer = &f.exchange.observer;
    let outcome = f
        .exchange
        .ending
        .as_ref()
        .map_or(Outcome::Failed, Ending::outcome);
    info.pool.strategy.on_completed(&Completion {
        endpoint: &in_flight.endpoint().id,
        target_model: &info.target_model,
        outcome,
        status: (f.status > 0).then_some(f.status),
        time_to_first_byte: observer.time_to_first_byte(),
        time_to_first_token: observer.time_to_first_token().filter(|_| info.stream),
        duration: f.elapsed,
        prompt_tokens: observer
            .usage()
            .map_or(info.prompt_tokens, |u| u.prompt_tokens),
        completion_tokens: observer.usage().map(|u| u.completion_tokens),
        prefill_tokens: in_flight.prefill_tokens(),
        at_dispatch: in_flight.at_dispatch(),
    });
}

/// The Inference Extension's request counters, sizes and the running gauge.
fn model_requests(metrics: &GatewayMetrics, info: &InferenceInfo, f: &Finished<'_>) {
    let (model, target) = info.labels(f.status);
    let labels = [model, target];
    metrics.model_requests.with_label_values(&labels).inc();
    let failed = f
        .exchange
        .ending
        .as_ref()
        .is_some_and(|e| *e != Ending::Completed);
    if f.status >= 400 || f.status == 0 || failed {
        let code = if f.status == 0 || (failed && f.status < 400) {
            "aborted".to_owned()
        } else {
            f.status.to_string()
        };
        metrics
            .model_errors
            .with_label_values(&[model, target, code.as_str()])
            .inc();
    }
    metrics
        .model_request_sizes
        .with_label_values(&labels)
        .observe(info.request_bytes as f64);
    metrics
        .model_response_sizes
        .with_label_values(&labels)
        .observe(f.exchange.observer.body_bytes() as f64);
    if f.exchange.attempts.connect_failures > 0 {
        metrics
            .retries
            .with_label_values(&[info.pool.name.as_str()])
            .inc_by(u64::from(f.exchange.attempts.connect_failures));
    }
    if info.running {
        metrics
            .model_running
            .with_label_values(&[info.model.as_str()])
            .dec();
    }
}

/// Latency, token counts and token timings per model.
fn model_timings(metrics: &GatewayMetrics, info: &InferenceInfo, f: &Finished<'_>) {
    let (model, target) = info.labels(f.status);
    let labels = [model, target];
    let observer = &f.exchange.observer;
    metrics
        .model_duration
        .with_label_values(&labels)
        .observe(f.elapsed.as_secs_f64());
    if let Some(usage) = observer.usage() {
        metrics
            .model_input_tokens
            .with_label_values(&labels)
            .observe(f64::from(usage.prompt_tokens));
        metrics
            .model_output_tokens
            .with_label_values(&labels)
            .observe(f64::from(usage.completion_tokens));
        if usage.completion_tokens > 0 {
            metrics
                .model_ntpot
                .with_label_values(&labels)
                .observe(f.elapsed.as_secs_f64() / f64::from(usage.completion_tokens));
        }
    }
    if let Some(ttft) = observer.time_to_first_token() {
        metrics
            .time_to_first_token
            .with_label_values(&labels)
            .observe(ttft.as_secs_f64());
    }
    if let Some(tpot) = observer.time_per_output_token() {
        metrics
            .time_per_output_token
            .with_label_values(&labels)
            .observe(tpot.as_secs_f64());
    }
}

/// One `access` line per request.
fn access_log(f: &Finished<'_>) {
    let observer = &f.exchange.observer;
    let info = f.inference;
    let millis = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1e3);
    tracing::info!(
        target: "access",
        request_id = %f.request_id,
        port = f.port,
        method = %f.method,
        path = %f.path,
        route = f.route.unwrap_or("-"),
        backend = f.backend.label(),
        model = info.map_or("-", |i| i.model.as_str()),
        target_model = info.map_or("-", |i| i.target_model.as_str()),
        strategy = info.map_or("-", InferenceInfo::strategy),
        objective = f.hints.objective.as_deref().unwrap_or("-"),
        fairness_id = f.hints.fairness_id.as_deref().unwrap_or("-"),
        endpoint = %f.exchange.served_by.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        status = f.status,
        attempts = f.exchange.attempts.made,
        ttfb_ms = millis(observer.time_to_first_byte()),
        ttft_ms = millis(observer.time_to_first_token()),
        prompt_tokens = observer.usage().map_or(-1, |u| i64::from(u.prompt_tokens)),
        completion_tokens = observer.usage().map_or(-1, |u| i64::from(u.completion_tokens)),
        duration_ms = f.elapsed.as_secs_f64() * 1e3,
        bytes = observer.body_bytes(),
        error = error_text(f),
    );
}

/// The access log's `error` field: Pingora's error, else how a forwarded request failed.
fn error_text(f: &Finished<'_>) -> Option<String> {
    match f.proxy_error {
        Some(error) => Some(error.to_string()),
        None => f
            .exchange
            .ending
            .as_ref()
            .and_then(Ending::error)
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_labels_are_decimal() {
        for port in [0, 7, 80, 8081, 65535] {
            let mut digits = [0u8; 5];
            assert_eq!(port_label(port, &mut digits), port.to_string());
        }
    }
}
