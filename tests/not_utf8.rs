//! Bytes that are not UTF-8 in a provider's answer (a local server cutting a character
//! between two tokens, or worse): read as U+FFFD on every route, streamed or not, so the
//! client gets its billed answer as valid JSON and the model's breaker counts a success.

use serde_json::{Value, json};

use crate::support::client::{self, Streamed};
use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

/// The text of [`ANSWER`] as the gateway reads it.
const FIXED: &str = "caf\u{fffd} \u{fffd}\u{fffd} ok";

/// A chat completion whose content holds a cut `é` and two bytes never found in UTF-8.
const ANSWER: &[u8] = b"{\"id\":\"x\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"caf\xe9 \xff\xfe ok\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";

fn setup() -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    (fake, gw)
}

/// A 200 carrying `body` as it is (`Reply::json` takes only valid JSON).
fn raw_json(body: &[u8]) -> Reply {
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    Reply::garbage(bytes)
}

/// The answer's body, which must be UTF-8 and JSON, as the client's SDK reads it.
fn valid_json(body: &[u8]) -> Value {
    let text = std::str::from_utf8(body).expect("the answer is UTF-8");
    serde_json::from_str(text).expect("the answer is JSON")
}

/// `gpt41`'s breaker counted no failure (a bad answer is one).
fn assert_no_failure_counted(gw: &Gateway) {
    let b = &gw.get("/api/health").json()["circuit_breakers"]["gpt41"];
    assert_eq!(b["state"], "closed", "{b}");
    assert_eq!(b["consecutive_failures"], 0, "{b}");
}

#[test]
fn a_chat_answer_relayed_as_it_came_is_valid_json() {
    let (fake, gw) = setup();
    fake.push(raw_json(ANSWER));
    let r = gw.chat("gpt41", "x", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = valid_json(&r.body);
    assert_eq!(v["choices"][0]["message"]["content"], FIXED);
    assert_eq!(v["usage"]["total_tokens"], 2, "the rest as it came");
    assert_no_failure_counted(&gw);
}

#[test]
fn a_chat_answer_kept_in_a_session_is_read() {
    let (fake, gw) = setup();
    fake.push(raw_json(ANSWER));
    let r = gw.chat("gpt41", "x", json!({"session_id": "u8"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        valid_json(&r.body)["choices"][0]["message"]["content"],
        FIXED
    );
    let stored = std::fs::read(gw.dir.join("sessions/gpt41@u8.json")).unwrap();
    assert_eq!(valid_json(&stored)["history"][1]["content"], FIXED);
    assert_no_failure_counted(&gw);
}

/// A stream with a character cut between two events, as a local server sent it.
fn stream_reply() -> Reply {
    let writes = vec![
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"ok \"}}]}\n\n".to_vec(),
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"bad \xff\xfe here caf\xc3\"}}]}\n\n".to_vec(),
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xa9 end\"},\"finish_reason\":\"stop\"}]}\n\n".to_vec(),
        b"data: [DONE]\n\n".to_vec(),
    ];
    Reply::chat_stream(&[]).raw_events(writes)
}

/// The text of [`stream_reply`] as the gateway reads it.
const STREAMED: &str = "ok bad \u{fffd}\u{fffd} here caf\u{fffd}\u{fffd} end";

/// `body` streamed to `path`: a 200 whose events are UTF-8.
fn stream(gw: &Gateway, path: &'static str, body: Value) -> Streamed {
    let s = client::stream_json(gw.http, path, &body);
    assert_eq!(s.status, 200);
    assert!(std::str::from_utf8(&s.body).is_ok(), "the stream is UTF-8");
    s
}

#[test]
fn a_chat_stream_goes_on_past_them() {
    let (fake, gw) = setup();
    fake.push(stream_reply());
    let body = json!({"model": "gpt41", "messages": [{"role": "user", "content": "x"}]});
    let s = stream(&gw, "/v1/chat/completions", body);
    assert_eq!(s.text(), STREAMED);
    assert_eq!(s.payloads().last(), Some(&"[DONE]"), "{:?}", s.payloads());
    assert_no_failure_counted(&gw);
}

#[test]
fn an_anthropic_stream_goes_on_past_them() {
    let (fake, gw) = setup();
    fake.push(stream_reply());
    let body =
        json!({"model": "gpt41", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]});
    let events = stream(&gw, "/v1/messages", body).chunks();
    let text: String = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, STREAMED);
    assert_eq!(
        events.last().map(|e| &e["type"]),
        Some(&json!("message_stop"))
    );
    assert_no_failure_counted(&gw);
}

#[test]
fn an_anthropic_message_is_answered() {
    let (fake, gw) = setup();
    fake.push(raw_json(ANSWER));
    let body =
        json!({"model": "gpt41", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]});
    let r = gw.post_json("/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(valid_json(&r.body)["content"][0]["text"], FIXED);
    assert_no_failure_counted(&gw);
}

#[test]
fn a_response_is_answered() {
    let (fake, gw) = setup();
    fake.push(raw_json(ANSWER));
    let r = gw.post_json("/v1/responses", &json!({"model": "gpt41", "input": "x"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = valid_json(&r.body);
    assert_eq!(v["output"][0]["content"][0]["text"], FIXED, "{v}");
    assert_no_failure_counted(&gw);
}
