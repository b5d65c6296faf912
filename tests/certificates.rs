//! The HTTPS certificate replaced while the gateway runs: a new handshake gets the new one,
//! a connection already open keeps its own, broken files keep the old one; in-process
//! through the SIGHUP path, and with a real SIGHUP to the binary. A `-cert` or `-key` in a
//! directory that does not exist stops start-up.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::http::Client;
use crate::support::client::tls_connect_trusting;
use crate::support::gateway::{Gateway, Options, TempDir};
use crate::support::process::{Server, free_port, run_to_exit};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished handshake with `addr` for `localhost`, by a client that trusts the PEM
/// certificates in `trusted` (a new client configuration each time: nothing is resumed),
/// and the certificate the server presented.
fn connect(addr: SocketAddr, trusted: &[&[u8]]) -> (Tls, CertificateDer<'static>) {
    let roots = trusted.iter().map(|pem| der(pem));
    let mut tls = tls_connect_trusting(addr, roots, Duration::from_secs(5));
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    let peer = tls.conn.peer_certificates().expect("a certificate")[0]
        .clone()
        .into_owned();
    (tls, peer)
}

fn der(pem: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem).expect("a PEM certificate")
}

/// A certificate and key of the user's for `localhost`, as PEM.
fn users_pair() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("pair");
    (made.cert.pem(), made.signing_key.serialize_pem())
}

#[test]
fn a_replaced_certificate_reaches_new_connections_and_open_ones_keep_theirs() {
    let gw = Gateway::start(Options {
        https: true,
        ..Options::default()
    });
    let addr = gw.https.expect("https listener");
    let (cert, key) = (
        gw.dir.join("certs/server.crt"),
        gw.dir.join("certs/server.key"),
    );
    let generated = std::fs::read(&cert).expect("generated certificate");
    let (users_cert, users_key) = users_pair();
    let trusted = [&generated[..], users_cert.as_bytes()];

    let (old_tls, old_peer) = connect(addr, &trusted);
    assert_eq!(old_peer, der(&generated));
    let mut old = Client::new(old_tls);
    assert_eq!(old.get("/api/health").status, 200);

    std::fs::write(&cert, &users_cert).expect("write certificate");
    std::fs::write(&key, &users_key).expect("write key");
    let (_, before) = connect(addr, &trusted);
    assert_eq!(before, der(&generated), "nothing changes before a reload");
    gw.running().reload();

    let (new_tls, new_peer) = connect(addr, &trusted);
    assert_eq!(new_peer, der(users_cert.as_bytes()));
    assert_eq!(Client::new(new_tls).get("/api/health").status, 200);
    // The connection opened before goes on, on its own session.
    assert_eq!(old.get("/api/health").status, 200);
    // The files were taken as they are: a certificate of the user's is never written.
    assert_eq!(
        std::fs::read(&cert).expect("certificate"),
        users_cert.as_bytes()
    );
}

#[test]
fn sighup_puts_new_files_in_use_and_broken_ones_keep_the_old_certificate() {
    let https = free_port();
    let port = https.to_string();
    let server = Server::start(
        TempDir::new("hupcert"),
        &["-https-port", &port, "-https-allow", "127.0.0.0/8"],
        &[("OLLAMA_HOST", "127.0.0.1:9")],
    );
    let addr: SocketAddr = format!("127.0.0.1:{https}").parse().expect("addr");
    let (cert, key) = (
        server.dir.join("certs/server.crt"),
        server.dir.join("certs/server.key"),
    );
    let generated = std::fs::read(&cert).expect("generated certificate");
    let (users_cert, users_key) = users_pair();
    let trusted = [&generated[..], users_cert.as_bytes()];
    assert_eq!(connect(addr, &trusted).1, der(&generated));

    // A certificate whose key has not been copied yet: an ERROR, the old one stays.
    std::fs::write(&cert, &users_cert).expect("write certificate");
    server.signal("HUP");
    let line = server.wait_for_line(
        "cannot check or load the TLS certificate",
        Duration::from_secs(5),
    );
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("server.key"), "names the file: {line}");
    assert_eq!(connect(addr, &trusted).1, der(&generated));

    // The key too: the new certificate is in use, with its end date in the log.
    std::fs::write(&key, &users_key).expect("write key");
    server.signal("HUP");
    let line = server.wait_for_line("a new TLS certificate is in use", Duration::from_secs(5));
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("not_after=4096-01-01"), "{line}");
    let (tls, peer) = connect(addr, &trusted);
    assert_eq!(peer, der(users_cert.as_bytes()));
    assert_eq!(Client::new(tls).get("/api/health").status, 200);
}

#[test]
fn a_cert_or_key_in_a_missing_directory_stops_start_up_and_creates_nothing() {
    let dir = TempDir::new("certtypo");
    let https = free_port().to_string();
    let (good_cert, good_key) = (dir.join("server.crt"), dir.join("server.key"));
    let (typo_cert, typo_key) = (dir.join("tsl/server.crt"), dir.join("tsl/server.key"));
    for (cert, key, named) in [
        (&typo_cert, &typo_key, &typo_cert),
        (&good_cert, &typo_key, &typo_key),
    ] {
        let flags = [
            "-http-port",
            "0",
            "-https-port",
            &https,
            "-bind",
            "127.0.0.1",
        ];
        let mut args: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
        args.extend([OsStr::new("-cert"), cert.as_os_str()]);
        args.extend([OsStr::new("-key"), key.as_os_str()]);
        let (status, err) = run_to_exit(dir.path(), &args, Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{err}");
        let last = err.trim().lines().last().unwrap_or("");
        assert_eq!(
            last,
            format!(
                "sigorest: {}: the directory {} does not exist; sigorest creates only ./certs \
                 (the default), so create it or correct the path",
                named.display(),
                dir.join("tsl").display()
            ),
            "{err}"
        );
    }
    assert!(!dir.join("tsl").exists(), "no directory created");
    assert!(
        !good_cert.exists() && !good_key.exists(),
        "no pair generated"
    );
}
