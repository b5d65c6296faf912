//! `POST /v1/chat/completions` end to end: the gateway in-process against the scripted fake
//! upstream — what the upstream receives, what the client gets back, retries, breakers,
//! sessions, errors, parallelism and overload.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

fn setup() -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    (fake, gw)
}

#[test]
fn a_chat_goes_upstream_with_the_id_and_key_and_comes_back_verbatim() {
    let (fake, gw) = setup();
    let raw = r#"{"id":"chatcmpl-9","object":"chat.completion","created":1,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5},"system_fingerprint":"fp_x"}"#;
    fake.push(Reply::json(200, serde_json::from_str(raw).unwrap()));
    let r = gw.chat("GPT41", "hello", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::from_str::<Value>(raw).unwrap());
    assert_eq!(r.header("content-type"), Some("application/json"));

    let got = fake.wait_for_requests(1, Duration::from_secs(5)).remove(0);
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.header("authorization"),
        Some("Bearer test-key-mammouth_api_key")
    );
    assert_eq!(got.header("content-type"), Some("application/json"));
    let body = got.json.unwrap();
    assert_eq!(body["model"], "gpt-4.1");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "hello"}])
    );
}

#[test]
fn the_full_upstream_id_and_the_bare_path_work_too() {
    let (fake, gw) = setup();
    let body = json!({"model": "Claude-3-5-Haiku-20241022", "messages": [{"role": "user", "content": "x"}]});
    let r = gw.post_json("/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        fake.last_json().unwrap()["model"],
        "claude-3-5-haiku-20241022"
    );
}

#[test]
fn providers_route_to_their_own_base_url_and_key() {
    let mammouth = FakeUpstream::start();
    let moonshot = FakeUpstream::start();
    let gw = Gateway::start(
        Options::default()
            .upstream(&mammouth.base_url())
            .var("MOONSHOT_BASE_URL", &moonshot.base_url())
            .var("MOONSHOT_API_KEY", "moon-key"),
    );
    assert_eq!(gw.chat("kimi", "x", json!({})).status, 200);
    let got = moonshot
        .wait_for_requests(1, Duration::from_secs(5))
        .remove(0);
    assert_eq!(got.header("authorization"), Some("Bearer moon-key"));
    assert_eq!(got.json.unwrap()["model"], "kimi-k2.5");
    assert_eq!(mammouth.request_count(), 0);
}

#[test]
fn memory_session_and_clamps_shape_the_upstream_body() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .memory(r#"{"content": "The user lives in Lyon.", "cache": true}"#),
    );
    fake.push(Reply::chat("first answer"));
    let r = gw.chat(
        "claude-h",
        "first question",
        json!({"session_id": "trip", "temperature": 1.8, "max_tokens": 100000, "timeout": 20, "retries": 2,
               "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
               "response_format": {"type": "json_object"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = fake.last_json().unwrap();
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": [{"type": "text", "text": "The user lives in Lyon.",
            "cache_control": {"type": "ephemeral"}}]})
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "first question"})
    );
    assert_eq!(body["temperature"], json!(1.0), "claude's range is 0..1");
    assert_eq!(body["max_tokens"], json!(8192));
    assert_eq!(body["tools"][0]["function"]["name"], "f");
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    for ext in ["session_id", "timeout", "retries"] {
        assert!(body.get(ext).is_none(), "{ext} must not reach the upstream");
    }

    // The second request on the session carries the first turn after the memory.
    fake.push(Reply::chat("second answer"));
    assert_eq!(
        gw.chat("claude-h", "second question", json!({"session_id": "trip"}))
            .status,
        200
    );
    let msgs = fake.last_json().unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone();
    let texts: Vec<&Value> = msgs.iter().map(|m| &m["content"]).collect();
    assert_eq!(msgs.len(), 4);
    assert_eq!(
        texts[1..],
        [
            &json!("first question"),
            &json!("first answer"),
            &json!("second question")
        ]
    );

    let file = gw.dir.join("sessions/claude-h@trip.json");
    let stored: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let history = stored["history"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(
        history[3],
        json!({"role": "assistant", "content": "second answer"})
    );
}

/// A refusal or a filtered answer (no text, no tool calls) keeps no session turn: an empty
/// assistant message would go upstream with every later turn, and Anthropic refuses those.
#[test]
fn an_empty_answer_keeps_no_session_turn() {
    let (fake, gw) = setup();
    let session = json!({"session_id": "empty"});
    fake.push(Reply::json(
        200,
        json!({"id": "x", "object": "chat.completion", "model": "claude-h",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": null, "refusal": "I cannot help"}}]}),
    ));
    assert_eq!(gw.chat("claude-h", "q1", session.clone()).status, 200);
    fake.push(Reply::chat_stream(&[]).model("claude-h"));
    assert_eq!(
        gw.chat(
            "claude-h",
            "q2",
            json!({"session_id": "empty", "stream": true})
        )
        .status,
        200
    );
    fake.push(Reply::chat("a3"));
    assert_eq!(gw.chat("claude-h", "q3", session).status, 200);
    let sent = fake.last_json().unwrap();
    let texts: Vec<&Value> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["content"])
        .collect();
    assert_eq!(texts, [&json!("q3")], "no empty turn before it");
}

#[test]
fn gpt5_gets_max_completion_tokens_and_no_max_tokens_is_never_zero() {
    let (fake, gw) = setup();
    let gw = {
        drop(gw);
        Gateway::start(
            Options::default()
                .upstream(&fake.base_url())
                .models("gpt5m,gpt41"),
        )
    };
    assert_eq!(
        gw.chat("gpt5m", "x", json!({"max_tokens": 50000})).status,
        200
    );
    let body = fake.last_json().unwrap();
    assert_eq!(body["max_completion_tokens"], 4096);
    assert!(body.get("max_tokens").is_none());
    assert_eq!(gw.chat("gpt41", "x", json!({})).status, 200);
    let body = fake.last_json().unwrap();
    assert!(body.get("max_tokens").is_none() && body.get("max_completion_tokens").is_none());
}

#[test]
fn bad_bodies_get_400_and_the_upstream_sees_nothing() {
    let (fake, gw) = setup();
    let cases: Vec<&[u8]> = vec![
        b"",
        b"{",
        b"\xff\xfe\x00",
        b"[]",
        br#"{"model": "gpt41"}"#,
        br#"{"model": 7, "messages": []}"#,
        br#"{"model": "gpt41", "messages": "hi"}"#,
        br#"{"model": "gpt41", "messages": [{"role": "user", "content": "x"}], "session_id": "../../etc/passwd"}"#,
        br#"{"model": "gpt41", "messages": [{"role": "user", "content": "x"}], "session_id": ".hidden"}"#,
        br#"{"model": "gpt41", "messages": [{"role": "user", "content": "x"}], "timeout": "soon"}"#,
        br#"{"model": "gpt41", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#,
        br#"{"model": "gpt41", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
    ];
    for body in cases {
        let r = gw.post("/v1/chat/completions", body);
        r.assert_error(400, "invalid_request");
    }
    assert_eq!(fake.request_count(), 0);
    assert!(
        !gw.dir.join("sessions").exists(),
        "no session file may be written"
    );
    assert_eq!(gw.get("/api/health").status, 200, "still healthy");
}

#[test]
fn hostile_session_ids_write_nothing() {
    let (fake, gw) = setup();
    let long = "a".repeat(129);
    for id in [
        "../x",
        "a/b",
        "..",
        ".x",
        "",
        "a b",
        "x\u{0}y",
        "é",
        long.as_str(),
        "a\\b",
        "%2e%2e",
    ] {
        let r = gw.chat("gpt41", "x", json!({"session_id": id}));
        let msg = r.assert_error(400, "invalid_request");
        assert!(msg.contains("session_id"), "{msg}");
    }
    assert_eq!(fake.request_count(), 0);
    assert!(!gw.dir.join("sessions").exists());
    let r = gw.chat("gpt41", "x", json!({"session_id": "a".repeat(128)}));
    assert_eq!(r.status, 200);
}

#[test]
fn unknown_and_unlisted_models_are_404() {
    let (_fake, gw) = setup();
    let msg = gw
        .chat("gpt-99", "x", json!({}))
        .assert_error(404, "model_not_found");
    assert!(msg.contains("gpt-99"), "{msg}");
    let msg = gw
        .chat("o3", "x", json!({}))
        .assert_error(404, "model_not_found");
    assert!(
        msg.contains("not enabled"),
        "in the catalog but not whitelisted: {msg}"
    );
}

#[test]
fn a_missing_key_is_503_naming_the_variable_without_retry_hint() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().var("MAMMOUTH_BASE_URL", &fake.base_url()));
    let r = gw.chat("gpt41", "x", json!({}));
    let msg = r.assert_error(503, "provider_not_configured");
    assert!(msg.contains("MAMMOUTH_API_KEY"), "{msg}");
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert_eq!(fake.request_count(), 0);
}

#[test]
fn upstream_4xx_passes_through_without_retry() {
    let (fake, gw) = setup();
    fake.push(Reply::json(
        401,
        json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
            "param": null, "code": "invalid_api_key"}}),
    ));
    let r = gw.chat("gpt41", "x", json!({}));
    let msg = r.assert_error(401, "invalid_api_key");
    assert_eq!(msg, "Incorrect API key provided");
    assert_eq!(fake.request_count(), 1, "4xx is not retried");
}

#[test]
fn five_hundreds_are_retried_then_502() {
    let (fake, gw) = setup();
    fake.push_n(3, Reply::error(500, "boom"));
    let r = gw.chat("gpt41", "x", json!({"retries": 3}));
    let msg = r.assert_error(502, "upstream_error");
    assert!(msg.contains("500") && msg.contains("boom"), "{msg}");
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert_eq!(fake.request_count(), 3);
}

#[test]
fn a_retry_recovers_from_a_5xx_and_from_garbage() {
    let (fake, gw) = setup();
    fake.push(Reply::error(503, "busy"));
    fake.push(Reply::garbage(
        b"\x00\x01 this is not HTTP\r\n\r\n".to_vec(),
    ));
    fake.push(Reply::chat("third time lucky"));
    let r = gw.chat("gpt41", "x", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "third time lucky"
    );
    assert_eq!(fake.request_count(), 3);
}

#[test]
fn garbage_after_all_retries_is_502() {
    let (fake, gw) = setup();
    fake.push(Reply::garbage(
        b"\x00\x01 this is not HTTP\r\n\r\n".to_vec(),
    ));
    fake.push(Reply::close());
    fake.push(Reply::error(502, "bad gateway"));
    gw.chat("gpt41", "x", json!({}))
        .assert_error(502, "upstream_error");
    assert_eq!(fake.request_count(), 3);
}

#[test]
fn a_429_honours_retry_after_then_succeeds() {
    let (fake, gw) = setup();
    fake.push(Reply::error(429, "slow down").header("Retry-After", "1"));
    fake.push(Reply::chat("ok now"));
    let started = Instant::now();
    let r = gw.chat("gpt41", "x", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let waited = reqs[1].at - reqs[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_persistent_429_is_rate_limited_with_retry_after() {
    let (fake, gw) = setup();
    fake.push_n(
        2,
        Reply::error(429, "quota exceeded").header("retry-after-ms", "10"),
    );
    let r = gw.chat("gpt41", "x", json!({"retries": 2}));
    let msg = r.assert_error(429, "rate_limited");
    assert!(msg.contains("quota exceeded"), "{msg}");
    assert!(r.header("retry-after").is_some());
    assert_eq!(fake.request_count(), 2);
    // 429 says nothing about the model's health: the breaker stays closed.
    let health = gw.get("/api/health").json();
    assert_eq!(health["circuit_breakers"]["gpt41"]["state"], "closed");
}

#[test]
fn a_slow_upstream_is_504_within_the_timeout() {
    let (fake, gw) = setup();
    fake.set_default(Reply::hang());
    let started = Instant::now();
    let r = gw.chat("gpt41", "x", json!({"timeout": 1}));
    r.assert_error(504, "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(r.header("x-should-retry"), Some("false"));
}

#[test]
fn three_failed_requests_open_the_breaker_for_that_model_only() {
    let (fake, gw) = setup();
    fake.set_default(|req: &crate::support::upstream::Recorded| {
        if req.model() == Some("gpt-4.1") {
            Reply::error(500, "down")
        } else {
            Reply::chat("fine")
        }
    });
    for _ in 0..3 {
        gw.chat("gpt41", "x", json!({"retries": 1}))
            .assert_error(502, "upstream_error");
    }
    assert_eq!(fake.request_count(), 3);
    let r = gw.chat("gpt41", "x", json!({}));
    let msg = r.assert_error(503, "circuit_open");
    assert!(msg.contains("gpt41"), "{msg}");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((290..=300).contains(&retry), "{retry}");
    assert_eq!(fake.request_count(), 3, "an open breaker fails fast");

    assert_eq!(
        gw.chat("claude-h", "x", json!({})).status,
        200,
        "other models unaffected"
    );
    let health = gw.get("/api/health").json();
    assert_eq!(health["status"], "degraded");
    let b = &health["circuit_breakers"]["gpt41"];
    assert_eq!(b["state"], "open");
    assert_eq!(b["consecutive_failures"], 3);
    assert!(b["retry_in_s"].as_u64().unwrap() > 0);
    assert_eq!(health["circuit_breakers"]["claude-h"]["state"], "closed");
}

#[test]
fn a_timeout_the_client_set_short_never_opens_the_breaker() {
    // A model that takes 300 ms, asked by a client that gives it 50: the client gets its
    // 504, and the model stays open to everyone else (before, three such requests opened
    // its breaker for 5 minutes).
    let (fake, gw) = setup();
    fake.set_default(Reply::chat("slow but fine").delay(Duration::from_millis(300)));
    let short = json!({"timeout": 0.05, "retries": 1});
    for _ in 0..2 {
        gw.chat("gpt41", "x", short.clone())
            .assert_error(504, "upstream_timeout");
    }
    let mut stream = short.clone();
    stream["stream"] = json!(true);
    gw.chat("gpt41", "x", stream)
        .assert_error(504, "upstream_timeout");
    let r = gw.post_json(
        "/v1/messages",
        &json!({"model": "gpt41", "max_tokens": 5, "timeout": 0.05, "retries": 1,
                "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "api_error");
    let b = &gw.get("/api/health").json()["circuit_breakers"]["gpt41"];
    assert_eq!(b["state"], "closed", "{b}");
    assert_eq!(b["consecutive_failures"], 0, "{b}");
    let r = gw.chat("gpt41", "x", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn concurrent_turns_on_one_session_are_all_kept() {
    let (fake, gw) = setup();
    fake.set_default(Reply::chat("answer").delay(Duration::from_millis(100)));
    let gw = Arc::new(gw);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let gw = gw.clone();
            thread::spawn(move || {
                gw.chat(
                    "gpt41",
                    &format!("question {i}"),
                    json!({"session_id": "shared"}),
                )
                .status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let stored: Value =
        serde_json::from_slice(&std::fs::read(gw.dir.join("sessions/gpt41@shared.json")).unwrap())
            .unwrap();
    let history = stored["history"].as_array().unwrap();
    assert_eq!(history.len(), 12, "every turn kept: {history:?}");
    for i in 0..6 {
        assert!(
            history
                .iter()
                .any(|m| m["content"] == format!("question {i}")),
            "turn {i} lost"
        );
    }
}

/// The Go original holds its breaker's lock across the upstream call, so requests to one
/// model run one after another. Here they must overlap: 40 requests to one model whose
/// upstream takes 500 ms finish together, far from the 20 s a serialised gateway needs.
#[test]
fn an_idle_gateway_keeps_a_few_workers() {
    let gw = Gateway::start(Options::default().workers(64, 128));
    let health = gw.get("/api/health").json();
    assert_eq!(health["workers"]["total"], 64);
    assert!(
        health["workers"]["started"].as_u64().unwrap() <= 4,
        "{health}"
    );
}

#[test]
fn requests_to_one_model_run_in_parallel() {
    let fake = FakeUpstream::start();
    let gw = Arc::new(Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .workers(64, 128),
    ));
    fake.set_default(Reply::chat("slow").delay(Duration::from_millis(500)));
    let started = Instant::now();
    let handles: Vec<_> = (0..40)
        .map(|_| {
            let gw = gw.clone();
            thread::spawn(move || gw.chat("gpt41", "x", json!({})).status)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "40 × 500 ms took {took:?}: serialised?"
    );
    // Every request reached the upstream before the first answer came back.
    let reqs = fake.requests();
    let spread =
        reqs.iter().map(|r| r.at).max().unwrap() - reqs.iter().map(|r| r.at).min().unwrap();
    assert!(
        spread < Duration::from_millis(450),
        "arrivals spread over {spread:?}"
    );
    // Calls to a provider wait on the event loops: the burst needed no worker thread
    // beyond the few that start with the server, and every place is free again.
    let health = gw.get("/api/health").json();
    let started = health["workers"]["started"].as_u64().unwrap();
    assert!(started <= 4, "{health}");
    assert_eq!(health["workers"]["total"], 64);
    assert_eq!(health["workers"]["busy"], 0, "{health}");
}

#[test]
fn overload_answers_503_at_once_and_nothing_hangs() {
    let fake = FakeUpstream::start();
    let gw = Arc::new(Gateway::start(
        Options::default().upstream(&fake.base_url()).workers(2, 2),
    ));
    fake.set_default(Reply::chat("slow").delay(Duration::from_millis(800)));
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let gw = gw.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let r = gw.chat("gpt41", "x", json!({}));
                (r, started.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let overloaded: Vec<_> = results.iter().filter(|(r, _)| r.status == 503).collect();
    assert!(ok >= 2, "the workers answered");
    assert!(
        overloaded.len() >= 4,
        "surplus refused: {ok} ok, {} refused",
        overloaded.len()
    );
    for (r, took) in overloaded {
        r.assert_error(503, "overloaded");
        assert!(r.header("retry-after").is_some());
        assert!(*took < Duration::from_millis(700), "refused late: {took:?}");
    }
    assert_eq!(gw.get("/api/health").status, 200, "healthy afterwards");
}

#[test]
fn a_non_streamed_answer_with_tool_calls_keeps_them_in_the_session_on_every_api() {
    let (fake, gw) = setup();
    let answer = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": "Checking", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
    let calls = [
        (
            "/v1/chat/completions",
            "c",
            json!({"messages": [{"role": "user", "content": "w?"}]}),
        ),
        (
            "/v1/messages",
            "m",
            json!({"max_tokens": 100, "messages": [{"role": "user", "content": "w?"}]}),
        ),
        ("/v1/responses", "r", json!({"input": "w?"})),
    ];
    for (path, session, mut body) in calls {
        fake.push(Reply::json(200, answer.clone()));
        body["model"] = json!("gpt41");
        body["session_id"] = json!(session);
        let r = gw.post_json(path, &body);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let file = gw.dir.join(&format!("sessions/gpt41@{session}.json"));
        let stored: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        assert_eq!(stored["history"][1]["content"], "Checking", "{path}");
        assert_eq!(
            stored["history"][1]["tool_calls"],
            json!([{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]),
            "{path}"
        );
    }
}

#[test]
fn a_tool_loop_goes_on_through_a_session_on_every_api() {
    let (fake, gw) = setup();
    let call = json!({"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}});
    let calls_answer = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": null, "tool_calls": [call]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object"}}}]);
    let anthropic_tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    // Each API's second request: only the tool's result, as its clients send it.
    let apis = [
        (
            "/v1/chat/completions",
            json!({"tools": tools, "messages": [{"role": "user", "content": "Weather in Paris?"}]}),
            json!({"tools": tools, "messages": [
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]}),
        ),
        (
            "/v1/messages",
            json!({"max_tokens": 100, "tools": anthropic_tools,
                "messages": [{"role": "user", "content": "Weather in Paris?"}]}),
            json!({"max_tokens": 100, "tools": anthropic_tools, "messages": [{"role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18 C"}]}]}),
        ),
        (
            "/v1/responses",
            json!({"tools": [{"type": "function", "name": "get_weather",
                "parameters": {"type": "object"}}], "input": "Weather in Paris?"}),
            json!({"tools": [{"type": "function", "name": "get_weather",
                "parameters": {"type": "object"}}], "input": [{"type": "function_call_output",
                "call_id": "call_1", "output": "18 C"}]}),
        ),
    ];
    for (n, (path, first, second)) in apis.into_iter().enumerate() {
        let session = format!("loop{n}");
        for (body, reply) in [
            (first, Reply::json(200, calls_answer.clone())),
            (second, Reply::chat("It is 18 C in Paris.")),
        ] {
            fake.push(reply);
            let mut body = body;
            body["model"] = json!("gpt41");
            body["session_id"] = json!(session);
            let r = gw.post_json(path, &body);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
        // The second call upstream: the question, the call and its result, paired.
        let sent = fake.last_json().unwrap();
        let msgs = sent["messages"].as_array().unwrap();
        let shape: Vec<(&str, Option<&str>)> = msgs
            .iter()
            .map(|m| {
                let id = m["tool_call_id"]
                    .as_str()
                    .or(m["tool_calls"][0]["id"].as_str());
                (m["role"].as_str().unwrap(), id)
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("user", None),
                ("assistant", Some("call_1")),
                ("tool", Some("call_1"))
            ],
            "{path}: {msgs:?}"
        );
        assert_eq!(msgs[2]["content"], "18 C", "{path}");
        // The session holds the whole loop.
        let file = gw.dir.join(&format!("sessions/gpt41@{session}.json"));
        let stored: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let roles: Vec<&str> = stored["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "tool", "assistant"], "{path}");
    }
    // A later request without tools (sigoe, curl) on that session: the calls as text, so
    // that no provider refuses calls it has no tools for.
    fake.push(Reply::chat("You're welcome."));
    let r = gw.chat("gpt41", "Thanks!", json!({"session_id": "loop0"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = fake.last_json().unwrap();
    let msgs = sent["messages"].as_array().unwrap();
    assert!(
        msgs.iter()
            .all(|m| m.get("tool_calls").is_none() && m["role"] != "tool"),
        "{msgs:?}"
    );
    assert_eq!(
        msgs[1]["content"],
        "[tool call get_weather({\"city\":\"Paris\"})]"
    );
    assert_eq!(
        msgs[2],
        json!({"role": "user", "content": "[tool result call_1] 18 C"})
    );
}

#[test]
fn an_upstream_redirect_is_a_502_naming_the_base_url() {
    let (fake, gw) = setup();
    fake.push(Reply::status(307));
    let r = gw.chat("gpt41", "hi", json!({"retries": 1}));
    let msg = r.assert_error(502, "upstream_error");
    assert!(msg.contains("307") && msg.contains("base URL"), "{msg}");
}

#[test]
fn an_answer_without_choices_is_a_bad_answer_not_an_empty_one() {
    let (fake, gw) = setup();
    fake.push(Reply::json(
        200,
        json!({"id": "x", "object": "chat.completion", "choices": []}),
    ));
    let r = gw.chat("gpt41", "hi", json!({"retries": 1}));
    let msg = r.assert_error(502, "upstream_error");
    assert!(msg.contains("no choices"), "{msg}");
}

#[test]
fn half_an_emoji_in_a_request_reaches_the_upstream_as_u_fffd() {
    // JavaScript's JSON.stringify("x😀".slice(0, 2)) is "x\ud83d": a lone high half, which
    // JSON allows and serde refuses. Each API takes it, as the gateway reads answers.
    let fake = FakeUpstream::start();
    let gw = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .models("gpt41, embedding-small"),
    );
    let cut = r#""x\ud83d""#;
    let calls = [
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"gpt41","messages":[{{"role":"user","content":{cut}}}]}}"#),
        ),
        (
            "/v1/messages",
            format!(
                r#"{{"model":"gpt41","max_tokens":8,"messages":[{{"role":"user","content":{cut}}}]}}"#
            ),
        ),
        (
            "/v1/responses",
            format!(r#"{{"model":"gpt41","input":{cut}}}"#),
        ),
        // The model from the path, put into a body read the same way.
        (
            "/gpt41/v1/chat/completions",
            format!(r#"{{"messages":[{{"role":"user","content":{cut}}}]}}"#),
        ),
    ];
    for (i, (path, body)) in calls.iter().enumerate() {
        let r = gw.post(path, body.as_bytes());
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let got = fake
            .wait_for_requests(i + 1, Duration::from_secs(5))
            .remove(i);
        let sent = got.json.as_ref().unwrap();
        let last = sent["messages"].as_array().unwrap().last().unwrap();
        assert_eq!(last["content"], "x\u{fffd}", "{path}: {sent}");
        assert_eq!(sent["model"], "gpt-4.1", "{path}");
    }
    fake.route("POST", "/v1/embeddings", |_: &crate::support::upstream::Recorded| {
        Reply::json(
            200,
            json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}]}),
        )
    });
    let r = gw.post(
        "/v1/embeddings",
        format!(r#"{{"model":"embedding-small","input":{cut}}}"#).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = fake.requests_to("/v1/embeddings").remove(0);
    assert_eq!(got.json.as_ref().unwrap()["input"], "x\u{fffd}");
    // A body broken otherwise is still refused, with the parser's reason.
    let r = gw.post(
        "/v1/chat/completions",
        br#"{"model":"gpt41","content":"\ud83d""#,
    );
    let msg = r.assert_error(400, "invalid_request");
    assert!(msg.contains("not valid JSON"), "{msg}");
}
