//! `cache_control` marks: where each kept mark goes in the chat body for a Claude upstream,
//! that no other upstream gets one (nor a fallback from a Claude), and that the memory block
//! is marked only when the client's marks leave room under Anthropic's limit of 4.

use serde_json::{Map, Value, json};

use super::super::request::to_chat;
use super::obj;
use crate::chat::request::{ChatRequest, MAX_TIMEOUT};
use crate::state::catalog::{Catalog, Model};
use crate::state::memory::Memory;

fn mark() -> Value {
    json!({"type": "ephemeral"})
}

fn model(short: &str) -> Model {
    Catalog::embedded().get(short).unwrap().clone()
}

/// The chat body for a Claude upstream and for another one.
fn both(body: Value) -> (Map<String, Value>, Map<String, Value>) {
    (
        to_chat(&obj(body.clone()), true).unwrap(),
        to_chat(&obj(body), false).unwrap(),
    )
}

/// Claude Code's tool loop: the mark on the `tool_result`, the last block of the last
/// user message.
fn tool_loop(result: Value) -> Value {
    json!({"max_tokens": 5, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [result]}]})
}

#[test]
fn a_tools_mark_goes_on_its_function_tool_for_claude_only() {
    let (claude, other) = both(json!({"max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": mark()},
            {"name": "g", "input_schema": {"type": "object"}}]}));
    assert_eq!(
        claude["tools"],
        json!([
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}},
                "cache_control": mark()},
            {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}])
    );
    assert!(!Value::Object(other).to_string().contains("cache_control"));
}

#[test]
fn a_tool_results_mark_goes_on_the_tool_messages_text_for_claude_only() {
    let (claude, other) = both(tool_loop(
        json!({"type": "tool_result", "tool_use_id": "t1", "content": "42", "cache_control": mark()}),
    ));
    assert_eq!(
        claude["messages"][2],
        json!({"role": "tool", "tool_call_id": "t1",
            "content": [{"type": "text", "text": "42", "cache_control": mark()}]})
    );
    assert_eq!(
        other["messages"][2],
        json!({"role": "tool", "tool_call_id": "t1", "content": "42"})
    );
    assert_eq!(claude["messages"].as_array().unwrap().len(), 3);

    // Content as blocks, an error: the mark of a text block inside counts as the result's.
    let (claude, other) = both(tool_loop(
        json!({"type": "tool_result", "tool_use_id": "t1",
        "is_error": true, "content": [{"type": "text", "text": "boom", "cache_control": mark()}]}),
    ));
    assert_eq!(
        claude["messages"][2]["content"],
        json!([{"type": "text", "text": "Error: boom", "cache_control": mark()}])
    );
    assert_eq!(other["messages"][2]["content"], "Error: boom");

    // Anthropic refuses a mark on empty text: an empty result goes unmarked.
    let (claude, _) = both(tool_loop(
        json!({"type": "tool_result", "tool_use_id": "t1", "cache_control": mark()}),
    ));
    assert_eq!(claude["messages"][2]["content"], "");
}

#[test]
fn an_images_mark_goes_on_its_image_url_part_for_claude_only() {
    let png = json!({"type": "base64", "media_type": "image/png", "data": "AAAA"});
    let (claude, other) = both(json!({"max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "image", "source": png, "cache_control": mark()}]},
            {"type": "text", "text": "and this?"},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}, "cache_control": mark()}]}]}));
    assert_eq!(
        claude["messages"][2]["content"],
        json!([
            {"type": "text", "text": "The images the tool call t1 returned:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"},
                "cache_control": mark()},
            {"type": "text", "text": "and this?"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}, "cache_control": mark()}]),
        "an image in a result keeps its mark in the user message it moves to"
    );
    assert_eq!(
        claude["messages"][1]["content"], "[image: in the next message]",
        "the result's own text had no mark"
    );
    assert!(!Value::Object(other).to_string().contains("cache_control"));
}

/// The body sent to `short` for a Messages request translated for a Claude upstream, with
/// a cached memory block.
fn upstream(body: Value, short: &str) -> Map<String, Value> {
    let mut chat =
        ChatRequest::from_object(to_chat(&obj(body), true).unwrap(), MAX_TIMEOUT).unwrap();
    chat.cache_marks = true;
    let memory = Memory {
        content: "I live in Lyon.".into(),
        cache: true,
    };
    chat.upstream_body(&model(short), &memory, &[])
}

#[test]
fn every_kept_mark_counts_toward_the_four_before_the_memory_gets_one() {
    let text = |t: &str| json!({"type": "text", "text": t, "cache_control": mark()});
    let tools = json!([{"name": "f", "input_schema": {"type": "object"}, "cache_control": mark()}]);
    // A tool, the system and two text blocks: 4, no room for the memory's mark.
    let four = json!({"model": "claude-h", "max_tokens": 5, "tools": tools,
        "system": [text("rules")],
        "messages": [{"role": "user", "content": [text("a"), text("b")]}]});
    let up = upstream(four, "claude-h");
    assert_eq!(up["messages"][0]["content"], "I live in Lyon.");
    assert_eq!(
        Value::Object(up)
            .to_string()
            .matches("cache_control")
            .count(),
        4
    );

    // A tool, the system and a tool result: 3, and the memory's makes 4.
    let mut three = tool_loop(json!({"type": "tool_result", "tool_use_id": "t1",
        "content": "42", "cache_control": mark()}));
    three["model"] = json!("claude-h");
    three["tools"] = tools.clone();
    three["system"] = json!([text("rules")]);
    let up = upstream(three.clone(), "claude-h");
    assert_eq!(
        up["messages"][0]["content"],
        json!([{"type": "text", "text": "I live in Lyon.", "cache_control": mark()}])
    );
    assert_eq!(
        Value::Object(up)
            .to_string()
            .matches("cache_control")
            .count(),
        4
    );

    // With an image's mark too, the 4 are the client's again.
    three["messages"][0]["content"] = json!([{"type": "image",
        "source": {"type": "url", "url": "https://x/y.png"}, "cache_control": mark()}]);
    let up = upstream(three.clone(), "claude-h");
    assert_eq!(up["messages"][0]["content"], "I live in Lyon.");

    // A fallback from the Claude to another provider gets none of them, tools' included.
    let up = upstream(three, "gpt41");
    assert_eq!(up["tools"][0]["function"]["name"], "f");
    assert!(!Value::Object(up).to_string().contains("cache_control"));
}
