//! Request fields beside the messages: `metadata.user_id` within OpenAI's 64 characters,
//! structured outputs (`output_config.format`, the beta's `output_format`, strict tools),
//! `output_config.effort` (not sent), and a `tool_choice` naming a skipped server tool.

use serde_json::{Value, json};

use super::super::request::to_chat;
use super::{chat, obj};
use crate::util::digest::{hex, sha256};

fn with(extra: Value) -> Value {
    let mut body = json!({"model": "gpt41", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn user_for(user_id: &str) -> Value {
    chat(with(json!({"metadata": {"user_id": user_id}})))["user"].clone()
}

#[test]
fn a_user_id_over_64_characters_goes_as_its_sha256() {
    let claude_code = format!(
        "user_{}_account_0b7c7d2e-1111-2222-3333-444455556666_session_\
         9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff",
        "a".repeat(64)
    );
    let sent = user_for(&claude_code);
    assert_eq!(sent, hex(&sha256(claude_code.as_bytes())));
    assert_eq!(sent.as_str().unwrap().len(), 64);
    assert_eq!(user_for(&claude_code), sent, "the same user, the same hash");
    assert_ne!(
        user_for(&claude_code.replace("session_9", "session_8")),
        sent
    );
    let json_blob = r#"{"device_id":"d1e2","account_uuid":"0b7c7d2e-1111-2222-3333-444455556666","session_id":"9f8e"}"#;
    assert_eq!(user_for(json_blob), hex(&sha256(json_blob.as_bytes())));

    let short = "u".repeat(64);
    assert_eq!(
        user_for(&short),
        short.as_str(),
        "64 characters go as they are"
    );
    let long = "u".repeat(65);
    assert_eq!(user_for(&long), hex(&sha256(long.as_bytes())));
    // OpenAI counts characters, not bytes: 64 of them in 128 bytes are within its limit.
    let accented = "é".repeat(64);
    assert_eq!(user_for(&accented), accented.as_str());
}

#[test]
fn output_config_format_becomes_a_strict_response_format() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}},
        "required": ["a"], "additionalProperties": false});
    let want = json!({"type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": true}});
    let format = json!({"type": "json_schema", "schema": schema});
    let out = chat(with(json!({"output_config": {"format": format}})));
    assert_eq!(out["response_format"], want);
    assert!(!out.contains_key("output_config"));
    let beta = chat(with(json!({"output_format": format})));
    assert_eq!(
        beta["response_format"], want,
        "the older beta's output_format"
    );
    assert!(!beta.contains_key("output_format"));
    let both = chat(with(
        json!({"output_format": {"type": "json_schema", "schema": {"type": "object"}},
        "output_config": {"format": format}}),
    ));
    assert_eq!(both["response_format"], want, "output_config.format wins");
    for plain in [
        json!({}),
        json!({"output_config": {"format": null}}),
        json!({"output_config": {"effort": "low"}}),
    ] {
        assert!(
            !chat(with(plain.clone())).contains_key("response_format"),
            "{plain}"
        );
    }
}

/// Claude Code sends `output_config.effort` with every request; as `reasoning_effort` it
/// would make every turn a 400 on a model without the setting: it is not sent.
#[test]
fn output_config_effort_is_not_sent() {
    for effort in ["low", "medium", "high", "max"] {
        let out = chat(with(json!({"output_config": {"effort": effort}})));
        assert!(!out.contains_key("reasoning_effort"), "{effort}");
        assert!(!out.contains_key("output_config"), "{effort}");
    }
    let out = chat(with(json!({"thinking": {"type": "adaptive"},
        "output_config": {"effort": "low"}})));
    assert!(!out.contains_key("reasoning_effort") && !out.contains_key("thinking"));
    let out = chat(with(
        json!({"thinking": {"type": "enabled", "budget_tokens": 2000}}),
    ));
    assert!(
        !out.contains_key("reasoning_effort"),
        "a budget sets no effort"
    );
}

#[test]
fn strict_tools_stay_strict() {
    let out = chat(with(json!({"tools": [
        {"name": "s", "strict": true, "input_schema": {"type": "object"}},
        {"name": "t", "strict": false, "input_schema": {"type": "object"}},
        {"name": "u", "input_schema": {"type": "object"}}]})));
    let functions: Vec<&Value> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["function"])
        .collect();
    assert_eq!(functions[0]["strict"], true);
    assert!(functions[1].get("strict").is_none() && functions[2].get("strict").is_none());
}

#[test]
fn bad_output_settings_are_refused_by_name() {
    for (extra, needle) in [
        (
            json!({"output_config": {"format": {"type": "json_object"}}}),
            "output_config.format.type: 'json_object' is not supported",
        ),
        (
            json!({"output_format": {"type": "text"}}),
            "output_format.type: 'text' is not supported",
        ),
        (
            json!({"output_config": {"format": {"schema": {}}}}),
            "output_config.format.type: Field required",
        ),
        (
            json!({"output_config": {"format": {"type": "json_schema"}}}),
            "output_config.format: schema is required",
        ),
        (
            json!({"output_config": {"effort": 2}}),
            "output_config.effort: must be a string",
        ),
        (
            json!({"output_config": "low"}),
            "output_config: must be an object",
        ),
    ] {
        let e = to_chat(&obj(with(extra.clone())), false).unwrap_err();
        assert_eq!(e.status(), 400, "{extra}");
        let field = extra.as_object().unwrap().keys().next().cloned();
        assert_eq!(e.param().map(str::to_string), field, "{extra}: {e}");
        assert!(e.to_string().contains(needle), "{extra}: {e}");
    }
}

#[test]
fn a_choice_of_a_skipped_server_tool_is_not_sent() {
    let tools = json!([{"type": "web_search_20250305", "name": "web_search"},
        {"name": "f", "input_schema": {"type": "object"}}]);
    let out = chat(with(json!({"tools": tools, "tool_choice": {"type": "tool",
        "name": "web_search", "disable_parallel_tool_use": true}})));
    assert_eq!(out["tools"].as_array().unwrap().len(), 1);
    assert!(
        !out.contains_key("tool_choice"),
        "{:?}",
        out.get("tool_choice")
    );
    assert_eq!(
        out["parallel_tool_calls"], false,
        "still one call at a time"
    );
    let out = chat(with(
        json!({"tools": tools, "tool_choice": {"type": "tool", "name": "f"}}),
    ));
    assert_eq!(
        out["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    let only_server = chat(with(json!({"tools": [tools[0].clone()],
        "tool_choice": {"type": "tool", "name": "web_search"}})));
    assert!(!only_server.contains_key("tools") && !only_server.contains_key("tool_choice"));
}
