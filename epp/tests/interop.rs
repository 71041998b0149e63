//! Interop with implementations this crate did not write (`tools/epp`): the client against
//! `static-epp` (the Inference Extension v1.5.0's own ext_proc server), and `fake-envoy` (an
//! ext_proc client on go-control-plane playing Envoy) against this crate's server.
//!
//! The binaries come from `$EPP_TOOLS_BIN` or `scripts/build-epp-tools.sh` (Go needed; the first
//! build takes minutes, later runs reuse it).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::tools::{StaticEpp, fake_envoy};
use common::{
    RunningServer, TestPicker, WAIT, addrs, chat, chat_body, reject, request_headers, route,
};
use epp::{ClientSettings, PickError, PickRequest, PickerClient};

/// The pool static-epp routes over (loopback addresses; nothing connects to them).
const POOL: &str = "127.0.0.1:8001,127.0.0.2:8002,127.0.0.3:8003";

fn value<'a>(headers: &'a [(String, Bytes)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

const SELECT: &str = "test-epp-endpoint-selection";

// ---- this crate's client against static-epp ----

#[tokio::test]
async fn client_routes_by_header_and_sees_only_real_header_changes() {
    let epp = StaticEpp::start(POOL, &[]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    let route = route(
        client
            .pick(chat(&[(SELECT, "127.0.0.2:8002")], None))
            .await
            .unwrap(),
    );
    assert_eq!(route.destinations, addrs(&["127.0.0.2:8002"]));
    assert_eq!(value(&route.set_headers, "x-epp-test"), Some("static-epp"));
    // static-epp echoes every request header, pseudo ones and Content-Length included: none of
    // those echoes survive, only x-request-id (a UUID, as none was sent) is new.
    let mut names: Vec<&str> = route.set_headers.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["x-epp-test", "x-request-id"]);
    assert!(
        route.pseudo_headers.is_empty(),
        "{:?}",
        route.pseudo_headers
    );
    // static-epp re-serializes the JSON (keys sorted): the same document, not the same bytes.
    let returned: serde_json::Value = serde_json::from_slice(&route.body).unwrap();
    assert_eq!(
        returned,
        serde_json::from_slice::<serde_json::Value>(&chat_body("m")).unwrap()
    );
}

#[tokio::test]
async fn client_reads_the_fallback_list() {
    let epp = StaticEpp::start(POOL, &[]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    let route = route(
        client
            .pick(chat(&[(SELECT, "127.0.0.3,127.0.0.1:8001")], None))
            .await
            .unwrap(),
    );
    assert_eq!(
        route.destinations,
        addrs(&["127.0.0.3:8003", "127.0.0.1:8001"])
    );
}

#[tokio::test]
async fn client_subset_hint_is_honoured_on_the_ip_and_an_excluding_hint_is_503() {
    let epp = StaticEpp::start(POOL, &[]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    // Matched on the IP only: another port still selects 127.0.0.2:8002.
    let hinted = route(
        client
            .pick(chat(&[], Some(&["127.0.0.2:9999"])))
            .await
            .unwrap(),
    );
    assert_eq!(hinted.destinations, addrs(&["127.0.0.2:8002"]));
    let both = chat(
        &[(SELECT, "127.0.0.3,127.0.0.2")],
        Some(&["127.0.0.2:8002"]),
    );
    let both = route(client.pick(both).await.unwrap());
    assert_eq!(
        both.destinations,
        addrs(&["127.0.0.2:8002"]),
        "the header filters within the hint"
    );
    let refused = reject(
        client
            .pick(chat(&[], Some(&["127.0.0.9:8000"])))
            .await
            .unwrap(),
    );
    assert_eq!(refused.status, 503);
    let refused = reject(client.pick(chat(&[], Some(&[]))).await.unwrap());
    assert_eq!(refused.status, 503);
}

#[tokio::test]
async fn client_served_report_reaches_static_epp() {
    let epp = StaticEpp::start(POOL, &[]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    let request = chat(
        &[
            (SELECT, "127.0.0.3:8003,127.0.0.1"),
            ("x-request-id", "interop-served-1"),
        ],
        None,
    );
    let route = route(client.pick(request).await.unwrap());
    assert_eq!(
        route.destinations,
        addrs(&["127.0.0.3:8003", "127.0.0.1:8001"])
    );
    let served: SocketAddr = "127.0.0.1:8001".parse().unwrap();
    let response_headers = common::json_response_headers();
    let changes = route
        .served
        .served(served, 200, &response_headers)
        .await
        .unwrap();
    assert_eq!(
        value(&changes.set_headers, "x-conformance-test-served-endpoint"),
        Some("127.0.0.1:8001")
    );
    assert_eq!(
        value(&changes.set_headers, "x-went-into-resp-headers"),
        Some("true")
    );
    assert!(
        value(&changes.set_headers, "content-type").is_none(),
        "echoes are dropped"
    );
    let records = epp.served();
    let record = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request_id"] == "interop-served-1")
        .unwrap_or_else(|| panic!("no record in {records}"));
    assert_eq!(record["served"], "127.0.0.1:8001");
    assert_eq!(record["destination"], "127.0.0.3:8003,127.0.0.1:8001");
}

#[tokio::test]
async fn client_four_mib_body_comes_back_byte_for_byte() {
    let epp = StaticEpp::start(POOL, &[]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    // Canonical JSON (keys sorted, no whitespace, nothing to escape), so that static-epp's
    // re-serialization gives back the same bytes.
    let filler: String = (0..4 << 20)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let body = Bytes::from(format!(
        r#"{{"messages":[{{"content":"{filler}","role":"user"}}],"model":"m"}}"#
    ));
    assert!(body.len() > 4 << 20);
    let request = PickRequest {
        headers: request_headers(&[(SELECT, "127.0.0.1")]),
        body: body.clone(),
        subset: None,
    };
    let route = route(client.pick(request).await.unwrap());
    assert_eq!(route.body.len(), body.len());
    assert!(route.body == body, "the body came back byte for byte");
}

#[tokio::test]
async fn client_receives_the_model_rewrite() {
    let epp = StaticEpp::start(POOL, &[]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    let route = route(
        client
            .pick(chat(&[("test-epp-model-rewrite", "other-model")], None))
            .await
            .unwrap(),
    );
    let body: serde_json::Value = serde_json::from_slice(&route.body).unwrap();
    assert_eq!(body["model"], "other-model");
    assert_eq!(body["messages"][0]["content"], "hi");
    assert!(
        value(&route.set_headers, "content-length").is_none(),
        "framing is left to the proxy"
    );
}

#[tokio::test]
async fn client_surfaces_429_503_and_grpc_rejections() {
    let epp = StaticEpp::start(POOL, &[]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    for status in [429u16, 503] {
        let refused = reject(
            client
                .pick(chat(&[("test-epp-reject", &status.to_string())], None))
                .await
                .unwrap(),
        );
        assert_eq!(refused.status, status);
        assert!(
            String::from_utf8_lossy(&refused.body).contains("inference error"),
            "{refused:?}"
        );
    }
    let error = client
        .pick(chat(&[("test-epp-reject", "grpc")], None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            PickError::Status {
                code: tonic::Code::Unknown,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn client_times_out_on_a_slow_picker() {
    let epp = StaticEpp::start(POOL, &[]);
    let settings = ClientSettings {
        deadline: Duration::from_millis(300),
        ..ClientSettings::default()
    };
    let client = PickerClient::for_addr(epp.ext_proc, settings);
    let error = client
        .pick(chat(&[("test-epp-delay-ms", "10000")], None))
        .await
        .unwrap_err();
    assert!(matches!(error, PickError::Timeout { .. }), "{error:?}");
}

#[tokio::test]
async fn client_reports_a_killed_static_epp_as_unavailable() {
    let mut epp = StaticEpp::start(POOL, &[]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    route(client.pick(chat(&[], None)).await.unwrap());
    epp.kill();
    let error = client.pick(chat(&[], None)).await.unwrap_err();
    assert!(matches!(error, PickError::Connect(_)), "{error:?}");
}

#[tokio::test]
async fn client_recovers_when_static_epp_restarts_on_the_same_port() {
    let mut epp = StaticEpp::start(POOL, &[]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    route(client.pick(chat(&[], None)).await.unwrap());
    epp.kill();
    let port = epp.ext_proc.port().to_string();
    let restarted = StaticEpp::start(POOL, &["--port", &port]);
    assert_eq!(restarted.ext_proc, epp.ext_proc);
    // The pooled connection is dead; the call that finds out is not sent, and is retried once.
    let route = route(
        client
            .pick(chat(&[(SELECT, "127.0.0.3")], None))
            .await
            .unwrap(),
    );
    assert_eq!(route.destinations, addrs(&["127.0.0.3:8003"]));
}

#[tokio::test]
async fn static_epp_health_answers_a_tonic_health_client() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let epp = StaticEpp::start(POOL, &[]);
    let statuses = common::health_of(epp.health, &epp::wire::HEALTH_SERVICES).await;
    assert_eq!(statuses, [Ok(ServingStatus::Serving); 4]);
}

// ---- fake-envoy against this crate's server ----

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn fake_envoy_gets_destination_fallback_and_served_report_to_the_picker() {
    let (picker, mut taps) = TestPicker::new();
    let mut server = RunningServer::start(picker).await;
    let run = fake_envoy(
        server.ext_proc,
        args(&[
            "--header",
            &format!("{}=127.0.0.1:8001,[::1]:8002", common::DESTINATIONS),
            "--header",
            "x-request-id=fake-1",
            "--body",
            std::str::from_utf8(&chat_body("m")).unwrap(),
            "--response-body",
            "streamed response",
        ]),
    )
    .await;
    assert_eq!(run.code, 0, "fake-envoy failed: {}", run.stderr);
    let out = &run.output;
    assert_eq!(out["destination"], "127.0.0.1:8001,[::1]:8002");
    assert_eq!(out["metadata_destination"], "127.0.0.1:8001,[::1]:8002");
    assert_eq!(out["clear_route_cache"], true);
    assert_eq!(out["set_headers"]["x-picked-by"], "test-picker");
    assert_eq!(out["body_bytes"], chat_body("m").len());
    assert_eq!(out["model"], "m");
    assert_eq!(out["served"], "127.0.0.1:8001");
    assert_eq!(
        out["response_body_bytes"],
        "streamed response".len(),
        "response chunks are echoed"
    );
    let record = tokio::time::timeout(WAIT, taps.served.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.served.as_deref(), Some("127.0.0.1:8001"));
    assert_eq!(
        record.destinations,
        addrs(&["127.0.0.1:8001", "[::1]:8002"])
    );
    assert_eq!(record.status, Some(200));
    let request_id = record
        .request_headers
        .iter()
        .find(|(n, _)| n == "x-request-id")
        .map(|(_, v)| v.clone());
    assert_eq!(request_id, Some(Bytes::from_static(b"fake-1")));
    server.wait_idle().await;
}

#[tokio::test]
async fn fake_envoy_subset_hint_is_honoured() {
    let (picker, mut taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    let body = std::str::from_utf8(&chat_body("m")).unwrap().to_owned();
    let run = fake_envoy(
        server.ext_proc,
        args(&["--endpoints", "127.0.0.9:1,10.0.0.2:8000", "--body", &body]),
    )
    .await;
    assert_eq!(run.code, 0, "fake-envoy failed: {}", run.stderr);
    assert_eq!(run.output["destination"], "10.0.0.2:8000");
    let seen = taps.seen.recv().await.unwrap();
    assert_eq!(
        seen.subset,
        Some(vec!["127.0.0.9:1".to_owned(), "10.0.0.2:8000".to_owned()])
    );

    let run = fake_envoy(server.ext_proc, args(&["--endpoints", "", "--body", &body])).await;
    assert_eq!(run.code, 0, "fake-envoy failed: {}", run.stderr);
    assert_eq!(run.output["immediate"]["status"], 503);
}

#[tokio::test]
async fn fake_envoy_four_mib_body_round_trips() {
    let (picker, mut taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    let dir = tempfile::tempdir().unwrap();
    let (sent, returned) = (dir.path().join("body"), dir.path().join("body-out"));
    let body = common::noise(4 << 20, 11);
    std::fs::write(&sent, &body).unwrap();
    let run = fake_envoy(
        server.ext_proc,
        args(&[
            "--body-file",
            sent.to_str().unwrap(),
            "--body-out",
            returned.to_str().unwrap(),
            "--skip-response",
        ]),
    )
    .await;
    assert_eq!(run.code, 0, "fake-envoy failed: {}", run.stderr);
    assert_eq!(run.output["body_chunks"], 68, "62,000-byte chunks");
    assert!(
        taps.seen.recv().await.unwrap().body == body,
        "the picker saw the body as sent"
    );
    assert!(
        std::fs::read(&returned).unwrap() == body,
        "the body came back byte for byte"
    );
}

#[tokio::test]
async fn fake_envoy_gets_a_rejection() {
    let (picker, _taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    let body = std::str::from_utf8(&chat_body("m")).unwrap().to_owned();
    let run = fake_envoy(
        server.ext_proc,
        args(&[
            "--header",
            &format!("{}=429", common::REJECT),
            "--body",
            &body,
        ]),
    )
    .await;
    assert_eq!(run.code, 0, "fake-envoy failed: {}", run.stderr);
    let immediate = &run.output["immediate"];
    assert_eq!(immediate["status"], 429);
    assert_eq!(immediate["body"], "rejected with 429");
    assert_eq!(
        immediate["headers"][epp::wire::DROPPED_REASON_HEADER],
        "test"
    );
}
