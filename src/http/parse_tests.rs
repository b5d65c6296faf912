//! Framing rules of the request reader, on in-memory bytes.

use std::time::{Duration, Instant};

use super::*;
use crate::http::testwire::MemWire;

fn limits() -> Limits {
    Limits {
        head_bytes: 64 * 1024,
        header_lines: 100,
        body_bytes: 1024,
        connections: 10,
        ..Limits::default()
    }
}

/// Reads one request with generous deadlines.
fn read_with(
    w: &mut MemWire,
    buf: &mut InBuf,
    limits: &Limits,
) -> Result<(Head, Vec<u8>), ReadError> {
    let soon = Instant::now() + Duration::from_secs(5);
    crate::rt::block_on(read_request(
        w,
        buf,
        limits,
        soon,
        Duration::from_secs(5),
        Duration::from_secs(1),
    ))
    .expect("an event loop")
}

fn read(input: &[u8]) -> Result<(Head, Vec<u8>), ReadError> {
    let mut w = MemWire::new(input);
    read_with(&mut w, &mut InBuf::new(&limits()), &limits())
}

/// The status a refusal would answer with, or a description of another outcome.
fn status(r: Result<(Head, Vec<u8>), ReadError>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(ReadError::Reject(r)) => r.error.status().to_string(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn parses_a_simple_get() {
    let (head, body) =
        read(b"GET /v1/models?x=1&y HTTP/1.1\r\nHost: a\r\nX-Thing:  v \r\n\r\n").unwrap();
    assert_eq!(head.method, "GET");
    assert_eq!(head.path, "/v1/models");
    assert_eq!(head.query.as_deref(), Some("x=1&y"));
    assert_eq!(head.version, Version::Http11);
    assert_eq!(
        head.headers.iter().collect::<Vec<_>>(),
        [("host", "a"), ("x-thing", "v")]
    );
    assert_eq!(head.framing, Framing::Empty);
    assert!(head.keep_alive);
    assert!(body.is_empty());
}

#[test]
fn parses_a_head_that_arrives_one_byte_at_a_time() {
    let input = b"\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    let mut w = MemWire::new(input).step(1);
    let (head, body) = read_with(&mut w, &mut InBuf::new(&limits()), &limits()).unwrap();
    assert_eq!((head.method.as_str(), head.path.as_str()), ("POST", "/p"));
    assert_eq!(body, b"abc");
}

#[test]
fn keeps_pipelined_bytes_for_the_next_request() {
    let input = b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
    let mut w = MemWire::new(input);
    let mut buf = InBuf::new(&limits());
    let (a, body) = read_with(&mut w, &mut buf, &limits()).unwrap();
    assert_eq!((a.path.as_str(), body.as_slice()), ("/a", &b"hi"[..]));
    let (b, _) = read_with(&mut w, &mut buf, &limits()).unwrap();
    let (c, _) = read_with(&mut w, &mut buf, &limits()).unwrap();
    assert_eq!((b.path.as_str(), c.path.as_str()), ("/b", "/c"));
    assert!(matches!(
        read_with(&mut w, &mut buf, &limits()),
        Err(ReadError::Closed)
    ));
}

#[test]
fn refuses_a_head_over_the_limit_without_buffering_more() {
    let mut input = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 200 * 1024));
    let mut w = MemWire::new(&input);
    let mut buf = InBuf::new(&limits());
    let r = read_with(&mut w, &mut buf, &limits());
    assert_eq!(status(r), "431");
    assert!(buf.len() <= limits().head_bytes);
    assert!(w.consumed() <= limits().head_bytes + READ_CHUNK);
}

#[test]
fn refuses_a_megabyte_request_line() {
    let mut input = b"GET /".to_vec();
    input.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    input.extend(b" HTTP/1.1\r\n\r\n");
    assert_eq!(status(read(&input)), "431");
}

fn with_headers(n: usize) -> Vec<u8> {
    let mut input = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..n {
        input.extend(format!("X-H{i}: {i}\r\n").bytes());
    }
    input.extend(b"\r\n");
    input
}

#[test]
fn header_lines_are_limited() {
    assert_eq!(status(read(&with_headers(100))), "ok");
    assert_eq!(status(read(&with_headers(101))), "431");
    assert_eq!(status(read(&with_headers(1000))), "431");
}

#[test]
fn a_header_limit_beyond_the_stack_slots_is_kept_too() {
    for lines in [STACK_HEADER_SLOTS, STACK_HEADER_SLOTS + 72] {
        let limits = Limits {
            header_lines: lines,
            ..limits()
        };
        let read = |n: usize| {
            let mut w = MemWire::new(&with_headers(n));
            status(read_with(&mut w, &mut InBuf::new(&limits), &limits))
        };
        assert_eq!(read(lines), "ok", "{lines}");
        assert_eq!(read(lines + 1), "431", "{lines}");
    }
    let mut w = MemWire::new(&with_headers(150));
    let limits = Limits {
        header_lines: 200,
        ..limits()
    };
    let (head, _) = read_with(&mut w, &mut InBuf::new(&limits), &limits).unwrap();
    assert_eq!(head.headers.len(), 150);
}

#[test]
fn refuses_garbage_and_bad_targets() {
    for input in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET nopath HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            status(read(input)),
            "400",
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn accepts_absolute_form_and_asterisk_targets() {
    let (head, _) = read(b"GET http://host:80/v1/models?a=b HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        (head.path.as_str(), head.query.as_deref()),
        ("/v1/models", Some("a=b"))
    );
    let (head, _) = read(b"GET HTTPS://host HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(head.path, "/");
    let (head, _) = read(b"OPTIONS * HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(head.path, "*");
}

#[test]
fn reads_a_content_length_body() {
    let (head, body) = read(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").unwrap();
    assert_eq!(head.framing, Framing::Length(5));
    assert_eq!(body, b"hello");
}

#[test]
fn refuses_a_declared_body_over_the_limit_before_reading_it() {
    let mut input = b"POST / HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n".to_vec();
    let head_len = input.len();
    input.extend(vec![b'x'; 100_000]);
    let mut w = MemWire::new(&input).step(head_len);
    let r = read_with(&mut w, &mut InBuf::new(&limits()), &limits());
    match r {
        Err(ReadError::Reject(r)) => {
            assert_eq!(r.error.status(), 413);
            assert_eq!(
                (r.method.as_deref(), r.path.as_deref()),
                (Some("POST"), Some("/"))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.consumed(), head_len, "no body byte may be read");
    // A number too long for 64 bits is too large, not malformed.
    assert_eq!(
        status(read(
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"
        )),
        "413"
    );
}

#[test]
fn body_framing_rules() {
    type Case<'a> = (&'a [(&'a str, &'a str)], Version, &'a str);
    let cases: &[Case] = &[
        (&[], Version::Http11, "Empty"),
        (&[("content-length", "0")], Version::Http11, "Length(0)"),
        (&[("content-length", "12")], Version::Http10, "Length(12)"),
        (
            &[("transfer-encoding", "chunked")],
            Version::Http11,
            "Chunked",
        ),
        (
            &[("transfer-encoding", "Chunked")],
            Version::Http11,
            "Chunked",
        ),
        (
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            Version::Http11,
            "400",
        ),
        (
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            Version::Http11,
            "400",
        ),
        (
            &[("content-length", "5"), ("content-length", "5")],
            Version::Http11,
            "400",
        ),
        (
            &[("content-length", "5"), ("content-length", "6")],
            Version::Http11,
            "400",
        ),
        (&[("content-length", "5, 5")], Version::Http11, "400"),
        (&[("content-length", "-1")], Version::Http11, "400"),
        (&[("content-length", "+5")], Version::Http11, "400"),
        (&[("content-length", "0x10")], Version::Http11, "400"),
        (&[("content-length", "")], Version::Http11, "400"),
        (
            &[("transfer-encoding", "gzip, chunked")],
            Version::Http11,
            "400",
        ),
        (
            &[("transfer-encoding", "chunked, chunked")],
            Version::Http11,
            "400",
        ),
        (
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            Version::Http11,
            "400",
        ),
        (&[("transfer-encoding", "identity")], Version::Http11, "400"),
        (&[("transfer-encoding", "")], Version::Http11, "400"),
        (&[("transfer-encoding", "chunked")], Version::Http10, "400"),
    ];
    for (headers, version, want) in cases {
        let headers = Headers::from_pairs(headers.iter().copied());
        let got = match framing(*version, &headers) {
            Ok(f) => format!("{f:?}"),
            Err(ReadError::Reject(r)) => r.error.status().to_string(),
            Err(e) => format!("{e:?}"),
        };
        assert_eq!(&got, want, "{headers:?} {version:?}");
    }
}

#[test]
fn both_length_headers_are_refused_on_the_wire() {
    let input = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(status(read(input)), "400");
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut input = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    input.extend_from_slice(body);
    input
}

#[test]
fn decodes_chunked_bodies() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n", b"Wikipedia"),
        (b"0\r\n\r\n", b""),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"004\r\nWiki\r\n0000\r\n\r\n", b"Wiki"),
        (b"4;name=value;x\r\nWiki\r\n0;last\r\n\r\n", b"Wiki"),
        (b"4 ;ext\r\nWiki\r\n0\r\n\r\n", b"Wiki"),
        (b"4\r\nWiki\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n", b"Wiki"),
    ];
    for (encoded, want) in cases {
        for step in [1, 3, 4096] {
            let mut w = MemWire::new(&chunked(encoded)).step(step);
            let (head, body) = read_with(&mut w, &mut InBuf::new(&limits()), &limits())
                .unwrap_or_else(|e| panic!("{e:?} for {}", String::from_utf8_lossy(encoded)));
            assert_eq!(head.framing, Framing::Chunked);
            assert_eq!(body, *want);
        }
    }
}

#[test]
fn a_request_after_a_chunked_body_is_kept() {
    let mut input = chunked(b"3\r\nabc\r\n0\r\n\r\n");
    input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
    let mut w = MemWire::new(&input);
    let mut buf = InBuf::new(&limits());
    let (_, body) = read_with(&mut w, &mut buf, &limits()).unwrap();
    assert_eq!(body, b"abc");
    let (next, _) = read_with(&mut w, &mut buf, &limits()).unwrap();
    assert_eq!(next.path, "/next");
}

#[test]
fn refuses_bad_chunked_framing() {
    let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(5000));
    let many_trailers = format!("0\r\n{}\r\n", "X-T: 1234567890\r\n".repeat(2000));
    let cases: &[(&[u8], &str)] = &[
        (b"g\r\nabc\r\n0\r\n\r\n", "400"),
        (b"\r\nabc\r\n0\r\n\r\n", "400"),
        (b"-1\r\na\r\n0\r\n\r\n", "400"),
        (b"4 x\r\nWiki\r\n0\r\n\r\n", "400"),
        (b"0x4\r\nWiki\r\n0\r\n\r\n", "400"),
        (b"1ffffffffffffffff\r\na\r\n0\r\n\r\n", "400"),
        (b"4\nWiki\r\n0\r\n\r\n", "400"),
        (b"4\r\nWikiXX0\r\n\r\n", "400"),
        (b"4\r\nWiki\r\n0\r\n\n", "400"),
        (long_ext.as_bytes(), "400"),
        (many_trailers.as_bytes(), "400"),
        // Over the 1 KiB body limit of these tests: declared at once, or summed up.
        (b"fffffffffff\r\n", "413"),
        (b"401\r\n", "413"),
        (b"200\r\n", "Closed"),
    ];
    for (encoded, want) in cases {
        let got = status(read(&chunked(encoded)));
        assert_eq!(
            &got,
            want,
            "{}",
            String::from_utf8_lossy(&encoded[..encoded.len().min(40)])
        );
    }
    let mut summed = Vec::new();
    for _ in 0..5 {
        summed.extend_from_slice(b"100\r\n");
        summed.extend(vec![b'x'; 256]);
        summed.extend_from_slice(b"\r\n");
    }
    assert_eq!(status(read(&chunked(&summed))), "413");
}

#[test]
fn parses_chunk_size_lines() {
    let ok: &[(&[u8], u64)] = &[
        (b"0", 0),
        (b"a", 10),
        (b"FF", 255),
        (b"ffffffffffffffff", u64::MAX),
        (b"1;x=y", 1),
        (b"1\t;x", 1),
    ];
    for (line, want) in ok {
        assert_eq!(parse_chunk_size(line).unwrap(), *want);
    }
    for line in [&b""[..], b";x", b"1 2", b"10000000000000000", b"z", b" 1"] {
        assert!(
            parse_chunk_size(line).is_err(),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn sends_100_continue_only_when_the_body_is_wanted_and_awaited() {
    let expect = "Expect: 100-continue\r\n";
    let run = |input: String, step: usize| {
        let mut w = MemWire::new(input.as_bytes()).step(step);
        let r = read_with(&mut w, &mut InBuf::new(&limits()), &limits());
        (status(r), String::from_utf8_lossy(&w.output()).to_string())
    };
    let head = |version: &str, length: &str| {
        format!("POST / HTTP/{version}\r\n{expect}Content-Length: {length}\r\n\r\n")
    };
    // The client waits after its head: it gets the interim answer, then sends the body.
    let h = head("1.1", "5");
    let (st, out) = run(format!("{h}hello"), h.len());
    assert_eq!(
        (st.as_str(), out.as_str()),
        ("ok", "HTTP/1.1 100 Continue\r\n\r\n")
    );
    // Too large: straight to 413, no 100.
    let h = head("1.1", "5000");
    assert_eq!(run(h.clone(), h.len()), ("413".to_string(), String::new()));
    // Body already there, no body, HTTP/1.0: no 100.
    let h = head("1.1", "5");
    assert_eq!(
        run(format!("{h}hello"), 4096),
        ("ok".to_string(), String::new())
    );
    let h = head("1.1", "0");
    assert_eq!(run(h.clone(), h.len()), ("ok".to_string(), String::new()));
    let h = head("1.0", "5");
    assert_eq!(
        run(format!("{h}hello"), h.len()),
        ("ok".to_string(), String::new())
    );
}

#[test]
fn keep_alive_rules() {
    let v11 = Version::Http11;
    let v10 = Version::Http10;
    let conn = |v: &str| Headers::from_pairs([("connection", v)]);
    let none = Headers::new();
    assert!(keep_alive(v11, &none));
    assert!(!keep_alive(v11, &conn("close")));
    assert!(!keep_alive(v11, &conn("Upgrade, Close")));
    assert!(!keep_alive(v10, &none));
    assert!(keep_alive(v10, &conn("keep-alive")));
    assert!(keep_alive(v10, &conn("Keep-Alive, Upgrade")));
    assert!(!keep_alive(v10, &conn("keep-alive, close")));
    let (head, _) = read(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!((head.version, head.keep_alive), (v10, false));
}

#[test]
fn a_stalled_head_times_out() {
    let mut w = MemWire::new(b"GET / HTTP/1.1\r\nHost:").stalling();
    let mut buf = InBuf::new(&limits());
    let started = Instant::now();
    let deadline = started + Duration::from_millis(50);
    let r = crate::rt::block_on(read_head(&mut w, &mut buf, &limits(), deadline)).unwrap();
    assert!(matches!(r, Err(ReadError::Timeout)), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_stalled_or_cut_body_ends_the_connection() {
    let input = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
    let mut w = MemWire::new(input).stalling();
    let soon = Instant::now() + Duration::from_secs(5);
    let r = crate::rt::block_on(read_request(
        &mut w,
        &mut InBuf::new(&limits()),
        &limits(),
        soon,
        Duration::from_millis(30),
        Duration::from_secs(1),
    ))
    .unwrap();
    assert!(matches!(r, Err(ReadError::Timeout)), "{r:?}");
    assert_eq!(status(read(input)), "Closed");
    assert_eq!(status(read(b"GET / HTTP/1.1\r\nHost: x\r\n")), "Closed");
}

#[test]
fn the_buffer_gives_memory_back() {
    let mut input = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    input.extend(vec![b'a'; 60 * 1024]);
    input.extend_from_slice(b"\r\n\r\n");
    let mut w = MemWire::new(&input);
    let mut buf = InBuf::new(&limits());
    read_with(&mut w, &mut buf, &limits()).unwrap();
    assert!(buf.allocated() <= buf.cap());
    buf.shrink();
    assert!(buf.allocated() <= 2 * READ_CHUNK);
}

#[test]
fn a_head_refused_as_too_big_names_its_request_line_when_it_is_whole() {
    let named = |input: &[u8]| match read(input) {
        Err(ReadError::Reject(r)) => {
            assert_eq!(r.error.status(), 431);
            (r.method.clone(), r.path.clone())
        }
        other => panic!("{other:?}"),
    };
    let mut many = b"POST /v1/messages?beta=true HTTP/1.1\r\n".to_vec();
    for i in 0..101 {
        many.extend(format!("X-H{i}: v\r\n").bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(
        named(&many),
        (Some("POST".into()), Some("/v1/messages".into()))
    );
    let mut big = b"GET /v1/models HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(vec![b'a'; 70 * 1024]);
    assert_eq!(named(&big), (Some("GET".into()), Some("/v1/models".into())));
    // A request line that never ends, or is not one, names nothing.
    let mut endless = b"GET /".to_vec();
    endless.extend(vec![b'a'; 70 * 1024]);
    assert_eq!(named(&endless), (None, None));
    for odd in [
        &b"get /x HTTP/1.1\r\n"[..],
        b"GET x HTTP/1.1\r\n",
        b"GET /x HTTP/1.1 more\r\n",
    ] {
        match refused_head(odd, Error::HeadTooLarge { limit: 1 }) {
            ReadError::Reject(r) => assert_eq!((r.method, r.path), (None, None)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_compressed_body_is_refused_with_its_reason_before_it_is_read() {
    let gz = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00";
    match read(gz) {
        Err(ReadError::Reject(r)) => {
            assert_eq!(r.error.status(), 400);
            assert!(
                r.error
                    .to_string()
                    .contains("Content-Encoding 'gzip' is not supported"),
                "{}",
                r.error
            );
            assert_eq!(r.path.as_deref(), Some("/v1/chat/completions"));
        }
        other => panic!("{:?}", other.map(|(h, _)| h.path)),
    }
    // No body, or the identity coding: nothing to refuse.
    let none = b"GET /v1/models HTTP/1.1\r\nContent-Encoding: gzip\r\n\r\n";
    assert!(read(none).is_ok());
    let identity = b"POST /x HTTP/1.1\r\nContent-Encoding: Identity\r\nContent-Length: 2\r\n\r\n{}";
    assert_eq!(read(identity).map(|(_, b)| b).ok(), Some(b"{}".to_vec()));
}
