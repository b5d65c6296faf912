//! A chat completion turned into an Anthropic Messages response: the model's reasoning first
//! (one `thinking` block, when the client enabled thinking and the provider sent its
//! reasoning apart), the text (one `text` block, when there is any; a refusal is the text),
//! then one `tool_use` block per tool call with its arguments as its `input` object, as the
//! model wrote them (`{}` when they are not a JSON object), `stop_reason` from
//! `finish_reason` (`refusal` for a refusal), and the usage with cached prompt tokens apart.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::chat::answer::{Answer, Usage};
use crate::util::random_id;

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`. `had_tools`: the answer holds
/// tool calls. `tool_use` goes with its `tool_use` blocks only — whatever the provider said
/// (some say `stop` with tool calls; a `tool_calls` or the legacy `function_call` with none
/// would leave a client waiting for a call that is not there): then it is `end_turn`.
pub fn stop_reason(finish_reason: Option<&str>, had_tools: bool) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("content_filter") => "refusal",
        _ if had_tools => "tool_use",
        _ => "end_turn",
    }
}

/// `usage` in Anthropic's terms: input without the parts read from and written to the
/// cache, which are reported apart (an OpenAI `prompt_tokens` holds all three).
pub fn usage(u: &Usage) -> Value {
    let cached = u.cached_tokens();
    let written = u.cache_write_tokens();
    json!({
        "input_tokens": u.prompt_tokens.unwrap_or(0).saturating_sub(cached).saturating_sub(written),
        "output_tokens": u.completion_tokens.unwrap_or(0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    })
}

/// Whether a Messages request enabled extended thinking (`{"type": "enabled", ...}`, or
/// any type but `disabled`): only then do answers carry `thinking` blocks.
pub fn wants_thinking(body: &serde_json::Map<String, Value>) -> bool {
    body.get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t != "disabled")
}

/// A tool call's arguments as an `input` object, as the model wrote them: read into a
/// `Value`, a whole number past 2^64 (a long account number or id) would come out
/// changed, or as a float.
pub fn tool_input(arguments: &str) -> Box<RawValue> {
    let object = arguments.trim_start().starts_with('{');
    object
        .then(|| RawValue::from_string(arguments.trim().to_string()).ok())
        .flatten()
        .unwrap_or_else(empty_input)
}

fn empty_input() -> Box<RawValue> {
    RawValue::from_string("{}".to_string()).expect("an empty object is JSON")
}

/// A tool call id the client can send back: the provider's, or a fresh one.
pub fn tool_id(id: &str) -> String {
    if id.is_empty() {
        random_id("toolu_")
    } else {
        id.to_string()
    }
}

/// A Messages response, written as it is serialized.
#[derive(Serialize)]
pub struct Message {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: String,
    content: Vec<Block>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    usage: Value,
}

/// A content block: a `tool_use` with its `input` as written, or any other.
#[derive(Serialize)]
#[serde(untagged)]
enum Block {
    ToolUse {
        #[serde(rename = "type")]
        kind: &'static str,
        id: String,
        name: String,
        input: Box<RawValue>,
    },
    Other(Value),
}

/// The whole Messages response for `model` (the name the client asked for). `estimate`:
/// the prompt's tokens as the gateway estimated them, the `input_tokens` when the provider
/// reported none (as a stream's `message_start` has them): a 0 there made Claude Code
/// believe the context empty.
pub fn message(answer: &Answer, model: &str, thinking: bool, estimate: u64) -> Message {
    let mut content = Vec::new();
    if thinking && !answer.reasoning.is_empty() {
        // No signature: one would be Anthropic's, over Anthropic's own thinking. A client
        // sending the block back is fine: thinking blocks are dropped on the way in.
        content.push(Block::Other(
            json!({"type": "thinking", "thinking": answer.reasoning, "signature": ""}),
        ));
    }
    let mut text = answer.text();
    if text.is_empty() {
        // A refusal (OpenAI's, with structured outputs) is what the model said.
        text.clone_from(&answer.refusal);
    }
    if !text.is_empty() {
        content.push(Block::Other(json!({"type": "text", "text": text})));
    }
    for call in &answer.tool_calls {
        content.push(Block::ToolUse {
            kind: "tool_use",
            id: tool_id(&call.id),
            name: call.name.clone(),
            input: tool_input(&call.arguments),
        });
    }
    Message {
        id: random_id("msg_"),
        kind: "message",
        role: "assistant",
        model: model.to_string(),
        content,
        stop_reason: if answer.refusal.is_empty() {
            stop_reason(
                answer.finish_reason.as_deref(),
                !answer.tool_calls.is_empty(),
            )
        } else {
            "refusal"
        },
        stop_sequence: None,
        usage: {
            let mut u = usage(&answer.usage);
            if answer.usage.prompt_tokens.is_none() {
                u["input_tokens"] = json!(estimate);
            }
            u
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_reads_and_writes_are_apart_from_the_input() {
        let read = |v: Value| usage(&serde_json::from_value(v).unwrap());
        let u = read(json!({"prompt_tokens": 100, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 30}}));
        assert_eq!(
            u,
            json!({"input_tokens": 50, "output_tokens": 5,
                "cache_creation_input_tokens": 30, "cache_read_input_tokens": 20})
        );
        let u = read(json!({"prompt_tokens": 100, "cache_creation_input_tokens": 30}));
        assert_eq!(
            (&u["input_tokens"], &u["cache_creation_input_tokens"]),
            (&json!(70), &json!(30))
        );
        // Garbage never goes below 0.
        let u = read(
            json!({"prompt_tokens": 10, "cache_creation_input_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 8}}),
        );
        assert_eq!(
            u,
            json!({"input_tokens": 0, "output_tokens": 0,
                "cache_creation_input_tokens": 2, "cache_read_input_tokens": 8})
        );
    }
}
