//! Test harness: a real gateway process in front of real HTTP backends or `vllm-sim` servers.
//!
//! Shared by the gateway's integration tests and by plugin examples, which run their own gateway
//! binary ([`Gateway::start`] takes the binary's path).
//!
//! Backends are small hyper servers, each on its own loopback address (127.0.0.N) and a port
//! shared by all backends of a test, exactly like pod IPs behind one target port. They record
//! what they receive and can stream, echo, or hold a stream open until the test releases it.
//! Nothing here sleeps to "wait a bit": waits are on conditions with a deadline.
//!
//! The configuration a test gives the gateway is built with [`k8s`]'s object builders.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub mod cluster;
pub mod epp_tools;
pub mod k8s;
pub mod kube_demo;

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Wait until `condition` holds, polling every 10 ms, or panic after [`DEADLINE`].
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    wait_until(what, DEADLINE, || std::future::ready(condition())).await;
}

/// Wait until the asynchronous `condition` holds, polling every 10 ms, or panic after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request a backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub model: Option<String>,
    pub body_len: usize,
    pub headers: http::HeaderMap,
}

/// Shared state of one backend.
#[derive(Debug, Default)]
pub struct BackendState {
    pub seen: Mutex<Vec<Seen>>,
    /// Streams whose client (the gateway) went away before the end.
    pub aborted: AtomicUsize,
    /// Streams currently being served.
    pub open_streams: AtomicUsize,
    gates: Mutex<HashMap<String, Arc<Notify>>>,
}

impl BackendState {
    fn gate(&self, name: &str) -> Arc<Notify> {
        Arc::clone(self.gates.lock().entry(name.to_owned()).or_default())
    }
}

/// A running test backend.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
}

impl Backend {
    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().clone()
    }

    /// Number of requests received.
    pub fn count(&self) -> usize {
        self.state.seen.lock().len()
    }

    /// Let held streams waiting on `gate` finish.
    pub fn release(&self, gate: &str) {
        self.state.gate(gate).notify_waiters();
        self.state.gate(gate).notify_one();
    }
}

/// Start `n` backends on 127.0.0.{first}.. with one shared port.
pub async fn start_backends(first: u8, n: u8) -> (u16, Vec<Backend>) {
    'retry: for _ in 0..50 {
        let port = free_port();
        let mut listeners = Vec::new();
        for i in 0..n {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, first + i));
            match TcpListener::bind(SocketAddr::new(ip, port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'retry,
            }
        }
        let backends = listeners.into_iter().map(serve).collect();
        return (port, backends);
    }
    panic!("no free port for backends");
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(listener: TcpListener) -> Backend {
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(BackendState::default());
    let server_state = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&server_state);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    handle(addr, Arc::clone(&state), request)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend { addr, state }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A streaming body that counts itself aborted when dropped before its end.
struct TrackedBody {
    inner: http_body_util::channel::Channel<Bytes, Infallible>,
    finished: bool,
    state: Arc<BackendState>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.finished = true;
        }
        polled
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.state.open_streams.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.state.aborted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn sse_event(server: SocketAddr, model: &str, text: &str) -> Bytes {
    let chunk = serde_json::json!({
        "object": "text_completion",
        "model": model,
        "server": server.to_string(),
        "choices": [{"index": 0, "text": text, "finish_reason": null}],
    });
    Bytes::from(format!("data: {chunk}\n\n"))
}

async fn handle(
    server: SocketAddr,
    state: Arc<BackendState>,
    request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let (parts, body) = request.into_parts();
    if parts.uri.path() == "/metrics" {
        // The gateway's scraper; these backends publish no metrics.
        let mut response =
            Response::new(Full::new(Bytes::from_static(b"no metrics here\n")).boxed());
        *response.status_mut() = http::StatusCode::NOT_FOUND;
        return Ok(response);
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let model = json
        .as_ref()
        .and_then(|j| j.get("model"))
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    let stream = json
        .as_ref()
        .and_then(|j| j.get("stream"))
        .and_then(|s| s.as_bool())
        .unwrap_or(false);
    state.seen.lock().push(Seen {
        path: parts.uri.path().to_owned(),
        model: model.clone(),
        body_len: body.len(),
        headers: parts.headers.clone(),
    });
    let mode = parts
        .headers
        .get("x-test-mode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let delay = parts
        .headers
        .get("x-test-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(delay) = delay {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let model = model.unwrap_or_default();
    if mode == "echo" {
        return Ok(Response::new(Full::new(body).boxed()));
    }
    if !stream && mode != "hold" {
        let out = serde_json::json!({"server": server.to_string(), "model": model, "body_len": body.len()});
        let response = Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(out.to_string())).boxed())
            .unwrap();
        return Ok(response);
    }
    let (mut tx, channel) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
    state.open_streams.fetch_add(1, Ordering::SeqCst);
    let tracked = TrackedBody {
        inner: channel,
        finished: false,
        state: Arc::clone(&state),
    };
    let gate = parts
        .headers
        .get("x-test-gate")
        .and_then(|v| v.to_str().ok())
        .map(|g| state.gate(g));
    // `x-test-gate-first`: nothing of the body before the gate opens, so the request is still
    // awaiting its first token as far as the gateway can tell.
    let gate_first = parts
        .headers
        .get("x-test-gate-first")
        .and_then(|v| v.to_str().ok())
        .map(|g| state.gate(g));
    tokio::spawn(async move {
        if let Some(gate) = gate_first {
            gate.notified().await;
        }
        if tx
            .send_data(sse_event(server, &model, "first"))
            .await
            .is_err()
        {
            return;
        }
        if let Some(gate) = gate {
            let released = gate.notified();
            tokio::pin!(released);
            loop {
                // Heartbeat comments, like tokens of a long generation: a closed client shows
                // up as a failed write.
                tokio::select! {
                    _ = &mut released => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {
                        if tx.send_data(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let _ = tx.send_data(sse_event(server, &model, "last")).await;
        let _ = tx.send_data(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let response = Response::builder()
        .header("content-type", "text/event-stream")
        .body(tracked.boxed())
        .unwrap();
    Ok(response)
}

/// A running gateway process.
pub struct Gateway {
    child: tokio::process::Child,
    pub admin: SocketAddr,
    pub config_dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}

impl Gateway {
    /// Write `config` to a fresh directory and start the gateway `binary` on it.
    pub async fn start(binary: &std::path::Path, config: &str, extra_args: &[&str]) -> Gateway {
        let config_dir = std::env::temp_dir().join(format!(
            "igw-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::write(config_dir.join("config.yaml"), config).unwrap();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = tokio::process::Command::new(binary)
            .arg("--config")
            .arg(&config_dir)
            .args([
                "--admin-addr",
                &admin.to_string(),
                "--listen-host",
                "127.0.0.1",
                "--threads",
                "2",
            ])
            .args(
                [
                    ("--config-poll-interval", "100ms"),
                    ("--grace-period", "10s"),
                    ("--drain-delay", "0s"),
                ]
                .into_iter()
                // A default the caller sets itself is left out (clap refuses a flag twice).
                .filter(|(flag, _)| !extra_args.contains(flag))
                .flat_map(|(flag, value)| [flag, value]),
            )
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("IGW_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        let gateway = Gateway {
            child,
            admin,
            config_dir,
        };
        gateway.wait_ready().await;
        gateway
    }

    async fn wait_ready(&self) {
        let client = client();
        let start = Instant::now();
        loop {
            let uri = format!("http://{}/readyz", self.admin);
            if let Ok(response) = client.get(uri.parse().unwrap()).await
                && response.status() == 200
            {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the gateway is running")
    }

    /// The gateway's resident memory in KiB and its open file descriptors, from `/proc`.
    pub fn resources(&self) -> (u64, usize) {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        (rss, fds)
    }

    /// Send SIGTERM: the gateway drains and exits.
    pub fn terminate(&self) {
        let pid = self.pid();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Wait for the process to exit (panics after [`DEADLINE`]) and return whether it succeeded.
    pub async fn wait_exit(&mut self) -> bool {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the gateway exits within the deadline")
            .expect("waiting works")
            .success()
    }

    /// Replace the configuration file.
    pub fn rewrite_config(&self, config: &str) {
        let tmp = self.config_dir.join(".config.yaml.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, self.config_dir.join("config.yaml")).unwrap();
    }

    /// Poll `/debug/snapshot` until `condition` holds on it, or panic after [`DEADLINE`].
    pub async fn wait_for_snapshot(
        &self,
        what: &str,
        condition: impl FnMut(&serde_json::Value) -> bool,
    ) {
        wait_for_snapshot_at(self.admin, what, DEADLINE, condition, String::new).await;
    }

    /// `/debug/snapshot`.
    pub async fn snapshot(&self) -> serde_json::Value {
        snapshot_at(self.admin).await
    }
}

/// `/debug/snapshot` of the gateway whose admin listener is at `admin`.
pub async fn snapshot_at(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = get(&format!("http://{admin}/debug/snapshot")).await;
    serde_json::from_slice(&body).unwrap()
}

/// Poll `/debug/snapshot` at `admin` until `condition` holds on it, or panic after `deadline`
/// with the last snapshot and whatever `context` adds (a log, say).
pub async fn wait_for_snapshot_at(
    admin: SocketAddr,
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut(&serde_json::Value) -> bool,
    context: impl Fn() -> String,
) {
    let start = Instant::now();
    loop {
        let snapshot = snapshot_at(admin).await;
        if condition(&snapshot) {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out waiting for {what} (deadline {deadline:?}); last snapshot: {snapshot:#}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Addresses of the endpoints of the first pool in a `/debug/snapshot`.
pub fn first_pool_endpoints(snapshot: &serde_json::Value) -> Vec<String> {
    snapshot["pools"][0]["endpoints"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["address"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The HTTP client used by tests.
pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build_http()
}

/// GET `uri`, returning status and body.
pub async fn get(uri: &str) -> (u16, Bytes) {
    let response = client().get(uri.parse().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// POST `body` to `uri` with extra headers, returning status and body.
pub async fn post(
    client: &Client,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (u16, Bytes) {
    let mut request = Request::post(uri).header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(request.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// A streaming request through the gateway whose chunks the test reads one by one.
pub struct Stream {
    body: Incoming,
    pub status: u16,
    pub headers: http::HeaderMap,
}

impl Stream {
    /// Open a stream: POST with `"stream": true`.
    pub async fn open(client: &Client, uri: &str, headers: &[(&str, &str)], body: &str) -> Stream {
        let mut request = Request::post(uri).header("content-type", "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = client
            .request(
                request
                    .body(Full::new(Bytes::from(body.to_owned())))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Stream {
            body: response.into_body(),
            status,
            headers,
        }
    }

    /// The next data chunk, or `None` at the end; panics after [`DEADLINE`].
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("a chunk within the deadline")?
                .ok()?;
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                return Some(data);
            }
        }
    }

    /// Read everything until the stream ends, however long that takes (for load held open on
    /// purpose; abort the task to let go).
    pub async fn hold(mut self) {
        while let Some(Ok(_)) = self.body.frame().await {}
    }

    /// Read until a chunk containing `needle` arrives.
    pub async fn read_until(&mut self, needle: &str) -> String {
        let mut seen = String::new();
        while let Some(chunk) = self.next_chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(needle) {
                return seen;
            }
        }
        panic!("stream ended without {needle:?}; got {seen:?}");
    }
}

/// `n` simulators on 127.0.0.{first}.. sharing one port, serving `/model/qwen` at `--time-scale
/// 20`, each started with the common `flags` and then its own entry of `per_sim` (if any).
pub async fn start_sims(
    first: u8,
    n: u8,
    flags: &[&str],
    per_sim: &[&[&str]],
) -> (u16, Vec<loadtest::sim::server::SimServer>) {
    use loadtest::sim::config::SimConfig;
    use loadtest::sim::server::SimServer;
    'retry: for _ in 0..20 {
        let port = free_port();
        let mut sims = Vec::new();
        for i in 0..n {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, first + i));
            let mut args: Vec<String> = [
                "/models/Qwen-2.5-7B-Instruct",
                "--served-model-name",
                "/model/qwen",
                "--time-scale",
                "20",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend([
                "--host".into(),
                ip.to_string(),
                "--port".into(),
                port.to_string(),
            ]);
            args.extend(flags.iter().map(|s| s.to_string()));
            if let Some(own) = per_sim.get(usize::from(i)) {
                args.extend(own.iter().map(|s| s.to_string()));
            }
            let config = SimConfig::from_command_line(args).expect("valid simulator flags");
            match SimServer::start(config).await {
                Ok(sim) => sims.push(sim),
                Err(_) => continue 'retry,
            }
        }
        return (port, sims);
    }
    panic!("no free port for simulators");
}

/// The configuration of most simulator tests: [`k8s::Manifest::test_gateway`] (its `http` listener
/// on a free port), and `sims` as Ready pods `sim-N` labelled `app: sim` in the v1alpha2 pool `pool`
/// (routing `strategy`, endpoints on `port`) behind the `llm` listener.
pub fn sim_pool_config(
    llm_port: u16,
    port: u16,
    sims: &[loadtest::sim::server::SimServer],
    strategy: &str,
) -> k8s::Manifest {
    let ips = sims.iter().map(|s| s.local_addr().ip());
    k8s::Manifest::test_gateway(free_port(), llm_port).with_pool(
        k8s::InferencePool::new("pool", port)
            .selector("app", "sim")
            .strategy(strategy),
        k8s::ready_pods("sim", "sim", ips),
    )
}
