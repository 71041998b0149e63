//! Failure injection for reliability tests: injected error answers at a chosen rate and statuses,
//! a start-up delay before the server is ready, a crash after N requests or at a time, and slow
//! or failing `/metrics`.
//!
//! All fault times are wall-clock seconds (they are about the process, not the simulated GPU,
//! so `--time-scale` does not shrink them). This module decides; the server acts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::config::{ConfigError, ServeArgs};

/// What the port does during the start-up delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartupMode {
    /// Listen at once; `/health` and the API answer 503 until ready.
    Unready,
    /// Do not listen until ready, as vLLM does while it loads the model.
    Closed,
}

/// The injected faults, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    pub fail_rate: f64,
    pub fail_statuses: Vec<u16>,
    pub startup_delay: Duration,
    pub startup_mode: StartupMode,
    pub exit_after_requests: Option<u64>,
    pub exit_after: Option<Duration>,
    pub metrics_delay: Duration,
    pub metrics_fail_rate: f64,
    pub metrics_fail_status: u16,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            fail_rate: 0.0,
            fail_statuses: vec![500],
            startup_delay: Duration::ZERO,
            startup_mode: StartupMode::Unready,
            exit_after_requests: None,
            exit_after: None,
            metrics_delay: Duration::ZERO,
            metrics_fail_rate: 0.0,
            metrics_fail_status: 500,
        }
    }
}

fn rate(flag: &'static str, value: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError {
            flag,
            value: value.to_string(),
            reason: "must be between 0 and 1".into(),
        })
    }
}

fn seconds(flag: &'static str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value).map_err(|_| ConfigError {
        flag,
        value: value.to_string(),
        reason: "must be a non-negative number of seconds".into(),
    })
}

fn status(flag: &'static str, value: u16) -> Result<u16, ConfigError> {
    if (400..600).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError {
            flag,
            value: value.to_string(),
            reason: "must be an HTTP error status (400-599)".into(),
        })
    }
}

impl FaultConfig {
    pub fn from_args(args: &ServeArgs) -> Result<FaultConfig, ConfigError> {
        let fail_statuses = args
            .fail_status
            .iter()
            .map(|&s| status("fail-status", s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FaultConfig {
            fail_rate: rate("fail-rate", args.fail_rate)?,
            fail_statuses: if fail_statuses.is_empty() {
                vec![500]
            } else {
                fail_statuses
            },
            startup_delay: seconds("startup-delay", args.startup_delay)?,
            startup_mode: args.startup_mode,
            exit_after_requests: args.exit_after_requests,
            exit_after: args
                .exit_after_secs
                .map(|s| seconds("exit-after-secs", s))
                .transpose()?,
            metrics_delay: seconds("metrics-delay", args.metrics_delay)?,
            metrics_fail_rate: rate("metrics-fail-rate", args.metrics_fail_rate)?,
            metrics_fail_status: status("metrics-fail-status", args.metrics_fail_status)?,
        })
    }
}

/// What to do with an API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFault {
    Proceed,
    /// Answer with this error status.
    Fail(u16),
    /// The process should crash now.
    Exit,
}

/// Runtime fault state shared by the connection tasks.
#[derive(Debug)]
pub struct FaultState {
    config: FaultConfig,
    started: Instant,
    requests: AtomicU64,
    rng: Mutex<fastrand::Rng>,
}

impl FaultState {
    pub fn new(config: FaultConfig, seed: u64) -> Self {
        FaultState {
            config,
            started: Instant::now(),
            requests: AtomicU64::new(0),
            rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0xfa17)),
        }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Whether the start-up delay has passed.
    pub fn is_ready(&self) -> bool {
        self.started.elapsed() >= self.config.startup_delay
    }

    /// When the process should crash on its own, if ever.
    pub fn exit_deadline(&self) -> Option<Instant> {
        self.config.exit_after.map(|after| self.started + after)
    }

    /// Counts an API request and decides its fate.
    pub fn on_request(&self) -> RequestFault {
        let count = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .config
            .exit_after_requests
            .is_some_and(|limit| count > limit)
        {
            return RequestFault::Exit;
        }
        if self.config.fail_rate > 0.0 {
            let mut rng = self.rng.lock();
            if rng.f64() < self.config.fail_rate {
                let statuses = &self.config.fail_statuses;
                return RequestFault::Fail(statuses[rng.usize(..statuses.len())]);
            }
        }
        RequestFault::Proceed
    }

    /// The injected failure status for a `/metrics` scrape, if any.
    pub fn metrics_failure(&self) -> Option<u16> {
        (self.config.metrics_fail_rate > 0.0
            && self.rng.lock().f64() < self.config.metrics_fail_rate)
            .then_some(self.config.metrics_fail_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_after_requests_serves_the_first_n() {
        let state = FaultState::new(
            FaultConfig {
                exit_after_requests: Some(2),
                ..FaultConfig::default()
            },
            0,
        );
        assert_eq!(state.on_request(), RequestFault::Proceed);
        assert_eq!(state.on_request(), RequestFault::Proceed);
        assert_eq!(state.on_request(), RequestFault::Exit);
    }

    #[test]
    fn fail_rate_one_always_fails_with_a_listed_status() {
        let state = FaultState::new(
            FaultConfig {
                fail_rate: 1.0,
                fail_statuses: vec![429, 503],
                ..FaultConfig::default()
            },
            0,
        );
        for _ in 0..20 {
            match state.on_request() {
                RequestFault::Fail(status) => assert!(status == 429 || status == 503),
                other => panic!("{other:?}"),
            }
        }
    }
}
