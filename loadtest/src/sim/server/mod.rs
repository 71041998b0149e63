//! The HTTP side of the simulator: binds the port, serves HTTP/1.1 with hyper, routes vLLM's
//! endpoints and runs the engine loop on its own task.
//!
//! [`SimServer::start`] is what the binary and the integration tests use: it returns once the
//! port is bound (after the start-up delay in `closed` mode) and reports the address, so tests
//! bind `127.0.0.1:0`. A crash fault (`--exit-after-*`) cuts every connection and stops the
//! engine; [`SimServer::crashed`] resolves then, and the binary exits with status 1.

mod admin;
mod driver;
mod generate;
mod models;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use self::driver::{DriverContext, EngineCommand, run_engine};
pub use self::driver::{MAX_LAG, PacingStats};
pub use self::models::{LoraCard, ModelRegistry};
use super::config::SimConfig;
use super::engine::Engine;
use super::faults::{FaultState, RequestFault, StartupMode};
use super::kv_events::Publisher;
use super::metrics::{MetricsInfo, SimMetrics};
use super::openai::ApiError;
use super::openai::request::Endpoint;

/// Every response body the server sends.
pub type SimBody = UnsyncBoxBody<Bytes, Infallible>;

/// Why a server stopped on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashReason {
    /// `--exit-after-requests` was reached.
    RequestLimit,
    /// `--exit-after-secs` passed.
    Deadline,
}

/// State shared by every connection.
pub struct SimState {
    pub config: SimConfig,
    pub models: Arc<ModelRegistry>,
    pub metrics: Arc<Mutex<SimMetrics>>,
    pub pacing: Arc<Mutex<PacingStats>>,
    pub faults: FaultState,
    engine: mpsc::UnboundedSender<EngineCommand>,
    next_request_id: AtomicU64,
    crash: watch::Sender<Option<CrashReason>>,
}

/// A running simulator.
pub struct SimServer {
    local_addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: watch::Sender<bool>,
    crash: watch::Receiver<Option<CrashReason>>,
    accept_loop: tokio::task::JoinHandle<()>,
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn cache_config_labels(config: &SimConfig) -> Vec<(String, String)> {
    let engine = &config.engine;
    [
        ("block_size", engine.block_size.to_string()),
        ("cache_dtype", "auto".into()),
        ("calculate_kv_scales", "False".into()),
        ("cpu_offload_gb", "0".into()),
        (
            "enable_prefix_caching",
            if engine.enable_prefix_caching {
                "True"
            } else {
                "False"
            }
            .into(),
        ),
        ("engine", "0".into()),
        (
            "gpu_memory_utilization",
            config.gpu_memory_utilization.to_string(),
        ),
        ("is_attention_free", "False".into()),
        ("num_cpu_blocks", "None".into()),
        ("num_gpu_blocks", engine.num_gpu_blocks.to_string()),
        ("num_gpu_blocks_override", "None".into()),
        ("prefix_caching_hash_algo", "sha256".into()),
        ("sliding_window", "None".into()),
        ("swap_space", "4".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl SimServer {
    /// Binds `config.listen`, starts the engine loop and the accept loop.
    pub async fn start(config: SimConfig) -> std::io::Result<SimServer> {
        let faults = FaultState::new(config.faults.clone(), config.seed);
        if config.faults.startup_mode == StartupMode::Closed {
            tokio::time::sleep(config.faults.startup_delay).await;
        }
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let created = unix_seconds();
        let models = Arc::new(ModelRegistry::new(
            config.served_model_names.clone(),
            config.model_root.clone(),
            config.engine.max_model_len,
            created as u64,
        ));
        let metrics = Arc::new(Mutex::new(SimMetrics::new(MetricsInfo {
            model_name: config.primary_model_name().to_string(),
            legacy: config.legacy_metrics,
            lora_enabled: config.lora_enabled,
            max_loras: config.engine.max_loras,
            max_model_len: config.engine.max_model_len,
            cache_config: cache_config_labels(&config),
            created_unix: created,
        })));
        let pacing = Arc::new(Mutex::new(PacingStats::default()));
        let mut engine = Engine::new(
            config.engine,
            config.profile.step_model(config.enforce_eager),
            config.profile.lora,
        );
        for module in &config.lora_modules {
            if let Ok(id) = models.add_lora(&module.name, &module.path) {
                engine.preload_lora(id);
            }
        }
        let kv_events = match &config.kv_events {
            Some(events) if events.publishes() && config.engine.enable_prefix_caching => {
                engine.enable_kv_events();
                let host = config.listen.ip().to_string();
                Some(Publisher::start(events, &host).map_err(std::io::Error::other)?)
            }
            _ => None,
        };
        let (engine_tx, engine_rx) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (crash_tx, crash_rx) = watch::channel(None);
        let context = DriverContext {
            metrics: metrics.clone(),
            stats: pacing.clone(),
            models: models.clone(),
            time_scale: config.time_scale,
            kv_events,
        };
        let state = Arc::new(SimState {
            config,
            models,
            metrics,
            pacing,
            faults,
            engine: engine_tx,
            next_request_id: AtomicU64::new(1),
            crash: crash_tx,
        });
        let engine_task = tokio::spawn(run_engine(engine, context, engine_rx, shutdown_rx.clone()));
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            state.clone(),
            shutdown_rx,
            crash_rx.clone(),
            engine_task,
        ));
        Ok(SimServer {
            local_addr,
            state,
            shutdown,
            crash: crash_rx,
            accept_loop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Resolves when a crash fault fires.
    pub async fn crashed(&mut self) -> CrashReason {
        loop {
            if let Some(reason) = *self.crash.borrow_and_update() {
                return reason;
            }
            if self.crash.changed().await.is_err() {
                return CrashReason::Deadline;
            }
        }
    }

    /// Stops accepting, cuts every connection and stops the engine loop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_loop.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<SimState>,
    mut shutdown: watch::Receiver<bool>,
    mut crash: watch::Receiver<Option<CrashReason>>,
    engine_task: tokio::task::JoinHandle<()>,
) {
    let mut connections = JoinSet::new();
    let exit_deadline = state.faults.exit_deadline();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| route(state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
            _ = crash.changed() => break,
            _ = async {
                match exit_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let _ = state.crash.send(Some(CrashReason::Deadline));
                break;
            }
        }
    }
    connections.abort_all();
    engine_task.abort();
}

/// A complete response with a body.
pub(crate) fn full_response(
    status: u16,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<SimBody> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if !content_type.is_empty()
        && let Ok(value) = http::HeaderValue::from_str(content_type)
    {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

pub(crate) fn error_response(error: &ApiError) -> Response<SimBody> {
    full_response(error.status, "application/json", error.body())
}

async fn route(
    state: Arc<SimState>,
    request: Request<Incoming>,
) -> Result<Response<SimBody>, Infallible> {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let ready = state.faults.is_ready();
    let response = match (&parts.method, path.as_str()) {
        (&Method::GET, "/health") if !ready => full_response(503, "", Bytes::new()),
        (&Method::GET, "/health") => full_response(200, "", Bytes::new()),
        (&Method::GET, "/metrics") => admin::metrics(&state).await,
        (&Method::GET, "/sim/stats") => admin::pacing_stats(&state),
        _ if !ready => error_response(&ApiError {
            status: 503,
            kind: "ServiceUnavailableError",
            message: "The server is starting up (vllm-sim --startup-delay).".into(),
        }),
        (&Method::GET, "/version") => full_response(
            200,
            "application/json",
            format!("{{\"version\":\"{}\"}}", super::openai::VLLM_VERSION),
        ),
        (&Method::GET, "/v1/models") => {
            full_response(200, "application/json", state.models.render())
        }
        (&Method::POST, "/v1/completions" | "/v1/chat/completions") => {
            match state.faults.on_request() {
                RequestFault::Exit => {
                    let _ = state.crash.send(Some(CrashReason::RequestLimit));
                    // The process is going down: never answer.
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                RequestFault::Fail(status) => error_response(&ApiError::injected(status)),
                RequestFault::Proceed => {
                    let endpoint = if path == "/v1/completions" {
                        Endpoint::Completions
                    } else {
                        Endpoint::Chat
                    };
                    match body.collect().await {
                        Ok(collected) => {
                            generate::generate(
                                state.clone(),
                                endpoint,
                                &parts.headers,
                                collected.to_bytes(),
                                arrived,
                            )
                            .await
                        }
                        Err(_) => error_response(&ApiError::bad_request(
                            "could not read the request body",
                        )),
                    }
                }
            }
        }
        (&Method::POST, "/reset_prefix_cache") => {
            let _ = state.engine.send(EngineCommand::ResetPrefixCache);
            full_response(200, "", Bytes::new())
        }
        (
            &Method::POST,
            "/tokenize" | "/detokenize" | "/v1/load_lora_adapter" | "/v1/unload_lora_adapter",
        ) => match body.collect().await {
            Ok(collected) => admin::post(&state, &path, &collected.to_bytes()),
            Err(_) => error_response(&ApiError::bad_request("could not read the request body")),
        },
        (
            _,
            "/health"
            | "/metrics"
            | "/version"
            | "/v1/models"
            | "/v1/completions"
            | "/v1/chat/completions"
            | "/tokenize"
            | "/detokenize"
            | "/v1/load_lora_adapter"
            | "/v1/unload_lora_adapter"
            | "/reset_prefix_cache",
        ) => full_response(
            405,
            "application/json",
            "{\"detail\":\"Method Not Allowed\"}",
        ),
        _ => full_response(404, "application/json", "{\"detail\":\"Not Found\"}"),
    };
    Ok(response)
}
