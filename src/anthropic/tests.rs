//! The translations, on their own: requests, answers, streams (the event order rules) and
//! errors.

use serde_json::{Map, Value, json};

use super::answer::{self, stop_reason, tool_input};
use super::request::to_chat;
use super::stream::Translator;
use super::{error, request};
use crate::chat::answer::{Answer, ToolCall, Usage};
use crate::chat::stream::Chunk;
use crate::chat::usage::PromptDetails;
use crate::error::Error;

mod cache_marks;
mod content_parts;
mod options;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn chat(v: Value) -> Map<String, Value> {
    to_chat(&obj(v), false).unwrap()
}

#[test]
fn system_messages_and_options_map_onto_chat() {
    let out = chat(
        json!({"model": "claude-h", "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["a", "b", "c", "d", "e"],
        "metadata": {"user_id": "u-1"}, "thinking": {"type": "enabled", "budget_tokens": 1000},
        "stream": true, "session_id": "s1", "timeout": 30, "retries": 2, "service_tier": "auto"}),
    );
    assert_eq!(
        out["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(
        (out["model"].clone(), out["max_tokens"].clone()),
        (json!("claude-h"), json!(50))
    );
    assert_eq!(
        (out["temperature"].clone(), out["top_p"].clone()),
        (json!(0.2), json!(0.9))
    );
    assert_eq!(
        out["stop"],
        json!(["a", "b", "c", "d"]),
        "OpenAI takes at most 4"
    );
    assert_eq!(out["user"], "u-1");
    for (k, v) in [
        ("stream", json!(true)),
        ("session_id", json!("s1")),
        ("timeout", json!(30)),
        ("retries", json!(2)),
    ] {
        assert_eq!(out[k], v, "{k}");
    }
    for k in [
        "top_k",
        "thinking",
        "metadata",
        "service_tier",
        "stop_sequences",
        "system",
    ] {
        assert!(!out.contains_key(k), "{k} must not go upstream");
    }
}

#[test]
fn system_blocks_and_system_entries_fold_into_one_first_message() {
    let body = json!({"max_tokens": 5, "system": [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "B"}],
        "messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "C"}]});
    let plain = to_chat(&obj(body.clone()), false).unwrap();
    assert_eq!(
        plain["messages"][0],
        json!({"role": "system", "content": "A\n\nB\n\nC"})
    );
    assert_eq!(plain["messages"].as_array().unwrap().len(), 2);
    // For Claude the cache mark is kept, so the parts stay parts.
    let claude = to_chat(&obj(body), true).unwrap();
    assert_eq!(
        claude["messages"][0]["content"][0],
        json!({"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}})
    );
    assert_eq!(
        claude["messages"][0]["content"].as_array().unwrap().len(),
        3
    );
}

#[test]
fn content_blocks_images_tools_and_results() {
    let out = chat(json!({"max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
            {"type": "tool_use", "id": "t2", "name": "g", "input": {}}]},
        {"role": "user", "content": [{"type": "text", "text": "and?"},
            {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
            {"type": "tool_result", "tool_use_id": "t2", "is_error": true,
                "content": [{"type": "text", "text": "boom"}, {"type": "text", "text": "again"}]}]}]}));
    let m = out["messages"].as_array().unwrap();
    assert_eq!(
        m[0]["content"],
        json!([{"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}])
    );
    assert_eq!(m[1]["content"], "Let me check.", "thinking dropped");
    assert_eq!(
        m[1]["tool_calls"],
        json!([
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
        {"id": "t2", "type": "function", "function": {"name": "g", "arguments": "{}"}}])
    );
    assert_eq!(
        m[2],
        json!({"role": "tool", "tool_call_id": "t1", "content": "42"})
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "t2", "content": "Error: boom\nagain"})
    );
    assert_eq!(
        m[4],
        json!({"role": "user", "content": "and?"}),
        "the rest of the turn after its results"
    );
    assert_eq!(m.len(), 5);
    let only_tools = chat(
        json!({"max_tokens": 5, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}]}),
    );
    assert_eq!(only_tools["messages"][0]["content"], Value::Null);
}

#[test]
fn images_a_tool_returned_follow_in_a_user_message() {
    let out = chat(json!({"max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "shot.png"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
            {"type": "text", "text": "what is on it?"}]}]}));
    let m = out["messages"].as_array().unwrap();
    assert_eq!(
        m[1],
        json!({"role": "tool", "tool_call_id": "t1",
            "content": "shot.png\n[image: in the next message]"})
    );
    assert_eq!(
        m[2],
        json!({"role": "user", "content": [
            {"type": "text", "text": "The images the tool call t1 returned:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "what is on it?"}]})
    );
    assert_eq!(m.len(), 3);
    // The images go first also when the user's text stands before the result.
    let out = chat(json!({"max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "what is on it?"},
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}]}));
    assert_eq!(
        out["messages"][2]["content"][0]["text"],
        "The images the tool call t1 returned:"
    );
    assert_eq!(out["messages"][2]["content"][2]["text"], "what is on it?");
    // A broken image in a tool result is the client's error, said as such.
    let e = to_chat(
        &obj(json!({"max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "image", "source": {}}]}]}]})),
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("messages.0.content.0"), "{e}");
}

#[test]
fn assistant_turns_of_thinking_only_are_left_out_and_texts_are_set_apart() {
    let c = chat(json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "redacted_thinking", "data": "x"}]},
        {"role": "user", "content": "go on"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
            {"type": "text", "text": "Done."}]},
        {"role": "assistant", "content": ""}]}));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "user", "content": "q"},
            {"role": "user", "content": "go on"},
            {"role": "assistant", "content": "Let me look.\n\nDone.",
             "tool_calls": [{"id": "t1", "type": "function",
                             "function": {"name": "f", "arguments": "{}"}}]}])
    );
}

#[test]
fn tools_and_tool_choice() {
    let tools = json!([{"name": "f", "description": "d", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]);
    let out = chat(
        json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": tools,
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true}}),
    );
    assert_eq!(
        out["tools"],
        json!([{"type": "function", "function": {"name": "f", "description": "d",
        "parameters": {"type": "object"}}}]),
        "server tools are skipped"
    );
    assert_eq!(
        out["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(out["parallel_tool_calls"], false);
    for (choice, want) in [
        ("auto", json!("auto")),
        ("any", json!("required")),
        ("none", json!("none")),
    ] {
        let out = chat(
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": choice}}),
        );
        assert_eq!(out["tool_choice"], want, "{choice}");
    }
    let only_server = chat(
        json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "bash_20250124", "name": "bash"}], "tool_choice": {"type": "any"}}),
    );
    assert!(!only_server.contains_key("tools") && !only_server.contains_key("tool_choice"));
}

#[test]
fn bad_requests_say_what_to_fix() {
    let bad = |v: Value| request::to_chat(&obj(v), false).unwrap_err();
    let hi = json!([{"role": "user", "content": "hi"}]);
    for (body, needle) in [
        (json!({"messages": hi}), "max_tokens: Field required"),
        (json!({"max_tokens": 0, "messages": hi}), "max_tokens"),
        (json!({"max_tokens": "9", "messages": hi}), "max_tokens"),
        (json!({"max_tokens": 9}), "messages: Field required"),
        (json!({"max_tokens": 9, "messages": []}), "at least one"),
        (
            json!({"max_tokens": 9, "messages": [{"role": "user", "content": [{"type": "thinking", "thinking": "s"}]}]}),
            "nothing to send: no message has a text",
        ),
        (
            json!({"max_tokens": 9, "messages": [{"role": "user", "content": [{"type": "container_upload", "file_id": "f"}]}]}),
            "messages.0.content.0: content blocks of type 'container_upload' are not supported",
        ),
        (
            json!({"max_tokens": 9, "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]}),
            "messages.0.content.0: a document by URL",
        ),
        (
            json!({"max_tokens": 9, "messages": [{"role": "user", "content": [{"type": "search_result", "title": "t", "content": "x"}]}]}),
            "messages.0.content.0: content must be a list of text blocks",
        ),
        (
            json!({"max_tokens": 9, "messages": [{"role": "user", "content": 5}]}),
            "messages.0",
        ),
        (
            json!({"max_tokens": 9, "messages": [{"role": "bot", "content": "x"}]}),
            "role 'bot'",
        ),
        (
            json!({"max_tokens": 9, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}),
            "messages.0.content.0",
        ),
        (
            json!({"max_tokens": 9, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
            "tool_use_id",
        ),
        (
            json!({"max_tokens": 9, "messages": hi, "system": 7}),
            "system",
        ),
        (
            json!({"max_tokens": 9, "messages": hi, "stop_sequences": "x"}),
            "stop_sequences",
        ),
        (
            json!({"max_tokens": 9, "messages": hi, "tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "maybe"}}),
            "tool_choice",
        ),
    ] {
        let e = bad(body.clone());
        assert_eq!(e.status(), 400, "{body}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
}

#[test]
fn answers_become_messages() {
    let answer = Answer {
        content: json!("Sure."),
        tool_calls: vec![
            ToolCall {
                id: "c1".into(),
                name: "f".into(),
                arguments: "{\"a\":1}".into(),
            },
            ToolCall {
                id: String::new(),
                name: "g".into(),
                arguments: "not json".into(),
            },
        ],
        finish_reason: Some("tool_calls".into()),
        usage: Usage {
            prompt_tokens: Some(100),
            completion_tokens: Some(7),
            prompt_tokens_details: Some(PromptDetails {
                cached_tokens: Some(60),
                ..PromptDetails::default()
            }),
        },
        reasoning: "Let me think.".into(),
        refusal: String::new(),
    };
    // Without thinking enabled, the reasoning is left out.
    let m = message(&answer, "claude-h", false);
    assert!(m["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        (m["type"].clone(), m["role"].clone(), m["model"].clone()),
        (json!("message"), json!("assistant"), json!("claude-h"))
    );
    assert_eq!(m["content"][0], json!({"type": "text", "text": "Sure."}));
    assert_eq!(
        m["content"][1],
        json!({"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}})
    );
    assert_eq!(
        m["content"][2]["input"],
        json!({}),
        "unparsable arguments: {{}}"
    );
    assert!(
        m["content"][2]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_")
    );
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(m["stop_sequence"], Value::Null);
    assert_eq!(m["usage"]["input_tokens"], 40, "cached tokens apart");
    assert_eq!(m["usage"]["cache_read_input_tokens"], 60);
    assert_eq!(m["usage"]["output_tokens"], 7);
    let thought = message(&answer, "claude-h", true);
    assert_eq!(
        thought["content"][0],
        json!({"type": "thinking", "thinking": "Let me think.", "signature": ""})
    );
    assert_eq!(thought["content"][1], m["content"][0]);
    let empty = message(&Answer::default(), "x", true);
    assert_eq!(empty["content"], json!([]));
    // No usage reported: the gateway's estimate, never 0.
    let unreported = serde_json::to_value(answer::message(&Answer::default(), "x", false, 42));
    assert_eq!(unreported.unwrap()["usage"]["input_tokens"], 42);
    assert_eq!(empty["stop_reason"], "end_turn");
    for (f, tools, want) in [
        (Some("stop"), false, "end_turn"),
        (Some("length"), false, "max_tokens"),
        (Some("content_filter"), false, "refusal"),
        (Some("stop"), true, "tool_use"),
        (Some("tool_calls"), true, "tool_use"),
        (Some("tool_calls"), false, "end_turn"),
        (Some("function_call"), false, "end_turn"),
        (Some("odd"), false, "end_turn"),
    ] {
        assert_eq!(stop_reason(f, tools), want);
    }
    assert_eq!(tool_input("[1]").get(), "{}");
}

/// The answer as a client reads it.
fn message(a: &Answer, model: &str, thinking: bool) -> Value {
    serde_json::to_value(answer::message(a, model, thinking, 0)).unwrap()
}

/// A tool call's arguments reach the client as the model wrote them: through an f64, a
/// number past 2^64 would change (or turn into a float).
#[test]
fn tool_input_is_what_the_model_wrote() {
    let written = r#"{"id": 12345678901234567890123, "neg": -9223372036854775809, "e": 1e5}"#;
    let a = Answer {
        tool_calls: vec![ToolCall {
            id: "c1".into(),
            name: "f".into(),
            arguments: format!("  {written}\n"),
        }],
        ..Answer::default()
    };
    let bytes = serde_json::to_vec(&answer::message(&a, "m", false, 0)).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains(&format!(r#""input":{written}"#)), "{text}");
    // Not an object, or not JSON at all (one number out of range included): `{}`.
    for bad in [
        "[1]",
        "\"x\"",
        "{\"a\":",
        "not json",
        "",
        "{\"a\": 1} trailing",
    ] {
        assert_eq!(tool_input(bad).get(), "{}", "{bad}");
    }
    assert_eq!(tool_input(r#"{"big": 1e400}"#).get(), r#"{"big": 1e400}"#);
}

/// The events a translator writes for these chunks, then the end.
fn events(chunks: &[Value], usage: Usage) -> Vec<(String, Value)> {
    events_of(Translator::new("claude-h", 42), chunks, usage)
}

fn events_of(mut t: Translator, chunks: &[Value], usage: Usage) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for c in chunks {
        t.chunk(&Chunk::parse(&c.to_string()).unwrap(), &mut out);
    }
    t.done(&usage, &mut out);
    parse_frames(&out)
}

fn parse_frames(out: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(text.ends_with("\n\n"));
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|frame| {
            let (event, data) = frame.split_once('\n').unwrap();
            let name = event.strip_prefix("event: ").unwrap().to_string();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(
                data["type"],
                name.as_str(),
                "the event name is the data's type"
            );
            (name, data)
        })
        .collect()
}

/// The `content_block` of each `content_block_start`, in order.
fn block_starts(ev: &[(String, Value)]) -> Vec<&Value> {
    ev.iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| &d["content_block"])
        .collect()
}

/// Checks the rules: deltas only for started, open blocks; one open block at a time.
fn assert_well_formed(ev: &[(String, Value)]) {
    let mut open: Option<u64> = None;
    let mut started = Vec::new();
    assert_eq!(ev[0].0, "message_start");
    assert_eq!(ev.last().unwrap().0, "message_stop");
    for (name, data) in ev {
        let index = data["index"].as_u64();
        match name.as_str() {
            "content_block_start" => {
                assert!(
                    open.is_none(),
                    "a block starts while another is open: {ev:?}"
                );
                let i = index.unwrap();
                assert_eq!(i as usize, started.len(), "indexes count up from 0");
                started.push(i);
                open = Some(i);
            }
            "content_block_delta" => {
                assert_eq!(open, index, "a delta for a block not open: {ev:?}")
            }
            "content_block_stop" => {
                assert_eq!(open, index);
                open = None;
            }
            "message_delta" => assert!(open.is_none(), "message_delta with a block open"),
            _ => {}
        }
    }
}

fn text_chunk(t: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {"content": t}}]})
}

fn tool_chunk(index: usize, id: Option<&str>, name: Option<&str>, args: &str) -> Value {
    let mut f = json!({"arguments": args});
    if let Some(n) = name {
        f["name"] = json!(n);
    }
    let mut tc = json!({"index": index, "function": f});
    if let Some(id) = id {
        tc["id"] = json!(id);
    }
    json!({"choices": [{"index": 0, "delta": {"tool_calls": [tc]}}]})
}

/// A chunk whose `content` is `json`, as it is written in JSON (escapes kept: a
/// `serde_json::Value` cannot hold half a surrogate pair).
fn raw_text_chunk(json: &str) -> String {
    format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"{json}"}}}}]}}"#)
}

/// The events for these raw chunks, then the end.
fn events_raw(payloads: &[String]) -> Vec<(String, Value)> {
    let mut t = Translator::new("claude-h", 42);
    let mut out = Vec::new();
    for p in payloads {
        t.chunk(&Chunk::parse(p).unwrap(), &mut out);
    }
    t.done(&Usage::default(), &mut out);
    parse_frames(&out)
}

/// All the `text_delta` texts, in order.
fn streamed_text(ev: &[(String, Value)]) -> String {
    ev.iter()
        .filter(|(_, d)| d["delta"]["type"] == "text_delta")
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect()
}

#[test]
fn a_surrogate_pair_split_across_two_deltas_is_one_character() {
    let ev = events_raw(&[raw_text_chunk(r"A\ud83d"), raw_text_chunk(r"\ude00B")]);
    assert_well_formed(&ev);
    assert_eq!(streamed_text(&ev), "A\u{1F600}B");
    // Halves that are not a pair stay U+FFFD: a high one followed by other text, a low one
    // after no high one, a high one at the very end, and a high one alone in its delta
    // followed by one.
    let ev = events_raw(&[
        raw_text_chunk(r"A\ud83d"),
        raw_text_chunk("B"),
        raw_text_chunk(r"\ude00C\ud83d\ud83d"),
        raw_text_chunk(r"\ud83d"),
    ]);
    assert_well_formed(&ev);
    assert_eq!(
        streamed_text(&ev),
        "A\u{fffd}B\u{fffd}C\u{fffd}\u{fffd}\u{fffd}"
    );
}

#[test]
fn a_text_stream_in_anthropics_order() {
    let ev = events(
        &[
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            text_chunk("Hel"),
            text_chunk("lo"),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}),
        ],
        Usage {
            prompt_tokens: Some(9),
            completion_tokens: Some(2),
            prompt_tokens_details: None,
        },
    );
    assert_well_formed(&ev);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &ev[0].1["message"];
    assert_eq!(start["usage"]["input_tokens"], 42, "the estimate, never 0");
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        ev[2].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(
        ev[3].1["delta"],
        json!({"type": "text_delta", "text": "Hel"})
    );
    assert_eq!(ev[6].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(ev[6].1["usage"]["output_tokens"], 2);
    assert_eq!(
        ev[6].1["usage"]["input_tokens"], 9,
        "the reported count replaces the estimate"
    );
}

#[test]
fn text_then_parallel_tool_calls_each_in_its_own_block() {
    let ev = events(
        &[
            text_chunk("Checking."),
            tool_chunk(0, Some("call_a"), Some("f"), ""),
            tool_chunk(0, None, None, "{\"x\""),
            tool_chunk(0, None, None, ":1}"),
            tool_chunk(1, Some("call_b"), None, "{"),
            tool_chunk(1, None, Some("g"), "}"),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ],
        Usage::default(),
    );
    assert_well_formed(&ev);
    let starts = block_starts(&ev);
    assert_eq!(starts[0]["type"], "text");
    assert_eq!(
        starts[1],
        &json!({"type": "tool_use", "id": "call_a", "name": "f", "input": {}})
    );
    assert_eq!(
        starts[2],
        &json!({"type": "tool_use", "id": "call_b", "name": "g", "input": {}}),
        "started once its name came"
    );
    let json_of = |index: u64| -> String {
        ev.iter()
            .filter(|(n, d)| n == "content_block_delta" && d["index"] == index)
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(json_of(1), "{\"x\":1}");
    assert_eq!(
        json_of(2),
        "{}",
        "pieces that waited for the name are sent after the start"
    );
    let delta = &ev.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert!(
        delta["usage"].get("input_tokens").is_none(),
        "not reported: the estimate stands"
    );
}

#[test]
fn odd_streams_stay_well_formed() {
    // Nothing at all: start, delta, stop.
    let ev = events(&[], Usage::default());
    assert_well_formed(&ev);
    assert_eq!(ev.len(), 4);
    // Text after a tool call opens a new text block; a late piece of a closed call is dropped.
    let ev = events(
        &[
            tool_chunk(0, Some("a"), Some("f"), "{}"),
            text_chunk("then"),
            tool_chunk(0, None, None, "late"),
            tool_chunk(1, Some("b"), Some("g"), "{}"),
        ],
        Usage::default(),
    );
    assert_well_formed(&ev);
    let kinds: Vec<&str> = block_starts(&ev)
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["tool_use", "text", "tool_use"]);
    assert!(
        !String::from_utf8_lossy(
            &serde_json::to_vec(&ev.iter().map(|e| &e.1).collect::<Vec<_>>()).unwrap()
        )
        .contains("late")
    );
    // A call whose name never comes still gets its block before the end.
    let ev = events(&[tool_chunk(0, Some("a"), None, "{}")], Usage::default());
    assert_well_formed(&ev);
    assert!(
        ev.iter()
            .any(|(n, d)| n == "content_block_start" && d["content_block"]["id"] == "a")
    );
}

#[test]
fn a_failure_mid_stream_is_an_error_event() {
    let mut t = Translator::new("m", 1);
    let mut out = Vec::new();
    t.chunk(
        &Chunk::parse(&text_chunk("a").to_string()).unwrap(),
        &mut out,
    );
    out.clear();
    t.failed(
        &error::body(&Error::Upstream {
            message: "cut".into(),
        }),
        &mut out,
    );
    let ev = parse_frames(&out);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        ev[0].1,
        json!({"type": "error", "error": {"type": "api_error", "message": "upstream error: cut"}})
    );
}

#[test]
fn errors_in_anthropics_shape_and_statuses() {
    let cases = [
        (Error::invalid("x"), 400, "invalid_request_error"),
        (
            Error::ModelNotFound {
                model: "m".into(),
                reason: "r".into(),
            },
            404,
            "not_found_error",
        ),
        (
            Error::BodyTooLarge { limit: 1 << 20 },
            413,
            "request_too_large",
        ),
        (
            Error::IpNotAllowed {
                ip: "10.0.0.1".parse().unwrap(),
            },
            403,
            "permission_error",
        ),
        (
            Error::CircuitOpen {
                model: "m".into(),
                retry_after_s: 3,
            },
            529,
            "overloaded_error",
        ),
        (
            Error::Overloaded { retry_after_s: 1 },
            529,
            "overloaded_error",
        ),
        (
            Error::RateLimited {
                message: "slow".into(),
                retry_after_s: 2,
            },
            429,
            "rate_limit_error",
        ),
        (
            Error::UpstreamClient {
                status: 401,
                message: "bad key".into(),
                kind: None,
                code: None,
                param: None,
            },
            401,
            "authentication_error",
        ),
        (
            Error::Upstream {
                message: "500".into(),
            },
            502,
            "api_error",
        ),
        (
            Error::ProviderNotConfigured { env: "ZAI_API_KEY" },
            503,
            "api_error",
        ),
    ];
    for (e, status, kind) in cases {
        let resp = error::response(&e);
        assert_eq!(resp.status, status, "{e:?}");
        let crate::http::Body::Full(body) = &resp.body else {
            panic!("a full body")
        };
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind, "{e:?}");
        assert_eq!(v["error"]["message"], e.to_string());
        assert!(
            resp.header("request-id")
                .is_some_and(|id| id.starts_with("req_"))
        );
    }
    let open = error::response(&Error::CircuitOpen {
        model: "m".into(),
        retry_after_s: 3,
    });
    assert_eq!(open.header("retry-after"), Some("3"));
    assert_eq!(open.header("x-should-retry"), Some("false"));
}

#[test]
fn reasoning_becomes_a_thinking_block_when_thinking_is_enabled() {
    let delta = |d: Value| json!({"choices": [{"index": 0, "delta": d}]});
    let chunks = [
        delta(json!({"role": "assistant", "reasoning_content": "Hmm, "})),
        delta(json!({"reasoning_content": "weather."})),
        // Ollama and OpenRouter call it `reasoning`; vLLM sends both (read once).
        delta(json!({"reasoning": " Lyon?", "reasoning_content": null})),
        delta(json!({"content": "Checking.", "reasoning_content": ""})),
        delta(
            json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "w", "arguments": "{}"}}]}),
        ),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
    ];
    let ev = events_of(
        Translator::new("m", 1).thinking(true),
        &chunks,
        Usage::default(),
    );
    assert_well_formed(&ev);
    let starts = block_starts(&ev);
    assert_eq!(
        starts[0],
        &json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    assert_eq!(
        (starts[1]["type"].as_str(), starts[2]["type"].as_str()),
        (Some("text"), Some("tool_use"))
    );
    let thinking: String = ev
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "thinking_delta")
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            d["delta"]["thinking"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(thinking, "Hmm, weather. Lyon?");
    // Not enabled: no thinking block; the text is block 0; a long reasoning left out
    // still shows as pings.
    let mut long: Vec<Value> = (0..130)
        .map(|_| delta(json!({"reasoning_content": "hmm "})))
        .collect();
    long.extend(chunks.iter().cloned());
    let ev = events(&long, Usage::default());
    assert_eq!(ev.iter().filter(|(n, _)| n == "ping").count(), 1 + 2);
    let ev = events(&chunks, Usage::default());
    assert_well_formed(&ev);
    assert!(
        ev.iter()
            .all(|(_, d)| d["delta"]["type"] != "thinking_delta")
    );
    let first = ev.iter().find(|(n, _)| n == "content_block_start").unwrap();
    assert_eq!(
        (
            first.1["index"].as_u64(),
            first.1["content_block"]["type"].as_str()
        ),
        (Some(0), Some("text"))
    );
}

#[test]
fn a_refusal_is_text_with_the_refusal_stop_reason() {
    let refused = Answer {
        refusal: "I can't help with that.".into(),
        finish_reason: Some("stop".into()),
        ..Answer::default()
    };
    let m = message(&refused, "m", false);
    assert_eq!(
        (&m["content"], &m["stop_reason"]),
        (
            &json!([{"type": "text", "text": "I can't help with that."}]),
            &json!("refusal")
        )
    );
    let delta = |d: Value| json!({"choices": [{"index": 0, "delta": d}]});
    let ev = events(
        &[
            delta(json!({"role": "assistant", "content": null, "refusal": ""})),
            delta(json!({"refusal": "I can't "})),
            delta(json!({"refusal": "help."})),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ],
        Usage::default(),
    );
    assert_well_formed(&ev);
    let text: String = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "I can't help.");
    let end = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(end.1["delta"]["stop_reason"], "refusal");
}

#[test]
fn documents_and_search_results_reach_the_model() {
    let pdf = json!({"type": "document", "title": "report.pdf",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}});
    let text = json!({"type": "document", "title": "Notes", "context": "from the wiki",
        "source": {"type": "text", "media_type": "text/plain", "data": "Lyon is in France."}});
    let content = json!({"type": "document", "source": {"type": "content", "content": [
        {"type": "text", "text": "page one"},
        {"type": "image", "source": {"type": "url", "url": "https://example.invalid/p.png"}}]}});
    let found = json!({"type": "search_result", "title": "Weather", "source": "https://w.example/lyon",
        "content": [{"type": "text", "text": "Sunny."}, {"type": "text", "text": "21 C."}]});
    let out = chat(json!({"max_tokens": 9, "messages": [{"role": "user",
        "content": [pdf, text, content, found, {"type": "text", "text": "Sum up."}]}]}));
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "report.pdf"}},
            {"type": "text", "text": "Notes\nfrom the wiki\n\nLyon is in France."},
            {"type": "text", "text": "page one"},
            {"type": "image_url", "image_url": {"url": "https://example.invalid/p.png"}},
            {"type": "text", "text": "Weather (https://w.example/lyon)\nSunny.\n21 C."},
            {"type": "text", "text": "Sum up."}
        ])
    );
    // A PDF without a title still has a file name; a Claude upstream keeps its mark.
    let marked = json!({"max_tokens": 9, "messages": [{"role": "user", "content": [
        {"type": "document", "cache_control": {"type": "ephemeral"},
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}]});
    let out = to_chat(&obj(marked), true).unwrap();
    let part = &out["messages"][0]["content"][0];
    assert_eq!(
        (&part["file"]["filename"], &part["cache_control"]["type"]),
        (&json!("document.pdf"), &json!("ephemeral"))
    );
}

#[test]
fn documents_in_a_tool_result_go_as_text_or_after_it_never_as_base64_text() {
    let result = json!({"type": "tool_result", "tool_use_id": "call_r", "content": [
        {"type": "text", "text": "read report.pdf and notes.txt"},
        {"type": "document", "title": "report.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Lyon."}},
        {"type": "search_result", "title": "Weather", "source": "w", "content": [{"type": "text", "text": "Sunny."}]},
        {"type": "tool_reference", "tool_name": "get_weather"}]});
    let out = chat(json!({"max_tokens": 9, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_r", "name": "read", "input": {}}]},
        {"role": "user", "content": [result]}]}));
    let tool = &out["messages"][1];
    assert_eq!(
        tool["content"],
        "read report.pdf and notes.txt\n[document: in the next message]\nLyon.\nWeather (w)\nSunny.\n[tool: get_weather]"
    );
    assert_eq!(
        out["messages"][2]["content"],
        json!([{"type": "text", "text": "The files the tool call call_r returned:"},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "report.pdf"}}])
    );
    let unknown = json!({"max_tokens": 9, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "c", "content": [{"type": "blob", "data": "AAAA"}]}]}]});
    let e = to_chat(&obj(unknown), false).unwrap_err();
    assert!(e.to_string().contains("'blob' in a tool_result"), "{e}");
}

/// A prompt too long for the context is told in Anthropic's words, which Claude Code acts
/// on (it offers to compact), with the counts where they are known and the provider's own
/// wording kept after them.
#[test]
fn a_prompt_too_long_is_told_in_anthropics_words() {
    let message = |e: &Error| {
        error::body(e)["error"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let upstream = |code: Option<&str>, text: &str| Error::UpstreamClient {
        status: 400,
        message: text.to_string(),
        kind: Some("invalid_request_error".into()),
        code: code.map(str::to_string),
        param: None,
    };
    let openai = "This model's maximum context length is 128000 tokens. However, your messages \
                  resulted in 130532 tokens. Please reduce the length of the messages.";
    assert_eq!(
        message(&upstream(Some("context_length_exceeded"), openai)),
        format!("prompt is too long: 130532 tokens > 128000 maximum. {openai}")
    );
    // Another wording, without a code: the opening, the counts left out.
    let vllm = "Input is too long for the model's context window";
    assert_eq!(
        message(&upstream(None, vllm)),
        format!("prompt is too long: {vllm}")
    );
    // Already Anthropic's (a Claude model behind an OpenAI-compatible API): as it is.
    let claude = "prompt is too long: 210118 tokens > 200000 maximum";
    assert_eq!(message(&upstream(None, claude)), claude);
    // The gateway's own estimate.
    let own = Error::ContextTooLong {
        model: "kimi".into(),
        tokens: 140000,
        limit: 131072,
    };
    assert_eq!(
        message(&own),
        format!("prompt is too long: 140000 tokens > 131072 maximum. {own}")
    );
    assert_eq!(error::body(&own)["error"]["type"], "invalid_request_error");
    // Other 4xx are left as they are.
    let other = upstream(Some("invalid_value"), "Invalid 'temperature': too high");
    assert_eq!(message(&other), "Invalid 'temperature': too high");
    // llama.cpp's llama-server: its wordings, its error type.
    for (said, counts) in [
        (
            "request (5000 tokens) exceeds the available context size (4096 tokens), try increasing it",
            Some((5000, 4096)),
        ),
        (
            "request (5000 tokens) exceeds context size (4096 tokens)",
            Some((5000, 4096)),
        ),
        (
            "input (9000 tokens) is larger than the max context size (8192 tokens)",
            Some((9000, 8192)),
        ),
        (
            "the request exceeds the available context size, try increasing it",
            None,
        ),
    ] {
        let want = match counts {
            Some((t, l)) => format!("prompt is too long: {t} tokens > {l} maximum. {said}"),
            None => format!("prompt is too long: {said}"),
        };
        assert_eq!(message(&upstream(None, said)), want);
    }
    let typed = Error::UpstreamClient {
        status: 400,
        message: "context overflow".into(),
        kind: Some("exceed_context_size_error".into()),
        code: None,
        param: None,
    };
    assert_eq!(message(&typed), "prompt is too long: context overflow");
    // The messages fit and the completion asked for does not: no prompt is too long, and
    // Claude Code must not compact for it.
    let completion = "This model's maximum context length is 128000 tokens. However, you requested \
                      140000 tokens (8000 in the messages, 132000 in the completion).";
    assert_eq!(
        message(&upstream(Some("context_length_exceeded"), completion)),
        completion
    );
    // Messages that fill the window exactly leave no room for any answer: too long.
    let full = "This model's maximum context length is 128000 tokens. However, you requested \
                128500 tokens (128000 in the messages, 500 in the completion).";
    assert!(
        message(&upstream(Some("context_length_exceeded"), full))
            .starts_with("prompt is too long: 128000 tokens > 128000 maximum. ")
    );
    // The messages themselves too long: their count, not the total.
    let both = "This model's maximum context length is 128000 tokens. However, you requested \
                140000 tokens (130000 in the messages, 10000 in the completion).";
    assert!(
        message(&upstream(Some("context_length_exceeded"), both))
            .starts_with("prompt is too long: 130000 tokens > 128000 maximum. ")
    );
    // Not ASCII before a number: no panic.
    assert!(
        message(&upstream(
            None,
            "maximum context length is 10 tokens; é50 in the messages"
        ))
        .starts_with("prompt is too long")
    );
}

/// White space before a tool call's JSON is left out of its deltas: the anthropic SDK
/// parses what it has after each one, and a first delta of only a blank fails there.
#[test]
fn a_tool_calls_json_starts_without_blank_deltas() {
    let tc = |args: &str| {
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": args}}]}}]})
    };
    let chunks = [
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c1", "function": {"name": "f", "arguments": " "}}]}}]}),
        tc("\n "),
        tc(" {\"a\": "),
        tc(" 1}"),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
    ];
    let ev = events_of(Translator::new("m", 1), &chunks, Usage::default());
    assert_well_formed(&ev);
    let partials: Vec<&str> = ev
        .iter()
        .filter_map(|(_, e)| e["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(partials, ["{\"a\": ", " 1}"], "blanks inside the JSON stay");
}

/// A blank piece of text in the middle of a call's arguments (a line break some models
/// send) neither closes the call's block nor cuts its arguments.
#[test]
fn a_blank_between_a_calls_pieces_keeps_the_call_whole() {
    let tc = |args: &str| {
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": args}}]}}]})
    };
    let chunks = [
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\":"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "\n"}}]}),
        tc("1}"),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
    ];
    let ev = events_of(Translator::new("m", 1), &chunks, Usage::default());
    assert_well_formed(&ev);
    assert_eq!(block_starts(&ev).len(), 1, "the call's block only");
    let json: String = ev
        .iter()
        .filter_map(|(_, e)| e["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(json, "{\"a\":1}");
}
