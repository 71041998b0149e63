//! The exact requests `vllm bench serve` (and the older `benchmark_serving.py`) sends, over real
//! HTTP, answered as vLLM answers them (`shared/reference/benchmark-client.md`).

mod common;

use bytes::Bytes;
use common::{TestSim, sse_events, start};
use http_body_util::Full;
use loadtest::sim::tokenizer::{count_tokens, prompt_with_exact_tokens};
use serde_json::{Value, json};

const MODEL: &str = "/model/qwen";
const ROOT: &str = "/models/Qwen-2.5-7B-Instruct";

async fn seed_like_sim() -> TestSim {
    start(&[
        ROOT,
        "--served-model-name",
        MODEL,
        "--trust-remote-code",
        "--enforce-eager",
        "--enable-lora",
        "--max-loras",
        "2",
    ])
    .await
}

/// Posts like aiohttp does in the bench client and returns (status, content type, body).
async fn bench_post(
    sim: &TestSim,
    path: &str,
    body: &Value,
    request_id: &str,
) -> (u16, String, String) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{}{path}", sim.base))
        .header("content-type", "application/json")
        .header("authorization", "Bearer None")
        .header("x-request-id", request_id)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sim.client.send(request).await.unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = String::from_utf8(response.body().to_vec()).unwrap();
    (response.status().as_u16(), content_type, body)
}

struct Stream {
    chunks: Vec<Value>,
    usage: Option<Value>,
    text: String,
    finish_reason: String,
}

/// Checks the SSE framing vLLM uses and splits content chunks from the usage chunk.
fn parse_stream(body: &str, chat: bool) -> Stream {
    let mut events = sse_events(body);
    assert_eq!(
        events.pop().as_deref(),
        Some("[DONE]"),
        "the stream ends with [DONE]"
    );
    let mut stream = Stream {
        chunks: Vec::new(),
        usage: None,
        text: String::new(),
        finish_reason: String::new(),
    };
    for event in events {
        let chunk: Value = serde_json::from_str(&event).unwrap();
        let choices = chunk["choices"].as_array().unwrap();
        if choices.is_empty() {
            assert!(stream.usage.is_none(), "one usage chunk only");
            stream.usage = Some(chunk["usage"].clone());
            continue;
        }
        assert!(stream.usage.is_none(), "the usage chunk comes last");
        let choice = &choices[0];
        let piece = if chat {
            &choice["delta"]["content"]
        } else {
            &choice["text"]
        };
        stream.text.push_str(piece.as_str().unwrap());
        if let Some(reason) = choice["finish_reason"].as_str() {
            stream.finish_reason = reason.to_string();
            assert_eq!(choice["stop_reason"], Value::Null);
        }
        stream.chunks.push(chunk);
    }
    stream
}

#[tokio::test]
async fn preflight_requests_are_answered() {
    let sim = seed_like_sim().await;
    let (status, body) = sim.get("/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["root"], ROOT);
    let prompt = prompt_with_exact_tokens(1550, 9);
    let (status, body) = sim
        .post("/tokenize", &json!({"model": MODEL, "prompt": prompt}))
        .await;
    assert_eq!(status, 200);
    let tokens: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tokens["count"], 1550);
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1550);
    let (status, body) = sim
        .post(
            "/detokenize",
            &json!({"model": MODEL, "tokens": tokens["tokens"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["prompt"],
        prompt
    );
    assert_eq!(sim.get("/metrics").await.0, 200);
}

#[tokio::test]
async fn current_completions_body_streams_like_vllm() {
    let sim = seed_like_sim().await;
    let prompt = prompt_with_exact_tokens(300, 1);
    let body = json!({"model": MODEL, "prompt": prompt, "repetition_penalty": 1.0, "max_tokens": 40,
        "logprobs": null, "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true});
    let (status, content_type, text) =
        bench_post(&sim, "/v1/completions", &body, "bench-1a2b3c4d-0").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/event-stream"));
    let stream = parse_stream(&text, false);
    assert_eq!(stream.chunks.len(), 40, "one chunk per token");
    assert_eq!(stream.finish_reason, "length");
    for chunk in &stream.chunks {
        assert_eq!(chunk["id"], "cmpl-bench-1a2b3c4d-0");
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["model"], MODEL);
        assert_eq!(chunk["usage"], Value::Null);
    }
    assert_eq!(
        stream.usage.unwrap(),
        json!({"prompt_tokens": 300, "total_tokens": 340, "completion_tokens": 40})
    );
    assert_eq!(
        count_tokens(&stream.text),
        40,
        "the text re-tokenizes to the reported count"
    );
}

#[tokio::test]
async fn current_chat_body_streams_like_vllm() {
    let sim = seed_like_sim().await;
    let prompt = prompt_with_exact_tokens(200, 2);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
        "max_completion_tokens": 25, "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true});
    let (status, _, text) =
        bench_post(&sim, "/v1/chat/completions", &body, "bench-1a2b3c4d-1").await;
    assert_eq!(status, 200);
    let stream = parse_stream(&text, true);
    assert_eq!(
        stream.chunks.len(),
        26,
        "the role chunk plus one chunk per token"
    );
    assert_eq!(
        stream.chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(stream.chunks[0]["id"], "chatcmpl-bench-1a2b3c4d-1");
    assert_eq!(stream.chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(stream.finish_reason, "length");
    let usage = stream.usage.unwrap();
    assert_eq!(usage["completion_tokens"], 25);
    let (_, tokenized) = sim
        .post(
            "/tokenize",
            &json!({"model": MODEL, "messages": body["messages"]}),
        )
        .await;
    let prompt_tokens = serde_json::from_str::<Value>(&tokenized).unwrap()["count"].clone();
    assert_eq!(usage["prompt_tokens"], prompt_tokens);
}

#[tokio::test]
async fn older_bodies_with_temperature_and_best_of_are_accepted() {
    let sim = seed_like_sim().await;
    let prompt = prompt_with_exact_tokens(120, 3);
    // Early benchmark_serving.py: temperature 0.0, best_of 1, no stream_options, no ignore_eos.
    let early = json!({"model": MODEL, "prompt": prompt, "temperature": 0.0, "best_of": 1,
        "max_tokens": 30, "logprobs": null, "stream": true});
    let (status, _, text) = bench_post(&sim, "/v1/completions", &early, "0").await;
    assert_eq!(status, 200);
    let stream = parse_stream(&text, false);
    assert!(
        stream.usage.is_none(),
        "no usage chunk unless include_usage is asked for"
    );
    let tokens = stream.chunks.len();
    assert!((1..=30).contains(&tokens));
    assert_eq!(
        stream.finish_reason,
        if tokens == 30 { "length" } else { "stop" }
    );
    // Later versions of the script: temperature 0.0 with stream_options and ignore_eos.
    let later = json!({"model": MODEL, "prompt": prompt, "temperature": 0.0, "repetition_penalty": 1.0,
        "max_tokens": 30, "logprobs": null, "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true});
    let (status, _, text) = bench_post(&sim, "/v1/completions", &later, "1").await;
    assert_eq!(status, 200);
    assert_eq!(
        parse_stream(&text, false).usage.unwrap()["completion_tokens"],
        30
    );
    // Older chat: max_tokens instead of max_completion_tokens, content as a plain string.
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "temperature": 0.0,
        "max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true});
    let (status, _, text) = bench_post(&sim, "/v1/chat/completions", &chat, "2").await;
    assert_eq!(status, 200);
    assert_eq!(
        parse_stream(&text, true).usage.unwrap()["completion_tokens"],
        12
    );
}
