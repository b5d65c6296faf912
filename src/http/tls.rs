//! TLS for the HTTPS listener: load the certificate and key, or generate a self-signed pair
//! on first start; while the server runs, [`ServedCert`] presents the pair in use and
//! replaces it when a check (SIGHUP, daily) renews it or finds new files.
//!
//! No process-wide rustls crypto provider is installed: the configuration is built with the
//! ring provider explicitly, so nothing depends on what else in the binary picked one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use super::access::ipv4_fault;
use crate::error::Error;
use crate::util::fs::without_bom;

/// How long a generated certificate is valid: Apple's clients refuse server certificates
/// valid for more than 825 days.
pub const VALIDITY_DAYS: i64 = 825;

/// A generated certificate is renewed at start-up when it expires within this many days,
/// so a box restarted now and then never serves an expired one.
pub const RENEW_DAYS: i64 = 30;

/// Loads `cert` and `key` (PEM) into a certificate ready to serve. When both files are
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
pub fn load_or_generate(cert: &Path, key: &Path, extra_hosts: &[String]) -> Result<Loaded, Error> {
    let names = cert_names(host_name().as_deref(), extra_hosts)?;
    load_or_generate_at(cert, key, &names, extra_hosts, unix_now())
}

/// The directory a generated pair may be created in when it is missing: `certs` in the
/// working directory, where the default `-cert` and `-key` point.
const DEFAULT_DIR: &str = "certs";

/// At start-up, before [`ServedCert::load_or_generate`]: an [`Error::File`] naming `cert`
/// or `key` when the directory it is in does not exist (or is not a directory), unless that
/// is the default `certs`. A mistyped `-cert` would otherwise get a directory tree created
/// and a new self-signed pair in it, without a word; the checks on SIGHUP and once a day
/// still create what they must (the directory existed at start).
pub fn check_dirs(cert: &Path, key: &Path) -> Result<(), Error> {
    for path in [cert, key] {
        let dir = crate::util::fs::parent_dir(path);
        let default = dir.strip_prefix(".").unwrap_or(dir) == Path::new(DEFAULT_DIR);
        let why = match std::fs::metadata(dir) {
            _ if default => continue,
            Ok(m) if m.is_dir() => continue,
            Ok(_) => "is not a directory",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
            // Unreadable: the load that follows says what is wrong with the file itself.
            Err(_) => continue,
        };
        return Err(file_error(
            path,
            format!(
                "the directory {} {why}; sigorest creates only ./{DEFAULT_DIR} (the default), \
                 so create it or correct the path",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// [`load_or_generate`] for the certificate names `names` (from [`cert_names`]) at the
/// time `now` (Unix seconds): the clock is a parameter so that tests need not wait years.
fn load_or_generate_at(
    cert: &Path,
    key: &Path,
    names: &[String],
    extra_hosts: &[String],
    now: i64,
) -> Result<Loaded, Error> {
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
            return Ok(load(cert, key)?.written());
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
    let cert_pem = read_pem(cert)?;
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
        return Ok(load(cert, key)?.written());
    }
    match load(cert, key) {
        Ok(loaded) => Ok(loaded),
        // Our own pair that does not load: a crash between writing the new key and the new
        // certificate leaves the old certificate with the new key. Nothing of the user's is
        // at stake, so a new pair beats refusing to start.
        Err(e) if origin != Origin::Supplied => {
            renew_generated(cert, key, names, now, &format!("it does not load: {e}"))?;
            Ok(load(cert, key)?.written())
        }
        Err(e) => Err(e),
    }
}

/// A certificate chain and its key, read from the files and checked against each other.
#[derive(Debug)]
pub struct Loaded {
    certified: Arc<CertifiedKey>,
    /// The SHA-256 of the two files as they were read: whether they changed since.
    files: [u8; 32],
    /// Whether sigorest wrote the files first (a pair generated or renewed).
    pub written: bool,
}

impl Loaded {
    fn written(mut self) -> Loaded {
        self.written = true;
        self
    }

    /// The certificate's end date (Unix seconds), when it can be read.
    fn not_after(&self) -> Option<i64> {
        let der = self.certified.cert.first()?;
        Some(super::x509::cert_facts(der)?.not_after)
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
    use crate::util::digest::{hex, sha256};
    hex(&sha256(bytes))
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
    i64::try_from(crate::util::unix_now()).unwrap_or(i64::MAX)
}

/// A self-signed certificate and key as PEM text, for the hosts given (plus the defaults
/// above).
pub fn generate(extra_hosts: &[String]) -> Result<(String, String), Error> {
    generate_for(&cert_names(host_name().as_deref(), extra_hosts)?)
}

/// Whether `s` can go into a certificate as a name: an IP address (brackets allowed) or a
/// DNS name (letters, digits, `-`, `_`, `.`, an optional leading `*.`). Text of digits and
/// dots only must be an IPv4 address (see [`ipv4_fault`]). The error is the reason, to
/// follow the quoted entry in a message.
pub fn check_host(s: &str) -> Result<(), String> {
    if parse_ip(s).is_some() {
        return Ok(());
    }
    if let Some(why) = ipv4_fault(s) {
        return Err(why);
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
        Err("is not a host name or IP address".to_string())
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
        check_host(h).map_err(|why| Error::Usage {
            message: format!("-cert-hosts: '{h}' {why}"),
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

/// A PEM file's bytes, without the UTF-8 byte order mark a Windows editor may put first
/// (OpenSSL reads past it; the PEM parser would not find the first `BEGIN` line). Only from
/// a regular file of at most 1 MiB (a chain is a few KiB), so that a FIFO or a device in
/// its place never holds up a start, a SIGHUP or the daily check.
fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    crate::util::fs::read_config(path, 1 << 20)
        .map(without_bom)
        .map_err(|e| Error::io(path, &e))
}

/// Reads both PEM files into a certificate chain and the key that goes with it.
fn load(cert: &Path, key: &Path) -> Result<Loaded, Error> {
    let cert_pem = read_pem(cert)?;
    let key_pem = read_pem(key)?;
    warn_if_readable_by_others(key);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, format!("not a PEM certificate: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(
            cert,
            "no PEM certificate (BEGIN CERTIFICATE) in the file".to_string(),
        ));
    };
    // The certificate is parsed alone first (as the pairing below parses it): pairing a
    // broken one with the key fails too, and would blame the key.
    if let Err(e) = rustls::server::ParsedCertificate::try_from(leaf) {
        let why = match e {
            rustls::Error::InvalidCertificate(e) => format!("{e:?}"),
            e => e.to_string(),
        };
        return Err(file_error(
            cert,
            format!("the first certificate in the file is not a valid X.509 certificate ({why})"),
        ));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_error(key, format!("not a PEM private key: {e}")))?;
    // Parses the key with the ring provider and checks it against the certificate's public
    // key, as `with_single_cert` does.
    let certified = CertifiedKey::from_der(
        chain,
        private_key,
        &rustls::crypto::ring::default_provider(),
    )
    .map_err(|e| {
        file_error(
            key,
            format!("unusable with the certificate {}: {e}", cert.display()),
        )
    })?;
    let files = {
        use crate::util::digest::sha256;
        let mut both = sha256(&cert_pem).to_vec();
        both.extend_from_slice(&sha256(&key_pem));
        sha256(&both)
    };
    Ok(Loaded {
        certified: Arc::new(certified),
        files,
        written: false,
    })
}

/// How often a running server checks its certificate, besides on SIGHUP: well within
/// [`RENEW_DAYS`], so a generated certificate is renewed weeks before it ends.
pub const CHECK_EVERY: Duration = Duration::from_secs(86_400);

/// The certificate the HTTPS listener presents, replaceable while it runs. It is the
/// listener's rustls certificate resolver: a handshake takes the pair in use when it starts
/// and its connection keeps it to the end, so a new pair reaches new handshakes only.
///
/// [`ServedCert::check`] (on SIGHUP, and every [`CHECK_EVERY`] once
/// [`ServedCert::start_checks`] ran) goes through the start-up logic of [`load_or_generate`]
/// again: a generated certificate that needs it is renewed, changed files are loaded. When
/// that fails, the pair in use stays: a broken file never takes HTTPS down.
pub struct ServedCert {
    cert: PathBuf,
    key: PathBuf,
    extra_hosts: Vec<String>,
    in_use: RwLock<InUse>,
    /// Held through a check, so that a SIGHUP's and the daily one never write the files at
    /// the same time.
    checking: Mutex<()>,
    /// The thread of the daily checks; dropping the sender ends it at once.
    checker: Mutex<Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>>,
}

/// The pair handshakes get, and the fingerprint of the files it was read from.
struct InUse {
    certified: Arc<CertifiedKey>,
    files: [u8; 32],
}

impl std::fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.read_in_use().certified))
    }
}

impl ServedCert {
    /// [`load_or_generate`] at start-up: the certificate to serve, and what to check later.
    pub fn load_or_generate(
        cert: &Path,
        key: &Path,
        extra_hosts: &[String],
    ) -> Result<Arc<ServedCert>, Error> {
        let loaded = load_or_generate(cert, key, extra_hosts)?;
        Ok(ServedCert::serving(cert, key, extra_hosts, loaded))
    }

    fn serving(cert: &Path, key: &Path, extra_hosts: &[String], loaded: Loaded) -> Arc<Self> {
        Arc::new(ServedCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            extra_hosts: extra_hosts.to_vec(),
            in_use: RwLock::new(InUse {
                certified: loaded.certified,
                files: loaded.files,
            }),
            checking: Mutex::new(()),
            checker: Mutex::new(None),
        })
    }

    /// The listener's configuration: TLS 1.2 and 1.3, ALPN `http/1.1`, this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, Error> {
        config_with(Arc::clone(self) as Arc<dyn rustls::server::ResolvesServerCert>).map_err(|e| {
            Error::Internal {
                message: format!("TLS configuration: {e}"),
            }
        })
    }

    fn read_in_use(&self) -> std::sync::RwLockReadGuard<'_, InUse> {
        // Only whole values are stored; a panic elsewhere cannot leave one half-written.
        self.in_use.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the start-up logic again, now: renews a generated certificate that needs it,
    /// loads the files when they changed, and puts the result in use for new handshakes (an
    /// INFO line with its end date). Returns whether a new certificate is in use; on an
    /// error the one in use stays.
    pub fn check(&self) -> Result<bool, Error> {
        let names = cert_names(host_name().as_deref(), &self.extra_hosts)?;
        self.check_at(&names, unix_now())
    }

    /// [`ServedCert::check`] for the certificate names `names` at the time `now`.
    fn check_at(&self, names: &[String], now: i64) -> Result<bool, Error> {
        let _one_at_a_time = crate::util::lock(&self.checking);
        let loaded = load_or_generate_at(&self.cert, &self.key, names, &self.extra_hosts, now)?;
        if loaded.files == self.read_in_use().files {
            return Ok(false);
        }
        let not_after = loaded.not_after().map_or("unknown".to_string(), date);
        *self.in_use.write().unwrap_or_else(|e| e.into_inner()) = InUse {
            certified: loaded.certified,
            files: loaded.files,
        };
        log::info!(
            cert:% = self.cert.display(),
            not_after = not_after;
            "a new TLS certificate is in use for new connections"
        );
        Ok(true)
    }

    /// [`ServedCert::check`], logging a failure (ERROR) instead of returning it.
    pub fn check_logged(&self) {
        if let Err(e) = self.check() {
            log::error!(
                cert:% = self.cert.display(),
                error:% = e;
                "cannot check or load the TLS certificate; new connections keep getting the \
                 one in use"
            );
        }
    }

    /// Starts checking every [`CHECK_EVERY`] on a thread of its own, until
    /// [`ServedCert::stop_checks`] (or until the certificate is dropped). Calling it twice
    /// starts one thread.
    pub fn start_checks(self: &Arc<Self>) {
        self.start_checks_every(CHECK_EVERY);
    }

    fn start_checks_every(self: &Arc<Self>, every: Duration) {
        let mut checker = crate::util::lock(&self.checker);
        if checker.is_some() {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        // A weak reference: the sender lives in `self`, so a dropped certificate ends the
        // thread at once.
        let served = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("cert-check".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(every)
                {
                    match served.upgrade() {
                        Some(s) => s.check_logged(),
                        None => return,
                    }
                }
            });
        match spawned {
            Ok(handle) => *checker = Some((tx, handle)),
            Err(e) => log::error!(
                error:% = e;
                "cannot start the daily TLS certificate check; the certificate is checked on \
                 SIGHUP only"
            ),
        }
    }

    /// Ends the daily checks and waits for their thread (a check in progress finishes).
    pub fn stop_checks(&self) {
        let checker = crate::util::lock(&self.checker).take();
        if let Some((tx, handle)) = checker {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// A server configuration (TLS 1.2 and 1.3 with the ring provider, ALPN `http/1.1`) that
/// presents the certificate `resolver` gives.
fn config_with(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // The gateway speaks HTTP/1.1 only; saying so stops clients from trying h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`config_with`] for one fixed certificate chain and key (tests of TLS clients).
#[cfg(test)]
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)?;
    config_with(Arc::new(rustls::sign::SingleCertAndKey::from(certified)))
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
#[path = "tls_tests.rs"]
mod tests;
