//! A client that half-closes its side after sending (`printf … | nc`) is still there and
//! gets its answer; one that closes both sides has gone, and its upstream call is dropped.
//! The two look alike (the end of the client's data) until the gateway sends its probe, an
//! interim `100 Continue`.

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
    let body = serde_json::to_vec(body).unwrap();
    let mut sock = TcpStream::connect(gw.http).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(&body).unwrap();
    sock.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
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
