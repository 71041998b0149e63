//! Staged arrival rates: one run whose Poisson rate steps up stage by stage, back to back on the
//! same stack, like llm-d's 3→60 QPS staircase, and the per-stage figures cut out of that run.
//!
//! A sweep of `rates` with `stage_seconds` each sends round(rate × seconds) requests in stage k at
//! Poisson times within [k·S, (k+1)·S) simulated seconds, taking the dataset's requests in order:
//! stage 0 the first ones, and so on. Nothing waits between stages: a stage past saturation
//! leaves a queue that the next one inherits, as on a real staircase.
//!
//! Per stage, the requests *sent* in it give the latency figures (TTFT, ITL, count, failures);
//! **output tokens/s** counts every token the client *received* during the stage's window,
//! whichever stage sent its request, divided by the window: what the fleet delivered under that
//! offered load. The drain after the last stage belongs to no stage. **Sustained** is the
//! highest-rate stage whose TTFT p90 is at most [`SUSTAINED_TTFT_P90_MS`].

use std::fmt::Write as _;
use std::ops::Range;

use serde_json::{Value, json};

use super::RouteRun;
use crate::bench::dataset::{DatasetError, Workload, invalid};
use crate::bench::runner::arrival_times;
use crate::bench::summary::{BenchSummary, RequestRecord, RunSettings, SummaryOptions, summarize};

/// The TTFT p90 a stage may have and still count as sustained: a little above the 1.7 s a
/// 7,200-token prompt's prefill takes on an idle A10 pod, so a stage passes when requests wait
/// for little besides their own prefill.
pub const SUSTAINED_TTFT_P90_MS: f64 = 2000.0;

/// Rates (requests per simulated second) and how long each is offered.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub rates: Vec<f64>,
    pub stage_seconds: f64,
}

impl Sweep {
    /// Requests per stage: rate × seconds, rounded, at least one.
    pub fn stage_sizes(&self) -> Vec<usize> {
        self.rates
            .iter()
            .map(|rate| ((rate * self.stage_seconds).round() as usize).max(1))
            .collect()
    }

    pub fn total_requests(&self) -> usize {
        self.stage_sizes().iter().sum()
    }

    /// Dataset indexes of each stage's requests.
    pub fn stage_ranges(&self) -> Vec<Range<usize>> {
        let mut start = 0;
        self.stage_sizes()
            .into_iter()
            .map(|size| {
                start += size;
                start - size..start
            })
            .collect()
    }

    /// Each stage's window in simulated seconds since the run started.
    pub fn window(&self, stage: usize) -> (f64, f64) {
        let from = stage as f64 * self.stage_seconds;
        (from, from + self.stage_seconds)
    }

    /// Send times (simulated seconds) of every request, in dataset order: Poisson within each
    /// stage's window, a seed per stage.
    pub fn arrivals(&self, seed: u64) -> Vec<f64> {
        let mut times = Vec::with_capacity(self.total_requests());
        for (stage, size) in self.stage_sizes().into_iter().enumerate() {
            let (from, _) = self.window(stage);
            // At size / seconds per second, the last send falls at the end of the window.
            let rate = size as f64 / self.stage_seconds;
            let in_stage = arrival_times(size, rate, 1.0, seed.wrapping_add(stage as u64));
            times.extend(in_stage.into_iter().map(|t| from + t));
        }
        times
    }

    /// Keeps the first [`Sweep::total_requests`] single-turn sessions of `workload` and gives
    /// each its send time.
    pub fn apply(&self, workload: &mut Workload, seed: u64) -> Result<(), DatasetError> {
        self.validate()?;
        let total = self.total_requests();
        if workload.sessions.len() < total {
            return Err(invalid(
                "size",
                format!(
                    "the sweep needs {total} requests, the workload has {}",
                    workload.sessions.len()
                ),
            ));
        }
        workload.sessions.truncate(total);
        for (session, at) in workload.sessions.iter_mut().zip(self.arrivals(seed)) {
            session.arrival = Some(at);
        }
        let _ = write!(workload.description, "; {}", self.describe());
        Ok(())
    }

    fn validate(&self) -> Result<(), DatasetError> {
        if self.rates.is_empty() || self.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            return Err(invalid("rates", "need one or more positive, finite rates"));
        }
        if !(self.stage_seconds.is_finite() && self.stage_seconds > 0.0) {
            return Err(invalid("size", "stage seconds must be positive"));
        }
        Ok(())
    }

    /// "Poisson stages of 50 s at 0.25, 0.5, … requests/s, back to back (537 requests)".
    pub fn describe(&self) -> String {
        let rates: Vec<String> = self.rates.iter().map(|r| format!("{r}")).collect();
        format!(
            "Poisson stages of {} simulated s at {} requests/s, back to back on the same stack ({} requests)",
            self.stage_seconds,
            rates.join(", "),
            self.total_requests()
        )
    }
}

/// One stage's figures.
#[derive(Debug, Clone)]
pub struct StageResult {
    pub rate: f64,
    /// Simulated seconds since the run started.
    pub window: (f64, f64),
    /// Requests sent in the stage.
    pub requests: usize,
    /// Latencies of the requests sent in the stage.
    pub summary: BenchSummary,
    /// Tokens received during the window / its length.
    pub output_tokens_per_second: f64,
}

impl StageResult {
    pub fn ttft_p90(&self) -> f64 {
        self.summary.ttft.percentile(90.0)
    }

    pub fn sustains(&self) -> bool {
        self.summary.completed > 0 && self.ttft_p90() <= SUSTAINED_TTFT_P90_MS
    }
}

/// Simulated times (seconds since the run started) of every token a record received.
fn token_times(record: &RequestRecord, time_scale: f64) -> impl Iterator<Item = f64> + '_ {
    let first = record.start + record.ttft;
    let gaps = record.itl.iter().scan(first, |at, gap| {
        *at += gap;
        Some(*at)
    });
    std::iter::once(first)
        .chain(gaps)
        .filter(move |_| record.success)
        .map(move |at| at * time_scale)
}

/// Cuts one run's records (dataset order, wall-clock times) into the sweep's stages.
pub fn stage_results(
    sweep: &Sweep,
    records: &[RequestRecord],
    settings: &RunSettings,
    options: &SummaryOptions,
) -> Vec<StageResult> {
    let scale = settings.time_scale;
    let mut tokens = vec![0usize; sweep.rates.len()];
    for record in records {
        for at in token_times(record, scale) {
            let stage = (at / sweep.stage_seconds).floor();
            if stage >= 0.0 && (stage as usize) < tokens.len() {
                tokens[stage as usize] += 1;
            }
        }
    }
    sweep
        .stage_ranges()
        .into_iter()
        .enumerate()
        .map(|(stage, range)| {
            let sent: Vec<RequestRecord> = records
                .iter()
                .filter(|r| range.contains(&r.index))
                .cloned()
                .collect();
            let rate = sweep.rates[stage];
            let settings = RunSettings {
                num_prompts: range.len(),
                request_rate: rate,
                ..settings.clone()
            };
            StageResult {
                rate,
                window: sweep.window(stage),
                requests: range.len(),
                summary: summarize(
                    &sent,
                    sweep.stage_seconds / scale,
                    settings,
                    options.clone(),
                ),
                output_tokens_per_second: tokens[stage] as f64 / sweep.stage_seconds,
            }
        })
        .collect()
}

/// The highest-rate stage that meets [`SUSTAINED_TTFT_P90_MS`].
pub fn sustained(stages: &[StageResult]) -> Option<&StageResult> {
    stages
        .iter()
        .filter(|s| s.sustains())
        .max_by(|a, b| a.rate.total_cmp(&b.rate))
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// One Markdown table per stage, a row per route.
pub fn stage_tables(runs: &[RouteRun]) -> String {
    let mut out = String::new();
    let stages = runs.iter().map(|r| r.stages.len()).max().unwrap_or(0);
    for stage in 0..stages {
        let Some(first) = runs.iter().find_map(|r| r.stages.get(stage)) else {
            continue;
        };
        let _ = writeln!(
            out,
            "### Stage {}: {} requests/s, simulated seconds {:.0}–{:.0}\n",
            stage + 1,
            first.rate,
            first.window.0,
            first.window.1
        );
        out.push_str("| route | requests | ok / failed | output tok/s | TTFT p50 | TTFT p90 | ITL mean | ITL p90 |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for run in runs {
            let Some(s) = run.stages.get(stage) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} / {} | {:.0} | {} | {} | {} | {} |",
                run.short(),
                s.requests,
                s.summary.completed,
                s.summary.failed,
                s.output_tokens_per_second,
                ms(s.summary.ttft.percentile(50.0)),
                ms(s.ttft_p90()),
                ms(s.summary.itl.mean),
                ms(s.summary.itl.percentile(90.0)),
            );
        }
        out.push('\n');
    }
    out
}

/// The mean sustained output tokens/s of the plain route's runs (0 when none sustains a stage).
pub fn plain_sustained(runs: &[RouteRun]) -> Option<f64> {
    let plain: Vec<f64> = runs
        .iter()
        .filter(|r| r.route == super::scenario::Route::Plain)
        .map(|r| sustained(&r.stages).map_or(0.0, |s| s.output_tokens_per_second))
        .collect();
    (!plain.is_empty()).then(|| plain.iter().sum::<f64>() / plain.len() as f64)
}

/// Per route: the sustained stage, its output tokens/s and the ratio to the plain route's.
pub fn sustained_table(runs: &[RouteRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| route | highest rate with TTFT p90 ≤ {:.0} s (requests/s) | its TTFT p90 (ms) | sustained output tok/s | / plain route |",
        SUSTAINED_TTFT_P90_MS / 1000.0
    );
    out.push_str("|---|---:|---:|---:|---:|\n");
    let plain = plain_sustained(runs);
    for run in runs {
        let best = sustained(&run.stages);
        let tokens = best.map_or(0.0, |s| s.output_tokens_per_second);
        let ratio = match plain {
            Some(p) if p > 0.0 => format!("{:.2}", tokens / p),
            _ => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} |",
            run.short(),
            best.map_or("none".into(), |s| format!("{}", s.rate)),
            best.map_or("—".into(), |s| ms(s.ttft_p90())),
            tokens,
            ratio
        );
    }
    out
}

/// The stages of a run, for `data/NAME.json`.
pub fn stages_json(stages: &[StageResult]) -> Value {
    let best = sustained(stages);
    json!({
        "ttft_p90_limit_ms": SUSTAINED_TTFT_P90_MS,
        "sustained": {
            "rate": best.map(|s| s.rate),
            "output_tokens_per_s": best.map_or(0.0, |s| s.output_tokens_per_second),
        },
        "stages": stages.iter().map(|s| json!({
            "rate": s.rate,
            "window_seconds": [s.window.0, s.window.1],
            "requests": s.requests,
            "completed": s.summary.completed,
            "failed": s.summary.failed,
            "output_tokens_per_s": s.output_tokens_per_second,
            "p50_ttft_ms": s.summary.ttft.percentile(50.0),
            "p90_ttft_ms": s.ttft_p90(),
            "p99_ttft_ms": s.summary.ttft.percentile(99.0),
            "mean_itl_ms": s.summary.itl.mean,
            "p90_itl_ms": s.summary.itl.percentile(90.0),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::dataset::random::{RandomSpec, RangeSemantics};
    use crate::bench::summary::tests::{record, settings};

    fn sweep() -> Sweep {
        Sweep {
            rates: vec![0.25, 0.5, 2.0],
            stage_seconds: 10.0,
        }
    }

    #[test]
    fn stages_take_rate_times_seconds_requests_in_dataset_order() {
        let sweep = sweep();
        assert_eq!(sweep.stage_sizes(), [3, 5, 20]);
        assert_eq!(sweep.total_requests(), 28);
        assert_eq!(sweep.stage_ranges(), [0..3, 3..8, 8..28]);
        let times = sweep.arrivals(1);
        assert_eq!(times.len(), 28);
        for (stage, range) in sweep.stage_ranges().into_iter().enumerate() {
            let (from, to) = sweep.window(stage);
            for &t in &times[range] {
                assert!(t > from && t <= to + 1e-9, "stage {stage}: {t}");
            }
        }
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        // A tiny rate still sends one request.
        let tiny = Sweep {
            rates: vec![0.01],
            stage_seconds: 10.0,
        };
        assert_eq!(tiny.stage_sizes(), [1]);
    }

    #[test]
    fn applying_a_sweep_truncates_and_times_the_workload() {
        let mut workload = RandomSpec {
            num_prompts: 40,
            prefix_len: 0,
            input_len: 8,
            output_len: 4,
            range_ratio: 0.0,
            semantics: RangeSemantics::Current,
        }
        .workload(0)
        .unwrap();
        sweep().apply(&mut workload, 3).unwrap();
        assert_eq!(workload.sessions.len(), 28);
        assert!(workload.sessions.iter().all(|s| s.arrival.is_some()));
        assert!(workload.description.contains("0.25, 0.5, 2 requests/s"));
        workload.sessions.truncate(10);
        assert!(sweep().apply(&mut workload, 3).is_err());
        let bad = Sweep {
            rates: vec![1.0, 0.0],
            stage_seconds: 10.0,
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn stage_figures_split_latency_by_send_and_tokens_by_receipt() {
        let sweep = Sweep {
            rates: vec![0.1, 0.2],
            stage_seconds: 10.0,
        };
        // Stage 0 sends request 0; stage 1 sends 1 and 2. Time scale 2: wall seconds × 2.
        let mut records = vec![
            record(1.0, 0.5, &[1.0, 1.0, 2.0], 4), // tokens at 3, 5, 7, 11 simulated s
            record(6.0, 0.5, &[0.5], 2),           // tokens at 13, 14
            record(8.0, 1.5, &[], 1),              // token at 19
        ];
        for (index, record) in records.iter_mut().enumerate() {
            record.index = index;
        }
        let options = crate::compare::summary_options();
        let stages = stage_results(&sweep, &records, &settings(2.0), &options);
        assert_eq!(stages.len(), 2);
        assert_eq!((stages[0].requests, stages[1].requests), (1, 2));
        assert_eq!(stages[0].summary.completed, 1);
        assert!((stages[0].ttft_p90() - 1000.0).abs() < 1e-9);
        // Tokens at 3, 5, 7 fall in [0, 10); 11, 13, 14, 19 in [10, 20).
        assert!((stages[0].output_tokens_per_second - 0.3).abs() < 1e-9);
        assert!((stages[1].output_tokens_per_second - 0.4).abs() < 1e-9);
        // TTFTs 1,000 ms and 3,000 ms: stage 1 fails the 2 s limit, so stage 0 is sustained.
        assert!(stages[0].sustains() && !stages[1].sustains());
        assert_eq!(sustained(&stages).map(|s| s.rate), Some(0.1));
        let json = stages_json(&stages);
        assert_eq!(json["sustained"]["rate"], 0.1);
        assert_eq!(json["stages"][1]["requests"], 2);
    }
}
