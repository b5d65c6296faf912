//! A chat completion turned into a Response object: the text as one `message` item (when
//! there is text, or nothing else), then one `function_call` item per tool call; the status
//! from `finish_reason` (`length` → `incomplete` with `incomplete_details.reason:
//! "max_output_tokens"`, `content_filter` → `incomplete` with `"content_filter"`); the usage
//! in the Responses terms. The pieces (items, usage, the object around them) are shared
//! with the stream translator.

use serde_json::{Map, Value, json};

use crate::chat::answer::{Answer, Usage};
use crate::util::{random_id, unix_now};

/// The response's `status` and `incomplete_details` for an OpenAI `finish_reason`.
pub fn status(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// `usage` in the Responses terms: input tokens include those read from and written to the
/// cache, which are also reported apart (`cache_write_tokens` as Azure's Responses API and
/// OpenRouter name it; OpenAI's own has none). Counts the provider did not report are 0.
pub fn usage(u: &Usage) -> Value {
    let input = u.prompt_tokens.unwrap_or(0);
    let output = u.completion_tokens.unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cached_tokens(),
            "cache_write_tokens": u.cache_write_tokens()},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input.saturating_add(output),
    })
}

/// A `message` item holding `text` (no content part while `text` is `None`: a message
/// just added to a stream).
pub fn message_item(id: &str, text: Option<&str>, status: &str) -> Value {
    let content = match text {
        Some(t) => json!([{"type": "output_text", "text": t, "annotations": []}]),
        None => json!([]),
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// A `reasoning` item: the model's reasoning as the provider sent it apart, in one
/// `reasoning_text` part (as open-weight models give it), with no summary.
pub fn reasoning_item(id: &str, text: Option<&str>, status: &str) -> Value {
    let content = match text {
        Some(t) => json!([{"type": "reasoning_text", "text": t}]),
        None => json!([]),
    };
    json!({"type": "reasoning", "id": id, "summary": [], "content": content, "status": status})
}

/// A `message` item holding a refusal, in one `refusal` part.
pub fn refusal_item(id: &str, refusal: Option<&str>, status: &str) -> Value {
    let content = match refusal {
        Some(r) => json!([{"type": "refusal", "refusal": r}]),
        None => json!([]),
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// A `function_call` item.
pub fn function_call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status})
}

/// A call id the client can send back in a `function_call_output`: the provider's, or a
/// fresh one.
pub fn call_id(id: &str) -> String {
    if id.is_empty() {
        random_id("call_")
    } else {
        id.to_string()
    }
}

/// What every Response object of one request shares: its id, creation time, the model name
/// the client asked for, and the request fields it repeats (`request::echo`).
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    echo: Map<String, Value>,
}

/// The parts of a Response object that change as it goes.
pub struct State<'a> {
    pub status: &'a str,
    pub incomplete_details: Value,
    pub error: Value,
    pub output: Vec<Value>,
    pub usage: Value,
}

impl Envelope {
    pub fn new(model: &str, echo: Map<String, Value>) -> Envelope {
        Envelope {
            id: random_id("resp_"),
            created_at: unix_now(),
            model: model.to_string(),
            echo,
        }
    }

    /// The whole Response object in this state.
    pub fn render(&self, state: State) -> Value {
        let mut o = self.echo.clone();
        let completed_at = if state.status == "completed" {
            json!(unix_now())
        } else {
            Value::Null
        };
        for (k, v) in [
            ("id", json!(self.id)),
            ("object", json!("response")),
            ("created_at", json!(self.created_at)),
            ("completed_at", completed_at),
            ("status", json!(state.status)),
            ("error", state.error),
            ("incomplete_details", state.incomplete_details),
            ("model", json!(self.model)),
            ("output", Value::Array(state.output)),
            ("usage", state.usage),
        ] {
            o.insert(k.to_string(), v);
        }
        Value::Object(o)
    }
}

/// The whole Response object for a complete answer.
pub fn response(answer: &Answer, envelope: &Envelope) -> Value {
    let (status, incomplete_details) = status(answer.finish_reason.as_deref());
    let item_status = if status == "completed" {
        "completed"
    } else {
        "incomplete"
    };
    let mut output = Vec::new();
    if !answer.reasoning.is_empty() {
        output.push(reasoning_item(
            &random_id("rs_"),
            Some(&answer.reasoning),
            item_status,
        ));
    }
    let text = answer.text();
    if !text.is_empty() || (answer.tool_calls.is_empty() && answer.refusal.is_empty()) {
        output.push(message_item(&random_id("msg_"), Some(&text), item_status));
    }
    if !answer.refusal.is_empty() {
        output.push(refusal_item(
            &random_id("msg_"),
            Some(&answer.refusal),
            item_status,
        ));
    }
    for call in &answer.tool_calls {
        output.push(function_call_item(
            &random_id("fc_"),
            &call_id(&call.id),
            &call.name,
            // No arguments: "{}", as in a stream (see `stream::Translator::close`).
            if call.arguments.trim().is_empty() {
                "{}"
            } else {
                &call.arguments
            },
            item_status,
        ));
    }
    envelope.render(State {
        status,
        incomplete_details,
        error: Value::Null,
        output,
        usage: usage(&answer.usage),
    })
}
