//! A run with the model servers watched: start the scraper, read `/sim/stats`, run the workload,
//! read `/sim/stats` again, stop the scraper, and sum it all up. Both `loadgen --scrape` and
//! `compare` use this, so their figures are computed the same way.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::dataset::Workload;
use super::runner::{RunError, RunOutput, RunPlan, initial_test, run};
use super::scrape::{ScrapeTick, Scraper, sim_stats};
use super::servers::{ServerSummary, summarize_servers};
use crate::client::StreamClient;

/// Everything a watched run produced. Tick times and `window` are wall seconds since the
/// scraper started.
#[derive(Debug, Clone)]
pub struct ObservedRun {
    pub output: RunOutput,
    pub endpoints: Vec<String>,
    pub ticks: Vec<ScrapeTick>,
    pub window: (f64, f64),
    /// The part of `window` until the last request was sent.
    pub loaded: (f64, f64),
    pub servers: ServerSummary,
    /// Each endpoint's `/sim/stats` after the run (null from real servers).
    pub sim_stats: Vec<Value>,
}

async fn all_sim_stats(client: &StreamClient, endpoints: &[String]) -> Vec<Value> {
    let mut stats = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        stats.push(sim_stats(client, endpoint).await);
    }
    stats
}

/// Runs `workload` while scraping `endpoints` (model-server base URLs) every `interval`.
pub async fn run_observed(
    mut plan: RunPlan,
    workload: Workload,
    client: StreamClient,
    endpoints: Vec<String>,
    interval: Duration,
) -> Result<ObservedRun, RunError> {
    // The untimed first request goes out before the baseline scrape, so the servers' counters
    // cover exactly the timed requests.
    if plan.initial_test_run {
        initial_test(&plan, &workload, &client).await?;
        plan.initial_test_run = false;
    }
    let origin = Instant::now();
    let probe = StreamClient::new(endpoints.len().max(1));
    let stats_before = all_sim_stats(&probe, &endpoints).await;
    let scraper = Scraper::start(endpoints.clone(), interval, origin).await;
    let result = run(plan, workload, client).await;
    let ticks = scraper.finish().await;
    let output = result?;
    let stats_after = all_sim_stats(&probe, &endpoints).await;
    let start = output.started.duration_since(origin).as_secs_f64();
    let window = (start, start + output.duration);
    let last_send = output
        .records
        .iter()
        .map(|r| r.start)
        .fold(0.0f64, f64::max);
    let loaded = (start, start + last_send);
    let servers = summarize_servers(
        &endpoints,
        &ticks,
        &stats_before,
        &stats_after,
        window,
        loaded,
    );
    Ok(ObservedRun {
        output,
        endpoints,
        ticks,
        window,
        loaded,
        servers,
        sim_stats: stats_after,
    })
}
