//! Helpers shared by the HTTP integration tests: boot a simulator on an ephemeral port, make
//! requests, read SSE bodies, and wait for a condition with a deadline (never a bare sleep).

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use loadtest::client::StreamClient;
use loadtest::sim::config::SimConfig;
use loadtest::sim::server::SimServer;
use serde_json::Value;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestSim {
    pub server: SimServer,
    pub base: String,
    pub client: StreamClient,
}

/// Starts a simulator on 127.0.0.1:0 with `flags` (plus a fast time scale unless given).
pub async fn start(flags: &[&str]) -> TestSim {
    let mut argv = vec!["--host", "127.0.0.1", "--port", "0"];
    if !flags.contains(&"--time-scale") {
        argv.extend(["--time-scale", "1000"]);
    }
    argv.extend_from_slice(flags);
    let config = SimConfig::from_command_line(argv).expect("valid flags");
    let server = SimServer::start(config).await.expect("bind");
    let base = format!("http://{}", server.local_addr());
    TestSim {
        server,
        base,
        client: StreamClient::new(8),
    }
}

impl TestSim {
    pub async fn get(&self, path: &str) -> (u16, String) {
        let (status, body) = self
            .client
            .request(http::Method::GET, &format!("{}{path}", self.base), None)
            .await
            .expect("request");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, String) {
        let (status, body) = self
            .client
            .request(
                http::Method::POST,
                &format!("{}{path}", self.base),
                Some(body.to_string()),
            )
            .await
            .expect("request");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The value of one metric sample line (`name{labels}` exactly as rendered).
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }
}

/// Splits an SSE body into its `data:` payloads, checking the blank-line framing.
pub fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line"
    );
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_string()
        })
        .collect()
}

/// Polls `condition` until it holds or [`DEADLINE`] passes.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
