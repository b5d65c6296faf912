//! The HTTP layer under one careless or hostile client: refused peers, many connections
//! from one address, large bodies at once, and a client that stops reading. Each test
//! starts the real server (the HTTP layer with the test application of `tests/http.rs`, or
//! the whole gateway) on port 0. Also a client that leaves while its request waits in the
//! queue.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sigorest::http::AllowList;

use crate::http::tls::{tls_client, tls_configs};
use crate::http::{Client, Harness, loopback_allow, threads_named, wait_for};
use crate::support::gateway::{Gateway, Options, TempDir};
use crate::support::process::Server;
use crate::support::upstream::{FakeUpstream, Reply};

fn listener(allow: &str) -> sigorest::http::ListenerConfig {
    sigorest::http::ListenerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        allow: AllowList::parse(allow).unwrap(),
        tls: None,
    }
}

fn second_addr(h: &Harness) -> SocketAddr {
    h.server.as_ref().unwrap().local_addrs()[1]
}

#[test]
fn refused_peers_take_no_slots_and_cannot_lock_out_allowed_ones() {
    let (server_tls, _) = tls_configs(rustls::DEFAULT_VERSIONS);
    let h = Harness::start(|c| {
        // Listener 0: HTTPS that refuses 127.0.0.1; listener 1: plain HTTP that allows it.
        c.listeners[0].allow = AllowList::parse("10.0.0.0/8").unwrap();
        c.listeners[0].tls = Some(server_tls);
        c.listeners.push(listener("127.0.0.0/8"));
        c.limits.connections = 8;
        // Long enough that a refused peer stalling its handshake would hold a slot for the
        // whole test, as it did before.
        c.timeouts.head = Duration::from_secs(10);
        c.timeouts.linger = Duration::from_secs(5);
    });
    // Twenty peers that may not use the port open connections and send nothing.
    let refused: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(h.addr).unwrap())
        .collect();
    // Once the accept thread has taken them all in, none of them holds a slot.
    let mut c = Client::connect(second_addr(&h));
    assert_eq!(c.get("/echo").status, 200);
    drop(c);
    assert!(
        wait_for(Duration::from_secs(2), || crate::http::open_connections(&h)
            == 0),
        "refused peers hold no connection slot"
    );
    let prefix = format!("{}r", h.server.as_ref().unwrap().thread_prefix());
    let refusing = threads_named(&prefix);
    assert!(refusing <= 4, "{refusing} threads answer refused peers");
    // Eight allowed clients at once still get in.
    let mut allowed: Vec<Client<TcpStream>> =
        (0..8).map(|_| Client::connect(second_addr(&h))).collect();
    for c in &mut allowed {
        assert_eq!(c.get("/echo").status, 200);
    }
    drop(refused);
}

#[test]
fn a_refused_https_peer_still_reads_its_403_within_the_refusal_time() {
    let (server_tls, client_tls) = tls_configs(rustls::DEFAULT_VERSIONS);
    let h = Harness::start(|c| {
        c.listeners[0].allow = AllowList::parse("10.0.0.0/8").unwrap();
        c.listeners[0].tls = Some(server_tls);
        c.timeouts.head = Duration::from_secs(10);
    });
    let started = Instant::now();
    let mut c = tls_client(h.addr, &client_tls);
    let r = c.get("/echo");
    assert_eq!((r.status, r.error_code().as_str()), (403, "ip_not_allowed"));
    // A peer that never finishes its handshake is let go within 2 s, not the 10 s head time.
    let mut stalled = TcpStream::connect(h.addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let from = Instant::now();
    let _ = stalled.read(&mut [0u8; 64]);
    assert!(
        from.elapsed() < Duration::from_secs(5),
        "{:?}",
        from.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn one_address_may_hold_only_so_many_connections() {
    let h = Harness::start(|c| c.limits.per_ip = 4);
    let mut held: Vec<Client<TcpStream>> = (0..4).map(|_| h.client()).collect();
    for c in &mut held {
        assert_eq!(c.get("/echo").status, 200);
    }
    // The fifth from the same address is closed at once, unanswered.
    let mut fifth = h.client();
    let _ = fifth.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(fifth.closed());
    // The four go on; when one leaves, a new one gets in.
    assert_eq!(held[0].get("/echo").status, 200);
    held.pop();
    assert!(wait_for(Duration::from_secs(3), || {
        crate::http::open_connections(&h) == 3
    }));
    assert_eq!(h.client().get("/echo").status, 200);
}

#[test]
fn the_gateway_caps_connections_per_address_by_default() {
    let gw = Gateway::start(Options::default().configure(|c| c.max_conns_per_ip = 3));
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(gw.http).unwrap();
            s.write_all(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            assert!(s.read(&mut buf).unwrap() > 0);
            s
        })
        .collect();
    let mut over = Client::connect(gw.http);
    let _ = over.send(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(over.closed());
    held.clear();
    // The closed connections' slots come back once the gateway has seen them go; until
    // then a new connection may still be turned away.
    assert!(wait_for(Duration::from_secs(3), || {
        let mut c = Client::connect(gw.http);
        c.send(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
            .is_ok()
            && c.response().is_ok_and(|r| r.status == 200)
    }));
    assert_eq!(sigorest::config::Config::default().max_conns_per_ip, 64);
}

#[test]
fn request_bodies_in_flight_share_one_budget() {
    let h = Harness::start(|c| c.limits.body_total = 1 << 20);
    // One client declares 800 KiB: its share is taken at once (it has its "100 Continue"
    // once it is), and it takes its time to send the body.
    let mut slow = h.client();
    slow.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 819200\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    assert_eq!(slow.response().unwrap().status, 100);
    // Another body that does not fit next to it: 503 overloaded with Retry-After, before
    // a byte of it is sent.
    let mut c = h.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let r = c.response().unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (503, "overloaded"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        h.stats()
            .overloaded_total
            .load(std::sync::atomic::Ordering::Acquire),
        1,
        "counted as overloaded"
    );
    // A small one still fits.
    let mut small = h.client();
    small
        .send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    assert_eq!(small.response().unwrap().body, b"hello");
    // Once the slow body is in (and answered), its share is back.
    slow.send(&vec![b'x'; 819_200]).unwrap();
    assert_eq!(slow.response().unwrap().body.len(), 819_200);
    let mut again = h.client();
    again
        .send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n\r\n")
        .unwrap();
    again.send(&vec![b'y'; 500_000]).unwrap();
    assert_eq!(again.response().unwrap().status, 200);
}

#[test]
fn the_gateway_body_budget_is_a_flag_and_caps_a_single_body() {
    let gw = Gateway::start(Options::default().configure(|c| c.max_body_total = 1 << 20));
    let big = vec![b' '; 2 << 20];
    gw.post("/v1/chat/completions", &big)
        .assert_error(413, "body_too_large");
    assert_eq!(
        sigorest::config::Config::default().max_body_total,
        256 << 20
    );
}

/// A client that asks and then reads nothing.
fn deaf_request(addr: SocketAddr, path: &str) -> TcpStream {
    // (Its answers are far larger than the socket buffers on both sides.)
    let s = TcpStream::connect(addr).unwrap();
    let mut w = &s;
    w.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    s
}

/// Once the deaf client's request had its time to take the one worker (and get it stuck,
/// as it did before), the next request is still answered at once.
fn assert_the_worker_is_free(h: &Harness) {
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(h.client().get("/echo").status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the next request waited {:?} for the worker",
        started.elapsed()
    );
}

#[test]
fn a_client_that_does_not_read_a_large_answer_does_not_hold_the_worker() {
    let h = Harness::start(|c| {
        c.workers = 1;
        c.timeouts.write = Duration::from_secs(20);
    });
    let deaf = deaf_request(h.addr, "/big?bytes=50331648");
    assert_the_worker_is_free(&h);
    // The slow reader still gets all of it when it reads at last (its connection thread
    // wrote the rest).
    let mut c = Client::new(deaf);
    let r = c.response().unwrap();
    assert_eq!(r.body.len(), 48 << 20);
}

#[test]
fn a_client_that_does_not_read_a_stream_holds_the_worker_only_for_the_stall_time() {
    let h = Harness::start(|c| {
        c.workers = 1;
        c.timeouts.write = Duration::from_secs(20);
        c.timeouts.stall = Duration::from_secs(1);
    });
    let _deaf = deaf_request(h.addr, "/firehose?n=1000&size=65536");
    assert_the_worker_is_free(&h);
    assert_eq!(
        h.event(Duration::from_secs(5)).as_deref(),
        Some("firehose: false"),
        "the stream was ended"
    );
    let _ = loopback_allow();
}

/// A chat request sent on a raw connection, which is returned (drop it to leave).
fn chat_and_keep(addr: SocketAddr) -> TcpStream {
    let body = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;
    crate::support::gateway::post_and_keep(addr, "/v1/chat/completions", body, &[])
}

/// Waits until `/api/health` shows this many requests in the queue.
fn wait_queue_depth(server: &Server, depth: u64) {
    let held = wait_for(Duration::from_secs(10), || {
        server.get("/api/health").json()["queue"]["depth"] == depth
    });
    let health = server.get("/api/health").json();
    assert!(held, "queue depth never {depth}: {}", health["queue"]);
}

#[test]
fn a_queued_request_whose_client_leaves_gives_up_its_place_in_the_line_at_once() {
    let fake = FakeUpstream::start();
    // A holds the one place until its client leaves; C is answered.
    fake.push(Reply::hang());
    fake.push(Reply::chat("for C"));
    let env = [
        ("MAMMOUTH_API_KEY", "sk-provider".to_string()),
        ("MAMMOUTH_BASE_URL", fake.base_url()),
        ("OLLAMA_HOST", "127.0.0.1:9".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(
        TempDir::new("queue-gone"),
        &["-workers", "1", "-queue", "1"],
        &env,
    );
    let a = chat_and_keep(server.addr);
    fake.wait_for_requests_to("/v1/chat/completions", 1, Duration::from_secs(10));
    // B waits in the line, then its client leaves.
    let b = chat_and_keep(server.addr);
    wait_queue_depth(&server, 1);
    drop(b);
    // Out of the line at once (before: when A's call ended), with no call made.
    let line = server.wait_for_line("status=499", Duration::from_secs(10));
    assert!(
        line.contains("attempts=0") && line.contains("error=client_gone"),
        "{line}"
    );
    wait_queue_depth(&server, 0);
    // C takes the place in the line B left (before: 503 overloaded at once).
    let url = server.url("/v1/chat/completions");
    let c = std::thread::spawn(move || {
        let body = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;
        crate::support::gateway::request(&url, "POST", Some(body), &[])
    });
    wait_queue_depth(&server, 1);
    drop(a);
    let c = c.join().unwrap();
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(
        fake.requests_to("/v1/chat/completions").len(),
        2,
        "A and C were called, B never"
    );
    let metrics = server.get("/metrics").text();
    let gone = "sigorest_requests_total{route=\"chat\",model=\"\",provider=\"\",status=\"499\",key=\"\"} 1";
    assert!(metrics.contains(gone), "{metrics}");
}
