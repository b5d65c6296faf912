//! A non-streamed answer from a provider: what the gateway reads of it (the assistant's
//! content and the token usage), and the assistant's turn that goes into a session.

use serde::Deserialize;
use serde_json::Value;

use super::parts::{Parts, holds_thinking};
pub use super::usage::Usage;
use crate::state::session::Message;

/// One tool call of an answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them (JSON text, not always valid).
    pub arguments: String,
}

impl ToolCall {
    /// `{"id", "type": "function", "function": {"name", "arguments"}}`, read leniently:
    /// arguments sent as an object instead of JSON text are turned into text.
    fn read(call: &Value) -> ToolCall {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        ToolCall {
            id: text(&call["id"]),
            name: text(&call["function"]["name"]),
            arguments: text(&call["function"]["arguments"]),
        }
    }
}

/// What the gateway reads from a non-streamed upstream answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Answer {
    /// The assistant message's content (string, parts, or null with tool calls).
    pub content: Value,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    /// The model's reasoning, when the provider sent it apart (empty otherwise).
    pub reasoning: String,
    /// The model's refusal (OpenAI's `message.refusal`; empty when it did not refuse).
    pub refusal: String,
}

/// Reads an upstream 2xx body: it must be a JSON object with a `choices` array; anything else
/// is a bad answer (`Err` with a short description).
pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    #[derive(Deserialize)]
    struct Raw {
        choices: Vec<Choice>,
        #[serde(default)]
        usage: Option<Usage>,
    }
    // Everything past `choices` is read leniently (values of any type): an odd field must
    // not turn a good answer into a "bad answer" that is retried and billed again.
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        index: Value,
        #[serde(default)]
        message: Option<Msg>,
        #[serde(default)]
        finish_reason: Value,
    }
    #[derive(Deserialize)]
    struct Msg {
        #[serde(default)]
        content: Value,
        #[serde(default)]
        tool_calls: Value,
        #[serde(default)]
        reasoning_content: Value,
        #[serde(default)]
        reasoning: Value,
        #[serde(default)]
        refusal: Value,
    }
    let raw: Raw = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(e) => {
            let fixed = without_lone_surrogates(body).ok_or_else(|| not_an_answer(body, &e))?;
            serde_json::from_slice(&fixed).map_err(|_| not_an_answer(body, &e))?
        }
    };
    // The first choice (`index` 0 where the provider numbers them; with `n` > 1 they need
    // not come in order). None at all is no answer, not an empty one.
    if raw.choices.is_empty() {
        return Err("answer has no choices".to_string());
    }
    let first = raw
        .choices
        .iter()
        .position(|c| c.index.as_u64() == Some(0))
        .unwrap_or(0);
    let choice = raw.choices.into_iter().nth(first);
    let finish_reason = choice
        .as_ref()
        .and_then(|c| c.finish_reason.as_str())
        .map(str::to_string);
    let message = choice.and_then(|c| c.message);
    // Reasoning sent apart, else as `thinking` parts of a content list (as a stream's).
    let reasoning = match message.as_ref() {
        Some(m) => match reasoning_text(&m.reasoning_content, &m.reasoning) {
            Some(r) => r.to_string(),
            None => m
                .content
                .as_array()
                .map_or_else(String::new, |parts| Parts::read(parts).thinking),
        },
        None => String::new(),
    };
    let refusal = message
        .as_ref()
        .and_then(|m| m.refusal.as_str())
        .unwrap_or("")
        .to_string();
    let (content, calls) =
        message.map_or((Value::Null, Value::Null), |m| (m.content, m.tool_calls));
    let tool_calls = match calls {
        Value::Array(calls) => calls.iter().map(ToolCall::read).collect(),
        _ => Vec::new(),
    };
    Ok(Answer {
        content,
        tool_calls,
        finish_reason,
        usage: raw.usage.unwrap_or_default(),
        reasoning,
        refusal,
    })
}

/// Reads only what the books need of an upstream 2xx body — its usage — checking, as
/// [`parse_answer`] does, that it is a chat completion with a choice: for an answer that
/// goes to the client as it came, with no session turn to keep. Much cheaper than the
/// whole read (no content is copied out).
pub fn parse_usage(body: &[u8]) -> Result<Answer, String> {
    #[derive(Deserialize)]
    struct Raw {
        choices: Vec<serde::de::IgnoredAny>,
        #[serde(default)]
        usage: Option<Usage>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| not_an_answer(body, &e))?;
    if raw.choices.is_empty() {
        return Err("answer has no choices".to_string());
    }
    Ok(Answer {
        usage: raw.usage.unwrap_or_default(),
        ..Answer::default()
    })
}

/// `text` read as JSON; when that fails, read again with each lone UTF-16 surrogate escape
/// made U+FFFD ([`without_lone_surrogates`]): JSON's grammar allows them, a Rust string
/// cannot hold one. Nothing is copied on the usual path. Text broken otherwise too gets the
/// error of what is broken (the escape replaced keeps its length, so the position holds).
pub(crate) fn lenient_json<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, serde_json::Error> {
    serde_json::from_str(text).or_else(|e| match without_lone_surrogates(text.as_bytes()) {
        Some(fixed) => serde_json::from_slice(&fixed),
        None => Err(e),
    })
}

/// `json` with each `\uXXXX` escape of a lone UTF-16 surrogate (half of a pair without the
/// other half) made `\ufffd`, the replacement character; `None` when it has none. JSON's
/// grammar allows them, but a Rust string cannot hold one, so serde refuses the text: a
/// model that cut an emoji in half would lose its whole answer. Backslashes occur only
/// inside strings in JSON, so no string tracking is needed.
pub(crate) fn without_lone_surrogates(json: &[u8]) -> Option<Vec<u8>> {
    let unit = |at: usize| -> Option<u16> {
        let hex = json.get(at..at + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    };
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(u) = unit(i) else {
            // Another escape (`\\`, `\"`, ...): its two bytes together.
            i += 2;
            continue;
        };
        let paired = (0xD800..0xDC00).contains(&u)
            && unit(i + 6).is_some_and(|low| (0xDC00..0xE000).contains(&low));
        if paired {
            i += 12;
        } else if (0xD800..0xE000).contains(&u) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(json.len()));
            o.extend_from_slice(&json[copied..i]);
            o.extend_from_slice(b"\\ufffd");
            i += 6;
            copied = i;
        } else {
            i += 6;
        }
    }
    let mut out = out?;
    out.extend_from_slice(&json[copied..]);
    Some(out)
}

/// Why a body is not a chat completion: not JSON at all, or JSON of another shape.
fn not_an_answer(body: &[u8], e: &serde_json::Error) -> String {
    let kind = if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        "not a chat completion"
    } else {
        "not JSON"
    };
    format!("answer is {kind}: {e}")
}

/// The reasoning text of a message or delta: `reasoning_content`, else `reasoning`, when a
/// non-empty string.
pub(crate) fn reasoning_text<'a>(
    reasoning_content: &'a Value,
    reasoning: &'a Value,
) -> Option<&'a str> {
    [reasoning_content, reasoning]
        .into_iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
}

impl Answer {
    /// The assistant's text: the content string, or the text of its text parts (see
    /// [`Parts`]; `thinking` parts are its [`Answer::reasoning`]).
    pub fn text(&self) -> String {
        match &self.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => Parts::read(parts).text,
            _ => String::new(),
        }
    }

    /// The content of the assistant's turn for the session: as it came, but as its text
    /// when it holds `thinking` parts — the reasoning is not kept (no more than a
    /// `reasoning_content`), and parts of Mistral's own shape could be refused by the
    /// provider the session goes to next.
    pub fn turn_content(&self) -> Value {
        if holds_thinking(&self.content) {
            Value::String(self.text())
        } else {
            self.content.clone()
        }
    }

    /// The assistant's turn for the session: the content as it came (see
    /// [`Answer::turn_content`]); with tool calls, its text and the calls (sent upstream
    /// again as calls, or as text lines, see `chat::upstream_body`).
    pub fn assistant(&self) -> Message {
        if self.tool_calls.is_empty() {
            return assistant_message(self.turn_content());
        }
        let calls = self
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()));
        assistant_with_calls(self.text(), calls)
    }
}

/// A session turn's text: `text`, then a line `[tool call NAME(ARGUMENTS)]` per call (how
/// a turn with tool calls goes upstream when it cannot go as calls).
pub(crate) fn turn_text<'a>(
    mut text: String,
    calls: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    for (name, args) in calls {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("[tool call {name}({args})]"));
    }
    text
}

/// The assistant's side of a session turn.
pub fn assistant_message(content: Value) -> Message {
    let content = if content.is_null() {
        Value::String(String::new())
    } else {
        content
    };
    Message::new("assistant", content)
}

/// The assistant's side of a session turn that called tools: its text and each call's
/// `(id, name, arguments)`, kept as `tool_calls` in the OpenAI shape.
pub fn assistant_with_calls<'a>(
    text: String,
    calls: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) -> Message {
    let calls: Vec<Value> = calls
        .into_iter()
        .map(|(id, name, arguments)| {
            serde_json::json!({"id": id, "type": "function",
                "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    Message {
        tool_calls: Some(Value::Array(calls)),
        ..Message::new("assistant", Value::String(text))
    }
}

/// The assistant's text of a non-streamed answer's content: a string as it is, the `text`
/// parts of an array joined, nothing for `null` (an answer made only of tool calls).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::usage::MAX_PLAUSIBLE_TOKENS;
    use serde_json::json;

    fn usage_of(usage: Value) -> Usage {
        let body = json!({"choices": [{"message": {"content": "hi"}}], "usage": usage});
        let bytes = serde_json::to_vec(&body).unwrap();
        let whole = parse_answer(&bytes).unwrap_or_else(|e| panic!("{usage}: {e}"));
        let quick = parse_usage(&bytes).unwrap_or_else(|e| panic!("{usage}: {e}"));
        assert_eq!(whole.usage, quick.usage, "{usage}");
        assert_eq!(whole.content, "hi");
        whole.usage
    }

    fn counts(u: &Usage) -> (Option<u64>, Option<u64>, u64) {
        (u.prompt_tokens, u.completion_tokens, u.cached_tokens())
    }

    #[test]
    fn half_an_emoji_does_not_cost_the_answer() {
        let fix =
            |s: &str| without_lone_surrogates(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(fix(r#""a\ud800b""#).as_deref(), Some(r#""a\ufffdb""#));
        assert_eq!(
            fix(r#""\udc00\ud83d""#).as_deref(),
            Some(r#""\ufffd\ufffd""#)
        );
        // A whole pair, other escapes and an escaped backslash before a `u` stay.
        assert_eq!(fix(r#""\ud83d\ude00 \u00e9 \\ud800 \" \n""#), None);
        assert_eq!(
            fix(r#""\ud83d\u0041""#).as_deref(),
            Some(r#""\ufffd\u0041""#)
        );
        assert_eq!(fix("\\ud8"), None, "cut short: left to the parser");
        let body =
            br#"{"choices":[{"message":{"content":"a\ud800b"}}],"usage":{"prompt_tokens":1}}"#;
        let answer = parse_answer(body).unwrap();
        assert_eq!(answer.content, "a\u{fffd}b");
        assert_eq!(answer.usage.prompt_tokens, Some(1));
        let pair = br#"{"choices":[{"message":{"content":"\ud83d\ude00"}}]}"#;
        assert_eq!(parse_answer(pair).unwrap().content, "\u{1f600}");
        // Broken otherwise, still not an answer.
        assert!(parse_answer(br#"{"choices":[{"message":{"content":"\ud800}}]}"#).is_err());
    }

    #[test]
    fn odd_usage_never_loses_the_answer() {
        let ok = json!({"prompt_tokens": 9, "completion_tokens": 2,
                        "prompt_tokens_details": {"cached_tokens": 4}});
        assert_eq!(counts(&usage_of(ok)), (Some(9), Some(2), 4));
        // o3 has been seen to send a negative count; others floats or strings.
        let odd = json!({"prompt_tokens": 9.0, "completion_tokens": -35});
        assert_eq!(counts(&usage_of(odd)), (Some(9), None, 0));
        let strings = json!({"prompt_tokens": "12", "completion_tokens": "many"});
        assert_eq!(counts(&usage_of(strings)), (Some(12), None, 0));
        let shapes = json!({"prompt_tokens": [1, [2]], "completion_tokens": {"n": 1},
                            "prompt_tokens_details": "none", "total_tokens": true});
        assert_eq!(counts(&usage_of(shapes)), (None, None, 0));
        // Counts no call can reach are a provider's bug: not reported, never booked (they
        // would saturate the totals for good).
        let huge = json!({"prompt_tokens": 1e30, "completion_tokens": u64::MAX,
                          "prompt_tokens_details": {"cached_tokens": "99999999999"}});
        assert_eq!(counts(&usage_of(huge)), (None, None, 0));
        let bound = MAX_PLAUSIBLE_TOKENS;
        let edge = json!({"prompt_tokens": bound, "completion_tokens": bound + 1});
        assert_eq!(counts(&usage_of(edge)), (Some(bound), None, 0));
        let edge = json!({"prompt_tokens": (bound + 1) as f64, "completion_tokens": "1000000001"});
        assert_eq!(counts(&usage_of(edge)), (None, None, 0));
        // More cached than prompt tokens: all of the prompt was cached.
        let over = json!({"prompt_tokens": 20, "prompt_tokens_details": {"cached_tokens": 25}});
        assert_eq!(counts(&usage_of(over)), (Some(20), None, 20));
        let kimi_over = json!({"prompt_tokens": 20, "cached_tokens": 25});
        assert_eq!(counts(&usage_of(kimi_over)), (Some(20), None, 20));
        // Without a prompt count, the cached one is all there is.
        let alone = json!({"prompt_tokens_details": {"cached_tokens": 25}});
        assert_eq!(counts(&usage_of(alone)), (None, None, 25));
        for not_an_object in [json!("9"), json!([9]), json!(9), json!(true), Value::Null] {
            assert_eq!(usage_of(not_an_object), Usage::default());
        }
        // Moonshot: cached tokens beside the counts.
        let kimi = json!({"prompt_tokens": 20, "completion_tokens": 3, "cached_tokens": 16});
        assert_eq!(counts(&usage_of(kimi)), (Some(20), Some(3), 16));
        // Broken JSON is still not an answer.
        assert!(parse_usage(br#"{"choices":[{}],"usage":{"prompt_tokens":}"#).is_err());
    }

    #[test]
    fn answers() {
        let a = parse_answer(br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#).unwrap();
        assert_eq!(
            (a.content, a.usage.prompt_tokens, a.usage.completion_tokens),
            (json!("Hi"), Some(9), Some(2))
        );
        assert_eq!(a.finish_reason.as_deref(), Some("stop"));
        assert_eq!((a.reasoning.as_str(), a.refusal.as_str()), ("", ""));
        let refused = parse_answer(
            br#"{"choices":[{"message":{"content":null,"refusal":"I can't."},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert_eq!(refused.refusal, "I can't.");
        for message in [
            r#"{"content":"Hi","reasoning_content":"Because."}"#,
            r#"{"content":"Hi","reasoning":"Because."}"#,
            r#"{"content":"Hi","reasoning_content":"","reasoning":"Because."}"#,
            r#"{"content":"Hi","reasoning_content":{"odd":1},"reasoning":"Because."}"#,
        ] {
            let body = format!(r#"{{"choices":[{{"message":{message}}}]}}"#);
            let a = parse_answer(body.as_bytes()).unwrap();
            assert_eq!(
                (a.reasoning.as_str(), a.content),
                ("Because.", json!("Hi")),
                "{message}"
            );
        }
        let tools = parse_answer(
            br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[]}}]}"#,
        )
        .unwrap();
        assert_eq!(tools.content, Value::Null);
        let calls = parse_answer(br#"{"choices":[{"finish_reason":"tool_calls","message":{"content":null,"tool_calls":[
            {"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}},
            {"id":"call_2","function":{"name":"g","arguments":{"y":2}}}, 7]}}],"usage":{"prompt_tokens":3,
            "prompt_tokens_details":{"cached_tokens":2}}}"#).unwrap();
        assert_eq!(calls.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(calls.tool_calls.len(), 3);
        assert_eq!(
            (
                calls.tool_calls[0].id.as_str(),
                calls.tool_calls[0].name.as_str()
            ),
            ("call_1", "f")
        );
        assert_eq!(calls.tool_calls[0].arguments, r#"{"x":1}"#);
        assert_eq!(
            calls.tool_calls[1].arguments, r#"{"y":2}"#,
            "an object becomes text"
        );
        assert_eq!(
            calls.tool_calls[2],
            ToolCall::default(),
            "junk is read as empty"
        );
        assert_eq!(calls.usage.cached_tokens(), 2);
        let odd = parse_answer(
            br#"{"choices":[{"finish_reason":5,"message":{"content":"x","tool_calls":"no"}}]}"#,
        )
        .unwrap();
        assert_eq!((odd.finish_reason, odd.tool_calls.len()), (None, 0));
        assert_eq!(assistant_message(tools.content.clone()).content, json!(""));
        assert_eq!(tools.assistant().content, json!(""));
        let turn = calls.assistant();
        assert_eq!(turn.content, json!(""));
        assert_eq!(
            turn.tool_calls,
            Some(json!([
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{\"y\":2}"}},
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            ])),
            "the calls kept in the session turn"
        );
        let both = parse_answer(
            br#"{"choices":[{"message":{"content":[{"type":"text","text":"Checking"}],
            "tool_calls":[{"id":"c","function":{"name":"w","arguments":"{}"}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(both.assistant().content, json!("Checking"));
        assert_eq!(both.assistant().call_ids(), ["c"]);
        let parts =
            parse_answer(br#"{"choices":[{"message":{"content":[{"type":"text","text":"x"}]}}]}"#)
                .unwrap();
        assert_eq!(
            parts.assistant().content,
            json!([{"type":"text","text":"x"}]),
            "as it came"
        );
        assert!(parse_answer(b"not json").unwrap_err().contains("not JSON"));
        assert!(
            parse_answer(br#"{"choices":[]}"#)
                .unwrap_err()
                .contains("no choices")
        );
        let two = parse_answer(
            br#"{"choices":[{"index":1,"message":{"content":"second"}},
            {"index":0,"message":{"content":"first"}}]}"#,
        )
        .unwrap();
        assert_eq!(two.content, json!("first"), "index 0, wherever it is");
        assert!(
            parse_answer(b"{\"error\":{}}")
                .unwrap_err()
                .contains("not a chat completion")
        );
        assert!(parse_answer(b"").is_err());
    }

    #[test]
    fn content_as_a_list_of_parts_is_text_and_reasoning() {
        let a = parse_answer(
            br#"{"choices":[{"message":{"content":[{"type":"thinking","thinking":[{"type":"text","text":"hmm"}]},
            {"type":"text","text":"Hello world"}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            (a.text().as_str(), a.reasoning.as_str()),
            ("Hello world", "hmm")
        );
        assert_eq!(
            a.assistant().content,
            json!("Hello world"),
            "the thinking not kept"
        );
        // Reasoning sent apart wins; text parts alone are kept as they came.
        let a = parse_answer(
            br#"{"choices":[{"message":{"reasoning_content":"r","content":[{"type":"thinking","thinking":"t"},{"type":"text","text":"x"}]}}]}"#,
        )
        .unwrap();
        assert_eq!((a.text().as_str(), a.reasoning.as_str()), ("x", "r"));
        let a = parse_answer(
            br#"{"choices":[{"message":{"content":[{"type":"text","text":"x"}],
            "tool_calls":[{"id":"c","function":{"name":"w","arguments":"{}"}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(a.assistant().content, json!("x"));
    }

    #[test]
    fn content_text_of_answers() {
        assert_eq!(content_text(&json!("Hi")), "Hi");
        assert_eq!(
            content_text(
                &json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}])
            ),
            "ab"
        );
        assert_eq!(content_text(&Value::Null), "");
    }
}
