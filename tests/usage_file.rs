//! The usage file with the real binary: kept over a restart, read by `sigoe -usage` in both
//! modes, and whole after `kill -9` while the gateway writes it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::gateway::{TempDir, lock, request};
use crate::support::process::Server;
use crate::support::upstream::{FakeUpstream, Reply};

const SIGOE: &str = env!("CARGO_BIN_EXE_sigoe");
const CHAT: &[u8] = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;

fn start(dir: TempDir, fake: &FakeUpstream, args: &[&str]) -> Server {
    let base = fake.base_url();
    let env = [
        ("MAMMOUTH_API_KEY", "sk-test"),
        ("MAMMOUTH_BASE_URL", base.as_str()),
        ("OLLAMA_HOST", "127.0.0.1:9"),
    ];
    Server::start(dir, args, &env)
}

fn chat(addr: SocketAddr) -> u16 {
    request(
        &format!("http://{addr}/v1/chat/completions"),
        "POST",
        Some(CHAT),
        &[],
    )
    .status
}

/// One chat request on a raw socket; `false` when the server is not there (being killed or
/// restarted).
fn try_chat(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut sock) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        CHAT.len()
    );
    let mut answer = Vec::new();
    sock.write_all(head.as_bytes()).is_ok()
        && sock.write_all(CHAT).is_ok()
        && sock.read_to_end(&mut answer).is_ok()
        && answer.starts_with(b"HTTP/1.1 200")
}

/// The server's directory, taken from a server that has exited.
fn take_dir(server: &mut Server) -> TempDir {
    std::mem::replace(&mut server.dir, TempDir::new("unused"))
}

/// `all_time.total.requests` of a usage file, or why it is not a whole one.
fn requests_in(file: &Path) -> Result<u64, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("torn: {e}"))?;
    if v["version"] != 1 {
        return Err(format!("not a usage file: {v}"));
    }
    let rows = v["all_time"].as_array().ok_or("no all_time")?;
    Ok(rows.iter().filter_map(|r| r["requests"].as_u64()).sum())
}

fn sigoe(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(SIGOE)
        .current_dir(dir)
        .env_clear()
        .args(args)
        .output()
        .expect("run sigoe");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_survives_a_restart_and_sigoe_prints_it() {
    let fake = FakeUpstream::start();
    fake.set_default(Reply::chat("ok").usage(30, 12));
    let mut server = start(TempDir::new("usage-restart"), &fake, &[]);
    assert_eq!(chat(server.addr), 200);
    assert_eq!(chat(server.addr), 200);
    let file = server.dir.join(".sessions/usage.json");
    assert!(!file.exists(), "not written per request (flush every 10 s)");
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(requests_in(&file), Ok(2), "written at shutdown");
    // Key names and costs are private: the directory it created 0700, the file 0600, as
    // the sessions (no session request came first to create the directory).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&server.dir.join(".sessions")), 0o700);
    assert_eq!(mode(&file), 0o600);

    let server = start(take_dir(&mut server), &fake, &[]);
    assert_eq!(chat(server.addr), 200);
    let usage = server.get("/api/usage").json();
    assert_eq!(usage["all_time"]["total"]["requests"], 3);
    assert_eq!(usage["all_time"]["total"]["prompt_tokens"], 90);
    assert_eq!(usage["today"]["total"]["completion_tokens"], 36);

    let (code, out, err) = sigoe(server.dir.path(), &["-usage", "-server", &server.url("")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("Today, "), "{out}");
    let gpt = out.lines().find(|l| l.starts_with("-  ")).unwrap_or("");
    assert!(
        gpt.contains("gpt41") && gpt.contains(" 3 ") && gpt.contains(" 90 "),
        "{out}"
    );
    let (code, out, _) = sigoe(
        server.dir.path(),
        &["-usage", "-j", "-server", &server.url("")],
    );
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["month"]["total"]["requests"], 3);

    // Direct mode reads the file: what was saved at the last shutdown.
    let (code, out, err) = sigoe(server.dir.path(), &["-usage"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("gpt41"), "{out}");
    let (code, _, err) = sigoe(server.dir.path(), &["-usage", "-sessions", "elsewhere"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("no usage file at elsewhere/usage.json"),
        "{err}"
    );
}

#[test]
fn a_corrupt_usage_file_is_moved_aside_and_the_server_starts() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("usage-corrupt");
    std::fs::create_dir_all(dir.join(".sessions")).unwrap();
    std::fs::write(dir.join(".sessions/usage.json"), b"{\"version\": 1, \"da").unwrap();
    let server = start(dir, &fake, &[]);
    server.wait_for_line("does not parse", Duration::from_secs(5));
    let names: Vec<String> = std::fs::read_dir(server.dir.join(".sessions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("usage.json.corrupt-")),
        "{names:?}"
    );
    assert_eq!(chat(server.addr), 200);
    assert_eq!(
        server.get("/api/usage").json()["all_time"]["total"]["requests"],
        1
    );
}

#[test]
fn the_usage_file_is_whole_after_kill_9_during_writes() {
    let fake = FakeUpstream::start();
    let args = ["-usage-flush", "1"];
    let mut server = start(TempDir::new("usage-kill"), &fake, &args);
    let file = server.dir.join(".sessions/usage.json");
    let sessions = server.dir.join(".sessions");

    // Requests all along, to whichever server is up.
    let addr = Arc::new(Mutex::new(server.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (addr, stop) = (addr.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let a = *lock(&addr);
                // Paced: the file only needs to change between writes (every second).
                let pause = if try_chat(a) { 5 } else { 20 };
                thread::sleep(Duration::from_millis(pause));
            }
        })
    };

    let mut last_good = 0;
    let mut caught_mid_write = 0;
    for round in 0..4 {
        // Wait for a write that saw more requests than the last round left.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if requests_in(&file).is_ok_and(|n| n > last_good) {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: no new write");
            thread::sleep(Duration::from_millis(20));
        }
        let seen = requests_in(&file).unwrap_or(0);
        // Kill the moment a temporary file shows up (a write under way), or after 2.5 s.
        let deadline = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < deadline {
            let writing = std::fs::read_dir(&sessions).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            });
            if writing {
                caught_mid_write += 1;
                break;
            }
        }
        let pid = server.child.id();
        server.child.kill().expect("kill -9");
        server.child.wait().expect("wait");

        let after = requests_in(&file).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            after >= seen,
            "round {round}: {after} < {seen}: lost a good state"
        );
        last_good = after;

        server = start(take_dir(&mut server), &fake, &args);
        *lock(&addr) = server.addr;
        let usage = server.get("/api/usage").json();
        let total = usage["all_time"]["total"]["requests"].as_u64().unwrap_or(0);
        assert!(
            total >= after,
            "round {round}: restarted with {total} < {after}"
        );
        let leftovers: Vec<String> = std::fs::read_dir(&sessions)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!(".usage.json.{pid}.")) || n.contains("corrupt"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    eprintln!("usage kill -9: 4 rounds, {caught_mid_write} killed with a write under way");
}
