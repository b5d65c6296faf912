//! Where a request goes: fallbacks (the request's own and the server's), `auto`, the model
//! named in the path, and `/v1/embeddings`.

use serde_json::{Value, json};

use crate::support::client::{self, Call};
use crate::support::gateway::{Gateway, Options, request};
use crate::support::upstream::{FakeUpstream, Recorded, Reply};

fn setup(opts: Options) -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(opts.upstream(&fake.base_url()));
    (fake, gw)
}

/// The upstream model ids of the chat requests, in order.
fn models_asked(fake: &FakeUpstream) -> Vec<String> {
    fake.requests_to("/v1/chat/completions")
        .iter()
        .filter_map(|r| r.model().map(str::to_string))
        .collect()
}

const ALL: &str = "gpt41, kimi, claude-h, moon-8k, embedding-small";

#[test]
fn a_failing_model_falls_back_to_the_next_and_says_who_answered() {
    let (fake, gw) = setup(Options::default().models(ALL));
    fake.push(Reply::status(503));
    let r = gw.chat("gpt41", "hi", json!({"fallbacks": ["kimi"], "retries": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sigorest-model"), Some("kimi"));
    assert_eq!(models_asked(&fake), ["gpt-4.1", "kimi-k2.5"]);
    assert!(
        fake.last_json().unwrap().get("fallbacks").is_none(),
        "the extension stays home"
    );
    // An error of the request itself is not handed to another model.
    fake.push(Reply::error(400, "bad tool schema"));
    let r = gw.chat("gpt41", "hi", json!({"fallbacks": ["kimi"]}));
    r.assert_error(400, "invalid_request");
    assert_eq!(fake.request_count(), 3);
    // Nor is a model asked for that does not exist.
    gw.chat("gtp41", "hi", json!({"fallbacks": ["kimi"]}))
        .assert_error(404, "model_not_found");
    assert_eq!(fake.request_count(), 3);
}

#[test]
fn an_open_breaker_or_a_missing_fallback_is_skipped() {
    let (fake, gw) = setup(Options::default().models(ALL));
    fake.push_n(3, Reply::status(500));
    for _ in 0..3 {
        gw.chat("gpt41", "x", json!({"retries": 1}))
            .assert_error(502, "upstream_error");
    }
    let r = gw.chat("gpt41", "x", json!({"fallbacks": ["no-such", "claude-h"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sigorest-model"), Some("claude-h"));
    assert_eq!(fake.request_count(), 4, "the open model was not called");
}

#[test]
fn when_no_model_answers_the_failure_and_the_books_are_of_a_model_that_was_called() {
    let (fake, gw) = setup(
        Options::default()
            .models(ALL)
            .keys("ana,sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae,gpt41|claude-h,,"),
    );
    let ana = |body: &Value| {
        request(
            &gw.url("/v1/chat/completions"),
            "POST",
            Some(&serde_json::to_vec(body).unwrap()),
            &[("authorization", "Bearer foo")],
        )
    };
    let ask = |model: &str, extra: Value| {
        let mut b = json!({"model": model, "retries": 1,
                           "messages": [{"role": "user", "content": "x"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // claude-h's breaker opens.
    fake.push_n(3, Reply::status(500));
    for _ in 0..3 {
        ana(&ask("claude-h", json!({}))).assert_error(502, "upstream_error");
    }
    // gpt41 fails when called; its fallbacks are an open breaker, a model this key may not
    // use and one that does not exist: the answer is gpt41's failure, not theirs.
    fake.push(Reply::error(500, "gpt41 is down"));
    let r = ana(&ask(
        "gpt41",
        json!({"fallbacks": ["claude-h", "kimi", "nosuch"]}),
    ));
    let message = r.assert_error(502, "upstream_error");
    assert!(message.contains("gpt41"), "{message}");
    assert_eq!(r.header("x-should-retry"), Some("false"));
    let metrics = gw.get("/metrics").text();
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sigorest_requests_total{"))
        .collect();
    assert_eq!(
        requests,
        [
            r#"sigorest_requests_total{route="chat",model="claude-h",provider="mammouth",status="502",key="ana"} 3"#,
            r#"sigorest_requests_total{route="chat",model="gpt41",provider="mammouth",status="502",key="ana"} 1"#,
        ],
        "counted as gpt41's failure"
    );
    let usage = gw.get("/api/usage").json();
    let rows: Vec<&str> = usage["today"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["model"].as_str())
        .collect();
    assert!(
        !rows.contains(&"kimi") && !rows.contains(&"nosuch"),
        "{rows:?}"
    );
    // None called at all (the model asked for has its breaker open, its fallback is not
    // this key's): the answer is the model asked for's.
    let r = ana(&ask("claude-h", json!({"fallbacks": ["kimi"]})));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("claude-h"), "{}", r.text());
}

#[test]
fn the_servers_fallbacks_apply_unless_the_request_names_its_own() {
    let routing = |c: &mut sigorest::config::Config| {
        c.routing.fallbacks = vec![("gpt41".into(), vec!["claude-h".into()])];
    };
    let (fake, gw) = setup(Options::default().models(ALL).configure(routing));
    fake.push(Reply::status(502));
    let r = gw.chat("GPT-4.1", "x", json!({"retries": 1}));
    assert_eq!(
        r.header("x-sigorest-model"),
        Some("claude-h"),
        "{}",
        r.text()
    );
    fake.push(Reply::status(502));
    let r = gw.chat("gpt41", "x", json!({"retries": 1, "fallbacks": ["kimi"]}));
    assert_eq!(r.header("x-sigorest-model"), Some("kimi"));
    // An empty list asks for no fallback at all, the server's included.
    fake.push(Reply::status(502));
    let before = fake.request_count();
    gw.chat("gpt41", "x", json!({"retries": 1, "fallbacks": []}))
        .assert_error(502, "upstream_error");
    assert_eq!(fake.request_count(), before + 1, "gpt41 only");
}

#[test]
fn a_context_too_small_goes_to_the_next_model_without_a_call() {
    let (fake, gw) = setup(Options::default().models(ALL));
    let long = "word ".repeat(10_000); // about 12,500 tokens; moon-8k holds 8,192
    let r = gw.chat("moon-8k", &long, json!({"fallbacks": ["kimi"]}));
    assert_eq!(r.header("x-sigorest-model"), Some("kimi"), "{}", r.text());
    assert_eq!(models_asked(&fake), ["kimi-k2.5"]);
    // Alone, the model is asked all the same: the estimate is only an estimate.
    assert_eq!(gw.chat("moon-8k", &long, json!({})).status, 200);
}

#[test]
fn a_stream_falls_back_before_its_first_event() {
    let (fake, gw) = setup(Options::default().models(ALL));
    fake.push(Reply::status(503));
    let body = serde_json::to_vec(&json!({"model": "gpt41", "stream": true, "retries": 1,
        "fallbacks": ["kimi"], "messages": [{"role": "user", "content": "tell me"}]}))
    .unwrap();
    let s = client::stream(gw.http, &Call::post(&body));
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-sigorest-model"), Some("kimi"));
    assert_eq!(s.text(), "echo: tell me");
}

#[test]
fn a_fallback_reached_with_no_time_left_is_not_called_nor_blamed() {
    let (fake, gw) = setup(Options::default().models(ALL));
    // gpt41 hangs until the request's timeout runs out: kimi is reached with no time left.
    let user = json!([{"role": "user", "content": "x"}]);
    let ext = json!({"timeout": 0.5, "retries": 1, "fallbacks": ["kimi"]});
    let calls = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt41", "messages": user}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt41", "stream": true, "messages": user}),
        ),
        (
            "/v1/messages",
            json!({"model": "gpt41", "max_tokens": 10, "messages": user}),
        ),
        ("/v1/responses", json!({"model": "gpt41", "input": "x"})),
    ];
    for (path, mut body) in calls {
        for (k, v) in ext.as_object().unwrap() {
            body[k] = v.clone();
        }
        fake.push(Reply::hang());
        let r = gw.post_json(path, &body);
        assert_eq!(r.status, 504, "{path}: {}", r.text());
        assert!(
            r.text().contains("gpt41") && !r.text().contains("kimi"),
            "{path}: the timeout is gpt41's: {}",
            r.text()
        );
    }
    assert_eq!(models_asked(&fake), ["gpt-4.1"; 4], "kimi never called");
    let metrics = gw.get("/metrics").text();
    let lines = |prefix: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    };
    let requests = lines("sigorest_requests_total{");
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|l| l.contains(r#"model="gpt41""#) && l.contains(r#"status="504""#)),
        "{requests:?}"
    );
    assert_eq!(
        lines("sigorest_upstream_errors_total{"),
        [r#"sigorest_upstream_errors_total{provider="mammouth",kind="timeout"} 4"#],
        "none for kimi's provider"
    );
    let usage = gw.get("/api/usage").json();
    let rows: Vec<(&str, u64)> = usage["today"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["model"].as_str().unwrap(), r["errors"].as_u64().unwrap()))
        .collect();
    assert_eq!(rows, [("gpt41", 4)]);
    // The same under `auto`, whose list is its fallbacks (untried, in its order).
    let auto =
        |c: &mut sigorest::config::Config| c.routing.auto = vec!["gpt41".into(), "kimi".into()];
    let (fake, gw) = setup(Options::default().models(ALL).configure(auto));
    fake.push(Reply::hang());
    let r = gw.chat("auto", "x", json!({"timeout": 0.5, "retries": 1}));
    let message = r.assert_error(504, "upstream_timeout");
    assert!(message.contains("gpt41"), "{message}");
    assert_eq!(models_asked(&fake), ["gpt-4.1"]);
}

#[test]
fn the_session_is_the_one_of_the_model_asked_for() {
    let (fake, gw) = setup(Options::default().models(ALL));
    fake.push(Reply::status(503));
    let extra = json!({"fallbacks": ["kimi"], "retries": 1, "session_id": "s1"});
    assert_eq!(gw.chat("gpt41", "first", extra.clone()).status, 200);
    assert_eq!(gw.chat("gpt41", "second", extra).status, 200);
    let last = fake.last_json().unwrap();
    let texts: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(texts, ["first", "echo: first", "second"]);
    assert!(gw.dir.join("sessions/gpt41@s1.json").exists());
}

#[test]
fn auto_picks_the_healthiest_model_of_its_list() {
    let auto =
        |c: &mut sigorest::config::Config| c.routing.auto = vec!["gpt41".into(), "kimi".into()];
    let (fake, gw) = setup(Options::default().models(ALL).configure(auto));
    fake.push(Reply::status(500));
    let r = gw.chat("auto", "x", json!({"retries": 1}));
    assert_eq!(r.header("x-sigorest-model"), Some("kimi"), "{}", r.text());
    // gpt41 failed lately: kimi comes first now.
    let r = gw.chat("auto", "x", json!({}));
    assert_eq!(r.header("x-sigorest-model"), Some("kimi"));
    assert_eq!(models_asked(&fake), ["gpt-4.1", "kimi-k2.5", "kimi-k2.5"]);
    let health = gw.get("/api/health").json();
    assert_eq!(health["auto"]["order"][0]["model"], "kimi", "{health}");
    // Without -auto, `auto` is not a model.
    let (_f, plain) = setup(Options::default());
    plain
        .chat("auto", "x", json!({}))
        .assert_error(404, "model_not_found");
}

#[test]
fn the_model_can_come_from_the_path() {
    let (fake, gw) = setup(Options::default().models(ALL));
    let body =
        serde_json::to_vec(&json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap();
    let r = request(
        &gw.url("/kimi/v1/chat/completions"),
        "POST",
        Some(&body),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.last_json().unwrap()["model"], "kimi-k2.5");
    let list = gw.get("/claude-h/v1/models").json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["claude-h"]);
    // A wrong method there is a plain 405, with nothing of a list in it.
    let r = request(&gw.url("/claude-h/v1/models"), "POST", Some(b"{}"), &[]);
    assert_eq!(r.status, 405);
    assert!(r.json().get("data").is_none(), "{}", r.text());
    // Named by its upstream id, in another case: the same one model.
    let list = gw.get("/Kimi-K2.5/v1/models").json();
    assert_eq!(list["data"][0]["id"], "kimi", "{list}");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    // The SDKs' models.retrieve under such a base URL; a model not offered is a 404.
    let one = gw.get("/kimi/v1/models/kimi").json();
    assert_eq!(one, gw.get("/v1/models/kimi").json(), "the same entry");
    let message = gw
        .get("/kimi/v1/models/gpt41")
        .assert_error(404, "model_not_found");
    assert!(message.contains("'gpt41'"), "{message}");
    gw.get("/nosuch/v1/models")
        .assert_error(404, "model_not_found");
    let msg = serde_json::to_vec(
        &json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let r = request(&gw.url("/claude-h/v1/messages"), "POST", Some(&msg), &[]);
    assert_eq!(r.json()["model"], "claude-h");
    // Percent-escapes are decoded; other paths are untouched.
    let r = request(
        &gw.url("/gpt%34%31/v1/chat/completions"),
        "POST",
        Some(&body),
        &[],
    );
    assert_eq!(r.header("x-sigorest-model"), Some("gpt41"));
    assert_eq!(gw.get("/kimi/api/health").status, 404);
}

fn embeddings(req: &Recorded) -> Reply {
    let n = match &req.json.as_ref().unwrap()["input"] {
        Value::Array(a) => a.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2]}))
        .collect();
    Reply::json(
        200,
        json!({"object": "list", "data": data, "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 4, "total_tokens": 4}}),
    )
}

#[test]
fn embeddings_pass_through_to_the_provider() {
    let (fake, gw) = setup(Options::default().models(ALL));
    fake.route("POST", "/v1/embeddings", embeddings);
    let body = json!({"model": "embedding-small", "input": ["a", "b"], "encoding_format": "float", "dimensions": 2, "timeout": 30});
    let r = gw.post_json("/v1/embeddings", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(r.header("x-sigorest-model"), Some("embedding-small"));
    let seen = &fake.requests_to("/v1/embeddings")[0];
    assert_eq!(
        seen.json.as_ref().unwrap(),
        &json!({"model": "text-embedding-3-small", "input": ["a", "b"],
        "encoding_format": "float", "dimensions": 2})
    );
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer test-key-mammouth_api_key")
    );
    // Without /v1 too; the wrong kind of model is refused either way.
    assert_eq!(gw.post_json("/embeddings", &body).status, 200);
    gw.post_json("/v1/embeddings", &json!({"model": "gpt41", "input": "a"}))
        .assert_error(400, "invalid_request");
    gw.chat("embedding-small", "hi", json!({}))
        .assert_error(400, "invalid_request");
    gw.post_json("/v1/embeddings", &json!({"model": "embedding-small"}))
        .assert_error(400, "invalid_request");
    gw.post_json(
        "/v1/embeddings",
        &json!({"model": "embedding-small", "input": []}),
    )
    .assert_error(400, "invalid_request");
    // The chat extensions that mean nothing here are refused, not sent to the provider.
    for (field, value) in [
        ("session_id", json!("s")),
        ("fallbacks", json!(["embedding-large"])),
    ] {
        let mut b = json!({"model": "embedding-small", "input": "a"});
        b[field] = value;
        let msg = gw
            .post_json("/v1/embeddings", &b)
            .assert_error(400, "invalid_request");
        assert!(msg.contains(field), "{msg}");
    }
    assert_eq!(
        fake.requests_to("/v1/embeddings").len(),
        2,
        "none of them went on"
    );
}

#[test]
fn embeddings_are_retried_and_bad_answers_are_errors() {
    let (fake, gw) = setup(Options::default().models(ALL));
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    fake.route("POST", "/v1/embeddings", move |req: &Recorded| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::status(503)
        } else {
            embeddings(req)
        }
    });
    let r = gw.post_json(
        "/v1/embeddings",
        &json!({"model": "embedding-small", "input": "a"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    fake.route(
        "POST",
        "/v1/embeddings",
        Reply::json(200, json!({"choices": []})),
    );
    let r = gw.post_json(
        "/v1/embeddings",
        &json!({"model": "embedding-small", "input": "a", "retries": 1}),
    );
    let msg = r.assert_error(502, "upstream_error");
    assert!(msg.contains("embeddings"), "{msg}");
}
