//! A latency cost model: the time to first token a request would see on each endpoint.
//!
//! For a request and an endpoint the model predicts
//!
//! ```text
//! TTFT = max((prefill ahead + unseen queue) / prefill rate    the wait for prefill work already
//!              − time the oldest prefill has run (≥ a step),  there, less what is done,
//!            waiting × decode time / running)                 or for the batch to admit the queue
//!
//!      + uncached prompt tokens / prefill rate                the request's own prefill
//!      + step(batch + 1)                                      the step that samples its first token
//!      + λ · k / (1 − k)                                      KV pressure, k = KV-cache usage
//! ```
//!
//! - **Prefill ahead** is exact and never stale: the prompt tokens of the requests this gateway
//!   sent to the endpoint that have not produced their first token
//!   ([`EndpointView::in_flight_prefill_tokens`]; each counted at its strategy's uncached estimate,
//!   credited at dispatch and released at the first token or the end, on every path).
//!   Less the part already done: the oldest of them has been under way for
//!   [`EndpointView::prefill_elapsed`], so its work is counted down as it runs, and an endpoint
//!   about to return a first token ranks ahead of one that has just been handed a prompt, as
//!   round-robin's rotation implicitly does. While any of them is in flight at least one step
//!   remains, however long it has run.
//! - **Unseen queue** corrects it with the scrape: waiting requests beyond those of ours the
//!   scrape can have seen (other gateway replicas' requests, preempted requests that must prefill
//!   again), each counted at the pool's mean prefill per request.
//! - A queue can also be **admission-bound**: requests wait because the batch is full
//!   (`max_num_seqs`) or the KV cache has no room, not for prefill. Then the queue drains as running
//!   requests finish, one every (mean decode time ÷ running) on average, so the wait is at least
//!   `waiting × mean decode time ÷ max(running, 1)`; the larger of the two waits is the prediction.
//! - **Prefill rate** (tokens per second) is learned per endpoint from completions: time to first
//!   token against the prefill work that was ahead of and in the request. A ratio of decayed sums,
//!   shrunk toward the pool's rate by a few samples' weight, so a new endpoint starts at the pool's
//!   rate and one noisy sample moves nothing.
//! - **step(b)**, the duration of one engine step with a batch of `b` sequences, is learned per
//!   endpoint as a line through (batch at dispatch, inter-token time) pairs, since decode reads
//!   the weights once per step plus every sequence's KV. It is the decode pressure on a new
//!   request: a prefill shares each step with the running batch and its first token comes out of a
//!   step of that batch, so a heavier batch means a later first token (and a slower step for
//!   everyone). Batch is the scraped running count, or the gateway's own requests past their first
//!   token when that is larger.
//! - **KV pressure** `λ · k / (1 − k)` (SGLang's `least_load` term, λ = 0.15 s): near capacity vLLM
//!   must wait for blocks to free or preempt a running sequence, and that wait grows without bound
//!   as usage approaches 1 (0.6 s at 80%, 1.35 s at 90%, 2.85 s at 95%). Usage is clamped at 0.99.
//!
//! Endpoints whose metrics are missing or stale are predicted from what the gateway knows (prefill
//! ahead, its own batch) and flagged [`Prediction::stale`]: rankings put them after every fresh
//! endpoint, never first (a silent endpoint is not an empty one).
//!
//! The model does no I/O and reads no clock: learning happens in [`CostModel::learn`] (a strategy's
//! `on_completed`), prediction in [`CostModel::predict`]. Its state is one small entry per endpoint
//! behind a read-write lock, read once per pick; endpoints that leave are forgotten
//! ([`CostModel::retain`]).
//!
//! | Parameter | Default | Why |
//! |---|---|---|
//! | `prefill-tokens-per-second` | 5000 | Prior prefill rate: a 7B model on a 24 GB-class GPU (an A10 prefills 6k tokens in about 1.3 s); it only matters until the first completions arrive, and equally for every endpoint |
//! | `decode-step-ms` | 30 | Prior step time at batch 1: a 7B model's 15 GB of weights read at about 500 GB/s |
//! | `decode-step-per-sequence-ms` | 0.2 | Prior extra step time per running sequence: about a thousand tokens of KV read per sequence |
//! | `kv-pressure-ms` | 150 | λ of the KV term, SGLang's value |
//! | `learning-samples` | 64 | Memory of the learned rates: older samples decay by 1/64 per new one, so the model follows a changing endpoint within a minute at tens of requests per second |

use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::RwLock;

use crate::endpoint::{EndpointId, EndpointView};
use crate::load::Load;
use crate::params::Params;
use crate::strategy::{Completion, ConfigError, DispatchedLoad, Outcome};

/// Samples of prior weight when an endpoint's own rate is shrunk toward the pool's.
const PRIOR_SAMPLES: f64 = 4.0;
/// Samples an endpoint needs before its own decode line is trusted over the pool's.
const MIN_DECODE_SAMPLES: f64 = 8.0;
/// Batch-size variance (sequences²) below which a decode line's slope is not estimated.
const MIN_BATCH_VARIANCE: f64 = 1.0;
/// KV usage is clamped here so the pressure term stays finite.
const MAX_KV_USAGE: f64 = 0.99;

/// The model's parameters: priors and how fast it learns.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CostParams {
    /// Prior prefill rate, tokens per second.
    pub prefill_rate: f64,
    /// Prior engine step at batch 1, seconds.
    pub step_seconds: f64,
    /// Prior extra step time per running sequence, seconds.
    pub step_seconds_per_sequence: f64,
    /// λ of the KV-pressure term, seconds.
    pub kv_pressure_seconds: f64,
    /// Decay memory of the learned estimates, in samples.
    pub learning_samples: f64,
}

impl Default for CostParams {
    fn default() -> Self {
        Self {
            prefill_rate: 5000.0,
            step_seconds: 0.030,
            step_seconds_per_sequence: 0.0002,
            kv_pressure_seconds: 0.150,
            learning_samples: 64.0,
        }
    }
}

impl CostParams {
    /// Read the parameters of the module table from `params`.
    pub fn from_params(params: &mut Params<'_>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            prefill_rate: params.f64(
                "prefill-tokens-per-second",
                defaults.prefill_rate,
                1.0..=10_000_000.0,
            )?,
            step_seconds: params.f64(
                "decode-step-ms",
                defaults.step_seconds * 1e3,
                0.001..=10_000.0,
            )? / 1e3,
            step_seconds_per_sequence: params.f64(
                "decode-step-per-sequence-ms",
                defaults.step_seconds_per_sequence * 1e3,
                0.0..=1_000.0,
            )? / 1e3,
            kv_pressure_seconds: params.f64(
                "kv-pressure-ms",
                defaults.kv_pressure_seconds * 1e3,
                0.0..=600_000.0,
            )? / 1e3,
            learning_samples: params.f64(
                "learning-samples",
                defaults.learning_samples,
                1.0..=1_000_000.0,
            )?,
        })
    }
}

/// The predicted time to first token of one request on one endpoint, by term, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Waiting for the prefill work already on the endpoint.
    pub wait: f64,
    /// The request's own prefill.
    pub prefill: f64,
    /// The engine step that samples the first token, at the batch the request joins.
    pub step: f64,
    /// KV pressure.
    pub kv: f64,
    /// A strategy's own term, for example the adapter load LORA_AFFINITY expects; 0 from the model.
    pub extra: f64,
    /// Whether the endpoint's metrics were missing or stale (ranked after fresh endpoints).
    pub stale: bool,
}

impl Prediction {
    /// The predicted time to first token, seconds.
    pub fn ttft(&self) -> f64 {
        self.wait + self.prefill + self.step + self.kv + self.extra
    }

    /// Orders predictions for ranking: fresh before stale, then by predicted TTFT.
    pub fn cmp_cost(&self, other: &Prediction) -> std::cmp::Ordering {
        self.stale
            .cmp(&other.stale)
            .then(self.ttft().total_cmp(&other.ttft()))
    }
}

/// Decayed sums behind one prefill-rate estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PrefillSums {
    samples: f64,
    tokens: f64,
    seconds: f64,
}

impl PrefillSums {
    fn add(&mut self, tokens: f64, seconds: f64, decay: f64) {
        self.samples = self.samples * decay + 1.0;
        self.tokens = self.tokens * decay + tokens;
        self.seconds = self.seconds * decay + seconds;
    }

    /// The rate these sums show, shrunk toward `prior` by [`PRIOR_SAMPLES`] samples of the mean
    /// sample's length.
    fn rate(&self, prior: f64) -> f64 {
        if self.samples <= 0.0 || self.seconds <= 0.0 {
            return prior;
        }
        let weight = PRIOR_SAMPLES * self.seconds / self.samples;
        (self.tokens + weight * prior) / (self.seconds + weight)
    }
}

/// Decayed moments of (batch, inter-token time) pairs, for a least-squares line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct DecodeSums {
    n: f64,
    b: f64,
    y: f64,
    bb: f64,
    by: f64,
}

/// A step-time line: `intercept + slope · batch` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLine {
    /// Seconds at batch 0.
    pub intercept: f64,
    /// Seconds per sequence.
    pub slope: f64,
}

impl StepLine {
    /// The step time at `batch` sequences.
    pub fn at(&self, batch: f64) -> f64 {
        self.intercept + self.slope * batch
    }
}

impl DecodeSums {
    fn add(&mut self, batch: f64, seconds: f64, decay: f64) {
        self.n = self.n * decay + 1.0;
        self.b = self.b * decay + batch;
        self.y = self.y * decay + seconds;
        self.bb = self.bb * decay + batch * batch;
        self.by = self.by * decay + batch * seconds;
    }

    /// The least-squares line, or `fallback`'s slope through these samples' mean when the batch
    /// sizes seen vary too little to estimate a slope; `fallback` itself without enough samples.
    fn line(&self, min_samples: f64, fallback: StepLine) -> StepLine {
        if self.n < min_samples {
            return fallback;
        }
        let mean_b = self.b / self.n;
        let mean_y = self.y / self.n;
        let variance = self.bb / self.n - mean_b * mean_b;
        let slope = if variance >= MIN_BATCH_VARIANCE {
            ((self.by / self.n - mean_b * mean_y) / variance).clamp(0.0, 1.0)
        } else {
            fallback.slope
        };
        StepLine {
            intercept: (mean_y - slope * mean_b).max(0.0),
            slope,
        }
    }
}

/// What the model has learned of one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct EndpointSums {
    prefill: PrefillSums,
    decode: DecodeSums,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by address with foldhash: read once per endpoint on every pick, and addresses come
    /// from the pool's own objects, not from clients.
    endpoints: foldhash::HashMap<SocketAddr, EndpointSums>,
    pool: EndpointSums,
    /// Decayed mean of prefill tokens per request: (samples, tokens).
    prefill_per_request: (f64, f64),
    /// Decayed mean of decode seconds per request (first token to end): (samples, seconds).
    decode_per_request: (f64, f64),
}

/// The learned estimates of one endpoint, for debug output and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointRates {
    /// Prefill tokens per second.
    pub prefill_rate: f64,
    /// Step time against batch size.
    pub step: StepLine,
}

/// The latency cost model of one pool (see the module documentation).
#[derive(Debug)]
pub struct CostModel {
    params: CostParams,
    state: RwLock<State>,
}

/// The batch an endpoint is running, as far as anyone knows: the scraped running count, or the
/// gateway's own requests past their first token when that is larger.
fn batch(load: &DispatchedLoad) -> f64 {
    let ours = load.in_flight.saturating_sub(load.in_flight_prefill);
    f64::from(load.running.unwrap_or(0).max(ours))
}

impl CostModel {
    /// A model with these parameters and nothing learned yet.
    pub fn new(params: CostParams) -> Self {
        Self {
            params,
            state: RwLock::new(State::default()),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &CostParams {
        &self.params
    }

    fn decay(&self) -> f64 {
        1.0 - 1.0 / self.params.learning_samples
    }

    fn prior_line(&self) -> StepLine {
        StepLine {
            intercept: self.params.step_seconds,
            slope: self.params.step_seconds_per_sequence,
        }
    }

    fn rates_in(&self, state: &State, address: SocketAddr) -> EndpointRates {
        let pool_rate = state.pool.prefill.rate(self.params.prefill_rate);
        let pool_line = state.pool.decode.line(1.0, self.prior_line());
        match state.endpoints.get(&address) {
            Some(sums) => EndpointRates {
                prefill_rate: sums.prefill.rate(pool_rate),
                step: sums.decode.line(MIN_DECODE_SAMPLES, pool_line),
            },
            None => EndpointRates {
                prefill_rate: pool_rate,
                step: pool_line,
            },
        }
    }

    /// What the model currently believes of the endpoint at `address` (the pool's figures for an
    /// endpoint it has not learned yet).
    pub fn rates(&self, address: SocketAddr) -> EndpointRates {
        self.rates_in(&self.state.read(), address)
    }

    /// Mean prompt tokens prefilled per request, from completions; `None` before the first.
    pub fn mean_prefill_tokens(&self) -> Option<f64> {
        let (samples, tokens) = self.state.read().prefill_per_request;
        (samples > 0.0).then(|| tokens / samples)
    }

    /// Mean time from first token to the end of a request, from completions; the prior step at
    /// batch 1 times 200 tokens before the first.
    pub fn mean_decode_seconds(&self) -> f64 {
        self.mean_decode_seconds_in(&self.state.read())
    }

    fn mean_decode_seconds_in(&self, state: &State) -> f64 {
        let (samples, seconds) = state.decode_per_request;
        if samples > 0.0 {
            seconds / samples
        } else {
            self.params.step_seconds * 200.0
        }
    }

    /// Predict the time to first token on every endpoint of `endpoints`, with `loads` their load
    /// estimates and `uncached[i]` the prompt tokens endpoint `i` would have to prefill. One read
    /// of the learned state for the whole pool.
    pub fn predict(
        &self,
        endpoints: &[EndpointView<'_>],
        loads: &[Load],
        uncached: &[u32],
    ) -> Vec<Prediction> {
        let state = self.state.read();
        let unseen_tokens_each = match state.prefill_per_request {
            (samples, tokens) if samples > 0.0 => Some(tokens / samples),
            _ => None,
        };
        let decode_seconds = self.mean_decode_seconds_in(&state);
        endpoints
            .iter()
            .zip(loads)
            .zip(uncached)
            .map(|((view, load), &uncached)| {
                let rates = self.rates_in(&state, view.id.address());
                let metrics = view.metrics.filter(|_| load.fresh);
                // Our own requests the scrape can have counted as waiting: those still before
                // their first token, less the ones sent after the scrape.
                let ours_seen = view
                    .in_flight_prefill
                    .saturating_sub(view.dispatched_since_scrape);
                let unseen = metrics.map_or(0, |m| m.waiting.saturating_sub(ours_seen));
                let unseen_tokens =
                    f64::from(unseen) * unseen_tokens_each.unwrap_or(f64::from(uncached));
                let dispatched = DispatchedLoad {
                    in_flight: view.in_flight,
                    in_flight_prefill: view.in_flight_prefill,
                    in_flight_prefill_tokens: view.in_flight_prefill_tokens,
                    prefill_elapsed: view.prefill_elapsed,
                    running: metrics.map(|m| m.running),
                };
                let kv = metrics.map_or(0.0, |m| {
                    let usage = m.kv_usage.clamp(0.0, MAX_KV_USAGE);
                    self.params.kv_pressure_seconds * usage / (1.0 - usage)
                });
                let step = rates.step.at(batch(&dispatched) + 1.0);
                let ahead =
                    (view.in_flight_prefill_tokens as f64 + unseen_tokens) / rates.prefill_rate;
                // The oldest prefill has run for `prefill_elapsed`: that much of the work ahead
                // is done. While one is in flight the engine is busy, so at least a step remains.
                let prefill_wait = if view.in_flight_prefill > 0 {
                    (ahead - view.prefill_elapsed.as_secs_f64()).max(step)
                } else {
                    ahead
                };
                let admission_wait = metrics.map_or(0.0, |m| {
                    f64::from(m.waiting) * decode_seconds / f64::from(m.running.max(1))
                });
                Prediction {
                    wait: prefill_wait.max(admission_wait),
                    prefill: f64::from(uncached) / rates.prefill_rate,
                    step,
                    kv,
                    extra: 0.0,
                    stale: !load.fresh,
                }
            })
            .collect()
    }

    /// Learn from a finished request: its time to first token against the prefill work that was
    /// ahead of and in it, and its inter-token time against the batch it joined. Only successful
    /// streamed answers teach anything (a non-streamed answer's first byte is its last).
    pub fn learn(&self, completion: &Completion<'_>) {
        if completion.outcome != Outcome::Completed
            || !completion.status.is_some_and(|s| (200..300).contains(&s))
        {
            return;
        }
        let Some(ttft) = completion.time_to_first_token else {
            return;
        };
        let ttft = ttft.as_secs_f64();
        let work = completion.at_dispatch.in_flight_prefill_tokens as f64
            + f64::from(completion.prefill_tokens);
        // The prefill ahead had been under way for `prefill_elapsed` when this one was sent: the
        // engine spent that long on the work too.
        let busy = ttft + completion.at_dispatch.prefill_elapsed.as_secs_f64();
        let decode = completion
            .completion_tokens
            .filter(|&tokens| tokens >= 2)
            .map(|tokens| {
                let after_first = completion
                    .duration
                    .saturating_sub(Duration::from_secs_f64(ttft))
                    .as_secs_f64();
                (after_first, after_first / f64::from(tokens - 1))
            });
        let batch = batch(&completion.at_dispatch) + 1.0;
        let decay = self.decay();
        let mut state = self.state.write();
        let state = &mut *state;
        let endpoint = state
            .endpoints
            .entry(completion.endpoint.address())
            .or_default();
        if ttft > 0.0 && work > 0.0 {
            endpoint.prefill.add(work, busy, decay);
            state.pool.prefill.add(work, busy, decay);
        }
        let (samples, tokens) = state.prefill_per_request;
        state.prefill_per_request = (
            samples * decay + 1.0,
            tokens * decay + f64::from(completion.prefill_tokens),
        );
        if let Some((after_first, per_token)) = decode {
            endpoint.decode.add(batch, per_token, decay);
            state.pool.decode.add(batch, per_token, decay);
            let (samples, seconds) = state.decode_per_request;
            state.decode_per_request = (samples * decay + 1.0, seconds * decay + after_first);
        }
    }

    /// Forget endpoints that are not in `endpoints`.
    pub fn retain(&self, endpoints: &[EndpointId]) {
        let keep: std::collections::HashSet<SocketAddr> =
            endpoints.iter().map(EndpointId::address).collect();
        self.state
            .write()
            .endpoints
            .retain(|address, _| keep.contains(address));
    }

    /// Endpoints with learned state.
    pub fn learned_endpoints(&self) -> usize {
        self.state.read().endpoints.len()
    }

    /// Parameters and learned pool figures, for `/debug/snapshot`.
    pub fn debug_state(&self) -> serde_json::Value {
        let state = self.state.read();
        let pool_line = state.pool.decode.line(1.0, self.prior_line());
        serde_json::json!({
            "params": self.params,
            "pool_prefill_tokens_per_second": state.pool.prefill.rate(self.params.prefill_rate),
            "pool_step_ms_at_batch_1": pool_line.at(1.0) * 1e3,
            "pool_step_ms_per_sequence": pool_line.slope * 1e3,
            "endpoints_learned": state.endpoints.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointMetrics;
    use crate::load::LoadConfig;
    use crate::testing::{pool_of, with_metrics};

    fn model() -> CostModel {
        CostModel::new(CostParams::default())
    }

    fn completion<'a>(
        endpoint: &'a EndpointId,
        ttft_ms: u64,
        prefill_tokens: u32,
        at_dispatch: DispatchedLoad,
    ) -> Completion<'a> {
        Completion {
            endpoint,
            target_model: "m",
            outcome: Outcome::Completed,
            status: Some(200),
            time_to_first_byte: Some(Duration::from_millis(ttft_ms)),
            time_to_first_token: Some(Duration::from_millis(ttft_ms)),
            duration: Duration::from_millis(ttft_ms + 990),
            prompt_tokens: prefill_tokens,
            completion_tokens: Some(100),
            prefill_tokens,
            at_dispatch,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn predictions_match_hand_computed_cases() {
        let (_ids, mut views) = pool_of(3);
        let metrics = [
            EndpointMetrics {
                waiting: 0,
                running: 4,
                kv_usage: 0.5,
                ..Default::default()
            },
            // Three waiting, of which one is ours (two in prefill, one sent since the scrape).
            EndpointMetrics {
                waiting: 3,
                running: 10,
                kv_usage: 0.0,
                ..Default::default()
            },
            EndpointMetrics::default(),
        ];
        with_metrics(&mut views, &metrics);
        views[0].in_flight = 6;
        views[0].in_flight_prefill = 1;
        views[0].in_flight_prefill_tokens = 2500;
        views[1].in_flight = 2;
        views[1].in_flight_prefill = 2;
        views[1].in_flight_prefill_tokens = 1000;
        views[1].dispatched_since_scrape = 1;
        views[2].metrics_age = Some(Duration::from_secs(10));
        views[2].in_flight = 3;
        let config = LoadConfig::default();
        let loads: Vec<Load> = views.iter().map(|v| Load::of(v, &config)).collect();
        let p = model().predict(&views, &loads, &[500, 1000, 0]);
        // Priors: 5000 tokens/s, step 30 ms + 0.2 ms per sequence, λ 150 ms.
        // Endpoint 0: 2500 ahead, 500 own; batch max(4 running, 6 − 1 ours) = 5, joins as the 6th;
        // KV 0.15 × 0.5 / 0.5.
        assert!(close(p[0].wait, 0.5), "{:?}", p[0]);
        assert!(close(p[0].prefill, 0.1));
        assert!(close(p[0].step, 0.030 + 0.0002 * 6.0));
        assert!(close(p[0].kv, 0.15));
        assert!(close(p[0].ttft(), 0.5 + 0.1 + 0.0312 + 0.15));
        assert!(!p[0].stale);
        // Endpoint 1: 1000 ahead, plus 3 − (2 − 1) = 2 unseen waiting requests at (no mean yet)
        // this request's 1000 tokens each: 0.6 s of prefill; but 3 waiting with 10 running admit
        // at one per 6 s (prior mean decode) / 10: 1.8 s, the larger wait; batch 10 running,
        // joins as the 11th.
        assert!(close(p[1].wait, 3.0 * 6.0 / 10.0), "{:?}", p[1]);
        assert!(close(p[1].step, 0.030 + 0.0002 * 11.0));
        assert_eq!(p[1].kv, 0.0);
        // Endpoint 2: stale: no scraped terms, its own three requests past their first token.
        assert!(p[2].stale);
        assert!(close(p[2].step, 0.030 + 0.0002 * 4.0));
        assert_eq!((p[2].wait, p[2].prefill, p[2].kv), (0.0, 0.0, 0.0));
        assert_eq!(
            p[2].cmp_cost(&p[0]),
            std::cmp::Ordering::Greater,
            "stale last"
        );
    }

    #[test]
    fn prefill_already_under_way_is_counted_down_to_at_least_a_step() {
        let (_ids, mut views) = pool_of(3);
        with_metrics(&mut views, &vec![EndpointMetrics::default(); 3]);
        // Each holds one 1000-token prefill (0.2 s at the prior 5000 tokens/s), started 0, 150
        // and 500 ms ago.
        for (view, ms) in views.iter_mut().zip([0, 150, 500]) {
            view.in_flight = 1;
            view.in_flight_prefill = 1;
            view.in_flight_prefill_tokens = 1000;
            view.prefill_elapsed = Duration::from_millis(ms);
        }
        let loads: Vec<Load> = views
            .iter()
            .map(|v| Load::of(v, &LoadConfig::default()))
            .collect();
        let p = model().predict(&views, &loads, &[1000, 1000, 1000]);
        assert!(close(p[0].wait, 0.2), "{:?}", p[0]);
        assert!(close(p[1].wait, 0.05), "{:?}", p[1]);
        // Overdue: the engine is still on it, so one step (batch 0, joining as the 1st) remains.
        assert!(close(p[2].wait, 0.030 + 0.0002), "{:?}", p[2]);
        assert!(close(p[2].wait, p[2].step));
    }

    #[test]
    fn kv_pressure_grows_without_bound_but_stays_finite() {
        let (_ids, mut views) = pool_of(3);
        let metrics = [0.8, 0.95, 1.0].map(|kv_usage| EndpointMetrics {
            kv_usage,
            ..Default::default()
        });
        with_metrics(&mut views, &metrics);
        let loads: Vec<Load> = views
            .iter()
            .map(|v| Load::of(v, &LoadConfig::default()))
            .collect();
        let p = model().predict(&views, &loads, &[0, 0, 0]);
        assert!(close(p[0].kv, 0.6));
        assert!(close(p[1].kv, 2.85));
        assert!(close(p[2].kv, 0.15 * 99.0));
    }

    #[test]
    fn prefill_rate_is_learned_per_endpoint_and_shrunk_toward_the_pool() {
        let (ids, _views) = pool_of(3);
        let m = model();
        // Endpoint 0 prefills 2000 tokens (500 ahead + 1500 own) in 200 ms: 10,000 tokens/s.
        for _ in 0..200 {
            m.learn(&completion(
                &ids[0],
                200,
                1500,
                DispatchedLoad {
                    in_flight_prefill_tokens: 500,
                    ..Default::default()
                },
            ));
        }
        let learned = m.rates(ids[0].address()).prefill_rate;
        assert!((learned - 10_000.0).abs() < 50.0, "{learned}");
        // Sent while the 500 tokens ahead had already run for 50 ms: the engine spent
        // 50 + 150 ms on the 2000 tokens, the same 10,000 tokens/s.
        for _ in 0..200 {
            m.learn(&completion(
                &ids[0],
                150,
                1500,
                DispatchedLoad {
                    in_flight_prefill: 1,
                    in_flight_prefill_tokens: 500,
                    prefill_elapsed: Duration::from_millis(50),
                    ..Default::default()
                },
            ));
        }
        let learned = m.rates(ids[0].address()).prefill_rate;
        assert!((learned - 10_000.0).abs() < 50.0, "{learned}");
        // An endpoint never seen starts at the pool's rate: all endpoint 0's samples so far,
        // shrunk a little toward the 5,000 prior.
        let unseen = m.rates(ids[2].address()).prefill_rate;
        assert!(unseen < learned && unseen > 0.95 * learned, "{unseen}");
        // One slow sample on a new endpoint moves it only part of the way: 2000 tokens in 2 s is
        // 1000 tokens/s, shrunk by four samples' weight toward the pool's 10,000.
        m.learn(&completion(&ids[1], 2000, 2000, DispatchedLoad::default()));
        let one = m.rates(ids[1].address()).prefill_rate;
        assert!(one > 1000.0 * 1.5 && one < learned, "{one}");
        // Failures and non-streamed answers teach nothing.
        let before = m.rates(ids[0].address());
        let mut failed = completion(&ids[0], 5, 1500, DispatchedLoad::default());
        failed.outcome = Outcome::Failed;
        m.learn(&failed);
        let mut unstreamed = completion(&ids[0], 5, 1500, DispatchedLoad::default());
        unstreamed.time_to_first_token = None;
        m.learn(&unstreamed);
        let mut error = completion(&ids[0], 5, 1500, DispatchedLoad::default());
        error.status = Some(500);
        m.learn(&error);
        assert_eq!(m.rates(ids[0].address()), before);
    }

    #[test]
    fn step_time_is_learned_as_a_line_in_batch_size() {
        let (ids, _views) = pool_of(1);
        let m = model();
        // Inter-token time 20 ms + 1 ms per sequence, at batches 1..=40.
        for i in 0..400u32 {
            let running = i % 40;
            let per_token = 0.020 + 0.001 * f64::from(running + 1);
            let mut c = completion(
                &ids[0],
                100,
                10,
                DispatchedLoad {
                    running: Some(running),
                    ..Default::default()
                },
            );
            c.duration = Duration::from_secs_f64(0.100 + per_token * 99.0);
            m.learn(&c);
        }
        let line = m.rates(ids[0].address()).step;
        assert!((line.intercept - 0.020).abs() < 1e-4, "{line:?}");
        assert!((line.slope - 0.001).abs() < 1e-5, "{line:?}");
        let decode = m.mean_decode_seconds();
        assert!(decode > 0.021 * 99.0 && decode < 0.060 * 99.0, "{decode}");
        assert_eq!(m.mean_prefill_tokens(), Some(10.0));
    }

    #[test]
    fn forgets_departed_endpoints() {
        let (ids, _views) = pool_of(2);
        let m = model();
        for id in &ids {
            m.learn(&completion(id, 100, 100, DispatchedLoad::default()));
        }
        assert_eq!(m.learned_endpoints(), 2);
        m.retain(&ids[1..]);
        assert_eq!(m.learned_endpoints(), 1);
    }

    #[test]
    fn parameters_are_read_in_their_units() {
        let config: crate::StrategyConfig = [
            ("decode-step-ms".to_owned(), "12".to_owned()),
            ("kv-pressure-ms".to_owned(), "0".to_owned()),
        ]
        .into();
        let mut params = Params::new("T", &config);
        let p = CostParams::from_params(&mut params).unwrap();
        params.finish().unwrap();
        assert!(close(p.step_seconds, 0.012));
        assert_eq!(p.kv_pressure_seconds, 0.0);
        assert_eq!(p.prefill_rate, 5000.0);
    }
}
