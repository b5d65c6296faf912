//! Response serialisation, on an in-memory wire.

use std::time::Duration;

use super::*;
use crate::http::conn::{guarded, run_stream};
use crate::http::testwire::MemWire;
use crate::http::{Body, Response, Sink};

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

/// A response as the connection writes it: a stream closure run on a thread of its own.
fn out_of(resp: Response) -> Out {
    let body = match resp.body {
        Body::Full(b) => OutBody::Full(b),
        Body::Stream(closure) => {
            let pipe = Pipe::new();
            let fed = pipe.clone();
            std::thread::spawn(move || run_stream(closure, fed));
            OutBody::Piped(pipe, None)
        }
        Body::Piped(make) => {
            let pipe = Pipe::new();
            let producer = make(pipe.clone());
            OutBody::Piped(pipe, Some(guarded(producer)))
        }
    };
    Out {
        status: resp.status,
        headers: resp.headers,
        body,
        log: resp.log,
        close: resp.close,
    }
}

/// Writes `resp` on `w` on an event loop of this thread.
fn write(w: &mut MemWire, reply: &Reply, resp: Response) -> Outcome {
    let out = out_of(resp);
    crate::rt::block_on(write_response(
        w,
        reply,
        out,
        &Hangup::default(),
        &mut |_, _| {},
    ))
    .expect("an event loop")
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
    let out = write(&mut w, &reply(Version::Http11, true), resp);
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
    let out = write(
        &mut w,
        &r,
        Response::full(200, "text/plain", b"hello".to_vec()),
    );
    assert_eq!(
        text(&w),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    );
    assert!(out.keep_alive);
    // A stream answered to HEAD: its framing header, no body, and its task never runs.
    let mut w = MemWire::new(b"");
    let resp = Response::piped(
        200,
        "text/plain",
        Box::new(|_| Box::pin(async { panic!("must not run") })),
    );
    let out = write(&mut w, &r, resp);
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
        let out = write(&mut w, &reply(version, keep), resp);
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
    let out = write(
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
    assert_eq!(w.flushes, 4, "the head and every piece are flushed, once");
    assert!(out.keep_alive);
    assert_eq!(out.log, vec![("tokens", "42".to_string())]);
}

#[test]
fn a_stream_made_on_the_loop_is_written_as_it_comes() {
    let mut w = MemWire::new(b"");
    let resp = Response::piped(
        200,
        "text/event-stream",
        Box::new(|mut pipe| {
            Box::pin(async move {
                for p in [&b"one"[..], b"two"] {
                    pipe.room().await?;
                    crate::rt::time::sleep(Duration::from_millis(2)).await;
                    Sink::send(&mut pipe, p)?;
                }
                Ok(())
            })
            .then_log(vec![("pieces", "2".to_string())])
        }),
    );
    let out = write(&mut w, &reply(Version::Http11, true), resp);
    assert!(
        text(&w).ends_with("3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"),
        "{}",
        text(&w)
    );
    assert!(out.keep_alive);
    assert_eq!(out.log, vec![("pieces", "2".to_string())]);
}

/// A producer's result with the log fields it adds.
trait ThenLog {
    fn then_log(self, log: LogFields) -> Producer;
}

impl<F: Future<Output = io::Result<()>> + 'static> ThenLog for Pin<Box<F>> {
    fn then_log(self, log: LogFields) -> Producer {
        Box::pin(async move { (self.await, log) })
    }
}

#[test]
fn an_http10_stream_is_close_delimited() {
    let mut w = MemWire::new(b"");
    let out = write(
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
    let out = write(
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
    let out = write(&mut w, &reply(Version::Http11, true), resp);
    assert!(text(&w).ends_with("1\r\nx\r\n"));
    assert!(!out.keep_alive);
    let mut w = MemWire::new(b"");
    let resp = Response::piped(
        200,
        "text/plain",
        Box::new(|mut pipe| {
            Box::pin(async move {
                let _ = Sink::send(&mut pipe, b"y");
                panic!("stream bug on the loop")
            })
        }),
    );
    let out = write(&mut w, &reply(Version::Http11, true), resp);
    assert!(text(&w).ends_with("1\r\ny\r\n"), "{}", text(&w));
    assert!(!out.keep_alive);
}

#[test]
fn a_failed_write_ends_keep_alive_and_the_sink_reports_it() {
    let mut w = MemWire::new(b"");
    w.fail_after = Some(0);
    let out = write(
        &mut w,
        &reply(Version::Http11, true),
        Response::full(200, "text/plain", b"x".to_vec()),
    );
    assert!(!out.keep_alive);
    let mut w = MemWire::new(b"");
    w.fail_after = Some(2);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let (done, finished) = std::sync::mpsc::channel();
    let resp = Response::stream(
        200,
        "text/plain",
        Box::new(move |sink, _| {
            let mut sent = Ok(());
            for p in [&b"a"[..], b"b", b"c"] {
                // Each piece waits for the one before to be written.
                std::thread::sleep(Duration::from_millis(20));
                sent = sink.send(p);
                record.lock().unwrap().push(sent.is_ok());
                if sent.is_err() {
                    break;
                }
            }
            let _ = done.send(());
            sent
        }),
    );
    let out = write(&mut w, &reply(Version::Http11, true), resp);
    assert!(!out.keep_alive);
    finished.recv_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![true, true, false],
        "the write of b failed: c was refused"
    );
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
    write(&mut w, &reply(Version::Http11, true), resp);
    assert_eq!(
        text(&w),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\nhi"
    );
}

#[test]
fn statuses_without_a_body_and_odd_statuses() {
    let mut w = MemWire::new(b"");
    write(
        &mut w,
        &reply(Version::Http11, true),
        Response::full(204, "text/plain", b"ignored".to_vec()),
    );
    assert_eq!(
        text(&w),
        "HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\n\r\n"
    );
    let mut w = MemWire::new(b"");
    write(
        &mut w,
        &reply(Version::Http11, true),
        Response::full(299, "a/b", Vec::new()),
    );
    assert!(text(&w).starts_with("HTTP/1.1 299 \r\n"));
    let mut w = MemWire::new(b"");
    let out = write(
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
    let out = write(&mut w, &reply(Version::Http11, false), resp);
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
fn a_complete_answer_the_client_does_not_take_ends_the_connection_in_time() {
    let mut w = MemWire::new(b"");
    w.take_at_most = Some(10);
    let r = Reply {
        write_timeout: Duration::from_millis(30),
        ..reply(Version::Http11, true)
    };
    let started = std::time::Instant::now();
    let out = write(
        &mut w,
        &r,
        Response::full(200, "text/plain", vec![b'y'; 50_000]),
    );
    assert!(!out.keep_alive);
    assert_eq!(w.output().len(), 10);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_stream_the_client_stops_reading_ends_within_its_stall_budget() {
    let mut w = MemWire::new(b"");
    w.take_at_most = Some(300);
    let r = Reply {
        stall: Duration::from_millis(50),
        ..reply(Version::Http11, true)
    };
    let resp = streaming(
        &[b"data: one\n\n", &[b'z'; 4096], b"data: never\n\n"],
        Ok(()),
    );
    let started = std::time::Instant::now();
    let out = write(&mut w, &r, resp);
    assert!(!out.keep_alive, "the stream was cut");
    assert!(!text(&w).contains("never"));
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(started.elapsed() < Duration::from_secs(2));
}
