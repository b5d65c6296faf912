//! Certificates: generation, reuse and renewal, loading, on files in temporary directories.

use super::*;
use rcgen::SanType;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sigorest-certs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn paths(&self) -> (PathBuf, PathBuf) {
        (
            self.0.join("certs").join("server.crt"),
            self.0.join("certs").join("server.key"),
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn names_cover_defaults_host_and_extras_once() {
    let names = cert_names(
        Some("pi"),
        &strings(&[
            "gw.lan",
            " 192.168.1.5 ",
            "LOCALHOST",
            "[::1]",
            "",
            "pi",
            "GW.lan",
        ]),
    )
    .unwrap();
    assert_eq!(
        names,
        strings(&[
            "localhost",
            "127.0.0.1",
            "::1",
            "pi",
            "gw.lan",
            "192.168.1.5"
        ])
    );
    // An unusable host name is skipped; no host name at all is fine.
    assert_eq!(cert_names(Some("bad host"), &[]).unwrap().len(), 3);
    assert_eq!(cert_names(None, &[]).unwrap().len(), 3);
}

#[test]
fn bad_extra_host_is_a_usage_error() {
    for bad in ["a b", "ü.example", "x..y", "-cert-hosts=\"", "a/b"] {
        let err = cert_names(None, &strings(&[bad])).unwrap_err();
        assert!(matches!(err, Error::Usage { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains("-cert-hosts"), "{err}");
    }
    for good in [
        "gw",
        "gw.lan",
        "*.lan",
        "my_box",
        "10.0.0.1",
        "fe80::1",
        "[fd00::2]",
    ] {
        assert!(check_host(good).is_ok(), "{good}");
    }
}

#[test]
fn params_have_ip_and_dns_sans_and_apple_validity() {
    let now = 1_795_262_400; // 2026-11-21T12:00:00Z
    let names = cert_names(None, &strings(&["gw.lan", "192.168.1.5", "fd00::2"])).unwrap();
    let p = cert_params(&names, now).unwrap();
    let ip = |s: &str| SanType::IpAddress(s.parse().unwrap());
    let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
    for san in [
        dns("localhost"),
        ip("127.0.0.1"),
        ip("::1"),
        dns("gw.lan"),
        ip("192.168.1.5"),
        ip("fd00::2"),
    ] {
        assert!(p.subject_alt_names.contains(&san), "{san:?}");
    }
    assert_eq!(p.subject_alt_names.len(), 6);
    assert_eq!(
        p.distinguished_name.get(&DnType::CommonName),
        Some(&rcgen::DnValue::Utf8String("sigorest".into()))
    );
    let validity = p.not_after - p.not_before;
    assert_eq!(validity.whole_days(), VALIDITY_DAYS);
    assert!(validity.whole_days() <= 825);
    // From the start of yesterday: at least one day, at most two, before now.
    let before = now as i64 - p.not_before.unix_timestamp();
    assert!((86_400..=2 * 86_400).contains(&before), "{before}");
    assert_eq!(p.not_before.unix_timestamp(), 1_795_132_800); // 2026-11-20T00:00:00Z
}

#[test]
fn absurd_clock_is_an_error_not_a_panic() {
    assert!(cert_params(&strings(&["localhost"]), u64::MAX).is_err());
    assert!(ymd(0).is_ok());
}

#[test]
fn generates_writes_and_then_loads_without_regenerating() {
    let dir = TempDir::new("gen");
    let (cert, key) = dir.paths();
    let generated = load_or_generate(&cert, &key, &strings(&["gw.lan"]))
        .unwrap()
        .written;
    assert!(generated);
    let cert_pem = std::fs::read(&cert).unwrap();
    let key_pem = std::fs::read(&key).unwrap();
    assert!(cert_pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
    assert!(String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
    }
    let generated = load_or_generate(&cert, &key, &[]).unwrap().written;
    assert!(!generated);
    assert_eq!(std::fs::read(&cert).unwrap(), cert_pem);
    assert_eq!(std::fs::read(&key).unwrap(), key_pem);
}

#[test]
fn a_missing_directory_is_an_error_unless_it_is_the_default_certs() {
    let dir = TempDir::new("dirs");
    // Both in a directory that exists (not there yet, files are generated in it).
    let (cert, key) = (dir.0.join("server.crt"), dir.0.join("server.key"));
    check_dirs(&cert, &key).unwrap();
    // A mistyped directory: refused, naming the path; nothing created.
    let typo = dir.0.join("tsl/sub/server.crt");
    let e = check_dirs(&typo, &key).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the directory {} does not exist; sigorest creates only ./certs (the \
             default), so create it or correct the path",
            typo.display(),
            dir.0.join("tsl/sub").display()
        )
    );
    let e = check_dirs(&cert, &dir.0.join("nokeys/server.key")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}/nokeys/server.key: ", dir.0.display())),
        "{e}"
    );
    // A file where the directory should be.
    std::fs::write(dir.0.join("file"), b"x").unwrap();
    let e = check_dirs(&dir.0.join("file/server.crt"), &key).unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
    // The default place, however written, may be created (relative to the working
    // directory, which the tests do not change).
    for (c, k) in [
        ("./certs/server.crt", "./certs/server.key"),
        ("certs/server.crt", "certs/other.key"),
    ] {
        check_dirs(Path::new(c), Path::new(k)).unwrap();
    }
    assert!(!dir.0.join("tsl").exists() && !dir.0.join("nokeys").exists());
}

#[test]
fn exactly_one_file_missing_is_an_error_naming_it() {
    let dir = TempDir::new("one");
    let (cert, key) = dir.paths();
    load_or_generate(&cert, &key, &[]).unwrap();
    let key_pem = std::fs::read(&key).unwrap();

    std::fs::remove_file(&cert).unwrap();
    let err = load_or_generate(&cert, &key, &[]).unwrap_err();
    match &err {
        Error::File { path, .. } => assert_eq!(path, &cert),
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("server.crt") && msg.contains("server.key"),
        "{msg}"
    );
    // Nothing was generated or overwritten.
    assert!(!cert.exists());
    assert_eq!(std::fs::read(&key).unwrap(), key_pem);

    let (cert2, key2) = (dir.0.join("c2.crt"), dir.0.join("k2.key"));
    std::fs::write(&cert2, b"x").unwrap();
    let err = load_or_generate(&cert2, &key2, &[]).unwrap_err();
    assert!(
        matches!(&err, Error::File { path, .. } if path == &key2),
        "{err:?}"
    );
}

#[test]
fn garbage_files_are_errors_naming_the_file() {
    let dir = TempDir::new("garbage");
    let (cert, key) = dir.paths();
    // The user's pair: sigorest would make its own pair again rather than fail.
    let own = rcgen::generate_simple_self_signed(strings(&["localhost"])).unwrap();
    std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
    std::fs::write(&cert, own.cert.pem()).unwrap();
    std::fs::write(&key, own.signing_key.serialize_pem()).unwrap();
    let good_cert = std::fs::read(&cert).unwrap();
    let good_key = std::fs::read(&key).unwrap();

    std::fs::write(&cert, b"not a certificate\n").unwrap();
    let err = load_or_generate(&cert, &key, &[]).unwrap_err();
    assert!(
        matches!(&err, Error::File { path, .. } if path == &cert),
        "{err:?}"
    );

    // PEM whose contents are not X.509 (here base64 of "garbage", and a certificate cut
    // short): the certificate is named, not the key it cannot be paired with.
    let body: String = good_cert
        .split(|b| *b == b'\n')
        .filter(|l| !l.starts_with(b"-----"))
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let cut = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        &body[..body.len() / 2 / 4 * 4]
    );
    for pem in [
        "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
        cut.as_str(),
    ] {
        std::fs::write(&cert, pem).unwrap();
        let err = load_or_generate(&cert, &key, &[]).unwrap_err();
        assert!(
            matches!(&err, Error::File { path, .. } if path == &cert),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("not a valid X.509 certificate"), "{text}");
        assert!(!text.contains("server.key"), "{text}");
    }

    std::fs::write(&cert, &good_cert).unwrap();
    std::fs::write(
        &key,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = load_or_generate(&cert, &key, &[]).unwrap_err();
    assert!(
        matches!(&err, Error::File { path, .. } if path == &key),
        "{err:?}"
    );

    // A valid key that belongs to another certificate.
    let (_, other_key) = generate(&[]).unwrap();
    std::fs::write(&key, other_key).unwrap();
    let err = load_or_generate(&cert, &key, &[]).unwrap_err();
    assert!(
        matches!(&err, Error::File { path, .. } if path == &key),
        "{err:?}"
    );
    assert!(err.to_string().contains("server.crt"), "{err}");

    std::fs::write(&key, &good_key).unwrap();
    assert!(load_or_generate(&cert, &key, &[]).is_ok());
}

#[test]
fn pem_files_that_begin_with_a_byte_order_mark_load() {
    // As OpenSSL reads them: a Windows editor's BOM before the first BEGIN line.
    let dir = TempDir::new("bom");
    let (cert, key) = dir.paths();
    let own = rcgen::generate_simple_self_signed(strings(&["localhost"])).unwrap();
    let bom = |pem: String| [&b"\xEF\xBB\xBF"[..], pem.as_bytes()].concat();
    std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
    std::fs::write(&cert, bom(own.cert.pem())).unwrap();
    std::fs::write(&key, bom(own.signing_key.serialize_pem())).unwrap();
    let loaded = load_or_generate(&cert, &key, &[]).unwrap();
    assert!(!loaded.written, "the user's pair is taken as it is");
    handshake(config_of(loaded), &own.cert.pem(), "localhost").unwrap();
}

/// A server configuration presenting `loaded` as the listener's.
fn config_of(loaded: Loaded) -> Arc<rustls::ServerConfig> {
    ServedCert::serving(
        Path::new("unused.crt"),
        Path::new("unused.key"),
        &[],
        loaded,
    )
    .server_config()
    .unwrap()
}

/// A handshake in memory with a client that trusts `cert_pem` and asks for `server_name`.
fn handshake(
    server_config: Arc<rustls::ServerConfig>,
    cert_pem: &str,
    server_name: &str,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    handshake_with(client_config, server_config, server_name).map(|_| ())
}

/// Drives a client and a server connection against each other in memory until the
/// handshake is done or one side fails; returns the client's side.
fn handshake_with(
    mut client_config: rustls::ClientConfig,
    server_config: Arc<rustls::ServerConfig>,
    server_name: &str,
) -> Result<rustls::ClientConnection, rustls::Error> {
    use rustls::pki_types::ServerName;
    client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), name)?;
    let mut server = rustls::ServerConnection::new(server_config)?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
            return Ok(client);
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn generated_certificate_completes_a_tls_handshake() {
    let dir = TempDir::new("tls");
    let (cert, key) = dir.paths();
    let extra = strings(&["gw.lan", "192.168.1.5"]);
    let config = config_of(load_or_generate(&cert, &key, &extra).unwrap());
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    for name in ["localhost", "127.0.0.1", "::1", "gw.lan", "192.168.1.5"] {
        handshake(config.clone(), &cert_pem, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // A name the certificate does not cover is refused by the client.
    assert!(handshake(config.clone(), &cert_pem, "example.com").is_err());
    assert!(handshake(config, &cert_pem, "10.9.9.9").is_err());
}

const DAY: i64 = 86_400;
const NOW: i64 = 1_795_262_400; // 2026-11-21T12:00:00Z

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

fn record_of(cert: &Path) -> Record {
    serde_json::from_slice(&read(&record_path(cert))).unwrap()
}

#[test]
fn generation_records_the_hosts_and_the_certificate() {
    let dir = TempDir::new("record");
    let (cert, key) = dir.paths();
    let names = cert_names(Some("pi"), &strings(&["box.lan"])).unwrap();
    let written = load_or_generate_at(&cert, &key, &names, &[], NOW)
        .unwrap()
        .written;
    assert!(written);
    let record = record_of(&cert);
    assert_eq!(record.generated_by, "sigorest");
    assert_eq!(record.hosts, names);
    assert_eq!(record.cert_sha256, sha256_hex(&read(&cert)));
    let der = first_cert(&read(&cert)).unwrap();
    let facts = super::super::x509::cert_facts(&der).unwrap();
    assert_eq!(record.not_after_unix, facts.not_after);
    assert_eq!(facts.not_after - facts.not_before, VALIDITY_DAYS * DAY);
    assert_eq!(origin(&cert, &read(&cert)).0, Origin::Generated);
    assert_eq!(
        record_path(&cert),
        dir.0.join("certs/server.crt.generated.json")
    );
}

#[test]
fn an_unchanged_or_smaller_host_list_keeps_the_same_certificate() {
    let dir = TempDir::new("keep");
    let (cert, key) = dir.paths();
    let names = cert_names(Some("pi"), &strings(&["box.lan", "192.168.1.10"])).unwrap();
    load_or_generate_at(&cert, &key, &names, &[], NOW).unwrap();
    let before = (read(&cert), read(&key), read(&record_path(&cert)));
    for (names, now) in [
        (names.clone(), NOW),
        (names.clone(), NOW + 700 * DAY),
        (cert_names(Some("pi"), &[]).unwrap(), NOW),
        (strings(&["BOX.lan", "localhost"]), NOW),
    ] {
        let written = load_or_generate_at(&cert, &key, &names, &[], now)
            .unwrap()
            .written;
        assert!(!written, "{names:?}");
        let after = (read(&cert), read(&key), read(&record_path(&cert)));
        assert!(after == before, "{names:?}: files untouched");
    }
}

#[test]
fn a_host_not_named_regenerates_the_certificate() {
    let dir = TempDir::new("hosts");
    let (cert, key) = dir.paths();
    let first = cert_names(Some("pi"), &[]).unwrap();
    load_or_generate_at(&cert, &key, &first, &[], NOW).unwrap();
    let old_cert = read(&cert);
    let extra = strings(&["192.168.1.10", "box.lan"]);
    let names = cert_names(Some("pi"), &extra).unwrap();
    assert_eq!(
        why_renew(&old_cert, &names, &first, NOW).as_deref(),
        Some("it does not name 192.168.1.10,box.lan")
    );
    let loaded = load_or_generate_at(&cert, &key, &names, &extra, NOW).unwrap();
    assert!(loaded.written);
    let config = config_of(loaded);
    assert_ne!(read(&cert), old_cert);
    assert_eq!(record_of(&cert).hosts, names);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let pem = String::from_utf8(read(&cert)).unwrap();
    for name in ["localhost", "::1", "pi", "192.168.1.10", "box.lan"] {
        handshake(config.clone(), &pem, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The host name counts too: a renamed box gets a certificate with its new name.
    let renamed = cert_names(Some("pi2"), &extra).unwrap();
    assert!(
        load_or_generate_at(&cert, &key, &renamed, &extra, NOW)
            .unwrap()
            .written
    );
    // A wildcard entry is covered by a wildcard name, and only by one.
    let wild = cert_names(None, &strings(&["*.lan"])).unwrap();
    assert!(
        load_or_generate_at(&cert, &key, &wild, &[], NOW)
            .unwrap()
            .written
    );
    assert!(
        !load_or_generate_at(&cert, &key, &wild, &[], NOW)
            .unwrap()
            .written
    );
}

#[test]
fn an_expired_or_expiring_generated_certificate_is_renewed() {
    let dir = TempDir::new("expiry");
    let (cert, key) = dir.paths();
    let names = cert_names(None, &[]).unwrap();
    // Made so that it ends 31 days from NOW: kept. (It starts the day before it is made.)
    let made = NOW - (VALIDITY_DAYS - 32) * DAY;
    load_or_generate_at(&cert, &key, &names, &[], made).unwrap();
    let not_after = record_of(&cert).not_after_unix;
    assert!(not_after > NOW + RENEW_DAYS * DAY, "{}", date(not_after));
    assert!(
        !load_or_generate_at(&cert, &key, &names, &[], NOW)
            .unwrap()
            .written
    );
    // Within 30 days of its end: renewed, and the new one runs 825 days from now.
    let later = not_after - RENEW_DAYS * DAY + 60;
    let reason = why_renew(&read(&cert), &names, &[], later).unwrap();
    assert!(reason.starts_with("it expires on "), "{reason}");
    assert!(
        load_or_generate_at(&cert, &key, &names, &[], later)
            .unwrap()
            .written
    );
    let renewed = record_of(&cert).not_after_unix;
    assert!(
        renewed > later + (VALIDITY_DAYS - 2) * DAY,
        "{}",
        date(renewed)
    );
    // Long expired: renewed.
    let much_later = renewed + 100 * DAY;
    let reason = why_renew(&read(&cert), &names, &[], much_later).unwrap();
    assert_eq!(reason, format!("it expired on {}", date(renewed)));
    assert!(
        load_or_generate_at(&cert, &key, &names, &[], much_later)
            .unwrap()
            .written
    );
    assert!(
        !load_or_generate_at(&cert, &key, &names, &[], much_later)
            .unwrap()
            .written
    );
}

#[test]
fn a_certificate_generated_before_records_were_kept_is_recognised() {
    let dir = TempDir::new("legacy");
    let (cert, key) = dir.paths();
    let names = cert_names(None, &[]).unwrap();
    load_or_generate_at(&cert, &key, &names, &[], NOW).unwrap();
    std::fs::remove_file(record_path(&cert)).unwrap();
    assert_eq!(origin(&cert, &read(&cert)).0, Origin::GeneratedBefore);
    // Nothing to change: nothing written, not even a record.
    assert!(
        !load_or_generate_at(&cert, &key, &names, &[], NOW)
            .unwrap()
            .written
    );
    assert!(!record_path(&cert).exists());
    let more = cert_names(None, &strings(&["box.lan"])).unwrap();
    assert!(
        load_or_generate_at(&cert, &key, &more, &[], NOW)
            .unwrap()
            .written
    );
    assert_eq!(origin(&cert, &read(&cert)).0, Origin::Generated);
}

#[test]
fn a_generated_pair_left_half_written_is_made_again() {
    let dir = TempDir::new("half");
    let (cert, key) = dir.paths();
    let names = cert_names(None, &[]).unwrap();
    load_or_generate_at(&cert, &key, &names, &[], NOW).unwrap();
    // A crash after the new key and before the new certificate.
    let (_, other_key) = generate(&[]).unwrap();
    std::fs::write(&key, other_key).unwrap();
    assert!(
        load_or_generate_at(&cert, &key, &names, &[], NOW)
            .unwrap()
            .written
    );
    assert!(
        !load_or_generate_at(&cert, &key, &names, &[], NOW)
            .unwrap()
            .written
    );
}

#[test]
fn a_supplied_certificate_is_never_rewritten() {
    let dir = TempDir::new("supplied");
    let (cert, key) = dir.paths();
    // A record left from a certificate sigorest made earlier does not make the user's
    // certificate ours: the record names the old certificate's hash.
    load_or_generate_at(&cert, &key, &cert_names(None, &[]).unwrap(), &[], NOW).unwrap();
    let record = read(&record_path(&cert));
    let mut params = CertificateParams::new(strings(&["gw.example"])).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let own_key = KeyPair::generate().unwrap();
    let own = params.self_signed(&own_key).unwrap();
    std::fs::write(&cert, own.pem()).unwrap();
    std::fs::write(&key, own_key.serialize_pem()).unwrap();
    let extra = strings(&["box.lan", "192.168.1.10"]);
    let names = cert_names(Some("pi"), &extra).unwrap();
    assert_eq!(origin(&cert, &read(&cert)).0, Origin::Supplied);
    // Expired, and naming none of the hosts: loaded as it is, nothing written.
    for now in [NOW, NOW + 5000 * DAY] {
        let written = load_or_generate_at(&cert, &key, &names, &extra, now)
            .unwrap()
            .written;
        assert!(!written);
        assert_eq!(read(&cert), own.pem().as_bytes());
        assert_eq!(read(&key), own_key.serialize_pem().as_bytes());
        assert_eq!(read(&record_path(&cert)), record);
    }
    let der = first_cert(&read(&cert)).unwrap();
    let wanted = strings(&["gw.example", "box.lan", "[::1]", "*.lan", "my_box"]);
    assert_eq!(
        names_missing(&der, &wanted, None),
        Some(strings(&["box.lan", "[::1]", "*.lan", "my_box"]))
    );
}

#[test]
fn digits_and_dots_that_are_not_ipv4_are_refused_with_the_fix() {
    // Such an entry would become a DNS name no client ever asks for; leading zeros are
    // octal to some tools (inet_aton reads 010 as 8).
    let err = cert_names(None, &strings(&["192.168.001.005"])).unwrap_err();
    assert!(matches!(err, Error::Usage { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("-cert-hosts"), "{msg}");
    assert!(msg.contains("'192.168.001.005'"), "{msg}");
    assert!(msg.contains("write 192.168.1.5"), "{msg}");
    for bad in ["192.168.1.256", "10.0.0", "1.2.3.4.5", "10", "1..2.3"] {
        let err = cert_names(None, &strings(&[bad])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("'{bad}' is not an IPv4 address")),
            "{msg}"
        );
        assert!(msg.contains("e.g. 192.168.1.5"), "{msg}");
    }
    // Names with a digit-only label are still names.
    for good in [
        "10.lan",
        "host1.192-168-1-5.lan",
        "0.pool.ntp.org",
        "192.168.0.1",
    ] {
        assert!(check_host(good).is_ok(), "{good}");
    }
}

/// The certificate in use, replaced while the server runs.
#[path = "tls_served_tests.rs"]
mod served;
