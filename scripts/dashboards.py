#!/usr/bin/env python3
"""Writes the Grafana dashboards and Prometheus alert rules in manifests/observability/.

The panels are defined here, compactly, and rendered to the JSON Grafana imports, so every query
lives in one place. `--check` compares the committed files with what this script would write (CI
runs it). The queries are evaluated against a real Prometheus by gateway/tests/observability.rs:
a query that returns no data there is a failing test.

Grafana variables used in queries: `$__rate_interval` only, so every query is also valid PromQL
once it is replaced by a window (the test uses 1m).
"""
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "manifests" / "observability"
RATE = "$__rate_interval"


def quantiles(metric, by="", qs=(0.5, 0.9, 0.99)):
    group = f"le{', ' + by if by else ''}"
    legend = "{{" + by + "}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE}])))", f"{legend}p{int(q * 100)}")
        for q in qs
    ]


def panel(title, targets, unit="short", kind="timeseries", description=""):
    return {"title": title, "targets": targets, "unit": unit, "type": kind, "description": description}


GATEWAY = [
    ("Traffic", [
        panel("Inference requests/s by model", [("sum by (model_name, target_model_name) (rate(inference_model_request_total[" + RATE + "]))", "{{model_name}} -> {{target_model_name}}")], "reqps"),
        panel("Inference errors/s by code", [("sum by (model_name, error_code) (rate(inference_model_request_error_total[" + RATE + "]))", "{{model_name}} {{error_code}}")], "reqps"),
        panel("Requests/s by listener and status", [("sum by (port, backend, code) (rate(gateway_requests_total[" + RATE + "]))", "{{port}} {{backend}} {{code}}")], "reqps"),
        panel("Requests in progress by model", [("sum by (model_name) (inference_model_running_requests)", "{{model_name}}")]),
    ]),
    ("Latency", [
        panel("Time to first token (gateway)", quantiles("gateway_time_to_first_token_seconds"), "s",
              description="From the request's arrival to the first streamed event with a choice, as it passes the gateway."),
        panel("Time per output token (gateway)", quantiles("gateway_time_per_output_token_seconds"), "s"),
        panel("End-to-end latency by model", quantiles("inference_model_request_duration_seconds", "model_name"), "s"),
        panel("Normalized time per output token", quantiles("normalized_time_per_output_token_seconds", qs=(0.5, 0.9)), "s"),
        panel("Time to first byte by listener", quantiles("gateway_time_to_first_byte_seconds", "port", qs=(0.5, 0.99)), "s"),
    ]),
    ("Client connections", [
        panel("Open client connections", [("sum(gateway_downstream_connections)", "open")]),
        panel("Connections refused and timed out/s", [
            ("sum(rate(gateway_downstream_connections_refused_total[" + RATE + "]))", "refused at --max-connections"),
            ("sum(rate(gateway_downstream_header_timeouts_total[" + RATE + "]))", "no header within --client-header-timeout"),
        ], "reqps"),
    ]),
    ("Tokens and sizes", [
        panel("Tokens/s", [
            ("sum(rate(inference_model_input_tokens_sum[" + RATE + "]))", "input"),
            ("sum(rate(inference_model_output_tokens_sum[" + RATE + "]))", "output"),
        ]),
        panel("Request and response sizes (p90)", [
            ("histogram_quantile(0.9, sum by (le) (rate(inference_model_request_sizes_bucket[" + RATE + "])))", "request"),
            ("histogram_quantile(0.9, sum by (le) (rate(inference_model_response_sizes_bucket[" + RATE + "])))", "response"),
        ], "bytes"),
    ]),
    ("Routing", [
        panel("Picks/s per endpoint", [("sum by (pool, strategy, endpoint) (rate(gateway_picks_total[" + RATE + "]))", "{{endpoint}} ({{strategy}})")], "reqps"),
        panel("Requests in flight per endpoint", [("sum by (endpoint) (gateway_endpoint_in_flight_requests)", "{{endpoint}}")]),
        panel("Scheduler latency (p99)", quantiles("inference_extension_scheduler_e2e_duration_seconds", "strategy", qs=(0.99,)), "s"),
        panel("Retries/s and sheds/s", [
            ("sum by (pool) (rate(gateway_retries_total[" + RATE + "]))", "retries {{pool}}"),
            ("sum by (pool) (rate(gateway_sheds_total[" + RATE + "]))", "sheds {{pool}}"),
        ], "reqps"),
        panel("Prefix index size (blocks)", [("sum by (pool) (inference_extension_prefix_indexer_size)", "{{pool}}")]),
    ]),
    ("Pools and model servers", [
        panel("Average KV-cache usage per pool", [("max by (name) (inference_pool_average_kv_cache_utilization)", "{{name}}")], "percentunit"),
        panel("Average queue per pool", [("max by (name) (inference_pool_average_queue_size)", "{{name}}")]),
        panel("Queue per model server", [("max by (name, model_server_pod) (inference_pool_per_pod_queue_size)", "{{model_server_pod}}")]),
        panel("Ready endpoints per pool", [("max by (name) (inference_pool_ready_pods)", "{{name}}")]),
        panel("Metrics age per endpoint", [("max by (endpoint) (gateway_endpoint_metrics_age_seconds)", "{{endpoint}}")], "s"),
        panel("Scrape errors/s", [("sum by (endpoint, reason) (rate(gateway_scrape_errors_total[" + RATE + "]))", "{{endpoint}} {{reason}}")], "reqps"),
    ]),
]


def either(v1, v0):
    """A query on vLLM V1 names that falls back to the V0 names."""
    return f"({v1}) or ({v0})"


VLLM = [
    ("Requests", [
        panel("E2E request latency", quantiles("vllm:e2e_request_latency_seconds", qs=(0.5, 0.9, 0.99)), "s"),
        panel("Token throughput", [
            ("sum(rate(vllm:prompt_tokens_total[" + RATE + "]))", "prompt tokens/s"),
            ("sum(rate(vllm:generation_tokens_total[" + RATE + "]))", "generation tokens/s"),
        ]),
        panel("Time per output token", [
            (either(
                f"histogram_quantile({q}, sum by (le) (rate(vllm:inter_token_latency_seconds_bucket[{RATE}])))",
                f"histogram_quantile({q}, sum by (le) (rate(vllm:time_per_output_token_seconds_bucket[{RATE}])))",
            ), f"p{int(q * 100)}") for q in (0.5, 0.9, 0.99)
        ], "s"),
        panel("Time to first token", quantiles("vllm:time_to_first_token_seconds"), "s"),
        panel("Finish reason", [("sum by (finished_reason) (increase(vllm:request_success_total[" + RATE + "]))", "{{finished_reason}}")]),
    ]),
    ("Scheduler and cache", [
        panel("Scheduler state", [
            ("sum by (instance) (vllm:num_requests_running)", "running {{instance}}"),
            ("sum by (instance) (vllm:num_requests_waiting)", "waiting {{instance}}"),
        ]),
        panel("Cache utilization per model server", [
            (either("max by (instance) (vllm:kv_cache_usage_perc)", "max by (instance) (vllm:gpu_cache_usage_perc)"), "{{instance}}"),
        ], "percentunit", description="The seed's picture: even across pods through the inference route, uneven through the plain route."),
        panel("Prefix cache hit rate", [
            ("sum(rate(vllm:prefix_cache_hits_total[" + RATE + "])) / sum(rate(vllm:prefix_cache_queries_total[" + RATE + "]))", "hit rate"),
        ], "percentunit"),
        panel("Preemptions/s", [("sum by (instance) (rate(vllm:num_preemptions_total[" + RATE + "]))", "{{instance}}")]),
    ]),
    ("Request phases and lengths", [
        panel("Queue time", quantiles("vllm:request_queue_time_seconds", qs=(0.5, 0.99)), "s"),
        panel("Prefill and decode time (p90)", [
            ("histogram_quantile(0.9, sum by (le) (rate(vllm:request_prefill_time_seconds_bucket[" + RATE + "])))", "prefill"),
            ("histogram_quantile(0.9, sum by (le) (rate(vllm:request_decode_time_seconds_bucket[" + RATE + "])))", "decode"),
        ], "s"),
        panel("Prompt length", [("sum by (le) (increase(vllm:request_prompt_tokens_bucket[" + RATE + "]))", "{{le}}")], kind="heatmap"),
        panel("Generation length", [("sum by (le) (increase(vllm:request_generation_tokens_bucket[" + RATE + "]))", "{{le}}")], kind="heatmap"),
        panel("Max generation tokens", [("sum by (le) (increase(vllm:request_max_num_generation_tokens_bucket[" + RATE + "]))", "{{le}}")], kind="heatmap"),
    ]),
]

# Alert rules: `expr` is always `<query> <comparison> <threshold>`; the observability test
# evaluates the query part and requires data.
ALERTS = [
    ("HighInferenceRequestLatencyP99", "histogram_quantile(0.99, sum by (le, model_name) (rate(inference_model_request_duration_seconds_bucket[5m])))", "> 10", "5m", "warning",
     "p99 request latency of {{ $labels.model_name }} above 10 s for 5 minutes."),
    ("HighInferenceErrorRate", "sum by (model_name) (rate(inference_model_request_error_total[5m])) / sum by (model_name) (rate(inference_model_request_total[5m]))", "> 0.05", "5m", "critical",
     "More than 5% of {{ $labels.model_name }} requests fail."),
    ("HighTimeToFirstToken", "histogram_quantile(0.9, sum by (le, model_name) (rate(gateway_time_to_first_token_seconds_bucket[5m])))", "> 5", "10m", "warning",
     "p90 time to first token of {{ $labels.model_name }} above 5 s for 10 minutes."),
    ("InferencePoolSaturatedQueue", "max by (name) (inference_pool_average_queue_size)", "> 5", "5m", "warning",
     "Pool {{ $labels.name }} averages more than 5 queued requests per model server."),
    ("InferencePoolHighKVCacheUtilization", "max by (name) (inference_pool_average_kv_cache_utilization)", "> 0.9", "5m", "critical",
     "Pool {{ $labels.name }} averages more than 90% KV-cache usage."),
    ("InferencePoolShedding", "sum by (pool) (rate(gateway_sheds_total[5m]))", "> 0", "5m", "warning",
     "Pool {{ $labels.pool }} is saturated and sheds sheddable requests."),
    ("InferencePoolNoReadyEndpoints", "min by (name) (inference_pool_ready_pods)", "< 1", "1m", "critical",
     "Pool {{ $labels.name }} has no ready endpoint: its requests get 503."),
    ("ModelServerMetricsStale", "max by (endpoint) (gateway_endpoint_metrics_age_seconds)", "> 2", "2m", "warning",
     "Metrics of {{ $labels.endpoint }} are older than 2 s: the gateway treats it as saturated."),
    ("ModelServerScrapeErrors", "sum by (endpoint) (rate(gateway_scrape_errors_total[5m]))", "> 1", "5m", "warning",
     "Scrapes of {{ $labels.endpoint }} keep failing."),
]


def grafana(title, uid, rows):
    panels, y, pid = [], 0, 1
    for row_title, row_panels in rows:
        panels.append({"type": "row", "title": row_title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid += 1
        y += 1
        for i, p in enumerate(row_panels):
            x = (i % 3) * 8
            if i and i % 3 == 0:
                y += 8
            body = {
                "id": pid,
                "type": p["type"],
                "title": p["title"],
                "description": p["description"],
                "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
                "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}}
                    for n, (expr, legend) in enumerate(p["targets"])
                ],
            }
            if p["type"] == "heatmap":
                for t in body["targets"]:
                    t["format"] = "heatmap"
            panels.append(body)
            pid += 1
        y += 8
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "title": title,
        "uid": uid,
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "tags": ["inference-gateway"],
        "templating": {"list": []},
        "panels": panels,
    }


def alert_rules():
    lines = ["# Prometheus alert rules for the inference gateway and its pools.",
             "# Generated by scripts/dashboards.py; edit there.", "groups:", "- name: inference-gateway", "  rules:"]
    for name, query, comparison, duration, severity, summary in ALERTS:
        lines += [
            f"  - alert: {name}",
            f"    expr: {query} {comparison}",
            f"    for: {duration}",
            "    labels:",
            f"      severity: {severity}",
            "    annotations:",
            f"      summary: {json.dumps(summary)}",
        ]
    return "\n".join(lines) + "\n"


def outputs():
    return {
        "gateway-dashboard.json": json.dumps(grafana("Inference gateway", "inference-gateway", GATEWAY), indent=2) + "\n",
        "vllm-dashboard.json": json.dumps(grafana("vLLM model servers", "vllm-model-servers", VLLM), indent=2) + "\n",
        "alerts.yaml": alert_rules(),
    }


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in outputs().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run scripts/dashboards.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
