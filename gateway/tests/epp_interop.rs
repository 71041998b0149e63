//! The gateway as the proxy in front of an endpoint picker it did not write: `static-epp`, the
//! Inference Extension v1.5.0's own ext_proc server (`tools/epp`), over test backends on
//! 127.0.0.x. A v1 pool's `endpointPickerRef` names a Service whose Pod is the picker.
//!
//! Covered: the destination the picker names, its fallback list, the subset hint, the served
//! endpoint reaching the picker, a 4 MiB body, header and body mutations, the picker's own
//! rejections, FailOpen and FailClose with the picker stopped, and an unresolvable reference
//! (500). Backends and the picker are real processes or servers on real sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use testkit::epp_tools::StaticEpp;
use testkit::k8s::{BackendRef, HttpRoute, InferencePool, Manifest, Pod, Rule, Service};
use testkit::*;

fn gateway_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
}

/// Three backends and a picker over them, behind a gateway with three routes on its `llm`
/// listener: `/fail-close` and `/fail-open` reach pools routed by the picker with those failure
/// modes, `/missing` a pool whose picker Service does not exist.
struct Setup {
    backends: Vec<Backend>,
    epp: StaticEpp,
    gateway: Gateway,
    llm: String,
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `manifest` with the picker Service `picker` (port 9002) whose one Pod is the picker at `epp`.
fn with_picker(manifest: Manifest, epp: SocketAddr) -> Manifest {
    manifest
        .with(
            Pod::new("picker-0", epp.ip())
                .label("app", "picker")
                .container("epp", "static-epp", epp.port()),
        )
        .with(
            Service::new("picker")
                .selector("app", "picker")
                .port(9002, epp.port()),
        )
}

/// The pods labelled `app: sim` at `addresses`.
fn sim_pods(addresses: impl IntoIterator<Item = IpAddr>) -> Vec<Pod> {
    addresses
        .into_iter()
        .enumerate()
        .map(|(i, ip)| Pod::new(&format!("sim-{i}"), ip).label("app", "sim"))
        .collect()
}

/// A gateway whose `llm` listener reaches one v1 pool (`app: sim` pods on `port`) routed by the
/// picker at `epp` (`FailClose`); the listener's base URL.
async fn one_pool_gateway(port: u16, pods: Vec<Pod>, epp: SocketAddr) -> (Gateway, String) {
    let (http_port, llm_port) = (free_port(), free_port());
    let manifest = Manifest::test_gateway(http_port, llm_port)
        .with_all(pods)
        .with(
            InferencePool::v1("pool", port)
                .selector("app", "sim")
                .picker("picker", 9002, "FailClose"),
        )
        .with(
            HttpRoute::new("llm")
                .on(k8s::TEST_GATEWAY, "llm")
                .to(BackendRef::pool_v1("pool")),
        );
    let manifest = with_picker(manifest, epp);
    let gateway = Gateway::start(gateway_binary(), &manifest.render(), &[]).await;
    (gateway, format!("http://127.0.0.1:{llm_port}"))
}

async fn setup(first: u8, epp_flags: &[&str]) -> Setup {
    let (port, backends) = start_backends(first, 3).await;
    let pool_list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let epp = StaticEpp::start(&pool_list.join(","), epp_flags);
    let (http_port, llm_port) = (free_port(), free_port());
    let pods = sim_pods(backends.iter().map(|b| b.addr.ip()));
    let pool = |name: &str, service: &str, mode: &str| {
        InferencePool::v1(name, port)
            .selector("app", "sim")
            .picker(service, 9002, mode)
    };
    let route = |path: &str, pool: &str| {
        HttpRoute::new(&format!("route{}", path.replace('/', "-")))
            .on(k8s::TEST_GATEWAY, "llm")
            .rule(Rule::to(BackendRef::pool_v1(pool)).path_prefix(path))
    };
    let manifest = Manifest::test_gateway(http_port, llm_port)
        .with_all(pods)
        .with(pool("closed", "picker", "FailClose"))
        .with(pool("open", "picker", "FailOpen"))
        .with(pool("broken", "no-such-picker", "FailClose"))
        .with(route("/fail-close", "closed"))
        .with(route("/fail-open", "open"))
        .with(route("/missing", "broken"));
    let manifest = with_picker(manifest, epp.ext_proc);
    let gateway = Gateway::start(
        gateway_binary(),
        &manifest.render(),
        &["--picker-timeout", "3s"],
    )
    .await;
    Setup {
        backends,
        epp,
        gateway,
        llm: format!("http://127.0.0.1:{llm_port}"),
    }
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#;

impl Setup {
    /// POST `body` to `path` with `headers`; status, response headers.
    async fn send(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Stream {
        Stream::open(&client(), &format!("{}{path}", self.llm), headers, body).await
    }

    /// Which backend received each request so far, by index.
    fn counts(&self) -> Vec<usize> {
        self.backends.iter().map(Backend::count).collect()
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.backends[i].addr
    }
}

fn header<'a>(stream: &'a Stream, name: &str) -> &'a str {
    stream
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_picker_chooses_the_endpoint_and_learns_which_one_served() {
    let s = setup(150, &[]).await;
    let chosen = s.addr(2).to_string();
    let response = s
        .send(
            "/fail-close/v1/chat/completions",
            &[
                ("test-epp-endpoint-selection", &chosen),
                ("x-request-id", "req-42"),
            ],
            CHAT,
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(s.counts(), [0, 0, 1]);
    assert_eq!(
        header(&response, "x-gateway-destination-endpoint-served"),
        chosen
    );
    // The picker's response header mutation (its conformance plugin echoes what it was told).
    assert_eq!(
        header(&response, "x-conformance-test-served-endpoint"),
        chosen
    );
    assert_eq!(header(&response, "x-went-into-resp-headers"), "true");
    // Its request header mutation reached the model server.
    let seen = &s.backends[2].seen()[0];
    assert_eq!(seen.headers["x-epp-test"], "static-epp");
    // And the picker itself recorded the served endpoint for this request.
    let served = s.epp.served();
    let record = served
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request_id"] == "req-42")
        .unwrap_or_else(|| panic!("{served:#}"));
    assert_eq!(record["served"], chosen.as_str());
    assert_eq!(record["destination"], chosen.as_str());
}

#[tokio::test]
async fn the_fallback_list_is_tried_in_order_when_the_destination_is_down() {
    let (port, live) = start_backends(160, 1).await;
    let dead = SocketAddr::new(ip(161), port);
    let epp = StaticEpp::start(&format!("{},{dead}", live[0].addr), &[]);
    let pods = sim_pods([live[0].addr.ip(), dead.ip()]);
    let (_gateway, llm) = one_pool_gateway(port, pods, epp.ext_proc).await;
    let selection = format!("{dead},{}", live[0].addr);
    let response = Stream::open(
        &client(),
        &format!("{llm}/v1/chat/completions"),
        &[("test-epp-endpoint-selection", &selection)],
        CHAT,
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(live[0].count(), 1);
    let live_addr = live[0].addr.to_string();
    assert_eq!(
        header(&response, "x-gateway-destination-endpoint-served"),
        live_addr
    );
    assert_eq!(
        header(&response, "x-conformance-test-served-endpoint"),
        live_addr
    );
}

#[tokio::test]
async fn the_subset_hint_keeps_the_picker_inside_the_pool() {
    // The picker knows a third endpoint the pool does not have (no Pod): the gateway's subset
    // hint leaves it out of the picker's candidates.
    let (port, backends) = start_backends(165, 2).await;
    let outsider = SocketAddr::new(ip(168), port);
    let list = format!("{outsider},{},{}", backends[0].addr, backends[1].addr);
    let epp = StaticEpp::start(&list, &[]);
    let pods = sim_pods(backends.iter().map(|b| b.addr.ip()));
    let (_gateway, llm) = one_pool_gateway(port, pods, epp.ext_proc).await;
    let url = format!("{llm}/v1/chat/completions");
    // Without a selection header the picker takes its first candidate inside the hint.
    let response = Stream::open(&client(), &url, &[], CHAT).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        header(&response, "x-gateway-destination-endpoint-served"),
        backends[0].addr.to_string()
    );
    // Asked for the outsider, the picker finds no candidate: its own 429, passed through.
    let response = Stream::open(
        &client(),
        &url,
        &[("test-epp-endpoint-selection", &outsider.to_string())],
        CHAT,
    )
    .await;
    assert_eq!(response.status, 429);
    assert_eq!(backends[0].count() + backends[1].count(), 1);
}

#[tokio::test]
async fn a_four_mebibyte_body_and_a_model_rewrite_pass_through_the_picker() {
    let s = setup(170, &["--repackage-body=false"]).await;
    let prompt = "x".repeat(4 << 20);
    let body = format!(r#"{{"model":"m","prompt":"{prompt}"}}"#);
    let chosen = s.addr(1).to_string();
    let response = s
        .send(
            "/fail-close/v1/completions",
            &[("test-epp-endpoint-selection", &chosen)],
            &body,
        )
        .await;
    assert_eq!(response.status, 200);
    let seen = &s.backends[1].seen()[0];
    assert_eq!(seen.body_len, body.len(), "the body arrives byte for byte");
    assert_eq!(seen.model.as_deref(), Some("m"));

    let response = s
        .send(
            "/fail-close/v1/completions",
            &[
                ("test-epp-endpoint-selection", &chosen),
                ("test-epp-model-rewrite", "travel-helper-v2"),
            ],
            &body,
        )
        .await;
    assert_eq!(response.status, 200);
    let seen = &s.backends[1].seen()[1];
    assert_eq!(seen.model.as_deref(), Some("travel-helper-v2"));
    assert_eq!(
        seen.body_len,
        body.len() + "travel-helper-v2".len() - 1,
        "the rewritten body, with its new length"
    );
}

#[tokio::test]
async fn the_pickers_rejections_reach_the_client() {
    let s = setup(175, &[]).await;
    for code in ["429", "503"] {
        let response = s
            .send(
                "/fail-close/v1/chat/completions",
                &[("test-epp-reject", code)],
                CHAT,
            )
            .await;
        assert_eq!(response.status.to_string(), code);
    }
    assert_eq!(s.counts(), [0, 0, 0]);
}

#[tokio::test]
async fn with_the_picker_down_fail_close_answers_503_and_fail_open_uses_the_built_in_strategy() {
    let mut s = setup(180, &[]).await;
    // A gRPC error from the picker counts as the picker failing.
    let response = s
        .send(
            "/fail-close/v1/chat/completions",
            &[("test-epp-reject", "grpc")],
            CHAT,
        )
        .await;
    assert_eq!(response.status, 503);
    assert_eq!(
        header(&response, "x-llm-d-request-dropped-reason"),
        "rejected-no-endpoints"
    );
    s.epp.kill();
    let closed = s.send("/fail-close/v1/chat/completions", &[], CHAT).await;
    assert_eq!(closed.status, 503);
    let open = s.send("/fail-open/v1/chat/completions", &[], CHAT).await;
    assert_eq!(open.status, 200);
    assert_eq!(s.counts().iter().sum::<usize>(), 1);
    let metrics = testkit::get(&format!("http://{}/metrics", s.gateway.admin))
        .await
        .1;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(
            r#"gateway_endpoint_picker_requests_total{pool="default/closed",result="connect"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unresolvable_picker_reference_answers_500() {
    let s = setup(185, &[]).await;
    let response = s.send("/missing/v1/chat/completions", &[], CHAT).await;
    assert_eq!(response.status, 500);
    assert_eq!(s.counts(), [0, 0, 0]);
    let snapshot = s.gateway.snapshot().await;
    let broken = snapshot["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == "default/broken")
        .unwrap();
    assert_eq!(broken["endpoint_picker"]["name"], "no-such-picker");
}

/// A gateway serving its built-in strategy as an endpoint picker (`--epp-pool`) for a v1 pool
/// without a picker of its own, with an InferenceModel and a rewrite of another name.
async fn picker_gateway(first: u8) -> (Vec<Backend>, Gateway, SocketAddr) {
    let (port, backends) = start_backends(first, 3).await;
    let (http_port, llm_port) = (free_port(), free_port());
    let rewrite = "apiVersion: llm-d.ai/v1alpha2\nkind: InferenceModelRewrite\nmetadata: {name: alias}\nspec:\n  poolRef: {name: pool}\n  rules:\n  - matches: [{model: {value: friendly}}]\n    targets: [{modelRewrite: m-v2}]\n";
    let manifest = Manifest::test_gateway(http_port, llm_port)
        .with_all(sim_pods(backends.iter().map(|b| b.addr.ip())))
        .with(InferencePool::v1("pool", port).selector("app", "sim"))
        .with(testkit::k8s::InferenceModel::new("m", "m", "pool"))
        .with(
            HttpRoute::new("llm")
                .on(k8s::TEST_GATEWAY, "llm")
                .to(BackendRef::pool_v1("pool")),
        );
    let config = format!("{}---\n{rewrite}", manifest.render());
    let epp = SocketAddr::new(ip(1), free_port());
    let health = SocketAddr::new(ip(1), free_port());
    let gateway = Gateway::start(
        gateway_binary(),
        &config,
        &[
            "--epp-pool",
            "default/pool",
            "--epp-addr",
            &epp.to_string(),
            "--epp-health-addr",
            &health.to_string(),
        ],
    )
    .await;
    (backends, gateway, epp)
}

/// The in-flight counts the gateway's snapshot shows for the pool's endpoints.
async fn in_flight(gateway: &Gateway) -> Vec<u64> {
    let snapshot = gateway.snapshot().await;
    snapshot["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["in_flight"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_gateways_picker_answers_a_proxy_it_did_not_write() {
    use testkit::epp_tools::fake_envoy;
    let (backends, gateway, epp) = picker_gateway(190).await;
    let all: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let body = r#"{"model":"friendly","messages":[{"role":"user","content":"hi"}]}"#;
    let run = fake_envoy(
        epp,
        vec![
            "--endpoints".into(),
            all.join(","),
            "--body".into(),
            body.into(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.output;
    let destinations: Vec<&str> = out["destination"].as_str().unwrap().split(',').collect();
    assert_eq!(
        destinations.len(),
        3,
        "a destination and two fallbacks: {out}"
    );
    assert!(
        destinations.iter().all(|d| all.iter().any(|a| a == d)),
        "{out}"
    );
    assert_eq!(out["metadata_destination"], out["destination"]);
    assert_eq!(out["model"], "m-v2", "the rewrite applies: {out}");
    assert_eq!(out["served"], destinations[0]);
    // The chosen endpoint was counted in flight, and the served report, ending the stream,
    // released it.
    let snapshot = gateway.snapshot().await;
    let dispatched: Vec<u64> = snapshot["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["dispatched_total"].as_u64().unwrap())
        .collect();
    assert_eq!(dispatched.iter().sum::<u64>(), 1, "{dispatched:?}");
    wait_until("the in-flight count is released", DEADLINE, || async {
        in_flight(&gateway).await.iter().all(|n| *n == 0)
    })
    .await;

    // The subset hint confines the choice.
    let only = all[1].clone();
    let run = fake_envoy(
        epp,
        vec![
            "--endpoints".into(),
            only.clone(),
            "--body".into(),
            body.into(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.output["destination"], only.as_str());

    // A 4 MiB body comes back whole (not rewritten: the model is declared as sent).
    let big = format!(r#"{{"model":"m","prompt":"{}"}}"#, "y".repeat(4 << 20));
    let file = std::env::temp_dir().join(format!("igw-epp-big-{}", std::process::id()));
    std::fs::write(&file, &big).unwrap();
    let run = fake_envoy(
        epp,
        vec![
            "--endpoints".into(),
            all.join(","),
            "--body-file".into(),
            file.display().to_string(),
            "--path".into(),
            "/v1/completions".into(),
        ],
    )
    .await;
    std::fs::remove_file(&file).unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.output["body_bytes"].as_u64(), Some(big.len() as u64));

    // The gateway's own refusals, as the proxy's client would get them.
    let run = fake_envoy(
        epp,
        vec![
            "--endpoints".into(),
            all.join(","),
            "--body".into(),
            r#"{"model":"unknown","prompt":"x"}"#.into(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let immediate = &run.output["immediate"];
    assert_eq!(immediate["status"], 404, "{immediate}");
    let error: serde_json::Value =
        serde_json::from_str(immediate["body"].as_str().unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");
    let run = fake_envoy(
        epp,
        vec![
            "--endpoints".into(),
            String::new(),
            "--body".into(),
            body.into(),
        ],
    )
    .await;
    assert_eq!(
        run.output["immediate"]["status"], 503,
        "an empty subset: {}",
        run.output
    );
    assert_eq!(
        run.output["immediate"]["headers"]["x-llm-d-request-dropped-reason"],
        "rejected-no-endpoints"
    );
    // The picker only picks: no model server saw a request.
    assert_eq!(backends.iter().map(Backend::count).sum::<usize>(), 0);
}
