//! Model servers' /metrics pages, in every engine dialect. Nothing may panic; values stay sane.
#![no_main]

use gateway::engine::{Engine, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for engine in [Engine::Vllm, Engine::Sglang, Engine::Trtllm, Engine::Triton] {
        if let Ok(metrics) = parse(&text, engine) {
            assert!((0.0..=1.0).contains(&metrics.kv_usage));
        }
    }
});
