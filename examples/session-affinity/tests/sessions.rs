//! The example binary in front of real simulators: a session's requests land on one endpoint,
//! and different sessions spread over the pool.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stick_and_spread() {
    let (port, sims) = start_sims(200, 3, &[], &[]).await;
    let llm_port = free_port();
    let config = format!(
        "{gateway}{pods}{route}{pool}",
        gateway = gateway_yaml(free_port(), llm_port),
        pods = pods_at("sim", "sim", sims.iter().map(|s| s.local_addr().ip())),
        route = pool_route("pool"),
        pool = pool_with_strategy("pool", "sim", port, "SESSION_AFFINITY"),
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_session-affinity-gateway"));
    let gateway = Gateway::start(binary, &config, &[]).await;
    gateway
        .wait_for_snapshot("the simulators' metrics", |snapshot| {
            snapshot["pools"][0]["endpoints"]
                .as_array()
                .is_some_and(|e| e.iter().all(|e| e["metrics"].is_object()))
        })
        .await;
    assert_eq!(
        gateway.snapshot().await["pools"][0]["strategy"]["implementation"],
        "SESSION_AFFINITY"
    );

    let client = client();
    let url = format!("http://127.0.0.1:{llm_port}/v1/chat/completions");
    let mut endpoints: HashMap<String, HashSet<SocketAddr>> = HashMap::new();
    for turn in 0..4 {
        for session in 0..9 {
            let id = format!("conversation-{session}");
            let body = format!(
                r#"{{"model":"/model/qwen","messages":[{{"role":"user","content":"turn {turn} of {id}"}}],"max_completion_tokens":4}}"#
            );
            let mut stream = Stream::open(&client, &url, &[("x-session-id", &id)], &body).await;
            assert_eq!(stream.status, 200);
            let served: SocketAddr = stream.headers["x-gateway-destination-endpoint-served"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            while stream.next_chunk().await.is_some() {}
            endpoints.entry(id).or_default().insert(served);
        }
    }
    for (session, served) in &endpoints {
        assert_eq!(
            served.len(),
            1,
            "{session} stayed on one endpoint: {served:?}"
        );
    }
    let used: HashSet<&SocketAddr> = endpoints.values().flatten().collect();
    assert!(used.len() >= 2, "sessions spread over the pool: {used:?}");
    assert_eq!(
        gateway.snapshot().await["pools"][0]["strategy"]["state"]["sessions"],
        9
    );
}
