//! The real binary as systemd runs it: start-up line, exit codes, SIGTERM with a stream in
//! flight, SIGHUP reloads, secrets kept out of the logs, JSON logs, and the unit file.

use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::client::{self, Call};
use crate::support::gateway::{TempDir, post_and_keep};
use crate::support::process::{Server, free_port};
use crate::support::upstream::{FakeUpstream, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_sigorest");

fn env_for(fake: &FakeUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("MAMMOUTH_API_KEY", "sk-provider-secret-123".to_string()),
        ("MAMMOUTH_BASE_URL", fake.base_url()),
        ("OLLAMA_HOST", "127.0.0.1:9".to_string()),
    ]
}

fn start(dir: TempDir, args: &[&str], env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(dir, args, &env)
}

#[test]
fn version_and_help_exit_0() {
    let out = Command::new(BIN).arg("-version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sigorest {}", sigorest::VERSION)
    );
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-http-allow"));
}

#[test]
fn bad_flags_and_broken_files_exit_2_with_one_line() {
    for args in [
        &["-http-port", "abc"][..],
        &["-workers", "0"],
        &["-nope"],
        &["-http-allow", "10.0.0.0/99"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let dir = TempDir::new("badmem");
    std::fs::write(
        dir.join("memory.json"),
        "{\"content\": \"x\",\n \"cache\": tru }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["-http-port", &free_port().to_string(), "-https-port", "0"])
        .args(["-bind", "127.0.0.1"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory.json:2:"), "{err}");
    let kept = std::fs::read_to_string(dir.join("memory.json")).unwrap();
    assert!(kept.contains("tru }"), "the broken file is left as it was");
}

#[test]
fn the_startup_line_names_listeners_models_and_key_names_only() {
    let fake = FakeUpstream::start();
    let server = start(TempDir::new("startup"), &[], &env_for(&fake));
    let line = server.wait_for_line("sigorest started", Duration::from_secs(5));
    assert!(
        line.contains(&format!("version={}", sigorest::VERSION)),
        "{line}"
    );
    assert!(line.contains(&format!("http={}", server.addr)), "{line}");
    assert!(line.contains("http_allow=127.0.0.0/8,::1/128"), "{line}");
    assert!(line.contains("https=off"), "{line}");
    assert!(line.contains("models=6"), "{line}");
    assert!(line.contains("memory=empty"), "{line}");
    assert!(line.contains("keys=MAMMOUTH_API_KEY"), "{line}");
    assert!(!server.stderr().contains("sk-provider-secret-123"));
}

#[test]
fn a_fallback_or_auto_naming_no_model_is_warned_about_at_start() {
    let fake = FakeUpstream::start();
    let args = [
        "-fallback",
        "gpt41=gtp41|kimi,claude-h=grok3",
        "-auto",
        "kimi,nosuch",
    ];
    let server = start(TempDir::new("routes"), &args, &env_for(&fake));
    server.wait_for_line("sigorest started", Duration::from_secs(5));
    let log = server.stderr();
    let warned = |model: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&format!("model={model}")))
    };
    assert!(warned("gtp41") && warned("nosuch"), "{log}");
    assert!(
        log.contains("grok3") && log.contains("not in models.csv"),
        "a cloud model not listed: {log}"
    );
    for listed in ["gpt41", "kimi", "claude-h"] {
        assert!(!warned(listed), "{listed}: {log}");
    }
}

#[test]
fn sigterm_lets_a_stream_in_flight_finish_and_exits_0() {
    let fake = FakeUpstream::start();
    fake.push(
        Reply::chat_stream(&["one ", "two ", "three ", "four"]).gap(Duration::from_millis(300)),
    );
    let mut server = start(
        TempDir::new("term"),
        &["-shutdown-grace", "20"],
        &env_for(&fake),
    );
    let addr = server.addr;
    let body = serde_json::to_vec(&json!({"model": "gpt41", "stream": true,
        "messages": [{"role": "user", "content": "count"}]}))
    .unwrap();
    let streaming = thread::spawn(move || client::stream(addr, &Call::post(&body)));
    fake.wait_for_requests(1, Duration::from_secs(5));
    server.signal("TERM");
    server.wait_for_line("shutting down", Duration::from_secs(5));
    let s = streaming.join().unwrap();
    assert_eq!(s.status, 200);
    assert_eq!(s.text(), "one two three four", "the answer was not cut");
    assert_eq!(s.payloads().last(), Some(&"[DONE]"));
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn requests_still_running_when_the_grace_runs_out_are_answered_and_counted() {
    use std::io::Read;
    let fake = FakeUpstream::start();
    fake.push(Reply::hang());
    let piece = json!({"choices": [{"index": 0, "delta": {"content": "first"}}]}).to_string();
    fake.push(Reply::stream([piece]).then_hang());
    let mut server = start(
        TempDir::new("grace-out"),
        &["-shutdown-grace", "1"],
        &env_for(&fake),
    );
    let send = |body: serde_json::Value| {
        let body = serde_json::to_vec(&body).unwrap();
        post_and_keep(server.addr, "/v1/chat/completions", &body, &[])
    };
    let messages = json!([{"role": "user", "content": "x"}]);
    let mut complete = send(json!({"model": "gpt41", "messages": messages}));
    fake.wait_for_requests(1, Duration::from_secs(5));
    let mut stream = send(json!({"model": "gpt41", "stream": true, "messages": messages}));
    fake.wait_for_requests(2, Duration::from_secs(5));
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("first") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first event");
        seen.extend_from_slice(&buf[..n]);
    }
    server.signal("TERM");
    let read_all = |sock: &mut std::net::TcpStream| {
        let mut got = Vec::new();
        let _ = sock.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    };
    let answer = read_all(&mut complete);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("shutting_down") && answer.contains("Retry-After: 5"),
        "{answer}"
    );
    let rest = read_all(&mut stream);
    assert!(rest.contains("shutting_down"), "a last error event: {rest}");
    let status = server.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    let log = server.stderr();
    // (The stream's 200 had gone out: its line keeps it, as for a client that left.)
    assert_eq!(
        log.matches("error=shutting_down").count(),
        2,
        "both in the access log: {log}"
    );
    assert!(log.contains("status=503"), "{log}");
    let usage: Value =
        serde_json::from_slice(&std::fs::read(server.dir.join(".sessions/usage.json")).unwrap())
            .unwrap();
    assert!(
        usage.to_string().contains("\"errors\":2"),
        "both counted: {usage}"
    );
}

/// The queued request leaves the line when the grace runs out, as it leaves it when its
/// client goes (unless the place the running one gives back reaches it first: either way
/// it is told).
#[test]
fn requests_still_in_the_queue_when_the_grace_runs_out_are_answered_too() {
    use std::io::Read;
    let fake = FakeUpstream::start();
    fake.set_default(Reply::hang());
    let mut server = start(
        TempDir::new("grace-queue"),
        &["-shutdown-grace", "1", "-workers", "1", "-queue", "1"],
        &env_for(&fake),
    );
    let body = serde_json::to_vec(&json!({"model": "gpt41",
        "messages": [{"role": "user", "content": "hang"}]}))
    .unwrap();
    let send = || post_and_keep(server.addr, "/v1/chat/completions", &body, &[]);
    let mut running = send();
    fake.wait_for_requests(1, Duration::from_secs(5));
    let mut queued = send();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.get("/api/health").json()["queue"]["depth"] != 1 {
        assert!(std::time::Instant::now() < deadline, "never queued");
        thread::sleep(Duration::from_millis(20));
    }
    server.signal("TERM");
    for sock in [&mut running, &mut queued] {
        let mut answer = String::new();
        let _ = sock.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("shutting_down"), "{answer}");
    }
    let status = server.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[test]
fn a_second_signal_ends_the_grace_at_once() {
    let fake = FakeUpstream::start();
    fake.set_default(Reply::hang());
    let mut server = start(
        TempDir::new("twice"),
        &["-shutdown-grace", "60"],
        &env_for(&fake),
    );
    let body = serde_json::to_vec(&json!({"model": "gpt41",
        "messages": [{"role": "user", "content": "hang"}]}))
    .unwrap();
    let mut hanging = std::net::TcpStream::connect(server.addr).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    std::io::Write::write_all(&mut hanging, &[head.as_bytes(), &body].concat()).unwrap();
    fake.wait_for_requests(1, Duration::from_secs(5));
    server.signal("TERM");
    server.wait_for_line("shutting down", Duration::from_secs(5));
    let started = std::time::Instant::now();
    server.signal("INT");
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(server.stderr().contains("a second signal: stopping now"));
    // Ended as when the grace runs out: told, logged.
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut hanging, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(server.stderr().contains("error=shutting_down"));
}

#[test]
fn sigint_stops_an_idle_server_at_once() {
    let fake = FakeUpstream::start();
    let mut server = start(TempDir::new("int"), &[], &env_for(&fake));
    let started = std::time::Instant::now();
    server.signal("INT");
    assert_eq!(server.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn sighup_reloads_the_whitelist_and_memory() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("hup");
    std::fs::write(dir.join("models.csv"), "gpt41\n").unwrap();
    let server = start(dir, &[], &env_for(&fake));
    let ids = |s: &Server| -> Vec<String> {
        s.get("/v1/models").json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&server), ["gpt41"]);
    std::fs::write(server.dir.join("models.csv"), "kimi, claude-h\n").unwrap();
    std::fs::write(server.dir.join("memory.json"), r#"{"content": "reloaded"}"#).unwrap();
    server.signal("HUP");
    let line = server.wait_for_line("configuration reloaded", Duration::from_secs(5));
    assert!(line.contains("added=kimi,claude-h"), "{line}");
    assert!(line.contains("removed=gpt41"), "{line}");
    assert_eq!(ids(&server), ["kimi", "claude-h"]);
    assert_eq!(server.get("/api/memory").json()["content"], "reloaded");
}

#[test]
fn a_broken_file_on_reload_keeps_the_old_configuration() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("hupbad");
    std::fs::write(dir.join("models.csv"), "gpt41\n").unwrap();
    std::fs::write(dir.join("memory.json"), r#"{"content": "old and good"}"#).unwrap();
    let server = start(dir, &[], &env_for(&fake));
    std::fs::write(server.dir.join("models.csv"), "kimi\n").unwrap();
    std::fs::write(server.dir.join("memory.json"), "{\n  \"content\": oops\n}").unwrap();
    server.signal("HUP");
    let line = server.wait_for_line("reload failed", Duration::from_secs(5));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("memory.json:2:"),
        "names file, line and column: {line}"
    );
    assert_eq!(server.get("/api/memory").json()["content"], "old and good");
    let models = server.get("/v1/models").json();
    assert_eq!(
        models["data"][0]["id"], "gpt41",
        "the whitelist did not change either"
    );
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
}

#[test]
fn secrets_never_reach_the_log_even_at_debug() {
    let fake = FakeUpstream::start();
    let server = start(TempDir::new("secrets"), &["-v", "debug"], &env_for(&fake));
    let body = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hello"}]}"#;
    let auth = [
        ("Authorization", "Bearer client-secret-456"),
        ("Content-Type", "application/json"),
    ];
    let r = crate::support::gateway::request(
        &server.url("/v1/chat/completions"),
        "POST",
        Some(body),
        &auth,
    );
    assert_eq!(r.status, 200);
    fake.push(Reply::error(401, "bad key sk-provider-secret-123"));
    let r = crate::support::gateway::request(
        &server.url("/v1/chat/completions"),
        "POST",
        Some(body),
        &auth,
    );
    assert_eq!(r.status, 401);
    let stream =
        br#"{"model": "gpt41", "stream": true, "messages": [{"role": "user", "content": "s"}]}"#;
    let s = client::stream(server.addr, &Call::post(stream));
    assert_eq!(s.status, 200);
    server.wait_for_line("status=200", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(200));
    let log = server.stderr();
    assert!(
        log.contains("upstream request"),
        "debug shows message bodies: {log}"
    );
    assert!(
        !log.contains("sk-provider-secret-123"),
        "provider key in the log:\n{log}"
    );
    assert!(
        !log.contains("client-secret-456"),
        "client Authorization in the log:\n{log}"
    );
    assert!(
        !log.to_lowercase().contains("bearer"),
        "an Authorization header in the log:\n{log}"
    );
}

#[test]
fn access_lines_have_the_design_fields_and_json_logs_parse() {
    let fake = FakeUpstream::start();
    let server = start(TempDir::new("jsonlog"), &["-j"], &env_for(&fake));
    let r = crate::support::gateway::request(
        &server.url("/v1/chat/completions"),
        "POST",
        Some(br#"{"model": "gpt41", "messages": [{"role": "user", "content": "x"}]}"#),
        &[],
    );
    assert_eq!(r.status, 200);
    let line = server.wait_for_line("\"/v1/chat/completions\"", Duration::from_secs(5));
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    assert!(v["msg"].is_string());
    assert_eq!(v["method"], "POST");
    assert_eq!(v["status"], 200);
    assert_eq!(v["model"], "gpt41");
    assert_eq!(v["ip"], "127.0.0.1");
    assert_eq!(v["attempts"], 1);
    assert!(v["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
    assert!(v["prompt_tokens"].is_u64(), "{line}");
    for l in server.stderr().lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

#[test]
fn the_access_line_names_the_models_called_apart_from_those_skipped() {
    let fake = FakeUpstream::start();
    let server = start(TempDir::new("tried"), &["-j"], &env_for(&fake));
    let chat = |body: Value| {
        let body = body.to_string();
        crate::support::gateway::request(
            &server.url("/v1/chat/completions"),
            "POST",
            Some(body.as_bytes()),
            &[],
        )
    };
    let access_line = |needle: &str| -> Value {
        let line = server.wait_for_line(needle, Duration::from_secs(5));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    // gpt41 is called and fails; kimi (no MOONSHOT_API_KEY) and no-such (not offered) are
    // passed over without a call; claude-h is called and answers.
    fake.push(Reply::status(500));
    let r = chat(json!({
        "model": "gpt41",
        "messages": [{"role": "user", "content": "x"}],
        "retries": 1,
        "fallbacks": ["kimi", "no-such", "claude-h"],
    }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.request_count(), 2);
    let v = access_line("\"claude-h\"");
    assert_eq!(v["model"], "claude-h", "{v}");
    assert_eq!(v["tried"], "gpt41|claude-h", "{v}");
    assert_eq!(v["skipped"], "kimi|no-such", "{v}");
    assert_eq!(v["attempts"], 2, "{v}");
    // Only a skipped model before the one that answers: no `tried` (it would only repeat
    // `model`).
    let r = chat(json!({
        "model": "kimi",
        "messages": [{"role": "user", "content": "x"}],
        "fallbacks": ["gpt41"],
    }));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = access_line("\"skipped\":\"kimi\"");
    assert_eq!(v["model"], "gpt41", "{v}");
    assert!(v.get("tried").is_none(), "{v}");
    assert_eq!(v["attempts"], 1, "{v}");
    // gpt41 hangs through the request's whole timeout: claude-h, reached with no time
    // left, is not called but passed over, and the timeout is gpt41's.
    fake.push(Reply::hang());
    let r = chat(json!({
        "model": "gpt41",
        "messages": [{"role": "user", "content": "x"}],
        "timeout": 0.5,
        "retries": 1,
        "fallbacks": ["claude-h"],
    }));
    assert_eq!(r.status, 504, "{}", r.text());
    let v = access_line("\"status\":504");
    assert_eq!(v["model"], "gpt41", "{v}");
    assert!(v.get("tried").is_none(), "{v}");
    assert_eq!(v["skipped"], "claude-h", "{v}");
    assert_eq!(v["attempts"], 1, "{v}");
}

#[test]
fn the_systemd_unit_verifies_and_is_rated_ok() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: unit checks skipped");
        return;
    };
    assert!(out.status.success());
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sigorest.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/sigorest"));
    let dir = TempDir::new("unit");
    let path = dir.join("sigorest.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sigorest", BIN)).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "verify: {said}");
    assert!(
        !said.contains("sigorest.service:"),
        "verify complains: {said}"
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let level: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for sigorest.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{report}");
}

#[test]
fn a_provider_refusing_the_gateways_key_is_relayed_and_warned_about_once() {
    let fake = FakeUpstream::start();
    fake.push_n(
        2,
        Reply::error(401, "Incorrect API key provided: sk-prov***123"),
    );
    let server = start(TempDir::new("refusedkey"), &[], &env_for(&fake));
    let url = server.url("/v1/chat/completions");
    let body = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;
    for _ in 0..2 {
        let r = crate::support::gateway::request(&url, "POST", Some(body), &[]);
        assert_eq!(r.status, 401, "as the design says: same status");
    }
    let warned = server.wait_for_line("refused the gateway's credentials", Duration::from_secs(5));
    assert!(
        warned.contains("WARN") && warned.contains("gpt41"),
        "{warned}"
    );
    // Both requests logged, then one WARN for the two.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let logged = "completions status=401";
    while server.stderr().matches(logged).count() < 2 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let log = server.stderr();
    assert_eq!(log.matches(logged).count(), 2, "{log}");
    assert_eq!(
        log.matches("refused the gateway's credentials").count(),
        1,
        "once a minute: {log}"
    );
}

#[test]
fn a_models_csv_of_junk_names_ten_unknown_codes_and_counts_the_rest() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("junkmodels");
    let junk: Vec<String> = (0..25).map(|i| format!("nosuch{i}")).collect();
    std::fs::write(
        dir.join("models.csv"),
        format!("gpt41,{}\n", junk.join(",")),
    )
    .unwrap();
    let server = start(dir, &[], &env_for(&fake));
    let started = server.wait_for_line("sigorest started", Duration::from_secs(5));
    assert!(started.contains("models=1"), "{started}");
    let more = server.wait_for_line("more unknown model short codes", Duration::from_secs(5));
    assert!(more.contains("WARN") && more.contains("more=15"), "{more}");
    let log = server.stderr();
    assert_eq!(
        log.matches("unknown model short code ignored").count(),
        10,
        "{log}"
    );
}
