//! The files the administrator edits (`models.csv`, `keys.csv`, `memory.json`) as the binary
//! reads them at start and on SIGHUP: a FIFO in place of one, a file too large, a memory
//! block over the cap. Each is refused like a file that does not parse, and never waited
//! for.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::gateway::TempDir;
use crate::support::process::{Server, free_port, run_to_exit};

/// A FIFO at `path` (std cannot make one; coreutils' `mkfifo` can). Opening it for reading
/// waits for a writer, which never comes here.
fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", path.display());
}

/// Runs the binary in `dir` with the default file names; it must exit within 10 s.
fn start_refused(dir: &TempDir) -> String {
    let port = free_port().to_string();
    let args = [
        "-http-port",
        &port,
        "-https-port",
        "0",
        "-bind",
        "127.0.0.1",
    ];
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let (status, stderr) = run_to_exit(dir.path(), &args, Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{stderr}");
    let line = stderr.trim().lines().last().unwrap_or("").to_string();
    assert!(line.starts_with("sigorest: "), "{stderr}");
    line
}

/// Waits until the server's stderr holds `needle` `n` times; returns the last such line.
fn wait_for_nth(server: &Server, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.stderr();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        if lines.len() >= n {
            return lines[n - 1].to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {n} lines with {needle:?}: {log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ids(server: &Server) -> Vec<String> {
    let models = server.get("/v1/models").json();
    models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_fifo_in_place_of_a_file_stops_start_up_at_once() {
    for name in ["models.csv", "keys.csv", "memory.json"] {
        let dir = TempDir::new("fifo");
        mkfifo(&dir.join(name));
        let line = start_refused(&dir);
        assert_eq!(
            line,
            format!(
                "sigorest: ./{name}: not a regular file: it is a FIFO (named pipe); give the \
                 path of a file"
            )
        );
    }
}

#[test]
fn files_too_large_stop_start_up() {
    let dir = TempDir::new("huge-models");
    let huge = "gpt41\n".repeat((4 << 20) / 6 + 1);
    std::fs::write(dir.join("models.csv"), huge).unwrap();
    let line = start_refused(&dir);
    assert!(
        line.starts_with("sigorest: ./models.csv: too large ("),
        "{line}"
    );
    assert!(
        line.ends_with("such a file may have at most 4 MiB"),
        "{line}"
    );

    let dir = TempDir::new("huge-memory");
    let content = "a".repeat((1 << 20) + 1);
    std::fs::write(
        dir.join("memory.json"),
        format!(r#"{{"content": "{content}"}}"#),
    )
    .unwrap();
    let line = start_refused(&dir);
    assert!(
        line.starts_with(
            "sigorest: ./memory.json: memory content too large: 1048577 bytes of UTF-8, and \
             the limit is 1 MiB"
        ),
        "{line}"
    );
}

#[test]
fn a_fifo_or_a_memory_over_the_cap_on_sighup_keeps_the_old_configuration() {
    let dir = TempDir::new("hup-fifo");
    std::fs::write(dir.join("models.csv"), "gpt41\n").unwrap();
    std::fs::write(dir.join("memory.json"), r#"{"content": "old and good"}"#).unwrap();
    let server = Server::start(dir, &[], &[("OLLAMA_HOST", "127.0.0.1:9")]);
    assert_eq!(ids(&server), ["gpt41"]);

    std::fs::write(server.dir.join("memory.json"), r#"{"content": "new"}"#).unwrap();
    let models = server.dir.join("models.csv");
    std::fs::remove_file(&models).unwrap();
    mkfifo(&models);
    server.signal("HUP");
    let line = wait_for_nth(&server, "reload failed", 1);
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("models.csv: not a regular file"), "{line}");
    assert_eq!(ids(&server), ["gpt41"]);
    assert_eq!(server.get("/api/memory").json()["content"], "old and good");

    std::fs::remove_file(&models).unwrap();
    std::fs::write(&models, "kimi\n").unwrap();
    let content = "a".repeat((1 << 20) + 1);
    std::fs::write(
        server.dir.join("memory.json"),
        format!(r#"{{"content": "{content}"}}"#),
    )
    .unwrap();
    server.signal("HUP");
    let line = wait_for_nth(&server, "reload failed", 2);
    assert!(line.contains("memory content too large"), "{line}");
    assert_eq!(ids(&server), ["gpt41"], "nothing of the reload is taken");
    assert_eq!(server.get("/api/memory").json()["content"], "old and good");

    // Mended: the next reload takes both, so the server was never stuck.
    std::fs::write(server.dir.join("memory.json"), r#"{"content": "new"}"#).unwrap();
    server.signal("HUP");
    wait_for_nth(&server, "configuration reloaded", 1);
    assert_eq!(ids(&server), ["kimi"]);
    assert_eq!(server.get("/api/memory").json()["content"], "new");
}

#[test]
fn a_fifo_in_place_of_the_certificate_stops_start_up_at_once() {
    let dir = TempDir::new("fifo-cert");
    std::fs::create_dir(dir.join("certs")).unwrap();
    mkfifo(&dir.join("certs/server.crt"));
    mkfifo(&dir.join("certs/server.key"));
    let (http, https) = (free_port().to_string(), free_port().to_string());
    let args = [
        "-http-port",
        &http,
        "-https-port",
        &https,
        "-bind",
        "127.0.0.1",
        "-cert",
        "certs/server.crt",
        "-key",
        "certs/server.key",
    ];
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let (status, stderr) = run_to_exit(dir.path(), &args, Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not a regular file: it is a FIFO"),
        "{stderr}"
    );
}
