//! An Anthropic Messages request turned into the OpenAI chat body sigorest sends every
//! provider (see `wire-formats-2.md`, "Anthropic Messages → OpenAI chat").
//!
//! `system` (and any system-role entries) becomes one system message first; content blocks
//! map onto content parts (`text`, `image` → `image_url`), assistant `tool_use` blocks onto
//! `tool_calls`, user `tool_result` blocks onto `role: "tool"` messages placed before the
//! rest of that turn; `thinking` blocks are dropped. Tools become function tools (server
//! tools are skipped, and so is a `tool_choice` naming one); `tool_choice`, `max_tokens`,
//! `stop_sequences`, `temperature`, `top_p` and `metadata.user_id` map onto their OpenAI
//! names (a `user_id` over OpenAI's 64 characters as its SHA-256); structured outputs
//! (`output_config.format`, a tool's `strict`) onto `response_format` and `strict`, as the
//! Responses API's do; `output_config.effort`, `top_k` and other Anthropic-only fields are
//! accepted and not sent (`thinking` only as Z.ai's
//! switch, set by the Messages front on the chat request and written for a Z.ai model
//! alone). sigorest's own extensions (`session_id`, `timeout`, `retries`, `fallbacks`) pass
//! through.
//! `cache_control` marks are kept only for a Claude upstream, which understands them; other
//! providers could refuse the unknown key (the chat request's `cache_marks` then leaves them
//! out for a fallback to another provider). A kept mark goes on the part or object its block
//! became: a text block's on its text part, an image's on its `image_url` part, a tool's on
//! its function tool, and a `tool_result`'s on the `tool` message's text, which is then sent
//! as one text part. Claude Code marks the last block of the last user message, which in a
//! tool loop is a `tool_result`: without its mark every turn would miss the cache.

use serde_json::{Map, Value, json};

use crate::chat::fields;
use crate::chat::request::sampling;
use crate::error::Error;
use crate::util::digest::{hex, sha256};

/// OpenAI takes at most this many stop sequences.
const MAX_STOP: usize = 4;

/// OpenAI refuses a `user` longer than this many characters.
const MAX_USER: usize = 64;

/// Translates a Messages body. `claude`: the upstream is a Claude model (marks kept).
pub fn to_chat(body: &Map<String, Value>, claude: bool) -> Result<Map<String, Value>, Error> {
    let mut out = Map::new();
    if let Some(model) = body.get("model") {
        out.insert("model".into(), model.clone());
    }
    match body.get("max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => {
            out.insert("max_tokens".into(), Value::Number(n.clone()));
        }
        None | Some(Value::Null) => {
            return Err(Error::invalid_param(
                "max_tokens",
                "max_tokens: Field required",
            ));
        }
        Some(_) => {
            return Err(Error::invalid_param(
                "max_tokens",
                "max_tokens: must be a whole number above 0",
            ));
        }
    }
    let list = match body.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            return Err(Error::invalid_param(
                "messages",
                "messages: at least one message is required",
            ));
        }
        Some(_) => {
            return Err(Error::invalid_param(
                "messages",
                "messages: must be an array",
            ));
        }
        None => return Err(Error::invalid_param("messages", "messages: Field required")),
    };
    let mut system = system_parts(body.get("system"), claude)?;
    let mut messages = Vec::with_capacity(list.len() + 1);
    for (i, m) in list.iter().enumerate() {
        message(i, m, claude, &mut messages, &mut system)?;
    }
    if !system.is_empty() {
        messages.insert(0, json!({"role": "system", "content": joined(system)}));
    }
    if messages.is_empty() {
        // Every block was of a kind that is not sent (thinking, server tool results...).
        return Err(Error::invalid_param(
            "messages",
            "messages: nothing to send: no message has a text, image, document, tool_use \
             or tool_result block",
        ));
    }
    out.insert("messages".into(), Value::Array(messages));
    tools(body, claude, &mut out)?;
    options(body, &mut out)?;
    Ok(out)
}

/// The `system` field as text parts (a string is one part).
fn system_parts(system: Option<&Value>, claude: bool) -> Result<Vec<Value>, Error> {
    match system {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .enumerate()
            .map(|(i, b)| match b.get("text").and_then(Value::as_str) {
                Some(text) => Ok(text_part(text, b, claude)),
                None => Err(Error::invalid_param(
                    "system",
                    format!("system.{i}: only text blocks are supported"),
                )),
            })
            .collect(),
        Some(_) => Err(Error::invalid_param(
            "system",
            "system: must be a string or a list of text blocks",
        )),
    }
}

/// A block's `cache_control` mark, when the upstream is Claude (the others get none).
fn mark(block: &Value, claude: bool) -> Option<&Value> {
    block.get("cache_control").filter(|_| claude)
}

/// `part` with the block's `cache_control` mark, when the upstream is Claude.
fn marked(mut part: Value, block: &Value, claude: bool) -> Value {
    if let Some(mark) = mark(block, claude) {
        part["cache_control"] = mark.clone();
    }
    part
}

/// A text part, with its `cache_control` mark when the upstream is Claude.
fn text_part(text: &str, block: &Value, claude: bool) -> Value {
    marked(json!({"type": "text", "text": text}), block, claude)
}

/// Parts as a message's content: plain text stays a string (what every provider takes);
/// images or cache marks need the array.
fn joined(parts: Vec<Value>) -> Value {
    let plain = parts
        .iter()
        .all(|p| p["type"] == "text" && p.get("cache_control").is_none());
    if !plain {
        return Value::Array(parts);
    }
    let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
    Value::String(texts.join("\n\n"))
}

/// One Messages entry, appended to `out` as one or more chat messages. System-role entries
/// are folded into `system` (some upstreams refuse a system message that is not first).
fn message(
    i: usize,
    m: &Value,
    claude: bool,
    out: &mut Vec<Value>,
    system: &mut Vec<Value>,
) -> Result<(), Error> {
    let bad = |what: &str| Error::invalid_param("messages", format!("messages.{i}: {what}"));
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("role is required"))?;
    let blocks: Vec<Value> = match m.get("content") {
        Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(blocks)) => blocks.clone(),
        _ => return Err(bad("content must be a string or a list of content blocks")),
    };
    match role {
        "user" => user_turn(i, &blocks, claude, out),
        "assistant" => {
            out.extend(assistant_turn(i, &blocks)?);
            Ok(())
        }
        "system" => {
            for b in &blocks {
                if let Some(text) = b.get("text").and_then(Value::as_str) {
                    system.push(text_part(text, b, claude));
                }
            }
            Ok(())
        }
        other => Err(bad(&format!(
            "role '{other}' is not one of 'user', 'assistant'"
        ))),
    }
}

/// A user turn: its tool results first, as `tool` messages, then the rest as one message,
/// which starts with the images the tools returned (wherever the results stood).
fn user_turn(i: usize, blocks: &[Value], claude: bool, out: &mut Vec<Value>) -> Result<(), Error> {
    let mut tool_images = Vec::new();
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bad = |what: &str| {
            Error::invalid_param("messages", format!("messages.{i}.content.{j}: {what}"))
        };
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = b
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("text is required"))?;
                parts.push(text_part(text, b, claude));
            }
            Some("image") => parts.push(image_part(b, claude).map_err(|w| bad(&w))?),
            Some("tool_result") => {
                let (message, images) = tool_result(b, claude).map_err(|w| bad(&w))?;
                out.push(message);
                tool_images.extend(images);
            }
            Some("document") => parts.extend(document(b, claude).map_err(|w| bad(&w))?),
            Some("search_result") => parts.push(search_result(b, claude).map_err(|w| bad(&w))?),
            // Reasoning of earlier turns: not sent (see the assistant turn).
            Some("thinking" | "redacted_thinking") => {}
            // Dropped, the model would answer without what the client sent, unaware.
            Some(other) => {
                return Err(bad(&format!(
                    "content blocks of type '{other}' are not supported by this gateway \
                     (supported: text, image, document, search_result, tool_result)"
                )));
            }
            None => return Err(bad("type is required")),
        }
    }
    tool_images.append(&mut parts);
    if !tool_images.is_empty() {
        out.push(json!({"role": "user", "content": joined(tool_images)}));
    }
    Ok(())
}

/// A `document` block as parts: a text document (`source.type` `text`) or one of content
/// blocks (`content`) as its text and images, headed by its `title` and `context` when it
/// has them; a base64 PDF as an OpenAI `file` part (the `file_data` data URL, its `title`
/// as the `filename`), as `input_file` goes from the Responses API. A document by URL or
/// by Files-API id has no OpenAI form: this gateway fetches and keeps no files.
fn document(block: &Value, claude: bool) -> Result<Vec<Value>, String> {
    let source = block.get("source").ok_or("source is required")?;
    let title = block.get("title").and_then(Value::as_str);
    let heading: Vec<&str> = [title, block.get("context").and_then(Value::as_str)]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    let headed = |text: &str| {
        if heading.is_empty() {
            text.to_string()
        } else {
            format!("{}\n\n{text}", heading.join("\n"))
        }
    };
    match source.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = source
                .get("data")
                .and_then(Value::as_str)
                .ok_or("source.data is required")?;
            Ok(vec![text_part(&headed(text), block, claude)])
        }
        Some("content") => {
            let mut parts = Vec::new();
            if !heading.is_empty() {
                parts.push(json!({"type": "text", "text": heading.join("\n")}));
            }
            let inner = match source.get("content") {
                Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
                Some(Value::Array(blocks)) => blocks.clone(),
                _ => return Err("source.content must be a string or a list of blocks".into()),
            };
            for c in &inner {
                match c.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = c["text"]
                            .as_str()
                            .ok_or("source.content: text is required")?;
                        parts.push(text_part(text, c, claude));
                    }
                    Some("image") => parts.push(image_part(c, claude)?),
                    _ => return Err("source.content holds text and image blocks only".into()),
                }
            }
            Ok(parts)
        }
        Some("base64") => {
            let mut file = json!({"file_data": data_url(source)?});
            file["filename"] = json!(title.unwrap_or("document.pdf"));
            Ok(vec![marked(
                json!({"type": "file", "file": file}),
                block,
                claude,
            )])
        }
        Some("url" | "file") => Err("a document by URL or file_id cannot be passed on: this \
             gateway fetches and keeps no files; send its bytes (source.type 'base64') or its \
             text"
            .into()),
        _ => Err("source.type must be 'text', 'content', 'base64', 'url' or 'file'".into()),
    }
}

/// A `search_result` block (a RAG tool's find, with its citation) as one text part: its
/// title and source, then its text blocks.
fn search_result(block: &Value, claude: bool) -> Result<Value, String> {
    let field = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or("");
    let mut text = match (field("title"), field("source")) {
        ("", "") => String::new(),
        (title, "") => format!("{title}\n"),
        ("", source) => format!("{source}\n"),
        (title, source) => format!("{title} ({source})\n"),
    };
    match block.get("content") {
        Some(Value::Array(blocks)) => {
            for c in blocks {
                text.push_str(
                    c.get("text")
                        .and_then(Value::as_str)
                        .ok_or("content: text blocks only")?,
                );
                text.push('\n');
            }
        }
        _ => return Err("content must be a list of text blocks".into()),
    }
    Ok(text_part(text.trim_end(), block, claude))
}

/// A base64 `source` (of an image or a document) as a data URL.
fn data_url(source: &Value) -> Result<String, String> {
    let media = source
        .get("media_type")
        .and_then(Value::as_str)
        .ok_or("source.media_type is required")?;
    let data = source
        .get("data")
        .and_then(Value::as_str)
        .ok_or("source.data is required")?;
    Ok(format!("data:{media};base64,{data}"))
}

/// An `image` block as an `image_url` part (a data URL for base64), with the block's
/// `cache_control` mark when the upstream is Claude.
fn image_part(block: &Value, claude: bool) -> Result<Value, String> {
    let source = block.get("source").ok_or("source is required")?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => data_url(source)?,
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or("source.url is required")?
            .to_string(),
        _ => return Err("source.type must be 'base64' or 'url'".into()),
    };
    let part = json!({"type": "image_url", "image_url": {"url": url}});
    Ok(marked(part, block, claude))
}

/// A `tool_result` block as a `tool` message, its content (a string or blocks) as text —
/// text documents and search results included —, and the images and PDFs among its blocks
/// (a screenshot, an image or PDF file read) as parts for the user message that follows:
/// an OpenAI `tool` message holds text only, and the model should still see them.
///
/// For a Claude upstream the block's `cache_control` mark (or, when it has none, the last
/// mark among its text blocks) goes on the message's text, sent as one text part, as a
/// text block's would; the images keep their own marks.
fn tool_result(b: &Value, claude: bool) -> Result<(Value, Vec<Value>), String> {
    let id = b
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or("tool_use_id is required")?;
    let mut moved = Vec::new();
    let mut inner_mark = None;
    let mut text = match b.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut lines = Vec::new();
            for c in blocks {
                let parts = match c.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        inner_mark = mark(c, claude).or(inner_mark);
                        lines.push(c["text"].as_str().unwrap_or("").to_string());
                        continue;
                    }
                    Some("image") => vec![image_part(c, claude)?],
                    Some("document") => document(c, claude)?,
                    Some("search_result") => vec![search_result(c, claude)?],
                    // What a client-side tool search found: a tool the model may now call
                    // (every tool goes upstream from the start, so a name says it all).
                    Some("tool_reference") => {
                        let name = c.get("tool_name").and_then(Value::as_str);
                        let name = name.ok_or("tool_reference: tool_name is required")?;
                        lines.push(format!("[tool: {name}]"));
                        continue;
                    }
                    Some(other) => {
                        return Err(format!(
                            "content blocks of type '{other}' in a tool_result are not \
                             supported by this gateway (supported: text, image, document, \
                             search_result, tool_reference)"
                        ));
                    }
                    None => return Err("type is required in a tool_result's content".into()),
                };
                // Text stays in the tool message; what a tool message cannot hold (an
                // image, a PDF) goes to the user message that follows.
                for part in parts {
                    match (part["type"].as_str(), part["text"].as_str()) {
                        (Some("text"), Some(t)) => lines.push(t.to_string()),
                        (kind, _) => {
                            let what = if kind == Some("file") {
                                "document"
                            } else {
                                "image"
                            };
                            lines.push(format!("[{what}: in the next message]"));
                            moved.push(part);
                        }
                    }
                }
            }
            lines.join("\n")
        }
        Some(_) => return Err("content must be a string or a list of blocks".into()),
    };
    if !moved.is_empty() {
        let files = moved.iter().any(|p| p["type"] == "file");
        let what = if files { "files" } else { "images" };
        let heading = format!("The {what} the tool call {id} returned:");
        moved.insert(0, json!({"type": "text", "text": heading}));
    }
    if b.get("is_error") == Some(&Value::Bool(true)) {
        text = format!("Error: {text}");
    }
    // Anthropic refuses a mark on an empty text block: an empty result goes unmarked.
    let content = match mark(b, claude).or(inner_mark) {
        Some(mark) if !text.is_empty() => {
            json!([{"type": "text", "text": text, "cache_control": mark}])
        }
        _ => Value::String(text),
    };
    Ok((
        json!({"role": "tool", "tool_call_id": id, "content": content}),
        moved,
    ))
}

/// An assistant turn: its text blocks (joined by a blank line), and its `tool_use` blocks
/// as `tool_calls`; none when nothing is left of it (only thinking blocks, which are
/// dropped).
fn assistant_turn(i: usize, blocks: &[Value]) -> Result<Option<Value>, Error> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let piece = b["text"].as_str().unwrap_or("");
                if !text.is_empty() && !piece.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(piece);
            }
            Some("tool_use") => {
                let (Some(id), Some(name)) = (b["id"].as_str(), b["name"].as_str()) else {
                    return Err(Error::invalid_param(
                        "messages",
                        format!("messages.{i}.content.{j}: tool_use needs id and name"),
                    ));
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            _ => {}
        }
    }
    if text.is_empty() && calls.is_empty() {
        // Nothing left (thinking blocks only, or empty text): an empty assistant message is
        // refused by strict providers, and says nothing.
        return Ok(None);
    }
    let mut m = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    Ok(Some(m))
}

/// `tools` and `tool_choice`. Server tools (typed, without an `input_schema`: web search,
/// code execution...) have no OpenAI form and are skipped, and so is a choice naming one
/// (as the Responses API's hosted tools' choices are). `strict: true` goes on the function.
/// A tool's `cache_control` mark goes on its function tool, beside `function`, when the
/// upstream is Claude.
fn tools(
    body: &Map<String, Value>,
    claude: bool,
    out: &mut Map<String, Value>,
) -> Result<(), Error> {
    let mut functions = Vec::new();
    let mut skipped = Vec::new();
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, t) in list.iter().enumerate() {
                let custom = t.get("input_schema").is_some()
                    || matches!(t.get("type").and_then(Value::as_str), None | Some("custom"));
                if !custom {
                    skipped.extend(t.get("name").and_then(Value::as_str));
                    continue;
                }
                let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
                    Error::invalid_param("tools", format!("tools.{i}.name: Field required"))
                })?;
                let mut f = json!({"name": name,
                    "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = t.get("description") {
                    f["description"] = d.clone();
                }
                fields::strict(t, &mut f);
                functions.push(marked(
                    json!({"type": "function", "function": f}),
                    t,
                    claude,
                ));
            }
        }
        Some(_) => return Err(Error::invalid_param("tools", "tools: must be a list")),
    }
    let any = !functions.is_empty();
    if any {
        out.insert("tools".into(), Value::Array(functions));
    }
    let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Some(json!("auto")),
        Some("any") => Some(json!("required")),
        Some("none") => Some(json!("none")),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            // A skipped server tool's choice would name a function the upstream was not
            // given, which it refuses; the other tools are offered with no choice (`auto`).
            Some(name) if skipped.contains(&name) => {
                log::debug!(tool = name; "the choice of a skipped server tool is not sent");
                None
            }
            Some(name) => Some(json!({"type": "function", "function": {"name": name}})),
            None => {
                return Err(Error::invalid_param(
                    "tool_choice",
                    "tool_choice.name: Field required",
                ));
            }
        },
        _ => {
            return Err(Error::invalid_param(
                "tool_choice",
                "tool_choice.type: must be 'auto', 'any', 'tool' or 'none'",
            ));
        }
    };
    // Without tools upstream (only server tools were given), a choice would be refused.
    if any {
        if let Some(mapped) = mapped {
            out.insert("tool_choice".into(), mapped);
        }
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    Ok(())
}

/// The sampling options, `metadata.user_id`, the output format, `stream`, and sigorest's
/// extensions (`output_config.effort` is checked, not sent: see below).
fn options(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), Error> {
    sampling(body, out)?;
    match body.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            if !list.is_empty() {
                let first: Vec<Value> = list.iter().take(MAX_STOP).cloned().collect();
                out.insert("stop".into(), Value::Array(first));
            }
        }
        Some(_) => {
            return Err(Error::invalid_param(
                "stop_sequences",
                "stop_sequences: must be a list of strings",
            ));
        }
    }
    if let Some(user) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(upstream_user(user)));
    }
    if !matches!(
        body.get("output_config"),
        None | Some(Value::Null | Value::Object(_))
    ) {
        return Err(Error::invalid_param(
            "output_config",
            "output_config: must be an object",
        ));
    }
    if let Some(format) = output_format(body)? {
        out.insert("response_format".into(), format);
    }
    // `output_config.effort` is not sent: Claude Code sends one with every request, and a
    // model without `reasoning_effort` (GPT-4.1 and most non-reasoning models) answers a
    // 400 that Claude Code does not recognise as "effort unsupported" — every turn would
    // fail. A wrong type is still the client's mistake.
    if let Some(effort) = body.get("output_config").and_then(|c| c.get("effort"))
        && !matches!(effort, Value::Null | Value::String(_))
    {
        return Err(Error::invalid_param(
            "output_config",
            "output_config.effort: must be a string (such as 'low', 'medium' or 'high')",
        ));
    }
    for field in ["stream", "session_id", "timeout", "retries", "fallbacks"] {
        if let Some(v) = body.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    Ok(())
}

/// `metadata.user_id` as OpenAI's `user`: as it is up to 64 characters, else the lower-case
/// hex SHA-256 of it, exactly 64. Claude Code's id (`user_<64 hex>_account_<uuid>_session_
/// <uuid>`, or a JSON object) is about 150 characters, which OpenAI refuses; the hash still
/// tells the provider's abuse tracking and caching one user from another, always the same.
fn upstream_user(user_id: &str) -> String {
    if user_id.chars().count() <= MAX_USER {
        user_id.to_string()
    } else {
        hex(&sha256(user_id.as_bytes()))
    }
}

/// Structured outputs: `output_config.format` (or the older beta's top-level
/// `output_format`, the same shape), `{"type": "json_schema", "schema": ...}`, as chat's
/// `response_format`, named `output` (chat needs a name, Anthropic has none) and `strict`:
/// Anthropic's format is a guarantee that the answer follows the schema, which is what
/// OpenAI's strict mode gives. Another type is a 400: the model would answer in prose,
/// unaware.
fn output_format(body: &Map<String, Value>) -> Result<Option<Value>, Error> {
    let given = |v: Option<&Value>| v.filter(|f| !f.is_null()).cloned();
    let (format, param, path) = match given(body.get("output_config").and_then(|c| c.get("format")))
    {
        Some(format) => (format, "output_config", "output_config.format"),
        None => match given(body.get("output_format")) {
            Some(format) => (format, "output_format", "output_format"),
            None => return Ok(None),
        },
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {}
        Some(other) => {
            return Err(Error::invalid_param(
                param,
                format!("{path}.type: '{other}' is not supported (supported: json_schema)"),
            ));
        }
        None => {
            return Err(Error::invalid_param(
                param,
                format!("{path}.type: Field required (json_schema)"),
            ));
        }
    }
    let schema = format.get("schema").cloned().unwrap_or(Value::Null);
    let spec = json!({"type": "json_schema", "name": "output", "schema": schema, "strict": true});
    fields::response_format(&spec, param, path)
}
