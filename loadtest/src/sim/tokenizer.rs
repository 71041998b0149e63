//! The simulator's deterministic tokenizer: a small, documented rule over characters that any load
//! generator can reproduce exactly, so it can build a prompt of exactly N tokens and count the
//! tokens of generated text without asking the server.
//!
//! The rule (also in `docs/simulator.md`), applied left to right:
//! 1. A special token (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`) is one token.
//! 2. An ASCII space followed by an ASCII letter or digit starts a *word piece*: the space plus up
//!    to 4 following ASCII letters/digits.
//! 3. An ASCII letter or digit starts a word piece of up to 4 ASCII letters/digits.
//! 4. Any other character (punctuation, newline, a space not followed by a letter or digit, any
//!    non-ASCII character) is one token.
//!
//! So an English word of L letters after a space costs ⌈L/4⌉ tokens, which is close to what a
//! real BPE vocabulary averages. Token ids are a bijective encoding of the pieces (see
//! [`WORD_BASE`] and [`SPECIAL_BASE`]), so `/detokenize` can invert them, and tokenizing any
//! prefix of a tokenization's text gives back that prefix of ids. This module must stay free of
//! I/O and of any randomness: the load generator links it to reproduce counts.

use std::sync::LazyLock;

/// Ids below this are single Unicode scalar values (id = code point).
pub const WORD_BASE: u32 = 0x11_0000;
/// Letters and digits a word piece may hold, in id order.
const WORD_ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Longest word piece (letters/digits, not counting the leading space). Four characters per token
/// is the usual rule of thumb for English under BPE vocabularies such as Qwen's.
pub const MAX_WORD_PIECE: usize = 4;
/// Number of distinct word pieces without the space flag: 62 + 62² + 62³ + 62⁴.
const WORD_PIECES: u32 = 62 + 3_844 + 238_328 + 14_776_336;
/// First special-token id; word-piece ids fill `WORD_BASE..SPECIAL_BASE`.
pub const SPECIAL_BASE: u32 = WORD_BASE + 2 * WORD_PIECES;
/// The special tokens, in id order from [`SPECIAL_BASE`] (Qwen2.5's chat markers).
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Every valid id is below this.
pub const VOCAB_SIZE: u32 = SPECIAL_BASE + SPECIAL_TOKENS.len() as u32;

/// The default system prompt Qwen2.5's chat template inserts when the conversation has none.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// Why a list of ids cannot be turned back into text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizerError {
    #[error("Token id {0} is out of vocabulary")]
    OutOfVocabulary(u64),
}

fn word_digit(byte: u8) -> Option<u32> {
    match byte {
        b'0'..=b'9' => Some(u32::from(byte - b'0')),
        b'A'..=b'Z' => Some(u32::from(byte - b'A') + 10),
        b'a'..=b'z' => Some(u32::from(byte - b'a') + 36),
        _ => None,
    }
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
}

/// Offset of the first piece of `len` characters among the word pieces.
fn word_len_offset(len: usize) -> u32 {
    (1..len).map(|k| 62u32.pow(k as u32)).sum()
}

/// The id of a word piece (`letters` are 1..=4 ASCII letters/digits).
fn word_piece_id(leading_space: bool, letters: &[u8]) -> u32 {
    let value = letters
        .iter()
        .fold(0u32, |acc, &b| acc * 62 + word_digit(b).unwrap_or(0));
    WORD_BASE + 2 * (word_len_offset(letters.len()) + value) + u32::from(leading_space)
}

/// Length in bytes of the piece starting at `at` and its id.
fn next_piece(text: &str, at: usize) -> (usize, u32) {
    let rest = &text.as_bytes()[at..];
    for (index, special) in SPECIAL_TOKENS.iter().enumerate() {
        if rest.starts_with(special.as_bytes()) {
            return (special.len(), SPECIAL_BASE + index as u32);
        }
    }
    let leading_space = rest[0] == b' ' && rest.len() > 1 && is_word_byte(rest[1]);
    let start = usize::from(leading_space);
    if is_word_byte(rest[start]) {
        let letters = rest[start..]
            .iter()
            .take(MAX_WORD_PIECE)
            .take_while(|b| is_word_byte(**b))
            .count();
        let id = word_piece_id(leading_space, &rest[start..start + letters]);
        return (start + letters, id);
    }
    let ch = text[at..].chars().next().unwrap_or('\0');
    (ch.len_utf8(), u32::from(ch))
}

/// Token ids of `text` under the rule in the module documentation.
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut ids = Vec::with_capacity(text.len() / 3 + 1);
    let mut at = 0;
    while at < text.len() {
        let (len, id) = next_piece(text, at);
        ids.push(id);
        at += len;
    }
    ids
}

/// Number of tokens in `text`, without allocating.
pub fn count_tokens(text: &str) -> usize {
    let mut count = 0;
    let mut at = 0;
    while at < text.len() {
        at += next_piece(text, at).0;
        count += 1;
    }
    count
}

/// Appends the text of one token id to `out`.
pub fn push_token_text(id: u32, out: &mut String) -> Result<(), TokenizerError> {
    if id < WORD_BASE {
        let ch = char::from_u32(id).ok_or(TokenizerError::OutOfVocabulary(u64::from(id)))?;
        out.push(ch);
        return Ok(());
    }
    if id >= SPECIAL_BASE {
        let special = SPECIAL_TOKENS
            .get((id - SPECIAL_BASE) as usize)
            .ok_or(TokenizerError::OutOfVocabulary(u64::from(id)))?;
        out.push_str(special);
        return Ok(());
    }
    let code = id - WORD_BASE;
    if code & 1 == 1 {
        out.push(' ');
    }
    let mut index = code / 2;
    let mut len = 1;
    while len < MAX_WORD_PIECE && index >= 62u32.pow(len as u32) {
        index -= 62u32.pow(len as u32);
        len += 1;
    }
    let mut letters = [0u8; MAX_WORD_PIECE];
    for slot in letters[..len].iter_mut().rev() {
        *slot = WORD_ALPHABET[(index % 62) as usize];
        index /= 62;
    }
    letters[..len].iter().for_each(|&b| out.push(char::from(b)));
    Ok(())
}

/// The text of a list of token ids (the inverse of [`tokenize`]).
pub fn detokenize(ids: &[u32]) -> Result<String, TokenizerError> {
    let mut text = String::with_capacity(ids.len() * 4);
    for &id in ids {
        push_token_text(id, &mut text)?;
    }
    Ok(text)
}

/// One chat message as the template sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTurn<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// The prompt text for a chat conversation: Qwen2.5's ChatML template with the default system
/// prompt when the first message is not a system message, ending with the generation prompt
/// `<|im_start|>assistant\n`.
pub fn render_chat_prompt(turns: &[ChatTurn<'_>]) -> String {
    let mut prompt = String::new();
    let mut push_turn = |role: &str, content: &str| {
        prompt.push_str("<|im_start|>");
        prompt.push_str(role);
        prompt.push('\n');
        prompt.push_str(content);
        prompt.push_str("<|im_end|>\n");
    };
    if turns.first().is_none_or(|turn| turn.role != "system") {
        push_turn("system", DEFAULT_SYSTEM_PROMPT);
    }
    for turn in turns {
        push_turn(turn.role, turn.content);
    }
    prompt.push_str("<|im_start|>assistant\n");
    prompt
}

/// Short English words the simulator "generates"; each is emitted with a leading space, so every
/// generated token is exactly one word piece and the text re-tokenizes to the same count.
const GENERATED_WORDS: [&str; 64] = [
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "was", "on", "are", "as", "with",
    "be", "at", "one", "have", "this", "from", "or", "had", "by", "not", "word", "but", "what",
    "some", "we", "can", "out", "all", "were", "when", "your", "said", "there", "use", "an",
    "each", "which", "she", "do", "how", "their", "if", "will", "up", "many", "then", "them", "so",
    "make", "like", "him", "into", "time", "has", "look", "two", "more", "go", "see", "way",
];

/// The generated pieces (" word") and their ids, built once.
static GENERATED_PIECES: LazyLock<Vec<(String, u32)>> = LazyLock::new(|| {
    GENERATED_WORDS
        .iter()
        .map(|word| {
            let word = &word[..word.len().min(MAX_WORD_PIECE)];
            (format!(" {word}"), word_piece_id(true, word.as_bytes()))
        })
        .collect()
});

/// SplitMix64 of (seed, position): a fixed, well-mixed function, so every process agrees.
pub fn mix_seed(seed: u64, position: u64) -> u64 {
    let mut z = seed ^ position.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn generated_piece(seed: u64, index: usize) -> &'static (String, u32) {
    let pieces = &*GENERATED_PIECES;
    &pieces[(mix_seed(seed, index as u64) % pieces.len() as u64) as usize]
}

/// The id of the `index`-th generated token of a request whose output seed is `seed`.
pub fn generated_token_id(seed: u64, index: usize) -> u32 {
    generated_piece(seed, index).1
}

/// The text (a space and a short word) of the `index`-th generated token.
pub fn generated_token_text(seed: u64, index: usize) -> &'static str {
    &generated_piece(seed, index).0
}

/// A prompt of exactly `tokens` tokens whose content depends on `seed`: space-separated
/// four-letter words, each one token. Two different seeds share no leading token (with
/// overwhelming probability), so such prompts share no prefix-cache blocks.
pub fn prompt_with_exact_tokens(tokens: usize, seed: u64) -> String {
    let mut prompt = String::with_capacity(tokens * 5);
    for index in 0..tokens {
        let mut value = mix_seed(seed, index as u64);
        prompt.push(' ');
        for _ in 0..MAX_WORD_PIECE {
            prompt.push(char::from(WORD_ALPHABET[36 + (value % 26) as usize]));
            value /= 26;
        }
    }
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn words_split_into_pieces_of_four() {
        let ids = tokenize("Hello, wonderful world!\n");
        let pieces: Vec<String> = ids.iter().map(|&id| detokenize(&[id]).unwrap()).collect();
        assert_eq!(
            pieces,
            [
                "Hell", "o", ",", " wond", "erfu", "l", " worl", "d", "!", "\n"
            ]
        );
    }

    #[test]
    fn specials_are_single_tokens() {
        assert_eq!(count_tokens("<|im_start|>user\nhi<|im_end|>"), 5);
        assert_eq!(tokenize("<|im_end|>"), vec![SPECIAL_BASE + 2]);
    }

    #[test]
    fn lone_space_and_unicode_are_single_tokens() {
        assert_eq!(count_tokens("a  b"), 3); // "a", " ", " b"
        assert_eq!(count_tokens("日本"), 2);
    }

    #[test]
    fn id_ranges_do_not_overlap() {
        assert_eq!(word_piece_id(false, b"0"), WORD_BASE);
        assert_eq!(word_piece_id(true, b"zzzz"), SPECIAL_BASE - 1);
        assert_eq!(
            detokenize(&[SPECIAL_BASE - 1]).unwrap(),
            " zzzz".to_string()
        );
        assert!(detokenize(&[VOCAB_SIZE]).is_err());
    }

    #[test]
    fn generated_text_retokenizes_to_the_same_count() {
        let text: String = (0..500).map(|i| generated_token_text(7, i)).collect();
        let ids: Vec<u32> = (0..500).map(|i| generated_token_id(7, i)).collect();
        assert_eq!(tokenize(&text), ids);
    }

    #[test]
    fn chat_template_adds_the_default_system_prompt() {
        let prompt = render_chat_prompt(&[ChatTurn {
            role: "user",
            content: "hi",
        }]);
        assert!(prompt.starts_with("<|im_start|>system\nYou are Qwen"));
        assert!(prompt.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"));
    }

    #[test]
    fn exact_prompts_have_the_requested_length() {
        for n in [0, 1, 10, 1550] {
            assert_eq!(count_tokens(&prompt_with_exact_tokens(n, 3)), n);
        }
    }

    proptest! {
        #[test]
        fn detokenize_inverts_tokenize(text in "\\PC{0,60}") {
            let ids = tokenize(&text);
            prop_assert_eq!(detokenize(&ids).unwrap(), text.clone());
            prop_assert_eq!(count_tokens(&text), ids.len());
        }

        #[test]
        fn any_prefix_of_ids_round_trips(text in "[ a-zA-Z0-9,.<|>_\n]{0,80}", cut in 0usize..80) {
            let ids = tokenize(&text);
            let prefix = &ids[..cut.min(ids.len())];
            prop_assert_eq!(tokenize(&detokenize(prefix).unwrap()), prefix.to_vec());
        }
    }
}
