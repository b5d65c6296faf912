//! The server's moving parts: the queue, the connection cap, bursts, hang-ups, dual-stack
//! listening, shutdown and its threads.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::*;

fn send_get(c: &mut Client<TcpStream>, path: &str) {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
}

#[test]
fn a_full_queue_gets_503_overloaded_at_once() {
    let h = Harness::start(|c| {
        c.workers = 1;
        c.queue = 1;
        c.timeouts.idle = Duration::from_secs(5);
    });
    let stats = h.stats();
    let mut busy = h.client();
    send_get(&mut busy, "/slow?ms=1000");
    assert!(wait_for(Duration::from_secs(2), || stats
        .workers_busy
        .load(Ordering::Acquire)
        == 1));
    let mut queued = h.client();
    send_get(&mut queued, "/slow?ms=10");
    assert!(wait_for(Duration::from_secs(2), || stats
        .queue_depth
        .load(Ordering::Acquire)
        == 1));
    let mut refused = h.client();
    let from = Instant::now();
    let r = refused.get("/echo");
    assert!(
        from.elapsed() < Duration::from_millis(500),
        "{:?}",
        from.elapsed()
    );
    assert_eq!((r.status, r.error_code().as_str()), (503, "overloaded"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // The others are answered in turn, and the refused connection is still usable.
    assert_eq!(busy.response().unwrap().status, 200);
    assert_eq!(queued.response().unwrap().status, 200);
    assert_eq!(refused.get("/echo").status, 200);
    assert_eq!(stats.workers_total.load(Ordering::Acquire), 1);
    assert_eq!(stats.queue_capacity.load(Ordering::Acquire), 1);
}

#[test]
fn a_request_that_waited_too_long_for_a_worker_gets_503() {
    let h = Harness::start(|c| {
        c.workers = 1;
        c.timeouts.queue_wait = Duration::from_millis(200);
    });
    let mut busy = h.client();
    send_get(&mut busy, "/slow?ms=600");
    assert!(wait_for(Duration::from_secs(2), || h
        .stats()
        .workers_busy
        .load(Ordering::Acquire)
        == 1));
    let r = h.client().get("/echo");
    assert_eq!((r.status, r.error_code().as_str()), (503, "overloaded"));
    assert_eq!(busy.response().unwrap().status, 200);
}

#[test]
fn the_wait_for_a_worker_is_bounded_while_every_worker_is_busy_for_long() {
    let h = Harness::start(|c| {
        c.workers = 1;
        c.timeouts.queue_wait = Duration::from_millis(200);
    });
    let stats = h.stats();
    let mut busy = h.client();
    send_get(&mut busy, "/slow?ms=3500");
    assert!(wait_for(Duration::from_secs(2), || stats
        .workers_busy
        .load(Ordering::Acquire)
        == 1));
    // Two requests queued behind the one worker, which stays busy for 3.5 s: each gets its
    // 503 soon after the 200 ms it may wait, not when the worker is free again.
    let from = Instant::now();
    let mut first = h.client();
    send_get(&mut first, "/echo");
    let mut second = h.client();
    send_get(&mut second, "/echo");
    for c in [&mut first, &mut second] {
        let r = c.response().unwrap();
        assert_eq!((r.status, r.error_code().as_str()), (503, "overloaded"));
    }
    assert!(
        from.elapsed() < Duration::from_millis(2500),
        "{:?}",
        from.elapsed()
    );
    assert_eq!(stats.overloaded_total.load(Ordering::Acquire), 2);
    assert_eq!(stats.queue_depth.load(Ordering::Acquire), 0);
    // The worker's own request is unharmed, and the server answers as before.
    assert_eq!(busy.response().unwrap().status, 200);
    assert_eq!(h.client().get("/echo").status, 200);
}

#[test]
fn a_client_leaving_fires_the_hangup() {
    let h = Harness::start(|_| {});
    // While the handler works.
    let mut c = h.client();
    send_get(&mut c, "/hold");
    thread::sleep(Duration::from_millis(100));
    drop(c);
    assert_eq!(
        h.event(Duration::from_secs(3)).as_deref(),
        Some("hold: hangup=true")
    );
    // In the middle of a stream.
    let mut c = h.client();
    send_get(&mut c, "/hold-stream");
    let mut first = [0u8; 64];
    let n = c.r.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("200 OK"));
    drop(c);
    assert_eq!(
        h.event(Duration::from_secs(3)).as_deref(),
        Some("hold-stream: hangup=true")
    );
    // A client that stays does not fire it; a pipelined request is not a hang-up.
    let h = Harness::start(|_| {});
    let mut c = h.client();
    c.send(b"GET /hold HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(
        h.event(Duration::from_secs(7)).as_deref(),
        Some("hold: hangup=false")
    );
    assert_eq!(c.response().unwrap().status, 200);
    assert_eq!(c.response().unwrap().status, 200);
}

#[test]
fn connections_beyond_the_cap_are_closed_at_once() {
    let h = Harness::start(|c| c.limits.connections = 2);
    let mut a = h.client();
    let b = h.client();
    assert!(wait_for(Duration::from_secs(2), || open_connections(&h) == 2));
    let mut over = h.client();
    let _ = over.send(b"GET /echo HTTP/1.1\r\n\r\n");
    assert!(over.closed());
    assert_eq!(a.get("/echo").status, 200);
    drop(b);
    drop(over);
    assert!(wait_for(Duration::from_secs(3), || open_connections(&h) == 1));
    assert_eq!(h.client().get("/echo").status, 200);
}

#[test]
fn a_burst_of_100_keep_alive_connections_is_answered_three_times() {
    // All from 127.0.0.1: over the default cap per address.
    let h = Harness::start(|c| {
        c.workers = 8;
        c.limits.per_ip = 0;
    });
    let mut clients: Vec<_> = (0..100).map(|_| h.client()).collect();
    for round in 0..3 {
        for c in clients.iter_mut() {
            send_get(c, &format!("/info?round={round}"));
        }
        for c in clients.iter_mut() {
            let r = c.response().unwrap();
            assert_eq!(
                (r.status, r.json()["query"].clone()),
                (200, json!(format!("round={round}")))
            );
        }
    }
    assert_eq!(open_connections(&h), 100);
}

#[test]
fn ipv4_and_ipv6_loopback_reach_a_dual_stack_listener() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    let h = Harness::start(|c| c.listeners[0].addr = "[::]:0".parse().unwrap());
    let port = h.addr.port();
    let v4 = Client::connect(SocketAddr::from(([127, 0, 0, 1], port))).get("/info");
    assert_eq!(
        v4.json()["peer"],
        "127.0.0.1",
        "IPv4-mapped address made canonical"
    );
    let v6 = Client::connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).get("/info");
    assert_eq!(v6.json()["peer"], "::1");
}

#[test]
fn shutdown_finishes_a_stream_in_flight_and_closes_idle_connections() {
    let mut h = Harness::start(|c| c.timeouts.idle = Duration::from_secs(30));
    let mut idle = h.client();
    assert_eq!(idle.get("/echo").status, 200);
    let mut streaming = h.client();
    send_get(&mut streaming, "/stream?n=4&ms=200");
    let server = h.server.take().unwrap();
    // Shut down once the stream has begun.
    streaming.r.fill_buf().unwrap();
    let stopping = thread::spawn(move || {
        let from = Instant::now();
        (server.shutdown(Duration::from_secs(5)), from.elapsed())
    });
    let idle_from = Instant::now();
    assert!(
        idle.closed(),
        "idle keep-alive connection closed by shutdown"
    );
    assert!(idle_from.elapsed() < Duration::from_secs(1));
    let r = streaming.response().unwrap();
    assert_eq!(r.text().matches("data: piece").count(), 4);
    assert!(
        streaming.closed(),
        "closed after the stream, not kept alive"
    );
    let (finished, took) = stopping.join().unwrap();
    assert!(finished);
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(TcpStream::connect(h.addr).is_err(), "no longer listening");
}

#[test]
fn shutdown_ends_waiting_connections_at_once_but_lets_an_upload_finish() {
    let mut h = Harness::start(|c| {
        c.timeouts.idle = Duration::from_secs(30);
        c.timeouts.head = Duration::from_secs(30);
    });
    let mut idle = h.client();
    assert_eq!(idle.get("/echo").status, 200);
    let mut stalled = h.client();
    stalled.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n").unwrap();
    // The upload's head must have been read before the shutdown (a request still unread in
    // the socket buffer is not in flight yet): the 100 Continue says it has.
    let mut uploading = h.client();
    uploading
        .send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
        )
        .unwrap();
    assert_eq!(uploading.response().unwrap().status, 100);
    uploading.send(b"hello").unwrap();
    assert!(wait_for(Duration::from_secs(2), || open_connections(&h) == 3));
    let server = h.server.take().unwrap();
    let from = Instant::now();
    let stopping = thread::spawn(move || server.shutdown(Duration::from_secs(5)));
    assert!(idle.closed() && stalled.closed());
    assert!(
        from.elapsed() < Duration::from_millis(500),
        "{:?}",
        from.elapsed()
    );
    thread::sleep(Duration::from_millis(200));
    uploading.send(b"world").unwrap();
    let r = uploading.response().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "helloworld"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(stopping.join().unwrap());
    assert!(from.elapsed() < Duration::from_secs(2));
}

#[test]
fn shutdown_after_its_grace_interrupts_handlers_and_reports_it() {
    let mut h = Harness::start(|_| {});
    let mut c = h.client();
    send_get(&mut c, "/hold");
    assert!(wait_for(Duration::from_secs(2), || h
        .stats()
        .workers_busy
        .load(Ordering::Acquire)
        == 1));
    let from = Instant::now();
    assert!(
        !h.stop(Duration::from_millis(200)),
        "a request was still in flight"
    );
    assert!(from.elapsed() < Duration::from_secs(3));
    assert_eq!(
        h.event(Duration::from_secs(1)).as_deref(),
        Some("hold: hangup=true")
    );
}

#[test]
fn shutdown_and_drop_leave_no_threads() {
    for by_drop in [false, true] {
        let mut h = Harness::start(|c| c.workers = 3);
        let prefix = h.server.as_ref().unwrap().thread_prefix().to_string();
        let mut c = h.client();
        assert_eq!(c.get("/echo").status, 200);
        let _stalled = {
            let mut s = h.client();
            s.send(b"GET / HTTP/1.1\r\n").unwrap();
            s
        };
        // 3 workers, 1 accept thread and the event loops (connections take no thread).
        let loops = h.server.as_ref().unwrap().loops();
        assert!(loops >= 1);
        assert!(wait_for(Duration::from_secs(2), || threads_named(&prefix)
            == 3 + 1 + loops));
        if by_drop {
            drop(h.server.take());
        } else {
            assert!(h.stop(Duration::from_secs(2)));
        }
        assert!(
            wait_for(Duration::from_secs(1), || threads_named(&prefix) == 0),
            "{} threads left",
            threads_named(&prefix)
        );
        assert!(c.closed());
    }
}

#[test]
fn many_servers_start_and_stop() {
    for _ in 0..20 {
        let mut h = Harness::start(|c| c.workers = 2);
        assert_eq!(h.client().get("/echo").status, 200);
        assert!(h.stop(Duration::from_secs(1)));
    }
}

/// Eight clients asking `/slow?ms=<ms>` at once; asserts that all eight are being answered
/// by workers within `within` (burst number `n`, for the message).
fn burst_of_eight(h: &Harness, ms: u64, within: Duration, n: u64) -> Vec<Client<TcpStream>> {
    let clients = (0..8)
        .map(|_| {
            let mut c = h.client();
            send_get(&mut c, &format!("/slow?ms={ms}"));
            c
        })
        .collect();
    let busy = || h.stats().workers_busy.load(Ordering::Acquire);
    assert!(
        wait_for(within, || busy() == 8),
        "burst {n}: only {} busy",
        busy()
    );
    clients
}

fn answered(clients: Vec<Client<TcpStream>>) {
    for mut c in clients {
        assert_eq!(c.response().unwrap().status, 200);
    }
}

#[test]
fn workers_started_for_a_burst_end_when_idle_and_start_again_for_the_next() {
    let h = Harness::start(|c| {
        c.workers = 8;
        c.timeouts.worker_idle = Duration::from_millis(300);
    });
    let stats = h.stats();
    let started = || stats.workers_started.load(Ordering::Acquire);
    assert!(
        wait_for(Duration::from_secs(2), || started() == 4),
        "{}",
        started()
    );
    for burst in 0..2 {
        // All eight at once: a worker each, the pool grown to its size again.
        let clients = burst_of_eight(&h, 500, Duration::from_secs(3), burst);
        assert_eq!(started(), 8);
        answered(clients);
        // Idle past `worker_idle`: back to the first four, which stay.
        assert!(
            wait_for(Duration::from_secs(5), || started() == 4),
            "burst {burst}: {} started",
            started()
        );
        thread::sleep(Duration::from_millis(700));
        assert_eq!(started(), 4, "the first workers stay");
        // And they still answer.
        assert_eq!(h.client().get("/echo").status, 200);
    }
}

/// Workers that end after a millisecond idle, and bursts that arrive while they are ending:
/// every request of a burst must still get a worker of its own at once (a request left
/// queued behind busy workers would keep the busy count below the burst's size).
#[test]
fn requests_arriving_while_workers_end_each_get_a_worker_at_once() {
    let h = Harness::start(|c| {
        c.workers = 8;
        c.timeouts.worker_idle = Duration::from_millis(1);
    });
    let stats = h.stats();
    for burst in 0..12 {
        // Gaps from 0 to 5 ms: the extra workers are ending, or about to, when it comes.
        thread::sleep(Duration::from_millis(burst % 6));
        // Each request takes 600 ms: all eight busy within 450 ms means none waited for
        // another to end (with room for a machine busy with other work).
        answered(burst_of_eight(&h, 600, Duration::from_millis(450), burst));
    }
    let started = stats.workers_started.load(Ordering::Acquire);
    assert!((4..=8).contains(&started), "{started} workers");
}
