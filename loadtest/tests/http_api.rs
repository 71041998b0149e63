//! The simulator over real HTTP on ephemeral ports: non-streaming answers, errors, LoRA
//! adapters, client disconnects (abort), and the injected faults. Nothing here asserts on time:
//! conditions are awaited with a deadline.

mod common;

use std::time::Duration;

use common::{DEADLINE, start, wait_until};
use loadtest::sim::server::CrashReason;
use loadtest::sim::tokenizer::prompt_with_exact_tokens;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LABELS: &str = "model_name=\"Qwen/Qwen2.5-7B-Instruct\",engine=\"0\"";

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn non_streaming_answers_carry_every_choice_and_usage() {
    let sim = start(&[]).await;
    let (status, body) = sim
        .post("/v1/completions", &json!({"prompt": " one two", "max_tokens": 5, "n": 2, "ignore_eos": true, "echo": true}))
        .await;
    assert_eq!(status, 200);
    let body = json_of(&body);
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "Qwen/Qwen2.5-7B-Instruct");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert!(
        choices[1]["text"]
            .as_str()
            .unwrap()
            .starts_with(" one two ")
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 2, "total_tokens": 12, "completion_tokens": 10, "prompt_tokens_details": null})
    );

    let (status, body) = sim
        .post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3, "ignore_eos": true}))
        .await;
    assert_eq!(status, 200);
    let body = json_of(&body);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn errors_have_vllms_statuses_and_bodies() {
    let sim = start(&["--max-model-len", "100"]).await;
    let (status, body) = sim
        .post("/v1/completions", &json!({"model": "gpt-4", "prompt": "x"}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        json_of(&body),
        json!({"error": {"message": "The model `gpt-4` does not exist.", "type": "NotFoundError", "param": null, "code": 404}})
    );
    let (status, body) = sim
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&body)["error"]["type"], "BadRequestError");
    let (status, body) = sim
        .post(
            "/v1/completions",
            &json!({"prompt": " a b c", "max_tokens": 98}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        json_of(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(98 > 100 - 3)")
    );
    let (status, _) = sim
        .post(
            "/v1/chat/completions",
            &json!({"model": "Qwen/Qwen2.5-7B-Instruct"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(sim.get("/v1/completions").await.0, 405);
    assert_eq!(sim.get("/nope").await.0, 404);
    assert_eq!(sim.get("/health").await, (200, String::new()));
    assert_eq!(json_of(&sim.get("/version").await.1)["version"], "0.11.0");
}

#[tokio::test]
async fn lora_adapters_load_serve_report_and_unload() {
    let sim = start(&[
        "--enable-lora",
        "--max-loras",
        "2",
        "--lora-modules",
        "travel=/loras/travel",
    ])
    .await;
    let (status, body) = sim
        .post(
            "/v1/load_lora_adapter",
            &json!({"lora_name": "sql", "lora_path": "/loras/sql"}),
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "Success: LoRA adapter 'sql' added successfully.")
    );
    let (status, _) = sim
        .post(
            "/v1/load_lora_adapter",
            &json!({"lora_name": "sql", "lora_path": "/loras/sql"}),
        )
        .await;
    assert_eq!(status, 400);
    let models = json_of(&sim.get("/v1/models").await.1);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["Qwen/Qwen2.5-7B-Instruct", "travel", "sql"]);
    assert_eq!(models["data"][2]["parent"], "Qwen/Qwen2.5-7B-Instruct");
    let (status, body) = sim
        .post(
            "/v1/completions",
            &json!({"model": "sql", "prompt": "x", "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["model"], "sql");
    let (_, metrics) = sim.get("/metrics").await;
    assert!(metrics.contains("vllm:lora_requests_info{max_lora=\"2\",waiting_lora_adapters=\"\",running_lora_adapters=\"sql\"}"));
    let (status, _) = sim
        .post("/v1/unload_lora_adapter", &json!({"lora_name": "sql"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        sim.post("/v1/completions", &json!({"model": "sql", "prompt": "x"}))
            .await
            .0,
        404
    );
    assert_eq!(
        sim.post("/v1/unload_lora_adapter", &json!({"lora_name": "sql"}))
            .await
            .0,
        404
    );
}

/// Sends a raw HTTP/1.1 request and returns the open connection.
async fn raw_request(base: &str, path: &str, body: &Value) -> tokio::net::TcpStream {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

async fn assert_aborted_and_freed(sim: &common::TestSim) {
    let abort = format!("vllm:request_success_total{{{LABELS},finished_reason=\"abort\"}}");
    wait_until("the request is aborted", || async {
        sim.metric(&abort).await == Some(1.0)
    })
    .await;
    let usage = format!("vllm:kv_cache_usage_perc{{{LABELS}}}");
    let running = format!("vllm:num_requests_running{{{LABELS}}}");
    assert_eq!(
        sim.metric(&usage).await,
        Some(0.0),
        "the aborted request's blocks are freed"
    );
    assert_eq!(sim.metric(&running).await, Some(0.0));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_aborts_its_request() {
    // Real time / 10: the 20,000-token answer would take about a minute.
    let sim = start(&["--time-scale", "10", "--no-enable-prefix-caching"]).await;
    let body = json!({"prompt": prompt_with_exact_tokens(100, 1), "max_tokens": 20_000, "stream": true, "ignore_eos": true});
    let mut stream = raw_request(&sim.base, "/v1/completions", &body).await;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "the server closed the stream");
        seen.extend_from_slice(&buffer[..read]);
    }
    drop(stream);
    assert_aborted_and_freed(&sim).await;
}

#[tokio::test]
async fn a_client_that_disconnects_before_a_full_answer_aborts_its_request() {
    let sim = start(&["--time-scale", "10", "--no-enable-prefix-caching"]).await;
    let body = json!({"prompt": prompt_with_exact_tokens(100, 2), "max_tokens": 20_000, "ignore_eos": true});
    let stream = raw_request(&sim.base, "/v1/completions", &body).await;
    let running = format!("vllm:num_requests_running{{{LABELS}}}");
    wait_until("the request runs", || async {
        sim.metric(&running).await == Some(1.0)
    })
    .await;
    drop(stream);
    assert_aborted_and_freed(&sim).await;
}

#[tokio::test]
async fn injected_errors_use_the_chosen_statuses() {
    let sim = start(&["--fail-rate", "1", "--fail-status", "429,503"]).await;
    for _ in 0..6 {
        let (status, body) = sim.post("/v1/completions", &json!({"prompt": "x"})).await;
        assert!(status == 429 || status == 503, "{status}");
        assert_eq!(json_of(&body)["error"]["code"], status);
    }
    assert_eq!(
        sim.get("/health").await.0,
        200,
        "only generation requests fail"
    );
}

#[tokio::test]
async fn the_server_crashes_after_the_requested_number_of_requests() {
    let mut sim = start(&["--exit-after-requests", "1"]).await;
    assert_eq!(
        sim.post("/v1/completions", &json!({"prompt": "x", "max_tokens": 2}))
            .await
            .0,
        200
    );
    let url = format!("{}/v1/completions", sim.base);
    let client = sim.client.clone();
    let second = tokio::spawn(async move {
        client
            .request(
                http::Method::POST,
                &url,
                Some(json!({"prompt": "x"}).to_string()),
            )
            .await
    });
    let reason = tokio::time::timeout(DEADLINE, sim.server.crashed())
        .await
        .unwrap();
    assert_eq!(reason, CrashReason::RequestLimit);
    let outcome = tokio::time::timeout(DEADLINE, second)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_err(), "the connection is cut, not answered");
}

#[tokio::test]
async fn health_turns_ready_after_the_startup_delay() {
    let slow = start(&["--startup-delay", "3600"]).await;
    assert_eq!(slow.get("/health").await.0, 503);
    assert_eq!(
        slow.post("/v1/completions", &json!({"prompt": "x"}))
            .await
            .0,
        503
    );
    let sim = start(&["--startup-delay", "0.2"]).await;
    wait_until("/health is ready", || async {
        sim.get("/health").await.0 == 200
    })
    .await;
    assert_eq!(
        sim.post("/v1/completions", &json!({"prompt": "x", "max_tokens": 1}))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn metrics_can_fail_or_stall() {
    let failing = start(&["--metrics-fail-rate", "1", "--metrics-fail-status", "503"]).await;
    assert_eq!(failing.get("/metrics").await.0, 503);
    let stalled = start(&["--metrics-delay", "3600"]).await;
    let url = format!("{}/metrics", stalled.base);
    let scrape = stalled.client.request(http::Method::GET, &url, None);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), scrape)
            .await
            .is_err(),
        "the scrape stalls"
    );
}

#[tokio::test]
async fn metrics_count_tokens_and_requests() {
    let sim = start(&[]).await;
    for _ in 0..3 {
        let body =
            json!({"prompt": prompt_with_exact_tokens(40, 3), "max_tokens": 4, "ignore_eos": true});
        assert_eq!(sim.post("/v1/completions", &body).await.0, 200);
    }
    let sample = |name: &str| format!("vllm:{name}{{{LABELS}}}");
    assert_eq!(
        sim.metric(&sample("prompt_tokens_total")).await,
        Some(120.0)
    );
    assert_eq!(
        sim.metric(&sample("generation_tokens_total")).await,
        Some(12.0)
    );
    assert_eq!(
        sim.metric(&sample("prefix_cache_queries_total")).await,
        Some(120.0)
    );
    // 40-token prompts: the 2 full blocks are cached after the first request.
    assert_eq!(
        sim.metric(&sample("prefix_cache_hits_total")).await,
        Some(64.0)
    );
    assert_eq!(
        sim.metric(&sample("time_to_first_token_seconds_count"))
            .await,
        Some(3.0)
    );
    assert_eq!(
        sim.metric(&sample("inter_token_latency_seconds_count"))
            .await,
        Some(9.0)
    );
    let length = format!("vllm:request_success_total{{{LABELS},finished_reason=\"length\"}}");
    assert_eq!(sim.metric(&length).await, Some(3.0));
}
