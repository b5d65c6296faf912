//! The llama-server process: started under a small `/bin/sh` shim that ties its life to
//! sigorest's, its output pumped into the log, stopped with SIGTERM and then SIGKILL.
//!
//! Why a shim: the crate forbids `unsafe`, so there is no `prctl(PR_SET_PDEATHSIG)` in a
//! `pre_exec` hook, and nothing of sigorest's runs after a SIGKILL. What does survive it is
//! the kernel closing sigorest's file descriptors. So the shim's stdin is a pipe from
//! sigorest that is never written to; a watcher in the shim blocks reading it, and when it
//! reads end-of-file — sigorest closed it to stop llama-server, or sigorest is gone, however
//! it died — it sends llama-server SIGTERM, then SIGKILL after the grace period. The shim
//! itself waits for llama-server and exits with its status. It costs two small `sh`
//! processes; llama-server itself does not watch its stdin.
//!
//! The shim runs in a process group of its own, so a Ctrl-C on sigorest's terminal reaches
//! sigorest alone, which then stops llama-server in order. llama-server's stdin is
//! `/dev/null`; its stdout and stderr both go to one pipe that sigorest reads line by line
//! into its log at DEBUG, prefixed `llama-server: `. The provider keys are removed from
//! its environment.

use std::ffi::OsString;
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::LlamaConfig;
use crate::state::catalog::Provider;

/// The shim: `sh -c SHIM sigorest-llama GRACE_S PROGRAM ARGS...`.
const SHIM: &str = r#"grace=$1
shift
exec 3<&0 </dev/null
"$@" 1>&2 3<&- &
child=$!
(
  read -r line <&3
  kill -TERM "$child" 2>/dev/null || exit 0
  n=0
  while [ "$n" -lt "$grace" ] && kill -0 "$child" 2>/dev/null; do
    sleep 1
    n=$((n + 1))
  done
  kill -KILL "$child" 2>/dev/null
) &
watcher=$!
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

/// A log line of llama-server's is cut at this many bytes.
const MAX_LINE: usize = 4096;
/// How often a stopping process is looked at.
const POLL: Duration = Duration::from_millis(20);
/// Beyond the shim's own grace: how long sigorest waits before it kills the shim itself.
const EXTRA_WAIT: Duration = Duration::from_secs(3);

/// A running llama-server (under its shim).
pub struct Proc {
    child: Child,
    /// Closing it tells the shim to stop llama-server.
    lifeline: Option<ChildStdin>,
    pub pid: u32,
}

/// Finds the program: a path must be an executable file; a bare name is looked up in `PATH`.
pub fn find_program(program: &Path, path_var: Option<OsString>) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return if executable(program) {
            Ok(program.to_path_buf())
        } else {
            Err("not an executable file".to_string())
        };
    }
    let dirs = path_var.unwrap_or_default();
    std::env::split_paths(&dirs)
        .map(|d| d.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| "no such program in PATH".to_string())
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The arguments llama-server gets.
pub fn server_args(config: &LlamaConfig, port: u16) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["--host", "127.0.0.1", "--port", &port.to_string(), "-m"]
        .iter()
        .map(OsString::from)
        .collect();
    args.push(config.model.clone().into_os_string());
    args.extend(config.args.iter().map(OsString::from));
    args
}

/// The variable llama-server reads its key from when `--api-key` is not given (llama.cpp's
/// `common/arg.cpp`).
pub const KEY_ENV: &str = "LLAMA_API_KEY";

/// Starts `program` with these arguments under the shim, and the thread that logs its output.
/// `key` goes in its environment as [`KEY_ENV`] (an inherited one is removed without it), so
/// that it is never in an argument list `ps` shows every user.
pub fn spawn(
    program: &Path,
    args: &[OsString],
    key: Option<&str>,
    grace: Duration,
) -> io::Result<Proc> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(SHIM)
        .arg("sigorest-llama")
        .arg(grace.as_secs().max(1).to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    for p in Provider::CLOUD {
        if let Some(var) = p.key_env() {
            cmd.env_remove(var);
        }
    }
    match key {
        Some(key) => cmd.env(KEY_ENV, key),
        None => cmd.env_remove(KEY_ENV),
    };
    let mut child = cmd.spawn()?;
    let lifeline = child.stdin.take();
    if let Some(out) = child.stderr.take() {
        let spawned = thread::Builder::new()
            .name("llama-output".into())
            .spawn(move || pump(out, |line| log::debug!("llama-server: {line}")));
        if let Err(e) = spawned {
            // Without a reader its output would fill the pipe and block it: stop it now.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    Ok(Proc {
        pid: child.id(),
        child,
        lifeline,
    })
}

impl Proc {
    /// How it ended, once it has.
    pub fn try_wait(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(describe(status)),
            Ok(None) => None,
            Err(e) => Some(format!("could not be waited for ({e})")),
        }
    }

    /// Stops it: the shim sends SIGTERM, then SIGKILL after `grace`; should the shim itself
    /// not end soon after, it is killed. Returns how it ended.
    pub fn stop(mut self, grace: Duration) -> String {
        drop(self.lifeline.take());
        let deadline = Instant::now() + grace + EXTRA_WAIT;
        while Instant::now() < deadline {
            if let Some(how) = self.try_wait() {
                return how;
            }
            thread::sleep(POLL);
        }
        // The watcher in the shim still sends SIGKILL to llama-server if need be.
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => describe(status),
            Err(e) => format!("could not be waited for ({e})"),
        }
    }
}

/// "exited with status 1", "killed by signal 9". The shim reports a llama-server killed by
/// a signal as status 128 + the signal, as shells do.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) if (129..=192).contains(&code) => {
            format!("killed by signal {}", code - 128)
        }
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "ended".to_string(),
    }
}

/// Reads `from` to its end and hands over each line (lossy UTF-8, without the line end,
/// at most [`MAX_LINE`] bytes: longer ones come in pieces). Blank lines are skipped.
pub fn pump(mut from: impl Read, mut each: impl FnMut(&str)) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut emit = |line: &mut Vec<u8>| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        if !text.trim().is_empty() {
            each(text);
        }
        line.clear();
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line);
            } else {
                line.push(b);
                if line.len() >= MAX_LINE {
                    emit(&mut line);
                }
            }
        }
    }
    emit(&mut line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_and_blank_ones_skipped() {
        let mut got = Vec::new();
        let text = format!("one\r\n\n  \ntwo\n{}\nlast", "x".repeat(MAX_LINE + 10));
        pump(text.as_bytes(), |l| got.push(l.to_string()));
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!((got[0].as_str(), got[1].as_str()), ("one", "two"));
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3], "x".repeat(10));
        assert_eq!(got[4], "last");
        let mut bad = Vec::new();
        pump(&b"\xff\xfeok\n"[..], |l| bad.push(l.to_string()));
        assert_eq!(bad, ["\u{fffd}\u{fffd}ok"]);
    }

    #[test]
    fn exit_statuses_read_as_words() {
        assert_eq!(describe(ExitStatus::from_raw(0)), "exited with status 0");
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(137 << 8)),
            "killed by signal 9"
        );
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }

    #[test]
    fn the_server_gets_host_port_and_model_first() {
        let mut c = LlamaConfig::new("llama-server", "/m/q.gguf");
        c.args = vec!["-c".into(), "2048".into()];
        let args: Vec<String> = server_args(&c, 8081)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--host",
                "127.0.0.1",
                "--port",
                "8081",
                "-m",
                "/m/q.gguf",
                "-c",
                "2048"
            ]
        );
    }

    #[test]
    fn programs_are_found_by_path_or_in_path() {
        let sh = find_program(Path::new("sh"), Some("/nonexistent:/bin:/usr/bin".into()));
        assert!(sh.unwrap().ends_with("sh"));
        assert!(find_program(Path::new("sh"), Some("/nonexistent".into())).is_err());
        assert!(find_program(Path::new("/bin/sh"), None).is_ok());
        let dir = crate::util::fs::testdir::TestDir::new("program");
        let plain = dir.path().join("model.gguf");
        std::fs::write(&plain, "GGUF").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(find_program(&plain, None).is_err(), "not executable");
        assert!(find_program(dir.path(), None).is_err(), "a directory");
        assert!(find_program(Path::new("/no/such/llama"), None).is_err());
    }

    /// The shim ends llama-server when its stdin closes, whoever closed it.
    #[test]
    fn the_shim_stops_its_program_when_the_lifeline_closes() {
        let args = ["-c".into(), "exec sleep 30".into()];
        let p = spawn(Path::new("/bin/sh"), &args, None, Duration::from_secs(1)).unwrap();
        let started = Instant::now();
        let how = p.stop(Duration::from_secs(1));
        assert_eq!(how, "killed by signal 15");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// One that ignores SIGTERM gets SIGKILL after the grace period.
    #[test]
    fn the_shim_kills_what_ignores_sigterm() {
        let dir = crate::util::fs::testdir::TestDir::new("shim");
        let mark = dir.path().join("trapped");
        let script = format!("trap '' TERM; : > '{}'; exec sleep 30", mark.display());
        let p = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mark.exists() {
            assert!(Instant::now() < deadline, "the program did not start");
            thread::sleep(POLL);
        }
        let started = Instant::now();
        let how = p.stop(Duration::from_secs(1));
        assert_eq!(how, "killed by signal 9");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_shim_reports_the_exit_status() {
        let args = ["-c".into(), "exit 7".into()];
        let mut p = spawn(Path::new("/bin/sh"), &args, None, Duration::from_secs(1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let how = loop {
            if let Some(how) = p.try_wait() {
                break how;
            }
            assert!(Instant::now() < deadline);
            thread::sleep(POLL);
        };
        assert_eq!(how, "exited with status 7");
    }

    /// The key goes in the environment, never in the arguments.
    #[test]
    fn the_key_reaches_the_program_in_its_environment() {
        let dir = crate::util::fs::testdir::TestDir::new("key");
        let seen = dir.path().join("seen");
        let script = format!(
            "printf '%s|%s' \"${{{KEY_ENV}-unset}}\" \"$*\" > '{}'",
            seen.display()
        );
        let run = |key: Option<&str>| {
            let _ = std::fs::remove_file(&seen);
            let args = ["-c".into(), script.clone().into(), "sh".into(), "-x".into()];
            let mut p = spawn(Path::new("/bin/sh"), &args, key, Duration::from_secs(1)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while p.try_wait().is_none() {
                assert!(Instant::now() < deadline, "the program did not end");
                thread::sleep(POLL);
            }
            std::fs::read_to_string(&seen).unwrap()
        };
        assert_eq!(run(Some("sk-local")), "sk-local|-x");
        assert_eq!(run(None), "unset|-x");
    }
}
