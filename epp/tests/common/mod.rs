//! Test fixtures shared by the integration tests: a small [`TestPicker`] driven by request headers,
//! a server started on 127.0.0.1:0, and deterministic test bodies.
//!
//! Only fixtures live here, no assertions about the protocol; waits are on conditions with
//! deadlines, never sleeps.
#![allow(dead_code)]

// One source for both crates' tests (testkit cannot be a dependency here: it depends on the
// gateway, which depends on this crate).
#[path = "../../../testkit/src/epp_tools.rs"]
pub mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use epp::{
    EppServer, Immediate, PickRequest, Picked, Picker, PickerAnswer, PickerRequest, Rejection,
    Route, ServedRecord,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// Deadline for waiting on a condition in tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Request headers the [`TestPicker`] obeys.
pub const DESTINATIONS: &str = "x-test-destinations";
pub const REJECT: &str = "x-test-reject";
pub const HANG: &str = "x-test-hang";
pub const REWRITE: &str = "x-test-rewrite";

/// The pool the picker chooses from when the request names no destination.
pub const POOL: [&str; 3] = ["10.0.0.1:8000", "10.0.0.2:8000", "[fd00::3]:8000"];

/// A picker for tests: `x-test-destinations` routes there, `x-test-reject: CODE` refuses,
/// `x-test-hang` never answers, `x-test-rewrite: TEXT` replaces the body; otherwise the first pool
/// endpoint the subset hint allows (none: 503). Every request and served record is sent to the test.
pub struct TestPicker {
    seen: mpsc::UnboundedSender<PickerRequest>,
    served: mpsc::UnboundedSender<ServedRecord>,
    held: Arc<()>,
}

pub struct PickerTaps {
    pub seen: mpsc::UnboundedReceiver<PickerRequest>,
    pub served: mpsc::UnboundedReceiver<ServedRecord>,
    /// What every answer holds ([`epp::PickerAnswer::held`]): its strong count says how many
    /// streams are open with an answer.
    pub held: Arc<()>,
}

impl TestPicker {
    pub fn new() -> (Arc<Self>, PickerTaps) {
        let (seen, seen_rx) = mpsc::unbounded_channel();
        let (served, served_rx) = mpsc::unbounded_channel();
        let held = Arc::new(());
        (
            Arc::new(TestPicker {
                seen,
                served,
                held: Arc::clone(&held),
            }),
            PickerTaps {
                seen: seen_rx,
                served: served_rx,
                held,
            },
        )
    }
}

fn text(value: &Bytes) -> &str {
    std::str::from_utf8(value).unwrap_or("")
}

#[async_trait::async_trait]
impl Picker for TestPicker {
    async fn pick(&self, request: &PickerRequest) -> Result<PickerAnswer, Rejection> {
        let _ = self.seen.send(request.clone());
        if request.header(HANG).is_some() {
            std::future::pending::<()>().await;
        }
        if let Some(code) = request.header(REJECT) {
            let status = text(code).parse().unwrap_or(500);
            let mut rejection = Rejection::new(status, format!("rejected with {status}"))
                .with_dropped_reason("test");
            rejection.details = "test rejection".into();
            return Err(rejection);
        }
        let destinations: Vec<SocketAddr> = match request.header(DESTINATIONS) {
            Some(list) => text(list)
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect(),
            None => POOL
                .iter()
                .map(|s| s.parse().unwrap())
                .filter(|a| request.subset_allows(*a))
                .take(1)
                .collect(),
        };
        if destinations.is_empty() {
            return Err(Rejection::new(503, "no endpoint in the subset"));
        }
        let mut answer = PickerAnswer::to(destinations);
        answer.held = epp::Held(Some(self.held.clone()));
        answer
            .set_headers
            .push(("x-picked-by".into(), Bytes::from_static(b"test-picker")));
        if let Some(rewrite) = request.header(REWRITE) {
            answer.body = Some(rewrite.clone());
        }
        Ok(answer)
    }

    fn served(&self, record: &ServedRecord) {
        let _ = self.served.send(record.clone());
    }
}

/// A running [`EppServer`]: its addresses, its open-stream count and a way to stop it.
pub struct RunningServer {
    pub ext_proc: SocketAddr,
    pub health: SocketAddr,
    pub open_streams: watch::Receiver<usize>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), epp::ServeError>>>,
}

impl RunningServer {
    pub async fn start(picker: Arc<TestPicker>) -> Self {
        let ext_proc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ext_proc_addr, health_addr) =
            (ext_proc.local_addr().unwrap(), health.local_addr().unwrap());
        let server = EppServer::new(picker);
        let open_streams = server.open_streams();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(ext_proc, Some(health), async {
            let _ = stopped.await;
        }));
        RunningServer {
            ext_proc: ext_proc_addr,
            health: health_addr,
            open_streams,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
    }

    /// Waits until no stream is open.
    pub async fn wait_idle(&mut self) {
        tokio::time::timeout(WAIT, self.open_streams.wait_for(|n| *n == 0))
            .await
            .expect("streams close within the deadline")
            .unwrap();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `len` bytes of a deterministic pseudo-random sequence (xorshift), as JSON-unsafe as it gets.
pub fn noise(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Request headers as a proxy sends them for an OpenAI chat request.
pub fn request_headers(extra: &[(&str, &str)]) -> Vec<(String, Bytes)> {
    let mut headers: Vec<(String, Bytes)> = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "localhost"),
        (":scheme", "http"),
        ("content-type", "application/json"),
    ]
    .iter()
    .chain(extra)
    .map(|(n, v)| (n.to_string(), Bytes::copy_from_slice(v.as_bytes())))
    .collect();
    headers.dedup_by(|a, b| a.0 == b.0);
    headers
}

/// A small OpenAI chat body for `model`.
pub fn chat_body(model: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
    ))
}

/// A chat request with these extra headers and subset hint.
pub fn chat(extra: &[(&str, &str)], subset: Option<&[&str]>) -> PickRequest {
    PickRequest {
        headers: request_headers(extra),
        body: chat_body("m"),
        subset: subset.map(|s| s.iter().map(|e| e.to_string()).collect()),
    }
}

/// The route of a pick that must route.
pub fn route(picked: Picked) -> Route {
    match picked {
        Picked::Route(route) => route,
        Picked::Reject(reject) => panic!("rejected: {reject:?}"),
    }
}

/// The rejection of a pick that must be refused.
pub fn reject(picked: Picked) -> Immediate {
    match picked {
        Picked::Reject(reject) => reject,
        Picked::Route(route) => panic!("routed to {:?}", route.destinations),
    }
}

/// Socket addresses from text.
pub fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// Response headers of a JSON response.
pub fn json_response_headers() -> [(String, Bytes); 1] {
    [(
        "content-type".to_owned(),
        Bytes::from_static(b"application/json"),
    )]
}

/// gRPC health of `addr` for each name: the serving status, or the gRPC code of the failure.
pub async fn health_of(
    addr: SocketAddr,
    names: &[&str],
) -> Vec<Result<tonic_health::pb::health_check_response::ServingStatus, tonic::Code>> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let mut health = HealthClient::new(endpoint.connect().await.unwrap());
    let mut out = Vec::new();
    for name in names {
        let request = HealthCheckRequest {
            service: name.to_string(),
        };
        out.push(match health.check(request).await {
            Ok(answer) => Ok(answer.into_inner().status()),
            Err(status) => Err(status.code()),
        });
    }
    out
}
