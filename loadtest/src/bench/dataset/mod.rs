//! Workloads: what each request of a benchmark asks for, decided before the run from a seed.
//!
//! A workload is a list of [`Session`]s. Most sessions have one turn (the random, shared-prefix,
//! LoRA-mix and trace datasets); a multi-turn chat session has several, sent one after another,
//! each carrying the conversation so far (the assistant's answers are only known at run time, so
//! the runner builds those prompts). Every prompt is built from the simulator's tokenizer rules,
//! so its token count is exact, not estimated ([`crate::sim::tokenizer`]). Nothing here does I/O
//! except [`trace::load`], which reads a file.

pub mod lora_mix;
pub mod multi_turn;
pub mod random;
pub mod shared_prefix;
pub mod trace;

use crate::sim::tokenizer::{ChatTurn, count_tokens, render_chat_prompt};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// What a request asks the model to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Plain text: the completions `prompt`, or the single user message of a chat request.
    Text(String),
    /// A conversation: chat `messages`, or its rendered ChatML text on the completions endpoint.
    Chat(Vec<Message>),
}

impl Prompt {
    /// The text the model server tokenizes for this prompt: the text itself, or the chat
    /// template's rendering (Qwen2.5 ChatML, as the simulator renders it).
    pub fn server_text(&self, chat_endpoint: bool) -> String {
        match self {
            Prompt::Text(text) if chat_endpoint => render_chat_prompt(&[ChatTurn {
                role: "user",
                content: text,
            }]),
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => render_chat_prompt(
                &messages
                    .iter()
                    .map(|m| ChatTurn {
                        role: &m.role,
                        content: &m.content,
                    })
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// The prompt's length in tokens as the model server counts it.
    pub fn server_tokens(&self, chat_endpoint: bool) -> usize {
        count_tokens(&self.server_text(chat_endpoint))
    }
}

/// One request's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// For a conversation session: the user's message of this turn (as `Prompt::Text`).
    pub prompt: Prompt,
    /// `max_tokens` / `max_completion_tokens`.
    pub output_len: usize,
}

/// Requests sent one after another; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The dataset index of the first turn; turn `t` has index `first_index + t` (the
    /// `x-request-id` suffix).
    pub first_index: usize,
    /// Seconds after the start at which the session begins, when the dataset says (a trace);
    /// otherwise the arrival process decides.
    pub arrival: Option<f64>,
    /// The `model` field, when not the served model name (a LoRA adapter).
    pub model: Option<String>,
    /// The group the prompt belongs to (shared-prefix groups), for reports.
    pub group: Option<usize>,
    /// When set, each turn's prompt is this system message, every earlier user message and
    /// answer, and the turn's user message.
    pub conversation: Option<Conversation>,
    pub turns: Vec<Turn>,
}

/// The fixed part of a multi-turn conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub system: Option<String>,
}

impl Session {
    /// A one-request session.
    pub fn single(index: usize, prompt: Prompt, output_len: usize) -> Self {
        Session {
            first_index: index,
            arrival: None,
            model: None,
            group: None,
            conversation: None,
            turns: vec![Turn { prompt, output_len }],
        }
    }
}

/// A workload: its sessions, in dataset order, and a one-line description for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub description: String,
    pub sessions: Vec<Session>,
    /// Whether the dataset forces `ignore_eos` (the current client does for random datasets).
    pub forces_ignore_eos: bool,
}

impl Workload {
    pub fn num_requests(&self) -> usize {
        self.sessions.iter().map(|s| s.turns.len()).sum()
    }
}

/// Why a workload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error("reading trace {path}: {source}")]
    TraceIo {
        path: String,
        source: std::io::Error,
    },
    #[error("trace {path}, line {line}: {reason}")]
    TraceLine {
        path: String,
        line: usize,
        reason: String,
    },
}

pub(crate) fn invalid(flag: &'static str, reason: impl Into<String>) -> DatasetError {
    DatasetError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// A fresh, deterministic stream of prompt seeds: `(seed, purpose, index)` always gives the same
/// value, and different purposes never collide in practice.
pub(crate) fn prompt_seed(seed: u64, purpose: u64, index: u64) -> u64 {
    crate::sim::tokenizer::mix_seed(
        crate::sim::tokenizer::mix_seed(seed, purpose),
        index.wrapping_add(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_tokens_follow_the_endpoint() {
        let prompt = Prompt::Text(crate::sim::tokenizer::prompt_with_exact_tokens(10, 1));
        assert_eq!(prompt.server_tokens(false), 10);
        // The default system message and the ChatML wrapping add a fixed overhead.
        let overhead = Prompt::Text(String::new()).server_tokens(true);
        assert_eq!(prompt.server_tokens(true), 10 + overhead);
    }
}
