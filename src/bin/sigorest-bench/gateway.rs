//! A gateway process under measurement: the sigorest release binary (or another gateway's
//! command) started as a child on a free loopback port, pointed at the fake upstream, in a
//! temporary working directory, with a clean environment; its memory and threads read from
//! `/proc/<pid>/status`, its CPU time from `/proc/<pid>/stat`.

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

/// Clock ticks per second of the times in `/proc/<pid>/stat`: `USER_HZ`, which Linux fixes
/// at 100 for user space on x86 and ARM whatever the kernel's own tick rate.
const TICKS_PER_S: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` the bench uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pid: u32,
    ppid: u32,
    /// User plus system time, in clock ticks, over all its threads (living or gone).
    ticks: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split('(').next()?.trim().parse().ok()?;
    // After the name: state (3), ppid (4), ... utime (14), stime (15).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        pid,
        ppid: u32::try_from(number(1)?).ok()?,
        ticks: number(11)? + number(12)?,
    })
}

fn stat_of(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The CPU time (user + system) a process has used so far, in microseconds; with `tree`,
/// that of its living descendants too (a gateway of several processes, as nginx's master
/// and workers). None when the process is gone or unreadable.
pub fn cpu_us(pid: u32, tree: bool) -> Option<f64> {
    let own = stat_of(pid)?;
    let mut ticks = own.ticks;
    if tree {
        let all: Vec<Stat> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(stat_of)
            .collect();
        ticks += descendant_ticks(&all, pid);
    }
    Some(ticks as f64 * 1e6 / TICKS_PER_S)
}

/// The ticks of every process below `root` in `all`.
fn descendant_ticks(all: &[Stat], root: u32) -> u64 {
    let mut below = vec![root];
    let mut ticks = 0;
    while let Some(parent) = below.pop() {
        for s in all.iter().filter(|s| s.ppid == parent && s.pid != root) {
            ticks += s.ticks;
            below.push(s.pid);
        }
    }
    ticks
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

/// The gateway's stdout and stderr, in its work directory.
const LOG: &str = "output.log";

/// A fresh work directory for one gateway (`tag` tells two apart).
pub fn work_dir(tag: &str) -> Result<PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!("sigorest-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io("creating a work directory", e))?;
    Ok(dir)
}

/// The environment the bench gives a gateway: provider keys that are not real, the
/// providers' base URLs at the fake (Moonshot's at its slow path), no Ollama.
pub fn provider_env(upstream: SocketAddr, slow_ms: u64) -> Vec<(String, String)> {
    [
        ("MAMMOUTH_API_KEY", "bench".to_string()),
        ("MAMMOUTH_BASE_URL", format!("http://{upstream}/v1")),
        ("MOONSHOT_API_KEY", "bench".to_string()),
        (
            "MOONSHOT_BASE_URL",
            format!("http://{upstream}/delay-{slow_ms}/v1"),
        ),
        ("OLLAMA_HOST", "127.0.0.1:9".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Resets a process's peak resident size (`VmHWM`), so that the next reading is the peak
/// since now (Linux 4.0 and later; false where not allowed).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
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
    /// Starts the sigorest binary and waits until `/api/health` answers 200.
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
                "sigorest-bench: warning: {} is older than the server's sources; `cargo build --release` first to measure the current code",
                launch.binary.display()
            );
        }
        let dir = work_dir("sigorest")?;
        // The models the bench calls: gpt41 (instant) and kimi (the slow provider).
        std::fs::write(dir.join("models.csv"), "gpt41,kimi\n")
            .map_err(|e| BenchError::io("writing models.csv", e))?;
        let port = free_port().map_err(|e| BenchError::io("finding a free port", e))?;
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
        // A clean environment: no real provider keys, no proxies, no stray settings.
        cmd.env_clear()
            .envs(provider_env(launch.upstream, launch.slow_ms));
        Gateway::spawn(cmd, port, dir, health, "/api/health")
    }

    /// Starts `cmd` (its environment already set) in `dir` with its output going to a log
    /// file there, and waits until `ready` says the port answers. `waits_for` names what
    /// `ready` checks, for the message when it never does.
    pub fn spawn(
        mut cmd: Command,
        port: u16,
        dir: PathBuf,
        ready: fn(SocketAddr) -> bool,
        waits_for: &str,
    ) -> Result<Gateway, BenchError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let log = std::fs::File::create(dir.join(LOG))
            .map_err(|e| BenchError::io("creating the gateway's log file", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| BenchError::io("opening the gateway's log file", e))?;
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(BenchError::io(&format!("starting {program}"), e));
            }
        };
        let mut gw = Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = gw.child.try_wait() {
                return Err(BenchError::Gateway(format!(
                    "{program} exited at start ({status}): {}",
                    gw.log().trim()
                )));
            }
            if ready(gw.addr) {
                return Ok(gw);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Gateway(format!(
                    "{program} did not answer {waits_for} on {} within {} s: {}",
                    gw.addr,
                    START_TIMEOUT.as_secs(),
                    gw.log().trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the gateway wrote on stdout and stderr (errors only, for sigorest with `-q`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(LOG)).unwrap_or_default()
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

/// Whether `binary` is older than the server's sources (changed since it was built):
/// the sources of this checkout (`src/` but the bench's own directory) when they are there,
/// else the running bench (both come from one crate).
fn older_than_this_program(binary: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let newer = match src.is_dir() {
        true => newest(&src, &src.join("bin").join("sigorest-bench")),
        false => std::env::current_exe().ok().and_then(|e| modified(&e)),
    };
    matches!((modified(binary), newer), (Some(server), Some(newer)) if server < newer)
}

/// The latest modification time of the files under `dir`, `skip` left out.
fn newest(dir: &Path, skip: &Path) -> Option<std::time::SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let time = match meta.is_dir() {
            true if path == skip => None,
            true => newest(&path, skip),
            false => meta.modified().ok(),
        };
        latest = latest.max(time);
    }
    latest
}

/// Whether anything that speaks HTTP answers `GET /` (any status).
pub fn answers(addr: SocketAddr) -> bool {
    status_of(addr, "/").is_some()
}

/// Whether `GET /api/health` answers 200.
fn health(addr: SocketAddr) -> bool {
    status_of(addr, "/api/health").as_deref() == Some("200")
}

/// The status code a `GET path` gets.
fn status_of(addr: SocketAddr, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).ok()?;
    head.starts_with(b"HTTP/1.")
        .then(|| String::from_utf8_lossy(&head[9..12]).into_owned())
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

    #[test]
    fn stat_lines_are_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (nginx: worker (x) ) S 4241 4241 4241 0 -1 4194624 120 0 0 0 37 15 0 0 20 0 1 0 555 1000 200";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                pid: 4242,
                ppid: 4241,
                ticks: 52
            })
        );
        assert_eq!(parse_stat("4242 (cut"), None);
        assert_eq!(parse_stat("4242 (short) S 1 2 3"), None);
    }

    #[test]
    fn a_tree_counts_children_and_their_children_once() {
        let s = |pid, ppid, ticks| Stat { pid, ppid, ticks };
        let all = [
            s(1, 0, 1000),
            s(10, 1, 5),
            s(11, 10, 7),
            s(12, 10, 11),
            s(13, 11, 13),
            s(20, 1, 17),
        ];
        assert_eq!(descendant_ticks(&all, 10), 7 + 11 + 13);
        assert_eq!(descendant_ticks(&all, 13), 0);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(spin.elapsed());
        }
        let me = std::process::id();
        let own = cpu_us(me, false).unwrap_or(0.0);
        assert!(own >= 10_000.0, "{own} µs");
        assert!(cpu_us(me, true).unwrap_or(0.0) >= own);
        assert_eq!(cpu_us(u32::MAX, false), None);
    }
}
