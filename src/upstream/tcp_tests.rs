use super::*;
use std::net::TcpListener;

/// A connected transport and the peer's end of it.
fn pair() -> (Tcp, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (peer, _) = listener.accept().expect("accept");
    (Tcp::new(client, LazyBuffers::new(4096, 32 * 1024)), peer)
}

fn within(ms: u64) -> NextTimeout {
    NextTimeout {
        after: ureq::unversioned::transport::time::Duration::Exact(Duration::from_millis(ms)),
        reason: Timeout::RecvResponse,
        per_read: None,
        per_write: None,
    }
}

/// Puts `bytes` into the transport's output buffer and hands them over.
fn transmit(tcp: &mut Tcp, bytes: &[u8]) -> Result<(), ureq::Error> {
    tcp.buffers().output()[..bytes.len()].copy_from_slice(bytes);
    tcp.transmit_output(bytes.len(), within(2000))
}

/// What the peer can read now, without waiting.
fn waiting(peer: &mut TcpStream) -> Vec<u8> {
    peer.set_nonblocking(true).expect("nonblocking");
    let mut got = vec![0u8; 64 * 1024];
    let n = match peer.read(&mut got) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("read: {e}"),
    };
    peer.set_nonblocking(false).expect("blocking");
    got.truncate(n);
    got
}

/// Waits until the peer's bytes have come in (loopback: at once, but not synchronously).
fn settle() {
    std::thread::sleep(Duration::from_millis(30));
}

#[test]
fn the_head_waits_for_the_body_and_both_go_before_the_answer_is_awaited() {
    let (mut tcp, mut peer) = pair();
    transmit(&mut tcp, b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n").expect("head");
    transmit(&mut tcp, b"{}").expect("body");
    settle();
    assert_eq!(
        waiting(&mut peer),
        b"",
        "nothing is written before the answer is awaited"
    );
    peer.write_all(b"HTTP/1.1 200 OK\r\n").expect("answer");
    assert!(tcp.await_input(within(2000)).expect("read"));
    assert_eq!(tcp.buffers().input(), b"HTTP/1.1 200 OK\r\n");
    settle();
    assert_eq!(
        waiting(&mut peer),
        b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
        "head and body in one piece"
    );
}

#[test]
fn a_large_piece_is_written_at_once_after_what_is_held() {
    let (mut tcp, mut peer) = pair();
    transmit(&mut tcp, b"HEAD").expect("head");
    let big = vec![b'x'; HOLD + 1];
    transmit(&mut tcp, &big).expect("body");
    let mut got = vec![0u8; 4 + big.len()];
    peer.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    peer.read_exact(&mut got)
        .expect("all of it, without an await");
    assert_eq!(&got[..4], b"HEAD");
    assert!(got[4..].iter().all(|&b| b == b'x'));
}

#[test]
fn a_silent_upstream_times_out_with_the_reason_given() {
    let (mut tcp, mut peer) = pair();
    transmit(&mut tcp, b"GET / HTTP/1.1\r\n\r\n").expect("request");
    let started = Instant::now();
    match tcp.await_input(within(80)) {
        Err(ureq::Error::Timeout(Timeout::RecvResponse)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(80), "not early: {took:?}");
    assert!(took < Duration::from_millis(1500), "not late: {took:?}");
    assert_eq!(
        waiting(&mut peer),
        b"GET / HTTP/1.1\r\n\r\n",
        "the request went out"
    );
}

#[test]
fn a_pooled_connection_is_open_until_the_peer_closes_or_sends_unasked() {
    let (mut tcp, peer) = pair();
    assert!(tcp.is_open(), "idle and open");
    drop(peer);
    settle();
    assert!(!tcp.is_open(), "closed by the peer");

    let (mut tcp, mut peer) = pair();
    peer.write_all(b"stray").expect("write");
    settle();
    assert!(!tcp.is_open(), "bytes nobody asked for");
    assert!(!tcp.is_open(), "the probe only peeks: still out of step");
}

#[test]
fn the_check_right_after_use_is_not_a_probe_but_the_next_one_is() {
    let (mut tcp, mut peer) = pair();
    transmit(&mut tcp, b"GET / HTTP/1.1\r\n\r\n").expect("request");
    peer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .expect("answer");
    assert!(tcp.await_input(within(2000)).expect("read"));
    drop(peer);
    settle();
    assert!(tcp.is_open(), "put back right after its last read");
    assert!(!tcp.is_open(), "taken out: the peer's close is seen");
}

#[test]
fn a_socket_timeout_stays_while_it_fits() {
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    assert!(fits(None, None));
    assert!(!fits(Some(s(1)), None), "a timeout where none is wanted");
    assert!(!fits(None, Some(s(1))), "none where one is wanted");
    assert!(fits(Some(s(600)), Some(s(600))));
    assert!(
        fits(Some(s(600)), Some(s(600) - ms(500))),
        "a few calls later"
    );
    assert!(!fits(Some(s(600)), Some(s(590))), "ten seconds later");
    assert!(
        !fits(Some(s(1) - ms(1)), Some(s(1))),
        "never shorter than wanted"
    );
    assert!(
        fits(Some(ms(11)), Some(ms(10))),
        "a millisecond late is fine"
    );
    assert!(!fits(Some(ms(20)), Some(ms(10))));
}

#[test]
fn an_address_that_refuses_gives_way_to_the_next() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let open = listener.local_addr().expect("addr");
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let stream = connect(&[closed, open], within(2000)).expect("the second address");
    assert_eq!(stream.peer_addr().expect("peer"), open);
    match connect(&[closed], within(2000)) {
        Err(ureq::Error::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
        other => panic!("expected the refusal, got {other:?}"),
    }
}
