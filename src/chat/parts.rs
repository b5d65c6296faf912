//! An answer's `content` given as a list of parts instead of a string. Mistral's reasoning
//! models (Magistral) answer and stream `"content": [{"type": "text", "text": …}]` and
//! `[{"type": "thinking", "thinking": [{"type": "text", "text": …}]}]`: the text parts are
//! the answer's text, the thinking parts its reasoning, as `reasoning_content` would be.
//! Parts of other types are ignored. One reader serves a stream's deltas ([`Content`]) and
//! a complete answer ([`Parts::read`]), so that the two read an answer alike.

use serde::Deserialize;
use serde::de::{SeqAccess, Visitor};
use serde_json::Value;

use super::halves::Text;

/// The text and the reasoning of a list of parts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parts {
    /// The `text` parts' text, joined.
    pub text: String,
    /// The `thinking` parts' reasoning, joined.
    pub thinking: String,
}

impl Parts {
    /// Reads a list of parts.
    pub fn read<'a>(parts: impl IntoIterator<Item = &'a Value>) -> Parts {
        let mut read = Parts::default();
        for part in parts {
            read.take(part);
        }
        read
    }

    /// Takes in one part: `{"type": "text", "text"}` (a part without a `type` that has a
    /// `text` too), or `{"type": "thinking", "thinking"}`, where `thinking` is a string or
    /// a list of text parts; anything else adds nothing.
    fn take(&mut self, part: &Value) {
        if let Some(text) = part_text(part) {
            self.text.push_str(text);
            return;
        }
        if part.get("type").and_then(Value::as_str) != Some("thinking") {
            return;
        }
        match part.get("thinking") {
            Some(Value::String(s)) => self.thinking.push_str(s),
            Some(Value::Array(inner)) => {
                for text in inner.iter().filter_map(part_text) {
                    self.thinking.push_str(text);
                }
            }
            _ => {}
        }
    }
}

/// The text of a text part.
fn part_text(part: &Value) -> Option<&str> {
    match part.get("type") {
        None => {}
        Some(kind) if kind.as_str() == Some("text") => {}
        Some(_) => return None,
    }
    part.get("text").and_then(Value::as_str)
}

/// Whether a content value is a list of parts holding reasoning (a `thinking` part): the
/// gateway keeps such an answer as its text.
pub fn holds_thinking(content: &Value) -> bool {
    content.as_array().is_some_and(|parts| {
        parts
            .iter()
            .any(|p| p.get("type").and_then(Value::as_str) == Some("thinking"))
    })
}

/// A stream delta's `content`: a string (its [`Text`]), or a list of parts, read as
/// [`Parts`] reads them (their text as the text, with no surrogate half held at its ends).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Content {
    pub text: Text,
    /// The reasoning of its `thinking` parts (empty for a string).
    pub thinking: String,
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
        struct StringOrParts;
        impl<'de> Visitor<'de> for StringOrParts {
            type Value = Content;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of content parts")
            }

            fn visit_str<E>(self, s: &str) -> Result<Content, E> {
                Ok(Content {
                    text: Text::from(s),
                    thinking: String::new(),
                })
            }

            fn visit_bytes<E>(self, b: &[u8]) -> Result<Content, E> {
                Ok(Content {
                    text: Text::from_wtf8(b),
                    thinking: String::new(),
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Parts::default();
                while let Some(part) = seq.next_element::<Value>()? {
                    parts.take(&part);
                }
                Ok(Content {
                    text: Text::from(parts.text.as_str()),
                    thinking: parts.thinking,
                })
            }
        }
        // As bytes, as `Text` reads a string (serde_json gives a string holding a lone
        // surrogate escape as WTF-8 there); serde_json reads a list there too.
        d.deserialize_bytes(StringOrParts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::stream::{Chunk, Gathered};
    use serde_json::json;

    fn content(json: &str) -> Content {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn text_and_thinking_parts_are_told_apart_and_other_parts_ignored() {
        let parts = json!([
            {"type": "thinking", "thinking": [{"type": "text", "text": "hm"}, {"type": "text", "text": "m"}]},
            {"type": "text", "text": "Hello "},
            {"type": "reference", "reference_ids": [1]},
            {"type": "image_url", "text": "not text"},
            {"text": "world"},
            {"type": "thinking", "thinking": " and so"},
            {"type": "thinking", "thinking": 7},
            "junk", 3, null
        ]);
        let read = Parts::read(parts.as_array().unwrap());
        assert_eq!(
            read,
            Parts {
                text: "Hello world".into(),
                thinking: "hmm and so".into()
            }
        );
        assert!(holds_thinking(&parts));
        assert!(!holds_thinking(&json!([{"type": "text", "text": "x"}])));
        assert!(!holds_thinking(&json!("thinking")));
    }

    #[test]
    fn a_delta_content_is_a_string_or_a_list_of_parts() {
        assert_eq!(content(r#""Hi""#).text, Text::from("Hi"));
        let c = content(r#"[{"type":"text","text":"Hello "}]"#);
        assert_eq!((&*c.text, c.thinking.as_str()), ("Hello ", ""));
        let c = content(r#"[{"type":"thinking","thinking":[{"type":"text","text":"hmm"}]}]"#);
        assert_eq!((&*c.text, c.thinking.as_str()), ("", "hmm"));
        assert_eq!(content("[]"), Content::default());
        // Half an emoji in a plain string is still remembered for the next delta.
        let c = content(r#""a\ud83d""#);
        assert_eq!(
            c.text,
            serde_json::from_str::<Text>(r#""a\ud83d""#).unwrap()
        );
        assert!(serde_json::from_str::<Content>("12").is_err());
    }

    #[test]
    fn a_stream_of_parts_is_read_as_text_and_reasoning() {
        // Mistral's Magistral: text parts, thinking parts, then plain strings.
        let chunks = [
            r#"{"choices":[{"delta":{"content":[{"type":"text","text":"Hello "}]}}]}"#,
            r#"{"choices":[{"delta":{"content":[{"type":"thinking","thinking":[{"type":"text","text":"hmm"}]}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"world"}}]}"#,
        ];
        let mut g = Gathered::default();
        let mut seen = Vec::new();
        for payload in chunks {
            let chunk = Chunk::parse(payload).unwrap();
            let delta = chunk.choice().and_then(|c| c.delta.as_ref()).unwrap();
            seen.push((
                chunk.text().to_string(),
                delta.reasoning().map(str::to_string),
            ));
            g.take(&chunk).unwrap();
        }
        assert_eq!(
            seen,
            [
                ("Hello ".to_string(), None),
                (String::new(), Some("hmm".to_string())),
                ("world".to_string(), None)
            ]
        );
        assert_eq!(g.assistant().content, json!("Hello world"));
        // A reasoning sent apart goes first.
        let both = Chunk::parse(
            r#"{"choices":[{"delta":{"reasoning_content":"a","content":[{"type":"thinking","thinking":"b"}]}}]}"#,
        )
        .unwrap();
        let delta = both.choice().and_then(|c| c.delta.as_ref()).unwrap();
        assert_eq!(delta.reasoning(), Some("a"));
    }
}
