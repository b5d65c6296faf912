//! The gateway under measurement: the release binary started as a child process on a free
//! loopback port, pointed at the fake upstream, in a temporary working directory, with a
//! clean environment; its memory and threads read from `/proc/<pid>/status`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

/// How long the gateway may take to answer its first health check.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// What `/proc/<pid>/status` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Resident memory now, KiB.
    pub rss_kb: u64,
    /// Peak resident memory (`VmHWM`), KiB.
    pub hwm_kb: u64,
    pub threads: u64,
}

/// Reads `VmRSS`, `VmHWM` and `Threads` of a process (zeros where unreadable).
pub fn proc_status(pid: u32) -> ProcStatus {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    parse_status(&text)
}

/// The fields of a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> ProcStatus {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    ProcStatus {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        threads: field("Threads:"),
    }
}

/// A port that was free a moment ago on 127.0.0.1 (the gateway takes 0 as "disabled", so
/// it cannot pick its own).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the gateway binary should be: next to this one.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sigorest")))
        .unwrap_or_else(|| PathBuf::from("target/release/sigorest"))
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// How to start it.
pub struct Launch<'a> {
    pub binary: &'a Path,
    /// The fake upstream.
    pub upstream: SocketAddr,
    /// Delay of the slow provider (Moonshot's base URL goes to the fake's `/delay-<ms>/`).
    pub slow_ms: u64,
    pub workers: Option<usize>,
    pub queue: Option<usize>,
}

impl Gateway {
    /// Starts the gateway and waits until `/api/health` answers 200.
    pub fn start(launch: &Launch) -> Result<Gateway, BenchError> {
        if !launch.binary.is_file() {
            return Err(BenchError::Gateway(format!(
                "no gateway binary at {}: build it first with `cargo build --release` (or pass -gateway PATH)",
                launch.binary.display()
            )));
        }
        if older_than_this_program(launch.binary) {
            // `cargo run --bin sigorest-bench` rebuilds only the bench, not the server.
            eprintln!(
                "sigorest-bench: warning: {} is older than this program; `cargo build --release` first to measure the current code",
                launch.binary.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("sigorest-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::io("creating a work directory", e))?;
        // The models the bench calls: gpt41 (instant) and kimi (the slow provider).
        std::fs::write(dir.join("models.csv"), "gpt41,kimi\n")
            .map_err(|e| BenchError::io("writing models.csv", e))?;
        let port = free_port().map_err(|e| BenchError::io("finding a free port", e))?;
        let up = launch.upstream;
        let mut cmd = Command::new(launch.binary);
        cmd.args(["-http-port", &port.to_string(), "-https-port", "0"])
            .args(["-bind", "127.0.0.1", "-q", "-shutdown-grace", "2"])
            // The load generator is one address with hundreds of connections: the cap per
            // address (64 by default) is for a LAN of hosts, not for this.
            .args(["-max-conns-per-ip", "0"]);
        if let Some(w) = launch.workers {
            cmd.args(["-workers", &w.to_string()]);
        }
        if let Some(q) = launch.queue {
            cmd.args(["-queue", &q.to_string()]);
        }
        let stderr = std::fs::File::create(dir.join("stderr.log"))
            .map_err(|e| BenchError::io("creating the gateway's log file", e))?;
        // A clean environment: no real provider keys, no proxies, no stray settings.
        cmd.env_clear()
            .env("MAMMOUTH_API_KEY", "bench")
            .env("MAMMOUTH_BASE_URL", format!("http://{up}/v1"))
            .env("MOONSHOT_API_KEY", "bench")
            .env(
                "MOONSHOT_BASE_URL",
                format!("http://{up}/delay-{}/v1", launch.slow_ms),
            )
            .env("OLLAMA_HOST", "127.0.0.1:9")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::io(&format!("starting {}", launch.binary.display()), e))?;
        let mut gw = Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = gw.child.try_wait() {
                return Err(BenchError::Gateway(format!(
                    "the gateway exited at start ({status}): {}",
                    gw.log().trim()
                )));
            }
            if health(gw.addr) {
                return Ok(gw);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Gateway(format!(
                    "the gateway did not answer /api/health within {} s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn status(&self) -> ProcStatus {
        proc_status(self.pid())
    }

    /// What the gateway wrote on stderr (errors only, with `-q`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// SIGTERM, a few seconds to finish, then SIGKILL.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Whether `binary` was built before the running bench (both come from one crate, so the
/// server may be stale).
fn older_than_this_program(binary: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (
        modified(binary),
        std::env::current_exe().ok().and_then(|e| modified(&e)),
    ) {
        (Some(server), Some(bench)) => server < bench,
        _ => false,
    }
}

/// Whether `GET /api/health` answers 200.
fn health(addr: SocketAddr) -> bool {
    let Ok(mut tcp) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let sent = tcp.write_all(
        format!("GET /api/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut head = [0u8; 12];
    sent.is_ok() && tcp.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_fields() {
        let s = parse_status(
            "Name:\tsigorest\nVmHWM:\t   5120 kB\nVmRSS:\t    4096 kB\nThreads:\t104\n",
        );
        assert_eq!(
            s,
            ProcStatus {
                rss_kb: 4096,
                hwm_kb: 5120,
                threads: 104
            }
        );
        let me = proc_status(std::process::id());
        assert!(me.rss_kb > 0 && me.threads >= 1);
    }
}
