//! Replay of a JSONL request trace with timestamps.
//!
//! One JSON object per line; blank lines and lines starting with `#` are skipped. Fields:
//!
//! | field | meaning |
//! |---|---|
//! | `timestamp` | arrival, in milliseconds (the Mooncake trace convention); relative to the first line |
//! | `prompt` | the prompt text, sent as is; or else |
//! | `input_length` | the prompt length in tokens, built from `hash_ids` |
//! | `hash_ids` | block ids: block *i* of the prompt is the text for id `hash_ids[i]`, `block_tokens` tokens long, so lines that share leading ids share a prompt prefix (as in Mooncake traces) |
//! | `output_length` | `max_tokens` |
//! | `model` | optional: the `model` field (an adapter) |
//!
//! Arrival times are divided by `speedup` (2 replays twice as fast).

use std::path::Path;

use serde::Deserialize;

use super::{DatasetError, Prompt, Session, Workload, prompt_seed};
use crate::sim::tokenizer::prompt_with_exact_tokens;

/// Tokens per hash id when the trace does not say (Mooncake's traces use 512).
pub const DEFAULT_BLOCK_TOKENS: usize = 512;

/// Characters per token of [`prompt_with_exact_tokens`] text (a space and four letters), so a
/// prompt is cut to `n` tokens by keeping `5·n` bytes.
const CHARS_PER_TOKEN: usize = 5;

const HASH_PURPOSE: u64 = 41;
const FILL_PURPOSE: u64 = 42;

#[derive(Debug, Deserialize)]
struct TraceLine {
    timestamp: f64,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    input_length: Option<usize>,
    #[serde(default)]
    hash_ids: Vec<u64>,
    output_length: usize,
    #[serde(default)]
    model: Option<String>,
}

/// Builds the prompt of `input_length` tokens whose blocks are the texts of `hash_ids`.
pub fn prompt_from_hash_ids(
    hash_ids: &[u64],
    input_length: usize,
    block_tokens: usize,
    fill_seed: u64,
) -> String {
    let mut prompt = String::with_capacity(input_length * CHARS_PER_TOKEN);
    for &id in hash_ids {
        if prompt.len() >= input_length * CHARS_PER_TOKEN {
            break;
        }
        prompt.push_str(&prompt_with_exact_tokens(
            block_tokens,
            prompt_seed(0, HASH_PURPOSE, id),
        ));
    }
    let have = prompt.len() / CHARS_PER_TOKEN;
    if have < input_length {
        prompt.push_str(&prompt_with_exact_tokens(input_length - have, fill_seed));
    }
    prompt.truncate(input_length * CHARS_PER_TOKEN);
    prompt
}

/// Parses a trace.
pub fn parse(
    text: &str,
    path: &str,
    block_tokens: usize,
    speedup: f64,
    seed: u64,
) -> Result<Workload, DatasetError> {
    let mut sessions = Vec::new();
    let mut first_timestamp = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |reason: String| DatasetError::TraceLine {
            path: path.to_string(),
            line: number + 1,
            reason,
        };
        let entry: TraceLine = serde_json::from_str(line).map_err(|e| error(e.to_string()))?;
        let start = *first_timestamp.get_or_insert(entry.timestamp);
        let index = sessions.len();
        let prompt = match (entry.prompt, entry.input_length) {
            (Some(prompt), _) => prompt,
            (None, Some(length)) => prompt_from_hash_ids(
                &entry.hash_ids,
                length,
                block_tokens,
                prompt_seed(seed, FILL_PURPOSE, index as u64),
            ),
            (None, None) => return Err(error("needs `prompt` or `input_length`".into())),
        };
        let mut session = Session::single(index, Prompt::Text(prompt), entry.output_length.max(1));
        session.arrival = Some((entry.timestamp - start).max(0.0) / 1000.0 / speedup);
        session.model = entry.model;
        sessions.push(session);
    }
    Ok(Workload {
        description: format!(
            "trace {path}: {} requests, replayed at {speedup}× speed",
            sessions.len()
        ),
        sessions,
        forces_ignore_eos: false,
    })
}

/// Reads and parses a trace file.
pub fn load(
    path: &Path,
    block_tokens: usize,
    speedup: f64,
    seed: u64,
) -> Result<Workload, DatasetError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::TraceIo {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown, block_tokens, speedup, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokenizer::tokenize;

    const TRACE: &str = r#"
# a comment
{"timestamp": 1000, "input_length": 40, "output_length": 5, "hash_ids": [1, 2, 3]}
{"timestamp": 1500, "input_length": 45, "output_length": 7, "hash_ids": [1, 2, 9], "model": "adapter-1"}
{"timestamp": 3000, "prompt": "Hello there", "output_length": 3}
"#;

    #[test]
    fn timestamps_lengths_and_shared_blocks() {
        let workload = parse(TRACE, "t.jsonl", 16, 2.0, 0).unwrap();
        assert_eq!(workload.num_requests(), 3);
        let arrivals: Vec<_> = workload
            .sessions
            .iter()
            .map(|s| s.arrival.unwrap())
            .collect();
        assert_eq!(arrivals, [0.0, 0.25, 1.0]);
        let ids = |i: usize| match &workload.sessions[i].turns[0].prompt {
            Prompt::Text(t) => tokenize(t),
            Prompt::Chat(_) => unreachable!(),
        };
        assert_eq!(ids(0).len(), 40);
        assert_eq!(ids(1).len(), 45);
        // Blocks 1 and 2 (32 tokens) are shared, block 3 vs 9 differs.
        let common = ids(0)
            .iter()
            .zip(ids(1).iter())
            .take_while(|(a, b)| a == b)
            .count();
        assert_eq!(common, 32);
        assert_eq!(workload.sessions[1].model.as_deref(), Some("adapter-1"));
        assert_eq!(workload.sessions[1].turns[0].output_len, 7);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let error = parse("{\"timestamp\": 1}\n", "t.jsonl", 16, 1.0, 0).unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
    }
}
