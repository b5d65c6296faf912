//! A Responses request turned into the OpenAI chat body sigorest sends every provider (see
//! `wire-formats-2.md`, "Responses API (stateless subset)").
//!
//! `instructions` becomes a system message first (the pipeline puts the memory block before
//! it); `input` — a string, or items — becomes the messages: `message` items (with or
//! without `type`; `developer` is sent as `system`) with their text, image and file parts,
//! `function_call` items as the assistant's `tool_calls` (calls in a row, and the assistant
//! text just before them, make one assistant message), `function_call_output` items as
//! `role: "tool"` messages; `reasoning` items are dropped. Function tools become chat tools;
//! the hosted tools (`web_search`, `file_search`, `code_interpreter`, `mcp`, `custom`...)
//! have no chat form and are skipped. `max_output_tokens` is sent as `max_tokens`,
//! `text.format` as `response_format`, `reasoning.effort` as `reasoning_effort`;
//! `temperature`, `top_p`, `user`, `stream` and sigorest's extensions (`session_id`,
//! `timeout`, `retries`) keep their names.
//!
//! The gateway keeps no responses: `previous_response_id`, `conversation`, `background` and
//! stored `prompt`s are refused with a 400 that says what to send instead; `store` is
//! treated as false. [`echo`] gives the request fields a Response object repeats.

use serde_json::{Map, Value, json};

use crate::chat::fields;
use crate::chat::request::sampling;
use crate::error::Error;

/// Translates a Responses body.
pub fn to_chat(body: &Map<String, Value>) -> Result<Map<String, Value>, Error> {
    stateless(body)?;
    let mut out = Map::new();
    if let Some(model) = body.get("model") {
        out.insert("model".into(), model.clone());
    }
    let mut messages = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => {
            return Err(Error::invalid_param(
                "instructions",
                "instructions: must be a string",
            ));
        }
    }
    input(body.get("input"), &mut messages)?;
    out.insert("messages".into(), Value::Array(messages));
    tools(body, &mut out)?;
    options(body, &mut out)?;
    Ok(out)
}

/// Refuses what needs state the gateway does not keep.
fn stateless(body: &Map<String, Value>) -> Result<(), Error> {
    let given = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    if given("previous_response_id") {
        return Err(Error::invalid_param(
            "previous_response_id",
            "previous_response_id is not supported: this gateway is stateless and keeps no \
             responses. Send the whole conversation in 'input' (earlier output items \
             included), or add sigorest's 'session_id' to have the gateway keep the history",
        ));
    }
    if given("conversation") {
        return Err(Error::invalid_param(
            "conversation",
            "conversation is not supported: this gateway is stateless and keeps no \
             conversations. Send the whole conversation in 'input', or add sigorest's \
             'session_id' to have the gateway keep the history",
        ));
    }
    if body.get("background") == Some(&Value::Bool(true)) {
        return Err(Error::invalid_param(
            "background",
            "background responses are not supported: this gateway keeps no responses to \
             poll; leave 'background' out (or use \"stream\": true)",
        ));
    }
    if given("prompt") {
        return Err(Error::invalid_param(
            "prompt",
            "stored prompts are not supported by this gateway: send 'instructions' and \
             'input' themselves",
        ));
    }
    Ok(())
}

/// `input`: a string (one user message) or a non-empty list of items.
fn input(value: Option<&Value>, out: &mut Vec<Value>) -> Result<(), Error> {
    match value {
        Some(Value::String(s)) => {
            out.push(json!({"role": "user", "content": s}));
            Ok(())
        }
        Some(Value::Array(items)) if items.is_empty() => Err(Error::invalid_param(
            "input",
            "input: at least one item is required",
        )),
        Some(Value::Array(items)) => {
            // Images that function outputs returned, for the user message after their run
            // of tool messages (a user message between two of them would be refused).
            let mut images = Vec::new();
            for (i, item) in items.iter().enumerate() {
                input_item(i, item, out, &mut images)?;
                let output_next = items
                    .get(i + 1)
                    .is_some_and(|n| n.get("type") == Some(&json!("function_call_output")));
                if !output_next && !images.is_empty() {
                    out.push(json!({"role": "user", "content": std::mem::take(&mut images)}));
                }
            }
            Ok(())
        }
        None | Some(Value::Null) => Err(Error::invalid_param("input", "input: Field required")),
        Some(_) => Err(Error::invalid_param(
            "input",
            "input: must be a string or a list of items",
        )),
    }
}

/// An input error about `input[i]`.
fn bad_item(i: usize, what: &str) -> Error {
    Error::invalid_param("input", format!("input[{i}]: {what}"))
}

/// One input item, appended to `out` as chat messages (and to `images`, the images a
/// function output returned).
fn input_item(
    i: usize,
    item: &Value,
    out: &mut Vec<Value>,
    images: &mut Vec<Value>,
) -> Result<(), Error> {
    let Value::Object(o) = item else {
        return Err(bad_item(i, "must be an object"));
    };
    match o.get("type").and_then(Value::as_str) {
        None | Some("message") => out.push(message(i, o)?),
        Some("function_call") => function_call(i, o, out)?,
        Some("function_call_output") => out.push(function_call_output(i, o, images)?),
        // Reasoning of earlier turns has no chat form (as `thinking` blocks for Messages).
        Some("reasoning") => {}
        Some("item_reference") => {
            return Err(bad_item(
                i,
                "item_reference is not supported: this gateway keeps no items; send the item itself",
            ));
        }
        Some(other) => {
            return Err(bad_item(
                i,
                &format!(
                    "items of type '{other}' are not supported by this gateway (supported: \
                     message, function_call, function_call_output; reasoning items are dropped)"
                ),
            ));
        }
    }
    Ok(())
}

/// A `message` item as a chat message.
fn message(i: usize, o: &Map<String, Value>) -> Result<Value, Error> {
    let given = o
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_item(i, "role is required"))?;
    let role = match given {
        "user" | "assistant" | "system" => given,
        "developer" => "system",
        other => {
            return Err(bad_item(
                i,
                &format!("role '{other}' is not one of 'user', 'assistant', 'system', 'developer'"),
            ));
        }
    };
    let parts = match o.get("content") {
        Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| content_part(p).map_err(|w| bad_item(i, &format!("content[{j}]: {w}"))))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(bad_item(
                i,
                "content must be a string or a list of content parts",
            ));
        }
    };
    if role != "user" && parts.iter().any(|p| p["type"] != "text") {
        return Err(bad_item(
            i,
            &format!("{given} messages may only hold text parts"),
        ));
    }
    Ok(json!({"role": role, "content": joined(parts)}))
}

/// One content part as a chat content part.
fn content_part(p: &Value) -> Result<Value, String> {
    let text = |key: &str| {
        p.get(key)
            .and_then(Value::as_str)
            .map(|t| json!({"type": "text", "text": t}))
            .ok_or_else(|| format!("{key} is required"))
    };
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => text("text"),
        Some("refusal") => text("refusal"),
        // `image_url` is a string in the Responses API; the chat form (`{"url": ...}`), which
        // clients ported from chat completions send, is taken too.
        Some("input_image") => match p
            .get("image_url")
            .and_then(|u| u.as_str().or_else(|| u.get("url").and_then(Value::as_str)))
        {
            Some(url) => {
                let mut image = json!({"url": url});
                if let Some(detail) = p.get("detail").and_then(Value::as_str) {
                    image["detail"] = json!(detail);
                }
                Ok(json!({"type": "image_url", "image_url": image}))
            }
            None if p.get("file_id").is_some() => Err(
                "input_image needs image_url (a URL or a data URL): this gateway \
                         keeps no files, so file_id is not supported"
                    .into(),
            ),
            None => Err("input_image needs image_url, a URL or a data URL (as a string)".into()),
        },
        Some("input_file") => match p.get("file_data").and_then(Value::as_str) {
            Some(data) => {
                let mut file = json!({"file_data": data});
                if let Some(name) = p.get("filename").and_then(Value::as_str) {
                    file["filename"] = json!(name);
                }
                Ok(json!({"type": "file", "file": file}))
            }
            None => Err(
                "input_file needs file_data: this gateway keeps no files, so \
                         file_id and file_url are not supported"
                    .into(),
            ),
        },
        Some(other) => Err(format!(
            "content parts of type '{other}' are not supported (supported: input_text, \
             input_image, input_file, output_text, refusal)"
        )),
        None => Err("type is required".into()),
    }
}

/// Parts as a message's content: plain text stays a string (what every provider takes);
/// images and files need the array.
fn joined(parts: Vec<Value>) -> Value {
    if !parts.iter().all(|p| p["type"] == "text") {
        return Value::Array(parts);
    }
    let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
    Value::String(texts.join("\n\n"))
}

/// A `function_call` item: a tool call of the assistant message just before it, or of a
/// new assistant message.
fn function_call(i: usize, o: &Map<String, Value>, out: &mut Vec<Value>) -> Result<(), Error> {
    let field = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad_item(i, &format!("function_call needs {k}")))
    };
    let (call_id, name) = (field("call_id")?, field("name")?);
    let arguments = match o.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => "{}".to_string(),
        Some(other) => other.to_string(),
    };
    let call = json!({"id": call_id, "type": "function",
        "function": {"name": name, "arguments": arguments}});
    match out.last_mut() {
        Some(last) if last["role"] == "assistant" => match last.get_mut("tool_calls") {
            Some(Value::Array(calls)) => calls.push(call),
            _ => {
                last["tool_calls"] = json!([call]);
                if last["content"] == "" {
                    last["content"] = Value::Null;
                }
            }
        },
        _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
    }
    Ok(())
}

/// A `function_call_output` item as a `tool` message; an output given as parts becomes
/// their text (`[image]`, `[file]` for the others: a tool message holds text).
/// A `function_call_output` item as a `tool` message. A `tool` message holds text only: the
/// images of an output (a screenshot) go to `images`, for a user message after it, so that
/// a vision model still sees them.
fn function_call_output(
    i: usize,
    o: &Map<String, Value>,
    images: &mut Vec<Value>,
) -> Result<Value, Error> {
    let call_id = o
        .get("call_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad_item(i, "function_call_output needs call_id"))?;
    let text = match o.get("output") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut lines = Vec::new();
            for p in parts {
                lines.push(match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        p["text"].as_str().unwrap_or("").to_string()
                    }
                    Some("input_image") => {
                        let image = content_part(p).map_err(|e| bad_item(i, &e))?;
                        images.push(json!({"type": "text",
                            "text": format!("An image the function call {call_id} returned:")}));
                        images.push(image);
                        "[image: in the next message]".to_string()
                    }
                    Some("input_file") => "[file]".to_string(),
                    _ => p.to_string(),
                });
            }
            lines.join("\n")
        }
        None | Some(Value::Null) => {
            return Err(bad_item(i, "function_call_output needs output"));
        }
        Some(other) => other.to_string(),
    };
    Ok(json!({"role": "tool", "tool_call_id": call_id, "content": text}))
}

/// `tools`, `tool_choice` and `parallel_tool_calls`. Hosted tools are skipped; without any
/// function tool left, no choice is sent (an upstream would refuse it).
fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), Error> {
    let mut functions = Vec::new();
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, t) in list.iter().enumerate() {
                match t.get("type").and_then(Value::as_str) {
                    Some("function") => functions.push(function_tool(i, t)?),
                    Some(kind) => log::debug!(tool = kind; "hosted tool skipped"),
                    None => {
                        return Err(Error::invalid_param(
                            "tools",
                            format!("tools[{i}].type: Field required"),
                        ));
                    }
                }
            }
        }
        Some(_) => return Err(Error::invalid_param("tools", "tools: must be a list")),
    }
    if functions.is_empty() {
        return Ok(());
    }
    out.insert("tools".into(), Value::Array(functions));
    if let Some(choice) = tool_choice(body.get("tool_choice"))? {
        out.insert("tool_choice".into(), choice);
    }
    match body.get("parallel_tool_calls") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Bool(_)) => {
            out.insert("parallel_tool_calls".into(), v.clone());
        }
        Some(_) => {
            return Err(Error::invalid_param(
                "parallel_tool_calls",
                "parallel_tool_calls: must be true or false",
            ));
        }
    }
    Ok(())
}

/// A flat function tool as a chat tool (`strict` only when true: see [`fields::strict`]).
fn function_tool(i: usize, t: &Value) -> Result<Value, Error> {
    let name = t
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::invalid_param("tools", format!("tools[{i}].name: Field required")))?;
    let parameters = match t.get("parameters") {
        Some(p @ Value::Object(_)) => p.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    let mut f = json!({"name": name, "parameters": parameters});
    if let Some(d) = t.get("description").filter(|d| d.is_string()) {
        f["description"] = d.clone();
    }
    fields::strict(t, &mut f);
    Ok(json!({"type": "function", "function": f}))
}

/// `tool_choice` in chat's terms; `None` for a choice of a hosted tool (skipped).
fn tool_choice(choice: Option<&Value>) -> Result<Option<Value>, Error> {
    let bad = || {
        Error::invalid_param(
            "tool_choice",
            "tool_choice: must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}",
        )
    };
    let Some(choice) = choice.filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    if let Some(mode) = choice.as_str() {
        return match mode {
            "auto" | "none" | "required" => Ok(Some(json!(mode))),
            _ => Err(bad()),
        };
    }
    match choice.get("type").and_then(Value::as_str) {
        Some("function") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => Ok(Some(
                json!({"type": "function", "function": {"name": name}}),
            )),
            None => Err(Error::invalid_param(
                "tool_choice",
                "tool_choice.name: Field required",
            )),
        },
        // The list of allowed tools is not sent: only its mode.
        Some("allowed_tools") => match choice.get("mode").and_then(Value::as_str) {
            Some(mode @ ("auto" | "required")) => Ok(Some(json!(mode))),
            _ => Err(Error::invalid_param(
                "tool_choice",
                "tool_choice.mode: must be 'auto' or 'required'",
            )),
        },
        Some(_) => Ok(None),
        None => Err(bad()),
    }
}

/// The sampling options, the reasoning effort, the output format, `user`, `stream` and
/// sigorest's extensions.
fn options(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), Error> {
    // `reasoning.effort` is chat's `reasoning_effort` (OpenAI's reasoning models, Gemini,
    // Grok); a model that has no such setting says so, as OpenAI itself would. The summary
    // has no chat form.
    let effort = body.get("reasoning").and_then(|r| r.get("effort"));
    fields::reasoning_effort(effort, ("reasoning", "reasoning.effort"), out)?;
    match body.get("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => {
            out.insert("max_tokens".into(), Value::Number(n.clone()));
        }
        Some(_) => {
            return Err(Error::invalid_param(
                "max_output_tokens",
                "max_output_tokens: must be a whole number above 0 (leave it out for the model's default)",
            ));
        }
    }
    sampling(body, out)?;
    match body.get("user") {
        None | Some(Value::Null) => {}
        Some(v @ Value::String(_)) => {
            out.insert("user".into(), v.clone());
        }
        Some(_) => return Err(Error::invalid_param("user", "user: must be a string")),
    }
    match body.get("metadata") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(Error::invalid_param(
                "metadata",
                "metadata: must be an object",
            ));
        }
    }
    if let Some(format) = response_format(body.get("text"))? {
        out.insert("response_format".into(), format);
    }
    for field in ["stream", "session_id", "timeout", "retries", "fallbacks"] {
        if let Some(v) = body.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    Ok(())
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn response_format(text: Option<&Value>) -> Result<Option<Value>, Error> {
    match text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) {
        Some(format) => fields::response_format(format, "text", "text.format"),
        None => Ok(None),
    }
}

/// The request fields a Response object repeats, with OpenAI's defaults for those left
/// out. `tools` repeats only the function tools (the hosted ones were not used); `store`
/// is always false.
pub fn echo(body: &Map<String, Value>) -> Map<String, Value> {
    let given = |k: &str, default: Value| {
        body.get(k)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(default)
    };
    let tools: Vec<Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter(|t| t["type"] == "function")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut echo = Map::new();
    for (k, v) in [
        ("instructions", given("instructions", Value::Null)),
        ("max_output_tokens", given("max_output_tokens", Value::Null)),
        ("metadata", given("metadata", json!({}))),
        (
            "parallel_tool_calls",
            given("parallel_tool_calls", json!(true)),
        ),
        ("previous_response_id", Value::Null),
        (
            "reasoning",
            match body.get("reasoning") {
                Some(r @ Value::Object(_)) => {
                    json!({"effort": r.get("effort").cloned().unwrap_or(Value::Null),
                        "summary": r.get("summary").cloned().unwrap_or(Value::Null)})
                }
                _ => Value::Null,
            },
        ),
        ("store", json!(false)),
        ("temperature", given("temperature", Value::Null)),
        ("text", given("text", json!({"format": {"type": "text"}}))),
        ("tool_choice", given("tool_choice", json!("auto"))),
        ("tools", Value::Array(tools)),
        ("top_p", given("top_p", Value::Null)),
        ("truncation", given("truncation", json!("disabled"))),
        ("user", given("user", Value::Null)),
    ] {
        echo.insert(k.to_string(), v);
    }
    echo
}
