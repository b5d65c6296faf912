//! The fake's streams: events spaced in time, OpenAI chunks, raw bytes, cuts and hangs, and
//! a client that leaves in the middle.

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::client::*;
use crate::support::upstream::{FakeUpstream, Reply};

#[test]
fn stream_events_arrive_separately_in_time() {
    let fake = FakeUpstream::start();
    fake.push(Reply::stream(["a", "b", "c"]).gap(ms(200)));
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "x"));
    let (status, headers) = client.read_head();
    assert_eq!(status, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("content-type"), Some("text/event-stream"));
    assert_eq!(header("transfer-encoding"), Some("chunked"));
    let mut arrivals = Vec::new();
    for expected in ["a", "b", "c"] {
        let chunk = client.chunk().unwrap().expect("an event");
        arrivals.push(Instant::now());
        assert_eq!(
            chunk,
            format!("data: {expected}\n\n").as_bytes(),
            "one event per chunk"
        );
    }
    assert_eq!(
        client.chunk(),
        Ok(None),
        "the stream ends with the terminating chunk"
    );
    for pair in arrivals.windows(2) {
        let apart = pair[1].duration_since(pair[0]);
        assert!(apart >= ms(150), "events {apart:?} apart");
    }
}

#[test]
fn first_delay_waits_after_the_headers() {
    let fake = FakeUpstream::start();
    fake.push(Reply::stream(["a"]).first_delay(ms(300)));
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "x"));
    client.read_head();
    let headers_at = Instant::now();
    assert_eq!(client.chunk().unwrap().unwrap(), b"data: a\n\n");
    assert!(headers_at.elapsed() >= ms(250));
}

#[test]
fn chat_stream_sends_openai_chunks() {
    let fake = FakeUpstream::start();
    fake.push(Reply::chat_stream(&["Hel", "lo"]));
    let mut request = chat_request("gpt-4.1", "x");
    request["stream"] = json!(true);
    let response = post(&fake, &request);
    let events = data_events(&response.body);
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(events[5], "[DONE]");
    let chunks: Vec<Value> = events[..5]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4.1");
        assert_eq!(chunk["id"], chunks[0]["id"]);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
}

#[test]
fn default_echo_streams_when_asked() {
    let fake = FakeUpstream::start();
    let mut request = chat_request("m", "hi you");
    request["stream"] = json!(true);
    let response = post(&fake, &request);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let events = data_events(&response.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "echo: hi you");
}

#[test]
fn cut_after_ends_without_the_terminating_chunk() {
    let fake = FakeUpstream::start();
    fake.push(Reply::stream(["1", "2", "3"]).cut_after(2));
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "x"));
    client.read_head();
    assert_eq!(client.chunk().unwrap().unwrap(), b"data: 1\n\n");
    assert_eq!(client.chunk().unwrap().unwrap(), b"data: 2\n\n");
    assert_eq!(client.chunk(), Err("EOF before a chunk size"));
    assert!(fake.wait_for_open_connections(0, WAIT));
    assert_eq!(
        fake.stream_closed_by_client_count(),
        0,
        "the fake closed it, not the client"
    );
}

#[test]
fn raw_events_are_written_as_given_close_delimited() {
    let fake = FakeUpstream::start();
    let writes: Vec<Vec<u8>> = vec![
        b": keep-alive\n\n".to_vec(),
        b"event: message\r\nid: 7\r\ndata: {\"a\"".to_vec(),
        b":1}\r\n\r\n".to_vec(),
        b"data: last-without-blank-line".to_vec(),
    ];
    fake.push(
        Reply::stream(Vec::<String>::new())
            .raw_events(writes.clone())
            .close_delimited()
            .gap(ms(20)),
    );
    let response = post(&fake, &chat_request("m", "x"));
    assert_eq!(response.header("transfer-encoding"), None);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.body, writes.concat());
}

#[test]
fn raw_events_are_one_chunk_each_when_chunked() {
    let fake = FakeUpstream::start();
    fake.push(Reply::chat("ignored").raw_events(vec![b"data: x".to_vec(), b"\r\n\r\n".to_vec()]));
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "x"));
    assert_eq!(client.read_head().0, 200);
    assert_eq!(client.chunk().unwrap().unwrap(), b"data: x");
    assert_eq!(client.chunk().unwrap().unwrap(), b"\r\n\r\n");
    assert_eq!(client.chunk(), Ok(None));
}

#[test]
fn hang_notices_the_client_closing() {
    let fake = FakeUpstream::start();
    fake.push(Reply::hang());
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "x"));
    fake.wait_for_requests(1, WAIT);
    assert_eq!(fake.open_connections(), 1);
    let left = Instant::now();
    drop(client);
    let aborted = fake.wait_for_client_aborts(1, WAIT);
    let closed_at = aborted[0].closed_at.expect("closed");
    assert!(closed_at.duration_since(left) < Duration::from_secs(1));
    assert_eq!(fake.stream_closed_by_client_count(), 1);
    assert_eq!(fake.open_connections(), 0);
}

#[test]
fn stream_notices_the_client_closing_during_a_gap() {
    let fake = FakeUpstream::start();
    fake.push(Reply::stream(["a", "b"]).gap(Duration::from_secs(30)));
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "x"));
    client.read_head();
    assert_eq!(client.chunk().unwrap().unwrap(), b"data: a\n\n");
    let left = Instant::now();
    drop(client);
    let aborted = fake.wait_for_client_aborts(1, WAIT);
    assert!(aborted[0].closed_at.unwrap().duration_since(left) < Duration::from_secs(1));
}

#[test]
fn then_hang_keeps_the_stream_open() {
    let fake = FakeUpstream::start();
    fake.push(Reply::stream(["a"]).then_hang());
    let mut client = Client::connect(&fake);
    client.post_chat(&chat_request("m", "x"));
    client.read_head();
    assert_eq!(client.chunk().unwrap().unwrap(), b"data: a\n\n");
    client.stream.set_read_timeout(Some(ms(300))).unwrap();
    let mut byte = [0u8; 1];
    let err = client
        .stream
        .read(&mut byte)
        .expect_err("nothing more, and no close");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    assert_eq!(fake.open_connections(), 1);
    drop(client);
    fake.wait_for_client_aborts(1, WAIT);
}
