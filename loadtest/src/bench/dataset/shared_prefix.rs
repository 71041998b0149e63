//! Shared-prefix groups: `groups` long system prompts, each followed by `prompts_per_group`
//! different questions, in a seeded random order so that the groups interleave.
//!
//! This is the workload where prefix-aware routing pays: a request whose group's system prompt
//! is cached on its endpoint skips that prefill. Sent to the completions endpoint, a prompt is the
//! system text followed by the question; sent to the chat endpoint, it is a system message and a
//! user message.

use super::{DatasetError, Message, Prompt, Session, Workload, invalid, prompt_seed};
use crate::sim::tokenizer::prompt_with_exact_tokens;

/// The groups' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedPrefixSpec {
    pub groups: usize,
    pub prompts_per_group: usize,
    pub system_len: usize,
    pub question_len: usize,
    pub output_len: usize,
}

const SYSTEM_PURPOSE: u64 = 11;
const QUESTION_PURPOSE: u64 = 12;
const ORDER_PURPOSE: u64 = 13;

impl SharedPrefixSpec {
    /// The workload; `chat` builds system + user messages instead of one text.
    pub fn workload(&self, seed: u64, chat: bool) -> Result<Workload, DatasetError> {
        if self.groups == 0 || self.prompts_per_group == 0 {
            return Err(invalid(
                "shared-prefix-groups",
                "groups and prompts per group must be at least 1",
            ));
        }
        let systems: Vec<String> = (0..self.groups)
            .map(|g| {
                prompt_with_exact_tokens(
                    self.system_len,
                    prompt_seed(seed, SYSTEM_PURPOSE, g as u64),
                )
            })
            .collect();
        let mut order: Vec<(usize, usize)> = (0..self.groups)
            .flat_map(|g| (0..self.prompts_per_group).map(move |p| (g, p)))
            .collect();
        fastrand::Rng::with_seed(prompt_seed(seed, ORDER_PURPOSE, 0)).shuffle(&mut order);
        let sessions = order
            .into_iter()
            .enumerate()
            .map(|(index, (group, within))| {
                let question = prompt_with_exact_tokens(
                    self.question_len,
                    prompt_seed(
                        seed,
                        QUESTION_PURPOSE,
                        (group * self.prompts_per_group + within) as u64,
                    ),
                );
                let prompt = if chat {
                    Prompt::Chat(vec![
                        Message::new("system", systems[group].clone()),
                        Message::new("user", question),
                    ])
                } else {
                    Prompt::Text(format!("{}{question}", systems[group]))
                };
                let mut session = Session::single(index, prompt, self.output_len);
                session.group = Some(group);
                session
            })
            .collect();
        Ok(Workload {
            description: format!(
                "shared prefix: {} groups × {} prompts, system prompt {} + question {} tokens, output {} tokens",
                self.groups,
                self.prompts_per_group,
                self.system_len,
                self.question_len,
                self.output_len
            ),
            sessions,
            forces_ignore_eos: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokenizer::tokenize;

    fn spec() -> SharedPrefixSpec {
        SharedPrefixSpec {
            groups: 4,
            prompts_per_group: 5,
            system_len: 64,
            question_len: 20,
            output_len: 30,
        }
    }

    #[test]
    fn groups_share_exactly_their_system_prompt() {
        let workload = spec().workload(9, false).unwrap();
        assert_eq!(workload.num_requests(), 20);
        let text = |s: &Session| match &s.turns[0].prompt {
            Prompt::Text(t) => tokenize(t),
            Prompt::Chat(_) => unreachable!(),
        };
        for a in &workload.sessions {
            assert_eq!(text(a).len(), 84);
            assert_eq!(a.turns[0].output_len, 30);
            for b in &workload.sessions {
                if std::ptr::eq(a, b) {
                    continue;
                }
                let common = text(a)
                    .iter()
                    .zip(text(b).iter())
                    .take_while(|(x, y)| x == y)
                    .count();
                if a.group == b.group {
                    assert_eq!(common, 64);
                } else {
                    assert_eq!(common, 0);
                }
            }
        }
        // Every group has its prompts, and the order interleaves groups.
        for g in 0..4 {
            let n = workload
                .sessions
                .iter()
                .filter(|s| s.group == Some(g))
                .count();
            assert_eq!(n, 5);
        }
        let first_five: Vec<_> = workload.sessions[..5].iter().map(|s| s.group).collect();
        assert!(first_five.iter().any(|g| *g != first_five[0]));
    }

    #[test]
    fn chat_prompts_put_the_system_text_in_a_system_message() {
        let workload = spec().workload(9, true).unwrap();
        let Prompt::Chat(messages) = &workload.sessions[0].turns[0].prompt else {
            panic!("chat prompt expected");
        };
        assert_eq!(messages[0].role, "system");
        assert_eq!(tokenize(&messages[0].content).len(), 64);
        assert_eq!(messages[1].role, "user");
    }

    #[test]
    fn seeds_decide_content_and_order() {
        assert_eq!(
            spec().workload(1, false).unwrap(),
            spec().workload(1, false).unwrap()
        );
        assert_ne!(
            spec().workload(1, false).unwrap(),
            spec().workload(2, false).unwrap()
        );
    }
}
