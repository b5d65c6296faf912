//! TLS for the HTTPS listener: load the certificate and key, or generate a self-signed pair
//! on first start.
//!
//! No process-wide rustls crypto provider is installed: the configuration is built with the
//! ring provider explicitly, so nothing depends on what else in the binary picked one.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// How long a generated certificate is valid: Apple's clients refuse server certificates
/// valid for more than 825 days.
pub const VALIDITY_DAYS: i64 = 825;

/// Loads `cert` and `key` (PEM) into a rustls server configuration. When both files are
/// missing, first generates a self-signed ECDSA P-256 certificate for `localhost`,
/// `127.0.0.1`, `::1`, the host name and `extra_hosts` (names or IP addresses), valid from
/// yesterday for 825 days (Apple's limit), and writes both files atomically (key mode 0600).
/// Exactly one missing, or a file that does not parse: [`Error::File`] naming it.
/// Returns the configuration and whether a certificate was generated.
pub fn load_or_generate(
    cert: &Path,
    key: &Path,
    extra_hosts: &[String],
) -> Result<(Arc<rustls::ServerConfig>, bool), Error> {
    let cert_exists = exists(cert)?;
    let key_exists = exists(key)?;
    let generated = match (cert_exists, key_exists) {
        (true, true) => false,
        (false, false) => {
            let names = cert_names(host_name().as_deref(), extra_hosts)?;
            let (cert_pem, key_pem) = generate_for(&names)?;
            // Two files cannot be replaced in one step: a crash between the writes leaves
            // the key alone, and the next start says so (below) instead of guessing.
            crate::util::fs::write_atomic(key, key_pem.as_bytes(), Some(0o600))
                .map_err(|e| Error::io(key, &e))?;
            crate::util::fs::write_atomic(cert, cert_pem.as_bytes(), Some(0o644))
                .map_err(|e| Error::io(cert, &e))?;
            log::info!(
                cert:% = cert.display(),
                key:% = key.display(),
                names = names.join(","),
                valid_days = VALIDITY_DAYS;
                "generated a self-signed TLS certificate"
            );
            true
        }
        (cert_exists, _) => {
            let (missing, present) = if cert_exists {
                (key, cert)
            } else {
                (cert, key)
            };
            return Err(Error::File {
                path: missing.to_path_buf(),
                line: 0,
                column: 0,
                message: format!(
                    "missing while {} exists: supply both the certificate and its key, \
                     or remove {} to have a new pair generated",
                    present.display(),
                    present.display()
                ),
            });
        }
    };
    let config = load(cert, key)?;
    Ok((config, generated))
}

/// A self-signed certificate and key as PEM text, for the hosts given (plus the defaults
/// above).
pub fn generate(extra_hosts: &[String]) -> Result<(String, String), Error> {
    generate_for(&cert_names(host_name().as_deref(), extra_hosts)?)
}

/// Whether `s` can go into a certificate as a name: an IP address (brackets allowed) or a
/// DNS name (letters, digits, `-`, `_`, `.`, an optional leading `*.`).
pub fn check_host(s: &str) -> Result<(), String> {
    if parse_ip(s).is_some() {
        return Ok(());
    }
    let name = s.strip_prefix("*.").unwrap_or(s);
    let ok = !name.is_empty()
        && s.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("'{s}' is not a host name or IP address"))
    }
}

/// The names a generated certificate covers, in order, without duplicates: `localhost`,
/// `127.0.0.1`, `::1`, the host name (when known and usable) and the extra hosts. IP
/// addresses are compared as addresses, names case-insensitively.
fn cert_names(host_name: Option<&str>, extra_hosts: &[String]) -> Result<Vec<String>, Error> {
    let mut names: Vec<String> = Vec::new();
    let mut push = |s: &str| {
        let s = match parse_ip(s) {
            Some(ip) => ip.to_string(),
            None => s.to_ascii_lowercase(),
        };
        if !names.contains(&s) {
            names.push(s);
        }
    };
    for s in ["localhost", "127.0.0.1", "::1"] {
        push(s);
    }
    // A host name that is not a valid DNS name (rare) is left out rather than failing.
    if let Some(h) = host_name.filter(|h| check_host(h).is_ok()) {
        push(h);
    }
    for h in extra_hosts {
        let h = h.trim();
        if h.is_empty() {
            continue;
        }
        check_host(h).map_err(|m| Error::Usage {
            message: format!("-cert-hosts: {m}"),
        })?;
        push(h);
    }
    Ok(names)
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    inner.parse().ok()
}

/// The certificate parameters for `names`, valid from the start of yesterday (UTC) for
/// [`VALIDITY_DAYS`] days; `now_unix` is the current time.
fn cert_params(names: &[String], now_unix: u64) -> Result<CertificateParams, Error> {
    // IP strings become IP SANs in rcgen's `CertificateParams::new`.
    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| Error::Internal {
        message: format!("certificate names {names:?}: {e}"),
    })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "sigorest");
    params.distinguished_name = dn;
    // Yesterday, so a client whose clock is a little behind still accepts it.
    let start = (now_unix / 86_400) as i64 - 1;
    let (from, until) = (ymd(start)?, ymd(start + VALIDITY_DAYS)?);
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// The calendar date of a day counted from 1970-01-01, within the range rcgen's date type
/// takes (its `date_time_ymd` panics outside it).
fn ymd(days: i64) -> Result<(i32, u8, u8), Error> {
    let (y, m, d) = crate::logging::civil_from_days(days);
    match i32::try_from(y) {
        Ok(y) if (1950..=9998).contains(&y) => Ok((y, m, d)),
        _ => Err(Error::Internal {
            message: format!("the system clock says year {y}: cannot date a certificate"),
        }),
    }
}

fn generate_for(names: &[String]) -> Result<(String, String), Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let params = cert_params(names, now)?;
    let internal = |e: rcgen::Error| Error::Internal {
        message: format!("generating the TLS certificate: {e}"),
    };
    let key = KeyPair::generate().map_err(internal)?;
    let cert = params.self_signed(&key).map_err(internal)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The machine's host name, when the kernel or `/etc/hostname` tells it.
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

fn exists(path: &Path) -> Result<bool, Error> {
    path.try_exists().map_err(|e| Error::io(path, &e))
}

fn file_error(path: &Path, message: String) -> Error {
    Error::File {
        path: path.to_path_buf(),
        line: 0,
        column: 0,
        message,
    }
}

/// Reads both PEM files and builds the server configuration (TLS 1.2 and 1.3, ALPN
/// `http/1.1`).
fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    let cert_pem = std::fs::read(cert).map_err(|e| Error::io(cert, &e))?;
    let key_pem = std::fs::read(key).map_err(|e| Error::io(key, &e))?;
    warn_if_readable_by_others(key);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(
            cert,
            "no PEM certificate (BEGIN CERTIFICATE) in the file".to_string(),
        ));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_error(key, format!("not a PEM private key: {e}")))?;
    server_config(chain, private_key).map_err(|e| {
        file_error(
            key,
            format!("unusable with the certificate {}: {e}", cert.display()),
        )
    })
}

pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // The gateway speaks HTTP/1.1 only; saying so stops clients from trying h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(unix)]
fn warn_if_readable_by_others(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(key) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        log::warn!(
            key:% = key.display(),
            mode = format!("{mode:o}");
            "the TLS private key is readable by other users; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_key: &Path) {}

#[cfg(test)]
mod tests {
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
        let (_, generated) = load_or_generate(&cert, &key, &strings(&["gw.lan"])).unwrap();
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
        let (_, generated) = load_or_generate(&cert, &key, &[]).unwrap();
        assert!(!generated);
        assert_eq!(std::fs::read(&cert).unwrap(), cert_pem);
        assert_eq!(std::fs::read(&key).unwrap(), key_pem);
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
        load_or_generate(&cert, &key, &[]).unwrap();
        let good_cert = std::fs::read(&cert).unwrap();
        let good_key = std::fs::read(&key).unwrap();

        std::fs::write(&cert, b"not a certificate\n").unwrap();
        let err = load_or_generate(&cert, &key, &[]).unwrap_err();
        assert!(
            matches!(&err, Error::File { path, .. } if path == &cert),
            "{err:?}"
        );

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

    /// Drives a client and a server connection against each other in memory until the
    /// handshake is done or one side fails.
    fn handshake(
        server_config: Arc<rustls::ServerConfig>,
        cert_pem: &str,
        server_name: &str,
    ) -> Result<(), rustls::Error> {
        use rustls::pki_types::ServerName;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
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
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn generated_certificate_completes_a_tls_handshake() {
        let dir = TempDir::new("tls");
        let (cert, key) = dir.paths();
        let extra = strings(&["gw.lan", "192.168.1.5"]);
        let (config, _) = load_or_generate(&cert, &key, &extra).unwrap();
        let cert_pem = std::fs::read_to_string(&cert).unwrap();
        for name in ["localhost", "127.0.0.1", "::1", "gw.lan", "192.168.1.5"] {
            handshake(config.clone(), &cert_pem, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // A name the certificate does not cover is refused by the client.
        assert!(handshake(config.clone(), &cert_pem, "example.com").is_err());
        assert!(handshake(config, &cert_pem, "10.9.9.9").is_err());
    }
}
