//! Client keys and limits, as a client sees them: `keys.csv` on and off, 401 / 403 / 429 in
//! OpenAI's shape, `/v1/models` per key, the `x-ratelimit-*` headers, requests in flight
//! under a concurrent burst and across streams and hang-ups, the per-IP limit, SIGHUP, and
//! no key text in any log line or error body. `sigoe -newkey` makes a key that works.

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::client::{self, Call};
use crate::support::gateway::{Gateway, Options, Reply as GwReply, TempDir};
use crate::support::process::{Server, free_port};
use crate::support::upstream::{FakeUpstream, Reply};

pub(crate) const ALICE: &str = "sk-sigo-test-alice-0123456789";
pub(crate) const BOB: &str = "sk-sigo-test-bob-9876543210";
pub(crate) const WRONG: &str = "sk-sigo-test-nobody-5555555555";

/// SHA-256 in hex, with ring directly (not through the gateway's own code).
fn sha256_hex(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One `keys.csv` line.
pub(crate) fn line(name: &str, key: &str, models: &str, rpm: &str, concurrency: &str) -> String {
    format!(
        "{name}, sha256:{}, {models}, {rpm}, {concurrency}\n",
        sha256_hex(key)
    )
}

pub(crate) fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn with_keys(fake: &FakeUpstream, csv: &str) -> Gateway {
    Gateway::start(Options::default().upstream(&fake.base_url()).keys(csv))
}

fn chat_body(model: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap()
}

fn chat_as(gw: &Gateway, model: &str, auth: &str) -> GwReply {
    gw.send(
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(model)),
        &[
            ("Authorization", auth),
            ("Content-Type", "application/json"),
        ],
    )
}

fn model_ids(reply: &GwReply) -> Vec<String> {
    reply.json()["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {}", reply.text()))
        .iter()
        .map(|m| {
            // `/api/models` has the short code apart from the upstream id.
            m["short"]
                .as_str()
                .or(m["id"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Polls `f` until it gives `Some`, for at most `timeout`.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_keys_csv_any_key_or_none_works_and_no_limit_headers_are_sent() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    let r = chat_as(&gw, "gpt41", "Bearer unused");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-ratelimit-limit-requests").is_none());
    assert_eq!(gw.chat("gpt41", "no key at all", json!({})).status, 200);
    assert_eq!(model_ids(&gw.get("/v1/models")).len(), 6);
}

#[test]
fn with_keys_every_endpoint_but_health_needs_a_valid_key() {
    let fake = FakeUpstream::start();
    let gw = with_keys(&fake, &line("alice", ALICE, "*", "", ""));
    let body = chat_body("gpt41");
    let memory = br#"{"content": "x"}"#;
    let calls: [(&str, &str, Option<&[u8]>); 9] = [
        ("POST", "/v1/chat/completions", Some(&body)),
        ("POST", "/chat/completions", Some(&body)),
        ("GET", "/v1/models", None),
        ("GET", "/models", None),
        ("HEAD", "/v1/models", None),
        ("GET", "/api/models", None),
        ("GET", "/api/memory", None),
        ("PUT", "/api/memory", Some(memory)),
        ("HEAD", "/api/memory", None),
    ];
    for (method, path, body) in calls {
        let wrong = bearer(WRONG);
        for (headers, missing) in [
            (vec![], true),
            (vec![("Authorization", wrong.as_str())], false),
            (vec![("x-api-key", WRONG)], false),
            (vec![("Authorization", "Basic YWxpY2U6cHc=")], true),
        ] {
            let r = gw.send(method, path, body, &headers);
            assert_eq!(r.status, 401, "{method} {path} {headers:?}: {}", r.text());
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{method} {path}: {:?}",
                r.headers
            );
            if method != "HEAD" {
                let m = r.assert_error(401, "invalid_api_key");
                assert_eq!(m.starts_with("no API key"), missing, "{m}");
                assert!(!r.text().contains(WRONG), "the key is not echoed");
            }
        }
        let auth = bearer(ALICE);
        for headers in [[("Authorization", auth.as_str())], [("x-api-key", ALICE)]] {
            let r = gw.send(method, path, body, &headers);
            assert_eq!(r.status, 200, "{method} {path} {headers:?}: {}", r.text());
        }
    }
    assert_eq!(fake.requests_to("/v1/chat/completions").len(), 4);
    // Open to everyone on the allow list: the health check, for monitors.
    let health = gw.get("/api/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    // Unknown paths and methods say so before asking for a key.
    gw.get("/v1/nothing").assert_error(404, "not_found");
    gw.send("DELETE", "/v1/models", None, &[])
        .assert_error(405, "method_not_allowed");
}

#[test]
fn a_key_uses_only_its_models_and_lists_only_them() {
    let fake = FakeUpstream::start();
    let csv = format!(
        "# two keys\n{}{}",
        line("alice", ALICE, "gpt41 | KIMI | ollama-*", "", ""),
        line("bob", BOB, "*", "", "")
    );
    let gw = with_keys(&fake, &csv);
    let (alice, bob) = (bearer(ALICE), bearer(BOB));
    assert_eq!(chat_as(&gw, "gpt41", &alice).status, 200);
    assert_eq!(chat_as(&gw, "gpt-4.1", &alice).status, 200, "by its id too");
    assert_eq!(chat_as(&gw, "kimi", &alice).status, 200);
    let r = chat_as(&gw, "claude-h", &alice);
    let m = r.assert_error(403, "model_not_allowed");
    assert!(m.contains("'alice'") && m.contains("claude-h"), "{m}");
    assert_eq!(r.json()["error"]["type"], "permission_error");
    assert_eq!(
        fake.requests_to("/v1/chat/completions").len(),
        3,
        "no call upstream for a 403"
    );
    assert_eq!(chat_as(&gw, "claude-h", &bob).status, 200);
    // An unknown model is still 404 for any key.
    chat_as(&gw, "gpt-99", &alice).assert_error(404, "model_not_found");
    let list =
        |auth: &str, path: &str| model_ids(&gw.send("GET", path, None, &[("Authorization", auth)]));
    assert_eq!(list(&alice, "/v1/models"), ["gpt41", "kimi"]);
    assert_eq!(list(&alice, "/api/models"), ["gpt41", "kimi"]);
    assert_eq!(list(&bob, "/v1/models").len(), 6);
}

/// Two people who pick the same `session_id` (`sigoe -s notes`) each keep their own
/// conversation: no key reads or adds to another's session.
#[test]
fn each_key_has_sessions_of_its_own() {
    let fake = FakeUpstream::start();
    let csv = format!(
        "{}{}",
        line("ana", ALICE, "*", "", ""),
        line("dave", BOB, "*", "", "")
    );
    let gw = with_keys(&fake, &csv);
    let say = |auth: &str, text: &str| {
        let body = json!({"model": "gpt41", "session_id": "notes",
            "messages": [{"role": "user", "content": text}]});
        let r = gw.send(
            "POST",
            "/v1/chat/completions",
            Some(&serde_json::to_vec(&body).unwrap()),
            &[
                ("Authorization", auth),
                ("Content-Type", "application/json"),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let sent = fake.last_json().unwrap();
        sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<String>>()
    };
    let (ana, dave) = (bearer(ALICE), bearer(BOB));
    assert_eq!(say(&ana, "my PIN is 1234"), ["my PIN is 1234"]);
    assert_eq!(say(&dave, "hello"), ["hello"], "nothing of ana's");
    let again = say(&ana, "and now?");
    assert_eq!(
        again.len(),
        3,
        "ana's own turn, then her question: {again:?}"
    );
    assert_eq!(again[0], "my PIN is 1234");
    assert_eq!(say(&dave, "more").len(), 3, "dave's own turn only");
}

#[test]
fn rpm_is_a_sliding_minute_with_headers_on_every_answer() {
    let fake = FakeUpstream::start();
    let csv = line("alice", ALICE, "gpt41", "3", "") + &line("bob", BOB, "*", "", "");
    let gw = with_keys(&fake, &csv);
    let alice = bearer(ALICE);
    let limit = |r: &GwReply| {
        (
            r.header("x-ratelimit-limit-requests").map(str::to_string),
            r.header("x-ratelimit-remaining-requests")
                .map(str::to_string),
        )
    };
    let pair = |l: &str, r: &str| (Some(l.to_string()), Some(r.to_string()));
    let r = chat_as(&gw, "gpt41", &alice);
    assert_eq!((r.status, limit(&r)), (200, pair("3", "2")));
    // Every answer to a keyed request carries them, errors too (a 403 counts as a request).
    let r = chat_as(&gw, "kimi", &alice);
    assert_eq!((r.status, limit(&r)), (403, pair("3", "1")));
    let r = gw.send("GET", "/v1/models", None, &[("x-api-key", ALICE)]);
    assert_eq!((r.status, limit(&r)), (200, pair("3", "0")));
    let r = chat_as(&gw, "gpt41", &alice);
    let m = r.assert_error(429, "rate_limit_exceeded");
    assert!(
        m.contains("'alice'") && m.contains("3 requests a minute"),
        "{m}"
    );
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(limit(&r), pair("3", "0"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(
        r.header("x-should-retry").is_none(),
        "the SDKs may retry after Retry-After"
    );
    assert_eq!(fake.requests_to("/v1/chat/completions").len(), 1);
    // A refused request is not counted, and other keys are not touched.
    assert_eq!(chat_as(&gw, "gpt41", &alice).status, 429);
    let r = chat_as(&gw, "gpt41", &bearer(BOB));
    assert_eq!(r.status, 200);
    assert_eq!(limit(&r), (None, None), "bob has no rpm");
}

#[test]
fn a_concurrent_burst_never_gets_more_than_concurrency_upstream() {
    let fake = FakeUpstream::start();
    fake.set_default(Reply::chat("slow").delay(Duration::from_millis(1500)));
    let gw = Arc::new(with_keys(&fake, &line("alice", ALICE, "*", "", "2")));
    let n = 10;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (gw, barrier) = (gw.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                chat_as(&gw, "gpt41", &bearer(ALICE))
            })
        })
        .collect();
    let replies: Vec<GwReply> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    for r in replies.iter().filter(|r| r.status != 200) {
        let m = r.assert_error(429, "rate_limit_exceeded");
        assert!(m.contains("2 requests in flight"), "{m}");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert!(
        fake.max_chats_in_flight() <= 2,
        "{} at once upstream",
        fake.max_chats_in_flight()
    );
    assert!(ok >= 2, "{ok} answered");
    assert!(ok < n, "the burst was limited");
    assert_eq!(fake.requests_to("/v1/chat/completions").len(), ok);
}

#[test]
fn a_stream_holds_its_slot_until_it_ends_and_a_hangup_frees_it() {
    let fake = FakeUpstream::start();
    let gw = with_keys(&fake, &line("alice", ALICE, "*", "", "1"));
    let addr = gw.http;
    let auth = bearer(ALICE);
    let stream_body =
        br#"{"model": "gpt41", "stream": true, "messages": [{"role": "user", "content": "s"}]}"#;
    // A stream of 5 events 300 ms apart holds the one slot for its whole length.
    fake.push(Reply::chat_stream(&["a", "b", "c", "d", "e"]).gap(Duration::from_millis(300)));
    let reader = {
        let auth = auth.clone();
        thread::spawn(move || {
            let call = Call {
                headers: vec![("Authorization", auth.as_str())],
                ..Call::post(stream_body)
            };
            client::stream(addr, &call)
        })
    };
    assert!(
        poll(Duration::from_secs(5), || (fake.chats_in_flight() == 1)
            .then_some(()))
        .is_some()
    );
    chat_as(&gw, "gpt41", &auth).assert_error(429, "rate_limit_exceeded");
    let s = reader.join().unwrap();
    assert_eq!((s.status, s.text().as_str()), (200, "abcde"));
    assert_eq!(
        s.header("x-ratelimit-limit-requests"),
        None,
        "no rpm on this key"
    );
    // Ended: the slot is free again.
    let freed = poll(Duration::from_secs(5), || {
        let r = chat_as(&gw, "gpt41", &auth);
        (r.status == 200).then_some(())
    });
    assert!(freed.is_some(), "the slot came back after the stream");
    // A client that leaves mid-stream gives its slot back too.
    fake.push(Reply::chat_stream(&["x"]).then_hang());
    let call = Call {
        headers: vec![("Authorization", auth.as_str())],
        leave_after: Some(1),
        ..Call::post(stream_body)
    };
    let s = client::stream(addr, &call);
    assert_eq!(s.status, 200);
    fake.wait_for_client_aborts(1, Duration::from_secs(5));
    let freed = poll(Duration::from_secs(5), || {
        let r = chat_as(&gw, "gpt41", &auth);
        (r.status == 200).then_some(())
    });
    assert!(freed.is_some(), "the slot came back after the hang-up");
}

#[test]
fn the_per_ip_limit_is_a_token_bucket_for_everyone_but_health() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()).ip_limit(2, 3));
    for _ in 0..3 {
        assert_eq!(gw.get("/v1/models").status, 200);
    }
    let r = gw.chat("gpt41", "over", json!({}));
    let m = r.assert_error(429, "rate_limit_exceeded");
    assert!(m.contains("127.0.0.1") && m.contains("-ip-rate"), "{m}");
    // 2 a minute: the next token comes within 30 s.
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    gw.get("/v1/nothing")
        .assert_error(429, "rate_limit_exceeded");
    assert_eq!(fake.requests_to("/v1/chat/completions").len(), 0);
    for _ in 0..20 {
        assert_eq!(gw.get("/api/health").status, 200, "health is not limited");
    }
    // Everything else is, the pages open to anyone on the port included.
    for path in ["/metrics", "/api/usage", "/", "/status"] {
        gw.get(path).assert_error(429, "rate_limit_exceeded");
    }
}

#[test]
fn the_per_ip_limit_comes_before_the_key_check() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .keys(&line("alice", ALICE, "*", "", ""))
            .ip_limit(1, 2),
    );
    let wrong = bearer(WRONG);
    for _ in 0..2 {
        chat_as(&gw, "gpt41", &wrong).assert_error(401, "invalid_api_key");
    }
    // Guessing keys costs the same budget as anything else.
    chat_as(&gw, "gpt41", &wrong).assert_error(429, "rate_limit_exceeded");
    chat_as(&gw, "gpt41", &bearer(ALICE)).assert_error(429, "rate_limit_exceeded");
}

#[test]
fn a_malformed_keys_csv_stops_start_up_naming_file_and_line() {
    let err = Gateway::try_start(Options::default().keys(&format!(
        "{}bob, {BOB}, *\n",
        line("alice", ALICE, "*", "", "")
    )))
    .err()
    .expect("no start on a broken keys.csv");
    let text = err.to_string();
    assert!(text.contains("keys.csv:2:6:"), "{text}");
    assert!(
        !text.contains(BOB),
        "the pasted key is not repeated: {text}"
    );
    // The binary: exit 2 with the same line.
    let dir = TempDir::new("badkeys");
    std::fs::write(dir.join("keys.csv"), "alice, sha256:00, *\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sigorest"))
        .current_dir(dir.path())
        .args(["-http-port", &free_port().to_string(), "-https-port", "0"])
        .args(["-bind", "127.0.0.1"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keys.csv:1:8:"), "{stderr}");
}

fn provider_env(fake: &FakeUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("MAMMOUTH_API_KEY", "sk-provider-secret-777".to_string()),
        ("MAMMOUTH_BASE_URL", fake.base_url()),
        ("OLLAMA_HOST", "127.0.0.1:9".to_string()),
    ]
}

fn start_binary(dir: TempDir, args: &[&str], fake: &FakeUpstream) -> Server {
    let env = provider_env(fake);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(dir, args, &env)
}

fn post_as(server: &Server, path: &str, body: &[u8], headers: &[(&str, &str)]) -> GwReply {
    crate::support::gateway::request(&server.url(path), "POST", Some(body), headers)
}

#[test]
fn sighup_reloads_keys_and_a_broken_file_keeps_the_old_set() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("hupkeys");
    std::fs::write(dir.join("keys.csv"), line("alice", ALICE, "*", "", "")).unwrap();
    let server = start_binary(dir, &[], &fake);
    let started = server.wait_for_line("sigorest started", Duration::from_secs(5));
    assert!(started.contains("client_keys=1"), "{started}");
    let body = chat_body("gpt41");
    let (alice, bob) = (bearer(ALICE), bearer(BOB));
    let as_key = |auth: &str| {
        post_as(
            &server,
            "/v1/chat/completions",
            &body,
            &[("Authorization", auth)],
        )
        .status
    };
    assert_eq!((as_key(&alice), as_key(&bob)), (200, 401));
    let both = line("alice", ALICE, "*", "", "") + &line("bob", BOB, "gpt41", "", "");
    std::fs::write(server.dir.join("keys.csv"), both).unwrap();
    server.signal("HUP");
    server.wait_for_line("client_keys=2", Duration::from_secs(5));
    assert_eq!((as_key(&alice), as_key(&bob)), (200, 200));
    // Broken on line 3: the old set stays, an ERROR names file and line.
    let broken = line("bob", BOB, "gpt41", "", "") + "# ok\ncarol, sha256:zz, *\n";
    std::fs::write(server.dir.join("keys.csv"), broken).unwrap();
    server.signal("HUP");
    let failed = server.wait_for_line("reload failed", Duration::from_secs(5));
    assert!(
        failed.contains("ERROR") && failed.contains("keys.csv:3:"),
        "{failed}"
    );
    assert_eq!((as_key(&alice), as_key(&bob)), (200, 200));
    // A link to a file that is gone (an unmounted volume): the keys in use stay required.
    #[cfg(unix)]
    {
        let keys = server.dir.join("keys.csv");
        std::fs::remove_file(&keys).unwrap();
        std::os::unix::fs::symlink(server.dir.join("volume/keys.csv"), &keys).unwrap();
        server.signal("HUP");
        let failed = server.wait_for_line("symbolic link", Duration::from_secs(5));
        assert!(failed.contains("reload failed"), "{failed}");
        assert_eq!((as_key(&alice), as_key("Bearer anything")), (200, 401));
    }
    // The file removed: keys are no longer required, as at start-up without one; a WARN
    // says so.
    std::fs::remove_file(server.dir.join("keys.csv")).unwrap();
    server.signal("HUP");
    server.wait_for_line("client_keys=off", Duration::from_secs(5));
    let warned = server.wait_for_line("client keys are off", Duration::from_secs(5));
    assert!(warned.contains("WARN"), "{warned}");
    assert_eq!(as_key("Bearer anything"), 200);
}

#[test]
fn no_key_text_reaches_a_log_line_or_an_error_body_even_at_debug() {
    let fake = FakeUpstream::start();
    let dir = TempDir::new("keysecrets");
    let csv = line("alice", ALICE, "gpt41", "2", "1") + &line("bob", BOB, "*", "", "");
    std::fs::write(dir.join("keys.csv"), csv).unwrap();
    let server = start_binary(dir, &["-v", "debug"], &fake);
    let mut bodies = Vec::new();
    let (alice, bob, wrong) = (bearer(ALICE), bearer(BOB), bearer(WRONG));
    let chat = chat_body("gpt41");
    let other = chat_body("kimi");
    for (body, headers) in [
        (&chat, vec![("Authorization", alice.as_str())]),
        (&other, vec![("Authorization", alice.as_str())]),
        (&chat, vec![("x-api-key", ALICE)]),
        (&chat, vec![("Authorization", wrong.as_str())]),
        (&chat, vec![("x-api-key", WRONG)]),
        (
            &chat,
            vec![("Authorization", bob.as_str()), ("x-api-key", ALICE)],
        ),
    ] {
        let r = post_as(&server, "/v1/chat/completions", body, &headers);
        bodies.push((r.status, r.text()));
    }
    let stream =
        br#"{"model": "gpt41", "stream": true, "messages": [{"role": "user", "content": "s"}]}"#;
    let call = Call {
        headers: vec![("x-api-key", BOB)],
        ..Call::post(stream)
    };
    let s = client::stream(server.addr, &call);
    assert_eq!(s.status, 200);
    let statuses: Vec<u16> = bodies.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 403, 429, 401, 401, 200]);
    server.wait_for_line("key=bob", Duration::from_secs(5));
    let log = poll(Duration::from_secs(5), || {
        let log = server.stderr();
        (log.matches("request method=POST").count() >= 7).then_some(log)
    })
    .unwrap_or_else(|| panic!("seven access lines: {}", server.stderr()));
    assert!(
        log.contains("upstream request"),
        "debug shows message bodies: {log}"
    );
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request method="))
        .collect();
    assert!(
        access[0].contains("status=200") && access[0].contains("key=alice"),
        "{access:?}"
    );
    assert!(
        access[3].contains("status=401") && !access[3].contains("key="),
        "{access:?}"
    );
    for secret in [ALICE, BOB, WRONG, "test-alice", "test-bob", "test-nobody"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        for (status, body) in &bodies {
            assert!(
                !body.contains(secret),
                "{secret} in a {status} body: {body}"
            );
        }
        assert!(!String::from_utf8_lossy(&s.body).contains(secret));
    }
    assert!(!log.to_lowercase().contains("bearer"), "{log}");
    assert!(
        !log.contains(&sha256_hex(ALICE)),
        "not even the hash: {log}"
    );
}

/// Runs `sigoe` with only PATH and `env`.
fn sigoe(args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigoe"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("sigoe runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sigoe_newkey_makes_a_key_that_the_gateway_and_sigoe_accept() {
    let (code, stdout, stderr) = sigoe(&["-newkey", "laptop-ana"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let key = stderr
        .split_whitespace()
        .find(|w| w.starts_with("sk-sigo-"))
        .unwrap_or_else(|| panic!("no key on stderr: {stderr}"))
        .to_string();
    assert_eq!(key.len(), "sk-sigo-".len() + 64, "{key}");
    assert_eq!(stdout.lines().count(), 1, "one line for keys.csv: {stdout}");
    assert!(stdout.starts_with("laptop-ana, sha256:"), "{stdout}");
    assert!(stdout.contains(&sha256_hex(&key)), "{stdout}");
    assert!(!stdout.contains(&key), "the key never goes to keys.csv");
    let (_, again, _) = sigoe(&["-newkey", "laptop-ana"], &[]);
    assert_ne!(again, stdout, "a fresh key each time");
    let (code, _, stderr) = sigoe(&["-newkey", "two words"], &[]);
    assert_eq!(code, Some(2), "{stderr}");

    let fake = FakeUpstream::start();
    let gw = with_keys(&fake, &stdout);
    assert_eq!(chat_as(&gw, "gpt41", &bearer(&key)).status, 200);
    // sigoe through the gateway sends the key from SIGOREST_API_KEY.
    let url = gw.url("");
    let (code, out, err) = sigoe(
        &["-server", &url, "hello"],
        &[("SIGOREST_API_KEY", key.clone())],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("hello"), "{out}");
    let (code, _, err) = sigoe(
        &["-server", &url, "-l"],
        &[("SIGOREST_API_KEY", key.clone())],
    );
    assert_eq!(code, Some(0), "{err}");
    // A key read from a CRLF file (`export K=$(cat key)` keeps the \r) works.
    let (code, _, err) = sigoe(
        &["-server", &url, "hello"],
        &[("SIGOREST_API_KEY", format!("{key}\r\n"))],
    );
    assert_eq!(code, Some(0), "{err}");
    // The 401 names the variable sigoe sends the key from.
    let (code, _, err) = sigoe(&["-server", &url, "hello"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("401") && err.contains("no API key"), "{err}");
    assert!(err.contains("set in SIGOREST_API_KEY"), "{err}");
    let (code, _, err) = sigoe(
        &["-server", &url, "hello"],
        &[("SIGOREST_API_KEY", WRONG.to_string())],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("401") && err.contains("the key in SIGOREST_API_KEY was refused"),
        "{err}"
    );
    assert!(!err.contains(WRONG), "{err}");
    let v: Value = fake.last_json().unwrap();
    assert_eq!(v["model"], "gpt-4.1");
}

#[test]
fn anthropic_clients_send_their_key_in_x_api_key_and_get_anthropics_errors() {
    let fake = FakeUpstream::start();
    let gw = with_keys(&fake, &line("alice", ALICE, "claude-h", "", ""));
    let body = serde_json::to_vec(&json!({"model": "claude-h", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap();
    let send = |key: &str, model_body: &[u8]| {
        gw.send(
            "POST",
            "/v1/messages",
            Some(model_body),
            &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
        )
    };
    let ok = send(ALICE, &body);
    assert_eq!(ok.status, 200, "{}", ok.text());
    let denied = send(WRONG, &body);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"]["type"], "authentication_error");
    assert!(!denied.text().contains(WRONG));
    let other = serde_json::to_vec(&json!({"model": "gpt41", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap();
    let forbidden = send(ALICE, &other);
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"]["type"], "permission_error");
    // A fallback the key may not use is skipped; one it may use answers.
    let fallback = serde_json::to_vec(&json!({"model": "claude-h", "max_tokens": 5, "retries": 1,
        "fallbacks": ["gpt41"], "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap();
    fake.push(Reply::status(503));
    let r = send(ALICE, &fallback);
    assert_eq!(r.status, 502, "gpt41 is not this key's: {}", r.text());
}

#[test]
fn the_token_counts_check_the_model_as_the_calls_do() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .models("gpt41, claude-h, embedding-small")
            .keys(&line("alice", ALICE, "gpt41 | embedding-small", "", "")),
    );
    let post = |path: &str, body: Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        gw.send(
            "POST",
            path,
            Some(&bytes),
            &[
                ("x-api-key", ALICE),
                ("anthropic-version", "2023-06-01"),
                ("Content-Type", "application/json"),
            ],
        )
    };
    let messages = |model: &str| json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    // Anthropic's count_tokens: as /v1/messages answers, in Anthropic's shape.
    for (model, status, kind) in [
        ("gpt41", 200, ""),
        ("nope", 404, "not_found_error"),
        ("claude-h", 403, "permission_error"),
        ("auto", 404, "not_found_error"),
        ("embedding-small", 400, "invalid_request_error"),
    ] {
        let counted = post("/v1/messages/count_tokens", messages(model));
        assert_eq!(counted.status, status, "{model}: {}", counted.text());
        let called = post("/v1/messages", messages(model));
        assert_eq!(called.status, status, "{model}: {}", called.text());
        if status != 200 {
            assert_eq!(counted.json()["error"]["type"], kind, "{model}");
        }
    }
    let r = post("/claude-h/v1/messages/count_tokens", messages("gpt41"));
    assert_eq!(r.status, 403, "the model of the path: {}", r.text());
    // The Responses input_tokens: as /v1/responses answers; the model may be left out.
    let responses = |model: Option<&str>| match model {
        Some(m) => json!({"model": m, "input": "hi"}),
        None => json!({"input": "hi"}),
    };
    for (model, status, code) in [
        (Some("gpt41"), 200, ""),
        (None, 200, ""),
        (Some("nope"), 404, "model_not_found"),
        (Some("claude-h"), 403, "model_not_allowed"),
    ] {
        let counted = post("/v1/responses/input_tokens", responses(model));
        if status == 200 {
            assert_eq!(counted.status, 200, "{model:?}: {}", counted.text());
            continue;
        }
        counted.assert_error(status, code);
        assert_eq!(post("/v1/responses", responses(model)).status, status);
    }
    let upstream = fake.requests_to("/v1/chat/completions").len();
    assert_eq!(
        upstream, 1,
        "only /v1/messages with gpt41 was called: the counts call nothing"
    );
}
