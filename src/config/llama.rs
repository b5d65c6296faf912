//! The `-llama-*` flags: a local llama.cpp `llama-server` that sigorest starts, watches and
//! routes one model name to (the supervisor is `crate::upstream::llama`).
//!
//! Checked here, without touching the disk: both `-llama-server` and `-llama-model` or
//! neither; the other `-llama-*` flags only with them; `-llama-args` split like a shell
//! line (quotes, backslashes) and without `--host`, `--port` or `-m`, which sigorest sets
//! itself (a `--host 0.0.0.0` would open the model to the LAN past the allow lists). That
//! the program and the model file exist is checked at start-up.

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::{bad, flag_name, number, path_value, quote, text_value};
use crate::error::Error;

/// The flag whose value may start with a dash (`-llama-args "-c 4096"`): `go_style` leaves
/// the argument after it alone and it is read before any other flag.
pub(super) const RAW_VALUE_KEY: &str = "--llama-args";

const NAME_MAX: usize = 64;
const PARALLEL_MAX: u64 = 256;
const QUEUE_WAIT_MAX_SECS: u64 = 3600;
/// Requests that may wait for a slot, per slot.
pub(super) const QUEUE_PER_SLOT: usize = 4;

/// A supervised `llama-server`.
#[derive(Clone, PartialEq)]
pub struct LlamaConfig {
    /// The program (`-llama-server`): a path, or a name looked up in `PATH`.
    pub server: PathBuf,
    /// The model file (`-llama-model`), passed as `-m`.
    pub model: PathBuf,
    /// Passed through after sigorest's own `--host`, `--port` and `-m` (`-llama-args`,
    /// without its `--api-key`).
    pub args: Vec<String>,
    /// The key llama-server asks for: the `--api-key` of `-llama-args`, else sigorest's own
    /// `LLAMA_API_KEY`. It reaches llama-server as `LLAMA_API_KEY` in its environment, which
    /// only its user can read, never in its arguments, which `ps` shows to everyone; sigorest
    /// sends it with each request.
    pub api_key: Option<String>,
    /// The model name clients use (`-llama-name`, default `local`).
    pub name: String,
    /// Its port on 127.0.0.1 (`-llama-port`); `None`: a free port chosen at start.
    pub port: Option<u16>,
    /// Requests sent to it at once (`-llama-parallel`; default its `--parallel`, else 1).
    pub parallel: usize,
    /// Requests that may wait for one of those slots; beyond that: 429 at once.
    pub queue: usize,
    /// How long a request may wait for a slot before it gets 429 (`-llama-queue-wait`).
    pub queue_wait: Duration,
    /// Health checks, back-off and stopping; not flags (tests shorten them).
    pub timing: LlamaTiming,
}

/// The supervisor's clockwork.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaTiming {
    /// Between health checks until it is ready.
    pub check_starting: Duration,
    /// Between health checks once it is ready.
    pub check_ready: Duration,
    /// How long one health check may take.
    pub check_timeout: Duration,
    /// Health checks in a row without an answer (after it has answered once) that make it
    /// count as hung: it is stopped and started again.
    pub misses: u32,
    /// How long it may take to answer its first health check at all (a 503 "loading"
    /// counts as an answer) before it counts as hung.
    pub first_answer: Duration,
    /// The first wait before a restart; doubled after each failure in a row.
    pub backoff_first: Duration,
    /// The longest wait before a restart.
    pub backoff_max: Duration,
    /// A run that stayed ready this long resets the back-off to its first step.
    pub stable_after: Duration,
    /// When stopping: how long after SIGTERM it may take before it gets SIGKILL.
    pub stop_grace: Duration,
}

impl Default for LlamaTiming {
    fn default() -> Self {
        LlamaTiming {
            check_starting: Duration::from_millis(500),
            check_ready: Duration::from_secs(5),
            check_timeout: Duration::from_secs(5),
            misses: 3,
            first_answer: Duration::from_secs(600),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(5),
        }
    }
}

impl LlamaConfig {
    /// A configuration with the defaults for everything but the program and the model.
    pub fn new(server: impl Into<PathBuf>, model: impl Into<PathBuf>) -> LlamaConfig {
        LlamaConfig {
            server: server.into(),
            model: model.into(),
            args: Vec::new(),
            api_key: None,
            name: "local".to_string(),
            port: None,
            parallel: 1,
            queue: QUEUE_PER_SLOT,
            queue_wait: Duration::from_secs(60),
            timing: LlamaTiming::default(),
        }
    }

    /// The context size given in `-llama-args` (`-c`, `--ctx-size`), 0 when not given.
    pub fn context(&self) -> u64 {
        last_value(&self.args, &["-c", "--ctx-size"])
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The file name of the model, as the model's id (`qwen2.5-1.5b-q4_k_m.gguf`).
    pub fn model_id(&self) -> String {
        self.model.file_name().map_or_else(
            || self.model.to_string_lossy().into_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

impl std::fmt::Debug for LlamaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of every debug print.
        f.debug_struct("LlamaConfig")
            .field("server", &self.server)
            .field("model", &self.model)
            .field("args", &self.args)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("name", &self.name)
            .field("port", &self.port)
            .field("parallel", &self.parallel)
            .field("queue", &self.queue)
            .field("queue_wait", &self.queue_wait)
            .field("timing", &self.timing)
            .finish()
    }
}

/// Reads the `-llama-*` flags. Must run before every other value flag: the value of
/// `-llama-args` may look like one of them.
pub(super) fn parse(p: &mut pico_args::Arguments) -> Result<Option<LlamaConfig>, Error> {
    let mut args = None;
    // pico-args takes the argument after the key whatever it looks like; the last one wins.
    loop {
        match p.opt_value_from_os_str(RAW_VALUE_KEY, |v| Ok::<_, Infallible>(v.to_os_string())) {
            Ok(Some(v)) => args = Some(v),
            Ok(None) => break,
            Err(pico_args::Error::OptionWithoutAValue(_)) => {
                return Err(bad("-llama-args needs a value".into()));
            }
            Err(e) => return Err(bad(format!("-llama-args: {e}"))),
        }
    }
    let server = path_value(p, "--llama-server")?;
    let model = path_value(p, "--llama-model")?;
    let name = text_value(p, "--llama-name")?;
    let port = text_value(p, "--llama-port")?;
    let parallel = text_value(p, "--llama-parallel")?;
    let queue_wait = text_value(p, "--llama-queue-wait")?;

    let (server, model) = match (server, model) {
        (Some(s), Some(m)) => (s, m),
        (Some(_), None) => return Err(bad("-llama-server needs -llama-model FILE.gguf".into())),
        (None, Some(_)) => return Err(bad("-llama-model needs -llama-server PATH".into())),
        (None, None) => {
            let given = [
                ("--llama-args", args.is_some()),
                ("--llama-name", name.is_some()),
                ("--llama-port", port.is_some()),
                ("--llama-parallel", parallel.is_some()),
                ("--llama-queue-wait", queue_wait.is_some()),
            ];
            return match given.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(bad(format!(
                    "{} needs -llama-server PATH and -llama-model FILE.gguf",
                    flag_name(key)
                ))),
                None => Ok(None),
            };
        }
    };
    let mut c = LlamaConfig::new(server, model);
    if let Some(v) = args {
        (c.args, c.api_key) = take_api_key(passed_args(&v)?);
    }
    if let Some(v) = name {
        c.name = model_name(&v)?;
    }
    if let Some(v) = port {
        let n = number("-llama-port", &v, 0, u64::from(u16::MAX))?;
        c.port = u16::try_from(n).ok().filter(|p| *p != 0);
    }
    c.parallel = match parallel {
        Some(v) => number("-llama-parallel", &v, 1, PARALLEL_MAX)?,
        // Read from -llama-args, it is checked as the flag is: a value sigorest cannot use
        // would otherwise become 1 slot while llama-server runs many (or fails to start).
        None => match last_value(&c.args, &["-np", "--parallel"]) {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=PARALLEL_MAX as usize).contains(n))
                .ok_or_else(|| {
                    bad(format!(
                        "-llama-args: --parallel {} is not a whole number from 1 to {PARALLEL_MAX} \
                         (or give -llama-parallel N, the requests sigorest sends it at once)",
                        quote(v)
                    ))
                })?,
            None => 1,
        },
    };
    c.queue = c.parallel * QUEUE_PER_SLOT;
    if let Some(v) = queue_wait {
        let secs = number("-llama-queue-wait", &v, 0, QUEUE_WAIT_MAX_SECS)?;
        c.queue_wait = Duration::from_secs(secs as u64);
    }
    Ok(Some(c))
}

/// `-llama-args`: split, and refused when it sets what sigorest sets.
fn passed_args(v: &OsString) -> Result<Vec<String>, Error> {
    let text = v
        .to_str()
        .ok_or_else(|| bad("-llama-args: not valid UTF-8".into()))?;
    let args = split_args(text).map_err(|m| bad(format!("-llama-args: {m}")))?;
    for a in &args {
        let key = a.split('=').next().unwrap_or(a);
        let why = match key {
            "--host" => {
                "is set by sigorest; it listens on 127.0.0.1, where only sigorest reaches it"
            }
            "--port" => "is set by sigorest; use -llama-port",
            "-m" | "--model" => "is set by sigorest; use -llama-model",
            "--api-key-file" => {
                "cannot be used: sigorest must know the key to send it (give --api-key KEY, \
                 or LLAMA_API_KEY in sigorest's environment)"
            }
            _ => continue,
        };
        return Err(bad(format!("-llama-args: {} {why}", quote(key))));
    }
    Ok(args)
}

/// Takes every `--api-key KEY` / `--api-key=KEY` out of the arguments; the last one is the key.
fn take_api_key(args: Vec<String>) -> (Vec<String>, Option<String>) {
    let mut kept = Vec::with_capacity(args.len());
    let mut key = None;
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        if a == "--api-key" {
            key = args.next().or(key);
        } else if let Some(v) = a.strip_prefix("--api-key=") {
            key = Some(v.to_string());
        } else {
            kept.push(a);
        }
    }
    (kept, key)
}

/// A model name: 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
fn model_name(v: &str) -> Result<String, Error> {
    let v = v.trim();
    let ok = !v.is_empty()
        && v.len() <= NAME_MAX
        && !v.starts_with(['.', '-'])
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(v.to_string())
    } else {
        Err(bad(format!(
            "-llama-name: {} is not a model name (1-{NAME_MAX} of A-Z a-z 0-9 . _ -)",
            quote(v)
        )))
    }
}

/// Splits a line into arguments as a POSIX shell would, without expansions: blanks separate,
/// `'…'` keeps everything, `"…"` keeps everything but `\"` and `\\`, a backslash outside
/// quotes keeps the next character.
pub fn split_args(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if std::mem::take(&mut in_word) {
                    out.push(std::mem::take(&mut word));
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a ' is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("a \" is not closed".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a \" is not closed".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("it ends with a lone \\".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

/// The value of the last of these options in `args` (`--opt v` or `--opt=v`).
fn last_value<'a>(args: &'a [String], names: &[&str]) -> Option<&'a str> {
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if names.contains(&a) {
            found = args.get(i + 1).map(String::as_str).or(found);
            i += 2;
            continue;
        }
        if let Some((k, v)) = a.split_once('=')
            && names.contains(&k)
        {
            found = Some(v);
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Command, parse_args};

    fn parse(args: &[&str]) -> Result<Option<LlamaConfig>, String> {
        match parse_args(args.iter().map(OsString::from).collect()) {
            Ok(Command::Run(c)) => Ok(c.llama),
            Ok(other) => panic!("{args:?}: {other:?}"),
            Err(Error::Usage { message }) => Err(message),
            Err(e) => panic!("{args:?}: {e:?}"),
        }
    }

    #[test]
    fn flags_and_defaults() {
        assert_eq!(parse(&[]).unwrap(), None);
        let c = parse(&["-llama-server", "/opt/llama-server", "--llama-model=m.gguf"])
            .unwrap()
            .unwrap();
        assert_eq!(c, LlamaConfig::new("/opt/llama-server", "m.gguf"));
        assert_eq!(
            (c.name.as_str(), c.port, c.parallel, c.queue),
            ("local", None, 1, 4)
        );
        assert_eq!(c.queue_wait, Duration::from_secs(60));
        let c = parse(&[
            "-llama-server",
            "llama-server",
            "-llama-model",
            "/m/q.gguf",
            "-llama-args",
            "-c 4096 --parallel 3 --alias 'my q'",
            "-llama-name",
            "Qwen",
            "-llama-port=8081",
            "-llama-queue-wait",
            "0",
            "-v",
            "debug",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.args, ["-c", "4096", "--parallel", "3", "--alias", "my q"]);
        assert_eq!((c.name.as_str(), c.port), ("Qwen", Some(8081)));
        assert_eq!((c.parallel, c.queue), (3, 12), "--parallel from the args");
        assert_eq!(c.queue_wait, Duration::ZERO);
        let c = parse(&[
            "-llama-server",
            "s",
            "-llama-model",
            "m",
            "-llama-args=-np 8",
            "-llama-parallel",
            "2",
            "-llama-port",
            "0",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.parallel, c.port),
            (2, None),
            "the flag wins; port 0: a free one"
        );
    }

    #[test]
    fn args_that_look_like_flags_stay_args() {
        for value in ["-v", "-h", "--help", "-j", "-c 2048"] {
            let c = parse(&[
                "-llama-server",
                "s",
                "-llama-model",
                "m",
                "-llama-args",
                value,
            ])
            .unwrap_or_else(|e| panic!("{value}: {e}"))
            .unwrap();
            assert_eq!(c.args, split_args(value).unwrap(), "{value}");
        }
        let c = parse(&[
            "--llama-args",
            "-q",
            "-llama-server",
            "s",
            "-llama-model",
            "m",
            "-q",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.args, ["-q"]);
    }

    #[test]
    fn bad_llama_flags() {
        let err = |args: &[&str]| parse(args).unwrap_err();
        assert_eq!(
            err(&["-llama-server", "s"]),
            "-llama-server needs -llama-model FILE.gguf"
        );
        assert_eq!(
            err(&["-llama-model", "m"]),
            "-llama-model needs -llama-server PATH"
        );
        assert!(err(&["-llama-name", "x"]).starts_with("-llama-name needs -llama-server"));
        assert!(err(&["-llama-queue-wait", "1"]).starts_with("-llama-queue-wait needs"));
        let with = |more: &[&str]| {
            let mut a = vec!["-llama-server", "s", "-llama-model", "m"];
            a.extend_from_slice(more);
            err(&a)
        };
        assert!(with(&["-llama-args", "--host 0.0.0.0"]).contains("'--host' is set by sigorest"));
        assert!(with(&["-llama-args", "--port=1"]).contains("-llama-port"));
        assert!(with(&["-llama-args", "-m x.gguf"]).contains("-llama-model"));
        assert!(with(&["-llama-args", "--alias 'x"]).contains("not closed"));
        assert_eq!(with(&["-llama-args"]), "-llama-args needs a value");
        assert!(with(&["-llama-name", "a b"]).starts_with("-llama-name: 'a b'"));
        assert!(with(&["-llama-port", "70000"]).starts_with("-llama-port:"));
        assert!(with(&["-llama-parallel", "0"]).starts_with("-llama-parallel:"));
        // The --parallel in -llama-args is checked as -llama-parallel is, when it is used.
        for args in [
            "--parallel 300",
            "--parallel 0",
            "-np abc",
            "--parallel=-1",
            "-np 2 -np 257",
        ] {
            let e = with(&["-llama-args", args]);
            assert!(
                e.starts_with("-llama-args: --parallel '") && e.contains("from 1 to 256"),
                "{args}: {e}"
            );
        }
        assert!(
            parse(&[
                "-llama-server",
                "s",
                "-llama-model",
                "m",
                "-llama-parallel",
                "2",
                "-llama-args",
                "--parallel 300"
            ])
            .is_ok()
        );
        assert!(with(&["-llama-queue-wait", "3601"]).starts_with("-llama-queue-wait:"));
    }

    #[test]
    fn shell_like_splitting() {
        let s = |l: &str| split_args(l).unwrap();
        assert_eq!(s(""), Vec::<String>::new());
        assert_eq!(
            s("  -c 4096\t--parallel  2 "),
            ["-c", "4096", "--parallel", "2"]
        );
        assert_eq!(s("--alias 'my model' -x"), ["--alias", "my model", "-x"]);
        assert_eq!(s(r#"--a "b \"c\" \d" e\ f"#), ["--a", r#"b "c" \d"#, "e f"]);
        assert_eq!(s("''"), [""]);
        assert_eq!(s("a'b'c"), ["abc"]);
        assert!(split_args("'open").unwrap_err().contains('\''));
        assert!(split_args("\"open").is_err());
        assert!(split_args("end\\").is_err());
    }

    #[test]
    fn values_read_from_the_passed_arguments() {
        let mut c = LlamaConfig::new("llama-server", "/m/qwen.gguf");
        assert_eq!(c.context(), 0);
        c.args = split_args("-c 4096 --ctx-size=8192").unwrap();
        assert_eq!(c.context(), 8192);
        assert_eq!(c.model_id(), "qwen.gguf");
    }

    #[test]
    fn the_api_key_is_taken_out_of_the_arguments_and_never_shown() {
        let parse = |line: &str| {
            let argv = [
                "-llama-server",
                "ls",
                "-llama-model",
                "/m/q.gguf",
                "-llama-args",
                line,
            ];
            match super::super::parse_args(argv.iter().map(OsString::from).collect()) {
                Ok(super::super::Command::Run(c)) => c.llama.unwrap(),
                other => panic!("{line}: {other:?}"),
            }
        };
        let c = parse("-c 4096 --api-key sk-local -t 4");
        assert_eq!(c.args, ["-c", "4096", "-t", "4"]);
        assert_eq!(c.api_key.as_deref(), Some("sk-local"));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("sk-local") && shown.contains("***"),
            "{shown}"
        );
        // The last one wins, in either form; a lone `--api-key` at the end changes nothing.
        let c = parse("--api-key=sk-1 --api-key sk-2 --api-key");
        assert_eq!((c.args.len(), c.api_key.as_deref()), (0, Some("sk-2")));
        let c = parse("-c 4096");
        assert_eq!(c.api_key, None);
        let argv = [
            "-llama-server",
            "ls",
            "-llama-model",
            "m",
            "-llama-args",
            "--api-key-file k",
        ];
        let refused = super::super::parse_args(argv.iter().map(OsString::from).collect());
        assert!(
            matches!(&refused, Err(Error::Usage { message }) if message.contains("'--api-key-file' cannot be used")),
            "{refused:?}"
        );
        assert!(format!("{c:?}").contains("api_key: None"));
    }

    #[test]
    fn names() {
        assert_eq!(model_name(" Local ").unwrap(), "Local");
        assert_eq!(model_name("qwen2.5-1.5b_q4").unwrap(), "qwen2.5-1.5b_q4");
        for bad in ["", ".x", "-x", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(model_name(bad).is_err(), "{bad}");
        }
    }
}
