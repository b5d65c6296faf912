//! A non-streamed answer from a provider: what the gateway reads of it (the assistant's
//! content and the token usage), and the assistant's turn that goes into a session.

use serde_json::Value;

use crate::state::session::Message;

/// What the gateway reads from a non-streamed upstream answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Answer {
    /// The assistant message's content (string, parts, or null with tool calls).
    pub content: Value,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// Reads an upstream 2xx body: it must be a JSON object with a `choices` array; anything else
/// is a bad answer (`Err` with a short description).
pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        choices: Vec<Choice>,
        #[serde(default)]
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        #[serde(default)]
        message: Option<Msg>,
    }
    #[derive(serde::Deserialize)]
    struct Msg {
        #[serde(default)]
        content: Value,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| {
        let kind = if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
            "not a chat completion"
        } else {
            "not JSON"
        };
        format!("answer is {kind}: {e}")
    })?;
    let content = raw
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message)
        .map(|m| m.content);
    Ok(Answer {
        content: content.unwrap_or(Value::Null),
        prompt_tokens: raw.usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: raw.usage.as_ref().and_then(|u| u.completion_tokens),
    })
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
            (a.content, a.prompt_tokens, a.completion_tokens),
            (json!("Hi"), Some(9), Some(2))
        );
        let tools = parse_answer(
            br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[]}}]}"#,
        )
        .unwrap();
        assert_eq!(tools.content, Value::Null);
        assert_eq!(assistant_message(tools.content).content, json!(""));
        assert!(parse_answer(b"not json").unwrap_err().contains("not JSON"));
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
