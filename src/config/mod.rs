//! The server's command line: raw flags → a validated [`Config`].
//!
//! Flags are accepted Go-style with one dash (`-http-port 9080`, `-http-port=9080`) and
//! with two (`--http-port 9080`). A bad flag or value is an [`Error::Usage`] with one line a
//! person can act on; `main` prints it and exits with status 2.

use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::http::access::AllowList;

/// The server's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Plain HTTP port; 0 disables the listener (`-http-port`, default 9080).
    pub http_port: u16,
    /// HTTPS port; 0 disables the listener (`-https-port`, default 9443).
    pub https_port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Extra names / addresses for a generated certificate (`-cert-hosts a,b`).
    pub cert_hosts: Vec<String>,
    pub http_allow: AllowList,
    pub https_allow: AllowList,
    pub admin_allow: AllowList,
    pub models: PathBuf,
    pub memory: PathBuf,
    pub sessions: PathBuf,
    pub workers: usize,
    pub queue: usize,
    pub log_level: log::LevelFilter,
    pub json_log: bool,
    /// How long in-flight requests may run on after SIGTERM (`-shutdown-grace`, seconds).
    pub shutdown_grace: Duration,
    /// Listen address for both ports; `[::]` (dual-stack) unless a test binds loopback.
    pub bind: std::net::IpAddr,
    /// The highest `timeout` a client may ask for (`-max-timeout`, seconds).
    pub max_timeout: Duration,
    /// Open connections from one address (one IPv6 /64) at a time; 0: no cap
    /// (`-max-conns-per-ip`).
    pub max_conns_per_ip: usize,
    /// Request bodies being read or handled at once, in bytes (`-max-body-total`, MiB).
    pub max_body_total: usize,
}

impl Default for Config {
    /// The design's defaults.
    fn default() -> Self {
        Config {
            http_port: 9080,
            https_port: 9443,
            cert: PathBuf::from(DEFAULT_CERT),
            key: PathBuf::from(DEFAULT_KEY),
            cert_hosts: Vec::new(),
            http_allow: default_list(DEFAULT_HTTP_ALLOW),
            https_allow: default_list(DEFAULT_HTTPS_ALLOW),
            admin_allow: default_list(DEFAULT_ADMIN_ALLOW),
            models: PathBuf::from(DEFAULT_MODELS),
            memory: PathBuf::from(DEFAULT_MEMORY),
            sessions: PathBuf::from(DEFAULT_SESSIONS),
            workers: 100,
            queue: 1024,
            log_level: log::LevelFilter::Info,
            json_log: false,
            shutdown_grace: Duration::from_secs(30),
            bind: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            max_timeout: crate::chat::request::DEFAULT_MAX_TIMEOUT,
            max_conns_per_ip: 64,
            max_body_total: 256 * MIB,
        }
    }
}

const DEFAULT_CERT: &str = "./certs/server.crt";
const DEFAULT_KEY: &str = "./certs/server.key";
const DEFAULT_HTTP_ALLOW: &str = "127.0.0.0/8,::1/128";
const DEFAULT_HTTPS_ALLOW: &str = "192.168.0.0/16,10.0.0.0/8";
const DEFAULT_ADMIN_ALLOW: &str = "127.0.0.0/8,::1/128";
const DEFAULT_MODELS: &str = "./models.csv";
const DEFAULT_MEMORY: &str = "./memory.json";
const DEFAULT_SESSIONS: &str = "./.sessions";

const WORKERS_MAX: u64 = 10_000;
/// The queue is a crossbeam array channel, allocated in full at start: each place holds a
/// request waiting for a worker (a few hundred bytes), so 16,384 places are about 5 MB.
const QUEUE_MAX: u64 = 16_384;
const GRACE_MAX_SECS: u64 = 3600;
/// A day: a local model on a small box may be slow, but not slower.
const MAX_TIMEOUT_MAX_SECS: u64 = 86_400;
const CONNS_PER_IP_MAX: u64 = 1_000_000;
const BODY_TOTAL_MAX_MIB: u64 = 1 << 20;
const MIB: usize = 1024 * 1024;

fn default_list(s: &str) -> AllowList {
    // The defaults are constants checked by a test; an empty list could only come from a typo.
    AllowList::parse(s).unwrap_or_default()
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// Parses the arguments after the program name.
///
/// Help and version are looked for first (before any `--`). Then the options that take a
/// value, then the switches `-q` and `-j`: pico-args pairs a key with whatever follows it,
/// so a value that looks like a flag (`-v -q`) is refused rather than taken. A repeated
/// option takes its last value, as Go's `flag` package does. Anything left over is an
/// unknown flag or a stray argument.
pub fn parse_args(args: Vec<OsString>) -> Result<Command, Error> {
    let args = go_style(args);
    for arg in args.iter().take_while(|a| *a != "--") {
        match arg.to_str() {
            Some("-h" | "--help") => return Ok(Command::Help),
            Some("--version") => return Ok(Command::Version),
            _ => {}
        }
    }

    let mut p = pico_args::Arguments::from_vec(args);
    let mut c = Config::default();

    if let Some(v) = text_value(&mut p, "--http-port")? {
        c.http_port = port("-http-port", &v)?;
    }
    if let Some(v) = text_value(&mut p, "--https-port")? {
        c.https_port = port("-https-port", &v)?;
    }
    if let Some(v) = path_value(&mut p, "--cert")? {
        c.cert = v;
    }
    if let Some(v) = path_value(&mut p, "--key")? {
        c.key = v;
    }
    if let Some(v) = text_value(&mut p, "--cert-hosts")? {
        c.cert_hosts = cert_hosts(&v)?;
    }
    if let Some(v) = text_value(&mut p, "--http-allow")? {
        c.http_allow = allow_list("-http-allow", &v, "-http-port 0")?;
    }
    if let Some(v) = text_value(&mut p, "--https-allow")? {
        c.https_allow = allow_list("-https-allow", &v, "-https-port 0")?;
    }
    if let Some(v) = text_value(&mut p, "--admin-allow")? {
        // Empty is allowed here: nobody may change the gateway's state.
        c.admin_allow = AllowList::parse(&v).map_err(|m| bad(format!("-admin-allow: {m}")))?;
    }
    if let Some(v) = path_value(&mut p, "--models")? {
        c.models = v;
    }
    if let Some(v) = path_value(&mut p, "--memory")? {
        c.memory = v;
    }
    if let Some(v) = path_value(&mut p, "--sessions")? {
        c.sessions = v;
    }
    numbers(&mut p, &mut c)?;
    if let Some(v) = text_value(&mut p, "-v")? {
        c.log_level = level("-v", &v)?;
    }
    if let Some(v) = text_value(&mut p, "--bind")? {
        c.bind = parse_ip(&v).ok_or_else(|| {
            bad(format!(
                "-bind: {} is not an IP address (e.g. :: or 127.0.0.1)",
                quote(&v)
            ))
        })?;
    }

    // Switches last, once every value has been taken.
    let mut quiet = false;
    while p.contains("-q") {
        quiet = true;
    }
    while p.contains("-j") {
        c.json_log = true;
    }
    if quiet {
        c.log_level = log::LevelFilter::Error;
    }

    if let Some(first) = p.finish().first() {
        let shown = first.to_string_lossy();
        return Err(if looks_like_flag(first) && first != "--" {
            bad(format!("unknown flag {} (see -h)", flag_name(&shown)))
        } else {
            bad(format!("unexpected argument {} (see -h)", quote(&shown)))
        });
    }
    Ok(Command::Run(Box::new(c)))
}

/// The numeric settings: pool, queue, grace and the limits of one request or client.
fn numbers(p: &mut pico_args::Arguments, c: &mut Config) -> Result<(), Error> {
    if let Some(v) = text_value(p, "--workers")? {
        c.workers = number("-workers", &v, 1, WORKERS_MAX)?;
    }
    if let Some(v) = text_value(p, "--queue")? {
        c.queue = number("-queue", &v, 1, QUEUE_MAX)?;
    }
    if let Some(v) = text_value(p, "--shutdown-grace")? {
        let secs = number("-shutdown-grace", &v, 0, GRACE_MAX_SECS)?;
        c.shutdown_grace = Duration::from_secs(secs as u64);
    }
    if let Some(v) = text_value(p, "--max-timeout")? {
        let secs = number("-max-timeout", &v, 1, MAX_TIMEOUT_MAX_SECS)?;
        c.max_timeout = Duration::from_secs(secs as u64);
    }
    if let Some(v) = text_value(p, "--max-conns-per-ip")? {
        c.max_conns_per_ip = number("-max-conns-per-ip", &v, 0, CONNS_PER_IP_MAX)?;
    }
    if let Some(v) = text_value(p, "--max-body-total")? {
        let mib = number("-max-body-total", &v, 1, BODY_TOTAL_MAX_MIB)?;
        c.max_body_total = mib.saturating_mul(MIB);
    }
    Ok(())
}

/// The `-h` text.
pub fn usage() -> String {
    let d = Config::default();
    format!(
        "\
sigorest {version}: an OpenAI-compatible LLM gateway for a home or office network.

Usage: sigorest [flags]

Flags (one dash or two; the value after a space or '='):
  -http-port N         plain HTTP port; 0 disables it (default {http})
  -https-port N        HTTPS port; 0 disables it (default {https})
  -bind ADDR           listen address for both ports
                       (default {bind}, that is every IPv4 and IPv6 address)
  -cert PATH           TLS certificate, PEM (default {cert})
  -key PATH            TLS private key, PEM (default {key});
                       when both files are missing, a self-signed pair is
                       generated and written there
  -cert-hosts LIST     extra host names / IP addresses, comma-separated, for a
                       generated certificate (localhost, 127.0.0.1, ::1 and the
                       host name are always in it)
  -http-allow CIDRS    who may use the HTTP port
                       (default {http_allow})
  -https-allow CIDRS   who may use the HTTPS port
                       (default {https_allow})
  -admin-allow CIDRS   who may change state, e.g. PUT /api/memory
                       (default {admin_allow}; empty: nobody)
  -models PATH         whitelist of cloud models (default {models})
  -memory PATH         memory block put first into every request
                       (default {memory})
  -sessions DIR        session files (default {sessions})
  -workers N           worker threads, 1-{workers_max} (default {workers})
  -queue N             requests that may wait for a worker, 1-{queue_max};
                       beyond that: 503 (default {queue})
  -shutdown-grace S    seconds in-flight requests may run on after SIGTERM,
                       0-{grace_max} (default {grace})
  -max-timeout S       the highest 'timeout' a request may ask for, in
                       seconds, 1-{max_timeout_max} (default {max_timeout})
  -max-conns-per-ip N  open connections from one address (an IPv6 /64) at
                       once; beyond: closed at once; 0: no cap (default {per_ip})
  -max-body-total MIB  request bodies in flight at once, all together; beyond:
                       503 overloaded (default {body_total}); a single body is
                       at most 32 MiB or this, whichever is smaller
  -v LEVEL             log level: debug, info, warn, error (or trace)
                       (default info)
  -q                   quiet: errors only (wins over -v)
  -j                   log JSON lines instead of text
  -version             print the version and exit
  -h, -help            print this help and exit

Environment:
  MAMMOUTH_API_KEY, MOONSHOT_API_KEY, ZAI_API_KEY
                       provider API keys; a provider without one answers 503
  MAMMOUTH_BASE_URL    default https://api.mammouth.ai/v1
  MOONSHOT_BASE_URL    default https://api.moonshot.ai/v1
  ZAI_BASE_URL         default https://api.z.ai/api/paas/v4
                       (each: the part of the URL before /chat/completions)
  OLLAMA_HOST          local Ollama server (default http://localhost:11434;
                       host:port accepted)

Files (the server runs without any; a file on disk wins over the built-in
default):
  models.csv           cloud short codes, separated by commas or newlines;
                       # starts a comment
  memory.json          {{\"content\": \"...\", \"cache\": true}};
                       replaced by PUT /api/memory
  <sessions>/<model>@<session_id>.json
                       session history: the last 20 messages, at most
                       2 MiB; at most 1000 sessions (oldest dropped)
  certs/server.crt, certs/server.key
                       TLS certificate and key (key mode 0600)

Logs go to stderr. A bad flag or value exits with status 2.
",
        version = crate::VERSION,
        http = d.http_port,
        https = d.https_port,
        bind = d.bind,
        cert = d.cert.display(),
        key = d.key.display(),
        http_allow = d.http_allow,
        https_allow = d.https_allow,
        admin_allow = d.admin_allow,
        models = d.models.display(),
        memory = d.memory.display(),
        sessions = d.sessions.display(),
        workers = d.workers,
        workers_max = WORKERS_MAX,
        queue = d.queue,
        queue_max = QUEUE_MAX,
        grace = d.shutdown_grace.as_secs(),
        grace_max = GRACE_MAX_SECS,
        max_timeout = d.max_timeout.as_secs(),
        max_timeout_max = MAX_TIMEOUT_MAX_SECS,
        per_ip = d.max_conns_per_ip,
        body_total = d.max_body_total / MIB,
    )
}

/// Rewrites Go-style flags for pico-args: `-long` → `--long`, `-long=v` → `--long v`,
/// `--long=v` → `--long v`; one-letter flags (`-v`, `-q`) and values are left alone. A lone
/// `-` and anything after `--` are left alone too. Shared with `sigoe`.
///
/// Also: `-v=x` → `-v x`, `--v` → `-v` (one letter with two dashes), and an argument that
/// reads as a negative number (`-1`, `-0.5`) is a value, not a flag. Arguments that are not
/// UTF-8, or that start with three dashes, are passed through unchanged (and end up
/// reported as unknown).
pub fn go_style(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut rest = args.into_iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(rest);
            break;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if !looks_like_flag(&arg) {
            out.push(arg);
            continue;
        }
        let body = s
            .strip_prefix("--")
            .or_else(|| s.strip_prefix('-'))
            .unwrap_or(s);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        if name.is_empty() || name.starts_with('-') {
            out.push(arg);
            continue;
        }
        let dashes = if name.chars().count() == 1 { "-" } else { "--" };
        out.push(OsString::from(format!("{dashes}{name}")));
        if let Some(v) = value {
            out.push(OsString::from(v));
        }
    }
    out
}

/// Whether an argument is meant as a flag: it starts with `-`, is not a lone `-` and is not
/// a negative number.
pub(crate) fn looks_like_flag(arg: &OsStr) -> bool {
    let bytes = arg.as_encoded_bytes();
    if bytes.len() < 2 || bytes[0] != b'-' {
        return false;
    }
    match arg.to_str() {
        Some(s) => !is_negative_number(s),
        None => true,
    }
}

fn is_negative_number(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('-') else {
        return false;
    };
    digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') && digits.parse::<f64>().is_ok()
}

/// `--http-port` → `-http-port`, the spelling the design and the help text use.
pub(crate) fn flag_name(key: &str) -> String {
    match key.strip_prefix("--") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('-') => format!("-{rest}"),
        _ => key.to_string(),
    }
}

/// A usage error; control characters are escaped so the message stays one line.
pub(crate) fn bad(message: String) -> Error {
    Error::Usage {
        message: one_line(&message),
    }
}

/// An argument as it may appear in a one-line message: in single quotes, control
/// characters escaped, long ones cut.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::from("'");
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The last value of a value option, raw; a value that looks like a flag is refused.
pub(crate) fn raw_value(
    p: &mut pico_args::Arguments,
    key: &'static str,
) -> Result<Option<OsString>, Error> {
    let flag = flag_name(key);
    let mut last = None;
    loop {
        let found = p.opt_value_from_os_str(key, |v| Ok::<_, Infallible>(v.to_os_string()));
        match found {
            Ok(Some(v)) if looks_like_flag(&v) => {
                return Err(bad(format!(
                    "{flag} needs a value (got the flag {})",
                    flag_name(&v.to_string_lossy())
                )));
            }
            Ok(Some(v)) => last = Some(v),
            Ok(None) => return Ok(last),
            Err(pico_args::Error::OptionWithoutAValue(_)) => {
                return Err(bad(format!("{flag} needs a value")));
            }
            Err(e) => return Err(bad(format!("{flag}: {e}"))),
        }
    }
}

pub(crate) fn text_value(
    p: &mut pico_args::Arguments,
    key: &'static str,
) -> Result<Option<String>, Error> {
    match raw_value(p, key)? {
        None => Ok(None),
        Some(v) => v.into_string().map(Some).map_err(|v| {
            bad(format!(
                "{}: {} is not valid UTF-8",
                flag_name(key),
                quote(&v.to_string_lossy())
            ))
        }),
    }
}

/// Paths may be any bytes the OS allows, but not empty.
pub(crate) fn path_value(
    p: &mut pico_args::Arguments,
    key: &'static str,
) -> Result<Option<PathBuf>, Error> {
    match raw_value(p, key)? {
        Some(v) if v.is_empty() => Err(bad(format!("{}: the path is empty", flag_name(key)))),
        v => Ok(v.map(PathBuf::from)),
    }
}

fn port(flag: &str, v: &str) -> Result<u16, Error> {
    v.trim().parse().map_err(|_| {
        bad(format!(
            "{flag}: {} is not a port number (0-65535)",
            quote(v)
        ))
    })
}

pub(crate) fn number(flag: &str, v: &str, min: u64, max: u64) -> Result<usize, Error> {
    match v.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => {
            usize::try_from(n).map_err(|_| bad(format!("{flag}: {} is too large", quote(v))))
        }
        _ => Err(bad(format!(
            "{flag}: {} is not a whole number from {min} to {max}",
            quote(v)
        ))),
    }
}

pub(crate) fn level(flag: &str, v: &str) -> Result<log::LevelFilter, Error> {
    use log::LevelFilter as L;
    match v.trim().to_ascii_lowercase().as_str() {
        "trace" => Ok(L::Trace),
        "debug" => Ok(L::Debug),
        "info" => Ok(L::Info),
        "warn" | "warning" => Ok(L::Warn),
        "error" => Ok(L::Error),
        _ => Err(bad(format!(
            "{flag}: {} is not a log level (debug, info, warn, error)",
            quote(v)
        ))),
    }
}

fn allow_list(flag: &str, v: &str, to_close: &str) -> Result<AllowList, Error> {
    let list = AllowList::parse(v).map_err(|m| bad(format!("{flag}: {}", one_line(&m))))?;
    if list.is_empty() {
        return Err(bad(format!(
            "{flag}: the list is empty, so nobody could connect; to close the port use {to_close}"
        )));
    }
    Ok(list)
}

fn cert_hosts(v: &str) -> Result<Vec<String>, Error> {
    let hosts: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    for h in &hosts {
        crate::http::tls::check_host(h).map_err(|_| {
            bad(format!(
                "-cert-hosts: {} is not a host name or IP address",
                quote(h)
            ))
        })?;
    }
    Ok(hosts)
}

fn parse_ip(v: &str) -> Option<IpAddr> {
    let v = v.trim();
    let inner = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(v);
    inner.parse().ok()
}

/// Control characters escaped, so a message from elsewhere stays on one line.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
