//! The real `sigorest` binary as a child process: started in a temporary directory on a free
//! loopback port, its stderr collected line by line, signals sent with `kill`.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::gateway::{Reply, TempDir, request};

/// A port the kernel just handed out and released. The binary takes `0` as "off", so the
/// tests pick the port themselves; a clash with another process is retried by
/// [`Server::start`].
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs `sigorest` in `dir` with `args` (and an empty environment) to its exit, which must
/// come within `timeout`: a server that starts (or hangs) is killed and the test fails.
/// Returns the exit status and stderr.
pub fn run_to_exit(dir: &Path, args: &[&OsStr], timeout: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sigorest"))
        .current_dir(dir)
        .env_clear()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sigorest");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    match status {
        Some(status) => (status, stderr),
        None => panic!("sigorest {args:?} did not exit within {timeout:?}: {stderr}"),
    }
}

#[derive(Default)]
struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

/// A running server process.
pub struct Server {
    pub child: Child,
    pub dir: TempDir,
    pub addr: SocketAddr,
    lines: Arc<Lines>,
}

impl Server {
    /// Starts `sigorest` in `dir` with these extra arguments and environment, on a free HTTP
    /// port (HTTPS off unless the arguments say otherwise), and waits for `/api/health`.
    pub fn start(mut dir: TempDir, args: &[&str], env: &[(&str, &str)]) -> Server {
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigorest"));
            cmd.current_dir(dir.path())
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .args(["-http-port", &port.to_string(), "-bind", "127.0.0.1"])
                .args(if args.contains(&"-https-port") {
                    &[][..]
                } else {
                    &["-https-port", "0"][..]
                })
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn sigorest");
            let lines = Arc::new(Lines::default());
            let stderr = child.stderr.take().expect("stderr");
            let sink = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    crate::support::gateway::lock(&sink.lines).0.push(line);
                    sink.changed.notify_all();
                }
                crate::support::gateway::lock(&sink.lines).1 = true;
                sink.changed.notify_all();
            });
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let mut server = Server {
                child,
                dir,
                addr,
                lines,
            };
            if server.wait_ready(Duration::from_secs(15)) {
                return server;
            }
            let stderr = server.stderr();
            if !stderr.contains("in use") {
                panic!("sigorest did not start: {stderr}");
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
            dir = std::mem::replace(&mut server.dir, TempDir::new("unused"));
        }
        panic!("no free port after 5 tries");
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> Reply {
        request(&self.url(path), "GET", None, &[])
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        crate::support::gateway::lock(&self.lines.lines)
            .0
            .join("\n")
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut guard = crate::support::gateway::lock(&self.lines.lines);
        loop {
            if let Some(l) = guard.0.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || guard.1 {
                panic!("no line with {needle:?} in: {}", guard.0.join("\n"));
            }
            guard = self
                .lines
                .changed
                .wait_timeout(guard, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sigorest did not exit within {timeout:?}: {}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
