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

mod routing;

pub use routing::Routing;
mod llama;

pub use llama::{LlamaConfig, LlamaTiming, split_args};
mod usage;

pub use usage::usage;

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
    /// Who may read `/metrics` and `/api/usage` (`-metrics-allow`); `None`: `admin_allow`.
    pub metrics_allow: Option<AllowList>,
    pub models: PathBuf,
    pub memory: PathBuf,
    pub sessions: PathBuf,
    /// Client keys (`-keys`); when the file does not exist, keys are not required.
    pub keys: PathBuf,
    /// Requests a minute per client address (`-ip-rate`); 0: no per-IP limit.
    pub ip_rate: u32,
    /// The per-IP bucket's size (`-ip-burst`); 0: ten seconds' worth of `ip_rate`.
    pub ip_burst: u32,
    /// The usage totals' file (`-usage-file`); `None`: `usage.json` in the sessions directory.
    pub usage_file: Option<PathBuf>,
    /// How often, at most, the usage file is written (`-usage-flush`, seconds).
    pub usage_flush: Duration,
    pub workers: usize,
    pub queue: usize,
    pub log_level: log::LevelFilter,
    pub json_log: bool,
    /// How long in-flight requests may run on after SIGTERM (`-shutdown-grace`, seconds).
    pub shutdown_grace: Duration,
    /// Listen address for both ports; `[::]` (dual-stack) unless a test binds loopback.
    pub bind: std::net::IpAddr,
    /// `-fallback` and `-auto`.
    pub routing: Routing,
    /// A local `llama-server` to supervise (`-llama-server`, `-llama-model`, ...).
    pub llama: Option<LlamaConfig>,
    /// The highest `timeout` a client may ask for (`-max-timeout`, seconds).
    pub max_timeout: Duration,
    /// After this long without an event from the provider, a stream being relayed gets a
    /// keep-alive (`-stream-keepalive`, seconds; zero: never).
    pub stream_keepalive: Duration,
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
            metrics_allow: None,
            models: PathBuf::from(DEFAULT_MODELS),
            memory: PathBuf::from(DEFAULT_MEMORY),
            sessions: PathBuf::from(DEFAULT_SESSIONS),
            keys: PathBuf::from(DEFAULT_KEYS),
            ip_rate: 0,
            ip_burst: 0,
            usage_file: None,
            usage_flush: Duration::from_secs(DEFAULT_USAGE_FLUSH_SECS),
            workers: 100,
            queue: 1024,
            log_level: log::LevelFilter::Info,
            json_log: false,
            shutdown_grace: Duration::from_secs(30),
            bind: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            routing: Routing::default(),
            llama: None,
            max_timeout: crate::chat::request::DEFAULT_MAX_TIMEOUT,
            stream_keepalive: DEFAULT_STREAM_KEEPALIVE,
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
const DEFAULT_KEYS: &str = "./keys.csv";

const DEFAULT_USAGE_FLUSH_SECS: u64 = 10;
/// The usage file's name in the sessions directory (session files always hold a `-`).
const USAGE_FILE_NAME: &str = "usage.json";

const WORKERS_MAX: u64 = 10_000;
const USAGE_FLUSH_MAX_SECS: u64 = 3600;
/// Each request waiting for a place holds its read request (a few hundred bytes and its
/// body) and a connection task, so 16,384 waiting are about 5 MB beyond their bodies.
const QUEUE_MAX: u64 = 16_384;
/// A day: a local model on a small box may be slow, but not slower.
const MAX_TIMEOUT_MAX_SECS: u64 = 86_400;
/// `-stream-keepalive` by default: well inside the idle timeouts of common proxies (60 s).
const DEFAULT_STREAM_KEEPALIVE: Duration = Duration::from_secs(15);
const STREAM_KEEPALIVE_MAX_SECS: u64 = 3600;
const CONNS_PER_IP_MAX: u64 = 1_000_000;
const BODY_TOTAL_MAX_MIB: u64 = 1 << 20;
const MIB: usize = 1024 * 1024;
const GRACE_MAX_SECS: u64 = 3600;
const IP_RATE_MAX: u64 = 1_000_000;

impl Config {
    /// Who may read `/metrics` and `/api/usage`: `-metrics-allow`, else `-admin-allow`.
    pub fn metrics_allow(&self) -> AllowList {
        self.metrics_allow
            .clone()
            .unwrap_or_else(|| self.admin_allow.clone())
    }

    /// The usage file: `-usage-file`, else `usage.json` in the sessions directory.
    pub fn usage_path(&self) -> PathBuf {
        self.usage_file
            .clone()
            .unwrap_or_else(|| self.sessions.join(USAGE_FILE_NAME))
    }
}

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

/// The flags that take no value (but may be given `=true` or `=false`, as in Go).
const SWITCHES: &[&str] = &["q", "j", "version"];

/// Parses the arguments after the program name.
///
/// Help and version are looked for first (before any `--`). Then the options that take a
/// value, then the switches `-q` and `-j`: pico-args pairs a key with whatever follows it,
/// so a value that looks like a flag (`-v -q`) is refused rather than taken. A repeated
/// option takes its last value, as Go's `flag` package does. Anything left over is an
/// unknown flag or a stray argument.
pub fn parse_args(args: Vec<OsString>) -> Result<Command, Error> {
    let args = go_style(switch_values(args, SWITCHES)?);
    if let Some(command) = help_or_version(&args) {
        return Ok(command);
    }
    let mut p = pico_args::Arguments::from_vec(args);
    let mut c = Config {
        // First: the value of -llama-args may look like any other flag.
        llama: llama::parse(&mut p)?,
        ..Config::default()
    };
    listener_flags(&mut p, &mut c)?;
    file_flags(&mut p, &mut c)?;
    capacity_flags(&mut p, &mut c)?;
    request_limit_flags(&mut p, &mut c)?;
    client_limit_flags(&mut p, &mut c)?;
    routing_flags(&mut p, &mut c)?;
    metrics_flags(&mut p, &mut c)?;
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
    if c.http_port == 0 && c.https_port == 0 {
        return Err(bad(
            "-http-port 0 and -https-port 0: nothing to serve (give one a port)".into(),
        ));
    }
    Ok(Command::Run(Box::new(c)))
}

/// `-h` or `-version` anywhere before `--` (but not as the value of `-llama-args`).
fn help_or_version(args: &[OsString]) -> Option<Command> {
    let mut after_raw_key = false;
    for arg in args.iter().take_while(|a| *a != "--") {
        if std::mem::replace(&mut after_raw_key, arg == llama::RAW_VALUE_KEY) {
            continue;
        }
        match arg.to_str() {
            Some("-h" | "--help") => return Some(Command::Help),
            Some("--version") => return Some(Command::Version),
            _ => {}
        }
    }
    None
}

/// Ports, address, TLS files and allow lists.
fn listener_flags(p: &mut pico_args::Arguments, c: &mut Config) -> Result<(), Error> {
    if let Some(v) = text_value(p, "--http-port")? {
        c.http_port = port("-http-port", &v)?;
    }
    if let Some(v) = text_value(p, "--https-port")? {
        c.https_port = port("-https-port", &v)?;
    }
    if let Some(v) = text_value(p, "--bind")? {
        c.bind = parse_ip(&v).ok_or_else(|| match crate::http::access::ipv4_fault(v.trim()) {
            Some(why) => bad(format!("-bind: {} {why}", quote(&v))),
            None => bad(format!(
                "-bind: {} is not an IP address (e.g. :: or 127.0.0.1)",
                quote(&v)
            )),
        })?;
    }
    if let Some(v) = path_value(p, "--cert")? {
        c.cert = v;
    }
    if let Some(v) = path_value(p, "--key")? {
        c.key = v;
    }
    if let Some(v) = text_value(p, "--cert-hosts")? {
        c.cert_hosts = cert_hosts(&v)?;
    }
    if let Some(v) = text_value(p, "--http-allow")? {
        c.http_allow = allow_list("-http-allow", &v, "-http-port 0")?;
    }
    if let Some(v) = text_value(p, "--https-allow")? {
        c.https_allow = allow_list("-https-allow", &v, "-https-port 0")?;
    }
    if let Some(v) = text_value(p, "--admin-allow")? {
        // Empty is allowed here: nobody may change the gateway's state.
        c.admin_allow = AllowList::parse(&v).map_err(|m| bad(format!("-admin-allow: {m}")))?;
    }
    Ok(())
}

/// The files and directories the gateway reads.
fn file_flags(p: &mut pico_args::Arguments, c: &mut Config) -> Result<(), Error> {
    if let Some(v) = path_value(p, "--models")? {
        c.models = v;
    }
    if let Some(v) = path_value(p, "--memory")? {
        c.memory = v;
    }
    if let Some(v) = path_value(p, "--sessions")? {
        c.sessions = v;
    }
    if let Some(v) = path_value(p, "--keys")? {
        c.keys = v;
    }
    Ok(())
}

/// Workers, queue, shutdown grace and the log level.
fn capacity_flags(p: &mut pico_args::Arguments, c: &mut Config) -> Result<(), Error> {
    if let Some(v) = text_value(p, "--workers")? {
        c.workers = number("-workers", &v, 1, WORKERS_MAX)?;
    }
    if let Some(v) = text_value(p, "--queue")? {
        c.queue = number("-queue", &v, 1, QUEUE_MAX)?;
    }
    if let Some(v) = text_value(p, "-v")? {
        c.log_level = level("-v", &v)?;
    }
    if let Some(v) = text_value(p, "--shutdown-grace")? {
        let secs = number("-shutdown-grace", &v, 0, GRACE_MAX_SECS)?;
        c.shutdown_grace = Duration::from_secs(secs as u64);
    }
    Ok(())
}

/// `-ip-rate` and `-ip-burst`; a burst without a rate is a mistake worth saying.
fn client_limit_flags(p: &mut pico_args::Arguments, c: &mut Config) -> Result<(), Error> {
    let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    if let Some(v) = text_value(p, "--ip-rate")? {
        c.ip_rate = as_u32(number("-ip-rate", &v, 0, IP_RATE_MAX)?);
    }
    if let Some(v) = text_value(p, "--ip-burst")? {
        c.ip_burst = as_u32(number("-ip-burst", &v, 1, IP_RATE_MAX)?);
        if c.ip_rate == 0 {
            return Err(bad(
                "-ip-burst needs -ip-rate N (requests a minute per client address)".to_string(),
            ));
        }
    }
    Ok(())
}

/// `-fallback` and `-auto`.
fn routing_flags(p: &mut pico_args::Arguments, c: &mut Config) -> Result<(), Error> {
    if let Some(v) = text_value(p, "--fallback")? {
        c.routing.fallbacks = routing::parse_fallbacks(&v)?;
    }
    if let Some(v) = text_value(p, "--auto")? {
        c.routing.auto = routing::parse_auto(&v)?;
    }
    Ok(())
}

/// `-metrics-allow`, `-usage-file`, `-usage-flush`.
fn metrics_flags(p: &mut pico_args::Arguments, c: &mut Config) -> Result<(), Error> {
    if let Some(v) = text_value(p, "--metrics-allow")? {
        // Empty is allowed: nobody may read the metrics.
        c.metrics_allow =
            Some(AllowList::parse(&v).map_err(|m| bad(format!("-metrics-allow: {m}")))?);
    }
    if let Some(v) = path_value(p, "--usage-file")? {
        c.usage_file = Some(v);
    }
    if let Some(v) = text_value(p, "--usage-flush")? {
        let secs = number("-usage-flush", &v, 1, USAGE_FLUSH_MAX_SECS)?;
        c.usage_flush = Duration::from_secs(secs as u64);
    }
    Ok(())
}

/// The limits of one request or client: `-max-timeout`, `-max-conns-per-ip`,
/// `-max-body-total`; and `-stream-keepalive`.
fn request_limit_flags(p: &mut pico_args::Arguments, c: &mut Config) -> Result<(), Error> {
    if let Some(v) = text_value(p, "--max-timeout")? {
        let secs = number("-max-timeout", &v, 1, MAX_TIMEOUT_MAX_SECS)?;
        c.max_timeout = Duration::from_secs(secs as u64);
    }
    if let Some(v) = text_value(p, "--stream-keepalive")? {
        let secs = number("-stream-keepalive", &v, 0, STREAM_KEEPALIVE_MAX_SECS)?;
        c.stream_keepalive = Duration::from_secs(secs as u64);
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

/// Rewrites Go-style flags for pico-args: `-long` → `--long`, `-long=v` → `--long v`,
/// `--long=v` → `--long v`; one-letter flags (`-v`, `-q`) and values are left alone. A lone
/// `-`, anything after `--` and the argument after `-llama-args` are left alone too. Shared
/// with `sigoe`.
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
        let Some((name, value)) = flag_parts(s) else {
            out.push(arg);
            continue;
        };
        let dashes = if name.chars().count() == 1 { "-" } else { "--" };
        let key = format!("{dashes}{name}");
        let raw_next = value.is_none() && key == llama::RAW_VALUE_KEY;
        out.push(OsString::from(key));
        if let Some(v) = value {
            out.push(OsString::from(v));
        }
        if raw_next {
            // Its value is passed on to another program and may start with a dash.
            out.extend(rest.next());
        }
    }
    out
}

/// A flag's name and its `=value`, without the dashes: `--http-port=1` → `("http-port",
/// Some("1"))`. `None` for `-`, `-=1` and three dashes, which are left as they are.
fn flag_parts(s: &str) -> Option<(&str, Option<&str>)> {
    let body = s
        .strip_prefix("--")
        .or_else(|| s.strip_prefix('-'))
        .unwrap_or(s);
    let (name, value) = match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    };
    (!name.is_empty() && !name.starts_with('-')).then_some((name, value))
}

/// Go's `flag` lets a switch take a value after `=` (`-stream=false`, `-q=1`), never after
/// a space (`-q true` is the switch, then an argument). Rewrites `-name=value` for the
/// `switches` named: a true value leaves the bare switch, a false one drops it together
/// with that switch's earlier occurrences (the last one wins, as in Go). A value that is
/// not one of Go's `strconv.ParseBool` spellings is a usage error naming the switch.
/// Stops at `--`; the argument after `-llama-args` is left alone. Runs before [`go_style`].
pub(crate) fn switch_values(
    args: Vec<OsString>,
    switches: &[&str],
) -> Result<Vec<OsString>, Error> {
    // Each argument, with the switch it sets when it is one.
    let mut out: Vec<(OsString, Option<String>)> = Vec::with_capacity(args.len());
    let mut rest = args.into_iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            out.push((arg, None));
            out.extend(rest.map(|a| (a, None)));
            break;
        }
        let parts = arg
            .to_str()
            .filter(|_| looks_like_flag(&arg))
            .and_then(flag_parts)
            .map(|(n, v)| (n.to_string(), v.map(str::to_string)));
        let Some((name, value)) = parts else {
            out.push((arg, None));
            continue;
        };
        if !switches.contains(&name.as_str()) {
            let raw_next = value.is_none() && format!("--{name}") == llama::RAW_VALUE_KEY;
            out.push((arg, None));
            if raw_next {
                out.extend(rest.next().map(|a| (a, None)));
            }
            continue;
        }
        match value.as_deref().map(go_bool) {
            None => out.push((arg, Some(name))),
            Some(Some(true)) => out.push((OsString::from(format!("-{name}")), Some(name))),
            Some(Some(false)) => out.retain(|(_, set)| set.as_deref() != Some(name.as_str())),
            Some(None) => {
                return Err(bad(format!(
                    "-{name}: {} is not true or false (nor 1, 0, t, f)",
                    quote(value.as_deref().unwrap_or(""))
                )));
            }
        }
    }
    Ok(out.into_iter().map(|(arg, _)| arg).collect())
}

/// The spellings Go's `strconv.ParseBool` accepts.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
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
        crate::http::tls::check_host(h)
            .map_err(|why| bad(format!("-cert-hosts: {} {why}", quote(h))))?;
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
