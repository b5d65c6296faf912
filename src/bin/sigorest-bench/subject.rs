//! The gateways under measurement: sigorest, started by the bench; and, to compare with,
//! another gateway started from a command-line template (`-compare-cmd`) or already running
//! at a URL (`-compare-url`). A [`Subject`] is one of them ready for load: where to send,
//! which path and model names, and which process to watch in `/proc`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::BenchError;
use super::cmdline::{self, Vars};
use super::gateway::{self, Gateway, Launch, ProcStatus};

/// The path sigorest and the fake answer chat completions on.
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// Where a gateway comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The sigorest binary, started with the bench's own flags, environment and models.csv.
    Sigorest(PathBuf),
    /// A command line the bench fills in and starts.
    Command(Template),
    /// Already running, pointed by the user at the fake upstream.
    Url {
        /// As given, for the report.
        url: String,
        addr: SocketAddr,
        /// Its process, to read memory and threads from (`-compare-pid`).
        pid: Option<u32>,
    },
}

/// Environment variables to set: `(name, value)`.
pub type Env = Vec<(String, String)>;

/// A gateway's command line with its placeholders not yet filled.
#[derive(Debug, Clone)]
pub struct Template {
    /// As given, for the report.
    pub line: String,
    /// Program and arguments.
    pub words: Vec<String>,
    /// Leading `NAME=VALUE` words of the line, then `-compare-env` values, in that order.
    pub env: Env,
}

impl Template {
    /// Splits and checks `line` (and `NAME=VALUE` pairs for the environment): a program,
    /// known placeholders only, and `{port}` somewhere, since that is where the bench sends.
    pub fn parse(line: &str, env: &[String]) -> Result<Template, String> {
        let (mut vars, words) = cmdline::env_and_words(cmdline::split(line)?);
        if words.is_empty() {
            return Err("-compare-cmd names no program".into());
        }
        for pair in env {
            let (name, value) = cmdline::assignment(pair)
                .ok_or_else(|| format!("-compare-env takes NAME=VALUE, not {pair:?}"))?;
            vars.push((name.to_string(), value.to_string()));
        }
        let t = Template {
            line: line.to_string(),
            words,
            env: vars,
        };
        let dummy: Vec<(&str, &str)> = cmdline::placeholder_names()
            .into_iter()
            .map(|n| (n, "1"))
            .collect();
        t.fill(&dummy)?;
        let all = t.words.iter().chain(t.env.iter().map(|(_, v)| v));
        if !all.clone().any(|w| cmdline::uses(w, "port")) {
            return Err(
                "-compare-cmd must use {port}: the free port the bench picks and sends to".into(),
            );
        }
        Ok(t)
    }

    /// Program, arguments and environment with the placeholders filled.
    pub fn fill(&self, vars: &Vars) -> Result<(Vec<String>, Env), String> {
        let words = self
            .words
            .iter()
            .map(|w| cmdline::substitute(w, vars))
            .collect::<Result<Vec<_>, _>>()?;
        let env = self
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), cmdline::substitute(v, vars)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok((words, env))
    }
}

/// How the load calls a gateway.
#[derive(Debug, Clone)]
pub struct Calls {
    pub path: String,
    /// Its name for a model whose upstream is the fake's instant base URL.
    pub model: String,
    /// Its name for a model whose upstream is the fake's slow base URL.
    pub slow_model: String,
}

impl Calls {
    /// How the bench calls sigorest (the models it writes into sigorest's models.csv).
    pub fn sigorest() -> Calls {
        Calls {
            path: CHAT_PATH.to_string(),
            model: "gpt41".to_string(),
            slow_model: "kimi".to_string(),
        }
    }
}

/// A gateway to measure, as the command line gives it.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its label in the tables.
    pub name: String,
    pub source: Source,
    pub calls: Calls,
}

/// The fake upstream as gateways see it.
#[derive(Debug, Clone, Copy)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// The delay of the slow base URL.
    pub slow_ms: u64,
}

impl Upstream {
    /// The OpenAI-compatible base URL (the part before `/chat/completions`).
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The same, but every answer waits `slow_ms` first.
    pub fn slow_base(&self) -> String {
        format!("http://{}/delay-{}/v1", self.addr, self.slow_ms)
    }
}

/// A gateway ready for load.
pub struct Subject {
    pub name: String,
    pub addr: SocketAddr,
    pub calls: Calls,
    pid: Option<u32>,
    /// The process the bench started (stopped with the subject).
    process: Option<Gateway>,
}

impl Subject {
    /// Starts the gateway (or finds it at its URL) and waits until it answers.
    pub fn start(
        spec: &Spec,
        up: Upstream,
        workers: Option<usize>,
        queue: Option<usize>,
    ) -> Result<Subject, BenchError> {
        let (process, addr, pid) = match &spec.source {
            Source::Sigorest(binary) => {
                let g = Gateway::start(&Launch {
                    binary,
                    upstream: up.addr,
                    slow_ms: up.slow_ms,
                    workers,
                    queue,
                })?;
                let (addr, pid) = (g.addr, g.pid());
                (Some(g), addr, Some(pid))
            }
            Source::Command(t) => {
                let g = start_command(t, up)?;
                let (addr, pid) = (g.addr, g.pid());
                (Some(g), addr, Some(pid))
            }
            Source::Url { addr, pid, .. } => {
                if let Some(pid) = pid
                    && gateway::proc_status(*pid).threads == 0
                {
                    return Err(BenchError::Usage(format!(
                        "-compare-pid {pid}: no such process, or its /proc/{pid}/status is not readable"
                    )));
                }
                (None, *addr, *pid)
            }
        };
        Ok(Subject {
            name: spec.name.clone(),
            addr,
            calls: spec.calls.clone(),
            pid,
            process,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Its memory and threads now (None without a process to read).
    pub fn status(&self) -> Option<ProcStatus> {
        self.pid.map(gateway::proc_status)
    }

    /// What the process the bench started wrote.
    pub fn log(&self) -> String {
        self.process.as_ref().map(Gateway::log).unwrap_or_default()
    }

    /// Stops the process the bench started (a gateway at a URL is left running).
    pub fn stop(self) {
        if let Some(g) = self.process {
            g.stop();
        }
    }

    /// Sends one chat completion to `model` and returns the status and the body's start,
    /// or why nothing came back.
    pub fn ask(&self, model: &str, timeout: Duration) -> Result<(u16, String), String> {
        ask(self.addr, &self.calls.path, model, timeout)
    }
}

/// Fills in the template, starts it in a work directory of its own with the bench's clean
/// environment (PATH kept), and waits until its port answers HTTP.
fn start_command(t: &Template, up: Upstream) -> Result<Gateway, BenchError> {
    let port = gateway::free_port().map_err(|e| BenchError::io("finding a free port", e))?;
    let port_s = port.to_string();
    let (base, slow, fake) = (up.base(), up.slow_base(), up.addr.to_string());
    let vars = [
        ("port", port_s.as_str()),
        ("upstream", base.as_str()),
        ("slow_upstream", slow.as_str()),
        ("fake", fake.as_str()),
    ];
    let (words, env) = t.fill(&vars).map_err(BenchError::Usage)?;
    let Some((program, args)) = words.split_first() else {
        return Err(BenchError::Usage("-compare-cmd names no program".into()));
    };
    let mut cmd = Command::new(program_path(program));
    cmd.args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(gateway::provider_env(up.addr, up.slow_ms))
        .envs(env);
    Gateway::spawn(
        cmd,
        port,
        gateway::work_dir("compare")?,
        gateway::answers,
        "HTTP",
    )
}

/// A program named by a relative path (`target/release/x`) as seen from the bench's
/// directory, since the gateway runs in a work directory of its own; a bare name is looked
/// up in PATH as a shell does.
fn program_path(program: &str) -> PathBuf {
    let p = Path::new(program);
    if p.is_relative() && program.contains('/') {
        std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
    } else {
        p.to_path_buf()
    }
}

/// Reads `http://HOST[:PORT][/]` (plain HTTP: the bench speaks nothing else).
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("-compare-url takes http://HOST:PORT (plain HTTP), not {url:?}"))?;
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    if host_port.contains('/') {
        return Err(format!(
            "-compare-url takes only http://HOST:PORT, not {url:?}: give the path with -compare-path"
        ));
    }
    if host_port.is_empty() || host_port.contains('@') {
        return Err(format!("-compare-url: no usable host in {url:?}"));
    }
    let with_port = if host_port.ends_with(']') || !host_port.contains(':') {
        format!("{host_port}:80")
    } else {
        host_port.to_string()
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("-compare-url: cannot resolve {host_port:?}"))
}

/// One chat completion on a fresh connection (`Connection: close`).
pub fn ask(
    addr: SocketAddr,
    path: &str,
    model: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let body = super::body(model, false);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = tcp.set_read_timeout(Some(timeout));
    tcp.write_all(request.as_bytes())
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let answer = read_answer(&mut tcp);
    if answer.is_empty() {
        return Err(format!("no answer from {addr}"));
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .filter(|_| text.starts_with("HTTP/1."))
        .ok_or_else(|| format!("{addr} did not answer HTTP"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let start: String = body.chars().take(300).collect();
    Ok((status, start.trim().to_string()))
}

/// Reads one answer: its head and up to 64 KiB of body, to its end by `Content-Length`
/// (or a chunked body's last chunk, or the connection's end), so that a server that keeps
/// the connection open despite `Connection: close` costs no read timeout.
fn read_answer(tcp: &mut TcpStream) -> Vec<u8> {
    const MAX: usize = 64 * 1024;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(head) = super::find(&answer, b"\r\n\r\n").map(|i| i + 4) {
            let text = String::from_utf8_lossy(&answer[..head]).to_ascii_lowercase();
            let length = text
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(n) => answer.len() >= head + n,
                None => {
                    text.contains("transfer-encoding: chunked")
                        && answer[head..].ends_with(b"0\r\n\r\n")
                }
            };
            if done || answer.len() >= MAX {
                return answer;
            }
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return answer,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked() {
        let t = Template::parse(
            "A={upstream} target/release/sigorest -http-port {port} -q",
            &["B={slow_upstream}".to_string()],
        )
        .unwrap();
        assert_eq!(
            t.words,
            ["target/release/sigorest", "-http-port", "{port}", "-q"]
        );
        let (words, env) = t
            .fill(&[
                ("port", "7"),
                ("upstream", "U"),
                ("slow_upstream", "S"),
                ("fake", "F"),
            ])
            .unwrap();
        assert_eq!(words[2], "7");
        assert_eq!(env, [("A".into(), "U".into()), ("B".into(), "S".into())]);
        // {port} through the environment is enough.
        assert!(Template::parse("gw", &["PORT={port}".to_string()]).is_ok());
        for (line, env) in [
            ("gw -p 80", &[][..]),
            ("gw -p {prot}", &[]),
            ("A=1", &[]),
            ("", &[]),
            ("gw {port}", &["not a pair".to_string()][..]),
            ("gw {port}", &["X={nope}".to_string()][..]),
        ] {
            assert!(Template::parse(line, env).is_err(), "{line:?} {env:?}");
        }
        assert_eq!(program_path("gw"), PathBuf::from("gw"));
        assert!(program_path("target/release/gw").is_absolute());
        assert_eq!(program_path("/bin/gw"), PathBuf::from("/bin/gw"));
    }

    #[test]
    fn urls_are_read() {
        let a = |u| parse_url(u);
        assert_eq!(
            a("http://127.0.0.1:8080"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
        assert_eq!(
            a("http://127.0.0.1:8080/"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
        assert_eq!(a("http://127.0.0.1").map(|s| s.port()), Ok(80));
        assert_eq!(a("http://[::1]:9").map(|s| s.port()), Ok(9));
        assert!(a("http://localhost:9").is_ok_and(|s| s.ip().is_loopback()));
        for bad in [
            "https://127.0.0.1:1",
            "127.0.0.1:1",
            "http://127.0.0.1:1/v1",
            "http://",
            "http://u@127.0.0.1:1",
            "http://127.0.0.1:99999",
        ] {
            assert!(a(bad).is_err(), "{bad}");
        }
    }
}
