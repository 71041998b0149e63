//! The engine loop: owns the [`Engine`], paces its steps in real time and routes their tokens
//! to the waiting responses.
//!
//! Virtual time maps to wall time as `wall = start + virtual / time_scale`. Each step is planned
//! at virtual time `now`, the loop sleeps until the step's end (an absolute deadline, so timer
//! jitter does not accumulate), then hands every produced token to its response in one batch.
//! Requests whose response was dropped (the client went away) are aborted before the next step,
//! freeing their KV blocks. If the loop falls more than [`MAX_LAG`] behind the wall clock (the
//! machine is overloaded), it stops trying to catch up, resynchronises and counts a slip: the
//! simulator then runs slower than its model, and `/sim/stats` says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::models::ModelRegistry;
use crate::sim::engine::{Engine, FinishReason, NewRequest, RequestId, StepOutcome};
use crate::sim::kv_events::Publisher;
use crate::sim::lora::LoraId;
use crate::sim::metrics::{EngineGauges, SimMetrics};

/// How far (wall time) the loop may fall behind before it resynchronises instead of catching
/// up: larger than timer jitter (~1 ms) and one scheduling hiccup, small enough that a catch-up
/// burst cannot distort latencies noticeably.
pub const MAX_LAG: Duration = Duration::from_millis(50);

/// A token (or the end) for one choice of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoiceEvent {
    pub choice: u32,
    pub index: u32,
    pub finish: Option<FinishReason>,
}

/// Work for the engine loop.
#[derive(Debug)]
pub enum EngineCommand {
    /// New requests (one per choice) answering into `sink`.
    Submit {
        requests: Vec<(NewRequest, u32)>,
        sink: mpsc::UnboundedSender<ChoiceEvent>,
        arrived: Instant,
    },
    PreloadLora(LoraId),
    RemoveLora(LoraId),
    /// Forget the prefix cache (refused while requests hold blocks, as vLLM refuses).
    ResetPrefixCache,
}

/// How faithfully the loop kept to its model: the data behind `/sim/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PacingStats {
    pub steps: u64,
    pub virtual_seconds: f64,
    pub tokens: u64,
    /// Inter-token gaps observed (tokens after a request's first).
    pub itl_samples: u64,
    /// Σ gaps in virtual seconds (what the model predicts).
    pub itl_model_sum: f64,
    /// Σ gaps as measured on the wall clock at delivery.
    pub itl_wall_sum: f64,
    /// Σ |measured gap − model gap| (virtual seconds): per-token pacing error, not just the mean.
    pub itl_abs_error_sum: f64,
    pub slips: u64,
    pub slip_wall_seconds: f64,
    /// Adapters brought into a GPU slot, and of those the ones read from disk (see
    /// [`crate::sim::lora::LoraLoads`]).
    pub lora_gpu_loads: u64,
    pub lora_disk_loads: u64,
    /// KV-event batches handed to the publisher, and the events in them.
    pub kv_event_batches: u64,
    pub kv_events: u64,
}

struct Route {
    sink: mpsc::UnboundedSender<ChoiceEvent>,
    choice: u32,
    arrival: f64,
    last_delivery: Instant,
}

/// Shared handles the loop writes to.
pub struct DriverContext {
    pub metrics: Arc<Mutex<SimMetrics>>,
    pub stats: Arc<Mutex<PacingStats>>,
    pub models: Arc<ModelRegistry>,
    pub time_scale: f64,
    /// Where each step's KV events go, when they are on.
    pub kv_events: Option<Publisher>,
}

fn gauges(engine: &Engine) -> EngineGauges {
    let counters = engine.counters();
    EngineGauges {
        running: engine.num_running(),
        waiting: engine.num_waiting(),
        kv_usage: engine.kv_cache().usage(),
        preemptions: counters.preemptions,
        prefix_queries: counters.prefix_queries,
        prefix_hits: counters.prefix_hits,
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct Driver {
    engine: Engine,
    context: DriverContext,
    routes: HashMap<RequestId, Route>,
    start: Instant,
    now: f64,
}

impl Driver {
    fn virtual_at(&self, instant: Instant) -> f64 {
        instant.saturating_duration_since(self.start).as_secs_f64() * self.context.time_scale
    }

    fn wall_at(&self, virtual_seconds: f64) -> Instant {
        self.start + Duration::from_secs_f64(virtual_seconds.max(0.0) / self.context.time_scale)
    }

    fn handle(&mut self, command: EngineCommand) {
        match command {
            EngineCommand::Submit {
                requests,
                sink,
                arrived,
            } => {
                let arrival = self.virtual_at(arrived).min(self.now);
                for (mut request, choice) in requests {
                    request.arrival = arrival;
                    self.routes.insert(
                        request.id,
                        Route {
                            sink: sink.clone(),
                            choice,
                            arrival,
                            last_delivery: arrived,
                        },
                    );
                    self.engine.add_request(request);
                }
            }
            EngineCommand::PreloadLora(id) => self.engine.preload_lora(id),
            EngineCommand::ResetPrefixCache => {
                if self.engine.reset_prefix_cache() {
                    self.publish_kv_events();
                } else {
                    tracing::warn!("prefix cache not reset: some blocks are still in use");
                }
            }
            EngineCommand::RemoveLora(id) => self.engine.remove_lora(id),
        }
    }

    fn abort_disconnected(&mut self) {
        let gone: Vec<RequestId> = self
            .routes
            .iter()
            .filter(|(_, route)| route.sink.is_closed())
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut metrics = self.context.metrics.lock();
        for id in gone {
            self.routes.remove(&id);
            if let Some(record) = self.engine.abort(id, self.now) {
                metrics.record_finished(&record);
            }
        }
        metrics.set_gauges(gauges(&self.engine));
    }

    fn deliver(&mut self, outcome: &StepOutcome) {
        let delivered = Instant::now();
        let end = outcome.start + outcome.duration;
        let mut pacing = PacingStats::default();
        {
            let mut metrics = self.context.metrics.lock();
            metrics.record_step(outcome, gauges(&self.engine));
            for token in &outcome.tokens {
                let Some(route) = self.routes.get_mut(&token.id) else {
                    continue;
                };
                match token.since_previous {
                    None => metrics.observe_ttft(end - route.arrival),
                    Some(gap) => {
                        pacing.itl_samples += 1;
                        pacing.itl_model_sum += gap;
                        let wall = delivered
                            .saturating_duration_since(route.last_delivery)
                            .as_secs_f64();
                        pacing.itl_wall_sum += wall;
                        pacing.itl_abs_error_sum += (wall * self.context.time_scale - gap).abs();
                    }
                }
                route.last_delivery = delivered;
                let _ = route.sink.send(ChoiceEvent {
                    choice: route.choice,
                    index: token.index as u32,
                    finish: token.finish,
                });
                if token.finish.is_some() {
                    self.routes.remove(&token.id);
                }
            }
            if metrics.info().lora_enabled {
                let (running, waiting) = self.engine.lora_sets();
                let models = &self.context.models;
                metrics.record_lora_state(
                    &models.lora_names(&running),
                    &models.lora_names(&waiting),
                    unix_now(),
                );
            }
        }
        let mut stats = self.context.stats.lock();
        stats.steps += 1;
        stats.virtual_seconds += outcome.duration;
        stats.tokens += outcome.tokens.len() as u64;
        stats.itl_samples += pacing.itl_samples;
        stats.itl_model_sum += pacing.itl_model_sum;
        stats.itl_wall_sum += pacing.itl_wall_sum;
        stats.itl_abs_error_sum += pacing.itl_abs_error_sum;
        let loads = self.engine.lora_loads();
        stats.lora_gpu_loads = loads.gpu;
        stats.lora_disk_loads = loads.disk;
    }

    /// Publish the step's KV events as one batch, adapters named as the server knows them.
    fn publish_kv_events(&mut self) {
        let Some(publisher) = &mut self.context.kv_events else {
            return;
        };
        let mut events = self.engine.take_kv_events();
        if events.is_empty() {
            return;
        }
        for event in &mut events {
            if let kvevents::Event::BlockStored(stored) = event
                && let Some(id) = stored.lora_id.and_then(|id| u32::try_from(id).ok())
            {
                let name = self.context.models.lora_names(&[id]);
                stored.lora_name = (!name.is_empty()).then_some(name);
            }
        }
        {
            let mut stats = self.context.stats.lock();
            stats.kv_event_batches += 1;
            stats.kv_events += events.len() as u64;
        }
        publisher.publish(kvevents::EventBatch {
            ts: unix_now(),
            events,
            data_parallel_rank: Some(0),
        });
    }

    fn resync_if_late(&mut self) {
        let wall_now = Instant::now();
        let due = self.wall_at(self.now);
        let lag = wall_now.saturating_duration_since(due);
        if lag > MAX_LAG {
            let mut stats = self.context.stats.lock();
            stats.slips += 1;
            stats.slip_wall_seconds += lag.as_secs_f64();
            self.now = self.virtual_at(wall_now);
        }
    }
}

/// Runs the engine until `shutdown` flips or every command sender is gone.
pub async fn run_engine(
    engine: Engine,
    context: DriverContext,
    mut commands: mpsc::UnboundedReceiver<EngineCommand>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut driver = Driver {
        engine,
        context,
        routes: HashMap::new(),
        start: Instant::now(),
        now: 0.0,
    };
    loop {
        loop {
            match commands.try_recv() {
                Ok(command) => driver.handle(command),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        driver.abort_disconnected();
        if !driver.engine.has_work() {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => {
                        driver.now = driver.now.max(driver.virtual_at(Instant::now()));
                        driver.handle(command);
                    }
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let outcome = driver.engine.step(driver.now);
        driver.publish_kv_events();
        let end = driver.now + outcome.duration;
        let deadline = driver.wall_at(end);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = shutdown.changed() => return,
        }
        driver.deliver(&outcome);
        driver.now = end;
        driver.resync_if_late();
    }
}
