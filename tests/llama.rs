//! A supervised llama-server (the stand-in `examples/fake_llama_server.rs`): loading → 503
//! `model_loading` → ready → answers, streams, a crash and a hang restarted, the slot limit
//! with its queue (429 `model_busy`), a client leaving the queue, `/api/health`; then the
//! real binary: its output in the log, no process left after SIGTERM or SIGKILL, bad flags.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::client::{self, Call};
use crate::support::gateway::{Gateway, Options, TempDir, request};
use crate::support::llama::{ModelFile, alive, fake_server, parent, wait_gone, wait_llama};
use crate::support::process::{Server, free_port};
use crate::support::upstream::FakeUpstream;

fn health(gw: &Gateway) -> Value {
    gw.get("/api/health").json()
}

fn ready(gw: &Gateway) -> Value {
    wait_llama(|| health(gw), |l| l["state"] == "ready", "ready")
}

fn start(config: sigorest::config::LlamaConfig) -> Gateway {
    Gateway::start(
        Options::default()
            .var("OLLAMA_HOST", "127.0.0.1:9")
            .llama(config),
    )
}

/// The fake's own counters, straight from its port.
fn fake_stats(gw: &Gateway) -> Value {
    let port = health(gw)["llama"]["port"].as_u64().expect("port");
    request(&format!("http://127.0.0.1:{port}/stats"), "GET", None, &[]).json()
}

fn chat_body(model: &str, text: &str, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({"model": model, "stream": stream,
        "messages": [{"role": "user", "content": text}]}))
    .unwrap()
}

/// A request on a raw socket whose answer is read only as far as `until` (or not at all).
fn send_raw(addr: SocketAddr, body: &[u8]) -> TcpStream {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(body).unwrap();
    sock
}

fn read_until(sock: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = sock.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn loading_then_ready_then_answers() {
    let model = ModelFile::new("llama-load");
    model.touch(".loading");
    let mut config = model.config();
    config.args = vec!["-c".into(), "2048".into(), "--alias".into(), "tiny".into()];
    let gw = start(config);

    // Listed at once, answering 503 model_loading with Retry-After while it loads.
    let listed = gw.get("/v1/models").json();
    let entry = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "local")
        .cloned()
        .expect("local is listed");
    assert_eq!(entry["owned_by"], "llama.cpp");
    wait_llama(|| health(&gw), |l| l["pid"].is_u64(), "started");
    let r = gw.chat("local", "hi", json!({}));
    let message = r.assert_error(503, "model_loading");
    assert!(message.contains("loading the model"), "{message}");
    assert_eq!(r.header("retry-after"), Some("5"));
    let h = health(&gw);
    assert_eq!(
        (h["llama"]["state"].as_str(), h["status"].as_str()),
        (Some("starting"), Some("degraded"))
    );
    assert_eq!(h["llama"]["restarts"], 0);

    model.remove(".loading");
    let h = ready(&gw);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["llama"]["last_exit"], Value::Null);
    assert_eq!(
        h["llama"]["slots"],
        json!({"limit": 1, "busy": 0, "waiting": 0, "queue": 4})
    );

    for name in ["local", "LOCAL", "tiny-q4.gguf"] {
        let r = gw.chat(name, "hi", json!({}));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let v = r.json();
        assert_eq!(v["choices"][0]["message"]["content"], "llama says: hi");
        assert_eq!(
            v["model"], "tiny-q4.gguf",
            "the file name goes upstream as the model"
        );
    }

    // What it was started with: sigorest's own flags first, then -llama-args.
    let port = h["llama"]["port"].as_u64().unwrap().to_string();
    let path = model.path.to_string_lossy().into_owned();
    assert_eq!(
        model.args(),
        [
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "-m",
            &path,
            "-c",
            "2048",
            "--alias",
            "tiny"
        ]
    );
    let detailed = gw.get("/api/models").json();
    let m = detailed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["short"] == "local")
        .cloned()
        .unwrap();
    assert_eq!(
        (m["provider"].as_str(), m["id"].as_str()),
        (Some("llama.cpp"), Some("tiny-q4.gguf"))
    );
    assert_eq!(
        (m["context_tokens"].as_u64(), m["ready"].as_bool()),
        (Some(2048), Some(true))
    );
    assert_eq!(m["key_set"], true);
}

/// The key reaches llama-server in its environment, never in its arguments (which `ps`
/// shows every user), and sigorest sends it with each request: from `-llama-args`, or from
/// sigorest's own `LLAMA_API_KEY`.
#[test]
fn the_key_goes_to_llama_server_in_its_environment_and_with_each_request() {
    for (key, from_env) in [
        ("sk-from-args", false),
        ("sk-from-env", true),
        // llama-server's list: sigorest sends one of them.
        ("sk-one,sk-two", true),
    ] {
        let model = ModelFile::new("llama-key");
        let mut config = model.config();
        config.args = vec!["-c".into(), "2048".into()];
        let mut options = Options::default().var("OLLAMA_HOST", "127.0.0.1:9");
        if from_env {
            options = options.var("LLAMA_API_KEY", key);
        } else {
            // What `-llama-args "-c 2048 --api-key KEY"` parses into.
            config.api_key = Some(key.to_string());
        }
        let gw = Gateway::start(options.llama(config));
        ready(&gw);
        let r = gw.chat("local", "hi", json!({}));
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "llama says: hi"
        );
        let args = model.args();
        assert!(!args.iter().any(|a| a.contains(key)), "{args:?}");
        assert_eq!(args[args.len() - 2..], ["-c", "2048"]);
        // The fake does check it: straight to its port, without the key, is a 401.
        let port = health(&gw)["llama"]["port"].as_u64().unwrap();
        let direct = request(
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
            "POST",
            Some(&chat_body("local", "hi", false)),
            &[],
        );
        assert_eq!(direct.status, 401, "{key}");
    }
}

#[test]
fn a_stream_holds_its_slot_until_it_ends() {
    let model = ModelFile::new("llama-stream");
    let mut config = model.config();
    config.queue_wait = Duration::ZERO;
    let gw = start(config);
    ready(&gw);

    let s = client::stream(gw.http, &Call::post(&chat_body("local", "hi", true)));
    assert_eq!(s.status, 200);
    assert_eq!(s.text(), "llama says hi");
    assert_eq!(s.payloads().last(), Some(&"[DONE]"));

    // A stream that has sent its first event holds the one slot: no waiting allowed, so
    // a second request is refused at once...
    let mut first = send_raw(gw.http, &chat_body("local", "hold on", true));
    read_until(&mut first, "data:");
    let r = gw.chat("local", "hi", json!({}));
    let message = r.assert_error(429, "model_busy");
    assert!(message.contains("slots are taken"), "{message}");
    assert!(r.header("retry-after").is_some());
    // ...until the stream ends.
    model.touch(".release");
    read_until(&mut first, "[DONE]");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&gw)["llama"]["slots"]["busy"] != 0 {
        assert!(Instant::now() < deadline, "the slot was never given back");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(gw.chat("local", "hi", json!({})).status, 200);
}

#[test]
fn a_crash_is_restarted_and_answers_again() {
    let model = ModelFile::new("llama-crash");
    let gw = start(model.config());
    ready(&gw);
    let first = model.pids();
    assert_eq!(first.len(), 1);

    model.touch(".crash");
    let h = wait_llama(
        || health(&gw),
        |l| l["restarts"] == 1 && l["state"] == "ready",
        "restarted",
    );
    assert_eq!(h["llama"]["last_exit"], "exited with status 3");
    let pids = model.pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(!alive(pids[0]));
    assert_eq!(
        h["llama"]["pid"].as_u64().map(|p| p as u32),
        parent(pids[1]),
        "the shim's pid"
    );
    let r = gw.chat("local", "again", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "llama says: again"
    );
}

#[test]
fn a_hung_server_is_stopped_and_started_again() {
    let model = ModelFile::new("llama-hang");
    let gw = start(model.config());
    ready(&gw);
    model.touch(".hang");
    let h = wait_llama(
        || health(&gw),
        |l| l["restarts"] == 1 && l["state"] == "ready",
        "restarted after the hang",
    );
    let last = h["llama"]["last_exit"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.starts_with("stopped by sigorest: 3 health checks"),
        "{last}"
    );
    let pids = model.pids();
    assert_eq!(pids.len(), 2);
    wait_gone(&pids[..1], Duration::from_secs(10));
    assert_eq!(gw.chat("local", "hi", json!({})).status, 200);
}

#[test]
fn a_full_queue_and_a_long_wait_get_429() {
    let model = ModelFile::new("llama-queue");
    let mut config = model.config();
    config.queue = 1;
    config.queue_wait = Duration::from_secs(1);
    let gw = start(config);
    ready(&gw);
    let addr = gw.http;
    let slots = |gw: &Gateway| health(gw)["llama"]["slots"].clone();
    let wait_slots = |busy: u64, waiting: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while slots(&gw)["busy"] != busy || slots(&gw)["waiting"] != waiting {
            assert!(Instant::now() < deadline, "{}", slots(&gw));
            thread::sleep(Duration::from_millis(10));
        }
    };

    let holder = thread::spawn(move || {
        request(
            &format!("http://{addr}/v1/chat/completions"),
            "POST",
            Some(&chat_body("local", "hold", false)),
            &[],
        )
    });
    wait_slots(1, 0);
    let queued = thread::spawn(move || {
        request(
            &format!("http://{addr}/v1/chat/completions"),
            "POST",
            Some(&chat_body("local", "queued", false)),
            &[],
        )
    });
    wait_slots(1, 1);
    // The queue (1) is full: refused at once.
    let r = gw.chat("local", "third", json!({}));
    let message = r.assert_error(429, "model_busy");
    assert!(message.contains("1 requests wait already"), "{message}");
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok())
    );
    // The queued one waits 1 s, then gets 429 too.
    let r = queued.join().unwrap();
    let message = r.assert_error(429, "model_busy");
    assert!(message.contains("came free within 1 s"), "{message}");
    model.touch(".release");
    assert_eq!(holder.join().unwrap().status, 200);
    assert_eq!(
        fake_stats(&gw)["max_in_flight"],
        1,
        "never more than the limit at once"
    );
    assert_eq!(slots(&gw)["busy"], 0);
}

#[test]
fn a_client_that_leaves_the_queue_frees_its_place() {
    let model = ModelFile::new("llama-leave");
    let mut config = model.config();
    config.queue = 1;
    config.queue_wait = Duration::from_secs(30);
    let gw = start(config);
    ready(&gw);
    let waiting = || health(&gw)["llama"]["slots"]["waiting"].as_u64().unwrap();
    let until = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while waiting() != n {
            assert!(Instant::now() < deadline, "waiting != {n}");
            thread::sleep(Duration::from_millis(10));
        }
    };
    let holder = send_raw(gw.http, &chat_body("local", "hold", false));
    wait_llama(|| health(&gw), |l| l["slots"]["busy"] == 1, "busy");
    let leaver = send_raw(gw.http, &chat_body("local", "leaving", false));
    until(1);
    drop(leaver);
    until(0);
    // Its place went to the next one, which gets its answer once the slot is free.
    let addr = gw.http;
    let next = thread::spawn(move || {
        request(
            &format!("http://{addr}/v1/chat/completions"),
            "POST",
            Some(&chat_body("local", "next", false)),
            &[],
        )
    });
    until(1);
    model.touch(".release");
    let r = next.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    drop(holder);
    assert_eq!(
        fake_stats(&gw)["requests"],
        2,
        "the one that left never reached it"
    );
}

#[test]
fn a_long_queue_of_local_requests_holds_no_thread_the_others_need() {
    // 70 requests wait for the one slot. Waiting is a task on the event loop: the threads
    // for blocking work (session files, name lookups; at most 64) stay free, so a cloud
    // request with a session answers while all 70 still wait.
    const WAITERS: u64 = 70;
    let model = ModelFile::new("llama-many");
    let mut config = model.config();
    config.queue = 80;
    config.queue_wait = Duration::from_secs(60);
    let fake = FakeUpstream::start();
    let gw = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .models("gpt41")
            .workers(100, 64)
            .configure(|c| c.max_conns_per_ip = 200)
            .llama(config),
    );
    ready(&gw);
    let slots = || health(&gw)["llama"]["slots"].clone();
    let holder = send_raw(gw.http, &chat_body("local", "hold", false));
    wait_llama(|| health(&gw), |l| l["slots"]["busy"] == 1, "busy");
    let waiters: Vec<TcpStream> = (0..WAITERS)
        .map(|i| send_raw(gw.http, &chat_body("local", &format!("wait {i}"), false)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while slots()["waiting"] != WAITERS {
        assert!(Instant::now() < deadline, "{}", slots());
        thread::sleep(Duration::from_millis(10));
    }

    for text in ["hello", "again"] {
        let r = gw.chat("gpt41", text, json!({"session_id": "busy-day"}));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let sent = fake.last_json().expect("the cloud model was asked");
    assert_eq!(
        sent["messages"][0]["content"], "hello",
        "the session was kept"
    );
    assert_eq!(sent["messages"].as_array().map(Vec::len), Some(3), "{sent}");
    assert_eq!(
        slots()["waiting"],
        WAITERS,
        "answered while every local request still waited"
    );

    // Clients that leave take their places with them.
    drop(waiters);
    let deadline = Instant::now() + Duration::from_secs(20);
    while slots()["waiting"] != 0 {
        assert!(Instant::now() < deadline, "{}", slots());
        thread::sleep(Duration::from_millis(10));
    }
    model.touch(".release");
    drop(holder);
}

/// The ids of the `/v1/models` and `/api/models` entries named `id`, with their owners.
fn listed_as(gw: &Gateway, id: &str) -> (Vec<Value>, Vec<Value>) {
    let owners = |path: &str, name: &str, owner: &str| -> Vec<Value> {
        gw.get(path).json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m[name] == id)
            .map(|m| m[owner].clone())
            .collect()
    };
    (
        owners("/v1/models", "id", "owned_by"),
        owners("/api/models", "short", "provider"),
    )
}

#[test]
fn a_cloud_model_whose_short_code_is_the_local_name_is_not_offered() {
    let model = ModelFile::new("llama-shadow");
    let mut config = model.config();
    config.name = "gpt41".into();
    let gw = Gateway::start(
        Options::default()
            .var("OLLAMA_HOST", "127.0.0.1:9")
            .models("gpt41\nkimi\n")
            .llama(config),
    );

    // Listed once, as the model a request for it reaches; the other cloud models stay.
    let local = (vec![json!("llama.cpp")], vec![json!("llama.cpp")]);
    assert_eq!(listed_as(&gw, "gpt41"), local);
    assert_eq!(listed_as(&gw, "kimi").0, [json!("moonshot")]);
    for asked in ["gpt41", "GPT41", "tiny-q4.gguf"] {
        let r = gw.get(&format!("/v1/models/{asked}"));
        assert_eq!(r.status, 200, "{asked}: {}", r.text());
        assert_eq!(r.json()["owned_by"], "llama.cpp", "{asked}");
    }
    let page = gw.get("/").text();
    assert!(page.contains("<td>gpt41</td><td>llama.cpp</td>"), "{page}");
    assert!(!page.contains("mammouth"), "{page}");
    let h = health(&gw);
    assert!(h["circuit_breakers"]["gpt41"].is_object(), "{h}");

    // Its upstream id reaches neither it nor the local model: a 404 that says why.
    gw.get("/v1/models/gpt-4.1")
        .assert_error(404, "model_not_found");
    let message = gw
        .chat("gpt-4.1", "hi", json!({}))
        .assert_error(404, "model_not_found");
    assert!(message.contains("local llama-server"), "{message}");

    ready(&gw);
    let r = gw.chat("gpt41", "hi", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "llama says: hi"
    );

    // Named as a cloud model's upstream id, the local model takes that id only: the cloud
    // model keeps its short code, and each is retrieved as what a request for it reaches.
    drop(gw);
    let mut config = model.config();
    config.name = "gpt-4.1".into();
    let gw = Gateway::start(
        Options::default()
            .var("OLLAMA_HOST", "127.0.0.1:9")
            .models("gpt41\n")
            .llama(config),
    );
    assert_eq!(listed_as(&gw, "gpt41").0, [json!("mammouth")]);
    assert_eq!(listed_as(&gw, "gpt-4.1").0, [json!("llama.cpp")]);
    for (asked, owner) in [("gpt-4.1", "llama.cpp"), ("gpt41", "mammouth")] {
        let r = gw.get(&format!("/v1/models/{asked}"));
        assert_eq!(r.status, 200, "{asked}: {}", r.text());
        assert_eq!(r.json()["owned_by"], owner, "{asked}");
    }
}

// --- the real binary -------------------------------------------------------------------

fn llama_args(model: &ModelFile) -> Vec<String> {
    vec![
        "-llama-server".into(),
        fake_server().to_string_lossy().into_owned(),
        "-llama-model".into(),
        model.path.to_string_lossy().into_owned(),
        "-llama-name".into(),
        "pi".into(),
    ]
}

fn start_binary(model: &ModelFile, extra: &[&str]) -> Server {
    let mut args = llama_args(model);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(
        TempDir::new("llama-bin"),
        &args,
        &[("OLLAMA_HOST", "127.0.0.1:9")],
    )
}

/// The fake and its shim, once ready.
fn processes(server: &Server, model: &ModelFile) -> Vec<u32> {
    let h = wait_llama(
        || server.get("/api/health").json(),
        |l| l["state"] == "ready",
        "ready",
    );
    let shim = h["llama"]["pid"].as_u64().expect("pid") as u32;
    let fake = *model.pids().last().expect("the fake's pid");
    assert_eq!(parent(fake), Some(shim));
    assert_eq!(parent(shim), Some(server.child.id()));
    vec![fake, shim]
}

#[test]
fn no_process_is_left_after_sigterm_even_when_it_ignores_sigterm() {
    let model = ModelFile::new("llama-term");
    model.touch(".ignore-term");
    let mut server = start_binary(&model, &["-v", "debug"]);
    let pids = processes(&server, &model);
    // Its output is in the log, at DEBUG, with a prefix.
    server.wait_for_line(
        "llama-server: fake llama-server listening",
        Duration::from_secs(10),
    );
    let r = request(
        &server.url("/v1/chat/completions"),
        "POST",
        Some(&chat_body("PI", "x", false)),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    // SIGTERM was ignored: SIGKILL after the grace period, before sigorest exited.
    wait_gone(&pids, Duration::from_secs(2));
    let log = server.stderr();
    assert!(log.contains("llama-server stopped"), "{log}");
    assert!(log.contains("killed by signal 9"), "{log}");
}

#[test]
fn no_process_is_left_after_sigkill() {
    let model = ModelFile::new("llama-kill");
    let mut server = start_binary(&model, &[]);
    let pids = processes(&server, &model);
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    wait_gone(&pids, Duration::from_secs(10));
}

#[test]
fn a_missing_program_or_model_stops_start_up_with_one_line() {
    let model = ModelFile::new("llama-bad");
    let fake = fake_server().to_string_lossy().into_owned();
    let path = model.path.to_string_lossy().into_owned();
    for (args, expect) in [
        (
            vec![
                "-llama-server",
                "/no/such/llama-server",
                "-llama-model",
                &path,
            ],
            "-llama-server: /no/such/llama-server: not an executable file",
        ),
        (
            vec![
                "-llama-server",
                "no-such-llama-server-x",
                "-llama-model",
                &path,
            ],
            "no such program in PATH",
        ),
        (
            vec!["-llama-server", &fake, "-llama-model", "/no/such.gguf"],
            "-llama-model: /no/such.gguf: no such file",
        ),
        (
            vec!["-llama-server", &fake],
            "-llama-server needs -llama-model",
        ),
        (
            vec![
                "-llama-server",
                &fake,
                "-llama-model",
                &path,
                "-llama-args",
                "--parallel 300",
            ],
            "-llama-args: --parallel '300' is not a whole number from 1 to 256",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sigorest"))
            .args(["-http-port", &free_port().to_string(), "-https-port", "0"])
            .args(["-bind", "127.0.0.1"])
            .args(&args)
            .current_dir(model.dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(last.contains(expect), "{args:?}: {err}");
    }
}
