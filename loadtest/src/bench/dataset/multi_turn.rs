//! Multi-turn chat sessions: each session is a conversation of `turns` user messages; turn *t*
//! sends the system prompt, every earlier user message with the answer the server gave, and the
//! new user message, so the prompt grows by a question and an answer each turn.
//!
//! Routing a session's turns to the endpoint that holds its history saves re-prefilling all of
//! it. The system prompt (`system_len` tokens, 0 for none) is the same for every session, like an
//! application's instructions; user messages are distinct.

use super::{Conversation, DatasetError, Prompt, Session, Turn, Workload, invalid, prompt_seed};
use crate::sim::tokenizer::prompt_with_exact_tokens;

/// The sessions' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiTurnSpec {
    pub sessions: usize,
    pub turns: usize,
    pub system_len: usize,
    pub user_len: usize,
    pub output_len: usize,
}

const SYSTEM_PURPOSE: u64 = 21;
const USER_PURPOSE: u64 = 22;

impl MultiTurnSpec {
    pub fn workload(&self, seed: u64) -> Result<Workload, DatasetError> {
        if self.sessions == 0 || self.turns == 0 {
            return Err(invalid(
                "multi-turn-sessions",
                "sessions and turns must be at least 1",
            ));
        }
        let system = (self.system_len > 0).then(|| {
            prompt_with_exact_tokens(self.system_len, prompt_seed(seed, SYSTEM_PURPOSE, 0))
        });
        let sessions = (0..self.sessions)
            .map(|s| Session {
                first_index: s * self.turns,
                arrival: None,
                model: None,
                group: Some(s),
                conversation: Some(Conversation {
                    system: system.clone(),
                }),
                turns: (0..self.turns)
                    .map(|t| Turn {
                        prompt: Prompt::Text(prompt_with_exact_tokens(
                            self.user_len,
                            prompt_seed(seed, USER_PURPOSE, (s * self.turns + t) as u64),
                        )),
                        output_len: self.output_len,
                    })
                    .collect(),
            })
            .collect();
        Ok(Workload {
            description: format!(
                "multi-turn chat: {} sessions × {} turns, system prompt {} tokens, user messages {} tokens, answers {} tokens",
                self.sessions, self.turns, self.system_len, self.user_len, self.output_len
            ),
            sessions,
            forces_ignore_eos: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokenizer::count_tokens;

    #[test]
    fn sessions_have_their_turns_and_indices() {
        let spec = MultiTurnSpec {
            sessions: 3,
            turns: 4,
            system_len: 50,
            user_len: 12,
            output_len: 20,
        };
        let workload = spec.workload(5).unwrap();
        assert_eq!(workload.num_requests(), 12);
        assert_eq!(workload.sessions[2].first_index, 8);
        let conversation = workload.sessions[0].conversation.as_ref().unwrap();
        assert_eq!(count_tokens(conversation.system.as_ref().unwrap()), 50);
        for session in &workload.sessions {
            for turn in &session.turns {
                let Prompt::Text(text) = &turn.prompt else {
                    panic!("user turns are text")
                };
                assert_eq!(count_tokens(text), 12);
            }
        }
        assert_ne!(workload.sessions[0].turns[0], workload.sessions[1].turns[0]);
    }
}
