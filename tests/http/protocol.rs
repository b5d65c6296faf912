//! HTTP/1.1 conformance: keep-alive, pipelining, bodies, 100-continue, HTTP/1.0, HEAD,
//! streaming.

use std::time::{Duration, Instant};

use super::*;

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\none\
          POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\ntwo",
    )
    .unwrap();
    let first = c.response().unwrap();
    let second = c.response().unwrap();
    assert_eq!((first.status, first.text().as_str()), (200, "one"));
    assert_eq!((second.status, second.text().as_str()), (200, "two"));
    assert_eq!(
        first.header("connection"),
        None,
        "keep-alive is the default"
    );
    // And the same connection still serves.
    let third = c.get("/info?x=1");
    assert_eq!(third.json()["query"], "x=1");
}

#[test]
fn a_chunked_request_body_is_decoded() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: yes\r\n\r\n",
    )
    .unwrap();
    let r = c.response().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "Wikipedia"));
    assert_eq!(
        c.get("/echo").status,
        200,
        "connection reusable after a chunked body"
    );
}

#[test]
fn both_length_headers_get_400_and_a_close() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\nWiki\r\n0\r\n\r\n",
    )
    .unwrap();
    let r = c.response().unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "invalid_request");
    assert_eq!(r.json()["error"]["param"], serde_json::Value::Null);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn duplicate_content_length_gets_400() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    c.send(b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    assert_eq!(c.response().unwrap().status, 400);
}

#[test]
fn expect_100_continue_gets_the_interim_answer_before_the_body() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    c.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    let interim = c.response().unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"hello").unwrap();
    let r = c.response().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert_eq!(r.header("x-method"), Some("PUT"));
    // Too large: 413 straight away, no 100.
    let mut c = h.client();
    c.send(b"PUT /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 999999999999\r\n\r\n")
        .unwrap();
    let r = c.response().unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
}

#[test]
fn http10_streams_are_close_delimited_and_keep_alive_is_opt_in() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    c.send(b"GET /stream?n=3&ms=10 HTTP/1.0\r\n\r\n").unwrap();
    let r = c.response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        r.text(),
        "data: piece 0\n\ndata: piece 1\n\ndata: piece 2\n\n"
    );
    // Plain HTTP/1.0: closed after the answer.
    let mut c = h.client();
    c.send(b"GET /echo HTTP/1.0\r\n\r\n").unwrap();
    let r = c.response().unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed());
    // HTTP/1.0 with keep-alive: kept, and said so.
    let mut c = h.client();
    for _ in 0..2 {
        c.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = c.response().unwrap();
        assert_eq!(
            (r.status, r.header("connection")),
            (200, Some("keep-alive"))
        );
    }
}

#[test]
fn head_gets_headers_and_length_but_no_body() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    c.send(b"HEAD /info HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = c.head_response().unwrap();
    assert_eq!(r.status, 200);
    let length: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(length > 10);
    // If a body had been sent, this would read it as a status line.
    let next = c.get("/echo");
    assert_eq!(next.status, 200);
}

#[test]
fn streamed_pieces_arrive_separately_in_time() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    let r = c.get("/stream?n=3&ms=200");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        r.chunk_times.len(),
        3,
        "empty pieces are not sent as chunks"
    );
    for pair in r.chunk_times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(150), "pieces {gap:?} apart");
    }
    assert_eq!(c.get("/echo").status, 200, "keep-alive after a stream");
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let h = Harness::start(|c| c.timeouts.idle = Duration::from_millis(300));
    let mut c = h.client();
    assert_eq!(c.get("/echo").status, 200);
    let idle_from = Instant::now();
    assert!(c.closed());
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(2),
        "{idle:?}"
    );
}

#[test]
fn a_stalled_half_head_is_closed_silently_at_the_deadline() {
    let h = Harness::start(|c| c.timeouts.head = Duration::from_millis(400));
    let mut c = h.client();
    let from = Instant::now();
    c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .unwrap();
    let mut rest = Vec::new();
    let _ = c.r.read_to_end(&mut rest);
    let took = from.elapsed();
    assert!(
        rest.is_empty(),
        "no answer expected, got {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The head deadline covers the whole head, not each read: trickling does not extend it.
    let mut c = h.client();
    c.tcp()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let from = Instant::now();
    c.send(b"GET /echo HTTP/1.1\r\n").unwrap();
    while !c.closed() {
        assert!(
            from.elapsed() < Duration::from_secs(3),
            "trickle kept it open"
        );
        let _ = c.send(b"X-A: b\r\n");
    }
    let took = from.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn a_later_request_gets_the_idle_wait_then_the_head_deadline() {
    let h = Harness::start(|c| {
        c.timeouts.idle = Duration::from_millis(1500);
        c.timeouts.head = Duration::from_millis(300);
    });
    let mut c = h.client();
    assert_eq!(c.get("/echo").status, 200);
    // Idle for longer than the head deadline, shorter than the idle timeout: still served.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.get("/echo").status, 200);
}

#[test]
fn a_handler_panic_is_a_500_and_the_server_lives_on() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    let r = c.get("/panic");
    assert_eq!((r.status, r.error_code().as_str()), (500, "internal_error"));
    assert_eq!(c.get("/echo").status, 200, "same connection, next request");
    assert_eq!(h.client().get("/echo").status, 200);
}
