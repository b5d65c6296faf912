//! HTTPS with a real rustls client and a certificate generated in the test.

use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::*;

pub type TlsClient = Client<StreamOwned<ClientConnection, TcpStream>>;

/// A server configuration with a fresh self-signed certificate for `localhost`, and a client
/// configuration that trusts it (ring, as in the gateway; no process-wide provider).
pub fn tls_configs(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = made.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn tls_harness(
    allow: AllowList,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Harness, Arc<ClientConfig>) {
    let (server, client) = tls_configs(versions);
    let h = Harness::start(|c| {
        c.listeners[0].tls = Some(server);
        c.listeners[0].allow = allow;
    });
    (h, client)
}

pub fn tls_client(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsClient {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::clone(config), name).unwrap();
    Client::new(StreamOwned::new(conn, tcp))
}

/// The bytes of a ClientHello, as a client would send them first.
fn client_hello(config: &Arc<ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn get_and_a_stream_over_tls() {
    let (h, client) = tls_harness(loopback_allow(), rustls::DEFAULT_VERSIONS);
    let mut c = tls_client(h.addr, &client);
    let r = c.get("/info");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tls"], true);
    let r = c.get("/stream?n=3&ms=200");
    assert_eq!(r.text().matches("data: piece").count(), 3);
    for pair in r.chunk_times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(150),
            "pieces flushed one by one"
        );
    }
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    assert_eq!(c.response().unwrap().text(), "hello", "keep-alive over TLS");
    // TLS 1.2 too.
    let (h, client) = tls_harness(loopback_allow(), &[&rustls::version::TLS12]);
    assert_eq!(tls_client(h.addr, &client).get("/echo").status, 200);
}

#[test]
fn plain_http_on_the_https_port_gets_a_400_it_can_read() {
    let (h, client) = tls_harness(loopback_allow(), rustls::DEFAULT_VERSIONS);
    let mut raw = TcpStream::connect(h.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(
        text.contains("plain_http_on_https_port") && text.contains("https://"),
        "{text}"
    );
    assert!(wait_for(Duration::from_secs(1), || open_connections(&h) == 0));
    // TLS clients are served as before.
    assert_eq!(tls_client(h.addr, &client).get("/echo").status, 200);
}

#[test]
fn a_client_hello_then_close_or_close_notify_leaves_nothing_running() {
    let (h, client) = tls_harness(loopback_allow(), &[&rustls::version::TLS12]);
    let hello = client_hello(&client);
    // ClientHello, then the client leaves.
    let mut raw = TcpStream::connect(h.addr).unwrap();
    raw.write_all(&hello).unwrap();
    assert!(wait_for(Duration::from_secs(1), || open_connections(&h) == 1));
    drop(raw);
    assert!(
        wait_for(Duration::from_secs(1), || open_connections(&h) == 0),
        "connection thread ended"
    );
    // ClientHello, then a close_notify alert with the socket left open (RUSTSEC-2024-0336:
    // rustls 0.20 spun a core here).
    let mut c = Client::connect(h.addr);
    c.send(&hello).unwrap();
    c.send(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00]).unwrap();
    let from = Instant::now();
    let mut answer = Vec::new();
    let _ = c.r.read_to_end(&mut answer);
    assert!(
        from.elapsed() < Duration::from_secs(2),
        "closed by the server"
    );
    assert!(wait_for(Duration::from_secs(1), || open_connections(&h) == 0));
    assert_eq!(tls_client(h.addr, &client).get("/echo").status, 200);
}

#[test]
fn a_stalled_handshake_is_closed_at_the_head_deadline() {
    let (h, client) = tls_harness(loopback_allow(), rustls::DEFAULT_VERSIONS);
    let hello = client_hello(&client);
    let mut c = Client::connect(h.addr);
    let from = Instant::now();
    c.send(&hello[..hello.len() / 2]).unwrap();
    let mut answer = Vec::new();
    let _ = c.r.read_to_end(&mut answer);
    let took = from.elapsed();
    assert!(answer.is_empty());
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn a_refused_address_gets_403_after_the_handshake() {
    let (h, client) = tls_harness(
        AllowList::parse("10.0.0.0/8").unwrap(),
        rustls::DEFAULT_VERSIONS,
    );
    let mut c = tls_client(h.addr, &client);
    let r = c.get("/echo");
    assert_eq!((r.status, r.error_code().as_str()), (403, "ip_not_allowed"));
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn close_notify_while_a_handler_works_fires_the_hangup() {
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    for (versions, then_close) in [(tls13, false), (tls12, false), (tls13, true)] {
        let (h, client) = tls_harness(loopback_allow(), versions);
        let mut c = tls_client(h.addr, &client);
        c.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert!(wait_for(Duration::from_secs(2), || {
            h.stats().workers_busy.load(Ordering::Acquire) == 1
        }));
        // close_notify, with the TCP connection left open or closed after it.
        let stream = c.r.get_mut();
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        if then_close {
            drop(c);
        }
        let event = h.event(Duration::from_secs(3));
        assert_eq!(
            event.as_deref(),
            Some("hold: hangup=true"),
            "{versions:?} close={then_close}"
        );
    }
}

/// The real binary, started twice on one directory: the second start asks for more
/// `-cert-hosts`, and the certificate the first start generated is made again for them; a
/// third start with the same hosts keeps it.
#[test]
fn a_generated_certificate_follows_cert_hosts_across_restarts() {
    use crate::support::gateway::TempDir;
    use crate::support::process::{Server as Process, free_port};

    fn start(dir: TempDir, hosts: &str) -> (Process, u16) {
        let port = free_port();
        let port_arg = port.to_string();
        let mut args = vec!["-https-port", &port_arg, "-https-allow", "127.0.0.0/8"];
        if !hosts.is_empty() {
            args.extend(["-cert-hosts", hosts]);
        }
        (Process::start(dir, &args, &[]), port)
    }
    fn stop(mut p: Process) -> TempDir {
        p.signal("TERM");
        p.wait_exit(Duration::from_secs(10));
        std::mem::replace(&mut p.dir, TempDir::new("unused"))
    }

    let (p, _) = start(TempDir::new("cert-hosts"), "");
    p.wait_for_line(
        "generated a self-signed TLS certificate",
        Duration::from_secs(5),
    );
    let cert = p.dir.join("certs/server.crt");
    let first = std::fs::read(&cert).unwrap();
    let dir = stop(p);

    let (p, port) = start(dir, "127.0.0.2,box.lan");
    let line = p.wait_for_line("generated a new self-signed", Duration::from_secs(5));
    assert!(line.contains("does not name 127.0.0.2,box.lan"), "{line}");
    assert!(line.contains("-cacert"), "{line}");
    let second = std::fs::read(&cert).unwrap();
    assert_ne!(second, first);
    // The new certificate is the one served, and a client that trusts it reaches the
    // gateway under the new name.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&second) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("box.lan").unwrap();
    let conn = ClientConnection::new(client, name).unwrap();
    let mut c = Client::new(StreamOwned::new(conn, tcp));
    assert_eq!(c.get("/api/health").status, 200);
    drop(c);
    let dir = stop(p);

    let (p, _) = start(dir, "box.lan,127.0.0.2");
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        second,
        "same hosts: same certificate"
    );
    stop(p);
}
