//! The built `sigoe` binary, run as a user would: a clean environment, a temporary working
//! directory, the prompt from arguments and stdin, against the scripted fake upstream
//! (direct mode) or an in-process gateway in front of it (`-server`). Checked: stdout,
//! stderr, the exit status, what the upstream received, and the files left behind.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::gateway::{Gateway, Options, TempDir};
use crate::support::upstream::{FakeUpstream, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_sigoe");

/// What one run of sigoe left.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts a failure with this status and exactly one line on stderr; returns the line.
    fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("sigoe: "), "{self:#?}");
        lines[0]
    }

    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert_eq!(self.stderr, "", "nothing on stderr: {self:#?}");
        &self.stdout
    }
}

/// Runs sigoe in `dir` with only PATH and `env` set; `stdin` piped in, or `/dev/null`.
fn sigoe(dir: &Path, env: &[(&str, String)], args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn sigoe");
    let writer = stdin.map(|text| {
        let mut pipe = child.stdin.take().expect("stdin");
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let out = child.wait_with_output().expect("sigoe runs");
    if let Some(w) = writer {
        let _ = w.join();
    }
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Mammouth's key and base URL pointing at the fake.
fn provider_env(fake: &FakeUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("MAMMOUTH_API_KEY", "test-key".to_string()),
        ("MAMMOUTH_BASE_URL", fake.base_url()),
    ]
}

fn direct(fake: &FakeUpstream, dir: &TempDir, args: &[&str], stdin: Option<&str>) -> Run {
    sigoe(dir.path(), &provider_env(fake), args, stdin)
}

fn messages(body: &Value) -> Vec<(String, Value)> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or("").to_string(),
                m["content"].clone(),
            )
        })
        .collect()
}

fn user(text: &str) -> (String, Value) {
    ("user".to_string(), json!(text))
}

fn assistant(text: &str) -> (String, Value) {
    ("assistant".to_string(), json!(text))
}

#[test]
fn the_answer_goes_to_stdout_and_the_provider_gets_a_plain_request() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-plain");
    fake.push(Reply::chat("Bonjour."));
    let run = direct(&fake, &dir, &["say", "hello", "in", "French"], None);
    assert_eq!(run.ok(), "Bonjour.\n");

    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].header("authorization"), Some("Bearer test-key"));
    let body = seen[0].json.clone().expect("JSON body");
    assert_eq!(
        body["model"], "gpt-4.1",
        "-m defaults to gpt41, sent as its upstream id"
    );
    assert_eq!(messages(&body), [user("say hello in French")]);
    for k in [
        "session_id",
        "timeout",
        "retries",
        "stream",
        "max_tokens",
        "temperature",
    ] {
        assert!(
            body.get(k).is_none(),
            "{k} must not reach the provider: {body}"
        );
    }
    assert!(!dir.join(".sessions").exists(), "no session without -s");
}

#[test]
fn the_prompt_comes_from_stdin_and_follows_the_arguments() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-stdin");
    // stdin alone.
    let run = direct(&fake, &dir, &[], Some("what is 2+2?\n"));
    assert_eq!(run.ok(), "echo: what is 2+2?\n", "no second line break");
    assert_eq!(
        messages(&fake.last_json().unwrap()),
        [user("what is 2+2?\n")]
    );
    // Arguments, then stdin after a blank line: `git diff | sigoe -m claude-h "review this"`.
    let diff = "diff --git a/x b/x\n-old\n+new\n";
    direct(&fake, &dir, &["-m", "claude-h", "review this"], Some(diff)).ok();
    let body = fake.last_json().unwrap();
    assert_eq!(body["model"], "claude-3-5-haiku-20241022");
    assert_eq!(messages(&body), [user(&format!("review this\n\n{diff}"))]);
    // Arguments and an empty stdin: the arguments alone.
    direct(&fake, &dir, &["just", "this"], Some("")).ok();
    assert_eq!(messages(&fake.last_json().unwrap()), [user("just this")]);
    // `--` lets a prompt start with a dash; words after the prompt are not flags.
    direct(&fake, &dir, &["-m", "gpt41", "--", "-l", "means?"], None).ok();
    assert_eq!(messages(&fake.last_json().unwrap()), [user("-l means?")]);
    direct(&fake, &dir, &["explain", "ls", "-l"], None).ok();
    assert_eq!(
        messages(&fake.last_json().unwrap()),
        [user("explain ls -l")]
    );
}

#[test]
fn memory_goes_first_and_the_clamps_apply() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-memory");
    std::fs::write(
        dir.join("memory.json"),
        r#"{"content": "I live in Lyon.", "cache": true}"#,
    )
    .unwrap();
    direct(
        &fake,
        &dir,
        &["-m", "claude-h", "-n", "99999", "-T", "1.7", "weather?"],
        None,
    )
    .ok();
    let body = fake.last_json().unwrap();
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": [{"type": "text", "text": "I live in Lyon.",
            "cache_control": {"type": "ephemeral"}}]}),
        "memory first, marked for Claude's cache"
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "weather?"})
    );
    assert_eq!(body["max_tokens"], 8192, "clamped to the output limit");
    assert_eq!(body["temperature"], 1.0, "clamped into Claude's range");

    // A model that wants max_completion_tokens; the memory as a plain string.
    direct(&fake, &dir, &["-m", "gpt5m", "-n", "100", "q"], None).ok();
    let body = fake.last_json().unwrap();
    assert_eq!(body["max_completion_tokens"], 100);
    assert!(body.get("max_tokens").is_none());
    assert_eq!(body["messages"][0]["content"], "I live in Lyon.");

    // -memory points elsewhere.
    std::fs::write(dir.join("other.json"), r#"{"content": "Other memory."}"#).unwrap();
    direct(&fake, &dir, &["-memory", "other.json", "q"], None).ok();
    assert_eq!(
        fake.last_json().unwrap()["messages"][0]["content"],
        "Other memory."
    );
}

#[test]
fn a_session_keeps_the_conversation_in_the_servers_files() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-session");
    fake.push(Reply::chat("Nice to meet you, Ana."));
    direct(&fake, &dir, &["-s", "notes", "I am Ana"], None).ok();
    let file = dir.join(".sessions/gpt41@notes.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        saved,
        json!({"history": [{"role": "user", "content": "I am Ana"},
            {"role": "assistant", "content": "Nice to meet you, Ana."}]})
    );

    fake.push(Reply::chat("Ana."));
    direct(&fake, &dir, &["-s", "notes", "who am I?"], None).ok();
    assert_eq!(
        messages(&fake.last_json().unwrap()),
        [
            user("I am Ana"),
            assistant("Nice to meet you, Ana."),
            user("who am I?")
        ]
    );
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["history"].as_array().unwrap().len(), 4);
    // No temporary file is left beside it (atomic writes).
    let names: Vec<_> = std::fs::read_dir(dir.join(".sessions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(names, ["gpt41@notes.json"]);

    // -sessions points elsewhere; another model is another file.
    direct(
        &fake,
        &dir,
        &[
            "-sessions",
            "elsewhere",
            "-s",
            "notes",
            "-m",
            "claude-h",
            "hi",
        ],
        None,
    )
    .ok();
    assert!(dir.join("elsewhere/claude-h@notes.json").exists());
}

#[test]
fn a_stream_is_printed_as_it_arrives_and_kept_in_the_session() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-stream");
    fake.push(Reply::chat_stream(&["Hel", "lo", " world"]));
    let run = direct(&fake, &dir, &["-stream", "-s", "s1", "greet"], None);
    assert_eq!(run.ok(), "Hello world\n");
    let body = fake.last_json().unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.join(".sessions/gpt41@s1.json")).unwrap())
            .unwrap();
    assert_eq!(
        saved["history"][1],
        json!({"role": "assistant", "content": "Hello world"})
    );
}

#[test]
fn switches_take_true_or_false_after_equals_as_in_go() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-switch-values");
    fake.push(Reply::chat_stream(&["stre", "amed"]));
    assert_eq!(
        direct(&fake, &dir, &["-stream=true", "hi"], None).ok(),
        "streamed\n"
    );
    assert_eq!(fake.last_json().unwrap()["stream"], true);
    fake.push(Reply::chat("whole"));
    assert_eq!(
        direct(&fake, &dir, &["-stream=false", "hi"], None).ok(),
        "whole\n"
    );
    assert!(fake.last_json().unwrap().get("stream").is_none());
    let run = direct(&fake, &dir, &["-stream=maybe", "hi"], None);
    let line = run.failed(2);
    assert!(
        line.contains("-stream: 'maybe' is not true or false"),
        "{line}"
    );
    assert_eq!(fake.request_count(), 2);
}

#[test]
fn a_pipe_gets_the_answers_control_characters_as_they_came() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-raw-bytes");
    let answer = "\x1b]0;pwned\x07\x1b[31mred\x1b[0m\r\u{9b}2J\x08";
    fake.push(Reply::chat(answer));
    let run = direct(&fake, &dir, &["hi"], None);
    assert_eq!(run.ok(), format!("{answer}\n"));
    fake.push(Reply::chat_stream(&["\x1b]0;pw", "ned\x07\r", "\u{9b}2J"]));
    let run = direct(&fake, &dir, &["-stream", "hi"], None);
    assert_eq!(run.ok(), "\x1b]0;pwned\x07\r\u{9b}2J\n");
    fake.push(Reply::chat(answer));
    let run = direct(&fake, &dir, &["-j", "hi"], None);
    let v: Value = serde_json::from_str(run.ok()).expect("stdout is JSON");
    assert_eq!(v["choices"][0]["message"]["content"], answer);
}

#[test]
fn an_emoji_split_across_two_chunks_is_printed_and_kept_whole() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-emoji");
    // The two halves of U+1F600 in two deltas, as JSON escapes (a `Value` cannot hold half).
    let chunk =
        |json: &str| format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"{json}"}}}}]}}"#);
    fake.push(Reply::stream([
        chunk(r"A\ud83d"),
        chunk(r"\ude00B"),
        "[DONE]".to_string(),
    ]));
    let run = direct(&fake, &dir, &["-stream", "-s", "e", "smile"], None);
    assert_eq!(run.ok(), "A\u{1F600}B\n");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.join(".sessions/gpt41@e.json")).unwrap())
            .unwrap();
    assert_eq!(saved["history"][1]["content"], "A\u{1F600}B");
}

#[test]
fn each_piece_reaches_stdout_before_the_stream_ends() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-live");
    let chunk = |t: &str| json!({"choices": [{"index": 0, "delta": {"content": t}}]}).to_string();
    // Two pieces, then the stream stays open: only an unbuffered client shows them now.
    fake.push(Reply::stream([chunk("Hel"), chunk("lo")]).then_hang());
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .envs(provider_env(&fake))
        .args(["-stream", "-t", "60", "hi"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sigoe");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
            if tx
                .send(String::from_utf8_lossy(&seen).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut shown = String::new();
    while shown != "Hello" {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(text) => shown = text,
            Err(e) => panic!("stdout so far {shown:?}: {e}"),
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "still streaming");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_stream_cut_midway_fails_and_keeps_no_turn() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-cut");
    fake.push(Reply::chat_stream(&["partial", " answer"]).cut_after(2));
    let run = direct(&fake, &dir, &["-stream", "-s", "s1", "q"], None);
    let line = run.failed(1);
    assert!(line.contains("gpt41") && line.contains("stream"), "{line}");
    assert_eq!(
        run.stdout, "partial\n",
        "what arrived, ended by a line break"
    );
    assert!(!dir.join(".sessions/gpt41@s1.json").exists());
}

#[test]
fn json_prints_the_whole_response() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-json");
    fake.push(Reply::chat("Hi.").usage(5, 2));
    let run = direct(&fake, &dir, &["-j", "hello"], None);
    let v: Value = serde_json::from_str(run.ok()).expect("stdout is JSON");
    assert_eq!(v["choices"][0]["message"]["content"], "Hi.");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert!(
        !fake.last_json().unwrap()["stream"]
            .as_bool()
            .unwrap_or(false)
    );
}

#[test]
fn an_upstream_500_is_retried_then_exits_1_with_one_line() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-500");
    fake.push_n(3, Reply::error(500, "the model is on fire"));
    let run = direct(&fake, &dir, &["-r", "3", "hello"], None);
    let line = run.failed(1);
    assert!(
        line.contains("500") && line.contains("the model is on fire"),
        "{line}"
    );
    assert_eq!(run.stdout, "");
    assert_eq!(fake.request_count(), 3, "-r 3 is three attempts in all");

    // Default: 3 attempts; the third succeeds.
    fake.push_n(2, Reply::status(503));
    fake.push(Reply::chat("finally"));
    assert_eq!(direct(&fake, &dir, &["hello"], None).ok(), "finally\n");
    assert_eq!(fake.request_count(), 6);
}

#[test]
fn a_client_error_is_not_retried() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-401");
    fake.push(Reply::error(401, "Invalid API key"));
    let run = direct(&fake, &dir, &["hello"], None);
    assert!(run.failed(1).contains("Invalid API key"));
    assert_eq!(fake.request_count(), 1);
}

#[test]
fn the_timeout_bounds_the_call() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-timeout");
    fake.push(Reply::chat("too late").delay(Duration::from_secs(10)));
    let started = Instant::now();
    let run = direct(&fake, &dir, &["-t", "1", "-r", "1", "hello"], None);
    assert!(run.failed(1).contains("timeout"), "{run:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_unknown_model_is_bad_usage() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-unknown");
    let line = direct(&fake, &dir, &["-m", "gpt-99", "hello"], None)
        .failed(2)
        .to_string();
    assert!(
        line.contains("gpt-99") && line.contains("sigoe -l"),
        "{line}"
    );
    let line = direct(&fake, &dir, &["-m", "ollama-qwen3", "hello"], None)
        .failed(2)
        .to_string();
    assert!(line.contains("-server"), "{line}");
    assert_eq!(fake.request_count(), 0);
}

#[test]
fn a_missing_key_exits_1_naming_the_variable() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-nokey");
    let run = direct(&fake, &dir, &["-m", "kimi", "hello"], Some("never read"));
    assert!(run.failed(1).contains("MOONSHOT_API_KEY"), "{run:#?}");
    let run = sigoe(dir.path(), &[], &["hello"], None);
    assert!(run.failed(1).contains("MAMMOUTH_API_KEY"), "{run:#?}");
    assert_eq!(fake.request_count(), 0);
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-usage");
    for args in [
        &["-n", "0", "hi"][..],
        &["-x", "hi"],
        &["-m"],
        &["-m", "-q", "hi"],
        &["-s", "../escape", "hi"],
        &["-t", "soon", "hi"],
        &["-j", "-stream", "hi"],
        &["-l", "-i", "gpt41"],
        &["-cacert", "ca.pem", "hi"],
        &["-server", "box:9080", "hi"],
    ] {
        let run = direct(&fake, &dir, args, None);
        run.failed(2);
        assert_eq!(run.stdout, "", "{args:?}");
    }
    // No prompt at all.
    assert!(
        direct(&fake, &dir, &[], None)
            .failed(2)
            .contains("no prompt")
    );
    assert!(
        direct(&fake, &dir, &[], Some(" \n"))
            .failed(2)
            .contains("no prompt")
    );
    // A memory file that does not parse names file, line and column.
    std::fs::write(
        dir.join("memory.json"),
        "{\"content\": \"x\",\n \"cache\": tru }\n",
    )
    .unwrap();
    let line = direct(&fake, &dir, &["hi"], None).failed(2).to_string();
    assert!(line.contains("memory.json:2:"), "{line}");
    // One over the gateway's cap on the content: refused as the gateway refuses it.
    let content = "a".repeat((1 << 20) + 1);
    std::fs::write(
        dir.join("memory.json"),
        format!(r#"{{"content": "{content}"}}"#),
    )
    .unwrap();
    let line = direct(&fake, &dir, &["hi"], None).failed(2).to_string();
    assert!(
        line.contains("memory.json: memory content too large"),
        "{line}"
    );
    assert_eq!(fake.request_count(), 0);
}

#[test]
fn help_and_version_exit_0() {
    let dir = TempDir::new("sigoe-help");
    let run = sigoe(dir.path(), &[], &["-h"], None);
    assert!(run.ok().contains("Usage: sigoe [flags] [prompt...]"));
    let run = sigoe(dir.path(), &[], &["--version"], None);
    assert_eq!(run.ok(), format!("sigoe {}\n", sigorest::VERSION));
}

#[test]
fn list_shows_every_catalog_model_aligned() {
    let dir = TempDir::new("sigoe-list");
    let env = [("MAMMOUTH_API_KEY", "k".to_string())];
    let run = sigoe(dir.path(), &env, &["-l"], None);
    let out = run.ok();
    let lines: Vec<&str> = out.lines().collect();
    let catalog = sigorest::parts::Catalog::embedded();
    assert_eq!(lines.len(), catalog.all().len() + 1);
    assert!(lines[0].starts_with("MODEL "), "{}", lines[0]);
    for col in [
        "ID", "PROVIDER", "CONTEXT", "OUTPUT", "$IN/M", "$OUT/M", "KEY",
    ] {
        assert!(lines[0].contains(col), "{col}");
    }
    let provider_at = lines[0].find("PROVIDER").unwrap();
    for (line, m) in lines[1..].iter().zip(catalog.all()) {
        assert!(line.starts_with(&format!("{} ", m.short)), "{line}");
        assert_eq!(
            &line[provider_at..provider_at + m.provider.name().len()],
            m.provider.name()
        );
    }
    let gpt = lines.iter().find(|l| l.starts_with("gpt41 ")).unwrap();
    assert!(
        gpt.contains("gpt-4.1") && gpt.contains("128000") && gpt.ends_with("set"),
        "{gpt}"
    );
    let kimi = lines.iter().find(|l| l.starts_with("kimi ")).unwrap();
    assert!(kimi.ends_with("missing"), "{kimi}");
}

#[test]
fn info_shows_one_model() {
    let dir = TempDir::new("sigoe-info");
    let env = [("ZAI_BASE_URL", "http://127.0.0.1:1/v4".to_string())];
    let out = sigoe(dir.path(), &env, &["-i", "GLM-4.6"], None)
        .ok()
        .to_string();
    for needle in [
        "model        zai-glm46",
        "id           GLM-4.6",
        "provider     zai",
        "endpoint     http://127.0.0.1:1/v4/chat/completions",
        "key          ZAI_API_KEY (missing)",
        "context      200000 tokens",
        "max output   4096 tokens, sent as max_tokens",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let run = sigoe(dir.path(), &[], &["-i", "nope"], None);
    assert!(run.failed(2).contains("nope"));
}

// ---- through a gateway (-server) ----------------------------------------------------------

/// A gateway in front of the fake, every provider key set there and none in sigoe's env.
fn gateway(fake: &FakeUpstream) -> Gateway {
    Gateway::start(Options::default().upstream(&fake.base_url()))
}

#[test]
fn through_a_gateway_the_extensions_go_along_and_the_gateway_keeps_the_session() {
    let fake = FakeUpstream::start();
    let gw = gateway(&fake);
    let dir = TempDir::new("sigoe-server");
    std::fs::write(dir.join("memory.json"), r#"{"content": "local memory"}"#).unwrap();
    fake.push(Reply::chat("Hi from the gateway."));
    let url = gw.url("");
    let run = sigoe(
        dir.path(),
        &[],
        &[
            "-server", &url, "-m", "claude-h", "-s", "lan", "-n", "99999", "hello",
        ],
        None,
    );
    assert_eq!(run.ok(), "Hi from the gateway.\n");
    let body = fake.last_json().unwrap();
    assert_eq!(body["model"], "claude-3-5-haiku-20241022");
    assert_eq!(body["max_tokens"], 8192, "the gateway clamps");
    assert_eq!(
        messages(&body),
        [user("hello")],
        "the local memory.json is not used"
    );
    for k in ["session_id", "timeout", "retries"] {
        assert!(body.get(k).is_none(), "{k}");
    }
    assert!(
        gw.dir.join("sessions/claude-h@lan.json").exists(),
        "the gateway's session"
    );
    assert!(!dir.join(".sessions").exists(), "no local session");

    // SIGOREST_URL does the same; the gateway's history comes back.
    fake.push(Reply::chat("You said hello."));
    let env = [("SIGOREST_URL", format!("{url}/v1/"))];
    let run = sigoe(
        dir.path(),
        &env,
        &["-m", "claude-h", "-s", "lan", "what did I say?"],
        None,
    );
    assert_eq!(run.ok(), "You said hello.\n");
    assert_eq!(
        messages(&fake.last_json().unwrap()),
        [
            user("hello"),
            assistant("Hi from the gateway."),
            user("what did I say?")
        ]
    );
    // A bad SIGOREST_URL is named as such.
    let bad = [("SIGOREST_URL", "box:9080".to_string())];
    let line = sigoe(dir.path(), &bad, &["hello"], None)
        .failed(2)
        .to_string();
    assert!(line.contains("SIGOREST_URL: 'box:9080'"), "{line}");
    // -server '' forces direct mode: no key here.
    let run = sigoe(dir.path(), &env, &["-server", "", "hello"], None);
    assert!(run.failed(1).contains("MAMMOUTH_API_KEY"));
}

#[test]
fn through_a_gateway_its_retries_count_and_sigoe_does_not_add_its_own() {
    let fake = FakeUpstream::start();
    let gw = gateway(&fake);
    let dir = TempDir::new("sigoe-server-500");
    fake.push_n(2, Reply::error(500, "boom"));
    let run = sigoe(
        dir.path(),
        &[],
        &["-server", &gw.url(""), "-r", "2", "hello"],
        None,
    );
    let line = run.failed(1);
    assert!(
        line.contains("gateway answered 502") && line.contains("boom"),
        "{line}"
    );
    assert_eq!(
        fake.request_count(),
        2,
        "the gateway's two attempts, and no more"
    );
}

#[test]
fn through_a_gateway_streams_lists_and_unknown_models() {
    let fake = FakeUpstream::start();
    let gw = gateway(&fake);
    let dir = TempDir::new("sigoe-server-stream");
    let url = gw.url("");
    fake.push(Reply::chat_stream(&["str", "eam", "ed"]));
    let run = sigoe(
        dir.path(),
        &[],
        &["-server", &url, "-stream", "hello"],
        None,
    );
    assert_eq!(run.ok(), "streamed\n");
    assert_eq!(fake.last_json().unwrap()["stream"], true);

    // -l lists what the gateway offers, with its keys.
    let run = sigoe(dir.path(), &[], &["-server", &url, "-l"], None);
    let out = run.ok();
    assert_eq!(out.lines().count(), 7, "the default whitelist: {out}");
    assert!(out.lines().skip(1).all(|l| l.ends_with("set")), "{out}");
    let out = sigoe(dir.path(), &[], &["-server", &url, "-i", "kimi"], None)
        .ok()
        .to_string();
    assert!(
        out.contains("MOONSHOT_API_KEY (set)") && out.contains("(the gateway)"),
        "{out}"
    );

    // A model the gateway does not offer: bad usage, as in direct mode.
    let run = sigoe(
        dir.path(),
        &[],
        &["-server", &url, "-m", "gpt-99", "hello"],
        None,
    );
    assert!(run.failed(2).contains("gpt-99"));
    let run = sigoe(dir.path(), &[], &["-server", &url, "-i", "gpt41m"], None);
    run.failed(2);
}

#[test]
fn a_stream_the_gateway_reports_cut_is_said_once() {
    let fake = FakeUpstream::start();
    let gw = gateway(&fake);
    let dir = TempDir::new("sigoe-server-cut");
    fake.push(Reply::chat_stream(&["partial", " answer"]).cut_after(2));
    let url = gw.url("");
    let run = sigoe(dir.path(), &[], &["-server", &url, "-stream", "q"], None);
    let line = run.failed(1);
    assert_eq!(run.stdout, "partial\n");
    // Before: "gpt41: provider reported an error: upstream error: gpt41: stream ended…".
    assert_eq!(line.matches("gpt41").count(), 1, "{line}");
    assert_eq!(line.matches("upstream error").count(), 1, "{line}");
    assert!(
        line.contains("stream") && line.contains("said the gateway at http://127.0.0.1:"),
        "{line}"
    );
}

#[test]
fn a_gateway_url_with_a_query_or_a_password_is_bad_usage() {
    let dir = TempDir::new("sigoe-server-url");
    for url in [
        "http://127.0.0.1:9?x=1",
        "http://127.0.0.1:9#frag",
        "http://user:s3cret@127.0.0.1:9",
    ] {
        let run = sigoe(dir.path(), &[], &["-server", url, "hello"], None);
        let line = run.failed(2);
        assert!(line.starts_with("sigoe: -server: "), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
        let env = [("SIGOREST_URL", url.to_string())];
        let line = sigoe(dir.path(), &env, &["hello"], None)
            .failed(2)
            .to_string();
        assert!(line.starts_with("sigoe: SIGOREST_URL: "), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
    }
}

#[test]
fn an_unreachable_gateway_exits_1() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dir = TempDir::new("sigoe-server-down");
    let url = format!("http://127.0.0.1:{port}");
    let run = sigoe(dir.path(), &[], &["-server", &url, "hello"], None);
    assert!(
        run.failed(1).contains("cannot reach the gateway"),
        "{run:#?}"
    );
}

#[test]
fn https_to_a_gateway_with_its_self_signed_certificate() {
    let fake = FakeUpstream::start();
    let mut opts = Options::default().upstream(&fake.base_url());
    opts.https = true;
    let gw = Gateway::start(opts);
    let dir = TempDir::new("sigoe-server-tls");
    let url = format!("https://{}", gw.https.expect("https listener"));
    let cert = gw.dir.join("certs/server.crt");
    let cert = cert.to_str().unwrap();
    fake.push(Reply::chat("over TLS"));
    let run = sigoe(
        dir.path(),
        &[],
        &["-server", &url, "-cacert", cert, "hello"],
        None,
    );
    assert_eq!(run.ok(), "over TLS\n");
    // Without it the certificate is not trusted.
    let run = sigoe(dir.path(), &[], &["-server", &url, "hello"], None);
    let line = run.failed(1);
    assert!(
        line.contains("certificate") && line.contains("-cacert"),
        "{line}"
    );
    assert_eq!(fake.request_count(), 1);
    // A file that holds no certificate is bad usage.
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    let run = sigoe(
        dir.path(),
        &[],
        &["-server", &url, "-cacert", "junk.pem", "hi"],
        None,
    );
    assert!(run.failed(2).contains("no certificate"));
}

// ---- answers without text, refusals --------------------------------------------------------

fn refusal_body() -> Value {
    json!({"id": "r", "object": "chat.completion", "model": "gpt-4.1",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": null, "refusal": "I cannot help"}}]})
}

fn filtered_body() -> Value {
    json!({"id": "f", "object": "chat.completion", "model": "gpt-4.1",
        "choices": [{"index": 0, "finish_reason": "content_filter",
            "message": {"role": "assistant", "content": ""}}]})
}

fn refusal_stream() -> Reply {
    Reply::stream([
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"refusal":"I cannot "}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"refusal":"help"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        "[DONE]",
    ])
}

fn filtered_stream() -> Reply {
    Reply::stream([
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}"#,
        "[DONE]",
    ])
}

fn history(dir: &TempDir, name: &str) -> Option<Value> {
    let bytes = std::fs::read(dir.join(&format!(".sessions/{name}"))).ok()?;
    Some(serde_json::from_slice::<Value>(&bytes).unwrap()["history"].clone())
}

#[test]
fn a_refusal_is_the_answer_and_is_kept_as_the_assistants_text() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-refusal");
    fake.push(Reply::json(200, refusal_body()));
    let run = direct(&fake, &dir, &["-s", "r", "x"], None);
    assert_eq!(run.ok(), "I cannot help\n");
    fake.push(refusal_stream());
    let run = direct(&fake, &dir, &["-s", "r", "-stream", "y"], None);
    assert_eq!(run.ok(), "I cannot help\n");
    assert_eq!(
        history(&dir, "gpt41@r.json").unwrap(),
        json!([{"role": "user", "content": "x"},
            {"role": "assistant", "content": "I cannot help"},
            {"role": "user", "content": "y"},
            {"role": "assistant", "content": "I cannot help"}])
    );

    // Through a gateway, the same words.
    let gw = gateway(&fake);
    let url = gw.url("");
    fake.push(Reply::json(200, refusal_body()));
    let run = sigoe(dir.path(), &[], &["-server", &url, "x"], None);
    assert_eq!(run.ok(), "I cannot help\n");
    fake.push(refusal_stream());
    let run = sigoe(dir.path(), &[], &["-server", &url, "-stream", "x"], None);
    assert_eq!(run.ok(), "I cannot help\n");
}

#[test]
fn an_answer_without_text_fails_saying_why_and_keeps_no_turn() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-no-text");
    let cases: [(Reply, &[&str], &str); 4] = [
        (
            Reply::json(200, filtered_body()),
            &[],
            "gpt41: the provider filtered the answer (finish_reason content_filter)",
        ),
        (
            filtered_stream(),
            &["-stream"],
            "gpt41: the provider filtered the answer (finish_reason content_filter)",
        ),
        (
            Reply::chat(" \n"),
            &[],
            "gpt41: the model answered nothing (finish_reason stop)",
        ),
        (
            Reply::chat_stream(&[""]),
            &["-stream"],
            "gpt41: the model answered nothing (finish_reason stop)",
        ),
    ];
    for (reply, flags, why) in cases {
        fake.push(reply);
        let mut args = vec!["-s", "e"];
        args.extend_from_slice(flags);
        args.push("q");
        let run = direct(&fake, &dir, &args, None);
        assert_eq!(run.failed(1), format!("sigoe: {why}"), "{flags:?}");
        assert_eq!(run.stdout.trim(), "", "{flags:?}");
        assert_eq!(
            history(&dir, "gpt41@e.json"),
            None,
            "no turn kept: {flags:?}"
        );
    }
    // The next question of the session goes without the empty turn.
    fake.push(Reply::chat("Hi."));
    direct(&fake, &dir, &["-s", "e", "again"], None).ok();
    assert_eq!(messages(&fake.last_json().unwrap()), [user("again")]);

    // -j prints the response all the same, and fails.
    fake.push(Reply::json(200, filtered_body()));
    let run = direct(&fake, &dir, &["-j", "q"], None);
    assert!(run.failed(1).contains("content_filter"));
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["choices"][0]["finish_reason"], "content_filter");

    // Through a gateway, the same.
    let gw = gateway(&fake);
    let url = gw.url("");
    for (reply, stream) in [
        (Reply::json(200, filtered_body()), false),
        (filtered_stream(), true),
    ] {
        fake.push(reply);
        let mut args = vec!["-server", &url];
        if stream {
            args.push("-stream");
        }
        args.push("q");
        let run = sigoe(dir.path(), &[], &args, None);
        assert!(
            run.failed(1).ends_with("(finish_reason content_filter)"),
            "{run:#?}"
        );
    }
}

// ---- the gateway's limits, its URL, its key ------------------------------------------------

#[test]
fn without_t_a_gateway_applies_its_own_timeout() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .configure(|c| c.max_timeout = Duration::from_secs(120)),
    );
    let dir = TempDir::new("sigoe-gateway-timeout");
    let url = gw.url("");
    fake.push(Reply::chat("fine"));
    let run = sigoe(dir.path(), &[], &["-server", &url, "hi"], None);
    assert_eq!(run.ok(), "fine\n");
    // With -t it goes, and the gateway's refusal is said.
    let run = sigoe(dir.path(), &[], &["-server", &url, "-t", "300", "hi"], None);
    let line = run.failed(1);
    assert!(line.contains("400") && line.contains("120"), "{line}");
    fake.push(Reply::chat("fine"));
    let run = sigoe(dir.path(), &[], &["-server", &url, "-t", "60", "hi"], None);
    assert_eq!(run.ok(), "fine\n");
    assert_eq!(fake.request_count(), 2);
}

#[test]
fn a_gateway_url_with_a_path_is_bad_usage() {
    let dir = TempDir::new("sigoe-server-path");
    for url in [
        "http://127.0.0.1:9/claude-h",
        "http://127.0.0.1:9/api",
        "http://127.0.0.1:9/v1/chat/completions",
    ] {
        let run = sigoe(dir.path(), &[], &["-server", url, "hello"], None);
        let line = run.failed(2);
        assert!(
            line.starts_with("sigoe: -server: ") && line.contains("/v1"),
            "{line}"
        );
        let env = [("SIGOREST_URL", url.to_string())];
        let line = sigoe(dir.path(), &env, &["hello"], None)
            .failed(2)
            .to_string();
        assert!(line.starts_with("sigoe: SIGOREST_URL: "), "{line}");
    }
}

#[test]
fn a_key_with_a_control_character_inside_is_bad_usage() {
    let dir = TempDir::new("sigoe-key-crlf");
    let env = [
        ("SIGOREST_URL", "http://127.0.0.1:9".to_string()),
        ("SIGOREST_API_KEY", "sk-1\r\nX-Evil: 1".to_string()),
    ];
    let line = sigoe(dir.path(), &env, &["hello"], None)
        .failed(2)
        .to_string();
    assert!(line.starts_with("sigoe: SIGOREST_API_KEY: "), "{line}");
    assert!(!line.contains("sk-1"), "the key is not shown: {line}");
}

// ---- stdin, stdout ------------------------------------------------------------------------

#[test]
fn stdin_over_32_mib_is_bad_usage() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("sigoe-stdin-cap");
    let big = "y\n".repeat(16 * 1024 * 1024 + 1);
    let run = direct(&fake, &dir, &["summarize"], Some(&big));
    assert!(run.failed(2).contains("over 32 MiB"), "{run:#?}");
    assert_eq!(fake.request_count(), 0);
}

/// Runs sigoe with stdout on `out` (a closed pipe, /dev/full); returns the status and stderr.
fn sigoe_to(out: Stdio, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped());
    let out = cmd.output().expect("sigoe runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A pipe whose reading end is already closed: every write gets EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Stdio::from(writer)
}

fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

#[test]
fn help_and_version_end_quietly_on_a_closed_stdout_and_say_a_full_one() {
    for bin in [BIN, env!("CARGO_BIN_EXE_sigorest")] {
        for flag in ["-h", "-help", "-version"] {
            let run = |out: Stdio| {
                let out = Command::new(bin)
                    .env_clear()
                    .arg(flag)
                    .stdout(out)
                    .stderr(Stdio::piped())
                    .output()
                    .expect("runs");
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            };
            let (code, stderr) = run(closed_pipe());
            assert_eq!((code, stderr.as_str()), (Some(0), ""), "{bin} {flag}");
            let (code, stderr) = run(dev_full());
            assert_eq!(code, Some(1), "{bin} {flag}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{bin} {flag}: {stderr}");
            assert!(stderr.contains("cannot write to stdout"), "{stderr}");
        }
    }
}

#[test]
fn newkey_shows_the_key_only_once_its_line_is_written() {
    for out in [dev_full(), closed_pipe()] {
        let (code, stderr) = sigoe_to(out, &["-newkey", "ana"]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(!stderr.contains("sk-sigo-"), "no key shown: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
