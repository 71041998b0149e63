//! Request bodies from clients: parse, render the prompt, rewrite the model. Nothing may panic,
//! and a rewritten body must still parse with the new model.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = gateway::openai::parse(data) {
        let _ = request.prompt_text();
        let _ = request.estimated_prompt_tokens();
        let rewritten = request.rewrite_model(data, "target-\"model\"/\u{1F600}");
        let again = gateway::openai::parse(&rewritten).expect("a rewritten body parses");
        assert_eq!(again.model.as_deref(), Some("target-\"model\"/\u{1F600}"));
    }
});
