//! The target figures of each scenario: the ones the strategies issue judges (KV spread, prefix
//! hits, adapter loads), and for the newer scenarios what they exist to show: the uniform and
//! heterogeneous scenarios each strategy's TTFT against round-robin's, the heterogeneous one how
//! the requests split across the pod profiles against their capacity, the optimized baseline the
//! sustained output tokens/s. Computed from the runs present; a figure whose routes were not run
//! is left out.

use std::fmt::Write as _;

use super::fleet_up::{POD_HOSTS, profile_for};
use super::report::{loads_per_thousand, ms, pct, share_of_best};
use super::scenario::{Route, ScenarioName};
use super::sweep::{SUSTAINED_TTFT_P90_MS, sustained_table};
use super::table::spread;
use super::{ComparePlan, RouteRun, capacity};

fn find<'a>(runs: &'a [RouteRun], route: &Route) -> Option<&'a RouteRun> {
    runs.iter().find(|r| &r.route == route)
}

fn strategy(name: &str) -> Route {
    Route::Inference(name.to_string())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// The target figures of the scenario, computed from the runs present.
pub fn targets(plan: &ComparePlan, runs: &[RouteRun]) -> String {
    let scenario = plan.scenario.name;
    let mut out = String::new();
    match scenario {
        ScenarioName::Seed => {
            let baseline =
                find(runs, &strategy("ROUND_ROBIN")).or_else(|| find(runs, &Route::Plain));
            if let (Some(rr), Some(default)) = (baseline, find(runs, &strategy("DEFAULT"))) {
                let ratio = default.observed.servers.kv_spread / rr.observed.servers.kv_spread;
                let loaded_ratio = default.observed.servers.kv_spread_loaded
                    / rr.observed.servers.kv_spread_loaded;
                let (p99_default, p99_rr) = (
                    default.summary.ttft.percentile(99.0),
                    rr.summary.ttft.percentile(99.0),
                );
                let _ = writeln!(
                    out,
                    "- KV spread, DEFAULT / round-robin ({}): {:.3} / {:.3} = **{:.2}** (target ≤ 0.5: {}).",
                    rr.short(),
                    default.observed.servers.kv_spread,
                    rr.observed.servers.kv_spread,
                    ratio,
                    verdict(ratio <= 0.5)
                );
                let _ = writeln!(
                    out,
                    "- The same over the loaded phase (until the last request was sent, without the drain of the last answers): {:.3} / {:.3} = **{:.2}** (≤ 0.5: {}).",
                    default.observed.servers.kv_spread_loaded,
                    rr.observed.servers.kv_spread_loaded,
                    loaded_ratio,
                    verdict(loaded_ratio <= 0.5)
                );
                let _ = writeln!(
                    out,
                    "- p99 TTFT, DEFAULT vs. round-robin: {} ms vs. {} ms (target: no worse: {}).",
                    ms(p99_default),
                    ms(p99_rr),
                    verdict(p99_default <= p99_rr)
                );
            }
        }
        ScenarioName::Prefix | ScenarioName::MultiTurn => {
            if let Some(prefix) = find(runs, &strategy("PREFIX_CACHE")) {
                let share = share_of_best(prefix);
                let _ = writeln!(
                    out,
                    "- PREFIX_CACHE prefix-cache hit rate {} of a best achievable {} = **{}** of the best{}.",
                    pct(prefix.observed.servers.prefix_hit_rate),
                    pct(prefix.observed.output.bound_hit_rate),
                    pct(share),
                    if scenario == ScenarioName::Prefix {
                        format!(" (target ≥ 80%: {})", verdict(share >= 0.8))
                    } else {
                        String::new()
                    }
                );
                if let Some(default) = find(runs, &strategy("DEFAULT")) {
                    let ratio = prefix.summary.ttft.percentile(90.0)
                        / default.summary.ttft.percentile(90.0);
                    let _ = writeln!(
                        out,
                        "- p90 TTFT, PREFIX_CACHE / DEFAULT: {} ms / {} ms = **{:.2}**{}.",
                        ms(prefix.summary.ttft.percentile(90.0)),
                        ms(default.summary.ttft.percentile(90.0)),
                        ratio,
                        if scenario == ScenarioName::Prefix {
                            format!(" (target ≤ 0.5: {})", verdict(ratio <= 0.5))
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        ScenarioName::Lora => {
            let baseline =
                find(runs, &strategy("ROUND_ROBIN")).or_else(|| find(runs, &Route::Plain));
            if let (Some(rr), Some(affinity)) = (baseline, find(runs, &strategy("LORA_AFFINITY"))) {
                let ratio = loads_per_thousand(affinity) / loads_per_thousand(rr);
                let _ = writeln!(
                    out,
                    "- Adapter loads per 1,000 requests, LORA_AFFINITY / round-robin ({}): {:.1} / {:.1} = **{:.2}** (target ≤ 0.2: {}).",
                    rr.short(),
                    loads_per_thousand(affinity),
                    loads_per_thousand(rr),
                    ratio,
                    verdict(ratio <= 0.2)
                );
            }
        }
        ScenarioName::Uniform => {
            out.push_str(
                "- Every request is the same, so round-robin's even spread is optimal: a strategy \
                 matches it when its ratios are at most 1, or within round-robin's own run-to-run \
                 spread.\n",
            );
            out.push_str(&versus_plain(runs));
        }
        ScenarioName::Heterogeneous => {
            out.push_str(&profile_shares(plan, runs));
            out.push_str(&versus_plain(runs));
        }
        ScenarioName::OptimizedBaseline => {
            if runs.iter().any(|r| !r.stages.is_empty()) {
                let _ = writeln!(
                    out,
                    "Sustained output tokens/s: the output tokens/s of the highest-rate stage whose TTFT p90 is at most {:.0} s, per route, and its ratio to the plain route's (the mean of the plain runs'):\n\n{}",
                    SUSTAINED_TTFT_P90_MS / 1000.0,
                    sustained_table(runs)
                );
            }
        }
        // Its figures come from its tenants' phases (`qos::targets`), not from single runs.
        ScenarioName::Qos => {}
    }
    if out.is_empty() {
        out.push_str("- (the routes needed for the target figures were not run)\n");
    }
    out
}

/// Each route's TTFT percentiles and output tokens/s against the plain route's (the mean of its
/// runs), and the plain runs' own spread when there are several.
pub fn versus_plain(runs: &[RouteRun]) -> String {
    let mut out = String::new();
    let plain: Vec<&RouteRun> = runs.iter().filter(|r| r.route == Route::Plain).collect();
    if plain.is_empty() {
        return out;
    }
    let mean = |read: &dyn Fn(&RouteRun) -> f64| {
        plain.iter().map(|r| read(r)).sum::<f64>() / plain.len() as f64
    };
    let percentiles = [50.0, 90.0, 99.0];
    let base: Vec<f64> = percentiles
        .iter()
        .map(|&p| mean(&|r: &RouteRun| r.summary.ttft.percentile(p)))
        .collect();
    let base_tokens = mean(&|r: &RouteRun| r.summary.output_throughput);
    let _ = writeln!(
        out,
        "- Round-robin ({}): TTFT p50/p90/p99 {} / {} / {} ms, {:.0} output tok/s.",
        if plain.len() > 1 {
            format!("8080 plain, mean of {} runs", plain.len())
        } else {
            "8080 plain".to_string()
        },
        ms(base[0]),
        ms(base[1]),
        ms(base[2]),
        base_tokens
    );
    if plain.len() > 1 {
        let spreads: Vec<String> = percentiles
            .iter()
            .map(|&p| {
                let values: Vec<f64> = plain.iter().map(|r| r.summary.ttft.percentile(p)).collect();
                pct(spread(&values))
            })
            .collect();
        let _ = writeln!(
            out,
            "- Round-robin's run-to-run spread (max/min − 1 over its {} runs): TTFT p50 {}, p90 {}, p99 {}.",
            plain.len(),
            spreads[0],
            spreads[1],
            spreads[2]
        );
    }
    for run in runs.iter().filter(|r| r.route != Route::Plain) {
        let ratios: Vec<String> = percentiles
            .iter()
            .zip(&base)
            .map(|(&p, &b)| format!("{:.2}", run.summary.ttft.percentile(p) / b))
            .collect();
        let _ = writeln!(
            out,
            "- {}: TTFT p50/p90/p99 {} / {} / {} ms = **{}** × round-robin's; output tok/s {:.2} ×.",
            run.short(),
            ms(run.summary.ttft.percentile(50.0)),
            ms(run.summary.ttft.percentile(90.0)),
            ms(run.summary.ttft.percentile(99.0)),
            ratios.join(" / "),
            run.summary.output_throughput / base_tokens
        );
    }
    out
}

/// Per profile, the share of the pool's capacity (measured by [`capacity`] on the scenario's
/// requests) and the share of requests each route's pods of that profile finished.
fn profile_shares(plan: &ComparePlan, runs: &[RouteRun]) -> String {
    let mut out = String::new();
    let profiles: Vec<&str> = (0..POD_HOSTS.len())
        .map(|i| profile_for(&plan.profiles, i))
        .collect();
    let mut distinct: Vec<&str> = profiles.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let Ok(sample) = plan.scenario.workload(capacity::STEADY_REQUESTS, plan.seed) else {
        return out;
    };
    let capacities: Vec<f64> = distinct
        .iter()
        .map(|p| capacity::saturated(p, &sample).map_or(0.0, |c| c.requests_per_second))
        .collect();
    let pool: f64 = profiles
        .iter()
        .map(|p| capacities[distinct.iter().position(|d| d == p).unwrap_or(0)])
        .sum();
    let by_capacity: Vec<String> = distinct
        .iter()
        .zip(&capacities)
        .map(|(name, each)| {
            let pods = profiles.iter().filter(|p| *p == name).count();
            format!(
                "{pods} × {name} {:.2} requests/s each = {}",
                each,
                pct(pods as f64 * each / pool.max(f64::MIN_POSITIVE))
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "- Capacity of the pool (each pod's steady completion rate with the requests queued at once, `compare::capacity`): {}; round-robin gives every pod a fifth.",
        by_capacity.join(", ")
    );
    for run in runs {
        let finished: Vec<f64> = run
            .observed
            .servers
            .endpoints
            .iter()
            .map(|e| e.requests_finished)
            .collect();
        let total: f64 = finished.iter().sum();
        if total <= 0.0 {
            continue;
        }
        let shares: Vec<String> = distinct
            .iter()
            .map(|name| {
                let on: f64 = finished
                    .iter()
                    .zip(&profiles)
                    .filter(|(_, p)| *p == name)
                    .map(|(f, _)| f)
                    .sum();
                format!("{name} {}", pct(on / total))
            })
            .collect();
        let _ = writeln!(
            out,
            "- {}: requests finished by profile: {}; preemptions {}.",
            run.short(),
            shares.join(", "),
            run.observed.servers.preemptions
        );
    }
    out
}
