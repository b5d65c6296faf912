//! Tests of the fake upstream itself (`support::upstream`), driven by a raw std `TcpStream`
//! client written here (`client`), so that neither the gateway's server nor its client is
//! involved. The stream replies are tested in `streams`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::upstream::{FakeUpstream, Recorded, Reply, echo_reply};
use client::*;

mod client;
mod streams;

#[test]
fn the_fake_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FakeUpstream>();
    let fake = FakeUpstream::start();
    assert!(fake.base_url().starts_with("http://127.0.0.1:"));
    assert!(fake.base_url().ends_with("/v1"));
    assert_eq!(
        fake.url("/api/tags"),
        format!("http://{}/api/tags", fake.addr())
    );
}

#[test]
fn records_method_path_headers_and_body() {
    let fake = FakeUpstream::start();
    let body = chat_request("m1", "hi there").to_string();
    let mut client = Client::connect(&fake);
    client.send(
        "POST",
        "/v1/chat/completions?api-version=1",
        &[("Authorization", "Bearer k-123"), ("X-Custom", "Yes")],
        body.as_bytes(),
    );
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let answer = response.json();
    assert_eq!(answer["model"], "m1");
    assert_eq!(content(&response), "echo: hi there");

    let seen = fake.wait_for_requests(1, WAIT);
    let req = &seen[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/chat/completions?api-version=1");
    assert_eq!(req.path_only(), "/v1/chat/completions");
    assert_eq!(req.version, "HTTP/1.1");
    assert_eq!(req.header("authorization"), Some("Bearer k-123"));
    assert_eq!(req.header("X-CUSTOM"), Some("Yes"));
    assert!(
        req.headers
            .iter()
            .all(|(n, _)| *n == n.to_ascii_lowercase())
    );
    assert_eq!(req.body, body.as_bytes());
    assert_eq!(req.model(), Some("m1"));
    assert_eq!(req.last_user_text().as_deref(), Some("hi there"));
    assert_eq!(fake.last_json(), Some(chat_request("m1", "hi there")));
    assert_eq!(fake.request_count(), 1);
}

#[test]
fn chat_reply_has_the_openai_shape() {
    let fake = FakeUpstream::start();
    fake.push(Reply::chat("Hi").usage(9, 2));
    fake.push(Reply::chat("Yo").model("pinned"));
    let answer = post(&fake, &chat_request("gpt-4.1", "hello")).json();
    assert!(answer["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(answer["object"], "chat.completion");
    assert!(answer["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(answer["model"], "gpt-4.1");
    assert_eq!(
        answer["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}])
    );
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
    );
    let answer = post(&fake, &chat_request("gpt-4.1", "hello")).json();
    assert_eq!(answer["model"], "pinned");
    let usage = &answer["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + 1
    );
}

#[test]
fn queue_is_fifo_then_default() {
    let fake = FakeUpstream::start();
    fake.push(Reply::chat("one"));
    fake.push(Reply::error(500, "boom"));
    assert_eq!(fake.queued(), 2);
    assert_eq!(content(&post(&fake, &chat_request("m", "a"))), "one");
    let failed = post(&fake, &chat_request("m", "b"));
    assert_eq!(failed.status, 500);
    assert_eq!(
        failed.json(),
        json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": "server_error"}})
    );
    assert_eq!(content(&post(&fake, &chat_request("m", "c"))), "echo: c");
    fake.set_default(Reply::chat("fixed"));
    assert_eq!(content(&post(&fake, &chat_request("m", "d"))), "fixed");
    fake.set_default(|req: &Recorded| {
        Reply::chat(format!("keyed on {}", req.model().unwrap_or("?")))
    });
    assert_eq!(content(&post(&fake, &chat_request("k", "e"))), "keyed on k");
    fake.set_default(echo_reply);
    assert_eq!(content(&post(&fake, &chat_request("m", "f"))), "echo: f");
    assert_eq!(fake.queued(), 0);
    assert_eq!(fake.request_count(), 6);
}

#[test]
fn queued_replies_follow_the_order_requests_are_recorded() {
    let fake = FakeUpstream::start();
    fake.push(Reply::chat("first"));
    fake.push(Reply::chat("second"));
    let (mut a, mut b) = (Client::connect(&fake), Client::connect(&fake));
    a.post_chat(&chat_request("m", "a"));
    b.post_chat(&chat_request("m", "b"));
    let (from_a, from_b) = (content(&a.read_response()), content(&b.read_response()));
    let seen = fake.wait_for_requests(2, WAIT);
    let first_sender = seen[0].last_user_text().unwrap();
    let (got_first, got_second) = if first_sender == "a" {
        (from_a, from_b)
    } else {
        (from_b, from_a)
    };
    assert_eq!(
        (got_first.as_str(), got_second.as_str()),
        ("first", "second")
    );
}

#[test]
fn push_n_repeats_a_reply_with_its_headers() {
    let fake = FakeUpstream::start();
    fake.push_n(2, Reply::status(429).header("Retry-After", "2"));
    for _ in 0..2 {
        let limited = post(&fake, &chat_request("m", "x"));
        assert_eq!(limited.status, 429);
        assert_eq!(limited.header("retry-after"), Some("2"));
        let error = &limited.json()["error"];
        assert_eq!(error["message"], "Too Many Requests");
        assert_eq!(error["type"], "rate_limit_error");
        assert!(error["param"].is_null());
        assert!(error["code"].is_string());
    }
    assert_eq!(post(&fake, &chat_request("m", "x")).status, 200);
}

#[test]
fn a_header_replaces_the_default_of_the_same_name() {
    let fake = FakeUpstream::start();
    fake.push(Reply::json(200, json!({"ok": true})).header("content-type", "text/plain"));
    let response = post(&fake, &chat_request("m", "x"));
    assert_eq!(response.header("Content-Type"), Some("text/plain"));
    assert_eq!(
        response
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .count(),
        1
    );
    assert_eq!(response.json(), json!({"ok": true}));
}

#[test]
fn delay_is_honoured_and_the_request_recorded_at_once() {
    let fake = FakeUpstream::start();
    fake.push(Reply::chat("late").delay(ms(300)));
    let start = Instant::now();
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "x"));
    let seen = fake.wait_for_requests(1, WAIT);
    assert!(
        seen[0].at.duration_since(start) < ms(250),
        "recorded on arrival, not after the delay"
    );
    let response = client.read_response();
    let elapsed = start.elapsed();
    assert_eq!(content(&response), "late");
    assert!(elapsed >= ms(300), "answered after {elapsed:?}");
    assert!(elapsed < ms(2500), "answered after {elapsed:?}");
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let fake = FakeUpstream::start();
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "first"));
    assert_eq!(content(&client.read_response()), "echo: first");
    client.post_chat(&chat_request("m", "second"));
    assert_eq!(content(&client.read_response()), "echo: second");
    let seen = fake.wait_for_requests(2, WAIT);
    assert_eq!(seen[0].conn_id, seen[1].conn_id);
    assert_eq!(fake.connections().len(), 1);
    assert_eq!(fake.connections()[0].requests, 2);
    assert_eq!(fake.open_connections(), 1);
    drop(client);
    assert!(fake.wait_for_open_connections(0, WAIT));
    assert_eq!(
        fake.stream_closed_by_client_count(),
        0,
        "closing an idle connection is no abort"
    );
}

#[test]
fn connection_close_is_honoured() {
    let fake = FakeUpstream::start();
    let mut client = Client::connect(&fake);
    client.send("GET", "/nothing", &[("Connection", "close")], b"");
    let response = client.read_response();
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.read_to_end().is_empty(), "closed after the answer");
}

#[test]
fn chunked_request_body_is_decoded() {
    let fake = FakeUpstream::start();
    let body = chat_request("m", "chunky").to_string();
    let (a, b) = body.as_bytes().split_at(10);
    let mut raw =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    raw.extend(format!("{:x};ext=1\r\n", a.len()).as_bytes());
    raw.extend(a);
    raw.extend(format!("\r\n{:X}\r\n", b.len()).as_bytes());
    raw.extend(b);
    raw.extend(b"\r\n0\r\nX-Trailer: t\r\n\r\n");
    let mut client = Client::connect(&fake);
    client.send_raw(&raw[..raw.len() / 2]);
    client.send_raw(&raw[raw.len() / 2..]);
    assert_eq!(content(&client.read_response()), "echo: chunky");
    let seen = fake.wait_for_requests(1, WAIT);
    assert_eq!(seen[0].body, body.as_bytes());
    assert_eq!(seen[0].json, Some(chat_request("m", "chunky")));
    // The framing was consumed exactly: the connection still serves.
    client.post_chat(&chat_request("m", "after"));
    assert_eq!(content(&client.read_response()), "echo: after");
}

#[test]
fn expect_100_continue_is_answered() {
    let fake = FakeUpstream::start();
    let body = chat_request("m", "cont").to_string();
    let mut client = Client::connect(&fake);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.send_raw(head.as_bytes());
    assert_eq!(client.read_head().0, 100);
    client.send_raw(body.as_bytes());
    assert_eq!(content(&client.read_response()), "echo: cont");
}

#[test]
fn garbage_is_sent_verbatim() {
    let fake = FakeUpstream::start();
    let truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnot j".to_vec();
    let junk = b"\x00\xffno http at all".to_vec();
    fake.push(Reply::garbage(truncated.clone()));
    fake.push(Reply::garbage(junk.clone()));
    for expected in [truncated, junk] {
        let mut client = Client::connect(&fake);
        client.post_chat(&chat_request("m", "x"));
        assert_eq!(client.read_to_end(), expected);
    }
}

#[test]
fn close_reply_closes_without_an_answer() {
    let fake = FakeUpstream::start();
    fake.push(Reply::close());
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "x"));
    assert!(client.read_to_end().is_empty());
    assert_eq!(fake.request_count(), 1);
}

#[test]
fn routes_answer_with_a_reply_or_a_closure() {
    let fake = FakeUpstream::start();
    fake.route(
        "GET",
        "/api/tags",
        Reply::json(200, json!({"models": [{"name": "gemma3:4b"}]})),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    fake.route("POST", "/api/show", move |req: &Recorded| {
        counter.fetch_add(1, Ordering::SeqCst);
        match req.model() {
            Some("gemma3:4b") => Reply::json(
                200,
                json!({"model_info": {"gemma3.context_length": 131072}}),
            ),
            _ => Reply::error(404, "model not found"),
        }
    });
    let mut client = Client::connect(&fake);
    client.send("GET", "/api/tags?x=1", &[], b"");
    assert_eq!(
        client.read_response().json()["models"][0]["name"],
        "gemma3:4b"
    );
    client.send("POST", "/api/show", &[], br#"{"model":"gemma3:4b"}"#);
    assert_eq!(
        client.read_response().json()["model_info"]["gemma3.context_length"],
        131072
    );
    client.send("POST", "/api/show", &[], br#"{"model":"nope"}"#);
    assert_eq!(client.read_response().status, 404);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    client.send("GET", "/api/tags", &[], b"");
    assert_eq!(client.read_response().status, 200);
    assert_eq!(fake.request_count(), 4);
    assert_eq!(fake.wait_for_requests_to("/api/tags", 2, WAIT).len(), 2);
    let shows = fake.requests_to("/api/show");
    assert_eq!(shows.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        fake.last_json(),
        Some(json!({"model": "nope"})),
        "GETs have no JSON body"
    );
}

#[test]
fn unknown_paths_get_a_404_json_error() {
    let fake = FakeUpstream::start();
    let mut client = Client::connect(&fake);
    for (method, path) in [("GET", "/nope"), ("GET", "/v1/chat/completions")] {
        client.send(method, path, &[], b"");
        let response = client.read_response();
        assert_eq!(response.status, 404);
        let error = &response.json()["error"];
        assert!(error["message"].as_str().unwrap().contains(path));
        assert!(error["param"].is_null());
    }
    assert_eq!(fake.request_count(), 2);
}

#[test]
fn a_malformed_request_gets_400() {
    let fake = FakeUpstream::start();
    let mut client = Client::connect(&fake);
    client.send_raw(b"NOT-HTTP\r\n\r\n");
    assert_eq!(client.read_response().status, 400);
    assert_eq!(fake.request_count(), 0);
}

#[test]
fn drop_ends_every_thread_and_connection() {
    let fake = FakeUpstream::start();
    let prefix = fake.thread_prefix().to_string();
    fake.push(Reply::hang());
    let mut hanging = Client::connect(&fake);
    hanging.post_chat(&chat_request("m", "x"));
    fake.wait_for_requests(1, WAIT);
    let mut idle = Client::connect(&fake);
    idle.post_chat(&chat_request("m", "y"));
    idle.read_response();
    fake.wait_for_requests(2, WAIT);
    assert_eq!(threads_named(&prefix), 3, "accept + two connections");

    let start = Instant::now();
    drop(fake);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        start.elapsed()
    );
    let deadline = Instant::now() + WAIT;
    while threads_named(&prefix) > 0 && Instant::now() < deadline {
        std::thread::sleep(ms(5));
    }
    assert_eq!(threads_named(&prefix), 0);
    assert!(
        hanging.read_to_end().is_empty(),
        "the hanging connection was shut down"
    );
    assert!(
        idle.read_to_end().is_empty(),
        "the idle connection was shut down"
    );
}
