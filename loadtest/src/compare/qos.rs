//! `compare --scenario qos`: several tenants share the pool, and the question is whether each gets
//! the service its priority and share promise. Three phases per route, each on a fresh stack:
//!
//! 1. **alone**: the interactive tenant (short prompts, high priority) by itself, its baseline;
//! 2. **flood**: the interactive tenant again while a batch tenant (long prompts and outputs, low
//!    priority, more in flight than the pool holds) saturates the pool;
//! 3. **fairness**: two tenants of equal priority and the same request shape, one with four times
//!    the other's appetite (requests in flight), both more than their fair share.
//!
//! The routes are the inference route with flow control (the default), the same with flow control
//! off (the pool's annotation `flow-control.inference-gateway.dev/enabled: "false"`: saturated
//! pools send everything on to the model servers, today's behaviour in the Inference Extension
//! without its feature gate) and the plain Service route.
//!
//! Figures, from the flow-control route unless stated:
//! - the interactive tenant's TTFT p95 in the flood over its p95 alone;
//! - the batch tenant's output tokens per second with flow control over without (its served
//!   output tokens over its span, first send to last answer);
//! - Jain's index of the fairness tenants' served output token rates, counted over the window in
//!   which both were still sending (from the start to the first tenant's last answer);
//! - served + answered = sent per tenant: every request ends with a complete answer or an HTTP
//!   status, none with a broken connection or stream.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use super::fleet_up::{ObjectiveSpec, start_stack};
use super::report::{ReportContext, ms};
use super::scenario::Route;
use super::{
    CompareError, ComparePlan, cpu_now, repeat_numbers, stack_plan, with_repeat, write_file,
};
use crate::bench::prefix_bound::DEFAULT_BLOCK_SIZE;
use crate::bench::request::{RequestShape, default_request_id_prefix};
use crate::bench::runner::{RunOutput, RunPlan};
use crate::bench::scrape::{Scraper, sim_stats};
use crate::bench::servers::{ServerSummary, summarize_servers};
use crate::bench::stats::Sorted;
use crate::bench::summary::{
    BenchSummary, Metric, RequestRecord, RunSettings, SummaryOptions, summarize,
};
use crate::bench::tenants::{TenantSpec, jain_index, run_tenants};
use crate::client::StreamClient;
use crate::procs::SEED_SERVED_NAME;

/// The interactive tenant's Poisson rate (requests per simulated second).
pub const INTERACTIVE_RATE: f64 = 4.0;
/// The objectives of the scenario: interactive above the two equal tenants above batch. Batch
/// and throughput tenants are patient: ten minutes in the queue rather than the pool's minute.
pub fn objectives() -> Vec<ObjectiveSpec> {
    vec![
        ObjectiveSpec {
            name: "interactive".into(),
            priority: 10,
            ttl_ms: None,
        },
        ObjectiveSpec {
            name: "standard".into(),
            priority: 5,
            ttl_ms: Some(600_000),
        },
        ObjectiveSpec {
            name: "batch".into(),
            priority: 0,
            ttl_ms: Some(600_000),
        },
    ]
}

/// One phase: tenants sent at once on a fresh stack.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub about: &'static str,
    pub tenants: Vec<TenantSpec>,
}

fn tenant(
    name: &str,
    objective: &str,
    rate: f64,
    concurrency: Option<usize>,
    prompts: usize,
    (input, output, range): (usize, usize, f64),
) -> TenantSpec {
    TenantSpec {
        name: name.into(),
        objective: Some(objective.into()),
        fairness: name.into(),
        model: None,
        rate,
        concurrency,
        prompts,
        input,
        output,
        range,
        delay: 0.0,
    }
}

/// The phases for `size` interactive requests (see the module documentation).
pub fn phases(size: usize) -> Vec<Phase> {
    let size = size.max(10);
    let interactive = tenant(
        "interactive",
        "interactive",
        INTERACTIVE_RATE,
        None,
        size,
        (256, 128, 0.5),
    );
    // Long prompts and outputs, more in flight than the pool holds; enough requests to outlast
    // the interactive tenant.
    let mut batch = tenant(
        "batch",
        "batch",
        f64::INFINITY,
        Some(BATCH_CONCURRENCY),
        size * 2,
        (2048, 512, 0.2),
    );
    // The interactive product is running when the batch job starts.
    batch.delay = BATCH_DELAY;
    // Both more in flight than their fair share of the pool, the greedy one four times the
    // steady one's; twice the requests, so that it is still sending when the steady one is done
    // even when it gets no more than the steady one.
    let shape = (2048, 512, 0.2);
    let steady_prompts = size;
    let steady = tenant(
        "steady",
        "standard",
        f64::INFINITY,
        Some(FAIR_CONCURRENCY),
        steady_prompts,
        shape,
    );
    let greedy = tenant(
        "greedy",
        "standard",
        f64::INFINITY,
        Some(FAIR_CONCURRENCY * 4),
        steady_prompts * 2,
        shape,
    );
    vec![
        Phase {
            name: "alone",
            about: "the interactive tenant by itself",
            tenants: vec![interactive.clone()],
        },
        Phase {
            name: "flood",
            about: "the interactive tenant while the batch tenant floods the pool",
            tenants: vec![interactive, batch],
        },
        Phase {
            name: "fairness",
            about: "two tenants of equal priority, one with four times the other's appetite",
            tenants: vec![steady, greedy],
        },
    ]
}

/// Simulated seconds the interactive tenant runs before the batch tenant starts in the flood;
/// the flood's interactive figures count the requests sent after that.
pub const BATCH_DELAY: f64 = 10.0;
/// Requests the batch tenant keeps in flight.
pub const BATCH_CONCURRENCY: usize = 256;
/// Requests the steady tenant keeps in flight (the greedy one four times as many): about 1.5
/// times its fair share of what five A10 pods hold of these requests below the KV threshold.
pub const FAIR_CONCURRENCY: usize = 128;

/// How a tenant's requests ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcomes {
    pub sent: usize,
    /// Complete answers.
    pub served: usize,
    /// Answered with an HTTP error status, by status.
    pub answered: BTreeMap<u16, usize>,
    /// Ended without an answer (a broken connection or stream).
    pub lost: usize,
}

impl Outcomes {
    pub fn of(records: &[RequestRecord]) -> Outcomes {
        let mut outcomes = Outcomes {
            sent: records.len(),
            ..Outcomes::default()
        };
        for record in records {
            if record.success {
                outcomes.served += 1;
            } else if let Some(status) = http_status(&record.error) {
                *outcomes.answered.entry(status).or_default() += 1;
            } else {
                outcomes.lost += 1;
            }
        }
        outcomes
    }

    pub fn answered_total(&self) -> usize {
        self.answered.values().sum()
    }

    /// Every request served or answered.
    pub fn complete(&self) -> bool {
        self.lost == 0 && self.served + self.answered_total() == self.sent
    }
}

/// The status of a runner error `HTTP 429: …`.
fn http_status(error: &str) -> Option<u16> {
    let rest = error.strip_prefix("HTTP ")?;
    rest.split(':').next()?.trim().parse().ok()
}

/// One tenant's results in one phase.
#[derive(Debug, Clone)]
pub struct TenantRun {
    pub spec: TenantSpec,
    pub summary: BenchSummary,
    pub outcomes: Outcomes,
    /// (simulated seconds since the phase started, output tokens) per served request, at its end.
    pub completions: Vec<(f64, usize)>,
    /// (simulated seconds since the phase started, TTFT in ms) per served request, at its send.
    pub sends: Vec<(f64, f64)>,
    /// Simulated seconds from the phase's start to the tenant's first send, last send and last
    /// answer.
    pub first_send: f64,
    pub last_send: f64,
    pub last_answer: f64,
}

impl TenantRun {
    /// Served output tokens per simulated second over the tenant's own span.
    pub fn output_rate(&self) -> f64 {
        let span = self.last_answer - self.first_send;
        let tokens: usize = self.completions.iter().map(|(_, n)| n).sum();
        if span > 0.0 {
            tokens as f64 / span
        } else {
            0.0
        }
    }

    /// Served output tokens per simulated second of answers that ended by `until`.
    pub fn output_rate_until(&self, until: f64) -> f64 {
        let tokens: usize = self
            .completions
            .iter()
            .filter(|(at, _)| *at <= until)
            .map(|(_, n)| n)
            .sum();
        if until > 0.0 {
            tokens as f64 / until
        } else {
            0.0
        }
    }

    pub fn ttft_p95(&self) -> f64 {
        self.summary.ttft.percentile(95.0)
    }

    /// TTFT p95 (ms) of the served requests sent at or after `from` (simulated seconds), and how
    /// many there were.
    pub fn ttft_p95_from(&self, from: f64) -> (f64, usize) {
        let ttfts: Vec<f64> = self
            .sends
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, ttft)| *ttft)
            .collect();
        (Sorted::new(&ttfts).percentile(95.0), ttfts.len())
    }
}

/// One phase through one route.
#[derive(Debug, Clone)]
pub struct PhaseRun {
    pub phase: &'static str,
    pub tenants: Vec<TenantRun>,
    /// Simulator steps that fell behind their schedule, over the five simulators.
    pub slips: f64,
    /// Wall seconds and the gateway's CPU seconds over the phase.
    pub wall: f64,
    pub gateway_cpu: f64,
    /// What the model servers did over the phase (KV usage, preemptions), from their `/metrics`.
    pub servers: ServerSummary,
    /// The wall seconds the KV figures cover: while every tenant was active.
    pub kv_window: (f64, f64),
}

impl PhaseRun {
    /// KV-cache usage over the phase, averaged over time and the five simulators.
    pub fn kv_mean(&self) -> f64 {
        let endpoints = &self.servers.endpoints;
        if endpoints.is_empty() {
            return 0.0;
        }
        endpoints.iter().map(|e| e.kv_mean).sum::<f64>() / endpoints.len() as f64
    }

    /// The highest KV-cache usage any simulator reported over the phase.
    pub fn kv_max(&self) -> f64 {
        self.servers
            .endpoints
            .iter()
            .map(|e| e.kv_max)
            .fold(0.0, f64::max)
    }

    pub fn tenant(&self, name: &str) -> Option<&TenantRun> {
        self.tenants.iter().find(|t| t.spec.name == name)
    }

    /// Jain's index of the tenants' served output token rates over the window in which all of
    /// them were still being answered (until the first one's last answer), and that window.
    pub fn fairness(&self) -> (f64, f64) {
        let window = self
            .tenants
            .iter()
            .map(|t| t.last_answer)
            .fold(f64::INFINITY, f64::min);
        let rates: Vec<f64> = self
            .tenants
            .iter()
            .map(|t| t.output_rate_until(window))
            .collect();
        (jain_index(&rates), window)
    }
}

/// One route's phases.
#[derive(Debug, Clone)]
pub struct QosRouteRun {
    pub route: Route,
    pub repeat: usize,
    pub phases: Vec<PhaseRun>,
}

impl QosRouteRun {
    pub fn label(&self) -> String {
        with_repeat(self.route.label(), self.repeat)
    }

    pub fn phase(&self, name: &str) -> Option<&PhaseRun> {
        self.phases.iter().find(|p| p.phase == name)
    }

    fn tenant(&self, phase: &str, tenant: &str) -> Option<&TenantRun> {
        self.phase(phase)?.tenant(tenant)
    }

    /// The interactive tenant's TTFT p95 (ms) in the flood, over its requests sent once the
    /// batch tenant had started, and how many those were.
    pub fn interactive_flood_p95(&self) -> Option<(f64, usize)> {
        let flood = self.phase("flood")?;
        let batch_start = flood.tenant("batch")?.first_send;
        Some(flood.tenant("interactive")?.ttft_p95_from(batch_start))
    }

    /// Interactive TTFT p95 in the flood (once the batch started) over alone.
    pub fn interactive_ratio(&self) -> Option<f64> {
        let alone = self.tenant("alone", "interactive")?.ttft_p95();
        let (flood, _) = self.interactive_flood_p95()?;
        (alone > 0.0).then(|| flood / alone)
    }

    pub fn batch_rate(&self) -> Option<f64> {
        Some(self.tenant("flood", "batch")?.output_rate())
    }
}

/// The statistics of every tenant's summary.
fn options() -> SummaryOptions {
    SummaryOptions {
        metrics: Metric::ALL.to_vec(),
        percentiles: vec![50.0, 95.0, 99.0],
        goodput: Vec::new(),
    }
}

fn tenant_run(
    spec: &TenantSpec,
    output: &RunOutput,
    origin: Instant,
    plan: &ComparePlan,
) -> TenantRun {
    let scale = plan.time_scale;
    let offset = output
        .started
        .saturating_duration_since(origin)
        .as_secs_f64();
    let at = |wall: f64| (offset + wall) * scale;
    let completions = output
        .records
        .iter()
        .filter(|r| r.success)
        .map(|r| (at(r.start + r.latency), r.output_len))
        .collect();
    let sends = output
        .records
        .iter()
        .filter(|r| r.success)
        .map(|r| (at(r.start), r.ttft * scale * 1000.0))
        .collect();
    let first_send = output
        .records
        .iter()
        .map(|r| at(r.start))
        .fold(f64::INFINITY, f64::min);
    let last_send = output
        .records
        .iter()
        .map(|r| at(r.start))
        .fold(0.0, f64::max);
    let last_answer = output
        .records
        .iter()
        .map(|r| at(r.start + r.latency))
        .fold(0.0, f64::max);
    let settings = RunSettings {
        backend: plan.scenario.sending.backend.name().to_string(),
        label: Some(spec.name.clone()),
        model_id: plan.scenario.sending.model_id.clone(),
        tokenizer_id: plan.scenario.sending.model_id.clone(),
        num_prompts: spec.prompts,
        request_rate: spec.rate,
        burstiness: 1.0,
        max_concurrency: spec.concurrency,
        time_scale: scale,
    };
    TenantRun {
        spec: spec.clone(),
        summary: summarize(&output.records, output.duration, settings, options()),
        outcomes: Outcomes::of(&output.records),
        completions,
        sends,
        first_send: if first_send.is_finite() {
            first_send
        } else {
            0.0
        },
        last_send,
        last_answer,
    }
}

/// Wall seconds from the phase's start during which every tenant was active: from the last
/// tenant's first send to the first tenant's last answer (the whole phase when that is empty).
fn active_window(tenants: &[TenantRun], time_scale: f64, wall: f64) -> (f64, f64) {
    let from = tenants.iter().map(|t| t.first_send).fold(0.0, f64::max) / time_scale;
    let until = tenants
        .iter()
        .map(|t| t.last_answer)
        .fold(f64::INFINITY, f64::min)
        / time_scale;
    if until > from {
        (from, until)
    } else {
        (0.0, wall)
    }
}

/// Runs one phase through `route` on a fresh stack.
pub async fn run_phase(
    plan: &ComparePlan,
    route: &Route,
    phase: &Phase,
) -> Result<PhaseRun, CompareError> {
    let scratch = tempfile::Builder::new()
        .prefix("igw-qos-")
        .tempdir()
        .map_err(CompareError::Scratch)?;
    let stack = start_stack(&stack_plan(plan, route, 1, scratch.path())).await?;
    let sending = &plan.scenario.sending;
    let base = RunPlan {
        shape: RequestShape {
            url: format!(
                "http://127.0.0.1:{}{}",
                route.port(),
                sending.backend.default_endpoint()
            ),
            backend: sending.backend,
            style: sending.style,
            ignore_eos: sending.ignore_eos,
            api_key: None,
            request_id_prefix: default_request_id_prefix(plan.seed),
            extra_headers: Vec::new(),
            more_urls: Vec::new(),
        },
        served_model: SEED_SERVED_NAME.to_string(),
        max_concurrency: None,
        request_rate: f64::INFINITY,
        burstiness: 1.0,
        seed: plan.seed,
        progress: false,
        initial_test_run: false,
        block_size: DEFAULT_BLOCK_SIZE,
        time_scale: plan.time_scale,
    };
    let in_flight: usize = phase
        .tenants
        .iter()
        .map(|t| t.concurrency.unwrap_or(t.prompts))
        .sum();
    let client = StreamClient::new(in_flight.max(1));
    let pids = stack.gateway_pids.clone();
    let before = cpu_now(&pids);
    let stats_client = StreamClient::new(4);
    let mut stats_before = Vec::new();
    for endpoint in &stack.endpoints {
        stats_before.push(sim_stats(&stats_client, endpoint).await);
    }
    let origin = Instant::now();
    let scraper = Scraper::start(stack.endpoints.clone(), plan.scrape_interval, origin).await;
    let outputs = run_tenants(&phase.tenants, &base, client).await;
    let ticks = scraper.finish().await;
    let outputs = outputs.map_err(|e| CompareError::Tenants {
        route: route.short(),
        source: e,
    })?;
    let wall = origin.elapsed().as_secs_f64();
    let gateway_cpu = cpu_now(&pids)[0] - before[0];
    let mut stats_after = Vec::new();
    for endpoint in &stack.endpoints {
        stats_after.push(sim_stats(&stats_client, endpoint).await);
    }
    let slips = stats_after
        .iter()
        .zip(&stats_before)
        .map(|(after, before)| {
            after["slips"].as_f64().unwrap_or(0.0) - before["slips"].as_f64().unwrap_or(0.0)
        })
        .sum();
    let stack_endpoints = stack.endpoints.clone();
    super::finish_stack(stack, route, scratch, plan.keep_scratch)?;
    let tenants: Vec<TenantRun> = phase
        .tenants
        .iter()
        .zip(&outputs)
        .map(|(spec, output)| tenant_run(spec, output, origin, plan))
        .collect();
    let window = active_window(&tenants, plan.time_scale, wall);
    let servers = summarize_servers(
        &stack_endpoints,
        &ticks,
        &stats_before,
        &stats_after,
        window,
        window,
    );
    Ok(PhaseRun {
        phase: phase.name,
        tenants,
        slips,
        wall,
        gateway_cpu,
        servers,
        kv_window: window,
    })
}

/// Every phase through every route, reporting progress on stderr.
pub async fn run_all(plan: &ComparePlan) -> Result<Vec<QosRouteRun>, CompareError> {
    let phases = phases(plan.size);
    let mut runs = Vec::new();
    for (route, repeat) in plan.routes.iter().zip(repeat_numbers(&plan.routes)) {
        let mut done = Vec::new();
        for phase in &phases {
            eprintln!(
                "qos: {} through {} (fresh simulators and gateway)",
                phase.about,
                with_repeat(route.label(), repeat)
            );
            let run = run_phase(plan, route, phase).await?;
            for t in &run.tenants {
                eprintln!(
                    "  {}: {} sent, {} served, {} answered, {} lost; TTFT p50/p95 {:.0}/{:.0} ms; {:.0} output tok/s",
                    t.spec.name,
                    t.outcomes.sent,
                    t.outcomes.served,
                    t.outcomes.answered_total(),
                    t.outcomes.lost,
                    t.summary.ttft.percentile(50.0),
                    t.ttft_p95(),
                    t.output_rate(),
                );
            }
            eprintln!(
                "  servers: KV usage mean {:.2}, max {:.2} over {} scrapes from {:.1} to {:.1} wall s; {:.0} preemptions",
                run.kv_mean(),
                run.kv_max(),
                run.servers.kv_ticks,
                run.kv_window.0,
                run.kv_window.1,
                run.servers.preemptions
            );
            if phase.tenants.len() > 1 && phase.name == "fairness" {
                let (jain, window) = run.fairness();
                eprintln!("  Jain's index {jain:.3} over the first {window:.0} simulated s");
            }
            done.push(run);
        }
        runs.push(QosRouteRun {
            route: route.clone(),
            repeat,
            phases: done,
        });
    }
    Ok(runs)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// The issue's four figures, flow control on against off and against the plain route.
pub fn targets(runs: &[QosRouteRun]) -> String {
    let mut out = String::new();
    let on = runs
        .iter()
        .find(|r| matches!(r.route, Route::Inference(_)) && r.repeat == 1);
    let off = runs
        .iter()
        .find(|r| matches!(r.route, Route::Unqueued(_)) && r.repeat == 1);
    for run in runs {
        if let (Some(ratio), Some((flood, n))) =
            (run.interactive_ratio(), run.interactive_flood_p95())
        {
            let alone = run
                .tenant("alone", "interactive")
                .map_or(0.0, TenantRun::ttft_p95);
            let _ = writeln!(
                out,
                "- Interactive TTFT p95 with the batch flood ({n} requests sent after the batch started) / alone, {}: {} / {} ms = **{ratio:.2}**{}",
                run.label(),
                ms(flood),
                ms(alone),
                if on.is_some_and(|r| std::ptr::eq(r, run)) {
                    format!(" (target ≤ 1.5: {})", verdict(ratio <= 1.5))
                } else {
                    String::new()
                }
            );
        }
    }
    if let (Some(on), Some(off)) = (on, off)
        && let (Some(a), Some(b)) = (on.batch_rate(), off.batch_rate())
        && b > 0.0
    {
        let ratio = a / b;
        let _ = writeln!(
            out,
            "- Batch output tokens/s, flow control on / off: {a:.0} / {b:.0} = **{ratio:.2}** (target ≥ 0.9: {})",
            verdict(ratio >= 0.9)
        );
    }
    for run in runs {
        if let Some(phase) = run.phase("fairness") {
            let (jain, window) = phase.fairness();
            let rates: Vec<String> = phase
                .tenants
                .iter()
                .map(|t| format!("{} {:.0}", t.spec.name, t.output_rate_until(window)))
                .collect();
            let _ = writeln!(
                out,
                "- Jain's index of the equal-priority tenants' served output tok/s, {} ({} over the first {window:.0} s): **{jain:.3}**{}",
                run.label(),
                rates.join(", "),
                if on.is_some_and(|r| std::ptr::eq(r, run)) {
                    format!(" (target ≥ 0.9: {})", verdict(jain >= 0.9))
                } else {
                    String::new()
                }
            );
        }
    }
    let incomplete: Vec<String> = runs
        .iter()
        .flat_map(|run| {
            run.phases.iter().flat_map(move |phase| {
                phase
                    .tenants
                    .iter()
                    .filter(|t| !t.outcomes.complete())
                    .map(move |t| format!("{} {} {}", run.label(), phase.phase, t.spec.name))
            })
        })
        .collect();
    let _ = writeln!(
        out,
        "- Served + answered = sent for every tenant of every phase and route: {}",
        if incomplete.is_empty() {
            "**yes** (target: met)".to_string()
        } else {
            format!("**no**: {} (target: not met)", incomplete.join("; "))
        }
    );
    out
}

fn answered_text(outcomes: &Outcomes) -> String {
    if outcomes.answered.is_empty() {
        return "0".into();
    }
    outcomes
        .answered
        .iter()
        .map(|(status, n)| format!("{n} ({status})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every tenant of every phase and route.
pub fn tenants_table(runs: &[QosRouteRun]) -> String {
    let mut out = String::from(
        "| route | phase | tenant | sent | served | answered (status) | lost | TTFT p50 | TTFT p95 | TTFT p99 | E2EL p50 | output tok/s |\n|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        for phase in &run.phases {
            for t in &phase.tenants {
                let s = &t.summary;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                    run.label(),
                    phase.phase,
                    t.spec.name,
                    t.outcomes.sent,
                    t.outcomes.served,
                    answered_text(&t.outcomes),
                    t.outcomes.lost,
                    ms(s.ttft.percentile(50.0)),
                    ms(s.ttft.percentile(95.0)),
                    ms(s.ttft.percentile(99.0)),
                    ms(s.e2el.percentile(50.0)),
                    t.output_rate(),
                );
            }
        }
    }
    out
}

fn processes_table(runs: &[QosRouteRun]) -> String {
    let mut out = String::from(
        "| route | phase | wall time (s) | gateway CPU (% of a core) | simulator slips | KV usage while every tenant was active, mean / max | preemptions |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        for phase in &run.phases {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} / {:.2} | {:.0} |",
                run.label(),
                phase.phase,
                phase.wall,
                if phase.wall > 0.0 {
                    phase.gateway_cpu / phase.wall * 100.0
                } else {
                    0.0
                },
                phase.slips,
                phase.kv_mean(),
                phase.kv_max(),
                phase.servers.preemptions,
            );
        }
    }
    out
}

fn tenant_setup(phases: &[Phase], objectives: &[ObjectiveSpec]) -> String {
    let mut out = String::from(
        "| phase | tenant | objective (priority) | fairness id | requests | input / output tokens (range) | rate (req/s) | in flight at most |\n|---|---|---|---|---:|---|---:|---:|\n",
    );
    for phase in phases {
        for t in &phase.tenants {
            let objective = t.objective.as_deref().unwrap_or("none");
            let priority = objectives
                .iter()
                .find(|o| o.name == objective)
                .map_or(0, |o| o.priority);
            let _ = writeln!(
                out,
                "| {} | {} | `{objective}` ({priority}) | `{}` | {} | {} / {} (±{:.0}%) | {} | {} |",
                phase.name,
                t.name,
                t.fairness,
                t.prompts,
                t.input,
                t.output,
                t.range * 100.0,
                if t.rate.is_finite() {
                    format!("{} (Poisson)", t.rate)
                } else {
                    "all at once".into()
                },
                t.concurrency
                    .map_or_else(|| "no limit".to_string(), |c| c.to_string()),
            );
        }
    }
    out
}

/// The Markdown report.
pub fn markdown(plan: &ComparePlan, runs: &[QosRouteRun], context: &ReportContext) -> String {
    let scenario = &plan.scenario;
    let mut out = context.header("qos", scenario.title);
    let _ = writeln!(out, "## Setup\n");
    let _ = writeln!(
        out,
        "- Model servers: five fresh `vllm-sim` processes per phase and route (127.0.0.2–6:8000, \
         the Pods of `manifests/examples/local/`), profile `{}`, the seed Deployment's flags, \
         `--time-scale {}`.\n\
         - Gateway: a fresh `inference-gateway` per phase and route on a copy of \
         `manifests/examples/local/`, the InferencePool annotated with its routing strategy \
         (and, for the flow-off route, `flow-control.inference-gateway.dev/enabled: \"false\"`), \
         plus the InferenceObjectives {}.\n\
         - Tenants send at once, each with its own random dataset (seed {} plus the tenant's \
         position), the headers `x-gateway-inference-objective` and \
         `x-gateway-inference-fairness-id`, and ignore_eos:\n",
        super::fleet_up::profile_for(&plan.profiles, 0),
        plan.time_scale,
        scenario
            .objectives
            .iter()
            .map(|o| format!(
                "`{}` (priority {}{})",
                o.name,
                o.priority,
                o.ttl_ms
                    .map(|t| format!(", {} s to live in the queue", t / 1000))
                    .unwrap_or_default()
            ))
            .collect::<Vec<_>>()
            .join(", "),
        plan.seed,
    );
    out.push_str(&tenant_setup(&phases(plan.size), &scenario.objectives));
    let _ = writeln!(
        out,
        "\nTimes are in simulated seconds (wall time × {}), rates per simulated second.\n\n\
         Why this workload: {}\n",
        plan.time_scale, scenario.rationale
    );
    let _ = writeln!(out, "## Target figures\n\n{}", targets(runs));
    let _ = writeln!(
        out,
        "Definitions: a tenant's output tok/s is its served output tokens over its span (first \
         send to last answer); Jain's index uses each equal-priority tenant's served output \
         tokens over the window in which both were still being answered, from the phase's start \
         to the first tenant's last answer. *Answered* is an HTTP error status (429 from the \
         gateway's queue or shedding, with `x-llm-d-request-dropped-reason`); *lost* would be a \
         broken connection or stream.\n"
    );
    let _ = writeln!(
        out,
        "## Every tenant (ms unless stated)\n\n{}",
        tenants_table(runs)
    );
    let _ = writeln!(
        out,
        "## Pictures\n\n\
         The interactive tenant's TTFT, alone and under the batch flood, per route:\n\n\
         ![interactive TTFT](qos-interactive-ttft.png)\n\n\
         The equal-priority tenants' served output tokens per simulated second (answers ending \
         in each 10 s bin), per route:\n\n\
         ![fairness](qos-fairness.png)\n"
    );
    let _ = writeln!(
        out,
        "## Processes\n\n{}\nA *slip* is a simulator engine step that fell more than 50 ms behind \
         its schedule; none means the simulators kept to their step-time model.",
        processes_table(runs)
    );
    out
}

/// Every figure of the report.
pub fn data_json(plan: &ComparePlan, runs: &[QosRouteRun], context: &ReportContext) -> Value {
    let routes: Vec<Value> = runs
        .iter()
        .map(|run| {
            let phases: Vec<Value> = run
                .phases
                .iter()
                .map(|phase| {
                    let tenants: Vec<Value> = phase
                        .tenants
                        .iter()
                        .map(|t| {
                            let s = &t.summary;
                            json!({
                                "tenant": t.spec.name,
                                "objective": t.spec.objective,
                                "fairness_id": t.spec.fairness,
                                "sent": t.outcomes.sent,
                                "served": t.outcomes.served,
                                "answered": t.outcomes.answered.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                                "lost": t.outcomes.lost,
                                "ttft_ms": {"p50": s.ttft.percentile(50.0), "p95": s.ttft.percentile(95.0), "p99": s.ttft.percentile(99.0), "mean": s.ttft.mean},
                                "e2el_ms": {"p50": s.e2el.percentile(50.0), "p95": s.e2el.percentile(95.0)},
                                "output_tokens_per_second": t.output_rate(),
                                "first_send_s": t.first_send,
                        "last_send_s": t.last_send,
                                "last_answer_s": t.last_answer,
                            })
                        })
                        .collect();
                    let mut value = json!({
                        "phase": phase.phase,
                        "tenants": tenants,
                        "wall_seconds": phase.wall,
                        "gateway_cpu_seconds": phase.gateway_cpu,
                        "simulator_slips": phase.slips,
                        "kv_usage_mean": phase.kv_mean(),
                        "kv_usage_max": phase.kv_max(),
                        "preemptions": phase.servers.preemptions,
                    });
                    if phase.phase == "fairness" {
                        let (jain, window) = phase.fairness();
                        value["jain_index"] = json!(jain);
                        value["fairness_window_s"] = json!(window);
                    }
                    value
                })
                .collect();
            json!({
                "route": with_repeat(run.route.short(), run.repeat),
                "interactive_p95_flood_over_alone": run.interactive_ratio(),
                "batch_output_tokens_per_second": run.batch_rate(),
                "phases": phases,
            })
        })
        .collect();
    json!({
        "scenario": "qos",
        "command": context.command,
        "commit": context.commit,
        "date": context.date,
        "time_scale": plan.time_scale,
        "size": plan.size,
        "seed": plan.seed,
        "routes": routes,
    })
}

/// Served output tokens per simulated second in bins of `bin` seconds, by answer time.
pub fn binned_rate(completions: &[(f64, usize)], bin: f64, until: f64) -> Vec<(f64, f64)> {
    let bins = (until / bin).ceil().max(1.0) as usize;
    let mut tokens = vec![0usize; bins];
    for (at, n) in completions {
        let index = ((at / bin) as usize).min(bins - 1);
        tokens[index] += n;
    }
    tokens
        .iter()
        .enumerate()
        .map(|(i, n)| ((i as f64 + 0.5) * bin, *n as f64 / bin))
        .collect()
}

/// Writes `qos.md`, `data/qos.json` and the pictures into `dir`; returns the paths written.
pub fn write_report(
    plan: &ComparePlan,
    runs: &[QosRouteRun],
    dir: &Path,
    context: &ReportContext,
    font: Option<&Path>,
) -> Result<Vec<PathBuf>, CompareError> {
    let mut written = vec![
        write_file(dir.join("qos.md"), markdown(plan, runs, context))?,
        write_file(
            dir.join("data").join("qos.json"),
            serde_json::to_string_pretty(&data_json(plan, runs, context)).unwrap_or_default(),
        )?,
    ];
    super::plot::register_font(font)?;
    let mut labels = Vec::new();
    for run in runs {
        for phase in ["alone", "flood"] {
            if let Some(t) = run.tenant(phase, "interactive") {
                let what = if phase == "alone" {
                    "alone"
                } else {
                    "with the batch flood"
                };
                labels.push((format!("{}, {what}", run.label()), t));
            }
        }
    }
    let series: Vec<super::plot::Distribution> = labels
        .iter()
        .map(|(label, t)| (label.clone(), t.summary.ttft.samples.values()))
        .collect();
    written.extend(super::plot::write_cdf(
        dir,
        "qos-interactive-ttft",
        "Interactive tenant's TTFT, alone and under a batch flood",
        &series,
    )?);
    let panels: Vec<super::plot::Panel> = runs
        .iter()
        .filter_map(|run| {
            let phase = run.phase("fairness")?;
            let until = phase
                .tenants
                .iter()
                .map(|t| t.last_answer)
                .fold(0.0, f64::max);
            Some(super::plot::Panel {
                title: run.label(),
                series: phase
                    .tenants
                    .iter()
                    .map(|t| {
                        (
                            t.spec.name.clone(),
                            binned_rate(&t.completions, 10.0, until),
                        )
                    })
                    .collect(),
            })
        })
        .collect();
    if !panels.is_empty() {
        written.extend(super::plot::write_panels(
            dir,
            "qos-fairness",
            &panels,
            &super::plot::PanelAxes {
                x_desc: "simulated seconds since the phase started",
                y_desc: "served output tokens / s",
                y_max: None,
            },
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(success: bool, error: &str) -> RequestRecord {
        RequestRecord {
            success,
            error: error.into(),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn outcomes_tell_answers_from_losses() {
        let records = [
            record(true, ""),
            record(false, "HTTP 429: {\"error\":{}}"),
            record(false, "HTTP 429: x"),
            record(false, "HTTP 503: y"),
            record(false, "connection reset by peer"),
        ];
        let outcomes = Outcomes::of(&records);
        assert_eq!((outcomes.sent, outcomes.served, outcomes.lost), (5, 1, 1));
        assert_eq!(outcomes.answered, BTreeMap::from([(429, 2), (503, 1)]));
        assert!(!outcomes.complete());
        assert!(Outcomes::of(&records[..4]).complete());
    }

    #[test]
    fn the_phases_are_the_issue_s_tenants() {
        let phases = phases(240);
        let names: Vec<&str> = phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["alone", "flood", "fairness"]);
        let objectives = objectives();
        let priority = |tenant: &TenantSpec| {
            objectives
                .iter()
                .find(|o| Some(o.name.as_str()) == tenant.objective.as_deref())
                .unwrap()
                .priority
        };
        let (interactive, batch) = (&phases[1].tenants[0], &phases[1].tenants[1]);
        assert_eq!(phases[0].tenants, std::slice::from_ref(interactive));
        assert!(priority(interactive) > priority(batch));
        assert!(batch.input > 4 * interactive.input && batch.output > 2 * interactive.output);
        let (steady, greedy) = (&phases[2].tenants[0], &phases[2].tenants[1]);
        assert_eq!(priority(steady), priority(greedy));
        assert_eq!((steady.input, steady.output), (greedy.input, greedy.output));
        assert_eq!(greedy.concurrency, steady.concurrency.map(|c| 4 * c));
        assert_ne!(steady.fairness, greedy.fairness);
    }

    fn run(name: &str, completions: Vec<(f64, usize)>, last_answer: f64) -> TenantRun {
        let spec = TenantSpec::parse(&format!("name={name}")).unwrap();
        let settings = RunSettings {
            backend: "vllm".into(),
            label: None,
            model_id: "m".into(),
            tokenizer_id: "m".into(),
            num_prompts: 0,
            request_rate: 1.0,
            burstiness: 1.0,
            max_concurrency: None,
            time_scale: 1.0,
        };
        TenantRun {
            spec,
            summary: summarize(&[], 1.0, settings, options()),
            outcomes: Outcomes::default(),
            completions,
            sends: Vec::new(),
            first_send: 0.0,
            last_send: last_answer / 2.0,
            last_answer,
        }
    }

    #[test]
    fn servers_are_judged_while_every_tenant_is_active() {
        let first = run("a", Vec::new(), 60.0);
        let mut second = run("b", Vec::new(), 80.0);
        second.first_send = 10.0;
        // Simulated seconds 10..60 at time scale 2.
        assert_eq!(
            active_window(&[first.clone(), second], 2.0, 40.0),
            (5.0, 30.0)
        );
        // A tenant that was done before the other started: the whole phase.
        let mut late = run("c", Vec::new(), 90.0);
        late.first_send = 70.0;
        assert_eq!(active_window(&[first, late], 2.0, 45.0), (0.0, 45.0));
    }

    #[test]
    fn fairness_counts_the_window_in_which_both_were_answered() {
        // `steady` is done at 10 s with 1,000 tokens; `greedy` served 1,000 tokens by then and
        // 5,000 more after: over the common window they were served alike.
        let phase = PhaseRun {
            phase: "fairness",
            tenants: vec![
                run("steady", vec![(5.0, 500), (10.0, 500)], 10.0),
                run("greedy", vec![(4.0, 1000), (30.0, 5000)], 30.0),
            ],
            slips: 0.0,
            wall: 1.0,
            gateway_cpu: 0.0,
            servers: ServerSummary::default(),
            kv_window: (0.0, 1.0),
        };
        let (jain, window) = phase.fairness();
        assert_eq!(window, 10.0);
        assert!((jain - 1.0).abs() < 1e-9, "{jain}");
        assert_eq!(phase.tenants[1].output_rate(), 200.0);
        let binned = binned_rate(&phase.tenants[1].completions, 10.0, 30.0);
        // An answer at the end of the last bin counts in it.
        assert_eq!(binned, [(5.0, 100.0), (15.0, 0.0), (25.0, 500.0)]);
    }
}
