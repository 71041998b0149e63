//! The comparison report: `docs/benchmarks/NAME.md` (tables, the target figures of the
//! strategies issue, CPU use, definitions, the exact command) and `docs/benchmarks/data/NAME.json`
//! (every figure, the per-endpoint KV series) next to the plots.
//!
//! Definitions used in every table:
//! - **KV spread**: at each scrape tick, max − min of `kv_cache_usage_perc` across the five
//!   endpoints; averaged over the ticks of the run. **KV CV**: at each tick, standard deviation /
//!   mean across endpoints; averaged likewise.
//! - **Prefix hit rate**: Σ `prefix_cache_hits` / Σ `prefix_cache_queries` over the endpoints,
//!   deltas over the run (tokens). **Best achievable**: [`crate::bench::prefix_bound`] — one server
//!   with an unbounded cache seeing every request in send order.
//! - **Adapter loads**: adapters brought into a GPU slot (`/sim/stats` `lora_gpu_loads`), per
//!   1,000 requests sent.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::fleet_up::{POD_HOSTS, profile_for};
use super::sweep::{SUSTAINED_TTFT_P90_MS, stage_tables, stages_json};
use super::targets::targets;
use super::{ComparePlan, RouteRun};
use crate::bench::result::to_json;
use crate::bench::summary::Metric;

pub(crate) fn pct(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

pub(crate) fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Loads per 1,000 requests.
pub fn loads_per_thousand(run: &RouteRun) -> f64 {
    run.observed.servers.lora_gpu_loads / run.requests.max(1) as f64 * 1000.0
}

/// Measured prefix hit rate as a share of the best achievable one.
pub fn share_of_best(run: &RouteRun) -> f64 {
    let bound = run.observed.output.bound_hit_rate;
    if bound > 0.0 {
        run.observed.servers.prefix_hit_rate / bound
    } else {
        0.0
    }
}

/// The latency and throughput table (also what `demo --compare` prints).
pub fn results_table(runs: &[RouteRun]) -> String {
    let mut out = String::new();
    out.push_str("| route | ok / failed | duration (s) | req/s | output tok/s | TTFT mean | TTFT median | TTFT p90 | TTFT p99 | TPOT mean | TPOT p99 | ITL mean | ITL p99 | E2EL mean | E2EL p99 |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for run in runs {
        let s = &run.summary;
        let _ = writeln!(
            out,
            "| {} | {} / {} | {:.1} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.short(),
            s.completed,
            s.failed,
            s.duration,
            s.request_throughput,
            s.output_throughput,
            ms(s.ttft.mean),
            ms(s.ttft.median),
            ms(s.ttft.percentile(90.0)),
            ms(s.ttft.percentile(99.0)),
            ms(s.tpot.mean),
            ms(s.tpot.percentile(99.0)),
            ms(s.itl.mean),
            ms(s.itl.percentile(99.0)),
            ms(s.e2el.mean),
            ms(s.e2el.percentile(99.0)),
        );
    }
    out
}

/// The model-server table: preemptions, prefix hits, adapter loads, KV balance.
pub fn servers_table(runs: &[RouteRun]) -> String {
    let mut out = String::new();
    out.push_str("| route | preemptions | prefix hit rate | best achievable | share of best | adapter loads | per 1,000 requests | from disk | KV spread | KV CV | KV spread, loaded phase | KV CV, loaded phase |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for run in runs {
        let servers = &run.observed.servers;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            run.short(),
            servers.preemptions,
            pct(servers.prefix_hit_rate),
            pct(run.observed.output.bound_hit_rate),
            pct(share_of_best(run)),
            servers.lora_gpu_loads,
            loads_per_thousand(run),
            servers.lora_disk_loads,
            servers.kv_spread,
            servers.kv_cv,
            servers.kv_spread_loaded,
            servers.kv_cv_loaded,
        );
    }
    out
}

/// An endpoint's column title: its host, and its profile when the pods' profiles differ.
fn endpoint_title(endpoint: &str, index: usize, profiles: &[String]) -> String {
    let host = endpoint
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or(endpoint);
    if profiles.len() > 1 {
        format!("{host} ({})", profile_for(profiles, index))
    } else {
        host.to_string()
    }
}

/// KV usage per endpoint: time average and maximum. `profiles`: the plan's, for the titles.
pub fn kv_table(runs: &[RouteRun], profiles: &[String]) -> String {
    let mut out = String::new();
    let Some(first) = runs.first() else {
        return out;
    };
    out.push_str("| route |");
    for (index, endpoint) in first.observed.endpoints.iter().enumerate() {
        let _ = write!(
            out,
            " {} avg / max |",
            endpoint_title(endpoint, index, profiles)
        );
    }
    out.push_str(" spread | CV |\n|---|");
    for _ in &first.observed.endpoints {
        out.push_str("---:|");
    }
    out.push_str("---:|---:|\n");
    for run in runs {
        let _ = write!(out, "| {} |", run.short());
        for endpoint in &run.observed.servers.endpoints {
            let _ = write!(
                out,
                " {:.1}% / {:.1}% |",
                endpoint.kv_mean * 100.0,
                endpoint.kv_max * 100.0
            );
        }
        let _ = writeln!(
            out,
            " {:.3} | {:.3} |",
            run.observed.servers.kv_spread, run.observed.servers.kv_cv
        );
    }
    out
}

/// Requests each endpoint finished, and its share of the route's total; preemptions.
pub fn endpoint_requests_table(runs: &[RouteRun], profiles: &[String]) -> String {
    let mut out = String::new();
    let Some(first) = runs.first() else {
        return out;
    };
    out.push_str("| route |");
    for (index, endpoint) in first.observed.endpoints.iter().enumerate() {
        let _ = write!(
            out,
            " {} requests (share) / preemptions |",
            endpoint_title(endpoint, index, profiles)
        );
    }
    out.push_str("\n|---|");
    for _ in &first.observed.endpoints {
        out.push_str("---:|");
    }
    out.push('\n');
    for run in runs {
        let endpoints = &run.observed.servers.endpoints;
        let total: f64 = endpoints.iter().map(|e| e.requests_finished).sum();
        let _ = write!(out, "| {} |", run.short());
        for endpoint in endpoints {
            let _ = write!(
                out,
                " {:.0} ({}) / {:.0} |",
                endpoint.requests_finished,
                pct(endpoint.requests_finished / total.max(1.0)),
                endpoint.preemptions
            );
        }
        out.push('\n');
    }
    out
}

fn cpu_table(runs: &[RouteRun], time_scale: f64) -> String {
    let mut out = String::new();
    out.push_str("| route | wall time (s) | each simulator | all five simulators | gateway | loadgen (client + scraper) | simulator slips | measured / model ITL |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for run in runs {
        let cpu = &run.cpu;
        let sims: f64 = cpu.sims.iter().sum();
        let each: Vec<String> = cpu
            .sims
            .iter()
            .map(|s| format!("{:.0}", cpu.percent(*s)))
            .collect();
        let slips: f64 = run
            .observed
            .sim_stats
            .iter()
            .map(|s| s["slips"].as_f64().unwrap_or(0.0))
            .sum();
        let ratios: Vec<f64> = run
            .observed
            .sim_stats
            .iter()
            .filter_map(|s| s["itl_measured_over_model"].as_f64())
            .collect();
        let worst = ratios.iter().copied().fold(1.0f64, f64::max);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {}% | {:.0}% | {:.0}% | {:.0}% | {} | ≤ {:.4} |",
            run.short(),
            cpu.wall,
            each.join(" / "),
            cpu.percent(sims),
            cpu.percent(cpu.gateway),
            cpu.percent(cpu.client),
            slips,
            worst,
        );
    }
    let _ = writeln!(
        out,
        "\nPercent of one core, from `/proc/PID/stat` over the run's wall time (the machine has {} cores; the simulators run {time_scale}× faster than their model). A *slip* is a simulator engine step that fell more than 50 ms behind its schedule; none means the simulators kept to their step-time model, i.e. no process was CPU-starved in a way that distorts latencies.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    out
}

/// "profile `a10-qwen2.5-7b`" or, for a mix, each pod's.
fn profiles_text(profiles: &[String]) -> String {
    if profiles.len() <= 1 {
        return format!("profile `{}`", profile_for(profiles, 0));
    }
    let each: Vec<String> = POD_HOSTS
        .iter()
        .enumerate()
        .map(|(i, host)| format!("{host} `{}`", profile_for(profiles, i)))
        .collect();
    format!("profiles {}", each.join(", "))
}

/// Everything needed to write a report besides the runs.
#[derive(Debug, Clone)]
pub struct ReportContext {
    pub command: String,
    pub commit: String,
    pub date: String,
}

impl ReportContext {
    /// A report's title and the paragraph naming its command, date and commit.
    pub fn header(&self, stem: &str, title: &str) -> String {
        format!(
            "# `{stem}`: {title}\n\nProduced by `{}` on {} UTC at commit `{}`, on this project's \
             2-core development machine. Regenerate with the same command; every figure below \
             comes from that run.\n\n",
            self.command, self.date, self.commit
        )
    }
}

/// The Markdown report.
pub fn markdown(plan: &ComparePlan, runs: &[RouteRun], context: &ReportContext) -> String {
    let scenario = &plan.scenario;
    let stem = scenario.name.file_stem();
    let sending = &scenario.sending;
    let mut out = context.header(stem, scenario.title);
    let workload_description = runs
        .first()
        .map(|_| {
            scenario
                .workload(plan.size, plan.seed)
                .map(|w| w.description)
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let _ = writeln!(out, "## Setup\n");
    let _ = writeln!(
        out,
        "- Model servers: five fresh `vllm-sim` processes per route (127.0.0.2–6:8000, the Pods of \
         `manifests/examples/local/`), {}, the seed Deployment's flags \
         (`--gpu-memory-utilization 0.95 --enforce-eager --enable-lora --max-loras 2 \
         --max-cpu-loras 4`{}), `--time-scale {}`.",
        profiles_text(&plan.profiles),
        if scenario.lora_modules.is_empty() {
            ", the adapters travel-helper-v1/-v2".to_string()
        } else {
            format!(", the adapters {}", scenario.gateway_models.join(", "))
        },
        plan.time_scale
    );
    let _ = writeln!(
        out,
        "- Gateway: a fresh `{} --config <copy of manifests/examples/local/>` per route, the \
         InferencePool annotated with `{}`{}; waited on until `/readyz` answered 200.",
        plan.gateway_binary
            .file_name()
            .map_or("inference-gateway".into(), |name| name.to_string_lossy()),
        super::fleet_up::STRATEGY_ANNOTATION,
        if scenario.gateway_models.is_empty() {
            String::new()
        } else {
            " and one InferenceModel per adapter added".to_string()
        }
    );
    if runs.iter().any(|r| r.replicas > 1) {
        let _ = writeln!(
            out,
            "- Gateway replicas (`×N` in the tables): N gateway processes on the same \
             configuration, each on its own address (127.0.1.1, 127.0.1.2, …) and admin port; the \
             client sends request i to replica i mod N, as a Service spreads its clients, so \
             consecutive requests of a group or a conversation land on different replicas."
        );
    }
    if runs.iter().any(|r| r.route.kv_events()) {
        let _ = writeln!(
            out,
            "- `/events` routes: the simulators publish KV-cache events as vLLM does \
             (`--kv-events-config` with `tcp://*:{}` and replay `tcp://*:{}`), and the pool is \
             annotated `kv-events.inference-gateway.dev/enabled: \"true\"` (replay port {}): \
             every replica subscribes to every pod and matches prompts against what the pods \
             hold; the other routes estimate from what each replica sent where.",
            super::fleet_up::KV_EVENTS_PORT,
            super::fleet_up::KV_EVENTS_REPLAY_PORT,
            super::fleet_up::KV_EVENTS_REPLAY_PORT,
        );
    }
    let _ = writeln!(
        out,
        "- Workload: {workload_description}; seed {}.",
        plan.seed
    );
    let _ = writeln!(
        out,
        "- Sent as: backend `{}`, {:?} request bodies, ignore_eos {}, {}, {}.",
        sending.backend.name(),
        sending.style,
        sending.ignore_eos,
        sending
            .max_concurrency
            .map_or("no concurrency limit".to_string(), |c| format!(
                "max concurrency {c}"
            )),
        if scenario.sweep(plan.size).is_some() {
            "Poisson arrivals stage by stage as the workload line says".to_string()
        } else if sending.request_rate.is_finite() {
            format!("Poisson arrivals at {} requests/s", sending.request_rate)
        } else {
            "all requests queued at once (closed loop)".to_string()
        }
    );
    let _ = writeln!(
        out,
        "- Times are in simulated seconds (measured wall time × {}); rates per simulated second. \
         The simulators' `/metrics` were scraped every {} ms (wall).\n",
        plan.time_scale,
        plan.scrape_interval.as_millis()
    );
    let _ = writeln!(out, "Why this workload: {}\n", scenario.rationale);

    let _ = writeln!(out, "## Target figures\n\n{}", targets(plan, runs));
    if runs.iter().any(|r| !r.stages.is_empty()) {
        let _ = writeln!(
            out,
            "## Per stage\n\n\
             Latencies of the requests sent during the stage; output tok/s: every token received \
             during the stage's window, whichever stage sent its request, over the window's \
             length (the drain after the last stage belongs to no stage).\n\n{}",
            stage_tables(runs)
        );
        let _ = writeln!(
            out,
            "![Output tokens/s and TTFT p90 per stage rate, per route]({stem}-sweep.png)\n\n\
             Output tokens/s and TTFT p90 (log scale; the dashed line is the {:.0} s limit of \
             *sustained*) against each stage's offered rate, one curve per route \
             ([SVG]({stem}-sweep.svg)).\n",
            SUSTAINED_TTFT_P90_MS / 1000.0
        );
    }
    let _ = writeln!(
        out,
        "## Latency and throughput{} (ms unless stated)\n\n{}",
        if runs.iter().any(|r| !r.stages.is_empty()) {
            ", whole run"
        } else {
            ""
        },
        results_table(runs)
    );
    let _ = writeln!(out, "## Model servers\n\n{}", servers_table(runs));
    let _ = writeln!(
        out,
        "## KV-cache usage per endpoint (time average / maximum)\n\n{}",
        kv_table(runs, &plan.profiles)
    );
    let _ = writeln!(
        out,
        "## Requests finished per endpoint\n\n{}",
        endpoint_requests_table(runs, &plan.profiles)
    );
    let _ = writeln!(
        out,
        "![KV-cache usage per endpoint over time, per route]({stem}-kv.png)\n\n\
         KV-cache usage (`vllm:kv_cache_usage_perc`) of each endpoint over the run, one panel per \
         route ([SVG]({stem}-kv.svg)): the seed's Grafana picture.\n"
    );
    let _ = writeln!(
        out,
        "![TTFT distribution per route]({stem}-ttft.png)\n\n\
         Distribution of TTFT per route (share of requests with TTFT ≤ x; [SVG]({stem}-ttft.svg)).\n"
    );
    let _ = writeln!(out, "## CPU use\n\n{}", cpu_table(runs, plan.time_scale));
    let _ = writeln!(
        out,
        "## Definitions\n\n\
         - TTFT, TPOT, ITL, E2EL: as `vllm bench serve` computes them (`loadtest::bench::summary`); \
         ITL pooled over all chunks of all successful requests.\n\
         - KV spread: at each scrape tick, max − min of `kv_cache_usage_perc` across the five \
         endpoints, averaged over the ticks of the run (0 = perfectly even, 1 = one full while \
         another is empty). KV CV: standard deviation / mean across endpoints at each tick, averaged. \
         *Loaded phase*: the same from the start until the last request was sent, i.e. without the \
         drain, when the last few long answers keep a few servers busy whatever the routing.\n\
         - Prefix hit rate: Σ `vllm:prefix_cache_hits_total` / Σ `vllm:prefix_cache_queries_total` \
         over the endpoints, deltas over the run, in tokens (a preempted request is queried again \
         when it resumes, as in vLLM).\n\
         - Best achievable: the hit rate of one server with an unbounded KV cache that saw every \
         request in the order they were sent (full 16-token blocks, never the block holding the \
         last prompt token, generated tokens kept for later turns). No routing over five finite \
         caches can beat it; share of best = measured / best.\n\
         - Adapter loads: adapters brought into one of a server's `--max-loras` GPU slots \
         (`lora_gpu_loads` of the simulator's `/sim/stats`; from disk: those not in its CPU \
         cache either), per 1,000 requests sent.\n\
         - Raw figures: [data/{stem}.json](data/{stem}.json)."
    );
    out
}

/// Every figure and series, for `data/NAME.json`.
pub fn data_json(plan: &ComparePlan, runs: &[RouteRun], context: &ReportContext) -> Value {
    let routes: Vec<Value> = runs
        .iter()
        .map(|run| {
            let origin = run.observed.window.0;
            let series: Vec<Value> = run
                .observed
                .ticks
                .iter()
                .filter(|t| t.at >= run.observed.window.0 && t.at <= run.observed.window.1)
                .map(|t| {
                    let kv: Vec<Value> = t
                        .samples
                        .iter()
                        .map(|s| s.as_ref().map_or(Value::Null, |s| json!(s.kv_usage)))
                        .collect();
                    json!([(t.at - origin) * plan.time_scale, kv])
                })
                .collect();
            let mut result = to_json(
                &run.summary,
                &context.date,
                json!({
                    "route": run.label(),
                    "run": run.repeat,
                    "stages": if run.stages.is_empty() { Value::Null } else { stages_json(&run.stages) },
                    "servers": run.observed.servers,
                    "best_achievable_prefix_hit_rate": run.observed.output.bound_hit_rate,
                    "adapter_loads_per_1000_requests": loads_per_thousand(run),
                    "cpu_percent_of_one_core": {
                        "wall_seconds": run.cpu.wall,
                        "simulators": run.cpu.sims.iter().map(|s| run.cpu.percent(*s)).collect::<Vec<_>>(),
                        "gateway": run.cpu.percent(run.cpu.gateway),
                        "client": run.cpu.percent(run.cpu.client),
                    },
                    "sim_stats": run.observed.sim_stats,
                    "gateway_replicas": run.replicas,
                    "gateway_counters": run.gateway_counters,
                    "kv_series": series,
                }),
            );
            // The per-request arrays are long and in the series already summarised.
            if let Some(object) = result.as_object_mut() {
                object.remove("latencies");
                object.remove("queue_times");
            }
            result
        })
        .collect();
    json!({
        "scenario": plan.scenario.name.file_stem(),
        "command": context.command,
        "commit": context.commit,
        "date": context.date,
        "time_scale": plan.time_scale,
        "size": plan.size,
        "profiles": (0..POD_HOSTS.len()).map(|i| profile_for(&plan.profiles, i)).collect::<Vec<_>>(),
        "sweep_rates": plan.scenario.sweep(plan.size).map(|s| s.rates),
        "seed": plan.seed,
        "metrics": Metric::ALL.iter().map(|m| m.key()).collect::<Vec<_>>(),
        "routes": routes,
    })
}
