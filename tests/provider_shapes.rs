//! Providers' own shapes of an OpenAI answer, as each endpoint's client receives them:
//! `content` as a list of text and thinking parts (Mistral's Magistral), prompt-cache
//! writes in the usage (OpenRouter, Anthropic-compatible endpoints), tool-call pieces that
//! repeat their call's id and name (Fireworks).

use serde_json::{Value, json};

use crate::support::client::{self, Streamed};
use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

fn setup() -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    (fake, gw)
}

/// The assistant's turn kept in a session (`model@session`).
fn kept_turn(gw: &Gateway, model: &str, session: &str) -> Value {
    let file = gw.dir.join(&format!("sessions/{model}@{session}.json"));
    let stored: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    stored["history"][1]["content"].clone()
}

fn chunk(delta: Value) -> String {
    json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
    .to_string()
}

/// Magistral's stream: a text part, a thinking part, then a plain string.
fn parts_stream() -> Vec<String> {
    vec![
        chunk(json!({"role": "assistant", "content": ""})),
        chunk(json!({"content": [{"type": "text", "text": "Hello "}]})),
        chunk(
            json!({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}]}),
        ),
        chunk(json!({"content": "world"})),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string(),
        json!({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9}}).to_string(),
        "[DONE]".to_string(),
    ]
}

/// Magistral's complete answer: a thinking part, then a text part.
fn parts_answer() -> Reply {
    Reply::json(
        200,
        json!({"id": "j", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                "content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
                    {"type": "text", "text": "Hello world"}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5}}),
    )
}

/// The content blocks an Anthropic SDK puts together from a stream: (type, text).
fn anthropic_blocks(s: &Streamed) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for e in s.chunks() {
        match e["type"].as_str() {
            Some("content_block_start") => blocks.push((
                e["content_block"]["type"].as_str().unwrap().to_string(),
                String::new(),
            )),
            Some("content_block_delta") => {
                let i = e["index"].as_u64().unwrap() as usize;
                let d = &e["delta"];
                let piece = d["text"].as_str().or(d["thinking"].as_str()).unwrap_or("");
                blocks[i].1.push_str(piece);
            }
            _ => {}
        }
    }
    blocks
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn content_parts_reach_a_messages_client_as_text_and_thinking() {
    let (fake, gw) = setup();
    let body = |stream: bool| {
        json!({"model": "gpt41", "max_tokens": 50, "stream": stream, "session_id": "mistral",
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "hi"}]})
    };
    fake.push(Reply::stream(parts_stream()));
    let s = client::stream_json(gw.http, "/v1/messages", &body(true));
    assert!(s.complete, "{:?}", s.payloads());
    assert_eq!(
        anthropic_blocks(&s),
        pairs(&[("text", "Hello "), ("thinking", "hmm"), ("text", "world")])
    );
    assert_eq!(kept_turn(&gw, "gpt41", "mistral"), "Hello world");
    fake.push(parts_answer());
    let m = gw.post_json("/v1/messages", &body(false)).json();
    assert_eq!(
        m["content"],
        json!([{"type": "thinking", "thinking": "hmm", "signature": ""},
            {"type": "text", "text": "Hello world"}])
    );
}

#[test]
fn content_parts_reach_a_responses_client_as_reasoning_and_text() {
    let (fake, gw) = setup();
    let body = |stream: bool| json!({"model": "gpt41", "input": "hi", "stream": stream, "session_id": "mistral"});
    fake.push(Reply::stream(parts_stream()));
    let s = client::stream_json(gw.http, "/v1/responses", &body(true));
    assert!(s.complete, "{:?}", s.payloads());
    let ev = s.chunks();
    let deltas = |kind: &str| -> String {
        ev.iter()
            .filter(|e| e["type"] == kind)
            .filter_map(|e| e["delta"].as_str())
            .collect()
    };
    assert_eq!(deltas("response.output_text.delta"), "Hello world");
    assert_eq!(deltas("response.reasoning_text.delta"), "hmm");
    let done = &ev.last().unwrap()["response"];
    let kinds: Vec<&str> = done["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["message", "reasoning", "message"]);
    assert_eq!(kept_turn(&gw, "gpt41", "mistral"), "Hello world");
    fake.push(parts_answer());
    let r = gw.post_json("/v1/responses", &body(false)).json();
    assert_eq!(r["output"][0]["type"], "reasoning");
    assert_eq!(r["output"][0]["content"][0]["text"], "hmm");
    assert_eq!(r["output"][1]["content"][0]["text"], "Hello world");
}

#[test]
fn content_parts_are_relayed_to_a_chat_client_as_they_came_and_kept_as_text() {
    let (fake, gw) = setup();
    let sent = parts_stream();
    fake.push(Reply::stream(sent.clone()));
    let body = json!({"model": "gpt41", "stream": true, "session_id": "streamed",
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let s = client::stream_json(gw.http, "/v1/chat/completions", &body);
    assert!(s.complete);
    assert_eq!(s.payloads(), sent, "byte for byte");
    assert_eq!(kept_turn(&gw, "gpt41", "streamed"), "Hello world");
    fake.push(parts_answer());
    let r = gw.chat("gpt41", "hi", json!({"session_id": "whole"}));
    assert_eq!(
        r.json()["choices"][0]["message"]["content"][1]["text"],
        "Hello world"
    );
    assert_eq!(kept_turn(&gw, "gpt41", "whole"), "Hello world");
}

/// A stream and an answer reporting 100 prompt tokens, 20 read from the cache and 30
/// written to it, in the shape `usage` gives.
fn cache_replies(usage: &Value) -> (Reply, Reply) {
    let stream = Reply::stream([
        chunk(json!({"role": "assistant", "content": "ok"})),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string(),
        json!({"choices": [], "usage": usage}).to_string(),
        "[DONE]".to_string(),
    ]);
    let answer = Reply::json(
        200,
        json!({"id": "j", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "ok"}}],
            "usage": usage}),
    );
    (stream, answer)
}

#[test]
fn cache_writes_reach_messages_and_responses_clients() {
    let (fake, gw) = setup();
    let openrouter = json!({"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
        "prompt_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 30}});
    let anthropic_like = json!({"prompt_tokens": 100, "completion_tokens": 5,
        "cache_creation_input_tokens": 30, "prompt_tokens_details": {"cached_tokens": 20}});
    let messages = json!({"model": "claude-h", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}]});
    let responses = json!({"model": "claude-h", "input": "hi"});
    let want_messages = json!({"input_tokens": 50, "output_tokens": 5,
        "cache_creation_input_tokens": 30, "cache_read_input_tokens": 20});
    let want_responses = json!({"cached_tokens": 20, "cache_write_tokens": 30});
    for usage in [openrouter, anthropic_like] {
        let (stream, answer) = cache_replies(&usage);
        fake.push(answer.clone());
        let m = gw.post_json("/v1/messages", &messages).json();
        assert_eq!(m["usage"], want_messages, "{usage}");
        fake.push(stream.clone());
        let mut body = messages.clone();
        body["stream"] = json!(true);
        let s = client::stream_json(gw.http, "/v1/messages", &body);
        let delta = s
            .chunks()
            .into_iter()
            .find(|e| e["type"] == "message_delta")
            .expect("a message_delta");
        assert_eq!(delta["usage"], want_messages, "{usage}");

        fake.push(answer);
        let r = gw.post_json("/v1/responses", &responses).json();
        assert_eq!(r["usage"]["input_tokens"], 100, "{usage}");
        assert_eq!(
            r["usage"]["input_tokens_details"], want_responses,
            "{usage}"
        );
        fake.push(stream);
        let mut body = responses.clone();
        body["stream"] = json!(true);
        let s = client::stream_json(gw.http, "/v1/responses", &body);
        let done = s.chunks().pop().expect("events");
        assert_eq!(done["type"], "response.completed");
        assert_eq!(
            done["response"]["usage"]["input_tokens_details"], want_responses,
            "{usage}"
        );
    }
    // The books count the prompt as reported, the cached and written tokens in it.
    let metrics = gw.get("/metrics").text();
    assert!(
        metrics.contains(r#"sigorest_tokens_total{model="claude-h",kind="prompt",key=""} 800"#),
        "{metrics}"
    );
}

#[test]
fn a_calls_id_and_name_repeated_in_every_piece_reach_a_chat_client_once() {
    let (fake, gw) = setup();
    let piece = |index: u64, id: &str, name: &str, args: &str| {
        chunk(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": args}}]}),
        )
    };
    fake.push(Reply::stream([
        chunk(json!({"role": "assistant", "content": ""})),
        piece(0, "rep1", "get_weather", "{\"ci"),
        piece(0, "rep1", "get_weather", "ty\":"),
        piece(0, "rep1", "get_weather", "\"Paris\"}"),
        piece(1, "rep2", "get_time", "{}"),
        piece(1, "rep2", "get_time", ""),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}).to_string(),
        "[DONE]".to_string(),
    ]));
    let body = json!({"model": "gpt41", "stream": true, "session_id": "fireworks",
        "messages": [{"role": "user", "content": "weather?"}]});
    let s = client::stream_json(gw.http, "/v1/chat/completions", &body);
    assert!(s.complete);
    let want = [
        ("rep1", "get_weather", "{\"city\":\"Paris\"}"),
        ("rep2", "get_time", "{}"),
    ]
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(s.sdk_tool_calls(), want);
    // The first piece of a call as it came; the others with their arguments only.
    let pieces: Vec<Value> = s
        .chunks()
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .cloned()
        })
        .map(Value::Object)
        .collect();
    assert_eq!(
        pieces[0],
        json!({"index": 0, "id": "rep1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"ci"}})
    );
    assert_eq!(
        pieces[1],
        json!({"index": 0, "function": {"arguments": "ty\":"}})
    );
    let stored: Value = serde_json::from_slice(
        &std::fs::read(gw.dir.join("sessions/gpt41@fireworks.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        stored["history"][1]["tool_calls"],
        json!([{"id": "rep1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "rep2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}])
    );
}

/// With `n: 2`, each choice's calls are told apart on their own, and the second choice's
/// repeated id and name reach the client once too.
#[test]
fn each_choice_of_n_2_gets_its_calls_repaired() {
    let (fake, gw) = setup();
    let piece = |choice: u64, index: u64, args: &str| {
        json!({"choices": [{"index": choice, "delta": {"tool_calls": [{"index": index,
            "id": format!("same{choice}"), "type": "function",
            "function": {"name": "get_weather", "arguments": args}}]}}]})
        .to_string()
    };
    fake.push(Reply::stream([
        piece(0, 0, "{\"a\":"),
        piece(1, 0, "{\"b\":"),
        piece(0, 0, "1}"),
        piece(1, 0, "2}"),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}).to_string(),
        json!({"choices": [{"index": 1, "delta": {}, "finish_reason": "tool_calls"}]}).to_string(),
        "[DONE]".to_string(),
    ]));
    let body = json!({"model": "gpt41", "stream": true, "n": 2,
        "messages": [{"role": "user", "content": "weather?"}]});
    let s = client::stream_json(gw.http, "/v1/chat/completions", &body);
    assert!(s.complete);
    // Per choice, the way the openai SDK joins the pieces.
    let mut joined = [
        (String::new(), String::new(), String::new()),
        Default::default(),
    ];
    for c in s.chunks() {
        let choice = &c["choices"][0];
        let Some(n) = choice["index"].as_u64() else {
            continue;
        };
        for p in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let call = &mut joined[n as usize];
            call.0 += p["id"].as_str().unwrap_or("");
            call.1 += p["function"]["name"].as_str().unwrap_or("");
            call.2 += p["function"]["arguments"].as_str().unwrap_or("");
        }
    }
    let want = |id: &str, args: &str| (id.to_string(), "get_weather".to_string(), args.to_string());
    assert_eq!(
        joined,
        [want("same0", "{\"a\":1}"), want("same1", "{\"b\":2}")]
    );
}

/// A JSON schema's `properties` reach the provider in the client's order, whatever the
/// endpoint: with structured outputs a model writes its answer's keys in that order, and
/// `reasoning` first, `answer` after is the point of such a schema.
#[test]
fn a_schemas_properties_keep_their_order_upstream() {
    let (fake, gw) = setup();
    let schema = json!({"type": "object", "additionalProperties": false,
        "required": ["reasoning", "answer", "aardvark"],
        "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"},
            "aardvark": {"type": "integer"}}});
    let bodies = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt41", "messages": [{"role": "user", "content": "q"}],
                "response_format": {"type": "json_schema",
                    "json_schema": {"name": "r", "strict": true, "schema": schema}},
                "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "gpt41", "max_tokens": 100,
                "messages": [{"role": "user", "content": "q"}],
                "output_config": {"format": {"type": "json_schema", "schema": schema}},
                "tools": [{"name": "f", "input_schema": schema}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt41", "input": "q",
                "text": {"format": {"type": "json_schema", "name": "r", "schema": schema}},
                "tools": [{"type": "function", "name": "f", "parameters": schema}]}),
        ),
    ];
    for (path, body) in bodies {
        fake.push(Reply::chat("{}"));
        let r = crate::support::gateway::request(
            &gw.url(path),
            "POST",
            Some(&serde_json::to_vec(&body).unwrap()),
            &[
                ("Content-Type", "application/json"),
                ("anthropic-version", "2023-06-01"),
            ],
        );
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let sent = String::from_utf8(fake.requests().last().unwrap().body.clone()).unwrap();
        for schema_at in ["\"response_format\"", "\"tools\""] {
            let from = sent.find(schema_at).expect(schema_at);
            let after = &sent[from..];
            let at = |key: &str| after.find(&format!("\"{key}\":{{")).expect(key);
            assert!(
                at("reasoning") < at("answer") && at("answer") < at("aardvark"),
                "{path} {schema_at}: {after}"
            );
        }
    }
}
