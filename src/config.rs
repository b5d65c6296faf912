//! The server's command line: raw flags → a validated [`Config`].
//!
//! Flags are accepted Go-style with one dash (`-http-port 9080`, `-http-port=9080`) and
//! with two (`--http-port 9080`). A bad flag or value is an [`Error::Usage`] with one line a
//! person can act on; `main` prints it and exits with status 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::access::AllowList;
use crate::error::Error;

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
}

impl Default for Config {
    /// The design's defaults.
    fn default() -> Self {
        todo!()
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: Vec<OsString>) -> Result<Command, Error> {
    let _ = args;
    todo!()
}

/// The `-h` text.
pub fn usage() -> String {
    todo!()
}

/// Rewrites Go-style flags for pico-args: `-long` → `--long`, `-long=v` → `--long v`,
/// `--long=v` → `--long v`; one-letter flags (`-v`, `-q`) and values are left alone. A lone
/// `-` and anything after `--` are left alone too. Shared with `sigoe`.
pub fn go_style(args: Vec<OsString>) -> Vec<OsString> {
    let _ = args;
    todo!()
}
