//! Usage and metrics through the gateway: `/metrics` counters move by exactly one per
//! request, streams count their tokens, the label sets stay bounded whatever clients send,
//! `-metrics-allow`, `/api/usage`, and the status page.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigorest::parts::Catalog;

use crate::support::client::{self, Call};
use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Recorded, Reply};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

fn setup() -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    (fake, gw)
}

/// The samples of one scrape: `name{labels}` → value.
pub(crate) fn scrape(gw: &Gateway) -> BTreeMap<String, f64> {
    let r = gw.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&r.text())
}

fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value of {l}")),
            };
            (series.to_string(), value)
        })
        .collect()
}

/// The counter and histogram-count series that changed between two scrapes, and by how much.
pub(crate) fn moved(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| {
            let name = k.split('{').next().unwrap_or("");
            name.ends_with("_total") || name.ends_with("_count")
        })
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Scrapes until `check` holds on the samples (a stream is counted as its body ends).
pub(crate) fn scrape_until(
    gw: &Gateway,
    check: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(gw);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never held; last scrape: {s:#?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn requests(model: &str, provider: &str, status: u16) -> String {
    format!(
        "sigorest_requests_total{{route=\"chat\",model=\"{model}\",provider=\"{provider}\",status=\"{status}\",key=\"\"}}"
    )
}

fn tokens(model: &str, kind: &str) -> String {
    format!("sigorest_tokens_total{{model=\"{model}\",kind=\"{kind}\",key=\"\"}}")
}

fn cost(model: &str) -> String {
    format!("sigorest_cost_usd_total{{model=\"{model}\",key=\"\"}}")
}

fn stream_body(model: &str, extra: Value) -> Vec<u8> {
    let mut body = json!({"model": model, "stream": true,
        "messages": [{"role": "user", "content": "count"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    serde_json::to_vec(&body).unwrap()
}

#[test]
fn counters_move_by_exactly_one_per_request() {
    let (fake, gw) = setup();
    let gpt = Catalog::embedded().get("gpt41").unwrap().clone();

    let before = scrape(&gw);
    fake.push(Reply::chat("hi there").usage(11, 4));
    assert_eq!(gw.chat("gpt41", "hello", json!({})).status, 200);
    let after = scrape(&gw);
    let d = moved(&before, &after);
    let expected_cost = (11.0 * gpt.input_price + 4.0 * gpt.output_price) / 1e6;
    let want: BTreeMap<String, f64> = [
        (requests("gpt41", "mammouth", 200), 1.0),
        (tokens("gpt41", "prompt"), 11.0),
        (tokens("gpt41", "completion"), 4.0),
        (cost("gpt41"), expected_cost),
        (
            "sigorest_request_duration_seconds_count{route=\"chat\",model=\"gpt41\"}".into(),
            1.0,
        ),
        (
            "sigorest_overhead_seconds_count{route=\"chat\"}".into(),
            1.0,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        d.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        assert!((d[k] - v).abs() < 1e-12, "{k}: {} != {v}", d[k]);
    }

    // Refused before a model is known: one fixed label value, nothing else moves.
    let before = after;
    gw.chat("made-up-model", "x", json!({}))
        .assert_error(404, "model_not_found");
    gw.post("/v1/chat/completions", b"not json")
        .assert_error(400, "invalid_request");
    let after = scrape(&gw);
    let d = moved(&before, &after);
    assert_eq!(d.get(&requests("", "", 404)), Some(&1.0), "{d:#?}");
    assert_eq!(d.get(&requests("", "", 400)), Some(&1.0), "{d:#?}");
    assert_eq!(
        d.get("sigorest_request_duration_seconds_count{route=\"chat\",model=\"\"}"),
        Some(&2.0)
    );
    assert_eq!(d.len(), 3, "{d:#?}");
    assert!(!after.keys().any(|k| k.contains("made-up-model")));

    // Other endpoints are not model calls.
    let before = after;
    gw.get("/api/health");
    gw.get("/v1/models");
    gw.get("/");
    assert!(moved(&before, &scrape(&gw)).is_empty());

    // A stream: one more request, its first-token time, its tokens.
    fake.push(Reply::chat_stream(&["a", "b", "c"]).usage(9, 3));
    let s = client::stream(gw.http, &Call::post(&stream_body("gpt41", json!({}))));
    assert_eq!(s.status, 200);
    let ok = requests("gpt41", "mammouth", 200);
    let after = scrape_until(&gw, |s| s.get(&ok) == Some(&2.0));
    let d = moved(&before, &after);
    assert_eq!(d[&ok], 1.0);
    // Counted once, when it ends: nothing else was counted as a request.
    let counted: Vec<&String> = d
        .keys()
        .filter(|k| k.starts_with("sigorest_requests_total"))
        .collect();
    assert_eq!(counted, [&ok], "{d:#?}");
    assert_eq!(d[&tokens("gpt41", "prompt")], 9.0);
    assert_eq!(d[&tokens("gpt41", "completion")], 3.0);
    assert_eq!(
        d["sigorest_time_to_first_token_seconds_count{model=\"gpt41\"}"],
        1.0
    );
    assert_eq!(fake.requests().len(), 2, "two calls went upstream");
}

#[test]
fn a_streamed_request_counts_its_tokens_whether_or_not_the_client_asked() {
    let (fake, gw) = setup();
    fake.push(Reply::chat_stream(&["x", "y"]).usage(21, 8));
    let s = client::stream(gw.http, &Call::post(&stream_body("kimi", json!({}))));
    assert_eq!(s.text(), "xy");
    assert!(
        s.chunks()
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "the client did not ask for usage: {:?}",
        s.payloads()
    );
    let up = fake.last_json().unwrap();
    assert_eq!(up["stream_options"], json!({"include_usage": true}));
    scrape_until(&gw, |s| s.get(&tokens("kimi", "prompt")) == Some(&21.0));

    fake.push(Reply::chat_stream(&["z"]).usage(5, 1));
    let asked = json!({"stream_options": {"include_usage": true}});
    let s = client::stream(gw.http, &Call::post(&stream_body("kimi", asked)));
    assert_eq!(s.chunks().pop().unwrap()["usage"]["prompt_tokens"], 5);
    let after = scrape_until(&gw, |s| s.get(&tokens("kimi", "prompt")) == Some(&26.0));
    assert_eq!(after[&tokens("kimi", "completion")], 9.0);
    assert_eq!(after[&requests("kimi", "moonshot", 200)], 2.0);

    let usage = gw.get("/api/usage").json();
    let row = &usage["today"]["rows"][0];
    assert_eq!(row["model"], "kimi");
    assert_eq!(row["key"], Value::Null);
    assert_eq!(row["requests"], 2);
    assert_eq!(row["prompt_tokens"], 26);
    assert_eq!(row["completion_tokens"], 9);
}

#[test]
fn a_stream_that_fails_or_loses_its_client_counts_once_with_its_outcome() {
    let (fake, gw) = setup();
    fake.push(Reply::chat_stream(&["a", "b", "c", "d"]).cut_after(2));
    let s = client::stream(gw.http, &Call::post(&stream_body("gpt41", json!({}))));
    assert_eq!(s.status, 200);
    let failed = requests("gpt41", "mammouth", 502);
    let after = scrape_until(&gw, |s| s.get(&failed) == Some(&1.0));
    assert_eq!(
        after["sigorest_upstream_errors_total{provider=\"mammouth\",kind=\"stream_failed\"}"],
        1.0
    );

    fake.push(Reply::chat_stream(&["a", "b", "c", "d", "e"]).gap(Duration::from_millis(200)));
    let body = stream_body("gpt41", json!({}));
    let mut call = Call::post(&body);
    call.leave_after = Some(2);
    client::stream(gw.http, &call);
    let gone = requests("gpt41", "mammouth", 499);
    let after = scrape_until(&gw, |s| s.get(&gone) == Some(&1.0));
    assert_eq!(after.get(&requests("gpt41", "mammouth", 200)), None);
    let errors: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("sigorest_upstream_errors_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(errors, 1.0, "a client leaving is not the provider's error");
    let usage = gw.get("/api/usage").json();
    assert_eq!(usage["today"]["total"]["requests"], 2);
    assert_eq!(usage["today"]["total"]["errors"], 2);
}

#[test]
fn upstream_errors_and_retries_are_counted_per_provider() {
    let (fake, gw) = setup();
    fake.push_n(3, Reply::status(503));
    gw.chat("kimi", "x", json!({}))
        .assert_error(502, "upstream_error");
    fake.push(Reply::error(401, "bad key"));
    assert_eq!(gw.chat("kimi", "x", json!({})).status, 401);
    let s = scrape(&gw);
    assert_eq!(s[&requests("kimi", "moonshot", 502)], 1.0);
    assert_eq!(s[&requests("kimi", "moonshot", 401)], 1.0);
    assert_eq!(
        s["sigorest_upstream_errors_total{provider=\"moonshot\",kind=\"server_error\"}"],
        1.0
    );
    assert_eq!(
        s["sigorest_upstream_errors_total{provider=\"moonshot\",kind=\"client_error\"}"],
        1.0
    );
    assert_eq!(
        s["sigorest_upstream_retries_total{provider=\"moonshot\"}"],
        2.0
    );
    assert_eq!(s["sigorest_breaker_open{model=\"kimi\"}"], 0.0);
    assert_eq!(s["sigorest_workers_total"], 16.0);
    assert_eq!(s["sigorest_queue_capacity"], 64.0);
    assert!(s.contains_key("sigorest_queue_depth"));
    assert!(s.contains_key("sigorest_workers_busy"));
    assert_eq!(
        s[&format!("sigorest_build_info{{version=\"{}\"}}", sigorest::VERSION)],
        1.0
    );
}

#[test]
fn an_open_breaker_shows_as_1() {
    let (fake, gw) = setup();
    fake.set_default(Reply::status(500));
    for _ in 0..3 {
        gw.chat("gpt41", "x", json!({"retries": 1}))
            .assert_error(502, "upstream_error");
    }
    gw.chat("gpt41", "x", json!({}))
        .assert_error(503, "circuit_open");
    let s = scrape(&gw);
    assert_eq!(s["sigorest_breaker_open{model=\"gpt41\"}"], 1.0);
    assert_eq!(s["sigorest_breaker_open{model=\"kimi\"}"], 0.0);
    assert_eq!(s[&requests("gpt41", "mammouth", 503)], 1.0);
    let page = gw.get("/").text();
    assert!(page.contains("open, retry in"), "{page}");
    assert!(page.contains("degraded"), "{page}");
}

#[test]
fn metrics_stay_bounded_under_many_session_ids_and_unknown_models() {
    let (_fake, gw) = setup();
    let warm = |i: usize| {
        gw.chat("gpt41", "x", json!({"session_id": format!("warm-{i}")}));
        gw.chat(&format!("nope-{i}"), "x", json!({}));
    };
    warm(0);
    let series_before = scrape(&gw).len();
    let started = Instant::now();
    thread::scope(|s| {
        // Two clients: enough to overlap, without starving the tests running beside this one.
        for t in 0..2 {
            let gw = &gw;
            s.spawn(move || {
                for i in (t..1000).step_by(2) {
                    let r = gw.chat("gpt41", "x", json!({"session_id": format!("s-{i}")}));
                    assert_eq!(r.status, 200, "{}", r.text());
                    let r = gw.chat(&format!("made-up-{i}-\"x"), "x", json!({}));
                    assert_eq!(r.status, 404);
                }
            });
        }
    });
    let after = scrape(&gw);
    assert_eq!(
        after.len(),
        series_before,
        "2000 requests added no series (took {:?})",
        started.elapsed()
    );
    assert_eq!(after[&requests("gpt41", "mammouth", 200)], 1001.0);
    assert_eq!(after[&requests("", "", 404)], 1001.0);
    assert!(
        !after
            .keys()
            .any(|k| k.contains("made-up") || k.contains("s-1"))
    );
    let usage = gw.get("/api/usage").json();
    assert_eq!(usage["today"]["rows"].as_array().unwrap().len(), 1);
}

#[test]
fn metrics_and_usage_are_refused_outside_metrics_allow() {
    let (_fake, gw) = {
        let fake = FakeUpstream::start();
        let mut opts = Options::default().upstream(&fake.base_url());
        opts.metrics_allow = Some("10.0.0.0/8".into());
        (fake, Gateway::start(opts))
    };
    let m = gw.get("/metrics").assert_error(403, "metrics_not_allowed");
    assert!(m.contains("-metrics-allow"), "{m}");
    gw.get("/api/usage")
        .assert_error(403, "metrics_not_allowed");
    assert_eq!(
        gw.get("/").status,
        200,
        "the status page is open to the port"
    );
    assert_eq!(gw.get("/api/health").status, 200);

    // By default the admin list decides.
    let fake = FakeUpstream::start();
    let mut opts = Options::default().upstream(&fake.base_url());
    opts.admin_allow = "10.0.0.0/8".into();
    let gw = Gateway::start(opts);
    gw.get("/metrics").assert_error(403, "metrics_not_allowed");
    let mut opts = Options::default().upstream(&fake.base_url());
    opts.admin_allow = "10.0.0.0/8".into();
    opts.metrics_allow = Some("127.0.0.1/32".into());
    let gw = Gateway::start(opts);
    assert_eq!(gw.get("/metrics").status, 200);
    gw.post("/metrics", b"")
        .assert_error(405, "method_not_allowed");
}

/// A fake Ollama reporting these model names.
fn fake_ollama(names: &[&str]) -> FakeUpstream {
    let fake = FakeUpstream::start();
    let models: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"name": n, "model": n, "modified_at": "2025-05-01T10:00:00Z",
            "size": 1000, "digest": "d", "details": {"family": "x"}})
        })
        .collect();
    fake.route(
        "GET",
        "/api/tags",
        Reply::json(200, json!({"models": models})),
    );
    fake.route("POST", "/api/show", |_: &Recorded| {
        Reply::json(
            200,
            json!({"model_info": {"general.architecture": "x", "x.context_length": 4096}}),
        )
    });
    fake
}

#[test]
fn the_status_page_shows_the_gateway_and_escapes_what_came_from_the_network() {
    let fake = FakeUpstream::start();
    let evil = "evil<script>alert(\"x\")&'</script>";
    let ollama = fake_ollama(&[evil]);
    let opts = Options::default()
        .upstream(&fake.base_url())
        .var("OLLAMA_HOST", &ollama.url(""))
        .models("gpt41\n");
    let gw = Gateway::start(opts);
    let code = "ollama-evil<script>alert(\"x\")&'<-script>";
    let deadline = Instant::now() + WAIT;
    while !gw.get("/v1/models").text().contains("ollama-evil") {
        assert!(Instant::now() < deadline, "Ollama model never discovered");
        thread::sleep(Duration::from_millis(20));
    }
    fake.push(Reply::chat("x").usage(40, 2));
    assert_eq!(gw.chat("gpt41", "hi", json!({})).status, 200);
    assert_eq!(gw.chat(code, "hi", json!({})).status, 200);

    for path in ["/", "/status"] {
        let page = gw.get(path);
        assert_eq!(page.status, 200);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let html = page.text();
        assert!(html.contains("<meta http-equiv=\"refresh\""), "{html}");
        assert!(html.contains("<td>gpt41</td><td>mammouth</td>"), "{html}");
        assert!(
            html.contains("<td class=\"n\">1</td><td class=\"n\">0</td><td class=\"n\">40</td>"),
            "{html}"
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("ollama-evil&lt;script&gt;alert(&quot;x&quot;)&amp;&#39;&lt;-script&gt;"),
            "{html}"
        );
        assert!(!html.contains("test-key"), "no secrets");
        assert!(
            !html.contains("<link") && !html.contains("src=\""),
            "no external assets"
        );
    }
    assert_eq!(
        crate::support::gateway::request(&gw.url("/"), "HEAD", None, &[]).status,
        200
    );
    // In /metrics the same name is an escaped label value.
    let text = gw.get("/metrics").text();
    assert!(
        text.contains("model=\"ollama-evil<script>alert(\\\"x\\\")&'<-script>\""),
        "{text}"
    );
}

#[test]
fn clients_that_leave_a_stream_never_open_the_breaker() {
    let (fake, gw) = setup();
    let gone = requests("gpt41", "mammouth", 499);
    for round in 1..=3 {
        // After the first event.
        fake.push(Reply::chat_stream(&["a", "b", "c", "d"]).gap(Duration::from_millis(300)));
        let body = stream_body("gpt41", json!({}));
        let mut call = Call::post(&body);
        call.leave_after = Some(2);
        client::stream(gw.http, &call);
        // Before it: the request is sent, then the connection dropped while the provider thinks.
        fake.push(Reply::chat_stream(&["a"]).first_delay(Duration::from_secs(20)));
        let seen = fake.requests().len();
        let mut sock = std::net::TcpStream::connect(gw.http).unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        std::io::Write::write_all(&mut sock, head.as_bytes()).unwrap();
        std::io::Write::write_all(&mut sock, &body).unwrap();
        fake.wait_for_requests(seen + 1, WAIT);
        drop(sock);
        let want = f64::from(round * 2);
        scrape_until(&gw, |s| s.get(&gone) == Some(&want));
    }
    let s = scrape(&gw);
    assert_eq!(s["sigorest_breaker_open{model=\"gpt41\"}"], 0.0);
    let errors: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("sigorest_upstream_errors_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(errors, 0.0, "{s:#?}");
    assert_eq!(gw.chat("gpt41", "still there?", json!({})).status, 200);
}

#[test]
fn a_fallback_counts_the_failed_models_errors_and_retries_against_its_own_provider() {
    let (fake, gw) = setup();
    // kimi (Moonshot) fails its three attempts, gpt41 (Mammouth) answers.
    fake.push_n(3, Reply::status(500));
    let r = gw.chat("kimi", "x", json!({"fallbacks": ["gpt41"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sigorest-model"), Some("gpt41"));
    let s = scrape(&gw);
    assert_eq!(
        s.get("sigorest_upstream_errors_total{provider=\"moonshot\",kind=\"server_error\"}"),
        Some(&1.0)
    );
    assert_eq!(
        s.get("sigorest_upstream_retries_total{provider=\"moonshot\"}"),
        Some(&2.0)
    );
    let mammouth: Vec<_> = s
        .iter()
        .filter(|(k, _)| k.starts_with("sigorest_upstream_") && k.contains("mammouth"))
        .collect();
    assert!(
        mammouth.is_empty(),
        "the provider that answered did not fail: {mammouth:?}"
    );
    assert_eq!(s[&requests("gpt41", "mammouth", 200)], 1.0);
}

/// A chat completion saying "hi" with this `usage` (raw JSON text, as a provider wrote it).
fn answer_with_usage(usage: &str) -> Reply {
    let body = format!(
        r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{usage}}}"#
    );
    Reply::json(200, serde_json::from_str(&body).unwrap())
}

/// A stream saying "hi", then a usage chunk with this `usage`.
fn stream_with_usage(usage: &str) -> Reply {
    Reply::stream([
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"}}]}"#.to_string(),
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.to_string(),
        format!(r#"{{"choices":[],"usage":{usage}}}"#),
        "[DONE]".to_string(),
    ])
}

/// The usage the client sees: of a complete answer (`/v1/messages`, `/v1/responses`), or of
/// a stream's last `message_delta` / `response.completed`.
fn usage_seen(gw: &Gateway, path: &'static str, body: Value, stream: bool) -> Value {
    if !stream {
        let r = gw.post_json(path, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        return r.json()["usage"].clone();
    }
    let s = client::stream_json(gw.http, path, &body);
    assert_eq!(s.status, 200);
    let events = s.chunks();
    let last = events
        .iter()
        .rev()
        .find(|e| e["type"] == "message_delta" || e["type"] == "response.completed")
        .unwrap_or_else(|| panic!("no usage in {events:?}"));
    last.get("response").unwrap_or(last)["usage"].clone()
}

#[test]
fn counts_no_call_can_reach_are_not_booked_and_cached_tokens_never_pass_the_prompt() {
    let (fake, gw) = setup();
    let messages = json!({"model": "gpt41", "max_tokens": 16,
        "messages": [{"role": "user", "content": "x"}]});
    let responses = json!({"model": "gpt41", "input": "x"});

    // 1e30, and -1 written as an unsigned 64-bit number: a provider's bug, not a call.
    let odd = r#"{"prompt_tokens":1e30,"completion_tokens":18446744073709551615,
        "prompt_tokens_details":{"cached_tokens":18446744073709551615}}"#;
    fake.push(answer_with_usage(odd));
    let r = gw.chat("gpt41", "x", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "hi");
    for (path, body, stream) in [
        ("/v1/messages", &messages, false),
        ("/v1/messages", &messages, true),
        ("/v1/responses", &responses, false),
        ("/v1/responses", &responses, true),
    ] {
        fake.push(if stream {
            stream_with_usage(odd)
        } else {
            answer_with_usage(odd)
        });
        let mut u = usage_seen(&gw, path, body.clone(), stream);
        if path == "/v1/messages" && !stream {
            // Unreadable counts are no report: a Messages answer then gives the gateway's
            // estimate of the prompt (a handful of tokens here), never 0, as its stream's
            // message_start does.
            let estimate = u["input_tokens"].as_u64().unwrap_or(0);
            assert!((1..100).contains(&estimate), "{path}: {u}");
            u["input_tokens"] = json!(0);
        }
        let counts: Vec<u64> = ["input_tokens", "output_tokens", "cache_read_input_tokens"]
            .iter()
            .filter_map(|k| u.get(*k).and_then(Value::as_u64))
            .chain(u["input_tokens_details"]["cached_tokens"].as_u64())
            .collect();
        assert!(
            counts.iter().all(|&n| n == 0),
            "{path} stream={stream}: {u}"
        );
    }
    // (A stream is booked when its last event has gone out: wait for the five.)
    let s = scrape_until(&gw, |s| {
        let ok: f64 = s
            .iter()
            .filter(|(k, _)| {
                k.starts_with("sigorest_requests_total") && k.contains("status=\"200\"")
            })
            .map(|(_, v)| v)
            .sum();
        ok == 5.0
    });
    assert!(
        s.get(&tokens("gpt41", "prompt")).is_none_or(|n| *n == 0.0),
        "{s:#?}"
    );
    assert!(
        s.get(&tokens("gpt41", "completion"))
            .is_none_or(|n| *n == 0.0),
        "{s:#?}"
    );
    let all = &gw.get("/api/usage").json()["all_time"]["total"];
    assert_eq!(all["requests"], 5, "{all}");
    assert_eq!(
        (
            all["prompt_tokens"].as_u64(),
            all["completion_tokens"].as_u64()
        ),
        (Some(0), Some(0)),
        "{all}"
    );
    assert_eq!(all["cost_usd"].as_f64(), Some(0.0), "{all}");

    // 25 of 20 prompt tokens cached: all 20 were, and the translations agree.
    let over = r#"{"prompt_tokens":20,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":25}}"#;
    for stream in [false, true] {
        fake.push(if stream {
            stream_with_usage(over)
        } else {
            answer_with_usage(over)
        });
        let u = usage_seen(&gw, "/v1/messages", messages.clone(), stream);
        assert_eq!(u["input_tokens"], 0, "stream={stream}: {u}");
        assert_eq!(u["cache_read_input_tokens"], 20, "stream={stream}: {u}");
        fake.push(if stream {
            stream_with_usage(over)
        } else {
            answer_with_usage(over)
        });
        let u = usage_seen(&gw, "/v1/responses", responses.clone(), stream);
        assert_eq!(u["input_tokens"], 20, "stream={stream}: {u}");
        assert_eq!(
            u["input_tokens_details"]["cached_tokens"], 20,
            "stream={stream}: {u}"
        );
    }
}
