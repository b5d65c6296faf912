//! Providers that go silent in the middle of a stream, on the three endpoints that stream
//! (`/v1/chat/completions`, `/v1/messages`, `/v1/responses`): silence between two events
//! past a `timeout` the client chose short is a timeout that leaves the model's breaker
//! alone.

use serde_json::{Value, json};

use crate::metrics::scrape_until;
use crate::support::client::{self, Call, Streamed};
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
    let bytes = serde_json::to_vec(body).unwrap();
    let mut call = Call::post(&bytes);
    call.path = path;
    client::stream(gw.http, &call)
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
