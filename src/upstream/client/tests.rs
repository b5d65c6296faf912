use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream as StdTcp};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use super::*;
use crate::rt::block_on;

/// Reads one request (head and Content-Length body) off `r`; `None` at the end.
fn read_request(r: &mut BufReader<StdTcp>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// A server on 127.0.0.1 that answers every request of every connection with `answer`
/// (given the request's head), counting connections; `close_after`: requests per
/// connection before it closes it.
fn server(
    answer: impl Fn(&str, &[u8]) -> Vec<u8> + Send + Sync + 'static,
    close_after: usize,
) -> (Url, Arc<AtomicUsize>, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = Url::parse(&format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    ))
    .unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let (tx, heads) = mpsc::channel();
    let (count, answer) = (Arc::clone(&conns), Arc::new(answer));
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let (tx, answer) = (tx.clone(), Arc::clone(&answer));
            thread::spawn(move || {
                let mut w = tcp.try_clone().unwrap();
                let mut r = BufReader::new(tcp);
                for _ in 0..close_after {
                    let Some((head, body)) = read_request(&mut r) else {
                        return;
                    };
                    let _ = tx.send(head.clone());
                    let bytes = answer(&head, &body);
                    if w.write_all(&bytes).is_err() {
                        return;
                    }
                    if String::from_utf8_lossy(&bytes).contains("Connection: close") {
                        return;
                    }
                }
            });
        }
    });
    (url, conns, heads)
}

fn json_answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A head made for a test, kept for the test's length.
fn head(method: &str, url: &Url, extra: &str) -> &'static [u8] {
    let mut head = crate::upstream::target::request_head(method, url, None, method == "POST");
    head.extend_from_slice(extra.as_bytes());
    Box::leak(head.into_boxed_slice())
}

fn post<'a>(url: &'a Url, body: &'a [u8]) -> Request<'a> {
    Request {
        head: head("POST", url, ""),
        url,
        body,
        length: true,
        head_request: false,
        direct: true,
    }
}

fn get(url: &Url) -> Request<'_> {
    Request {
        head: head("GET", url, ""),
        url,
        body: b"",
        length: false,
        head_request: false,
        direct: true,
    }
}

fn client() -> Client {
    Client::with_roots(None, &Env::default())
}

#[test]
fn a_post_gets_its_answer_and_the_connection_is_reused() {
    let (url, conns, heads) = server(
        |_, body| json_answer(&String::from_utf8_lossy(body)),
        usize::MAX,
    );
    let client = client();
    block_on(async {
        for i in 0..3 {
            let body = format!("{{\"n\":{i}}}");
            let mut resp = client.send(&post(&url, body.as_bytes())).await.unwrap();
            assert_eq!(resp.head.status, 200);
            assert!(resp.head.json);
            assert_eq!(resp.body.read_all(1 << 20).await.unwrap(), body.as_bytes());
        }
        assert_eq!(pool::idle_here(), 1);
    })
    .unwrap();
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one connection for three calls"
    );
    let head = heads.recv().unwrap();
    assert!(
        head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Host: {}\r\n", url.authority())),
        "{head}"
    );
    assert!(
        head.contains("Content-Type: application/json\r\n"),
        "{head}"
    );
    assert!(head.contains("Content-Length: 7\r\n"), "{head}");
    assert!(head.contains("User-Agent: sigorest/"), "{head}");
}

#[test]
fn chunked_and_close_delimited_bodies() {
    let (url, _, _) = server(
        |head, _| {
            if head.contains("close") {
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec()
            } else {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x\r\n!\r\n0\r\n\r\n".to_vec()
            }
        },
        usize::MAX,
    );
    let client = client();
    block_on(async {
        let mut resp = client.send(&post(&url, b"{}")).await.unwrap();
        assert_eq!(resp.head.framing, Framing::Chunked);
        assert_eq!(resp.body.read_all(100).await.unwrap(), b"hello!");
        let req = Request {
            head: head("POST", &url, "X-Want: close\r\n"),
            ..post(&url, b"{}")
        };
        let mut resp = client.send(&req).await.unwrap();
        assert_eq!(resp.head.framing, Framing::UntilClose);
        assert_eq!(resp.body.read_all(100).await.unwrap(), b"until the end");
        drop(resp);
        assert_eq!(
            pool::idle_here(),
            0,
            "a close-delimited answer's connection is not kept"
        );
        let mut resp = client.send(&post(&url, b"{}")).await.unwrap();
        assert_eq!(resp.body.read_all(100).await.unwrap(), b"hello!");
        drop(resp);
        assert_eq!(pool::idle_here(), 1, "a chunked one's is");
    })
    .unwrap();
}

#[test]
fn a_pooled_connection_the_server_closed_is_replaced() {
    // One request per connection, then the server closes it: the pooled one is stale.
    let (url, conns, _) = server(|_, _| json_answer("{}"), 1);
    let client = client();
    block_on(async {
        for _ in 0..3 {
            let mut resp = client.send(&post(&url, b"{}")).await.unwrap();
            assert_eq!(resp.body.read_all(100).await.unwrap(), b"{}");
            drop(resp);
            // Let the server's close arrive.
            crate::rt::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .unwrap();
    assert_eq!(conns.load(Ordering::SeqCst), 3);
}

#[test]
fn a_body_left_unread_closes_its_connection_and_limits_hold() {
    let (url, conns, _) = server(|_, _| json_answer(&"x".repeat(5000)), usize::MAX);
    let client = client();
    block_on(async {
        let resp = client.send(&post(&url, b"{}")).await.unwrap();
        drop(resp);
        assert_eq!(pool::idle_here(), 0);
        let mut resp = client.send(&post(&url, b"{}")).await.unwrap();
        assert!(matches!(
            resp.body.read_all(100).await,
            Err(BodyError::TooLarge(100))
        ));
    })
    .unwrap();
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[test]
fn refused_garbled_and_cut_answers() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    let client = client();
    block_on(async {
        match client.send(&post(&closed, b"")).await {
            Err(Error::Connect(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("answered"),
        }
    })
    .unwrap();
    let (garbled, _, _) = server(|_, _| b"<html>nope</html>\r\n\r\n".to_vec(), 1);
    let (cut, _, _) = server(
        |_, _| b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
        1,
    );
    block_on(async {
        assert!(matches!(
            client.send(&post(&garbled, b"")).await,
            Err(Error::Protocol(_))
        ));
        let mut resp = client.send(&post(&cut, b"")).await.unwrap();
        match resp.body.read_all(100).await {
            Err(BodyError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    })
    .unwrap();
}

#[test]
fn a_host_name_is_looked_up() {
    let (url, _, _) = server(|_, _| json_answer("{}"), usize::MAX);
    let named = Url::parse(&format!("http://localhost:{}/x", url.port)).unwrap();
    let client = client();
    let status = block_on(async {
        let resp = client.send(&post(&named, b"")).await;
        match resp {
            Ok(r) => r.head.status,
            // A machine whose `localhost` is ::1 first, where the server does not listen.
            Err(Error::Connect(_)) => 200,
            Err(e) => panic!("{e}"),
        }
    })
    .unwrap();
    assert_eq!(status, 200);
}

/// A CONNECT proxy on 127.0.0.1 that tunnels to whatever it is asked, recording the
/// request lines it got.
fn connect_proxy(refuse: bool) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(tcp.try_clone().unwrap());
                let Some((head, _)) = read_request(&mut r) else {
                    return;
                };
                let _ = tx.send(head.clone());
                let mut w = tcp;
                if refuse {
                    let _ = w.write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
                    );
                    return;
                }
                let target = head.split(' ').nth(1).unwrap().to_string();
                let Ok(up) = StdTcp::connect(target) else {
                    return;
                };
                w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut up_r, mut up_w) = (up.try_clone().unwrap(), up);
                let mut down_w = w.try_clone().unwrap();
                thread::spawn(move || {
                    let _ = std::io::copy(&mut up_r, &mut down_w);
                });
                let _ = std::io::copy(&mut r, &mut up_w);
            });
        }
    });
    (port, lines)
}

#[test]
fn calls_go_through_the_proxy_of_the_environment_unless_direct() {
    let (url, _, _) = server(|_, _| json_answer("{\"via\":1}"), usize::MAX);
    let (port, lines) = connect_proxy(false);
    let env = Env::from_pairs([("HTTPS_PROXY", format!("http://me:pw@127.0.0.1:{port}"))]);
    let client = Client::with_roots(None, &env);
    block_on(async {
        let req = Request {
            direct: false,
            ..post(&url, b"{}")
        };
        let mut resp = client.send(&req).await.unwrap();
        assert_eq!(resp.body.read_all(100).await.unwrap(), b"{\"via\":1}");
        let mut direct = client.send(&post(&url, b"{}")).await.unwrap();
        assert_eq!(direct.body.read_all(100).await.unwrap(), b"{\"via\":1}");
    })
    .unwrap();
    let line = lines.recv_timeout(Duration::from_secs(2)).unwrap();
    assert!(
        line.starts_with(&format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n", url.port)),
        "{line}"
    );
    assert!(
        line.contains("Proxy-Authorization: Basic bWU6cHc=\r\n"),
        "{line}"
    );
    assert!(
        lines.try_recv().is_err(),
        "the direct call did not use the proxy"
    );

    let (port, _) = connect_proxy(true);
    let env = Env::from_pairs([("HTTP_PROXY", format!("127.0.0.1:{port}"))]);
    let client = Client::with_roots(None, &env);
    block_on(async {
        let req = Request {
            direct: false,
            ..post(&url, b"{}")
        };
        assert!(matches!(client.send(&req).await, Err(Error::Proxy(407))));
    })
    .unwrap();
}

/// An HTTPS server on 127.0.0.1 answering one request per connection, reporting whether
/// each handshake resumed a session.
fn tls_server(
    connections: usize,
) -> (
    Url,
    Vec<rustls::pki_types::CertificateDer<'static>>,
    thread::JoinHandle<Vec<bool>>,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (url, handle) = tls_server_with(&cert, connections);
    (
        Url::parse(&url).unwrap(),
        vec![cert.cert.der().clone()],
        handle,
    )
}

/// [`tls_server`] with this certificate, at the URL it returns (also for
/// `Upstream::trusting`'s test).
pub(crate) fn tls_server_with(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
    connections: usize,
) -> (String, thread::JoinHandle<Vec<bool>>) {
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = crate::http::tls::server_config(vec![cert.cert.der().clone()], key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://localhost:{}/doc",
        listener.local_addr().unwrap().port()
    );
    let handle = thread::spawn(move || {
        let mut resumed = Vec::new();
        for _ in 0..connections {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            resumed.push(tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                .unwrap();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        resumed
    });
    (url, handle)
}

#[test]
fn tls_with_given_roots_and_sessions_resumed() {
    let (url, roots, server) = tls_server(3);
    let client = Client::with_roots(Some(roots), &Env::default());
    block_on(async {
        for _ in 0..3 {
            let req = get(&url);
            let mut resp = client.send(&req).await.unwrap();
            assert_eq!(resp.body.read_all(100).await.unwrap(), b"{}");
        }
    })
    .unwrap();
    assert_eq!(server.join().unwrap(), [false, true, true]);

    // The web's roots do not trust a self-signed certificate.
    let (url, _, _server) = tls_server(1);
    block_on(async {
        let req = get(&url);
        match client_untrusting().send(&req).await {
            Err(Error::Connect(e)) => {
                assert!(e.to_string().to_lowercase().contains("certificate"), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("trusted"),
        }
    })
    .unwrap();
}

fn client_untrusting() -> Client {
    client()
}

#[test]
fn a_pooled_connection_that_ends_late_is_the_servers_failure_not_sent_again() {
    // The server answers the first request, takes the second, works on it past
    // STALE_WITHIN, then closes without an answer.
    let (url, conns, heads) = server(
        |_, body| {
            if body == b"slow" {
                thread::sleep(STALE_WITHIN + Duration::from_millis(300));
                Vec::new()
            } else {
                json_answer("{}")
            }
        },
        2,
    );
    let client = client();
    block_on(async {
        let mut resp = client.send(&post(&url, b"{}")).await.unwrap();
        assert_eq!(resp.body.read_all(100).await.unwrap(), b"{}");
        drop(resp);
        // (Bounded: sent again, the request would wait for an answer that never comes.)
        let slow = post(&url, b"slow");
        let sent = crate::rt::time::timeout(Duration::from_secs(5), client.send(&slow));
        match sent.await {
            Ok(Err(Error::Receive(e))) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            Ok(Err(e)) => panic!("{e}"),
            Ok(Ok(_)) => panic!("answered"),
            Err(_) => panic!("sent again on a new connection"),
        }
    })
    .unwrap();
    assert_eq!(conns.load(Ordering::SeqCst), 1, "no second connection");
    assert_eq!(
        heads.try_iter().count(),
        2,
        "the slow request was received once"
    );
}
