//! A chat completion turned into an Anthropic Messages response: the text first (one `text`
//! block, when there is any), then one `tool_use` block per tool call with its arguments
//! parsed into an `input` object (`{}` when the model wrote something that does not parse),
//! `stop_reason` from `finish_reason`, and the usage with cached prompt tokens apart.

use serde_json::{Value, json};

use crate::chat::answer::{Answer, Usage, content_text};
use crate::util::random_id;

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`. `had_tools`: the answer holds
/// tool calls (some providers say `stop` with them).
pub fn stop_reason(finish_reason: Option<&str>, had_tools: bool) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ if had_tools => "tool_use",
        _ => "end_turn",
    }
}

/// `usage` in Anthropic's terms: input without the cached part, which is reported apart.
pub fn usage(u: &Usage) -> Value {
    let cached = u.cached_tokens();
    json!({
        "input_tokens": u.prompt_tokens.unwrap_or(0).saturating_sub(cached),
        "output_tokens": u.completion_tokens.unwrap_or(0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    })
}

/// A tool call's arguments as an `input` object.
pub fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// A tool call id the client can send back: the provider's, or a fresh one.
pub fn tool_id(id: &str) -> String {
    if id.is_empty() {
        random_id("toolu_")
    } else {
        id.to_string()
    }
}

/// The whole Messages response for `model` (the name the client asked for).
pub fn message(answer: &Answer, model: &str) -> Value {
    let mut content = Vec::new();
    let text = content_text(&answer.content);
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in &answer.tool_calls {
        content.push(
            json!({"type": "tool_use", "id": tool_id(&call.id), "name": call.name,
            "input": tool_input(&call.arguments)}),
        );
    }
    json!({
        "id": random_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(answer.finish_reason.as_deref(), !answer.tool_calls.is_empty()),
        "stop_sequence": null,
        "usage": usage(&answer.usage),
    })
}
