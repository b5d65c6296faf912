//! The certificate in use, replaced while the server runs: checks that put new files in
//! use, keep the old certificate over broken files, renew a generated one, and the thread
//! that runs them.

use super::*;

/// A client that accepts any certificate at any date (its signatures are still checked):
/// the tests below look at which certificate the server sent, with clocks of their own.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate a new handshake gets from `config` (a new client each time, so nothing
/// is resumed).
fn served_der(config: &Arc<rustls::ServerConfig>) -> CertificateDer<'static> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let client = handshake_with(client_config, Arc::clone(config), "localhost").unwrap();
    client.peer_certificates().unwrap()[0].clone().into_owned()
}

/// The DER of the certificate in the PEM file `cert`.
fn der_in(cert: &Path) -> CertificateDer<'static> {
    first_cert(&read(cert)).unwrap()
}

/// A certificate of the user's (not sigorest's) for `localhost`, and its key, as PEM.
fn users_pair() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(strings(&["localhost"])).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

/// A running certificate over a fresh generated pair in `dir`, with its configuration.
fn served_in(dir: &TempDir, now: i64) -> (Arc<ServedCert>, Arc<rustls::ServerConfig>) {
    let (cert, key) = dir.paths();
    let names = cert_names(None, &[]).unwrap();
    let loaded = load_or_generate_at(&cert, &key, &names, &[], now).unwrap();
    let served = ServedCert::serving(&cert, &key, &[], loaded);
    let config = served.server_config().unwrap();
    (served, config)
}

#[test]
fn a_check_puts_replaced_files_in_use_for_new_handshakes() {
    let dir = TempDir::new("swap");
    let (cert, key) = dir.paths();
    let names = cert_names(None, &[]).unwrap();
    let (served, config) = served_in(&dir, NOW);
    let first = der_in(&cert);
    assert_eq!(served_der(&config), first);
    // Nothing changed: nothing to put in use.
    assert!(!served.check_at(&names, NOW).unwrap());

    // The user puts their own pair in place (the certificate first, then the key).
    let (users_cert, users_key) = users_pair();
    std::fs::write(&cert, &users_cert).unwrap();
    std::fs::write(&key, &users_key).unwrap();
    assert_eq!(served_der(&config), first, "nothing changes before a check");
    assert!(served.check_at(&names, NOW).unwrap());
    let second = der_in(&cert);
    assert_ne!(second, first);
    // The same configuration, as the listener holds it, now presents the new certificate.
    assert_eq!(served_der(&config), second);
    assert!(!served.check_at(&names, NOW).unwrap());
    // The user's files were taken as they are.
    assert_eq!(read(&cert), users_cert.as_bytes());
    assert_eq!(read(&key), users_key.as_bytes());

    // Replaced again, by the same certificate with a fresh timestamp: nothing to do; by
    // another pair: that one.
    std::fs::write(&cert, &users_cert).unwrap();
    assert!(!served.check_at(&names, NOW).unwrap());
    let (other_cert, other_key) = users_pair();
    std::fs::write(&cert, &other_cert).unwrap();
    std::fs::write(&key, &other_key).unwrap();
    assert!(served.check_at(&names, NOW).unwrap());
    assert_eq!(served_der(&config), der_in(&cert));
}

#[test]
fn broken_files_at_a_check_keep_the_certificate_in_use() {
    let dir = TempDir::new("broken");
    let (cert, key) = dir.paths();
    let names = cert_names(None, &[]).unwrap();
    // The user's pair, in use.
    let (users_cert, users_key) = users_pair();
    std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
    std::fs::write(&cert, &users_cert).unwrap();
    std::fs::write(&key, &users_key).unwrap();
    let loaded = load_or_generate_at(&cert, &key, &names, &[], NOW).unwrap();
    assert!(!loaded.written);
    let served = ServedCert::serving(&cert, &key, &[], loaded);
    let config = served.server_config().unwrap();
    let in_use = der_in(&cert);
    assert_eq!(served_der(&config), in_use);

    let (new_cert, _) = users_pair();
    /// Files as a check finds them, and the one its error must name.
    struct Broken<'a> {
        what: &'a str,
        cert_pem: &'a [u8],
        key_pem: Option<&'a [u8]>,
        named: &'a Path,
    }
    let good_key = Some(users_key.as_bytes());
    let cases = [
        Broken {
            what: "garbage certificate",
            cert_pem: b"not a certificate\n",
            key_pem: good_key,
            named: &cert,
        },
        Broken {
            what: "no certificate",
            cert_pem: b"",
            key_pem: good_key,
            named: &cert,
        },
        // PEM, but what it holds is not X.509: the certificate is at fault, not its key.
        Broken {
            what: "a PEM certificate that is not X.509",
            cert_pem: b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
            key_pem: good_key,
            named: &cert,
        },
        Broken {
            what: "garbage key",
            cert_pem: users_cert.as_bytes(),
            key_pem: Some(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            named: &key,
        },
        // A new certificate whose key has not been copied yet.
        Broken {
            what: "key of another certificate",
            cert_pem: new_cert.as_bytes(),
            key_pem: good_key,
            named: &key,
        },
        Broken {
            what: "key missing",
            cert_pem: users_cert.as_bytes(),
            key_pem: None,
            named: &key,
        },
    ];
    for Broken {
        what,
        cert_pem,
        key_pem,
        named,
    } in cases
    {
        std::fs::write(&cert, cert_pem).unwrap();
        match key_pem {
            Some(k) => std::fs::write(&key, k).unwrap(),
            None => std::fs::remove_file(&key).unwrap(),
        }
        let err = served.check_at(&names, NOW).unwrap_err();
        assert!(
            matches!(&err, Error::File { path, .. } if path == named),
            "{what}: {err:?}"
        );
        if named == cert {
            assert!(!err.to_string().contains("server.key"), "{what}: {err}");
        }
        // The certificate in use stays, and nothing of the user's was written over.
        assert_eq!(served_der(&config), in_use, "{what}");
        assert_eq!(read(&cert), cert_pem, "{what}");
        assert_eq!(std::fs::read(&key).ok().as_deref(), key_pem, "{what}");
        served.check_logged();
    }
    // The good files back: they are the ones in use, nothing to do.
    std::fs::write(&cert, &users_cert).unwrap();
    std::fs::write(&key, &users_key).unwrap();
    assert!(!served.check_at(&names, NOW).unwrap());
    assert_eq!(served_der(&config), in_use);
}

#[test]
fn a_check_renews_a_generated_certificate_near_its_end() {
    let dir = TempDir::new("renew");
    let (cert, key) = dir.paths();
    let names = cert_names(None, &[]).unwrap();
    // Made so that it ends 31 days from NOW.
    let (served, config) = served_in(&dir, NOW - (VALIDITY_DAYS - 32) * DAY);
    let old = der_in(&cert);
    let not_after = record_of(&cert).not_after_unix;
    assert!(!served.check_at(&names, NOW).unwrap());
    assert_eq!(der_in(&cert), old, "not renewed 31 days before its end");

    // A day later it is within 30 days of its end: renewed, written, and in use.
    let later = not_after - RENEW_DAYS * DAY + 60;
    assert!(served.check_at(&names, later).unwrap());
    let new = der_in(&cert);
    assert_ne!(new, old);
    assert_eq!(served_der(&config), new);
    let record = record_of(&cert);
    assert!(record.not_after_unix > later + (VALIDITY_DAYS - 2) * DAY);
    assert_eq!(record.cert_sha256, sha256_hex(&read(&cert)));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(!served.check_at(&names, later).unwrap());
    assert_eq!(served_der(&config), new);
}

/// Polls `done` until it holds or five seconds pass.
fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn the_periodic_checks_put_new_files_in_use_and_stop() {
    let dir = TempDir::new("daily");
    let (cert, key) = dir.paths();
    let (served, config) = served_in(&dir, unix_now());
    let first = der_in(&cert);
    served.start_checks_every(Duration::from_millis(20));
    served.start_checks_every(Duration::from_millis(20));
    let (users_cert, users_key) = users_pair();
    std::fs::write(&cert, &users_cert).unwrap();
    std::fs::write(&key, &users_key).unwrap();
    let second = der_in(&cert);
    assert_ne!(second, first);
    assert!(eventually(|| served_der(&config) == second));

    served.stop_checks();
    assert!(crate::util::lock(&served.checker).is_none());
    // Stopped: a change is no longer picked up.
    let (other_cert, other_key) = users_pair();
    std::fs::write(&cert, &other_cert).unwrap();
    std::fs::write(&key, &other_key).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(served_der(&config), second);
}

#[test]
fn the_checks_end_when_the_certificate_is_dropped() {
    let dir = TempDir::new("dropped");
    let (served, config) = served_in(&dir, unix_now());
    served.start_checks_every(Duration::from_secs(3600));
    // Take the thread's handle to watch it; a finished stand-in takes its place.
    let (tx, handle) = crate::util::lock(&served.checker).take().unwrap();
    *crate::util::lock(&served.checker) = Some((tx, std::thread::spawn(|| {})));
    assert!(!handle.is_finished());
    // The listener's configuration holds the certificate too.
    drop(config);
    drop(served);
    assert!(eventually(|| handle.is_finished()));
    handle.join().unwrap();
}
