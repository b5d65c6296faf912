//! A client that half-closes its side after sending (`printf … | nc`) is still there and
//! gets its answer; one that closes both sides has gone, and its upstream call is dropped.
//! The two look alike (the end of the client's data) until the gateway sends its probe, an
//! interim `100 Continue`. An end that came before the answer stays a half-close while a
//! stream is written, however spaced out its events; one that comes after the stream began,
//! or a reset, is a departure.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::json;

use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

fn setup() -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    (fake, gw)
}

/// Sends a chat request, half-closes, and reads everything until the gateway closes.
fn half_closed(gw: &Gateway, body: &serde_json::Value) -> String {
    half_closed_at(
        gw,
        "HTTP/1.1",
        "/v1/chat/completions",
        "Connection: close\r\n",
        body,
    )
}

/// Sends `body` to `path` in `version` with `extra` header lines, and half-closes.
fn send_half_closed(
    gw: &Gateway,
    version: &str,
    path: &str,
    extra: &str,
    body: &serde_json::Value,
) -> TcpStream {
    let sock = send(gw, version, path, extra, body);
    sock.shutdown(Shutdown::Write).unwrap();
    sock
}

/// Sends `body` to `path` in `version` with `extra` header lines.
fn send(
    gw: &Gateway,
    version: &str,
    path: &str,
    extra: &str,
    body: &serde_json::Value,
) -> TcpStream {
    let body = serde_json::to_vec(body).unwrap();
    let mut sock = TcpStream::connect(gw.http).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST {path} {version}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(&body).unwrap();
    sock
}

/// Reads until the first event of a stream has come.
fn read_first_event(sock: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first event");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Sends `body` to `path` in `version` with `extra` header lines, half-closes, and reads
/// everything until the gateway closes.
fn half_closed_at(
    gw: &Gateway,
    version: &str,
    path: &str,
    extra: &str,
    body: &serde_json::Value,
) -> String {
    let mut sock = send_half_closed(gw, version, path, extra, body);
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The one upstream call was dropped within 2 s of `left`.
fn assert_upstream_dropped(fake: &FakeUpstream, left: std::time::Instant) {
    let aborted = fake.wait_for_client_aborts(1, Duration::from_secs(5));
    assert_eq!(aborted.len(), 1, "the upstream call was dropped");
    let closed_at = aborted[0].closed_at.unwrap();
    assert!(
        closed_at.saturating_duration_since(left) < Duration::from_secs(2),
        "upstream kept open too long"
    );
}

/// The spaced-out stream arrived whole, up to `end`, and no upstream call was dropped.
fn assert_whole(fake: &FakeUpstream, text: &str, end: &str) {
    for piece in ["one ", "two ", "three"] {
        assert!(text.contains(piece), "{piece:?} missing: {text}");
    }
    assert!(text.contains(end), "{text}");
    assert_eq!(fake.stream_closed_by_client_count(), 0);
}

/// A chat stream request.
fn chat_stream() -> serde_json::Value {
    json!({"model": "gpt41", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

/// A stream whose events are spaced out: the end of the client's data, seen while the
/// upstream call is pending, is looked at again (every quarter of a second) while the
/// stream is written.
fn spaced_stream() -> Reply {
    Reply::chat_stream(&["one ", "two ", "three"])
        .first_delay(Duration::from_millis(300))
        .gap(Duration::from_millis(300))
}

#[test]
fn a_half_closed_client_gets_its_answer() {
    let (fake, gw) = setup();
    fake.push(Reply::chat("slow but sure").delay(Duration::from_millis(600)));
    let text = half_closed(
        &gw,
        &json!({"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert!(
        text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
        "{text}"
    );
    assert!(text.contains("slow but sure"), "{text}");
    assert_eq!(fake.stream_closed_by_client_count(), 0);
    let health = gw.get("/api/health").json();
    assert_eq!(
        health["circuit_breakers"]["gpt41"]["consecutive_failures"],
        0
    );
}

#[test]
fn a_half_closed_client_gets_its_whole_stream() {
    let (fake, gw) = setup();
    fake.push(Reply::chat_stream(&["one ", "two"]).first_delay(Duration::from_millis(400)));
    let text = half_closed(
        &gw,
        &json!({"model": "gpt41", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    assert!(text.contains("one ") && text.contains("two"), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
}

#[test]
fn a_client_that_closes_both_sides_has_gone() {
    let (fake, gw) = setup();
    fake.push(Reply::chat("never read").delay(Duration::from_secs(5)));
    let body = serde_json::to_vec(
        &json!({"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let mut sock = TcpStream::connect(gw.http).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(&body).unwrap();
    fake.wait_for_requests(1, Duration::from_secs(5));
    drop(sock);
    let aborted = fake.wait_for_client_aborts(1, Duration::from_secs(5));
    assert_eq!(aborted.len(), 1, "the upstream call was dropped");
}

#[test]
fn a_half_closed_client_gets_its_whole_stream_when_events_are_spaced_out() {
    let (fake, gw) = setup();
    fake.push(spaced_stream());
    let text = half_closed(&gw, &chat_stream());
    assert!(
        text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
        "{text}"
    );
    assert_whole(&fake, &text, "data: [DONE]");
}

#[test]
fn a_half_closed_client_gets_its_whole_anthropic_stream_when_events_are_spaced_out() {
    let (fake, gw) = setup();
    fake.push(spaced_stream());
    let body = json!({"model": "gpt41", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let text = half_closed_at(
        &gw,
        "HTTP/1.1",
        "/v1/messages",
        "anthropic-version: 2023-06-01\r\n",
        &body,
    );
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    assert_whole(&fake, &text, "event: message_stop");
}

#[test]
fn a_half_closed_http10_client_gets_its_whole_stream_when_events_are_spaced_out() {
    let (fake, gw) = setup();
    fake.push(spaced_stream());
    let text = half_closed_at(&gw, "HTTP/1.0", "/v1/chat/completions", "", &chat_stream());
    // No interim answer in HTTP/1.0; the stream ends with the connection.
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert_whole(&fake, &text, "data: [DONE]");
}

#[test]
fn a_half_closed_client_gets_both_pipelined_streams_then_the_connection_closes() {
    let (fake, gw) = setup();
    fake.push(spaced_stream());
    fake.push(Reply::chat_stream(&["four ", "five"]).gap(Duration::from_millis(300)));
    let body = serde_json::to_vec(&chat_stream()).unwrap();
    let one = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut both = Vec::new();
    for _ in 0..2 {
        both.extend_from_slice(one.as_bytes());
        both.extend_from_slice(&body);
    }
    let mut sock = TcpStream::connect(gw.http).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(&both).unwrap();
    sock.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    // Ends at the gateway's close: a read timeout would leave the second stream's end out.
    let _ = sock.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    for piece in ["one ", "two ", "three", "four ", "five"] {
        assert!(text.contains(piece), "{piece:?} missing: {text}");
    }
    assert_eq!(text.matches("data: [DONE]").count(), 2, "{text}");
    assert_eq!(fake.stream_closed_by_client_count(), 0);
}

#[test]
fn a_client_whose_fin_comes_after_its_stream_began_has_gone() {
    let (fake, gw) = setup();
    fake.push(
        Reply::chat_stream(&["a", "b", "c", "d", "e", "f", "g", "h"])
            .gap(Duration::from_millis(300)),
    );
    let mut sock = send(&gw, "HTTP/1.1", "/v1/chat/completions", "", &chat_stream());
    // Reads until the first event has come, then half-closes (and goes on reading).
    read_first_event(&mut sock);
    let left = std::time::Instant::now();
    sock.shutdown(Shutdown::Write).unwrap();
    assert_upstream_dropped(&fake, left);
}

#[test]
fn a_half_closed_client_that_closes_during_its_stream_has_gone() {
    let (fake, gw) = setup();
    fake.push(
        Reply::chat_stream(&["a", "b", "c", "d", "e", "f", "g", "h"])
            .first_delay(Duration::from_millis(300))
            .gap(Duration::from_millis(300)),
    );
    let mut sock = send_half_closed(&gw, "HTTP/1.1", "/v1/chat/completions", "", &chat_stream());
    // Half-closed: the stream begins. Then the client closes for good (its next read is
    // answered with a reset).
    read_first_event(&mut sock);
    drop(sock);
    let left = std::time::Instant::now();
    assert_upstream_dropped(&fake, left);
}
