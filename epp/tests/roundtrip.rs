//! This crate's client against this crate's server over real TCP on 127.0.0.1: every part of the
//! protocol both ways, the deadline, a stopped server, a malformed stream and gRPC health.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    RunningServer, TestPicker, WAIT, addrs, chat, chat_body, noise, request_headers, route,
};
use epp::{ClientSettings, PickError, PickRequest, Picked, PickerClient};

fn client(server: &RunningServer) -> PickerClient {
    PickerClient::for_addr(server.ext_proc, ClientSettings::default())
}

#[tokio::test]
async fn destination_fallback_list_and_served_report() {
    let (picker, mut taps) = TestPicker::new();
    let mut server = RunningServer::start(picker).await;
    let request = PickRequest {
        headers: request_headers(&[(
            common::DESTINATIONS,
            "10.0.0.1:8000,[fd00::1]:8001,10.0.0.2:9000",
        )]),
        body: chat_body("m"),
        subset: None,
    };
    let route = route(client(&server).pick(request).await.unwrap());
    assert_eq!(
        route.destinations,
        addrs(&["10.0.0.1:8000", "[fd00::1]:8001", "10.0.0.2:9000"])
    );
    assert_eq!(
        route.set_headers,
        vec![("x-picked-by".to_owned(), Bytes::from_static(b"test-picker"))]
    );
    assert!(route.pseudo_headers.is_empty() && route.remove_headers.is_empty());
    assert_eq!(route.body, chat_body("m"));
    let seen = taps.seen.recv().await.unwrap();
    assert_eq!(
        seen.header(":path").map(|v| v.as_ref()),
        Some(&b"/v1/chat/completions"[..])
    );
    assert_eq!(seen.subset, None);

    // The answer's held value lives as long as the stream: the picker's, the taps' and the
    // stream's references.
    assert_eq!(std::sync::Arc::strong_count(&taps.held), 3);
    let served: std::net::SocketAddr = "[fd00::1]:8001".parse().unwrap();
    let response_headers = common::json_response_headers();
    let changes = route
        .served
        .served(served, 200, &response_headers)
        .await
        .unwrap();
    assert_eq!(changes, epp::HeaderChanges::default());
    let record = tokio::time::timeout(WAIT, taps.served.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.served.as_deref(), Some("[fd00::1]:8001"));
    assert_eq!(record.status, Some(200));
    assert_eq!(
        record.destinations,
        addrs(&["10.0.0.1:8000", "[fd00::1]:8001", "10.0.0.2:9000"])
    );
    assert!(
        record
            .response_headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "application/json")
    );
    server.wait_idle().await;
    assert_eq!(
        std::sync::Arc::strong_count(&taps.held),
        2,
        "the stream ended and dropped what the answer held"
    );
}

#[tokio::test]
async fn subset_hint_reaches_the_picker_and_an_empty_one_is_refused() {
    let (picker, mut taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    let client = client(&server);
    let hint = vec!["10.0.0.9:1".to_owned(), "[fd00::3]:8000".to_owned()];
    let request = PickRequest {
        headers: request_headers(&[]),
        body: chat_body("m"),
        subset: Some(hint.clone()),
    };
    let route = route(client.pick(request).await.unwrap());
    assert_eq!(route.destinations, addrs(&["[fd00::3]:8000"]));
    assert_eq!(taps.seen.recv().await.unwrap().subset, Some(hint));

    let empty = PickRequest {
        headers: request_headers(&[]),
        body: chat_body("m"),
        subset: Some(vec![]),
    };
    match client.pick(empty).await.unwrap() {
        Picked::Reject(reject) => assert_eq!(reject.status, 503),
        Picked::Route(route) => panic!("routed despite an empty hint: {route:?}"),
    }
    assert_eq!(taps.seen.recv().await.unwrap().subset, Some(vec![]));
}

#[tokio::test]
async fn body_mutation_comes_back_with_its_length_left_to_the_proxy() {
    let (picker, _taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    let rewritten = r#"{"model":"other","messages":[]}"#;
    let request = chat(&[(common::REWRITE, rewritten)], None);
    let route = route(client(&server).pick(request).await.unwrap());
    assert_eq!(route.body, Bytes::from(rewritten));
    // The server sent content-length for the new body; the client leaves framing to the proxy.
    assert!(route.set_headers.iter().all(|(n, _)| n != "content-length"));
}

#[tokio::test]
async fn four_mib_body_round_trips_byte_for_byte() {
    let (picker, mut taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    let body = noise(4 << 20, 7);
    let request = PickRequest {
        headers: request_headers(&[]),
        body: body.clone(),
        subset: None,
    };
    let route = route(client(&server).pick(request).await.unwrap());
    assert_eq!(
        taps.seen.recv().await.unwrap().body,
        body,
        "the picker saw the body as sent"
    );
    assert_eq!(route.body.len(), body.len());
    assert!(route.body == body, "the body came back byte for byte");
}

#[tokio::test]
async fn request_without_body_is_answered_at_once() {
    let (picker, mut taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    let headers = request_headers(&[(":method", "GET"), (common::DESTINATIONS, "10.0.0.5:80")]);
    let route = route(
        client(&server)
            .pick(PickRequest {
                headers,
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    assert_eq!(route.destinations, addrs(&["10.0.0.5:80"]));
    assert!(route.body.is_empty());
    assert!(taps.seen.recv().await.unwrap().body.is_empty());
}

#[tokio::test]
async fn rejection_is_an_immediate_response_with_headers() {
    let (picker, _taps) = TestPicker::new();
    let mut server = RunningServer::start(picker).await;
    let request = chat(&[(common::REJECT, "429")], None);
    match client(&server).pick(request).await.unwrap() {
        Picked::Reject(reject) => {
            assert_eq!(reject.status, 429);
            assert_eq!(reject.body, Bytes::from("rejected with 429"));
            assert_eq!(reject.details, "test rejection");
            assert_eq!(
                reject.headers,
                vec![(
                    epp::wire::DROPPED_REASON_HEADER.to_owned(),
                    Bytes::from_static(b"test")
                )]
            );
        }
        Picked::Route(route) => panic!("routed: {route:?}"),
    }
    server.wait_idle().await;
}

#[tokio::test]
async fn a_picker_slower_than_the_deadline_is_a_timeout_and_its_stream_is_dropped() {
    let (picker, mut taps) = TestPicker::new();
    let mut server = RunningServer::start(picker).await;
    let settings = ClientSettings {
        deadline: Duration::from_millis(200),
        ..ClientSettings::default()
    };
    let client = PickerClient::for_addr(server.ext_proc, settings);
    let request = chat(&[(common::HANG, "1")], None);
    let error = client.pick(request).await.unwrap_err();
    assert!(matches!(error, PickError::Timeout { .. }), "{error:?}");
    assert_eq!(error.metric_label(), "timeout");
    taps.seen.recv().await.unwrap();
    // The server abandons the hanging pick once the client is gone.
    server.wait_idle().await;
}

#[tokio::test]
async fn dropping_the_served_report_ends_the_stream() {
    let (picker, mut taps) = TestPicker::new();
    let mut server = RunningServer::start(picker).await;
    let request = chat(&[], None);
    let route = route(client(&server).pick(request).await.unwrap());
    assert_eq!(
        *server.open_streams.borrow(),
        1,
        "the stream stays open for the served report"
    );
    drop(route);
    server.wait_idle().await;
    assert!(taps.served.try_recv().is_err(), "nothing was reported");
}

#[tokio::test]
async fn a_stopped_server_is_a_connect_error() {
    let (picker, _taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    let client = client(&server);
    let request = chat(&[], None);
    route(client.pick(request.clone()).await.unwrap());
    let addr = server.ext_proc;
    server.stop().await;
    let error = client.pick(request.clone()).await.unwrap_err();
    assert!(matches!(error, PickError::Connect(_)), "{error:?}");
    let fresh = PickerClient::for_addr(addr, ClientSettings::default());
    let error = fresh.pick(request).await.unwrap_err();
    assert!(matches!(error, PickError::Connect(_)), "{error:?}");
    assert_eq!(error.metric_label(), "connect");
}

#[tokio::test]
async fn a_malformed_stream_gets_invalid_argument() {
    use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
    use envoy_types::pb::envoy::service::ext_proc::v3::{
        HttpBody, ProcessingRequest, processing_request::Request,
    };

    let (picker, _taps) = TestPicker::new();
    let mut server = RunningServer::start(picker).await;
    let mut raw = ExternalProcessorClient::connect(format!("http://{}", server.ext_proc))
        .await
        .unwrap();
    for first in [
        ProcessingRequest {
            request: Some(Request::RequestBody(HttpBody::default())),
            ..Default::default()
        },
        ProcessingRequest::default(),
    ] {
        let mut inbound = raw
            .process(futures::stream::iter([first]))
            .await
            .unwrap()
            .into_inner();
        let status = inbound.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("expected request_headers first"),
            "{}",
            status.message()
        );
    }
    server.wait_idle().await;
}

#[tokio::test]
async fn health_is_serving_for_the_four_names_on_both_ports() {
    use tonic_health::pb::health_check_response::ServingStatus;

    let (picker, _taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    for addr in [server.health, server.ext_proc] {
        let statuses = common::health_of(addr, &epp::wire::HEALTH_SERVICES).await;
        assert_eq!(statuses, [Ok(ServingStatus::Serving); 4], "on {addr}");
        let unknown = common::health_of(addr, &["nope"]).await;
        assert_eq!(unknown, [Err(tonic::Code::NotFound)]);
    }
}
