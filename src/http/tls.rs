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
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How long a generated certificate is valid: Apple's clients refuse server certificates
/// valid for more than 825 days.
pub const VALIDITY_DAYS: i64 = 825;

/// A generated certificate is renewed at start-up when it expires within this many days,
/// so a box restarted now and then never serves an expired one.
pub const RENEW_DAYS: i64 = 30;

/// Loads `cert` and `key` (PEM) into a rustls server configuration. When both files are
/// missing, first generates a self-signed ECDSA P-256 certificate for `localhost`,
/// `127.0.0.1`, `::1`, the host name and `extra_hosts` (names or IP addresses), valid from
/// yesterday for 825 days (Apple's limit), and writes both files atomically (key mode 0600)
/// with a record beside them ([`record_path`]) that says sigorest made them.
///
/// A certificate sigorest generated is generated again (a WARN line says why) when it does
/// not name all of those hosts, or expires within [`RENEW_DAYS`] days. A certificate the
/// user supplied is never written; a WARN line says when it expires within that time or
/// does not name an `extra_hosts` entry.
/// Exactly one missing, or a file that does not parse: [`Error::File`] naming it.
/// Returns the configuration and whether a certificate was written.
pub fn load_or_generate(
    cert: &Path,
    key: &Path,
    extra_hosts: &[String],
) -> Result<(Arc<rustls::ServerConfig>, bool), Error> {
    let names = cert_names(host_name().as_deref(), extra_hosts)?;
    load_or_generate_at(cert, key, &names, extra_hosts, unix_now())
}

/// [`load_or_generate`] for the certificate names `names` (from [`cert_names`]) at the
/// time `now` (Unix seconds): the clock is a parameter so that tests need not wait years.
fn load_or_generate_at(
    cert: &Path,
    key: &Path,
    names: &[String],
    extra_hosts: &[String],
    now: i64,
) -> Result<(Arc<rustls::ServerConfig>, bool), Error> {
    let cert_exists = exists(cert)?;
    let key_exists = exists(key)?;
    match (cert_exists, key_exists) {
        (true, true) => {}
        (false, false) => {
            write_generated(cert, key, names, now)?;
            log::info!(
                cert:% = cert.display(),
                key:% = key.display(),
                names = names.join(","),
                valid_days = VALIDITY_DAYS;
                "generated a self-signed TLS certificate"
            );
            return Ok((load(cert, key)?, true));
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
    }
    let cert_pem = std::fs::read(cert).map_err(|e| Error::io(cert, &e))?;
    let (origin, record) = origin(cert, &cert_pem);
    let renew = match origin {
        Origin::Supplied => {
            warn_about_supplied(cert, &cert_pem, extra_hosts, now);
            None
        }
        Origin::Generated | Origin::GeneratedBefore => {
            let recorded = record.as_ref().map_or(&[][..], |r| r.hosts.as_slice());
            why_renew(&cert_pem, names, recorded, now)
        }
    };
    if let Some(reason) = renew {
        renew_generated(cert, key, names, now, &reason)?;
        return Ok((load(cert, key)?, true));
    }
    match load(cert, key) {
        Ok(config) => Ok((config, false)),
        // Our own pair that does not load: a crash between writing the new key and the new
        // certificate leaves the old certificate with the new key. Nothing of the user's is
        // at stake, so a new pair beats refusing to start.
        Err(e) if origin != Origin::Supplied => {
            renew_generated(cert, key, names, now, &format!("it does not load: {e}"))?;
            Ok((load(cert, key)?, true))
        }
        Err(e) => Err(e),
    }
}

/// Who made the certificate on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// sigorest, as its record beside the certificate says (the record holds the
    /// certificate's SHA-256, so a certificate put in its place later is not taken for ours).
    Generated,
    /// sigorest, before it kept a record: self-signed, subject `CN=sigorest` only, valid for
    /// exactly [`VALIDITY_DAYS`] days. Also what a crash leaves between writing a new
    /// certificate and its record.
    GeneratedBefore,
    /// The user: any other certificate. It is never written.
    Supplied,
}

/// The record kept beside a generated certificate, as JSON. Only `cert_sha256` decides
/// anything (that the certificate is ours); the names and dates are checked in the
/// certificate itself, and are here for whoever reads the file.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    generated_by: String,
    cert_sha256: String,
    hosts: Vec<String>,
    not_after_unix: i64,
}

/// Where the record of a generated certificate lives: `<cert>.generated.json`.
pub fn record_path(cert: &Path) -> std::path::PathBuf {
    let mut name = cert.file_name().unwrap_or_default().to_os_string();
    name.push(".generated.json");
    cert.with_file_name(name)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER contents of the subject (and issuer) sigorest gives its certificates:
/// one RDN, `CN=sigorest` as a UTF8String.
const SIGOREST_NAME: &[u8] = &[
    0x31, 0x11, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x08, b's', b'i', b'g', b'o', b'r',
    b'e', b's', b't',
];

/// Who made the certificate, and its record when sigorest made it and kept one.
fn origin(cert: &Path, cert_pem: &[u8]) -> (Origin, Option<Record>) {
    let record = std::fs::read(record_path(cert))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
        .filter(|r| r.cert_sha256 == sha256_hex(cert_pem));
    if record.is_some() {
        return (Origin::Generated, record);
    }
    let made_by_us_before = first_cert(cert_pem).is_some_and(|der| {
        super::x509::cert_facts(&der).is_some_and(|f| {
            f.subject == SIGOREST_NAME
                && f.issuer == SIGOREST_NAME
                && f.not_after - f.not_before == VALIDITY_DAYS * 86_400
        })
    });
    if made_by_us_before {
        (Origin::GeneratedBefore, None)
    } else {
        (Origin::Supplied, None)
    }
}

fn first_cert(cert_pem: &[u8]) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(cert_pem).next()?.ok()
}

/// The names of `wanted` that the certificate does not cover, as a TLS client would judge
/// them (rustls' own check). A wildcard entry (`*.lan`) counts as covered when a name under
/// it is. `recorded` is given for a certificate sigorest made: the names it was made for
/// (empty when it kept no record) count as covered, and a name rustls cannot check
/// (`*.lan`, which clients refuse as too wide; a host name with `_`) as missing unless it
/// is one of them, so that such a name costs one renewal, not one per start. For a
/// certificate the user supplied (`None`), such a name is not reported. `None` when the
/// certificate does not parse.
fn names_missing(
    der: &CertificateDer<'_>,
    wanted: &[String],
    recorded: Option<&[String]>,
) -> Option<Vec<String>> {
    use rustls::pki_types::ServerName;
    let parsed = rustls::server::ParsedCertificate::try_from(der).ok()?;
    let missing = wanted
        .iter()
        .filter(|name| {
            if recorded.is_some_and(|r| r.contains(name)) {
                return false;
            }
            let probe = match name.strip_prefix("*.") {
                Some(domain) => format!("sigorest-probe.{domain}"),
                None => name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            };
            match ServerName::try_from(probe) {
                Ok(n) => rustls::client::verify_server_name(&parsed, &n).is_err(),
                Err(_) => recorded.is_some(),
            }
        })
        .cloned()
        .collect();
    Some(missing)
}

/// `2026-11-21` for Unix seconds.
fn date(unix: i64) -> String {
    let (y, m, d) = crate::logging::civil_from_days(unix.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Why a generated certificate must be made again, if it must: a name missing, or an
/// expiry within [`RENEW_DAYS`] days. A certificate that does not even parse is renewed too
/// (it is ours, and unusable).
fn why_renew(cert_pem: &[u8], names: &[String], recorded: &[String], now: i64) -> Option<String> {
    let Some(der) = first_cert(cert_pem) else {
        return Some("it does not parse".to_string());
    };
    let (Some(facts), Some(missing)) = (
        super::x509::cert_facts(&der),
        names_missing(&der, names, Some(recorded)),
    ) else {
        return Some("it does not parse".to_string());
    };
    let mut reasons = Vec::new();
    if !missing.is_empty() {
        reasons.push(format!("it does not name {}", missing.join(",")));
    }
    if facts.not_after <= now {
        reasons.push(format!("it expired on {}", date(facts.not_after)));
    } else if facts.not_after <= now + RENEW_DAYS * 86_400 {
        reasons.push(format!("it expires on {}", date(facts.not_after)));
    }
    (!reasons.is_empty()).then(|| reasons.join(" and "))
}

/// The start-up warnings for a certificate the user supplied: expired or expiring soon, or
/// not naming a host asked for with `-cert-hosts`. Nothing is written.
fn warn_about_supplied(cert: &Path, cert_pem: &[u8], extra_hosts: &[String], now: i64) {
    // A file that does not parse is reported by `load` as an error; nothing to add here.
    let Some(der) = first_cert(cert_pem) else {
        return;
    };
    if let Some(facts) = super::x509::cert_facts(&der) {
        if facts.not_after <= now {
            log::warn!(
                cert:% = cert.display(),
                not_after = date(facts.not_after);
                "the TLS certificate has expired: HTTPS clients will refuse it; \
                 it was not generated by sigorest, so it is left alone: renew it, or remove \
                 it and its key to have a self-signed pair generated"
            );
        } else if facts.not_after <= now + RENEW_DAYS * 86_400 {
            log::warn!(
                cert:% = cert.display(),
                not_after = date(facts.not_after);
                "the TLS certificate expires soon; it was not generated by sigorest, \
                 so it is left alone: renew it"
            );
        }
    }
    let wanted: Vec<String> = extra_hosts
        .iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if let Some(missing) = names_missing(&der, &wanted, None).filter(|m| !m.is_empty()) {
        log::warn!(
            cert:% = cert.display(),
            missing = missing.join(",");
            "the TLS certificate does not name every -cert-hosts entry: clients using those \
             names will refuse it; it was not generated by sigorest, so it is left alone \
             (-cert-hosts only shapes a generated certificate)"
        );
    }
}

/// Generates a new pair for `names` and writes it: key (0600), certificate, then the
/// record. Each write is atomic; a crash between them is recognised at the next start (see
/// [`Origin`]).
fn write_generated(cert: &Path, key: &Path, names: &[String], now: i64) -> Result<(), Error> {
    let (cert_pem, key_pem, not_after) = generate_at(names, now)?;
    crate::util::fs::write_atomic(key, key_pem.as_bytes(), Some(0o600))
        .map_err(|e| Error::io(key, &e))?;
    crate::util::fs::write_atomic(cert, cert_pem.as_bytes(), Some(0o644))
        .map_err(|e| Error::io(cert, &e))?;
    let record = Record {
        generated_by: "sigorest".to_string(),
        cert_sha256: sha256_hex(cert_pem.as_bytes()),
        hosts: names.to_vec(),
        not_after_unix: not_after,
    };
    let mut json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Internal {
        message: format!("certificate record: {e}"),
    })?;
    json.push(b'\n');
    let path = record_path(cert);
    crate::util::fs::write_atomic(&path, &json, Some(0o644)).map_err(|e| Error::io(&path, &e))
}

fn renew_generated(
    cert: &Path,
    key: &Path,
    names: &[String],
    now: i64,
    reason: &str,
) -> Result<(), Error> {
    write_generated(cert, key, names, now)?;
    log::warn!(
        cert:% = cert.display(),
        key:% = key.display(),
        names = names.join(","),
        valid_days = VALIDITY_DAYS;
        "generated a new self-signed TLS certificate because the one sigorest had made \
         before no longer fits: {reason}; clients that trust the old one (curl --cacert, \
         sigoe -cacert, NODE_EXTRA_CA_CERTS) need a copy of the new {}",
        cert.display()
    );
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
    let (cert, key, _) = generate_at(names, unix_now())?;
    Ok((cert, key))
}

/// A self-signed pair for `names` made at `now` (Unix seconds): certificate PEM, key PEM
/// and the certificate's `not_after`.
fn generate_at(names: &[String], now: i64) -> Result<(String, String, i64), Error> {
    let params = cert_params(names, u64::try_from(now).unwrap_or(0))?;
    let not_after = params.not_after.unix_timestamp();
    let internal = |e: rcgen::Error| Error::Internal {
        message: format!("generating the TLS certificate: {e}"),
    };
    let key = KeyPair::generate().map_err(internal)?;
    let cert = params.self_signed(&key).map_err(internal)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
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
        let (_, written) = load_or_generate_at(&cert, &key, &names, &[], NOW).unwrap();
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
            let (_, written) = load_or_generate_at(&cert, &key, &names, &[], now).unwrap();
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
        let (config, written) = load_or_generate_at(&cert, &key, &names, &extra, NOW).unwrap();
        assert!(written);
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
                .1
        );
        // A wildcard entry is covered by a wildcard name, and only by one.
        let wild = cert_names(None, &strings(&["*.lan"])).unwrap();
        assert!(load_or_generate_at(&cert, &key, &wild, &[], NOW).unwrap().1);
        assert!(!load_or_generate_at(&cert, &key, &wild, &[], NOW).unwrap().1);
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
                .1
        );
        // Within 30 days of its end: renewed, and the new one runs 825 days from now.
        let later = not_after - RENEW_DAYS * DAY + 60;
        let reason = why_renew(&read(&cert), &names, &[], later).unwrap();
        assert!(reason.starts_with("it expires on "), "{reason}");
        assert!(
            load_or_generate_at(&cert, &key, &names, &[], later)
                .unwrap()
                .1
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
                .1
        );
        assert!(
            !load_or_generate_at(&cert, &key, &names, &[], much_later)
                .unwrap()
                .1
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
                .1
        );
        assert!(!record_path(&cert).exists());
        let more = cert_names(None, &strings(&["box.lan"])).unwrap();
        assert!(load_or_generate_at(&cert, &key, &more, &[], NOW).unwrap().1);
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
                .1
        );
        assert!(
            !load_or_generate_at(&cert, &key, &names, &[], NOW)
                .unwrap()
                .1
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
            let (_, written) = load_or_generate_at(&cert, &key, &names, &extra, now).unwrap();
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
}
