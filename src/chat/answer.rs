//! A non-streamed answer from a provider: what the gateway reads of it (the assistant's
//! content and the token usage), and the assistant's turn that goes into a session.

use serde::Deserialize;
use serde_json::Value;

use crate::state::session::Message;

/// Token usage as a provider reports it (`usage` of an answer or of a stream's last chunk).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
pub struct PromptDetails {
    /// Prompt tokens read from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

impl Usage {
    /// Takes what `other` reports, keeping what it leaves out.
    pub fn merge(&mut self, other: &Usage) {
        self.prompt_tokens = other.prompt_tokens.or(self.prompt_tokens);
        self.completion_tokens = other.completion_tokens.or(self.completion_tokens);
        if other.prompt_tokens_details.is_some() {
            self.prompt_tokens_details = other.prompt_tokens_details.clone();
        }
    }

    /// Prompt tokens read from the cache, 0 when not reported.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
    }
}

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
    let raw: Raw = serde_json::from_slice(body).map_err(|e| not_an_answer(body, &e))?;
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
    let reasoning = message
        .as_ref()
        .and_then(|m| reasoning_text(&m.reasoning_content, &m.reasoning))
        .unwrap_or("")
        .to_string();
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
    /// The assistant's turn for the session: the content as it came; with tool calls, its
    /// text followed by a line `[tool call NAME(ARGUMENTS)]` per call, as a stream's turn.
    pub fn assistant(&self) -> Message {
        if self.tool_calls.is_empty() {
            return assistant_message(self.content.clone());
        }
        let calls = self
            .tool_calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()));
        assistant_message(Value::String(turn_text(content_text(&self.content), calls)))
    }
}

/// A session turn's text: `text`, then a line `[tool call NAME(ARGUMENTS)]` per call (session
/// files hold role and content only).
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
    Message {
        role: "assistant".to_string(),
        content,
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
    use serde_json::json;

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
        assert_eq!(
            calls.assistant().content,
            json!("[tool call f({\"x\":1})]\n[tool call g({\"y\":2})]\n[tool call ()]"),
            "the calls kept in the session turn"
        );
        let both = parse_answer(
            br#"{"choices":[{"message":{"content":[{"type":"text","text":"Checking"}],
            "tool_calls":[{"id":"c","function":{"name":"w","arguments":"{}"}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            both.assistant().content,
            json!("Checking\n[tool call w({})]")
        );
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
