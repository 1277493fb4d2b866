//! The fake model: what token `i` is, how prompts are counted, and the per-request `sim`
//! overrides every dialect accepts.
//!
//! Output is fully deterministic so tests can assert exact text and counts: token `i`
//! (0-based) is `"tok{i} "`, and a generation of `n` tokens is tokens `0..n` concatenated.
//! Prompt tokens are whitespace-separated words (see [`WordCount`]), not a real tokenizer.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Largest token limit a request may ask for; more is refused with 400 so one request cannot
/// make the sim build an unbounded reply.
pub const MAX_TOKENS_LIMIT: u32 = 1 << 20;

/// The text of token `i` of every generation.
pub fn token_text(i: u32) -> String {
    format!("tok{i} ")
}

/// The full text of a generation of `n` tokens: `token_text(0) + ... + token_text(n - 1)`.
pub fn generated_text(n: u32) -> String {
    // "tok" + up to 7 digits + " " for every token below MAX_TOKENS_LIMIT.
    let mut s = String::with_capacity(n as usize * 8);
    for i in 0..n {
        // Writing to a String cannot fail.
        let _ = write!(s, "tok{i} ");
    }
    s
}

/// Prompt size in "tokens": the number of whitespace-separated words.
///
/// Deserializes from any prompt shape without keeping it: a string counts its words; a number
/// counts as one token id; an array sums its elements (so `["a b", "c"]` is 3 and `[1, 2, 3]`
/// is 3); an object sums its `content` and `text` fields (so OpenAI `messages`, including
/// multi-part content, count the words of every message). Anything else counts 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WordCount(pub u64);

/// The prompt words in `s`.
pub fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

impl<'de> Deserialize<'de> for WordCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WordCountVisitor)
    }
}

struct WordCountVisitor;

/// Object keys whose values hold prompt text.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum TextKey {
    Content,
    Text,
    #[serde(other)]
    Other,
}

impl<'de> Visitor<'de> for WordCountVisitor {
    type Value = WordCount;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a prompt: text, token ids, or messages")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<WordCount, E> {
        Ok(WordCount(count_words(v)))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<WordCount, E> {
        Ok(WordCount(1))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<WordCount, E> {
        Ok(WordCount(1))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<WordCount, E> {
        Ok(WordCount(1))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<WordCount, E> {
        Ok(WordCount(0))
    }

    fn visit_unit<E: de::Error>(self) -> Result<WordCount, E> {
        Ok(WordCount(0))
    }

    fn visit_none<E: de::Error>(self) -> Result<WordCount, E> {
        Ok(WordCount(0))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<WordCount, D::Error> {
        WordCount::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WordCount, A::Error> {
        let mut total = 0;
        while let Some(WordCount(n)) = seq.next_element()? {
            total += n;
        }
        Ok(WordCount(total))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WordCount, A::Error> {
        let mut total = 0;
        while let Some(key) = map.next_key::<TextKey>()? {
            match key {
                TextKey::Content | TextKey::Text => total += map.next_value::<WordCount>()?.0,
                TextKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(WordCount(total))
    }
}

/// Per-request failure and latency overrides, read from an optional `"sim"` object in the
/// request body (unknown fields ignored), so one server can serve a different failure mode to
/// each test.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SimOverrides {
    /// Stall this long before the first byte (replaces `--stall-ms`).
    pub stall_ms: Option<u64>,
    /// Cut the connection after this many tokens (replaces `--disconnect-after`).
    pub disconnect_after: Option<u32>,
    /// Answer with this status (and the dialect's JSON error body) instead of generating, when
    /// it is not a 2xx.
    pub status: Option<u16>,
    /// Delay per token (replaces the live `token_delay`).
    pub token_delay_ms: Option<u64>,
    /// Prefill time (replaces the live `ttft`).
    pub ttft_ms: Option<u64>,
}

impl SimOverrides {
    pub(crate) fn stall(&self) -> Option<Duration> {
        self.stall_ms.map(Duration::from_millis)
    }
}

/// Why a token limit was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LimitError {
    #[error("`{field}` must not be negative, got {value}")]
    Negative { field: &'static str, value: i64 },
    #[error("`{field}` = {value} exceeds the sim's limit of {MAX_TOKENS_LIMIT}")]
    TooLarge { field: &'static str, value: i64 },
}

/// Resolves a request's token limit: absent means `default`.
pub(crate) fn token_limit(
    field: &'static str,
    value: Option<i64>,
    default: u32,
) -> Result<u32, LimitError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match u32::try_from(value) {
        Err(_) if value < 0 => Err(LimitError::Negative { field, value }),
        Ok(n) if n <= MAX_TOKENS_LIMIT => Ok(n),
        _ => Err(LimitError::TooLarge { field, value }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(json: &str) -> u64 {
        serde_json::from_str::<WordCount>(json).unwrap().0
    }

    #[test]
    fn prompts_count_words_in_any_shape() {
        assert_eq!(words(r#""the quick  brown\nfox""#), 4);
        assert_eq!(words(r#"["a b", "c"]"#), 3);
        assert_eq!(words("[1, 2, 3]"), 3);
        assert_eq!(words("null"), 0);
        assert_eq!(
            words(
                r#"[{"role":"system","content":"be brief"},
                    {"role":"user","content":[{"type":"text","text":"hi there you"},
                                               {"type":"image_url","image_url":{"url":"x"}}]}]"#
            ),
            5
        );
    }

    #[test]
    fn generated_text_is_the_concatenated_tokens() {
        assert_eq!(generated_text(0), "");
        assert_eq!(generated_text(3), "tok0 tok1 tok2 ");
        let joined: String = (0..12).map(token_text).collect();
        assert_eq!(generated_text(12), joined);
        assert_eq!(count_words(&generated_text(12)), 12);
    }

    #[test]
    fn token_limits() {
        assert_eq!(token_limit("max_tokens", None, 16), Ok(16));
        assert_eq!(token_limit("max_tokens", Some(0), 16), Ok(0));
        assert_eq!(token_limit("max_tokens", Some(5), 16), Ok(5));
        assert!(token_limit("max_tokens", Some(-1), 16).is_err());
        assert!(token_limit("max_tokens", Some(i64::MAX), 16).is_err());
    }
}
