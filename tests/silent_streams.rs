//! Providers that go silent in the middle of a stream, on the three endpoints that stream
//! (`/v1/chat/completions`, `/v1/messages`, `/v1/responses`): silence between two events
//! past a `timeout` the client chose short is a timeout that leaves the model's breaker
//! alone, and a whole answer (its finish reason, then its usage chunk) whose `[DONE]` never
//! comes ends normally, without the client waiting for the provider.

use std::time::Duration;

use serde_json::{Value, json};

use crate::metrics::scrape_until;
use crate::support::client::{self, Streamed};
use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

fn setup() -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    (fake, gw)
}

/// The three streaming endpoints, each with a streamed request for `model` and `extra`.
fn endpoints(model: &str, extra: &Value) -> [(&'static str, Value); 3] {
    let with = |mut body: Value| {
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        body["stream"] = json!(true);
        body
    };
    let messages = json!([{"role": "user", "content": "think"}]);
    [
        (
            "/v1/chat/completions",
            with(json!({"model": model, "messages": messages})),
        ),
        (
            "/v1/messages",
            with(json!({"model": model, "max_tokens": 64, "messages": messages})),
        ),
        (
            "/v1/responses",
            with(json!({"model": model, "input": "think"})),
        ),
    ]
}

fn stream(gw: &Gateway, path: &'static str, body: &Value) -> Streamed {
    client::stream_json(gw.http, path, body)
}

/// The last event's payload.
fn last(s: &Streamed) -> Value {
    s.chunks().pop().unwrap_or_default()
}

fn role_chunk() -> String {
    json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
        "finish_reason": null}]})
    .to_string()
}

/// A whole answer, "Hello" with its finish reason and its usage chunk (9 + 2 tokens),
/// without `[DONE]`.
fn whole_answer() -> Vec<String> {
    vec![
        role_chunk(),
        json!({"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}]})
            .to_string(),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string(),
        json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2,
            "total_tokens": 11}})
        .to_string(),
    ]
}

const TIMEOUTS: &str = "sigorest_upstream_errors_total{provider=\"mammouth\",kind=\"timeout\"}";
const STREAM_FAILED: &str =
    "sigorest_upstream_errors_total{provider=\"mammouth\",kind=\"stream_failed\"}";

#[test]
fn silence_after_the_first_event_past_a_short_timeout_leaves_the_breaker_closed() {
    // A reasoning model: its role chunk at once, then it thinks in silence, longer than
    // the client's `"timeout": 1`. Three such streams (one per endpoint) are three
    // timeouts the clients chose, as three before the first event would be: the breaker
    // stays closed for everyone else.
    let (fake, gw) = setup();
    for (path, body) in endpoints("gpt41", &json!({"timeout": 1})) {
        fake.push(Reply::stream([role_chunk()]).then_hang());
        let s = stream(&gw, path, &body);
        assert_eq!(s.status, 200, "{path}");
        let end = last(&s);
        let told = match path {
            "/v1/messages" => &end["error"]["message"],
            "/v1/responses" => &end["response"]["error"]["message"],
            _ => &end["error"]["message"],
        };
        assert!(
            told.as_str()
                .is_some_and(|m| m.contains("no event within the timeout")),
            "{path}: {end}"
        );
        if path == "/v1/chat/completions" {
            assert_eq!(end["error"]["code"], "upstream_timeout", "{end}");
        }
    }
    // Counted as timeouts (as before the first event), not as broken streams.
    let after = scrape_until(&gw, |s| s.get(TIMEOUTS) == Some(&3.0));
    assert_eq!(after.get(STREAM_FAILED), None, "{after:#?}");
    let health = gw.get("/api/health").json();
    let breaker = &health["circuit_breakers"]["gpt41"];
    assert_eq!(breaker["state"], "closed", "{health}");
    assert_eq!(breaker["consecutive_failures"], 0, "{health}");
    // Someone else's plain request still gets its answer.
    let r = gw.chat("gpt41", "hi", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_whole_answer_without_done_ends_normally_on_every_endpoint() {
    // The provider sends the whole answer, then neither `[DONE]` nor the end of its body.
    // The client waited its whole `timeout` (180 s by default), then got an error event;
    // now the answer ends after a short grace, whatever the `timeout` (10 s here, so that
    // a regression fails in 10 s, not 180).
    let (fake, gw) = setup();
    let timeout = json!({"timeout": 10});
    for (n, (path, body)) in endpoints("gpt41", &timeout).into_iter().enumerate() {
        fake.push(Reply::stream(whole_answer()).then_hang());
        let s = stream(&gw, path, &body);
        assert_eq!(s.status, 200, "{path}");
        assert!(s.complete, "{path}: the answer ended: {:?}", s.payloads());
        match path {
            "/v1/chat/completions" => {
                assert_eq!(s.text(), "Hello");
                assert_eq!(s.payloads().last(), Some(&"[DONE]"));
            }
            "/v1/messages" => {
                let chunks = s.chunks();
                let delta = chunks
                    .iter()
                    .find(|e| e["type"] == "message_delta")
                    .expect("a message_delta");
                assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{delta}");
                assert_eq!(delta["usage"]["output_tokens"], 2, "{delta}");
                assert_eq!(last(&s)["type"], "message_stop");
            }
            _ => {
                let end = last(&s);
                assert_eq!(end["type"], "response.completed", "{end}");
                assert_eq!(end["response"]["usage"]["input_tokens"], 9, "{end}");
            }
        }
        // The provider's connection, its body still open, is closed, not pooled.
        assert!(
            fake.wait_for_open_connections(0, Duration::from_secs(5)),
            "{path}"
        );
        // The usage is counted.
        let prompt = 9.0 * (n + 1) as f64;
        scrape_until(&gw, |s| {
            s.get("sigorest_tokens_total{model=\"gpt41\",kind=\"prompt\",key=\"\"}")
                == Some(&prompt)
        });
    }
    let health = gw.get("/api/health").json();
    assert_eq!(
        health["circuit_breakers"]["gpt41"]["consecutive_failures"], 0,
        "{health}"
    );
    let after = scrape_until(&gw, |_| true);
    assert_eq!(after.get(STREAM_FAILED), None, "{after:#?}");
    assert_eq!(after.get(TIMEOUTS), None, "{after:#?}");
}

#[test]
fn a_finish_reason_without_its_usage_is_still_waited_for() {
    // Without the usage chunk the gateway asked for, more may come: silence after the
    // finish reason is waited for the `timeout`, and then a timeout, as before.
    let (fake, gw) = setup();
    let mut events = whole_answer();
    events.pop();
    fake.push(Reply::stream(events).then_hang());
    let (path, body) = endpoints("gpt41", &json!({"timeout": 1}))[0].clone();
    let s = stream(&gw, path, &body);
    assert_eq!(s.status, 200);
    assert_eq!(
        last(&s)["error"]["code"],
        "upstream_timeout",
        "{:?}",
        s.payloads()
    );
    assert_ne!(s.payloads().last(), Some(&"[DONE]"));
}

#[test]
fn a_whole_answer_whose_connection_breaks_before_done_is_complete() {
    // The same whole answer, then the connection dropped in the middle of the chunked
    // body instead of `[DONE]`: nothing of the answer is missing.
    let (fake, gw) = setup();
    fake.push(Reply::stream(whole_answer()).cut_after(4));
    let (path, body) = endpoints("gpt41", &json!({}))[0].clone();
    let s = stream(&gw, path, &body);
    assert_eq!(s.text(), "Hello");
    assert_eq!(s.payloads().last(), Some(&"[DONE]"), "{:?}", s.payloads());
    let after = scrape_until(&gw, |s| {
        s.get("sigorest_tokens_total{model=\"gpt41\",kind=\"completion\",key=\"\"}") == Some(&2.0)
    });
    assert_eq!(after.get(STREAM_FAILED), None, "{after:#?}");
}
