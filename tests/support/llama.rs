//! The stand-in llama-server (`examples/fake_llama_server.rs`, built by `cargo test` into
//! `target/debug/examples/`) and a model file whose neighbours steer it (`.loading`,
//! `.crash`, `.hang`, `.release`, ...; see the example's header).

#![allow(dead_code)]

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sigorest::config::{LlamaConfig, LlamaTiming};

use crate::support::gateway::TempDir;

/// The fake's path. `cargo test` builds examples; a targeted `cargo test --test tests` does
/// not, hence the hint.
pub fn fake_server() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/tests-… → target/debug/examples/fake_llama_server
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("fake_llama_server"))
        .expect("target directory");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --example fake_llama_server` (plain `cargo test` builds it)",
        path.display()
    );
    path
}

/// A model file in a directory of its own.
pub struct ModelFile {
    pub dir: TempDir,
    pub path: PathBuf,
}

impl ModelFile {
    pub fn new(tag: &str) -> ModelFile {
        let dir = TempDir::new(tag);
        let path = dir.join("tiny-q4.gguf");
        std::fs::write(&path, b"GGUF fake").expect("write model");
        ModelFile { dir, path }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// Creates `FILE<suffix>`.
    pub fn touch(&self, suffix: &str) {
        std::fs::write(self.sibling(suffix), b"").expect("touch");
    }

    pub fn remove(&self, suffix: &str) {
        let _ = std::fs::remove_file(self.sibling(suffix));
    }

    /// The pids of every fake started on it, oldest first.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.sibling(".pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The arguments the last fake was started with.
    pub fn args(&self) -> Vec<String> {
        std::fs::read_to_string(self.sibling(".args"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A configuration for the fake on this model, with timings short enough for tests.
    pub fn config(&self) -> LlamaConfig {
        let mut c = LlamaConfig::new(fake_server(), &self.path);
        c.timing = LlamaTiming {
            check_starting: Duration::from_millis(50),
            check_ready: Duration::from_millis(200),
            check_timeout: Duration::from_millis(500),
            misses: 3,
            first_answer: Duration::from_secs(20),
            backoff_first: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            stable_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(2),
        };
        c
    }
}

/// Whether a process runs (a zombie does not count).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ppid ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The parent of a process.
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until every one of these processes has ended.
pub fn wait_gone(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|p| alive(*p)) {
        let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
        assert!(
            Instant::now() < deadline,
            "still running after {timeout:?}: {left:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `read` (an `/api/health` answer) until `done` holds for its `llama` part; returns it.
pub fn wait_llama(read: impl Fn() -> Value, done: impl Fn(&Value) -> bool, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = read();
        if done(&health["llama"]) {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "llama-server not {what}: {}",
            health["llama"]
        );
        thread::sleep(Duration::from_millis(20));
    }
}
