//! `POST /v1/messages`, the Anthropic Messages API: what the upstream receives (memory
//! first, system, translated blocks), the answer and the stream in Anthropic's shapes and
//! order, errors in Anthropic's shape (529 for an open breaker), sessions, count_tokens,
//! and the model list as Anthropic clients see it. [`request_fields`]: the fields beside
//! the messages (`metadata.user_id`, structured outputs, effort, `tool_choice`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::client::{self, Streamed};
use crate::support::gateway::{Gateway, Options, Reply as Answer, request};
use crate::support::upstream::{FakeUpstream, Reply};

mod request_fields;

const ANTHROPIC: [(&str, &str); 3] = [
    ("x-api-key", "sk-ant-whatever"),
    ("anthropic-version", "2023-06-01"),
    ("content-type", "application/json"),
];

fn setup(opts: Options) -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(opts.upstream(&fake.base_url()));
    (fake, gw)
}

fn post(gw: &Gateway, path: &str, body: &Value) -> Answer {
    let bytes = serde_json::to_vec(body).unwrap();
    request(&gw.url(path), "POST", Some(&bytes), &ANTHROPIC)
}

fn hello(model: &str) -> Value {
    json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]})
}

/// `body` as a stream to `path` (`/v1/messages`, with or without a query).
fn stream_at(gw: &Gateway, path: &'static str, body: Value) -> Streamed {
    client::stream_json(gw.http, path, &body)
}

/// Asserts Anthropic's error shape with this status and type; returns the message.
fn assert_anthropic_error(r: &Answer, status: u16, kind: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(
        r.header("request-id")
            .is_some_and(|id| id.starts_with("req_"))
    );
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_message_is_answered_with_memory_first_and_the_system_after_it() {
    let (fake, gw) =
        setup(Options::default().memory(r#"{"content": "I live in Lyon.", "cache": true}"#));
    let mut body = hello("claude-h");
    body["system"] = json!("Answer briefly.");
    // Claude Code adds `?beta=true`.
    let r = post(&gw, "/v1/messages?beta=true", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    assert_eq!(
        (m["type"].clone(), m["role"].clone(), m["model"].clone()),
        (json!("message"), json!("assistant"), json!("claude-h"))
    );
    assert_eq!(
        m["content"],
        json!([{"type": "text", "text": "echo: hello"}])
    );
    assert_eq!(m["stop_reason"], "end_turn");
    assert!(m["usage"]["input_tokens"].is_u64() && m["usage"]["output_tokens"].is_u64());
    assert_eq!(r.header("x-sigorest-model"), Some("claude-h"));
    let up = fake.last_json().unwrap();
    assert_eq!(up["model"], "claude-3-5-haiku-20241022");
    assert_eq!(up["max_tokens"], 64);
    let msgs = up["messages"].as_array().unwrap();
    assert_eq!(
        msgs[0]["content"][0]["text"], "I live in Lyon.",
        "memory first, cached for Claude"
    );
    assert_eq!(
        msgs[0]["content"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(
        msgs[1],
        json!({"role": "system", "content": "Answer briefly."})
    );
    assert_eq!(msgs[2], json!({"role": "user", "content": "hello"}));
    // The Anthropic headers are not sent on to an OpenAI upstream; the provider key is.
    let seen = &fake.requests()[0];
    assert!(seen.header("anthropic-version").is_none() && seen.header("x-api-key").is_none());
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer test-key-mammouth_api_key")
    );
    // Without the /v1 prefix too.
    assert_eq!(post(&gw, "/messages", &hello("gpt41")).status, 200);
}

#[test]
fn a_stream_comes_in_anthropics_events_as_they_arrive() {
    let (fake, gw) = setup(Options::default());
    fake.push(
        Reply::chat_stream(&["Hel", "lo"])
            .gap(Duration::from_millis(150))
            .usage(11, 2),
    );
    let s = stream_at(&gw, "/v1/messages?beta=true", hello("gpt41"));
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let types = event_types(&s);
    assert_eq!(
        types,
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
    let ev = s.chunks();
    assert!(
        ev[0]["message"]["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "an estimate, never 0"
    );
    let text: String = ev
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    assert_eq!(
        ev[6]["usage"],
        json!({"input_tokens": 11, "output_tokens": 2,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    );
    assert!(
        !s.payloads().contains(&"[DONE]"),
        "no [DONE] in Anthropic streams"
    );
    // The deltas were relayed as they came, not at the end.
    let deltas: Vec<_> = s
        .events
        .iter()
        .filter(|(_, p)| p.contains("text_delta"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        deltas[1] - deltas[0] >= Duration::from_millis(100),
        "bunched up"
    );
    assert_eq!(
        fake.last_json().unwrap()["stream_options"],
        json!({"include_usage": true})
    );
}

fn event_types(s: &Streamed) -> Vec<String> {
    s.chunks()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn a_streamed_tool_call_is_a_tool_use_block() {
    let (fake, gw) = setup(Options::default());
    let tc =
        |v: Value| json!({"choices": [{"index": 0, "delta": {"tool_calls": [v]}}]}).to_string();
    fake.push(Reply::stream([
        tc(json!({"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": ""}})),
        tc(json!({"index": 0, "function": {"arguments": "{\"city\":"}})),
        tc(json!({"index": 0, "function": {"arguments": "\"Lyon\"}"}})),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}).to_string(),
        "[DONE]".to_string(),
    ]));
    let mut body = hello("gpt41");
    body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    let s = stream_at(&gw, "/v1/messages", body);
    let ev = s.chunks();
    let start = ev
        .iter()
        .find(|e| e["type"] == "content_block_start")
        .unwrap();
    assert_eq!(
        start["content_block"],
        json!({"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {}})
    );
    let json_text: String = ev
        .iter()
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(json_text, "{\"city\":\"Lyon\"}");
    let delta = ev.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        fake.last_json().unwrap()["tools"][0]["function"]["name"],
        "get_weather"
    );
}

#[test]
fn parallel_tool_calls_without_an_index_or_interleaved_are_separate_tool_use_blocks() {
    let (fake, gw) = setup(Options::default());
    let shapes = Reply::two_calls_without_an_index()
        .into_iter()
        .chain([Reply::two_calls_interleaved()]);
    for reply in shapes {
        fake.push(reply.clone());
        let ev = stream_at(&gw, "/v1/messages", hello("gpt41")).chunks();
        // Each block with its name and the JSON of its own arguments.
        let blocks: Vec<(Value, String)> = ev
            .iter()
            .filter(|e| e["type"] == "content_block_start")
            .map(|start| {
                let args = ev
                    .iter()
                    .filter(|e| e["index"] == start["index"])
                    .filter_map(|e| e["delta"]["partial_json"].as_str())
                    .collect();
                (start["content_block"].clone(), args)
            })
            .collect();
        assert_eq!(
            blocks,
            [
                (
                    json!({"type": "tool_use", "id": "c1", "name": "f", "input": {}}),
                    "{\"a\":1}".to_string()
                ),
                (
                    json!({"type": "tool_use", "id": "c2", "name": "g", "input": {}}),
                    "{\"b\":2}".to_string()
                ),
            ],
            "{reply:?}"
        );
        let delta = ev.iter().find(|e| e["type"] == "message_delta").unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    }
}

#[test]
fn a_failure_after_the_first_event_is_an_error_event() {
    let (fake, gw) = setup(Options::default());
    fake.push(Reply::chat_stream(&["a", "b", "c"]).cut_after(2));
    let s = stream_at(&gw, "/v1/messages", hello("gpt41"));
    assert_eq!(s.status, 200);
    let ev = s.chunks();
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "error", "{ev:?}");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(!event_types(&s).contains(&"message_stop".to_string()));
}

#[test]
fn errors_are_in_anthropics_shape() {
    let (fake, gw) = setup(Options::default());
    let msg = assert_anthropic_error(
        &post(&gw, "/v1/messages", &hello("claude-9000")),
        404,
        "not_found_error",
    );
    assert!(msg.contains("claude-9000"), "{msg}");
    let mut no_max = hello("gpt41");
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let msg = assert_anthropic_error(
        &post(&gw, "/v1/messages", &no_max),
        400,
        "invalid_request_error",
    );
    assert!(msg.contains("max_tokens"), "{msg}");
    let bad = request(
        &gw.url("/v1/messages"),
        "POST",
        Some(b"{not json"),
        &ANTHROPIC,
    );
    assert_anthropic_error(&bad, 400, "invalid_request_error");
    let get = request(&gw.url("/v1/messages"), "GET", None, &ANTHROPIC);
    assert_anthropic_error(&get, 405, "invalid_request_error");
    assert_eq!(get.header("allow"), Some("POST"));
    assert_anthropic_error(
        &post(&gw, "/v1/messages/nothing", &hello("gpt41")),
        404,
        "not_found_error",
    );
    // The upstream's own words are kept.
    fake.push(Reply::error(
        400,
        "prompt is too long: 250000 tokens > 200000 maximum",
    ));
    let msg = assert_anthropic_error(
        &post(&gw, "/v1/messages", &hello("gpt41")),
        400,
        "invalid_request_error",
    );
    assert!(msg.contains("prompt is too long"), "{msg}");
    // OpenAI's wording of the same: told in Anthropic's words first (Claude Code acts on
    // them), the provider's kept after them.
    let openai = "This model's maximum context length is 128000 tokens. However, your \
                  messages resulted in 130532 tokens. Please reduce the length of the messages.";
    fake.push(Reply::json(
        400,
        json!({"error": {"message": openai, "type": "invalid_request_error",
            "param": "messages", "code": "context_length_exceeded"}}),
    ));
    let msg = assert_anthropic_error(
        &post(&gw, "/v1/messages", &hello("gpt41")),
        400,
        "invalid_request_error",
    );
    assert_eq!(
        msg,
        format!("prompt is too long: 130532 tokens > 128000 maximum. {openai}")
    );
    // An unconfigured provider is not retried by the SDKs.
    let gw2 = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .var("MOONSHOT_API_KEY", ""),
    );
    let r = post(&gw2, "/v1/messages", &hello("kimi"));
    if r.status == 503 {
        assert_eq!(r.header("x-should-retry"), Some("false"));
    }
}

#[test]
fn an_open_breaker_is_529_overloaded_and_not_retried_by_the_sdks() {
    let (fake, gw) = setup(Options::default());
    fake.push_n(3, Reply::status(500));
    let mut body = hello("gpt41");
    body["retries"] = json!(1);
    for _ in 0..3 {
        assert_anthropic_error(&post(&gw, "/v1/messages", &body), 502, "api_error");
    }
    let r = post(&gw, "/v1/messages", &body);
    assert_anthropic_error(&r, 529, "overloaded_error");
    // The breaker stays open for minutes: `Retry-After` says when, and the SDKs (the
    // anthropic SDK honours any `Retry-After`) are told not to sleep that long in one call.
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((290..=300).contains(&retry), "{retry}");
    assert_eq!(r.header("x-should-retry"), Some("false"));
    // The same breaker, asked through the other APIs.
    let r = gw.chat("gpt41", "x", json!({}));
    r.assert_error(503, "circuit_open");
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("x-should-retry"), Some("false"));
    let r = gw.post_json("/v1/responses", &json!({"model": "gpt41", "input": "x"}));
    r.assert_error(503, "circuit_open");
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert_eq!(fake.request_count(), 3, "an open breaker fails fast");
}

#[test]
fn sessions_work_through_messages() {
    let (fake, gw) = setup(Options::default());
    let mut body = hello("gpt41");
    body["session_id"] = json!("notes");
    body["system"] = json!("Be brief.");
    assert_eq!(post(&gw, "/v1/messages", &body).status, 200);
    body["messages"] = json!([{"role": "user", "content": "again"}]);
    assert_eq!(post(&gw, "/v1/messages", &body).status, 200);
    let up = fake.last_json().unwrap();
    let texts: Vec<&str> = up["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    // The system prompt first, then the session, then the new turn.
    assert_eq!(texts, ["Be brief.", "hello", "echo: hello", "again"]);
    assert_eq!(up["messages"][0]["role"], "system");
    assert!(up.get("session_id").is_none());
}

#[test]
fn count_tokens_is_an_estimate_that_grows_with_the_prompt() {
    let (fake, gw) = setup(Options::default());
    let count = |text: &str| {
        let r = post(
            &gw,
            "/v1/messages/count_tokens?beta=true",
            &json!({"model": "claude-h", "messages": [{"role": "user", "content": text}]}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["input_tokens"].as_u64().unwrap()
    };
    let short = count("hi");
    let long = count(&"word ".repeat(400));
    assert!(short > 0 && long > short + 400, "{short} {long}");
    assert_eq!(fake.request_count(), 0, "nothing goes upstream");
    let bad = post(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "claude-h"}),
    );
    assert_anthropic_error(&bad, 400, "invalid_request_error");
}

#[test]
fn anthropic_clients_see_anthropics_model_list_fields() {
    let (_fake, gw) = setup(Options::default());
    let r = request(&gw.url("/v1/models"), "GET", None, &ANTHROPIC);
    let v = r.json();
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], v["data"][0]["id"]);
    let first = &v["data"][0];
    assert_eq!(first["type"], "model");
    assert!(
        first["display_name"].is_string() && first["created_at"].as_str().unwrap().ends_with('Z')
    );
    // The catalog's limits, where Claude Code and the SDKs look for them.
    let haiku = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "claude-h");
    let haiku = haiku.expect("claude-h listed");
    assert_eq!(
        (&haiku["max_input_tokens"], &haiku["max_tokens"]),
        (&json!(200000), &json!(8192))
    );
    // OpenAI clients get the list as before.
    let plain = gw.get("/v1/models").json();
    assert!(plain.get("has_more").is_none() && plain["data"][0].get("type").is_none());
    assert!(plain["data"][0].get("max_tokens").is_none());
}

#[test]
fn anthropic_clients_page_through_the_model_list() {
    let (_fake, gw) = setup(Options::default());
    let list = |query: &str| {
        request(
            &gw.url(&format!("/v1/models{query}")),
            "GET",
            None,
            &ANTHROPIC,
        )
    };
    let all: Vec<Value> = list("").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert!(all.len() >= 3, "{all:?}");
    let first = list("?limit=2").json();
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        (&first["has_more"], &first["first_id"], &first["last_id"]),
        (&json!(true), &all[0], &all[1])
    );
    let after = list(&format!("?limit=2&after_id={}", all[1].as_str().unwrap())).json();
    assert_eq!(after["data"][0]["id"], all[2]);
    let before = list(&format!("?before_id={}", all[2].as_str().unwrap())).json();
    assert_eq!(before["data"].as_array().unwrap().len(), 2);
    assert_eq!(before["has_more"], false);
    // A bad page is Anthropic's 400, naming the parameter.
    for q in ["?limit=0", "?limit=1001", "?after_id=no-such-model"] {
        let m = assert_anthropic_error(&list(q), 400, "invalid_request_error");
        assert!(m.contains("limit") || m.contains("after_id"), "{q}: {m}");
    }
    // So is a model that is not there (`models.retrieve`), here and with the model in the path.
    let gone = request(&gw.url("/v1/models/no-such"), "GET", None, &ANTHROPIC);
    assert_anthropic_error(&gone, 404, "not_found_error");
    let gone = request(&gw.url("/no-such/v1/models"), "GET", None, &ANTHROPIC);
    assert_anthropic_error(&gone, 404, "not_found_error");
}

#[test]
fn errors_of_the_server_itself_are_in_anthropics_shape_too() {
    // A full queue: 529 overloaded_error at once, with Retry-After.
    let (fake, gw) = setup(Options::default().workers(1, 1));
    fake.set_default(Reply::chat("slow").delay(Duration::from_millis(800)));
    let gw = std::sync::Arc::new(gw);
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || post(&gw, "/v1/messages", &hello("gpt41")))
        })
        .collect();
    let answers: Vec<Answer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let refused: Vec<&Answer> = answers.iter().filter(|r| r.status != 200).collect();
    assert!(
        refused.len() >= 3,
        "the surplus is refused: {}",
        refused.len()
    );
    for r in refused {
        assert_anthropic_error(r, 529, "overloaded_error");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // A body over the limit, refused from its head: 413 in Anthropic's shape, also with
    // the model in the path; OpenAI's shape on chat completions.
    let too_large = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(gw.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 900000000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got).to_string();
        let (head, body) = text.split_once("\r\n\r\n").expect("an answer");
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
        serde_json::from_str::<Value>(body).expect("a JSON body")
    };
    for path in [
        "/v1/messages",
        "/gpt41/v1/messages",
        "/v1/messages/count_tokens",
    ] {
        let v = too_large(path);
        assert_eq!(
            (v["type"].as_str(), v["error"]["type"].as_str()),
            (Some("error"), Some("request_too_large")),
            "{path}: {v}"
        );
    }
    let v = too_large("/v1/chat/completions");
    assert!(
        v["error"]["code"].is_string() && v.get("type").is_none(),
        "{v}"
    );
    // A head refused as too big (too many lines, too many bytes): 431, in Anthropic's
    // shape when its request line names /v1/messages.
    let refused_head = |path: &str, lines: usize, line_bytes: usize| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(gw.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = format!("POST {path}?beta=true HTTP/1.1\r\nHost: t\r\n");
        for i in 0..lines {
            head.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(line_bytes)));
        }
        head.push_str("\r\n");
        // (The server may answer before it has read all of a head that is too big.)
        let _ = s.write_all(head.as_bytes());
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got).to_string();
        let (head, body) = text.split_once("\r\n\r\n").expect("an answer");
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
        serde_json::from_str::<Value>(body).expect("a JSON body")
    };
    for (lines, line_bytes) in [(150, 1), (20, 8000)] {
        let v = refused_head("/v1/messages", lines, line_bytes);
        assert_eq!(
            (v["type"].as_str(), v["error"]["type"].as_str()),
            (Some("error"), Some("invalid_request_error")),
            "{lines} lines: {v}"
        );
        let v = refused_head("/v1/chat/completions", lines, line_bytes);
        assert_eq!(v["error"]["code"], "header_too_large", "{v}");
    }
}

#[test]
fn a_providers_reasoning_comes_as_thinking_when_thinking_is_enabled() {
    let (fake, gw) = setup(Options::default());
    // Complete: a thinking block first, then the text; nothing of it without `thinking`.
    let answer = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "12 C.", "reasoning_content": "Look it up."},
        "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}});
    fake.push(Reply::json(200, answer.clone()));
    let mut body = hello("gpt41");
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let v = post(&gw, "/v1/messages", &body).json();
    assert_eq!(
        v["content"],
        json!([{"type": "thinking", "thinking": "Look it up.", "signature": ""},
            {"type": "text", "text": "12 C."}])
    );
    assert!(
        fake.last_json().unwrap().get("thinking").is_none(),
        "not sent upstream"
    );
    fake.push(Reply::json(200, answer));
    let v = post(&gw, "/v1/messages", &hello("gpt41")).json();
    assert_eq!(v["content"], json!([{"type": "text", "text": "12 C."}]));
    // Streamed (GLM and Kimi think first): a thinking block, then the text block.
    let delta = |d: Value| json!({"choices": [{"index": 0, "delta": d}]}).to_string();
    fake.push(Reply::stream([
        delta(json!({"role": "assistant", "reasoning_content": "Look "})),
        delta(json!({"reasoning_content": "it up."})),
        delta(json!({"content": "12 C."})),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string(),
        "[DONE]".to_string(),
    ]));
    let ev = stream_at(&gw, "/v1/messages", body).chunks();
    let blocks: Vec<(u64, &str)> = ev
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["content_block"]["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(blocks, [(0, "thinking"), (1, "text")]);
    let thought: String = ev
        .iter()
        .filter_map(|e| e["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thought, "Look it up.");
}

#[test]
fn z_ai_gets_the_thinking_switch_and_no_one_else_does() {
    let (fake, gw) = setup(Options::default().models("gpt41,zai-glm46"));
    let sent_thinking = |model: &str, thinking: Option<Value>| {
        let mut body = hello(model);
        if let Some(t) = thinking {
            body["thinking"] = t;
        }
        let r = post(&gw, "/v1/messages", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        fake.last_json().unwrap().get("thinking").cloned()
    };
    // Anthropic's meaning: no thinking unless enabled (Z.ai's GLM-4.7 thinks by default).
    assert_eq!(
        sent_thinking("zai-glm46", None),
        Some(json!({"type": "disabled"}))
    );
    let enabled = json!({"type": "enabled", "budget_tokens": 2048});
    assert_eq!(
        sent_thinking("zai-glm46", Some(enabled.clone())),
        Some(json!({"type": "enabled"}))
    );
    assert_eq!(
        sent_thinking("gpt41", Some(enabled)),
        None,
        "only Z.ai takes it"
    );
    // Chat completions are passed on as they are.
    gw.chat("zai-glm46", "hi", json!({}));
    assert!(fake.last_json().unwrap().get("thinking").is_none());
}

#[test]
fn cache_marks_kept_for_claude_are_not_sent_to_a_fallback_of_another_provider() {
    let (fake, gw) = setup(Options::default().models("gpt41,claude-h"));
    fake.push(Reply::status(503));
    let mark = json!({"type": "ephemeral"});
    let mut body = hello("claude-h");
    body["system"] = json!([{"type": "text", "text": "You are terse.", "cache_control": mark}]);
    body["messages"] = json!([{"role": "user", "content": [
        {"type": "text", "text": "hello", "cache_control": mark}]}]);
    body["fallbacks"] = json!(["gpt41"]);
    body["retries"] = json!(1);
    let r = post(&gw, "/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sigorest-model"), Some("gpt41"));
    let sent: Vec<String> = fake
        .requests_to("/v1/chat/completions")
        .iter()
        .map(|r| r.json.clone().unwrap_or_default()["messages"].to_string())
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        sent[0].matches("cache_control").count(),
        2,
        "Claude: {}",
        sent[0]
    );
    assert!(
        !sent[1].contains("cache_control"),
        "the fallback: {}",
        sent[1]
    );
    assert!(sent[1].contains("You are terse.") && sent[1].contains("hello"));
}

#[test]
fn odd_usage_never_costs_the_answer_and_moonshots_stream_usage_counts() {
    let (fake, gw) = setup(Options::default());
    // A billed answer whose usage is odd (o3 has sent a negative count) reaches the client,
    // through the plain relay and through the translation alike.
    let odd = json!({"id": "c1", "object": "chat.completion", "model": "gpt-4.1",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "still here"}}],
        "usage": {"prompt_tokens": 9.0, "completion_tokens": -35, "total_tokens": "x"}});
    fake.push_n(2, Reply::json(200, odd.clone()));
    let r = gw.chat("gpt41", "x", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), odd, "relayed as it came");
    let r = post(&gw, "/v1/messages", &hello("gpt41"));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    assert_eq!(m["content"][0]["text"], "still here");
    assert_eq!(m["usage"]["input_tokens"], 9);
    assert_eq!(
        m["usage"]["output_tokens"], 0,
        "a negative count is not reported"
    );

    // Moonshot streams put the usage in the last choice, with its cached tokens beside it.
    fake.push(Reply::stream([
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":20,"completion_tokens":3,"total_tokens":23,"cached_tokens":16}}]}"#,
        "[DONE]",
    ]));
    let s = stream_at(&gw, "/v1/messages", hello("kimi"));
    assert_eq!(s.status, 200);
    let delta = s
        .chunks()
        .into_iter()
        .find(|e| e["type"] == "message_delta")
        .expect("a message_delta");
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 4, "output_tokens": 3,
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 16})
    );
    let usage = gw.get("/metrics").text();
    assert!(
        usage.contains(r#"sigorest_tokens_total{model="kimi",kind="completion",key=""} 3"#),
        "{usage}"
    );
}

/// Claude Code's tool loop with its marks: on a tool, on the system prompt, and its rolling
/// one on the last block of the last user message, a `tool_result`.
fn claude_code_turn(model: &str) -> Value {
    let mark = json!({"type": "ephemeral"});
    json!({"model": model, "max_tokens": 64,
        "tools": [{"name": "read", "input_schema": {"type": "object"}, "cache_control": mark}],
        "system": [{"type": "text", "text": "You are terse.", "cache_control": mark}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "read a.png"},
                {"type": "image", "source": {"type": "url", "url": "https://x/b.png"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                "content": "a.png: 2 KB", "cache_control": mark}]}]})
}

#[test]
fn a_claude_upstream_gets_the_marks_on_tools_tool_results_and_images() {
    let (fake, gw) =
        setup(Options::default().memory(r#"{"content": "I live in Lyon.", "cache": true}"#));
    let mark = json!({"type": "ephemeral"});
    let r = post(&gw, "/v1/messages?beta=true", &claude_code_turn("claude-h"));
    assert_eq!(r.status, 200, "{}", r.text());
    let up = fake.last_json().unwrap();
    assert_eq!(up["tools"][0]["cache_control"], mark, "{up}");
    assert_eq!(up["tools"][0]["function"]["name"], "read");
    let msgs = up["messages"].as_array().unwrap();
    assert_eq!(
        msgs.last().unwrap(),
        &json!({"role": "tool", "tool_call_id": "t1",
            "content": [{"type": "text", "text": "a.png: 2 KB", "cache_control": mark}]}),
        "the rolling mark of a tool loop"
    );
    assert_eq!(msgs[1]["content"][0]["cache_control"], mark, "the system's");
    // Three marks of the client's: the memory's makes the fourth.
    assert_eq!(msgs[0]["content"][0]["text"], "I live in Lyon.");
    assert_eq!(msgs[0]["content"][0]["cache_control"], mark);
    assert_eq!(up.to_string().matches("cache_control").count(), 4);

    // A fourth mark of the client's, on the image: the memory goes without.
    let mut body = claude_code_turn("claude-h");
    body["messages"][0]["content"][1]["cache_control"] = mark.clone();
    let r = post(&gw, "/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let up = fake.last_json().unwrap();
    assert_eq!(
        up["messages"][2]["content"][1],
        json!({"type": "image_url", "image_url": {"url": "https://x/b.png"}, "cache_control": mark})
    );
    assert_eq!(up["messages"][0]["content"], "I live in Lyon.");
    assert_eq!(up.to_string().matches("cache_control").count(), 4);
}

#[test]
fn no_mark_reaches_another_provider_nor_a_fallback_from_a_claude() {
    let (fake, gw) = setup(
        Options::default()
            .models("gpt41,claude-h")
            .memory(r#"{"content": "I live in Lyon.", "cache": true}"#),
    );
    let r = post(&gw, "/v1/messages", &claude_code_turn("gpt41"));
    assert_eq!(r.status, 200, "{}", r.text());
    let up = fake.last_json().unwrap();
    assert!(!up.to_string().contains("cache_control"), "{up}");
    assert_eq!(
        up["messages"].as_array().unwrap().last().unwrap()["content"],
        "a.png: 2 KB"
    );

    fake.push(Reply::status(503));
    let mut body = claude_code_turn("claude-h");
    body["fallbacks"] = json!(["gpt41"]);
    body["retries"] = json!(1);
    let r = post(&gw, "/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sigorest-model"), Some("gpt41"));
    let sent = fake.requests_to("/v1/chat/completions");
    let claude = sent[sent.len() - 2].json.clone().unwrap_or_default();
    let fallback = sent[sent.len() - 1].json.clone().unwrap_or_default();
    assert_eq!(
        claude.to_string().matches("cache_control").count(),
        4,
        "{claude}"
    );
    assert!(
        !fallback.to_string().contains("cache_control"),
        "{fallback}"
    );
    assert_eq!(fallback["tools"][0]["function"]["name"], "read");
}

#[test]
fn answers_carry_a_request_id_as_errors_do() {
    // The anthropic SDKs read it into `_request_id`; Anthropic sends one on every answer.
    let (_fake, gw) = setup(Options::default());
    let complete = post(&gw, "/v1/messages", &hello("gpt41"));
    assert_eq!(complete.status, 200, "{}", complete.text());
    let streamed = stream_at(&gw, "/v1/messages", hello("gpt41"));
    assert_eq!(streamed.status, 200);
    assert!(streamed.complete);
    let counted = post(&gw, "/v1/messages/count_tokens", &hello("gpt41"));
    assert_eq!(counted.status, 200, "{}", counted.text());
    let ids = [
        complete.header("request-id"),
        streamed.header("request-id"),
        counted.header("request-id"),
    ];
    for id in ids {
        assert!(
            id.is_some_and(|id| id.starts_with("req_") && id.len() > 8),
            "{ids:?}"
        );
    }
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2],
        "one id per answer: {ids:?}"
    );
    // Once: an error keeps its own, and only it.
    let failed = post(&gw, "/v1/messages", &hello("nope"));
    let named = failed
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("request-id"))
        .count();
    assert_eq!((failed.status, named), (404, 1));
}

/// A provider that reports no usage: the answer's `input_tokens` is the gateway's estimate,
/// as a stream's `message_start` has it, never 0 (Claude Code reads 0 as an empty context).
#[test]
fn an_answer_without_the_providers_usage_counts_the_estimate() {
    let (fake, gw) = setup(Options::default());
    fake.push(Reply::json(
        200,
        json!({"id": "x", "object": "chat.completion", "model": "gpt-4.1",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi"}}]}),
    ));
    let r = post(&gw, "/v1/messages", &hello("gpt41"));
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = &r.json()["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(usage["output_tokens"], 0);
}
