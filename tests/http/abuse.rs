//! What a hostile or broken client can send: huge declared bodies, bodies still being sent,
//! header bombs, garbage, bad chunking, endless bodies, refused addresses. The server answers
//! (or closes) quickly, reads no more than its limits, and stays healthy.

use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;

/// Sends `head`, then `total` bytes of `fill` in 1 MiB writes from another thread, until done
/// or the server stops reading. Returns how many bytes went out after the head.
fn pour(c: &Client<TcpStream>, head: &[u8], fill: u8, total: usize) -> JoinHandle<usize> {
    let mut s = c.tcp().try_clone().unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = head.to_vec();
    thread::spawn(move || {
        if s.write_all(&head).is_err() {
            return 0;
        }
        let piece = vec![fill; 1 << 20];
        let mut sent = 0;
        while sent < total {
            match s.write(&piece[..piece.len().min(total - sent)]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    })
}

fn assert_healthy(h: &Harness) {
    let r = h.client().get("/echo");
    assert_eq!(r.status, 200, "server still answers");
}

#[test]
fn a_huge_content_length_gets_413_at_once() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    let from = Instant::now();
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000\r\n\r\n")
        .unwrap();
    let r = c.response().unwrap();
    assert!(
        from.elapsed() < Duration::from_secs(1),
        "{:?}",
        from.elapsed()
    );
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    assert_eq!(r.header("connection"), Some("close"));
    // The server lingers for a while but does not drain: it closes within the linger time.
    let _ = c.send(&[b'x'; 65536]);
    assert!(c.closed());
    assert!(from.elapsed() < Duration::from_secs(2));
    assert_healthy(&h);
}

#[test]
fn a_40_mib_body_still_being_sent_sees_413() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    let total = 40 << 20;
    let head = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n");
    let writer = pour(&c, head.as_bytes(), b'x', total);
    let r = c.response().unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    writer.join().unwrap();
    assert_healthy(&h);
}

#[test]
fn a_chunked_body_over_the_limit_gets_413_and_an_endless_one_ends() {
    let h = Harness::start(|c| c.limits.body_bytes = 64 * 1024);
    let mut c = h.client();
    let mut chunked = Vec::new();
    for _ in 0..2000 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'y'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    let head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut s = c.tcp().try_clone().unwrap();
    let writer = thread::spawn(move || {
        let _ = s.write_all(head);
        // Never sends the last chunk.
        while s.write_all(&chunked).is_ok() {}
    });
    let r = c.response().unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    writer.join().unwrap();
    // A chunked body that stops arriving is closed at the body deadline, silently.
    let h = Harness::start(|c| c.timeouts.body = Duration::from_millis(300));
    let mut c = h.client();
    c.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        .unwrap();
    let from = Instant::now();
    let mut rest = Vec::new();
    let _ = c.r.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(from.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_100_mib_header_line_gets_431_quickly_and_is_not_drained() {
    let h = Harness::start(|_| {});
    let mut c = h.client();
    let total = 100 << 20;
    let from = Instant::now();
    let writer = pour(
        &c,
        b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Bomb: ",
        b'a',
        total,
    );
    let r = c.response().unwrap();
    assert!(
        from.elapsed() < Duration::from_secs(2),
        "{:?}",
        from.elapsed()
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (431, "header_too_large")
    );
    let sent = writer.join().unwrap();
    assert!(sent < total, "the server read all {sent} bytes");
    assert_healthy(&h);
}

#[test]
fn too_many_headers_or_a_huge_request_line_get_431() {
    let h = Harness::start(|_| {});
    // A GET with `n` small header lines.
    let head_with = |n: usize| {
        let mut head = b"GET /echo HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            head.extend(format!("X-H{i}: v\r\n").bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    };
    let many = head_with(1000);
    let mut long = b"GET /".to_vec();
    long.extend(vec![b'a'; 1 << 20]);
    long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    for input in [many, long] {
        let mut c = h.client();
        let writer = pour(&c, &input, b'\n', 0);
        let r = c.response().unwrap();
        assert_eq!(r.status, 431);
        writer.join().unwrap();
    }
    // 101 lines in a small head: the answer names the count, not the size.
    let mut c = h.client();
    c.send(&head_with(101)).unwrap();
    let r = c.response().unwrap();
    assert_eq!(r.status, 431);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        text.contains("too many header lines: the limit is 100"),
        "{text}"
    );
    // 100 header lines are fine.
    let mut c = h.client();
    c.send(&head_with(100)).unwrap();
    assert_eq!(c.response().unwrap().status, 200);
}

#[test]
fn garbage_and_bad_chunking_get_400() {
    let h = Harness::start(|_| {});
    let mut seed: u32 = 12345;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        })
        .chain(*b"\r\n\r\n")
        .collect();
    let bad_chunks: [&[u8]; 4] = [
        b"zz\r\nab\r\n0\r\n\r\n",
        b"ffffffffffffffffff\r\n",
        b"2\r\nabc\r\n0\r\n\r\n",
        b"-2\r\nab\r\n0\r\n\r\n",
    ];
    let mut inputs = vec![
        garbage,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(),
    ];
    for body in bad_chunks {
        let mut input = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        input.extend_from_slice(body);
        inputs.push(input);
    }
    for input in inputs {
        let mut c = h.client();
        c.send(&input).unwrap();
        let r = c.response().unwrap();
        assert_eq!(
            r.status,
            400,
            "{:?}",
            String::from_utf8_lossy(&input[..input.len().min(60)])
        );
        assert!(c.closed());
    }
    assert_healthy(&h);
}

#[test]
fn a_refused_address_gets_403_json() {
    let h = Harness::start(|c| c.listeners[0].allow = AllowList::parse("10.0.0.0/8").unwrap());
    let mut c = h.client();
    c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = c.response().unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "ip_not_allowed");
    assert_eq!(r.json()["error"]["type"], "permission_error");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(c.closed());
}
