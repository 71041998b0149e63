//! The observability promises, against real processes: a real Prometheus server (the Debian
//! package) scrapes a real gateway and real `vllm-sim` servers under traffic, and every query of
//! every committed dashboard and alert rule must return data. And the gateway's time to first token
//! must agree with what the client measured.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use loadtest::sim::server::SimServer;
use testkit::k8s::{self, InferencePool, Manifest, Pod};
use testkit::*;

fn gateway_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
}

/// Simulators with the seed's adapters and a 4k context.
async fn sims(first: u8, n: u8, per_sim: &[&[&str]]) -> (u16, Vec<SimServer>) {
    let flags = [
        "--enable-lora",
        "--max-loras",
        "2",
        "--lora-modules",
        "travel-helper-v1=/loras/v1",
        "travel-helper-v2=/loras/v2",
        "--max-model-len",
        "4096",
    ];
    start_sims(first, n, &flags, per_sim).await
}

/// A pool of `sims` (plus one pod whose server is down, for retries) with a plain route on the
/// `http` listener and an inference route on the `llm` listener.
fn config(http_port: u16, llm_port: u16, port: u16, sims: &[SimServer], dead: IpAddr) -> Manifest {
    let ips = sims.iter().map(|s| s.local_addr().ip());
    let mut pods = k8s::ready_pods("sim", "sim", ips);
    pods.push(down_pod(dead, true));
    let pool = InferencePool::new("pool", port)
        .selector("app", "sim")
        .strategy("PREFIX_CACHE");
    Manifest::test_gateway(http_port, llm_port)
        .with_pool(pool, pods)
        .with_plain_service("sims", "sim", port)
        .with_all(k8s::seed_models("pool", (50, 50)))
}

/// The pool's pod `down` at `ip`, where no server listens.
fn down_pod(ip: IpAddr, ready: bool) -> Pod {
    Pod::new("down", ip).label("app", "sim").ready(ready)
}

/// A Prometheus server scraping `targets` every second, with the committed alert rules loaded.
struct Prometheus {
    child: tokio::process::Child,
    address: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    async fn start(targets: &[SocketAddr]) -> Prometheus {
        let binary = Path::new("/usr/bin/prometheus");
        assert!(
            binary.exists(),
            "this test needs a real Prometheus server: run ./scripts/setup.sh prometheus (Debian package)"
        );
        let dir = std::env::temp_dir().join(format!(
            "igw-prom-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let rules =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/observability/alerts.yaml");
        std::fs::copy(rules, dir.join("alerts.yaml")).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [alerts.yaml]\n\
                 scrape_configs:\n- job_name: test\n  static_configs:\n  - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = tokio::process::Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus {
            child,
            address,
            dir,
        };
        let start = Instant::now();
        while get_status(&format!("http://{address}/-/ready")).await != Some(200) {
            assert!(
                start.elapsed() < DEADLINE,
                "prometheus did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        prometheus
    }

    /// When (Unix seconds) the target scraped least recently and the one scraped most recently
    /// were last scraped, once Prometheus has scraped anything.
    async fn last_scrapes(&self) -> Option<(f64, f64)> {
        let mut times = Vec::new();
        for query in ["min(timestamp(up))", "max(timestamp(up))"] {
            let result = self.query(query).await;
            times.push(result.first()?["value"][1].as_str()?.parse::<f64>().ok()?);
        }
        Some((times[0], times[1]))
    }

    /// Wait until every target has been scraped after `since`; returns when the last of those
    /// scrapes was.
    async fn wait_for_scrapes_after(&self, since: f64) -> f64 {
        let start = Instant::now();
        loop {
            if let Some((oldest, newest)) = self.last_scrapes().await
                && oldest > since
            {
                return newest;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "prometheus did not scrape every target after {since}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every target has been scraped twice after `since` (Unix seconds).
    async fn wait_for_two_scrapes_after(&self, since: f64) {
        let first_round = self.wait_for_scrapes_after(since).await;
        self.wait_for_scrapes_after(first_round).await;
    }

    /// The result vector of an instant query.
    async fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let uri = format!(
            "http://{}/api/v1/query?query={}",
            self.address,
            percent_encode(query)
        );
        let (status, body) = get(&uri).await;
        let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "query {query} failed: {reply}");
        assert_eq!(reply["status"], "success", "query {query}: {reply}");
        reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Now, in seconds since the Unix epoch (Prometheus' sample timestamps).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

async fn get_status(uri: &str) -> Option<u16> {
    client()
        .get(uri.parse().ok()?)
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL query the committed dashboards and alert rules contain, with where it came from.
fn committed_queries() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/observability");
    let mut queries = Vec::new();
    for file in ["gateway-dashboard.json", "vllm-dashboard.json"] {
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m");
                queries.push((
                    format!("{file}: {}", panel["title"].as_str().unwrap()),
                    expr,
                ));
            }
        }
    }
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("alerts.yaml")).unwrap()).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            // `<query> <comparison> <threshold>`: the query must have data; the comparison
            // decides whether the alert fires.
            let cut = [" > ", " < ", " >= ", " <= ", " == ", " != "]
                .iter()
                .filter_map(|op| expr.rfind(op))
                .max()
                .expect("alert expressions end with a comparison");
            queries.push((
                format!("alerts.yaml: {}", rule["alert"].as_str().unwrap()),
                expr[..cut].to_owned(),
            ));
        }
    }
    queries
}

/// Client-side time to first token: from sending to the first event with a non-empty `choices`.
async fn stream_ttft(client: &Client, url: &str, body: &str) -> Duration {
    let started = Instant::now();
    let mut stream = Stream::open(client, url, &[], body).await;
    assert_eq!(stream.status, 200);
    let mut first = None;
    let mut seen = String::new();
    while let Some(chunk) = stream.next_chunk().await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if first.is_none()
            && seen
                .lines()
                .any(|l| l.starts_with("data: {") && !l.contains("\"choices\":[]"))
        {
            first = Some(started.elapsed());
        }
    }
    first.expect("a token event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_query_returns_data() {
    let flaky_metrics: &[&str] = &["--metrics-fail-rate", "0.5"];
    let (port, sims) = sims(170, 3, &[&[], &[], flaky_metrics]).await;
    let dead = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 179));
    let (http_port, llm_port) = (free_port(), free_port());
    let gateway = Gateway::start(
        gateway_binary(),
        &config(http_port, llm_port, port, &sims, dead).render(),
        &[],
    )
    .await;
    let mut targets: Vec<SocketAddr> = sims.iter().map(SimServer::local_addr).collect();
    targets.push(gateway.admin);
    let prometheus = Prometheus::start(&targets).await;

    // Traffic for about eight seconds: streams with usage, plain answers, adapters, an error.
    let client = client();
    let llm = format!("http://127.0.0.1:{llm_port}/v1/completions");
    let chat = format!("http://127.0.0.1:{llm_port}/v1/chat/completions");
    let plain = format!("http://127.0.0.1:{http_port}/v1/completions");
    let document = "Minutes of the Longjing tea growers' meeting. ".repeat(30);
    let until = Instant::now() + Duration::from_secs(8);
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        let stream = serde_json::json!({
            "model": "/model/qwen", "prompt": format!("{document} Question {round}?"), "max_tokens": 20,
            "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true,
        });
        stream_ttft(&client, &llm, &stream.to_string()).await;
        let chat_body = serde_json::json!({
            "model": "travel-helper", "messages": [{"role": "user", "content": format!("Plan day {round}")}],
            "max_completion_tokens": 8,
        });
        assert_eq!(
            post(&client, &chat, &[], chat_body.to_string()).await.0,
            200
        );
        assert_eq!(
            post(
                &client,
                &plain,
                &[],
                r#"{"model":"/model/qwen","prompt":"hi","max_tokens":4}"#
            )
            .await
            .0,
            200
        );
        // Longer than --max-model-len: the model server answers 400.
        let (status, _) = post(
            &client,
            &llm,
            &[],
            r#"{"model":"/model/qwen","prompt":"hi","max_tokens":100000}"#,
        )
        .await;
        assert_eq!(status, 400);
    }
    // Two more scrapes after the last request, so rates see it.
    prometheus.wait_for_two_scrapes_after(unix_now()).await;

    let mut empty = Vec::new();
    for (source, query) in committed_queries() {
        if prometheus.query(&query).await.is_empty() {
            empty.push(format!("{source}: {query}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_time_to_first_token_agrees_with_the_client() {
    let (port, sims) = sims(180, 2, &[]).await;
    let dead = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 189));
    let (http_port, llm_port) = (free_port(), free_port());
    let config = config(http_port, llm_port, port, &sims, dead).replacing(down_pod(dead, false));
    let gateway = Gateway::start(gateway_binary(), &config.render(), &[]).await;
    let client = client();
    let url = format!("http://127.0.0.1:{llm_port}/v1/completions");
    let mut client_total = Duration::ZERO;
    let n = 20;
    for i in 0..n {
        let body = serde_json::json!({
            "model": "/model/qwen", "prompt": format!("{} {i}", "a long prompt to prefill ".repeat(80)),
            "max_tokens": 4, "stream": true, "ignore_eos": true,
        });
        client_total += stream_ttft(&client, &url, &body.to_string()).await;
    }
    let (_, text) = get(&format!("http://{}/metrics", gateway.admin)).await;
    let text = String::from_utf8_lossy(&text);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("model_name=\"/model/qwen\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not found"))
    };
    assert_eq!(
        value("gateway_time_to_first_token_seconds_count"),
        f64::from(n)
    );
    let gateway_mean = value("gateway_time_to_first_token_seconds_sum") / f64::from(n);
    let client_mean = client_total.as_secs_f64() / f64::from(n);
    // The gateway sees each first token before the client does; what separates the two is one
    // loopback hop and the client's own parsing, a small part of a time to first token that
    // includes a simulated prefill.
    assert!(
        gateway_mean <= client_mean,
        "gateway {gateway_mean} s, client {client_mean} s"
    );
    assert!(
        client_mean - gateway_mean < 0.2 * client_mean + 0.005,
        "gateway {gateway_mean:.4} s, client {client_mean:.4} s"
    );
    drop(sims);
}
