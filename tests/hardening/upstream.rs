//! Upstream calls that a client or a provider could stretch: a non-streamed call the client
//! left, the highest `timeout`, a send that never completes, keep-alive comments, pooled
//! stream connections, and a billed 2xx that is not asked for twice.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::client::{self, Call};
use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

fn setup(opts: Options) -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(opts.upstream(&fake.base_url()));
    (fake, gw)
}

fn chat_body(model: &str, extra: Value) -> Vec<u8> {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    serde_json::to_vec(&body).unwrap()
}

/// Sends a chat request on a raw connection and returns the connection (drop it to leave).
fn send_and_keep(addr: SocketAddr, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

#[test]
fn a_completion_stops_upstream_when_its_client_leaves_and_frees_its_worker() {
    let (fake, gw) = setup(Options::default().workers(1, 8));
    fake.push_n(3, Reply::hang());
    for n in 1..=3 {
        let client = send_and_keep(gw.http, &chat_body("gpt41", json!({"timeout": 300})));
        fake.wait_for_requests_to("/v1/chat/completions", n, Duration::from_secs(5));
        drop(client);
        // Before: the upstream call went on for the whole `timeout`, holding the one worker.
        fake.wait_for_client_aborts(n, Duration::from_secs(5));
    }
    // The worker is free, and three abandoned calls did not open the model's breaker.
    let started = Instant::now();
    let r = gw.chat("gpt41", "still there?", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    let health = gw.get("/api/health").json();
    let breaker = &health["circuit_breakers"]["gpt41"];
    assert!(
        breaker.is_null() || breaker["state"] == "closed",
        "{health}"
    );
}

#[test]
fn the_highest_timeout_is_a_server_flag_well_below_an_hour() {
    let (_fake, gw) = setup(Options::default());
    let msg = gw
        .chat("gpt41", "x", json!({"timeout": 3600}))
        .assert_error(400, "invalid_request");
    assert!(msg.contains("at most 600"), "{msg}");
    assert_eq!(gw.chat("gpt41", "x", json!({"timeout": 600})).status, 200);

    let (_fake, gw) =
        setup(Options::default().configure(|c| c.max_timeout = Duration::from_secs(30)));
    let msg = gw
        .chat("gpt41", "x", json!({"timeout": 31}))
        .assert_error(400, "invalid_request");
    assert!(msg.contains("at most 30"), "{msg}");
}

/// A provider that accepts connections and never reads a byte.
fn deaf_provider() -> (SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until && held.len() < 4 {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(15)),
        );
    });
    (addr, handle)
}

#[test]
fn a_provider_that_stops_reading_the_request_cannot_hold_a_stream_for_ever() {
    let (addr, _deaf) = deaf_provider();
    let gw = Gateway::start(Options::default().upstream(&format!("http://{addr}/v1")));
    // Far more than the socket buffers hold, so that the send blocks.
    let big = "z".repeat(16 << 20);
    let body = json!({"model": "gpt41", "stream": true, "timeout": 2, "retries": 1,
        "messages": [{"role": "user", "content": big}]});
    let started = Instant::now();
    let r = gw.post_json("/v1/chat/completions", &body);
    r.assert_error(504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn keep_alive_comments_do_not_extend_the_wait_for_the_first_event() {
    let (fake, gw) = setup(Options::default());
    let comments = vec![b": keep-alive\n\n".to_vec(); 100];
    fake.push(
        Reply::stream(Vec::<String>::new())
            .raw_events(comments)
            .gap(Duration::from_millis(100)),
    );
    let started = Instant::now();
    let r = gw.post(
        "/v1/chat/completions",
        &chat_body("gpt41", json!({"stream": true, "timeout": 1, "retries": 1})),
    );
    r.assert_error(504, "upstream_timeout");
    // Before: 10 s of comments, every one restarting the wait.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn keep_alive_comments_do_not_extend_a_gap_between_events() {
    let (fake, gw) = setup(Options::default());
    let first = json!({"choices": [{"index": 0, "delta": {"content": "a"}}]}).to_string();
    let mut writes = vec![format!("data: {first}\n\n").into_bytes()];
    writes.extend(vec![b": keep-alive\n\n".to_vec(); 100]);
    fake.push(
        Reply::stream(Vec::<String>::new())
            .raw_events(writes)
            .gap(Duration::from_millis(100)),
    );
    let started = Instant::now();
    let s = client::stream(
        gw.http,
        &Call::post(&chat_body("gpt41", json!({"stream": true, "timeout": 1}))),
    );
    assert_eq!(s.status, 200);
    let last = s
        .payloads()
        .last()
        .map(|p| p.to_string())
        .unwrap_or_default();
    assert!(last.contains("no event within the timeout"), "{last}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn streams_reuse_pooled_connections_to_the_provider() {
    let (fake, gw) = setup(Options::default());
    for _ in 0..3 {
        let s = client::stream(
            gw.http,
            &Call::post(&chat_body("gpt41", json!({"stream": true}))),
        );
        assert_eq!(s.status, 200);
        assert!(
            s.complete && s.text().starts_with("echo"),
            "{:?}",
            s.payloads()
        );
    }
    let r = gw.chat("gpt41", "and a completion", json!({}));
    assert_eq!(r.status, 200);
    let conns: Vec<u64> = fake
        .requests_to("/v1/chat/completions")
        .iter()
        .map(|r| r.conn_id)
        .collect();
    assert_eq!(conns.len(), 4);
    // Idle connections are kept per event loop (a socket belongs to its loop): at most one
    // per loop here, however the four client connections were spread over them.
    let loops = gw.get("/api/health").json()["workers"]["event_loops"]
        .as_u64()
        .unwrap();
    let mut distinct = conns.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(loops >= 1);
    assert!(
        distinct.len() as u64 <= loops,
        "at most one connection per event loop ({loops}): {conns:?}"
    );
}

#[test]
fn a_pooled_stream_whose_client_leaves_is_dropped_alone() {
    let (fake, gw) = setup(Options::default());
    let slow = Reply::chat_stream(&["a", "b", "c", "d", "e", "f", "g", "h"])
        .gap(Duration::from_millis(150));
    fake.push(slow.clone());
    fake.push(slow);
    let body = chat_body("gpt41", json!({"stream": true}));
    let stays = {
        let (addr, body) = (gw.http, body.clone());
        thread::spawn(move || client::stream(addr, &Call::post(&body)))
    };
    fake.wait_for_requests_to("/v1/chat/completions", 1, Duration::from_secs(5));
    let leaves = Call {
        leave_after: Some(2),
        ..Call::post(&body)
    };
    let left = client::stream(gw.http, &leaves);
    assert_eq!(left.events.len(), 2);
    let aborted = fake.wait_for_client_aborts(1, Duration::from_secs(5));
    assert_eq!(aborted.len(), 1);
    let stayed = stays.join().unwrap();
    assert!(
        stayed.complete,
        "the other stream went on: {:?}",
        stayed.payloads()
    );
    assert_eq!(stayed.text(), "abcdefgh");
    assert_eq!(fake.stream_closed_by_client_count(), 1);
}

#[test]
fn a_2xx_that_is_not_a_completion_is_not_asked_for_again() {
    let (fake, gw) = setup(Options::default());
    fake.push(Reply::json(
        200,
        json!({"error": {"message": "quota exceeded"}}),
    ));
    fake.push(Reply::chat("a second, billed answer"));
    let msg = gw
        .chat("gpt41", "x", json!({"retries": 3}))
        .assert_error(502, "upstream_error");
    assert!(msg.contains("quota exceeded"), "{msg}");
    assert_eq!(fake.requests_to("/v1/chat/completions").len(), 1);
    // The same for a stream answered with JSON.
    let (fake, gw) = setup(Options::default());
    fake.push(Reply::json(
        200,
        json!({"error": {"message": "no streams for you"}}),
    ));
    fake.push(Reply::chat_stream(&["billed twice"]));
    let r = gw.post(
        "/v1/chat/completions",
        &chat_body("gpt41", json!({"stream": true, "retries": 3})),
    );
    r.assert_error(502, "upstream_error");
    assert_eq!(fake.requests_to("/v1/chat/completions").len(), 1);
}

/// A client that keeps its connection to the gateway between requests (a ureq agent), so
/// that they run on one event loop and share its pooled connection to the provider.
fn keeping_client() -> ureq::Agent {
    crate::support::gateway::client()
}

fn post_with(agent: &ureq::Agent, gw: &Gateway, body: &[u8]) -> (u16, String) {
    let mut resp = agent
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("POST: {e}"));
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (resp.status().as_u16(), text)
}

#[test]
fn a_pooled_connection_dropped_after_the_provider_took_the_request_is_not_resent() {
    for stream in [false, true] {
        let (fake, gw) = setup(Options::default());
        // The provider takes the request, works on it for longer than a stale connection
        // takes to end, then drops the connection without an answer.
        fake.push(Reply::chat("warm"));
        fake.push(Reply::close().delay(Duration::from_millis(1500)));
        let agent = keeping_client();
        let (status, _) = post_with(&agent, &gw, &chat_body("gpt41", json!({})));
        assert_eq!(status, 200);
        let (status, text) = post_with(
            &agent,
            &gw,
            &chat_body("gpt41", json!({"stream": stream, "retries": 1})),
        );
        assert_eq!(status, 502, "stream={stream}: {text}");
        let seen = fake.requests_to("/v1/chat/completions");
        assert_eq!(
            seen.len(),
            2,
            "stream={stream}: asked once, as retries=1 says"
        );
        assert_eq!(
            seen[0].conn_id, seen[1].conn_id,
            "the second request went on the pooled connection"
        );
    }
}

#[test]
fn a_pooled_connection_closed_as_it_is_reused_is_replaced() {
    let (fake, gw) = setup(Options::default());
    // The provider closes the kept connection as the next request arrives: a stale
    // connection, whose request goes again on a new one.
    fake.push(Reply::chat("warm"));
    fake.push(Reply::close());
    let agent = keeping_client();
    assert_eq!(
        post_with(&agent, &gw, &chat_body("gpt41", json!({}))).0,
        200
    );
    let (status, text) = post_with(&agent, &gw, &chat_body("gpt41", json!({"retries": 1})));
    assert_eq!(status, 200, "{text}");
    let seen = fake.requests_to("/v1/chat/completions");
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].conn_id, seen[1].conn_id, "reused");
    assert_ne!(seen[1].conn_id, seen[2].conn_id, "sent again on a new one");
}
