//! Response serialisation, on an in-memory wire.

use std::time::Duration;

use super::*;
use crate::http::testwire::MemWire;

fn reply(version: Version, keep_alive: bool) -> Reply {
    Reply {
        version,
        head_only: false,
        keep_alive,
        write_timeout: Duration::from_secs(1),
        stall: Duration::from_secs(1),
    }
}

fn text(w: &MemWire) -> String {
    String::from_utf8_lossy(&w.output()).to_string()
}

fn streaming(pieces: &'static [&'static [u8]], end: io::Result<()>) -> Response {
    let mut end = Some(end);
    Response::stream(
        200,
        "text/event-stream",
        Box::new(move |sink, log| {
            for p in pieces {
                sink.send(p)?;
            }
            log.push(("tokens", "42".to_string()));
            end.take().unwrap_or(Ok(()))
        }),
    )
}

#[test]
fn a_full_response_is_one_write() {
    let mut w = MemWire::new(b"");
    let resp = Response::full(200, "text/plain", b"hello".to_vec());
    let out = write_response(&mut w, &reply(Version::Http11, true), resp);
    assert_eq!(w.writes.len(), 1);
    assert_eq!(
        text(&w),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    );
    assert!(out.keep_alive);
    assert_eq!(out.status, 200);
}

#[test]
fn head_gets_the_headers_and_length_without_the_body() {
    let mut w = MemWire::new(b"");
    let r = Reply {
        head_only: true,
        ..reply(Version::Http11, true)
    };
    let out = write_response(
        &mut w,
        &r,
        Response::full(200, "text/plain", b"hello".to_vec()),
    );
    assert_eq!(
        text(&w),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    );
    assert!(out.keep_alive);
    // A stream answered to HEAD: its framing header, no body, and the closure never runs.
    let mut w = MemWire::new(b"");
    let resp = Response::stream(200, "text/plain", Box::new(|_, _| panic!("must not run")));
    let out = write_response(&mut w, &r, resp);
    assert!(
        text(&w).ends_with("Transfer-Encoding: chunked\r\n\r\n"),
        "{}",
        text(&w)
    );
    assert!(out.keep_alive);
}

#[test]
fn connection_header_follows_the_keep_alive_decision() {
    let full = || Response::full(200, "text/plain", Vec::new());
    let cases = [
        (Version::Http11, true, false, None),
        (Version::Http11, false, false, Some("close")),
        (Version::Http11, true, true, Some("close")),
        (Version::Http10, true, false, Some("keep-alive")),
        (Version::Http10, false, false, Some("close")),
    ];
    for (version, keep, close, want) in cases {
        let mut w = MemWire::new(b"");
        let resp = Response { close, ..full() };
        let out = write_response(&mut w, &reply(version, keep), resp);
        let t = text(&w);
        let got = t
            .lines()
            .find_map(|l| l.strip_prefix("Connection: "))
            .map(str::to_string);
        assert_eq!(
            got.as_deref(),
            want,
            "{version:?} keep={keep} close={close}"
        );
        assert_eq!(out.keep_alive, want != Some("close"));
    }
}

#[test]
fn a_stream_is_chunked_one_write_and_flush_per_piece_and_skips_empty_pieces() {
    let mut w = MemWire::new(b"");
    let out = write_response(
        &mut w,
        &reply(Version::Http11, true),
        streaming(&[b"ab", b"", b"cde"], Ok(())),
    );
    assert_eq!(
        w.writes[1..],
        [
            b"2\r\nab\r\n".to_vec(),
            b"3\r\ncde\r\n".to_vec(),
            b"0\r\n\r\n".to_vec()
        ]
    );
    assert!(text(&w).starts_with(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    ));
    assert_eq!(w.flushes, 4, "the head and every piece are flushed");
    assert!(out.keep_alive);
    assert_eq!(out.log, vec![("tokens", "42".to_string())]);
}

#[test]
fn an_http10_stream_is_close_delimited() {
    let mut w = MemWire::new(b"");
    let out = write_response(
        &mut w,
        &reply(Version::Http10, true),
        streaming(&[b"ab", b"cd"], Ok(())),
    );
    assert_eq!(
        text(&w),
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\nabcd"
    );
    assert!(!out.keep_alive);
}

#[test]
fn a_failed_or_panicking_stream_is_not_terminated() {
    let mut w = MemWire::new(b"");
    let out = write_response(
        &mut w,
        &reply(Version::Http11, true),
        streaming(&[b"ab"], Err(io::ErrorKind::Other.into())),
    );
    assert!(text(&w).ends_with("2\r\nab\r\n"), "{}", text(&w));
    assert!(!out.keep_alive);
    let mut w = MemWire::new(b"");
    let resp = Response::stream(
        200,
        "text/plain",
        Box::new(|sink, _| {
            sink.send(b"x")?;
            panic!("stream bug")
        }),
    );
    let out = write_response(&mut w, &reply(Version::Http11, true), resp);
    assert!(text(&w).ends_with("1\r\nx\r\n"));
    assert!(!out.keep_alive);
}

#[test]
fn a_failed_write_ends_keep_alive_and_the_sink_reports_it() {
    let mut w = MemWire::new(b"");
    w.fail_after = Some(0);
    let out = write_response(
        &mut w,
        &reply(Version::Http11, true),
        Response::full(200, "text/plain", b"x".to_vec()),
    );
    assert!(!out.keep_alive);
    let mut w = MemWire::new(b"");
    w.fail_after = Some(2);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let resp = Response::stream(
        200,
        "text/plain",
        Box::new(move |sink, _| {
            for p in [&b"a"[..], b"b", b"c"] {
                let r = sink.send(p);
                record.lock().unwrap().push(r.is_ok());
                r?;
            }
            Ok(())
        }),
    );
    let out = write_response(&mut w, &reply(Version::Http11, true), resp);
    assert_eq!(*seen.lock().unwrap(), vec![true, false]);
    assert!(!out.keep_alive);
}

#[test]
fn framing_and_unsafe_headers_from_a_handler_are_dropped() {
    let mut w = MemWire::new(b"");
    let resp = Response::full(200, "text/plain", b"hi".to_vec())
        .with_header("Content-Length", "999")
        .with_header("transfer-encoding", "chunked")
        .with_header("Connection", "keep-alive")
        .with_header("X-Split", "a\r\nSet-Cookie: evil=1")
        .with_header("Bad Name", "x")
        .with_header("Retry-After", "1");
    write_response(&mut w, &reply(Version::Http11, true), resp);
    assert_eq!(
        text(&w),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\nhi"
    );
}

#[test]
fn statuses_without_a_body_and_odd_statuses() {
    let mut w = MemWire::new(b"");
    write_response(
        &mut w,
        &reply(Version::Http11, true),
        Response::full(204, "text/plain", b"ignored".to_vec()),
    );
    assert_eq!(
        text(&w),
        "HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\n\r\n"
    );
    let mut w = MemWire::new(b"");
    write_response(
        &mut w,
        &reply(Version::Http11, true),
        Response::full(299, "a/b", Vec::new()),
    );
    assert!(text(&w).starts_with("HTTP/1.1 299 \r\n"));
    let mut w = MemWire::new(b"");
    let out = write_response(
        &mut w,
        &reply(Version::Http11, true),
        Response::full(42, "a/b", Vec::new()),
    );
    assert_eq!(out.status, 500);
    assert!(text(&w).starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
}

#[test]
fn reason_phrases() {
    for (status, phrase) in [
        (200, "OK"),
        (400, "Bad Request"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (413, "Content Too Large"),
        (429, "Too Many Requests"),
        (431, "Request Header Fields Too Large"),
        (503, "Service Unavailable"),
        (504, "Gateway Timeout"),
    ] {
        assert_eq!(reason(status), phrase);
    }
}

#[test]
fn error_responses_keep_their_headers() {
    let mut w = MemWire::new(b"");
    let resp = Response::error(&crate::Error::Overloaded { retry_after_s: 1 });
    let out = write_response(&mut w, &reply(Version::Http11, false), resp);
    let t = text(&w);
    assert!(t.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{t}");
    assert!(t.contains("\r\nRetry-After: 1\r\n"));
    assert!(t.contains("\r\nConnection: close\r\n"));
    assert!(t.contains("\"code\":\"overloaded\""));
    assert_eq!(out.log, vec![("error", "overloaded".to_string())]);
}

#[test]
fn access_log_fields_are_the_request_line_and_the_handler_fields() {
    let extra = vec![
        ("model", "gpt41".to_string()),
        ("attempts", "2".to_string()),
    ];
    let ip = "::ffff:10.1.2.3"
        .parse::<std::net::IpAddr>()
        .unwrap()
        .to_canonical();
    let fields = access_fields(
        "POST",
        "/v1/chat/completions",
        200,
        ip,
        Duration::from_millis(42),
        &extra,
    );
    let want: Vec<(&str, String)> = [
        ("method", "POST"),
        ("path", "/v1/chat/completions"),
        ("status", "200"),
        ("ip", "10.1.2.3"),
        ("ms", "42.00"),
        ("model", "gpt41"),
        ("attempts", "2"),
    ]
    .iter()
    .map(|(k, v)| (*k, v.to_string()))
    .collect();
    assert_eq!(fields, want);
}

#[test]
fn a_worker_leaves_what_the_client_does_not_take_for_the_connection_thread() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = MemWire::new(b"");
    w.take_at_most = Some(1000);
    let resp = Response::full(200, "application/octet-stream", body.clone());
    let Written::Rest(rest, out) = write_for_worker(&mut w, &reply(Version::Http11, true), resp)
    else {
        panic!("a client that takes 1000 bytes leaves a rest");
    };
    assert_eq!(w.output().len(), 1000);
    // The client reads again: the connection thread writes the rest.
    w.take_at_most = None;
    let out = finish(&mut w, rest, out, Duration::from_secs(1));
    assert!(out.keep_alive);
    let all = w.output();
    let split = all.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&all[split..], &body[..]);
    assert!(text(&w).starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn a_rest_the_client_never_takes_ends_the_connection() {
    let mut w = MemWire::new(b"");
    w.take_at_most = Some(10);
    let resp = Response::full(200, "text/plain", vec![b'x'; 50_000]);
    let Written::Rest(rest, out) = write_for_worker(&mut w, &reply(Version::Http11, true), resp)
    else {
        panic!("a rest");
    };
    let out = finish(&mut w, rest, out, Duration::from_millis(20));
    assert!(!out.keep_alive);
    // On the connection thread a complete answer is written in one go, or fails.
    let mut w = MemWire::new(b"");
    w.take_at_most = Some(10);
    let out = write_response(
        &mut w,
        &reply(Version::Http11, true),
        Response::full(200, "text/plain", vec![b'y'; 100]),
    );
    assert!(!out.keep_alive);
}

#[test]
fn a_stream_the_client_stops_reading_ends_within_its_stall_budget() {
    let mut w = MemWire::new(b"");
    w.take_at_most = Some(300);
    let resp = streaming(
        &[b"data: one\n\n", &[b'z'; 4096], b"data: never\n\n"],
        Ok(()),
    );
    let Written::Done(out) = write_for_worker(&mut w, &reply(Version::Http11, true), resp) else {
        panic!("a stream is written by the worker to its end");
    };
    assert!(!out.keep_alive, "the stream was cut");
    assert!(!text(&w).contains("never"));
}
