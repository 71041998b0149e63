//! Drives a workload against a server: arrivals, the concurrency limit, conversations, timing.
//!
//! As in `vllm bench serve`: with `request_rate = inf` every session starts at once and the
//! concurrency limit (a fair semaphore, so requests go out in dataset order) alone paces them;
//! otherwise sessions start at times drawn from a gamma process (shape = burstiness, so 1 is
//! Poisson) rescaled so the last start falls at `N / rate`. A trace's own timestamps override the
//! process. A multi-turn session sends its turns one after another, each with the conversation
//! so far; a turn holds a concurrency slot only while its request is open.
//!
//! One tokio runtime, one pooled HTTP client; per event only a timestamp is kept
//! ([`crate::client`]). The best-case prefix-cache bound ([`super::prefix_bound`]) is updated in
//! send order. A progress bar is drawn only when asked and stderr is a terminal.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::dataset::{Message, Prompt, Session, Workload};
use super::prefix_bound::PrefixBound;
use super::request::RequestShape;
use super::summary::RequestRecord;
use crate::client::{StreamClient, StreamOutcome};
use crate::sim::tokenizer::count_tokens;

/// How to run a workload.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub shape: RequestShape,
    /// The `model` field when a session names none.
    pub served_model: String,
    pub max_concurrency: Option<usize>,
    /// Requests (sessions) per second; `f64::INFINITY` starts everything at once.
    pub request_rate: f64,
    pub burstiness: f64,
    pub seed: u64,
    pub progress: bool,
    /// Send the first request once, untimed, before the run (the older scripts' "initial test
    /// run"); the run is refused if it fails.
    pub initial_test_run: bool,
    /// KV block size for the best-case prefix bound.
    pub block_size: usize,
    /// The servers run this many times faster than real time (simulators): arrival times, which
    /// are in the servers' seconds, are divided by it.
    pub time_scale: f64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the workload has no requests")]
    Empty,
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    #[error("the initial test run failed: {0}")]
    InitialTest(String),
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// One record per request, in dataset order.
    pub records: Vec<RequestRecord>,
    /// Wall seconds from the first send slot to the last answer.
    pub duration: f64,
    /// When the run started (records' `start` counts from here).
    pub started: Instant,
    /// The best-case bound over every request sent.
    pub bound_hit_rate: f64,
}

/// One gamma(shape, 1) draw (Marsaglia–Tsang; shapes below 1 boosted by `U^(1/shape)`).
fn gamma(rng: &mut fastrand::Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = rng.f64().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        // Box–Muller standard normal.
        let (u1, u2) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
        let x = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.f64().max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Header naming a multi-turn conversation (the session id), sent with every turn.
pub const SESSION_HEADER: &str = "x-session-id";

/// Start times (seconds) of `n` sessions at `rate` per second with the given burstiness: gamma
/// gaps accumulated, then rescaled so the last start is at `n / rate`. All zero for an infinite
/// rate.
pub fn arrival_times(n: usize, rate: f64, burstiness: f64, seed: u64) -> Vec<f64> {
    if !rate.is_finite() || n == 0 {
        return vec![0.0; n];
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let scale = 1.0 / (rate * burstiness);
    let mut total = 0.0;
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            total += gamma(&mut rng, burstiness) * scale;
            total
        })
        .collect();
    let target = n as f64 / rate;
    if total > 0.0 {
        for time in &mut times {
            *time *= target / total;
        }
    }
    times
}

struct Shared {
    plan: RunPlan,
    client: StreamClient,
    slots: Option<Semaphore>,
    bound: Mutex<PrefixBound>,
    started: Instant,
    progress: indicatif::ProgressBar,
}

fn progress_bar(total: usize, wanted: bool) -> indicatif::ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

impl Shared {
    async fn send(
        &self,
        index: usize,
        model: &str,
        prompt: &Prompt,
        output_len: usize,
        capture_text: bool,
        session: Option<&str>,
    ) -> (RequestRecord, String, String) {
        let queued = Instant::now();
        let _slot = match &self.slots {
            Some(slots) => Some(
                slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed"),
            ),
            None => None,
        };
        let queue_time = queued.elapsed().as_secs_f64();
        let chat = self.plan.shape.backend.is_chat();
        let server_text = prompt.server_text(chat);
        let ideal_hit_tokens = self.bound.lock().admit(model, &server_text);
        let body = self.plan.shape.body(model, prompt, output_len);
        let mut record = RequestRecord {
            index,
            model: model.to_string(),
            queue_time,
            ideal_hit_tokens,
            ..RequestRecord::default()
        };
        let request = match self.plan.shape.request(index, body) {
            Ok(mut request) => {
                // A conversation names itself, for gateways that keep sessions on one endpoint.
                if let Some(session) = session.and_then(|s| http::HeaderValue::from_str(s).ok()) {
                    request.headers_mut().insert(SESSION_HEADER, session);
                }
                request
            }
            Err(error) => {
                record.error = error.to_string();
                return (record, server_text, String::new());
            }
        };
        let capture = capture_text || !self.plan.shape.expects_usage();
        let mut outcome = StreamOutcome::default();
        record.start = self.started.elapsed().as_secs_f64();
        let result = self
            .client
            .stream_request(request, capture, &mut outcome)
            .await;
        self.progress.inc(1);
        record.prompt_len = outcome
            .prompt_tokens
            .map_or_else(|| count_tokens(&server_text), |n| n as usize);
        record.output_len = outcome
            .completion_tokens
            .map_or_else(|| count_tokens(&outcome.text), |n| n as usize);
        record.ttft = outcome.ttft.map_or(0.0, |d| d.as_secs_f64());
        record.latency = outcome.latency.map_or(0.0, |d| d.as_secs_f64());
        record.itl = outcome
            .inter_token_gaps
            .iter()
            .map(Duration::as_secs_f64)
            .collect();
        record.success = false;
        if let Err(error) = result {
            record.error = error.to_string();
        } else if outcome.status != 200 {
            record.error = format!(
                "HTTP {}: {}",
                outcome.status,
                outcome.error_body.as_deref().unwrap_or("")
            );
        } else if let Some(error) = &outcome.error_body {
            record.error = error.clone();
        } else if outcome.ttft.is_none() {
            record.error = "Never received a valid chunk to calculate TTFT.".into();
        } else {
            record.success = true;
        }
        (record, server_text, outcome.text)
    }

    async fn run_session(&self, session: Session) -> Vec<RequestRecord> {
        let model = session
            .model
            .clone()
            .unwrap_or_else(|| self.plan.served_model.clone());
        let mut records = Vec::with_capacity(session.turns.len());
        let mut history: Vec<Message> = session
            .conversation
            .as_ref()
            .and_then(|c| c.system.clone())
            .map(|system| vec![Message::new("system", system)])
            .unwrap_or_default();
        let session_id = format!("session-{}", session.first_index);
        for (turn_index, turn) in session.turns.into_iter().enumerate() {
            let index = session.first_index + turn_index;
            let Some(_) = &session.conversation else {
                let (record, _, _) = self
                    .send(index, &model, &turn.prompt, turn.output_len, false, None)
                    .await;
                records.push(record);
                continue;
            };
            let Prompt::Text(user) = turn.prompt else {
                unreachable!("conversation turns are user messages")
            };
            history.push(Message::new("user", user));
            let prompt = Prompt::Chat(history.clone());
            let (record, server_text, answer) = self
                .send(
                    index,
                    &model,
                    &prompt,
                    turn.output_len,
                    true,
                    Some(&session_id),
                )
                .await;
            let failed = !record.success;
            records.push(record);
            if failed {
                break; // a conversation cannot go on without its answer
            }
            self.bound
                .lock()
                .remember_output(&model, &server_text, &answer);
            history.push(Message::new("assistant", answer));
        }
        records
    }
}

/// The older scripts' "initial test run": the first request sent once, untimed; an error if it
/// fails.
pub async fn initial_test(
    plan: &RunPlan,
    workload: &Workload,
    client: &StreamClient,
) -> Result<(), RunError> {
    let Some(session) = workload.sessions.first() else {
        return Err(RunError::Empty);
    };
    let model = session.model.as_deref().unwrap_or(&plan.served_model);
    let turn = &session.turns[0];
    let body = plan.shape.body(model, &turn.prompt, turn.output_len);
    let mut outcome = StreamOutcome::default();
    let result = client
        .stream_request(
            plan.shape.request(session.first_index, body)?,
            false,
            &mut outcome,
        )
        .await;
    match result {
        Err(error) => Err(RunError::InitialTest(error.to_string())),
        Ok(()) if outcome.status != 200 || outcome.ttft.is_none() => {
            Err(RunError::InitialTest(format!(
                "HTTP {} {}",
                outcome.status,
                outcome.error_body.unwrap_or_default()
            )))
        }
        Ok(()) => Ok(()),
    }
}

/// Runs `workload` by `plan`; `client` is the pooled HTTP client to use.
pub async fn run(
    plan: RunPlan,
    workload: Workload,
    client: StreamClient,
) -> Result<RunOutput, RunError> {
    let total = workload.num_requests();
    if total == 0 {
        return Err(RunError::Empty);
    }
    if plan.initial_test_run {
        initial_test(&plan, &workload, &client).await?;
    }
    let arrivals = arrival_times(
        workload.sessions.len(),
        plan.request_rate,
        plan.burstiness,
        plan.seed,
    );
    let shared = Arc::new(Shared {
        slots: plan.max_concurrency.map(Semaphore::new),
        bound: Mutex::new(PrefixBound::new(plan.block_size)),
        started: Instant::now(),
        progress: progress_bar(total, plan.progress),
        client,
        plan,
    });
    let started = shared.started;
    let time_scale = shared.plan.time_scale.max(f64::MIN_POSITIVE);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sessions: Vec<(f64, Session)> = workload
        .sessions
        .into_iter()
        .zip(arrivals)
        .map(|(session, drawn)| (session.arrival.unwrap_or(drawn), session))
        .collect();
    sessions.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, session) in sessions {
        let due = started + Duration::from_secs_f64(at / time_scale);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let shared = shared.clone();
        tasks.spawn(async move { shared.run_session(session).await });
    }
    let mut records = Vec::with_capacity(total);
    while let Some(result) = tasks.join_next().await {
        records.extend(result.unwrap_or_default());
    }
    let duration = started.elapsed().as_secs_f64();
    shared.progress.finish_and_clear();
    records.sort_by_key(|r| r.index);
    let bound_hit_rate = shared.bound.lock().hit_rate();
    Ok(RunOutput {
        records,
        duration,
        started,
        bound_hit_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_rate_starts_everything_at_once() {
        assert_eq!(arrival_times(3, f64::INFINITY, 1.0, 0), [0.0, 0.0, 0.0]);
    }

    #[test]
    fn arrivals_end_at_n_over_rate_and_look_poisson() {
        let times = arrival_times(4000, 8.0, 1.0, 11);
        assert!((times.last().unwrap() - 500.0).abs() < 1e-9);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        let gaps: Vec<f64> = std::iter::once(times[0])
            .chain(times.windows(2).map(|w| w[1] - w[0]))
            .collect();
        let mean = crate::bench::stats::mean(&gaps);
        let cv = crate::bench::stats::std_dev(&gaps) / mean;
        // Exponential gaps have a coefficient of variation of 1.
        assert!((cv - 1.0).abs() < 0.06, "cv {cv}");
        // Burstier traffic (shape 0.25) has a larger one: 1/sqrt(0.25) = 2.
        let bursty = arrival_times(4000, 8.0, 0.25, 11);
        let gaps: Vec<f64> = bursty.windows(2).map(|w| w[1] - w[0]).collect();
        let cv = crate::bench::stats::std_dev(&gaps) / crate::bench::stats::mean(&gaps);
        assert!((cv - 2.0).abs() < 0.2, "bursty cv {cv}");
        assert_eq!(
            arrival_times(10, 2.0, 1.0, 5),
            arrival_times(10, 2.0, 1.0, 5)
        );
    }
}
