//! Request fields beside the messages, as the upstream receives them: Claude Code's long
//! `metadata.user_id` within OpenAI's 64 characters, structured outputs and effort, strict
//! tools, and a `tool_choice` naming a server tool the gateway skips.

use serde_json::json;

use super::{assert_anthropic_error, hello, post, setup};
use crate::support::client;
use crate::support::gateway::Options;
use crate::support::upstream::{Recorded, Reply, echo_reply};

/// What Claude Code sends as `metadata.user_id`: 159 characters.
const CLAUDE_CODE_USER_ID: &str = "user_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\
    _account_0b7c7d2e-1111-2222-3333-444455556666_session_9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff";

/// Its SHA-256, in lower-case hex (`hashlib.sha256(uid.encode()).hexdigest()`).
const ITS_SHA256: &str = "5332113fe9879b7db0b3c3c6b15ad86dddb1229cf50d65ce17f014d667d2d95a";

#[test]
fn claude_codes_user_id_reaches_an_openai_model_as_64_characters() {
    let (fake, gw) = setup(Options::default());
    // OpenAI's own check: a `user` over 64 characters is a 400.
    fake.set_default(|req: &Recorded| {
        let user = req
            .json
            .as_ref()
            .and_then(|j| j["user"].as_str().map(str::len));
        match user {
            Some(n) if n > 64 => Reply::error(
                400,
                "Invalid 'user': string too long. Expected a string with maximum length 64",
            ),
            _ => echo_reply(req),
        }
    });
    assert_eq!(CLAUDE_CODE_USER_ID.len(), 159);
    let mut body = hello("gpt41");
    body["metadata"] = json!({"user_id": CLAUDE_CODE_USER_ID});
    let r = post(&gw, "/v1/messages?beta=true", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.last_json().unwrap()["user"], ITS_SHA256);
    // Streamed too: the same translation.
    let s = client::stream_json(gw.http, "/v1/messages", &body);
    assert_eq!(s.status, 200);
    assert_eq!(fake.last_json().unwrap()["user"], ITS_SHA256);
    // A short id goes as it is.
    body["metadata"] = json!({"user_id": "alice"});
    assert_eq!(post(&gw, "/v1/messages", &body).status, 200);
    assert_eq!(fake.last_json().unwrap()["user"], "alice");
}

#[test]
fn structured_outputs_effort_and_strict_tools_reach_the_upstream() {
    let (fake, gw) = setup(Options::default());
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}},
        "required": ["a"], "additionalProperties": false});
    let mut body = hello("gpt41");
    body["output_config"] = json!({"format": {"type": "json_schema", "schema": schema},
        "effort": "low"});
    body["tools"] = json!([{"name": "s1", "strict": true, "input_schema": schema}]);
    let r = post(&gw, "/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let up = fake.last_json().unwrap();
    assert_eq!(
        up["response_format"],
        json!({"type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": true}})
    );
    assert!(
        up.get("reasoning_effort").is_none(),
        "Claude Code's effort is not sent"
    );
    assert_eq!(up["tools"][0]["function"]["strict"], true);
    assert!(up.get("output_config").is_none());

    // The older beta's top-level `output_format`.
    let mut beta = hello("gpt41");
    beta["output_format"] = json!({"type": "json_schema", "schema": schema});
    assert_eq!(post(&gw, "/v1/messages", &beta).status, 200);
    let up = fake.last_json().unwrap();
    assert_eq!(up["response_format"]["json_schema"]["schema"], schema);
    assert!(up.get("output_format").is_none());

    // A format the gateway cannot pass on is refused, in Anthropic's shape, before any call.
    let calls = fake.request_count();
    let mut other = hello("gpt41");
    other["output_config"] = json!({"format": {"type": "xml"}});
    let r = post(&gw, "/v1/messages", &other);
    let message = assert_anthropic_error(&r, 400, "invalid_request_error");
    assert!(message.contains("'xml'"), "{message}");
    assert_eq!(fake.request_count(), calls);
}

#[test]
fn a_choice_of_a_skipped_server_tool_is_not_sent_upstream() {
    let (fake, gw) = setup(Options::default());
    let mut body = hello("gpt41");
    body["tools"] = json!([{"type": "web_search_20250305", "name": "web_search"},
        {"name": "f", "input_schema": {"type": "object"}}]);
    body["tool_choice"] = json!({"type": "tool", "name": "web_search"});
    let r = post(&gw, "/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let up = fake.last_json().unwrap();
    assert_eq!(up["tools"][0]["function"]["name"], "f");
    assert_eq!(up["tools"].as_array().unwrap().len(), 1);
    assert!(up.get("tool_choice").is_none(), "{up}");
    // With only server tools, neither tools nor a choice go.
    body["tools"] = json!([{"type": "web_search_20250305", "name": "web_search"}]);
    assert_eq!(post(&gw, "/v1/messages", &body).status, 200);
    let up = fake.last_json().unwrap();
    assert!(
        up.get("tools").is_none() && up.get("tool_choice").is_none(),
        "{up}"
    );
}
