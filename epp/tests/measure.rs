//! Rough figures, not assertions: how long a pick takes through this crate's client against this
//! crate's server and against `static-epp`, for a small chat body and a 4 MiB one. Ignored by
//! default; run with
//! `cargo test --release -p inference-gateway-epp --test measure -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::tools::StaticEpp;
use common::{RunningServer, TestPicker, chat, request_headers, route};
use epp::{ClientSettings, PickRequest, PickerClient};

async fn time_picks(client: &PickerClient, request: &PickRequest, count: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let picked = route(client.pick(request.clone()).await.unwrap());
        picked
            .served
            .served("127.0.0.1:8001".parse().unwrap(), 200, &[])
            .await
            .unwrap();
        times.push(start.elapsed());
    }
    times.sort_unstable();
    times
}

fn report(what: &str, times: &[Duration]) {
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "{what}: n={} p50={:?} p90={:?} p99={:?} max={:?}",
        times.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

async fn measure(name: &str, client: &PickerClient, extra: &[(&str, &str)]) {
    let small = chat(extra, None);
    time_picks(client, &small, 20).await; // warm-up: connection, allocations
    report(
        &format!("{name} small pick + served"),
        &time_picks(client, &small, 500).await,
    );
    let filler: String = (0..4 << 20)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let big = PickRequest {
        headers: request_headers(extra),
        body: format!(r#"{{"messages":[{{"content":"{filler}","role":"user"}}],"model":"m"}}"#)
            .into(),
        subset: None,
    };
    report(
        &format!("{name} 4 MiB pick + served"),
        &time_picks(client, &big, 20).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints timings; run by hand"]
async fn pick_latency() {
    let (picker, _taps) = TestPicker::new();
    let server = RunningServer::start(picker).await;
    let client = PickerClient::for_addr(server.ext_proc, ClientSettings::default());
    measure(
        "epp::server",
        &client,
        &[(common::DESTINATIONS, "127.0.0.1:8001")],
    )
    .await;

    let epp = StaticEpp::start("127.0.0.1:8001,127.0.0.2:8002", &["--v", "0"]);
    let client = PickerClient::for_addr(epp.ext_proc, ClientSettings::default());
    measure(
        "static-epp",
        &client,
        &[("test-epp-endpoint-selection", "127.0.0.1")],
    )
    .await;
}
