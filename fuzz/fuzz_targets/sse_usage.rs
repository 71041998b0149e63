//! Response streams from model servers, cut at arbitrary points. Nothing may panic.
#![no_main]

use gateway::proxy::usage::UsageScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else { return };
    let cut = usize::from(cut).min(body.len());
    for content_type in ["text/event-stream", "application/json"] {
        let mut scanner = UsageScanner::default();
        scanner.on_header(Some(content_type));
        let now = std::time::Instant::now();
        scanner.on_body(&body[..cut], now);
        scanner.on_body(&body[cut..], now);
        scanner.on_end();
        let _ = scanner.usage();
    }
});
