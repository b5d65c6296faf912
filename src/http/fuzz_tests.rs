//! Property tests of the request reader: thousands of random and mutated requests, read from
//! memory in random slices. Whatever the bytes, the reader must not panic, must end (every
//! call consumes input or fails), and must keep its buffer and bodies within the limits.
//! Well-formed chunked bodies, cut anywhere, must decode to what was encoded.

use std::time::{Duration, Instant};

use super::Limits;
use super::parse::{InBuf, ReadError, read_request};
use super::testwire::MemWire;
use crate::rt::block_on;

/// xorshift64*: small, seeded, good enough to spread cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn limits() -> Limits {
    Limits {
        head_bytes: 1024,
        header_lines: 16,
        body_bytes: 512,
        connections: 1,
        ..Limits::default()
    }
}

const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /v1/models?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"a\":\"bcd\"}",
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;e=1\r\npedia\r\n0\r\nT: 1\r\n\r\n",
    b"PUT /api/memory HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"HEAD / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
];

const INSERTS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b":",
    b" ",
    b"\0",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Length: 1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"fffffffffffffffff\r\n",
    b"200\r\n",
    b"0\r\n\r\n",
    b";",
    b"\xff\xfe",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            1 => {
                let piece = rng.pick(INSERTS).to_vec();
                input.splice(at..at, piece);
            }
            2 if at < input.len() => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            3 if at < input.len() => {
                let end = (at + 1 + rng.below(64)).min(input.len());
                let copy = input[at..end].to_vec();
                let times = 1 + rng.below(40);
                for _ in 0..times {
                    input.splice(at..at, copy.iter().copied());
                }
            }
            4 => input.truncate(at),
            _ => {
                let n = 1 + rng.below(8);
                let noise = rng.bytes(n);
                input.splice(at..at, noise);
            }
        }
    }
}

/// Reads requests until the input is exhausted or refused, checking the invariants.
fn drain(input: &[u8], step: usize) -> usize {
    let limits = limits();
    let mut w = MemWire::new(input).step(step);
    let mut buf = InBuf::new(&limits);
    let mut requests = 0;
    loop {
        let before = w.consumed() + buf.len();
        let far = Instant::now() + Duration::from_secs(10);
        let r = block_on(read_request(
            &mut w,
            &mut buf,
            &limits,
            far,
            Duration::from_secs(10),
            Duration::from_secs(1),
        ))
        .expect("an event loop");
        assert!(buf.len() <= buf.cap(), "buffer over its cap");
        match r {
            Ok((head, body)) => {
                assert!(body.len() <= limits.body_bytes);
                assert!(!head.method.is_empty());
                requests += 1;
                // Progress: a request always takes bytes (the buffer shrank or more was read).
                assert!(w.consumed() + buf.len() > before || buf.len() < before);
            }
            Err(ReadError::Reject(r)) => {
                assert!([400, 413, 431].contains(&r.error.status()), "{:?}", r.error);
                return requests;
            }
            Err(ReadError::Closed) => return requests,
            Err(e) => panic!("unexpected {e:?} on in-memory input"),
        }
        assert!(requests <= input.len(), "no progress");
    }
}

fn step(rng: &mut Rng) -> usize {
    *rng.pick(&[1, 2, 3, 7, 64, 4096])
}

#[test]
fn random_bytes_never_panic_hang_or_bloat() {
    let started = Instant::now();
    let mut rng = Rng(0x5EED_0001);
    for _ in 0..3000 {
        let n = rng.below(2000);
        let mut input = rng.bytes(n);
        // Half of them start like a request, to get past the request line now and then.
        if rng.below(2) == 0 {
            let mut prefix = b"POST / HTTP/1.1\r\n".to_vec();
            prefix.append(&mut input);
            input = prefix;
        }
        drain(&input, step(&mut rng));
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn mutated_requests_never_panic_hang_or_bloat() {
    let started = Instant::now();
    let mut rng = Rng(0x5EED_0002);
    let mut served = 0;
    for _ in 0..6000 {
        let mut input = rng.pick(SEEDS).to_vec();
        if rng.below(3) == 0 {
            let more = rng.pick(SEEDS).to_vec();
            input.extend_from_slice(&more);
        }
        mutate(&mut rng, &mut input);
        served += drain(&input, step(&mut rng));
    }
    // Mutations leave many requests intact; if none came through, the test tests nothing.
    assert!(served > 1000, "only {served} requests parsed");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn chunked_bodies_round_trip_however_they_are_cut() {
    let mut rng = Rng(0x5EED_0003);
    let limits = limits();
    for _ in 0..2000 {
        let n = rng.below(limits.body_bytes + 1);
        let body = rng.bytes(n);
        let mut input = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut rest = body.as_slice();
        while !rest.is_empty() {
            let n = (1 + rng.below(100)).min(rest.len());
            let zeros = "0".repeat(rng.below(3));
            let ext = if rng.below(3) == 0 { ";k=v" } else { "" };
            input.extend(format!("{zeros}{n:x}{ext}\r\n").bytes());
            input.extend_from_slice(&rest[..n]);
            input.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        input.extend_from_slice(b"0\r\n");
        if rng.below(2) == 0 {
            input.extend_from_slice(b"X-Checksum: 1\r\n");
        }
        input.extend_from_slice(b"\r\nGET /after HTTP/1.1\r\n\r\n");
        let mut w = MemWire::new(&input).step(step(&mut rng));
        let mut buf = InBuf::new(&limits);
        let far = Instant::now() + Duration::from_secs(10);
        let read = |w: &mut MemWire, buf: &mut InBuf| {
            block_on(read_request(
                w,
                buf,
                &limits,
                far,
                Duration::from_secs(10),
                Duration::from_secs(1),
            ))
            .expect("an event loop")
        };
        let (_, got) = read(&mut w, &mut buf).unwrap();
        assert_eq!(got, body);
        let (after, _) = read(&mut w, &mut buf).unwrap();
        assert_eq!(after.path, "/after");
    }
}
