//! The translations, on their own: requests and complete answers (the streams are in
//! `stream_tests`).

use serde_json::{Map, Value, json};

use super::answer::{self, Envelope};
use super::request::{echo, to_chat};
use crate::chat::answer::{Answer, ToolCall, Usage};
use crate::chat::usage::PromptDetails;
use crate::error::Error;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn chat(v: Value) -> Map<String, Value> {
    to_chat(&obj(v)).unwrap()
}

fn bad(v: Value) -> Error {
    to_chat(&obj(v)).unwrap_err()
}

#[test]
fn a_string_input_with_instructions_and_options() {
    let out = chat(
        json!({"model": "gpt41", "input": "hi", "instructions": "Be brief.",
        "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9, "user": "u-1",
        "metadata": {"k": "v"}, "store": true, "stream": true, "session_id": "s1", "timeout": 30,
        "retries": 2, "reasoning": {"effort": "low"}, "truncation": "auto", "include": [],
        "service_tier": "auto", "prompt_cache_key": "x", "stream_options": {"include_obfuscation": false}}),
    );
    assert_eq!(
        out["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );
    for (k, v) in [
        ("model", json!("gpt41")),
        ("max_tokens", json!(50)),
        ("temperature", json!(0.2)),
        ("top_p", json!(0.9)),
        ("user", json!("u-1")),
        ("stream", json!(true)),
        ("session_id", json!("s1")),
        ("timeout", json!(30)),
        ("retries", json!(2)),
        ("reasoning_effort", json!("low")),
    ] {
        assert_eq!(out[k], v, "{k}");
    }
    for k in [
        "input",
        "instructions",
        "max_output_tokens",
        "metadata",
        "store",
        "reasoning",
        "truncation",
        "include",
        "service_tier",
        "prompt_cache_key",
        "stream_options",
        "text",
    ] {
        assert!(!out.contains_key(k), "{k} must not go upstream");
    }
    let plain = chat(json!({"model": "m", "input": "hi", "instructions": ""}));
    assert_eq!(
        plain["messages"],
        json!([{"role": "user", "content": "hi"}])
    );
    let e = bad(json!({"model": "m", "input": "x", "reasoning": {"effort": 3}}));
    assert!(e.to_string().contains("reasoning.effort"), "{e}");
    let plain = chat(json!({"model": "m", "input": "x", "reasoning": {"summary": "auto"}}));
    assert!(plain.get("reasoning_effort").is_none());
    let echoed = echo(&obj(
        json!({"model": "m", "input": "x", "reasoning": {"effort": "high"}}),
    ));
    assert_eq!(
        echoed["reasoning"],
        json!({"effort": "high", "summary": null})
    );
    assert_eq!(
        echo(&obj(json!({"model": "m", "input": "x"})))["reasoning"],
        Value::Null
    );
}

#[test]
fn message_items_and_their_parts() {
    let out = chat(json!({"model": "m", "input": [
        {"role": "developer", "content": "Use metric units."},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be kind."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
            {"type": "input_image", "image_url": {"url": "https://x/cat.png"}},
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}]},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "A cat.", "annotations": []},
                {"type": "refusal", "refusal": "No more."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []}]}));
    let m = out["messages"].as_array().unwrap();
    assert_eq!(
        m[0],
        json!({"role": "system", "content": "Use metric units."}),
        "developer is sent as system, in place"
    );
    assert_eq!(m[1], json!({"role": "system", "content": "Be kind."}));
    assert_eq!(
        m[2]["content"],
        json!([{"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}}])
    );
    assert_eq!(
        m[3],
        json!({"role": "assistant", "content": "A cat.\n\nNo more."})
    );
    assert_eq!(
        m[4],
        json!({"role": "user", "content": "a\n\nb"}),
        "plain text stays a string"
    );
    assert_eq!(m.len(), 5, "reasoning items are dropped");
}

#[test]
fn function_calls_and_their_outputs() {
    let out = chat(json!({"model": "m", "input": [
        {"role": "user", "content": "weather in Lyon and Paris?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather",
            "arguments": "{\"city\":\"Lyon\"}", "status": "completed"},
        {"type": "function_call", "call_id": "call_b", "name": "weather", "arguments": {"city": "Paris"}},
        {"type": "function_call_output", "call_id": "call_a", "output": "12 C"},
        {"type": "function_call_output", "call_id": "call_b",
            "output": [{"type": "input_text", "text": "9 C"}, {"type": "input_image", "image_url": "x"}]},
        {"type": "function_call", "call_id": "call_c", "name": "done"}]}));
    let m = out["messages"].as_array().unwrap();
    assert_eq!(m[1]["content"], "Checking.");
    assert_eq!(
        m[1]["tool_calls"],
        json!([
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Lyon\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]),
        "calls in a row join the assistant message before them"
    );
    assert_eq!(
        m[2],
        json!({"role": "tool", "tool_call_id": "call_a", "content": "12 C"})
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "call_b", "content": "9 C\n[image: in the next message]"})
    );
    assert_eq!(m[4]["role"], "user", "the image the tool returned");
    assert_eq!(m[4]["content"][1]["image_url"]["url"], "x");
    assert_eq!(
        m[5],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_c", "type": "function", "function": {"name": "done", "arguments": "{}"}}]}),
        "after a tool message, a new assistant message"
    );
    assert_eq!(m.len(), 6);
}

#[test]
fn function_tools_hosted_tools_and_tool_choice() {
    let tools = json!([
        {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true},
        {"type": "function", "name": "g", "parameters": null, "strict": false},
        {"type": "web_search_preview"}, {"type": "file_search", "vector_store_ids": ["v"]},
        {"type": "custom", "name": "apply_patch"}]);
    let out = chat(json!({"model": "m", "input": "x", "tools": tools,
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": false}));
    assert_eq!(
        out["tools"],
        json!([
            {"type": "function", "function": {"name": "f", "description": "d",
                "parameters": {"type": "object"}, "strict": true}},
            {"type": "function", "function": {"name": "g",
                "parameters": {"type": "object", "properties": {}}}}]),
        "hosted tools are skipped; strict only when true"
    );
    assert_eq!(
        out["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(out["parallel_tool_calls"], false);
    let f = json!([{"type": "function", "name": "f"}]);
    for (choice, want) in [
        (json!("auto"), json!("auto")),
        (json!("none"), json!("none")),
        (json!("required"), json!("required")),
        (
            json!({"type": "allowed_tools", "mode": "required", "tools": []}),
            json!("required"),
        ),
    ] {
        let out = chat(json!({"model": "m", "input": "x", "tools": f, "tool_choice": choice}));
        assert_eq!(out["tool_choice"], want, "{choice}");
    }
    let hosted_choice = chat(
        json!({"model": "m", "input": "x", "tools": f, "tool_choice": {"type": "web_search_preview"}}),
    );
    assert!(!hosted_choice.contains_key("tool_choice"));
    let only_hosted = chat(json!({"model": "m", "input": "x",
        "tools": [{"type": "web_search"}], "tool_choice": "required", "parallel_tool_calls": true}));
    for k in ["tools", "tool_choice", "parallel_tool_calls"] {
        assert!(!only_hosted.contains_key(k), "{k} without a function tool");
    }
}

#[test]
fn text_format_becomes_response_format() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let out = chat(
        json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema",
        "name": "thing", "schema": schema, "strict": true}, "verbosity": "low"}}),
    );
    assert_eq!(
        out["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": true}})
    );
    let out =
        chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}));
    assert_eq!(out["response_format"], json!({"type": "json_object"}));
    let out = chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}));
    assert!(!out.contains_key("response_format"));
}

#[test]
fn stateful_fields_are_refused_with_what_to_do_instead() {
    let e = bad(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}));
    assert_eq!((e.status(), e.code()), (400, "invalid_request"));
    assert_eq!(e.param(), Some("previous_response_id"));
    let msg = e.to_string();
    assert!(
        msg.contains("stateless") && msg.contains("input") && msg.contains("session_id"),
        "{msg}"
    );
    for (field, value) in [
        ("conversation", json!("conv_1")),
        ("background", json!(true)),
        ("prompt", json!({"id": "pmpt_1"})),
    ] {
        let mut body = json!({"model": "m", "input": "x"});
        body[field] = value;
        assert_eq!(bad(body).param(), Some(field));
    }
    // Null or false is no state.
    chat(
        json!({"model": "m", "input": "x", "previous_response_id": null,
        "background": false, "conversation": null, "store": false}),
    );
}

#[test]
fn bad_requests_say_what_to_fix() {
    let x = || json!([{"role": "user", "content": "x"}]);
    for (body, param, needle) in [
        (json!({"model": "m"}), "input", "input: Field required"),
        (json!({"model": "m", "input": []}), "input", "at least one"),
        (
            json!({"model": "m", "input": 5}),
            "input",
            "string or a list",
        ),
        (json!({"model": "m", "input": [5]}), "input", "input[0]"),
        (
            json!({"model": "m", "input": [{"content": "x"}]}),
            "input",
            "role is required",
        ),
        (
            json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
            "input",
            "role 'tool'",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": 5}]}),
            "input",
            "content",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            "input",
            "input[0]: content[0]: content parts of type 'input_audio'",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
            "input",
            "image_url",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": 5}]}]}),
            "input",
            "input_image needs image_url, a URL or a data URL (as a string)",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            "input",
            "file_data",
        ),
        (
            json!({"model": "m", "input": [{"role": "developer", "content": [{"type": "input_image", "image_url": "u"}]}]}),
            "input",
            "input[0]: developer messages may only hold text parts",
        ),
        (
            json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input",
            "item_reference",
        ),
        (
            json!({"model": "m", "input": [{"type": "computer_call_output"}]}),
            "input",
            "'computer_call_output' are not supported",
        ),
        (
            json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}),
            "input",
            "call_id",
        ),
        (
            json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}),
            "input",
            "output",
        ),
        (
            json!({"model": "m", "input": x(), "instructions": 5}),
            "instructions",
            "string",
        ),
        (
            json!({"model": "m", "input": x(), "tools": {}}),
            "tools",
            "list",
        ),
        (
            json!({"model": "m", "input": x(), "tools": [{"type": "function"}]}),
            "tools",
            "tools[0].name",
        ),
        (
            json!({"model": "m", "input": x(), "tools": [{"name": "f"}]}),
            "tools",
            "tools[0].type",
        ),
        (
            json!({"model": "m", "input": x(), "tools": [{"type": "function", "name": "f"}], "tool_choice": "maybe"}),
            "tool_choice",
            "tool_choice",
        ),
        (
            json!({"model": "m", "input": x(), "max_output_tokens": 0}),
            "max_output_tokens",
            "above 0",
        ),
        (
            json!({"model": "m", "input": x(), "max_output_tokens": "9"}),
            "max_output_tokens",
            "whole number",
        ),
        (
            json!({"model": "m", "input": x(), "temperature": "hot"}),
            "temperature",
            "number",
        ),
        (
            json!({"model": "m", "input": x(), "top_p": "x"}),
            "top_p",
            "number",
        ),
        (
            json!({"model": "m", "input": x(), "user": 5}),
            "user",
            "string",
        ),
        (
            json!({"model": "m", "input": x(), "metadata": "x"}),
            "metadata",
            "object",
        ),
        (
            json!({"model": "m", "input": x(), "text": {"format": {"type": "json_schema"}}}),
            "text",
            "name",
        ),
        (
            json!({"model": "m", "input": x(), "text": {"format": {"type": "yaml"}}}),
            "text",
            "type",
        ),
    ] {
        let e = bad(body.clone());
        assert_eq!(e.status(), 400, "{body}");
        assert_eq!(e.param(), Some(param), "{body}: {e}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
}

#[test]
fn the_echo_repeats_the_request_with_openai_defaults() {
    let e = echo(&obj(json!({"model": "m", "input": "x"})));
    assert_eq!(e["tool_choice"], "auto");
    assert_eq!(e["parallel_tool_calls"], true);
    assert_eq!(e["tools"], json!([]));
    assert_eq!(e["text"], json!({"format": {"type": "text"}}));
    assert_eq!(e["metadata"], json!({}));
    assert_eq!(e["store"], false);
    assert_eq!(e["truncation"], "disabled");
    for k in [
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "user",
        "previous_response_id",
    ] {
        assert_eq!(e[k], Value::Null, "{k}");
    }
    let e = echo(&obj(
        json!({"model": "m", "input": "x", "store": true, "instructions": "I",
        "max_output_tokens": 9, "metadata": {"a": "b"}, "temperature": 0.5, "tool_choice": "required",
        "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}),
    ));
    assert_eq!(e["store"], false, "the gateway stores nothing");
    assert_eq!(
        (e["instructions"].clone(), e["max_output_tokens"].clone()),
        (json!("I"), json!(9))
    );
    assert_eq!(e["metadata"], json!({"a": "b"}));
    assert_eq!(e["tools"], json!([{"type": "function", "name": "f"}]));
    assert_eq!(e["tool_choice"], "required");
}

pub(super) fn envelope() -> Envelope {
    Envelope::new("gpt41", echo(&obj(json!({"model": "gpt41", "input": "x"}))))
}

#[test]
fn answers_become_response_objects() {
    let answer = Answer {
        content: json!("Sure."),
        tool_calls: vec![
            ToolCall {
                id: "call_1".into(),
                name: "f".into(),
                arguments: "{\"a\":1}".into(),
            },
            ToolCall {
                id: String::new(),
                name: "g".into(),
                arguments: "not json".into(),
            },
            ToolCall {
                id: "call_3".into(),
                name: "now".into(),
                arguments: String::new(),
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
        ..Answer::default()
    };
    let env = envelope();
    let r = answer::response(&answer, &env);
    assert_eq!(r["id"], env.id.as_str());
    assert!(env.id.starts_with("resp_"));
    assert_eq!(
        (r["object"].clone(), r["status"].clone(), r["model"].clone()),
        (json!("response"), json!("completed"), json!("gpt41"))
    );
    assert!(r["created_at"].as_u64().unwrap() > 1_600_000_000);
    assert!(r["completed_at"].is_u64());
    assert_eq!(r["incomplete_details"], Value::Null);
    assert_eq!(r["error"], Value::Null);
    assert_eq!(r["tool_choice"], "auto");
    let out = r["output"].as_array().unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(
        out[3]["arguments"], "{}",
        "no arguments: JSON a client can parse"
    );
    assert_eq!(
        (
            out[0]["type"].clone(),
            out[0]["role"].clone(),
            out[0]["status"].clone()
        ),
        (json!("message"), json!("assistant"), json!("completed"))
    );
    assert!(out[0]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        out[0]["content"],
        json!([{"type": "output_text", "text": "Sure.", "annotations": []}])
    );
    assert_eq!(out[1]["type"], "function_call");
    assert!(out[1]["id"].as_str().unwrap().starts_with("fc_"));
    assert_eq!(
        (
            out[1]["call_id"].clone(),
            out[1]["name"].clone(),
            out[1]["arguments"].clone()
        ),
        (json!("call_1"), json!("f"), json!("{\"a\":1}"))
    );
    assert_eq!(out[1]["status"], "completed");
    assert!(
        out[2]["call_id"].as_str().unwrap().starts_with("call_"),
        "a call id is made up when the provider gave none"
    );
    assert_eq!(
        out[2]["arguments"], "not json",
        "arguments as the model wrote them"
    );
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 0},
            "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 107})
    );
    // Only tool calls: no message item.
    let calls = Answer {
        content: Value::Null,
        ..answer.clone()
    };
    let r = answer::response(&calls, &env);
    assert_eq!(r["output"][0]["type"], "function_call");
    // Cut at the token limit: incomplete.
    let cut = Answer {
        content: json!("Once upon"),
        finish_reason: Some("length".into()),
        ..Answer::default()
    };
    let r = answer::response(&cut, &env);
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["completed_at"], Value::Null);
    assert_eq!(
        r["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(r["output"][0]["status"], "incomplete");
    assert_eq!(
        answer::status(Some("content_filter")).1,
        json!({"reason": "content_filter"})
    );
    // Nothing at all: one empty message, usage all 0.
    let r = answer::response(&Answer::default(), &env);
    assert_eq!(r["output"][0]["content"][0]["text"], "");
    assert_eq!(r["usage"]["total_tokens"], 0);
    let thought = answer::response(
        &Answer {
            content: json!("Hi"),
            reasoning: "Because.".into(),
            ..Answer::default()
        },
        &envelope(),
    );
    assert_eq!(
        (
            &thought["output"][0]["type"],
            &thought["output"][0]["content"]
        ),
        (
            &json!("reasoning"),
            &json!([{"type": "reasoning_text", "text": "Because."}])
        )
    );
    assert_eq!(thought["output"][1]["type"], "message");
    assert_eq!(thought["output"][1]["content"][0]["text"], "Hi");
    let refused = answer::response(
        &Answer {
            refusal: "No.".into(),
            ..Answer::default()
        },
        &envelope(),
    );
    assert_eq!(
        refused["output"],
        json!([{"type": "message", "id": refused["output"][0]["id"], "status": "completed",
            "role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}])
    );
}

#[test]
fn cache_writes_are_reported_apart_and_in_the_input() {
    let u: Usage = serde_json::from_value(json!({"prompt_tokens": 100, "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 30}}))
    .unwrap();
    assert_eq!(
        answer::usage(&u),
        json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 30},
            "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 105})
    );
}

#[test]
fn images_a_function_returned_follow_its_run_of_tool_messages() {
    let image = json!({"type": "input_image", "image_url": "data:image/png;base64,AAAA"});
    let out = chat(json!({"model": "m", "input": [
        {"role": "user", "content": "look"},
        {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "ls", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "done"}, image]},
        {"type": "function_call_output", "call_id": "c2", "output": "a.txt"},
        {"role": "user", "content": "what is on it?"}]}));
    let m = out["messages"].as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "tool", "user", "user"]);
    assert_eq!(m[2]["content"], "done\n[image: in the next message]");
    assert_eq!(
        m[4]["content"],
        json!([{"type": "text", "text": "An image the function call c1 returned:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    );
    assert_eq!(m[5]["content"], "what is on it?");
    // An image without a URL is the client's error.
    let e = bad(json!({"model": "m", "input": [
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_image", "file_id": "f"}]}]}));
    assert!(e.to_string().contains("input[0]"), "{e}");
}
