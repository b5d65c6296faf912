use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::core::Core;
use super::net::TcpStream;
use super::time::{Elapsed, sleep, timeout};
use super::*;

#[test]
fn block_on_returns_the_output_and_runs_spawned_tasks() {
    let ran = Rc::new(Cell::new(0));
    let seen = Rc::clone(&ran);
    let out = block_on(async move {
        for _ in 0..3 {
            let seen = Rc::clone(&seen);
            spawn(async move { seen.set(seen.get() + 1) });
        }
        sleep(Duration::from_millis(5)).await;
        seen.get()
    })
    .unwrap();
    assert_eq!(out, 3);
    assert_eq!(ran.get(), 3);
}

#[test]
fn block_on_can_borrow_and_runs_again_on_the_same_thread() {
    let text = String::from("borrowed");
    let n = block_on(async { text.len() }).unwrap();
    assert_eq!(n, 8);
    let m = block_on(async { n * 2 }).unwrap();
    assert_eq!(m, 16);
}

#[test]
fn timers_fire_in_order_and_a_dropped_one_leaves_nothing() {
    block_on(async {
        let order = Rc::new(std::cell::RefCell::new(Vec::new()));
        for (i, ms) in [(1, 30u64), (2, 10), (3, 20)] {
            let order = Rc::clone(&order);
            spawn(async move {
                sleep(Duration::from_millis(ms)).await;
                order.borrow_mut().push(i);
            });
        }
        sleep(Duration::from_millis(60)).await;
        assert_eq!(*order.borrow(), [2, 3, 1]);
        let started = Instant::now();
        let r = timeout(Duration::from_millis(20), sleep(Duration::from_secs(60))).await;
        assert_eq!(r, Err(Elapsed));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(started.elapsed() < Duration::from_secs(1));
        let core = Core::current().unwrap();
        assert_eq!(core.timer_count(), 0, "the long sleep's timer went with it");
        assert_eq!(
            timeout(Duration::from_secs(5), async { 7 }).await,
            Ok(7),
            "a future done at once"
        );
    })
    .unwrap();
}

#[test]
fn a_task_that_panics_ends_alone() {
    block_on(async {
        spawn(async { panic!("on purpose") });
        let alive = Rc::new(Cell::new(false));
        let a = Rc::clone(&alive);
        spawn(async move {
            sleep(Duration::from_millis(5)).await;
            a.set(true);
        });
        // (Printing the panic may take longer than the sleep: wait for the flag.)
        let deadline = Instant::now() + Duration::from_secs(5);
        while !alive.get() && Instant::now() < deadline {
            sleep(Duration::from_millis(5)).await;
        }
        assert!(alive.get());
        assert_eq!(Core::current().unwrap().task_count(), 0);
    })
    .unwrap();
}

#[test]
fn sockets_echo_between_tasks_and_free_their_registrations() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        // A large answer: the client reads it in many pieces.
        s.write_all(&vec![7u8; 1 << 20]).unwrap();
    });
    block_on(async {
        let core = Core::current().unwrap();
        let before = core.io_count();
        let s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < 5 + (1 << 20) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..5], b"hello");
        assert_eq!(s.read(&mut buf).await.unwrap(), 0, "then the end");
        drop(s);
        assert_eq!(core.io_count(), before);
    })
    .unwrap();
    server.join().unwrap();
}

#[test]
fn a_refused_connection_is_an_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = block_on(TcpStream::connect(([127, 0, 0, 1], port).into())).unwrap();
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn loop_threads_take_work_from_other_threads_and_stop() {
    let mut rt = Runtime::start(2, "rt-test-").unwrap();
    let (tx, rx) = mpsc::channel();
    for (i, l) in rt.loops().iter().enumerate() {
        let tx = tx.clone();
        l.send(Box::new(move || {
            spawn(async move {
                sleep(Duration::from_millis(10)).await;
                let name = std::thread::current().name().unwrap_or("").to_string();
                let _ = tx.send((i, name));
            });
        }));
    }
    let mut got: Vec<_> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [(0, "rt-test-0".to_string()), (1, "rt-test-1".to_string())]
    );
    rt.stop();
}

#[test]
fn a_task_waits_for_blocking_work_and_is_woken_from_its_thread() {
    let pool = blocking::Pool::new("rt-test-b", 2, 0, Duration::from_millis(50));
    let started = Instant::now();
    let (a, b) = block_on(async {
        let a = pool.run(|| {
            std::thread::sleep(Duration::from_millis(30));
            1
        });
        let b = pool.run(|| {
            std::thread::sleep(Duration::from_millis(30));
            2
        });
        (a.await, b.await)
    })
    .unwrap();
    assert_eq!((a, b), (Some(1), Some(2)));
    assert!(
        started.elapsed() < Duration::from_millis(55),
        "the two ran side by side"
    );
    let panicked = block_on(pool.run(|| -> u8 { panic!("on purpose") })).unwrap();
    assert_eq!(panicked, None);
    // Idle threads beyond `keep` end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.threads() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.threads(), 0);
    for h in pool.stop() {
        h.join().unwrap();
    }
}

#[test]
fn block_on_refuses_to_run_inside_a_loop() {
    let mut rt = Runtime::start(1, "rt-test-n").unwrap();
    let (tx, rx) = mpsc::channel();
    rt.loops()[0].send(Box::new(move || {
        let _ = tx.send(block_on(async { 1 }).is_err());
    }));
    assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    rt.stop();
}

#[test]
fn the_end_that_came_with_the_last_bytes_is_seen_without_another_event() {
    for _ in 0..20 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Data and FIN together, before the client reads.
            s.write_all(b"abc").unwrap();
        });
        let got = block_on(async {
            let s = TcpStream::connect(addr).await.unwrap();
            server.join().unwrap();
            sleep(Duration::from_millis(2)).await;
            let mut buf = [0u8; 1024];
            let first = s.read(&mut buf).await.unwrap();
            let end = timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            (first, end.map(Result::unwrap))
        })
        .unwrap();
        assert_eq!(got, (3, Ok(0)));
    }
}
