//! `POST /v1/responses`, the OpenAI Responses API (stateless subset): what the upstream
//! receives (memory first, then the instructions, the translated items), the Response
//! object and the stream's events in the Responses shapes and order, a function-call round
//! trip, errors in OpenAI's shape (previous_response_id refused), sessions.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::client::{self, Streamed};
use crate::support::gateway::{Gateway, Options, Reply as Answer};
use crate::support::upstream::{FakeUpstream, Reply};

fn setup(opts: Options) -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(opts.upstream(&fake.base_url()));
    (fake, gw)
}

fn post(gw: &Gateway, body: &Value) -> Answer {
    gw.post_json("/v1/responses", body)
}

fn stream(gw: &Gateway, body: &Value) -> Streamed {
    client::stream_json(gw.http, "/v1/responses", body)
}

fn types(s: &Streamed) -> Vec<String> {
    s.chunks()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The function call the fake answers with.
fn weather_call() -> Reply {
    Reply::json(
        200,
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": null, "tool_calls": [{"id": "call_w1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}]}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}),
    )
}

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"type": "web_search_preview"}])
}

#[test]
fn a_response_with_memory_first_and_the_instructions_after_it() {
    let (fake, gw) = setup(Options::default().memory(r#"{"content": "I live in Lyon."}"#));
    let r = post(
        &gw,
        &json!({"model": "gpt41", "input": "hello", "instructions": "Answer briefly.",
            "max_output_tokens": 64, "store": true, "metadata": {"run": "7"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-sigorest-model"), Some("gpt41"));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(
        (v["object"].clone(), v["status"].clone(), v["model"].clone()),
        (json!("response"), json!("completed"), json!("gpt41"))
    );
    let out = v["output"].as_array().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0]["type"].clone(), out[0]["role"].clone()),
        (json!("message"), json!("assistant"))
    );
    assert_eq!(
        out[0]["content"],
        json!([{"type": "output_text", "text": "echo: hello", "annotations": []}])
    );
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap())
    );
    assert_eq!(v["store"], false, "nothing is stored");
    assert_eq!(v["metadata"], json!({"run": "7"}));
    assert_eq!(v["instructions"], "Answer briefly.");
    let up = fake.last_json().unwrap();
    assert_eq!(up["model"], "gpt-4.1");
    assert_eq!(up["max_tokens"], 64);
    assert_eq!(
        up["messages"],
        json!([{"role": "system", "content": "I live in Lyon."},
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "hello"}])
    );
    for k in [
        "input",
        "instructions",
        "store",
        "metadata",
        "max_output_tokens",
    ] {
        assert!(up.get(k).is_none(), "{k} went upstream");
    }
    // Without the /v1 prefix too.
    assert_eq!(
        gw.post_json("/responses", &json!({"model": "gpt41", "input": "x"}))
            .status,
        200
    );
}

#[test]
fn a_function_call_round_trip() {
    let (fake, gw) = setup(Options::default());
    fake.push(weather_call());
    let first = json!({"model": "gpt41", "input": "Weather in Lyon?", "tools": weather_tool(),
        "tool_choice": "auto"});
    let r = post(&gw, &first);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let out = v["output"].as_array().unwrap();
    assert_eq!(out.len(), 1, "only the call: {out:?}");
    assert_eq!(out[0]["type"], "function_call");
    assert_eq!(
        (
            out[0]["call_id"].clone(),
            out[0]["name"].clone(),
            out[0]["arguments"].clone()
        ),
        (
            json!("call_w1"),
            json!("get_weather"),
            json!("{\"city\":\"Lyon\"}")
        )
    );
    let up = fake.last_json().unwrap();
    assert_eq!(
        up["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]),
        "the hosted tool is skipped"
    );
    assert_eq!(up["tool_choice"], "auto");
    assert_eq!(v["tools"].as_array().unwrap().len(), 1);

    // The client runs the tool and sends everything back.
    let mut input = vec![json!({"role": "user", "content": "Weather in Lyon?"})];
    input.extend(out.iter().cloned());
    input.push(
        json!({"type": "function_call_output", "call_id": "call_w1", "output": "12 C, rain"}),
    );
    let r = post(
        &gw,
        &json!({"model": "gpt41", "input": input, "tools": weather_tool()}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = fake.last_json().unwrap()["messages"].clone();
    assert_eq!(
        msgs,
        json!([{"role": "user", "content": "Weather in Lyon?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_w1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}]},
            {"role": "tool", "tool_call_id": "call_w1", "content": "12 C, rain"}])
    );
}

#[test]
fn a_stream_comes_in_the_responses_events_as_they_arrive() {
    let (fake, gw) = setup(Options::default());
    fake.push(
        Reply::chat_stream(&["Hel", "lo"])
            .gap(Duration::from_millis(300))
            .usage(11, 2),
    );
    let s = stream(&gw, &json!({"model": "gpt41", "input": "hi"}));
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("x-sigorest-model"), Some("gpt41"));
    assert!(s.complete);
    assert_eq!(
        types(&s),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let ev = s.chunks();
    let seq: Vec<u64> = ev
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seq, (0..ev.len() as u64).collect::<Vec<_>>());
    let text: String = ev
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    let done = &ev.last().unwrap()["response"];
    assert_eq!(done["id"], ev[0]["response"]["id"]);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["usage"]["input_tokens"], 11);
    assert_eq!(done["usage"]["output_tokens"], 2);
    assert!(!s.payloads().contains(&"[DONE]"), "no [DONE] in Responses");
    let body = String::from_utf8_lossy(&s.body).into_owned();
    assert!(
        body.starts_with("event: response.created\ndata: "),
        "{body}"
    );
    // The deltas were relayed as they came, not at the end.
    let stamps: Vec<_> = s
        .events
        .iter()
        .filter(|(_, p)| p.contains("response.output_text.delta"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        stamps[1] - stamps[0] >= Duration::from_millis(150),
        "bunched up"
    );
    assert_eq!(
        fake.last_json().unwrap()["stream_options"],
        json!({"include_usage": true})
    );
}

#[test]
fn a_streamed_tool_call_is_a_function_call_item() {
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
    let s = stream(
        &gw,
        &json!({"model": "gpt41", "input": "Weather?", "tools": weather_tool()}),
    );
    assert_eq!(
        types(&s),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let ev = s.chunks();
    assert_eq!(ev[2]["item"]["type"], "function_call");
    assert_eq!(ev[2]["item"]["call_id"], "call_9");
    assert_eq!(ev[5]["arguments"], "{\"city\":\"Lyon\"}");
    let item = &ev.last().unwrap()["response"]["output"][0];
    assert_eq!(
        (
            item["name"].clone(),
            item["arguments"].clone(),
            item["status"].clone()
        ),
        (
            json!("get_weather"),
            json!("{\"city\":\"Lyon\"}"),
            json!("completed")
        )
    );
}

#[test]
fn parallel_tool_calls_without_an_index_or_interleaved_are_separate_function_call_items() {
    let (fake, gw) = setup(Options::default());
    let shapes = Reply::two_calls_without_an_index()
        .into_iter()
        .chain([Reply::two_calls_interleaved()]);
    for reply in shapes {
        fake.push(reply.clone());
        let s = stream(&gw, &json!({"model": "gpt41", "input": "Two calls"}));
        let ev = s.chunks();
        let done: Vec<(Value, Value)> = ev
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.done")
            .map(|e| (e["name"].clone(), e["arguments"].clone()))
            .collect();
        assert_eq!(
            done,
            [
                (json!("f"), json!("{\"a\":1}")),
                (json!("g"), json!("{\"b\":2}"))
            ],
            "{reply:?}"
        );
        let last = ev.last().unwrap();
        assert_eq!(last["type"], "response.completed", "{reply:?}");
        let output: Vec<(Value, Value, Value)> = last["response"]["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                (
                    item["call_id"].clone(),
                    item["name"].clone(),
                    item["arguments"].clone(),
                )
            })
            .collect();
        assert_eq!(
            output,
            [
                (json!("c1"), json!("f"), json!("{\"a\":1}")),
                (json!("c2"), json!("g"), json!("{\"b\":2}"))
            ],
            "{reply:?}"
        );
    }
}

#[test]
fn a_failure_after_the_first_event_is_response_failed() {
    let (fake, gw) = setup(Options::default());
    fake.push(Reply::chat_stream(&["a", "b", "c"]).cut_after(2));
    let s = stream(&gw, &json!({"model": "gpt41", "input": "hi"}));
    assert_eq!(s.status, 200);
    let ev = s.chunks();
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "response.failed", "{ev:?}");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "server_error");
    assert!(
        last["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt41")
    );
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], "a");
    assert!(!types(&s).contains(&"response.completed".to_string()));
}

#[test]
fn errors_are_in_openais_shape() {
    let (fake, gw) = setup(Options::default());
    let r = post(
        &gw,
        &json!({"model": "gpt41", "input": "more", "previous_response_id": "resp_abc"}),
    );
    let msg = r.assert_error(400, "invalid_request");
    assert_eq!(r.json()["error"]["param"], "previous_response_id");
    assert!(
        msg.contains("stateless") && msg.contains("session_id"),
        "{msg}"
    );
    let msg = post(&gw, &json!({"model": "gpt41"})).assert_error(400, "invalid_request");
    assert!(msg.contains("input"), "{msg}");
    post(
        &gw,
        &json!({"model": "gpt41", "input": "x", "max_output_tokens": 0}),
    )
    .assert_error(400, "invalid_request");
    gw.post("/v1/responses", b"{not json")
        .assert_error(400, "invalid_request");
    assert_eq!(fake.request_count(), 0, "nothing reached the upstream");
    let msg =
        post(&gw, &json!({"model": "gpt-9000", "input": "x"})).assert_error(404, "model_not_found");
    assert!(msg.contains("gpt-9000"), "{msg}");
    let get = gw.get("/v1/responses");
    get.assert_error(405, "method_not_allowed");
    assert_eq!(get.header("allow"), Some("POST"));
    gw.get("/v1/responses/resp_abc")
        .assert_error(404, "not_found");
    // The upstream's own words are kept.
    fake.push(Reply::error(400, "context_length_exceeded: too long"));
    let msg =
        post(&gw, &json!({"model": "gpt41", "input": "x"})).assert_error(400, "invalid_request");
    assert!(msg.contains("too long"), "{msg}");
}

#[test]
fn sessions_work_through_responses() {
    let (fake, gw) = setup(Options::default());
    let mut body = json!({"model": "gpt41", "input": "hello", "session_id": "notes",
        "instructions": "Be brief."});
    assert_eq!(post(&gw, &body).status, 200);
    body["input"] = json!([{"role": "user", "content": [{"type": "input_text", "text": "again"}]}]);
    assert_eq!(post(&gw, &body).status, 200);
    let up = fake.last_json().unwrap();
    let texts: Vec<&str> = up["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    // The instructions first, then the session, then the new turn.
    assert_eq!(texts, ["Be brief.", "hello", "echo: hello", "again"]);
    assert!(up.get("session_id").is_none());
}

#[test]
fn input_tokens_is_an_estimate_that_grows_with_the_input() {
    let (fake, gw) = setup(Options::default());
    let count = |body: Value| {
        let r = gw.post_json("/v1/responses/input_tokens", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["object"], "response.input_tokens");
        v["input_tokens"].as_u64().unwrap()
    };
    let short = count(json!({"model": "gpt41", "input": "hi"}));
    let long = count(json!({"model": "gpt41", "input": "word ".repeat(400)}));
    assert!(short > 0 && long > short + 400, "{short} {long}");
    // Tools and instructions count; the model may be left out, as OpenAI allows.
    let tooled =
        count(json!({"input": "hi", "instructions": "Be brief.", "tools": weather_tool()}));
    assert!(tooled > short + 10, "{tooled} {short}");
    // Through the model-in-path route too.
    let r = gw.post_json("/gpt41/v1/responses/input_tokens", &json!({"input": "hi"}));
    assert_eq!(r.json()["input_tokens"].as_u64(), Some(short));
    assert_eq!(fake.request_count(), 0, "nothing goes upstream");
    gw.post_json("/v1/responses/input_tokens", &json!({"model": "gpt41"}))
        .assert_error(400, "invalid_request");
    gw.post("/v1/responses/input_tokens", b"[1]")
        .assert_error(400, "invalid_request");
    gw.get("/v1/responses/input_tokens")
        .assert_error(405, "method_not_allowed");
}

#[test]
fn a_stream_past_the_answer_limit_fails_cleanly_and_is_counted_as_a_bad_answer() {
    let (fake, gw) = setup(Options::default());
    // Nine chunks of 1 MiB: past the 8 MiB an answer may grow to.
    let big = "x".repeat(1024 * 1024);
    let chunk = json!({"choices": [{"index": 0, "delta": {"content": big}}]}).to_string();
    let mut events: Vec<String> = std::iter::repeat_n(chunk, 9).collect();
    events.push("[DONE]".to_string());
    fake.push(Reply::stream(events));
    let s = stream(&gw, &json!({"model": "gpt41", "input": "Write a lot."}));
    assert_eq!(s.status, 200);
    assert!(s.complete, "the stream ends properly, not cut");
    let last = s.chunks().pop().expect("events");
    assert_eq!(last["type"], "response.failed", "{}", last["type"]);
    let metrics = gw.get("/metrics").text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sigorest_requests_total{route=\"responses\""))
        .unwrap_or("");
    assert!(line.contains("status=\"502\""), "{line}");
    assert!(
        metrics.contains(
            "sigorest_upstream_errors_total{provider=\"mammouth\",kind=\"bad_answer\"} 1"
        ),
        "{metrics}"
    );
}
