//! Requests answered before any endpoint ran, as the books see them: the refusals of the
//! client rules (401, the 429s of a key's limits and of `-ip-rate`) and the requests whose
//! client left while they waited in the queue, counted in `sigorest_requests_total` under
//! their route, `model=""` and the key when it is known, never as usage, and never with a
//! client's text as a label.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::keys::{ALICE, BOB, WRONG, bearer, line};
use crate::metrics::{WAIT, moved, scrape, scrape_until};
use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

/// Options for a gateway in front of `fake` whose keys.csv holds alice's key (any model).
fn alice_only(fake: &FakeUpstream) -> Options {
    Options::default()
        .upstream(&fake.base_url())
        .keys(&line("alice", ALICE, "*", "", ""))
}

/// A `sigorest_requests_total` series.
fn series(route: &str, model: &str, provider: &str, status: u16, key: &str) -> String {
    format!(
        "sigorest_requests_total{{route=\"{route}\",model=\"{model}\",provider=\"{provider}\",status=\"{status}\",key=\"{key}\"}}"
    )
}

/// The `sigorest_requests_total` series that moved between two scrapes.
fn requests_moved(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    moved(before, after)
        .into_iter()
        .filter(|(k, _)| k.starts_with("sigorest_requests_total"))
        .collect()
}

#[test]
fn refusals_of_the_client_rules_are_counted_without_a_model_and_are_not_usage() {
    let fake = FakeUpstream::start();
    let csv = line("alice", ALICE, "gpt41", "2", "") + &line("bob", BOB, "*", "", "1");
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()).keys(&csv));
    let chat = serde_json::to_vec(&json!({"model": "gpt41",
        "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap();
    let kimi = serde_json::to_vec(&json!({"model": "kimi",
        "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap();
    let messages = serde_json::to_vec(&json!({"model": "gpt41", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap();
    let (alice, bob, wrong) = (bearer(ALICE), bearer(BOB), bearer(WRONG));
    let as_key = |path: &str, body: &[u8], auth: &str| {
        gw.send("POST", path, Some(body), &[("Authorization", auth)])
    };
    let before = scrape(&gw);

    // 401: no key, a key not in the file; on chat, on messages, on a list.
    gw.post("/v1/chat/completions", &chat)
        .assert_error(401, "invalid_api_key");
    as_key("/v1/chat/completions", &chat, &wrong).assert_error(401, "invalid_api_key");
    let r = gw.send(
        "POST",
        "/v1/messages",
        Some(&messages),
        &[("x-api-key", WRONG)],
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = gw.send("GET", "/v1/models", None, &[("Authorization", &wrong)]);
    assert_eq!(r.status, 401, "{}", r.text());
    // alice: rpm 2, gpt41 only. A 200, a 403 (counted under its model, as before), a 429.
    assert_eq!(as_key("/v1/chat/completions", &chat, &alice).status, 200);
    as_key("/v1/chat/completions", &kimi, &alice).assert_error(403, "model_not_allowed");
    as_key("/v1/chat/completions", &chat, &alice).assert_error(429, "rate_limit_exceeded");
    // bob: one request in flight at a time.
    fake.push(Reply::hang());
    let held = {
        let mut s = std::net::TcpStream::connect(gw.http).unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: {bob}\r\nContent-Length: {}\r\n\r\n",
            chat.len()
        );
        std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
        std::io::Write::write_all(&mut s, &chat).unwrap();
        s
    };
    fake.wait_for_requests(2, WAIT);
    as_key("/v1/chat/completions", &chat, &bob).assert_error(429, "rate_limit_exceeded");
    drop(held);
    let gone = series("chat", "gpt41", "mammouth", 499, "bob");
    let after = scrape_until(&gw, |s| s.get(&gone) == Some(&1.0));

    let want: BTreeMap<String, f64> = [
        (series("chat", "", "", 401, ""), 2.0),
        (series("messages", "", "", 401, ""), 1.0),
        (series("other", "", "", 401, ""), 1.0),
        (series("chat", "gpt41", "mammouth", 200, "alice"), 1.0),
        (series("chat", "kimi", "moonshot", 403, "alice"), 1.0),
        (series("chat", "", "", 429, "alice"), 1.0),
        (series("chat", "", "", 429, "bob"), 1.0),
        (gone, 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(requests_moved(&before, &after), want);
    let text = gw.get("/metrics").text();
    assert!(
        !text.contains("sk-sigo") && !text.contains("nobody"),
        "no key text is a label"
    );

    // Usage: what was asked of a model, the 403 included; none of the refusals before.
    let usage = gw.get("/api/usage").json();
    let rows: Vec<(Value, Value, Value, Value)> = usage["today"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].clone(),
                r["model"].clone(),
                r["requests"].clone(),
                r["errors"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (json!("alice"), json!("gpt41"), json!(1), json!(0)),
            (json!("alice"), json!("kimi"), json!(1), json!(1)),
            (json!("bob"), json!("gpt41"), json!(1), json!(1)),
        ]
    );
    assert_eq!(usage["today"]["total"]["requests"], 3);
}

/// A connection to the gateway from `source`, another loopback address than the test's
/// other clients (so that it has a per-IP bucket of its own).
fn connect_from(source: &str, gw: &Gateway) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&gw.http.into()).unwrap();
    let s: std::net::TcpStream = socket.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends a request from `source` (another loopback address than the test's other clients,
/// so that it has a per-IP bucket of its own) and returns the status.
fn status_from(source: &str, gw: &Gateway, method: &str, path: &str, auth: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = connect_from(source, gw);
    let body = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;
    let body: &[u8] = if method == "POST" { body } else { b"" };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[test]
fn per_ip_refusals_are_counted_under_their_route_without_a_key() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(alice_only(&fake).ip_limit(1, 2));
    let alice = bearer(ALICE);
    // 127.0.0.1 scrapes; 127.0.0.2 spends its bucket of 2, then is refused.
    let before = scrape(&gw);
    let from = "127.0.0.2";
    assert_eq!(
        status_from(from, &gw, "POST", "/v1/chat/completions", &alice),
        200
    );
    assert_eq!(status_from(from, &gw, "GET", "/v1/models", &alice), 200);
    assert_eq!(
        status_from(from, &gw, "POST", "/v1/chat/completions", &alice),
        429
    );
    assert_eq!(
        status_from(from, &gw, "POST", "/v1/embeddings", &alice),
        429
    );
    assert_eq!(status_from(from, &gw, "GET", "/v1/models", &alice), 429);
    assert_eq!(status_from(from, &gw, "GET", "/no/such/path", &alice), 429);
    let after = scrape(&gw);
    let want: BTreeMap<String, f64> = [
        (series("chat", "gpt41", "mammouth", 200, "alice"), 1.0),
        // Judged before the key (which may be anyone's): no key.
        (series("chat", "", "", 429, ""), 1.0),
        (series("embeddings", "", "", 429, ""), 1.0),
        (series("other", "", "", 429, ""), 2.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(requests_moved(&before, &after), want);
    assert!(!gw.get("/metrics").text().contains("127.0.0.2"));
}

#[test]
fn a_client_that_leaves_the_queue_counts_under_its_key_without_a_model() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(alice_only(&fake).workers(1, 1));
    fake.push(Reply::hang());
    let send = || {
        let body = br#"{"model": "gpt41", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}"#;
        let mut s = std::net::TcpStream::connect(gw.http).unwrap();
        let head = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: t\r\nx-api-key: {ALICE}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
        std::io::Write::write_all(&mut s, body).unwrap();
        s
    };
    let before = scrape(&gw);
    let running = send();
    fake.wait_for_requests(1, WAIT);
    let queued = send();
    let deadline = Instant::now() + WAIT;
    while gw.get("/api/health").json()["queue"]["depth"] != 1 {
        assert!(Instant::now() < deadline, "never queued");
        thread::sleep(Duration::from_millis(10));
    }
    drop(queued);
    let left = series("messages", "", "", 499, "alice");
    let after = scrape_until(&gw, |s| s.get(&left) == Some(&1.0));
    assert_eq!(
        requests_moved(&before, &after),
        [(left, 1.0)].into_iter().collect(),
        "the call still running is not counted yet"
    );
    drop(running);
    let usage = gw.get("/api/usage").json();
    assert!(
        usage["today"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["model"] != ""),
        "not usage: {usage}"
    );
}

/// A chat request sent on a connection kept open (the caller drops it to leave).
fn chat_kept(gw: &Gateway, auth: &str) -> std::net::TcpStream {
    let body = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;
    crate::support::gateway::post_and_keep(
        gw.http,
        "/v1/chat/completions",
        body,
        &[("Authorization", auth)],
    )
}

fn queue_depth(gw: &Gateway) -> Value {
    gw.get("/api/health").json()["queue"]["depth"].clone()
}

#[test]
fn refusals_of_the_client_rules_come_before_the_line_and_take_no_place_in_it() {
    let fake = FakeUpstream::start();
    fake.push(Reply::hang());
    fake.push(Reply::chat("for B"));
    let csv = line("alice", ALICE, "*", "", "");
    // One place, one more in the line; three requests a minute from this address.
    let gw = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .keys(&csv)
            .workers(1, 1)
            .ip_limit(60, 3),
    );
    let alice = bearer(ALICE);
    // A holds the place, B waits in the line: it is full.
    let a = chat_kept(&gw, &alice);
    fake.wait_for_requests(1, WAIT);
    let b = thread::spawn({
        let url = gw.url("/v1/chat/completions");
        let alice = alice.clone();
        move || {
            let body = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;
            crate::support::gateway::request(&url, "POST", Some(body), &[("Authorization", &alice)])
        }
    });
    let deadline = Instant::now() + WAIT;
    while queue_depth(&gw) != 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(queue_depth(&gw), 1, "B in the line");
    // A key not in the file, then a client over its rate: refused for what they are, at
    // once, though the line is full (before: 503 overloaded, or a wait in the line).
    let chat = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;
    gw.send(
        "POST",
        "/v1/chat/completions",
        Some(chat),
        &[("Authorization", &bearer(WRONG))],
    )
    .assert_error(401, "invalid_api_key");
    let r = gw.send(
        "POST",
        "/v1/chat/completions",
        Some(chat),
        &[("Authorization", &alice)],
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(queue_depth(&gw), 1, "B still in the line, alone");
    drop(a);
    let b = b.join().unwrap();
    assert_eq!(
        (
            b.status,
            b.json()["choices"][0]["message"]["content"].clone()
        ),
        (200, json!("for B"))
    );
    assert_eq!(fake.request_count(), 2, "A and B called, the refused never");
}

/// Sends `Expect: 100-continue` with a head announcing `body` from `source`, and returns
/// the first answer's status line; after a `100`, sends the body and returns both lines.
fn expecting(source: &str, gw: &Gateway, path: &str, auth: &str, body: &[u8]) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = connect_from(source, gw);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    lines.push(line.trim_end().to_string());
    if line.starts_with("HTTP/1.1 100") {
        line.clear();
        r.read_line(&mut line).unwrap(); // the blank line after the interim answer
        s.write_all(body).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_string());
    }
    lines
}

#[test]
fn a_client_waiting_to_send_its_body_hears_a_refusal_before_it_sends_it() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(alice_only(&fake).ip_limit(1, 3));
    let body = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;
    let from = "127.0.0.3";
    let status = |path: &str, auth: &str| expecting(from, &gw, path, auth, body);
    // Refused from the head alone: no `100 Continue`, so no body sent for nothing.
    assert_eq!(
        status("/v1/chat/completions", &bearer(WRONG)),
        ["HTTP/1.1 401 Unauthorized"]
    );
    assert_eq!(
        status("/v1/chat/completion", &bearer(ALICE)),
        ["HTTP/1.1 404 Not Found"]
    );
    // A request that may go on is asked for its body, and its head's check is not made
    // twice: the bucket of 3 (2 spent by the 401 and the 404 above) still has this one.
    assert_eq!(
        status("/v1/chat/completions", &bearer(ALICE)),
        ["HTTP/1.1 100 Continue", "HTTP/1.1 200 OK"]
    );
    assert_eq!(
        status("/v1/chat/completions", &bearer(ALICE)),
        ["HTTP/1.1 429 Too Many Requests"]
    );
    assert_eq!(fake.requests().len(), 1);
}

#[test]
fn refusals_of_calls_carry_a_request_id_too() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(alice_only(&fake));
    let body = br#"{"model": "gpt41", "messages": [{"role": "user", "content": "hi"}]}"#;
    let r = gw.send(
        "POST",
        "/v1/chat/completions",
        Some(body),
        &[("authorization", &bearer(WRONG))],
    );
    assert_eq!(r.status, 401);
    assert!(
        r.header("x-request-id")
            .is_some_and(|id| id.starts_with("req_")),
        "{:?}",
        r.header("x-request-id")
    );
    // Not the lists: they are not calls.
    let r = gw.send(
        "GET",
        "/v1/models",
        None,
        &[("authorization", &bearer(WRONG))],
    );
    assert_eq!((r.status, r.header("x-request-id")), (401, None));
}

#[test]
fn the_request_id_of_a_refusal_finds_its_access_line() {
    use crate::support::gateway::{TempDir, request};
    use crate::support::process::Server;
    let fake = FakeUpstream::start();
    let env = [
        ("MAMMOUTH_API_KEY", "sk-provider".to_string()),
        ("MAMMOUTH_BASE_URL", fake.base_url()),
        ("OLLAMA_HOST", "127.0.0.1:9".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = TempDir::new("refusal-ids");
    std::fs::write(dir.join("keys.csv"), line("alice", ALICE, "*", "", "")).unwrap();
    let server = Server::start(dir, &[], &env);
    let body =
        br#"{"model": "gpt41", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}"#;
    let wrong = bearer(WRONG);
    let alice = bearer(ALICE);
    let anthropic = [
        ("authorization", alice.as_str()),
        ("anthropic-version", "2023-06-01"),
    ];
    for (path, headers, header, status) in [
        // Refused before its place: no key of keys.csv.
        (
            "/v1/chat/completions",
            vec![("authorization", wrong.as_str())],
            "x-request-id",
            401,
        ),
        // Refused by the HTTP layer, before the body is read.
        (
            "/v1/responses",
            vec![
                ("authorization", alice.as_str()),
                ("content-encoding", "gzip"),
            ],
            "x-request-id",
            400,
        ),
        (
            "/v1/messages",
            vec![
                ("authorization", wrong.as_str()),
                ("anthropic-version", "2023-06-01"),
            ],
            "request-id",
            401,
        ),
        // Not a call, but Anthropic names its answers: the line holds the id too.
        (
            "/v1/messages/count_tokens",
            anthropic.to_vec(),
            "request-id",
            200,
        ),
    ] {
        let r = request(&server.url(path), "POST", Some(body), &headers);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        let id = r
            .header(header)
            .unwrap_or_else(|| panic!("{path}: no {header}"))
            .to_string();
        let logged = server.wait_for_line(&format!("request_id={id}"), Duration::from_secs(10));
        assert!(logged.contains(&format!("path={path}")), "{logged}");
    }
}
