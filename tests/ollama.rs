//! Ollama discovery: the registry against a fake Ollama over HTTP (`/api/tags`, `/api/show`),
//! then the gateway with one (listing, `/api/models`, `/api/health`, chat and streaming to
//! Ollama models, models that appear and vanish, an Ollama that is down, slow or mad).
//!
//! Cloud providers and Ollama are two separate fakes, so a request seen by the Ollama fake
//! went there and nowhere else.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigorest::parts::SystemClock;
use sigorest::parts::{Lookup, Ollama};

use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Recorded, Reply};

const WAIT: Duration = Duration::from_secs(10);

/// `/api/tags` as Ollama answers it.
fn tags(names: &[&str]) -> Value {
    let models: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"name": n, "model": n, "modified_at": "2025-05-01T10:00:00Z", "size": 3338801804u64,
                "digest": format!("digest-{n}"),
                "details": {"family": "gemma3", "parameter_size": "4.3B", "quantization_level": "Q4_K_M"}})
        })
        .collect();
    json!({ "models": models })
}

/// The context length the fake reports for a model.
fn context_of(name: &str) -> u64 {
    if name.starts_with("gemma3") {
        131072
    } else {
        40960
    }
}

/// A fake Ollama reporting these models, answering `/api/show` and chat completions.
/// An Ollama with five models whose `/api/show` gives context lengths of 0, -4096, 1e30,
/// 2^64-1 and (`good:1b`) 8192.
fn implausible_contexts() -> FakeUpstream {
    let names = ["zero:1b", "negative:1b", "huge:1b", "max:1b", "good:1b"];
    let fake = fake_ollama(&names);
    fake.route("POST", "/api/show", |req: &Recorded| {
        let name = req.json.as_ref().and_then(|j| j["model"].as_str());
        let context = match name.unwrap_or("") {
            "zero:1b" => json!(0),
            "negative:1b" => json!(-4096),
            "huge:1b" => json!(1e30),
            "max:1b" => json!(u64::MAX),
            _ => json!(8192),
        };
        Reply::json(
            200,
            json!({"model_info": {"general.architecture": "x", "x.context_length": context}}),
        )
    });
    fake
}

fn fake_ollama(names: &[&str]) -> FakeUpstream {
    let fake = FakeUpstream::start();
    fake.route("GET", "/api/tags", Reply::json(200, tags(names)));
    fake.route("POST", "/api/show", |req: &Recorded| {
        let name = req
            .json
            .as_ref()
            .and_then(|j| j["model"].as_str())
            .unwrap_or("");
        let arch = name.split(':').next().unwrap_or("x");
        Reply::json(
            200,
            json!({"modelfile": "# Modelfile", "parameters": "num_ctx 2048",
                "details": {"family": arch},
                "model_info": {"general.architecture": arch,
                    format!("{arch}.context_length"): context_of(name),
                    format!("{arch}.embedding_length"): 2560}}),
        )
    });
    fake
}

fn registry(fake: &FakeUpstream) -> Ollama {
    Ollama::new(Some(&fake.url("")), Arc::new(SystemClock))
}

/// A loopback port where nothing listens (the kernel chose it, then it was released).
fn refused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn shorts(o: &Ollama) -> Vec<String> {
    o.models().into_iter().map(|m| m.short).collect()
}

/// Polls `check` until it gives a value; panics with `what` after [`WAIT`].
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The registry against a fake Ollama over HTTP, without a gateway.
mod registry {
    use super::*;

    #[test]
    fn discovery_reads_tags_then_show_once_per_model() {
        let fake = fake_ollama(&["gemma3:4b", "qwen3:latest"]);
        let o = registry(&fake);
        assert_eq!(o.base_url(), fake.url(""));
        assert_eq!(o.discover(), Ok(2));
        let models: Vec<(String, String, u64)> = o
            .models()
            .into_iter()
            .map(|m| (m.short, m.name, m.context))
            .collect();
        assert_eq!(
            models,
            [
                ("ollama-gemma3-4b".into(), "gemma3:4b".into(), 131072),
                ("ollama-qwen3".into(), "qwen3:latest".into(), 40960),
            ]
        );
        let tags_calls = fake.requests_to("/api/tags");
        assert_eq!(tags_calls.len(), 1);
        assert_eq!(tags_calls[0].method, "GET");
        let shows = fake.requests_to("/api/show");
        let asked: Vec<&str> = shows
            .iter()
            .map(|r| {
                r.json
                    .as_ref()
                    .and_then(|j| j["model"].as_str())
                    .unwrap_or("")
            })
            .collect();
        assert_eq!(asked, ["gemma3:4b", "qwen3:latest"]);
        for r in fake.requests() {
            assert_eq!(r.header("authorization"), None, "{} {}", r.method, r.path);
            assert!(
                r.path.starts_with('/'),
                "origin-form, not through a proxy: {}",
                r.path
            );
        }
        // Context lengths are read once per model.
        assert_eq!(o.discover(), Ok(2));
        assert_eq!(fake.requests_to("/api/tags").len(), 2);
        assert_eq!(fake.requests_to("/api/show").len(), 2);
        let status = o.status();
        assert_eq!(
            (status.models_found, status.last_error.as_deref()),
            (2, None)
        );
        assert!(status.last_discovery.is_some());
    }

    #[test]
    fn ollama_host_is_read_as_ollama_reads_it() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let port = fake.addr().port();
        for host in [
            format!("127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}/"),
        ] {
            let o = Ollama::new(Some(&host), Arc::new(SystemClock));
            assert_eq!(o.base_url(), format!("http://127.0.0.1:{port}"), "{host}");
            assert_eq!(o.discover(), Ok(1), "{host}");
        }
        let o = Ollama::new(Some("127.0.0.1"), Arc::new(SystemClock));
        assert_eq!(o.base_url(), "http://127.0.0.1:11434");
        let o = Ollama::new(None, Arc::new(SystemClock));
        assert_eq!(o.base_url(), "http://localhost:11434");
    }

    #[test]
    fn a_stopped_ollama_drops_its_models() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let o = registry(&fake);
        o.discover().unwrap();
        drop(fake);
        let started = Instant::now();
        let err = o.discover().unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused at once"
        );
        assert!(err.contains("cannot connect"), "{err}");
        assert_eq!(o.models(), []);
        assert_eq!(o.lookup("ollama-gemma3-4b"), Lookup::Gone);
        assert_eq!(o.lookup("gemma3:4b"), Lookup::Gone);
        let status = o.status();
        assert_eq!(status.models_found, 0);
        assert!(
            status
                .last_error
                .is_some_and(|e| e.contains("cannot connect"))
        );
    }

    #[test]
    fn nothing_listening_is_a_quick_clear_error() {
        let o = Ollama::new(
            Some(&format!("127.0.0.1:{}", refused_port())),
            Arc::new(SystemClock),
        );
        let started = Instant::now();
        let err = o.discover().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            err.contains("GET /api/tags") && err.contains("cannot connect"),
            "{err}"
        );
        assert_eq!(o.models(), []);
        assert_eq!(o.lookup("ollama-x"), Lookup::Unknown);
    }

    #[test]
    fn a_slow_ollama_times_out_within_2_s_and_keeps_the_last_list() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let o = registry(&fake);
        o.discover().unwrap();
        for slow in [
            Reply::json(200, tags(&[])).delay(Duration::from_secs(5)),
            Reply::hang(),
        ] {
            fake.route("GET", "/api/tags", slow);
            let started = Instant::now();
            let err = o.discover().unwrap_err();
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(1500) && took < Duration::from_millis(2900),
                "gave up after {took:?}"
            );
            assert!(err.contains("within 2 s"), "{err}");
            assert_eq!(shorts(&o), ["ollama-gemma3-4b"]);
            assert!(o.status().last_error.is_some());
        }
    }

    #[test]
    fn a_garbage_answer_keeps_the_last_list() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let o = registry(&fake);
        o.discover().unwrap();
        let big = json!({"models": [{"name": "x:1", "pad": "x".repeat(9 * 1024 * 1024)}]});
        for (garbage, says) in [
            (
                Reply::garbage(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()),
                "GET /api/tags",
            ),
            (
                Reply::json(200, json!("<html>not ollama</html>")),
                "no 'models'",
            ),
            (Reply::json(200, json!({"models": "many"})), "no 'models'"),
            (Reply::status(500), "HTTP 500"),
            (Reply::status(404), "HTTP 404"),
            (Reply::close(), "GET /api/tags"),
            (Reply::json(200, big), "larger than"),
        ] {
            fake.route("GET", "/api/tags", garbage);
            let err = o.discover().unwrap_err();
            assert!(err.contains(says), "{err}");
            assert_eq!(shorts(&o), ["ollama-gemma3-4b"], "after {says}");
            assert_eq!(o.status().last_error.as_deref(), Some(err.as_str()));
        }
        fake.route("GET", "/api/tags", Reply::json(200, tags(&["gemma3:4b"])));
        assert_eq!(o.discover(), Ok(1));
        assert_eq!(o.status().last_error, None);
    }

    #[test]
    fn an_empty_list_drops_every_model() {
        let fake = fake_ollama(&["gemma3:4b", "qwen3:latest"]);
        let o = registry(&fake);
        o.discover().unwrap();
        fake.route("GET", "/api/tags", Reply::json(200, tags(&[])));
        assert_eq!(o.discover(), Ok(0));
        assert_eq!(o.lookup("ollama-qwen3"), Lookup::Gone);
        assert_eq!(o.lookup("qwen3"), Lookup::Gone);
    }

    #[test]
    fn a_failing_show_leaves_the_context_unknown_and_is_tried_again() {
        let fake = fake_ollama(&["gemma3:4b"]);
        fake.route("POST", "/api/show", Reply::status(500));
        let o = registry(&fake);
        assert_eq!(o.discover(), Ok(1));
        assert_eq!(o.models()[0].context, 0);
        fake.route(
            "POST",
            "/api/show",
            Reply::json(200, json!({"model_info": {"gemma3.context_length": 8192}})),
        );
        o.discover().unwrap();
        assert_eq!(o.models()[0].context, 8192);
        assert_eq!(fake.requests_to("/api/show").len(), 2);
    }

    #[test]
    fn implausible_context_lengths_are_not_reported() {
        let fake = implausible_contexts();
        let o = registry(&fake);
        assert_eq!(o.discover(), Ok(5));
        assert_eq!(fake.requests_to("/api/show").len(), 5, "every one asked");
        for m in o.models() {
            let expected = if m.name == "good:1b" { 8192 } else { 0 };
            assert_eq!(
                m.context, expected,
                "{}: as when Ollama reports none",
                m.name
            );
        }
    }

    #[test]
    fn the_background_thread_finds_models_and_stop_ends_it() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let o = Arc::new(registry(&fake));
        o.start();
        eventually("background discovery", || {
            o.models().first().filter(|m| m.context > 0).cloned()
        });
        o.stop();
        assert_eq!(fake.requests_to("/api/tags").len(), 1);
    }
}

/// The gateway with a fake Ollama.
mod gateway {
    use super::*;

    /// A cloud fake and an Ollama fake, and a gateway pointed at both.
    fn gateway_with(ollama_host: &str) -> (Gateway, FakeUpstream) {
        let cloud = FakeUpstream::start();
        let gw = Gateway::start(
            Options::default()
                .upstream(&cloud.base_url())
                .var("OLLAMA_HOST", ollama_host),
        );
        (gw, cloud)
    }

    fn ollama_ids(gw: &Gateway) -> Vec<String> {
        let v = gw.get("/v1/models").json();
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["owned_by"] == "ollama")
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect()
    }

    fn wait_for_discovery(gw: &Gateway) -> Value {
        eventually("a discovery", || {
            let health = gw.get("/api/health").json();
            (!health["ollama"]["last_discovery"].is_null()).then(|| health["ollama"].clone())
        })
    }

    #[test]
    fn health_answers_at_once_while_ollama_does_not_answer() {
        let hanging = FakeUpstream::start();
        hanging.route("GET", "/api/tags", Reply::hang());
        let started = Instant::now();
        let (gw, _cloud) = gateway_with(&hanging.url(""));
        let health = gw.get("/api/health");
        let took = started.elapsed();
        assert_eq!(health.status, 200);
        assert!(took < Duration::from_millis(200), "health after {took:?}");
        let ollama = &health.json()["ollama"];
        assert_eq!(ollama["endpoint"], hanging.url(""));
        assert_eq!(ollama["models_found"], 0);
        assert!(ollama_ids(&gw).is_empty());
        // The discovery gives up after 2 s and says why.
        let ollama = wait_for_discovery(&gw);
        assert!(
            ollama["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("within 2 s"),
            "{ollama}"
        );
    }

    #[test]
    fn an_unreachable_ollama_lists_nothing_and_says_why() {
        let started = Instant::now();
        let (gw, _cloud) = gateway_with(&format!("127.0.0.1:{}", refused_port()));
        assert_eq!(gw.get("/api/health").status, 200);
        assert!(started.elapsed() < Duration::from_millis(200));
        let ollama = wait_for_discovery(&gw);
        assert_eq!(ollama["models_found"], 0);
        assert!(
            ollama["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("cannot connect"),
            "{ollama}"
        );
        assert!(ollama_ids(&gw).is_empty());
        let msg = gw
            .chat("ollama-gemma3-4b", "hi", json!({}))
            .assert_error(404, "model_not_found");
        assert!(msg.contains("does not report"), "{msg}");
    }

    #[test]
    fn discovered_models_are_listed_with_context_and_zero_prices() {
        let fake = fake_ollama(&[
            "gemma3:4b",
            "qwen3:latest",
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        ]);
        let (gw, _cloud) = gateway_with(&fake.url(""));
        let ollama = wait_for_discovery(&gw);
        assert_eq!(ollama["models_found"], 3);
        assert_eq!(ollama["endpoint"], fake.url(""));
        assert!(ollama["last_error"].is_null());
        assert!(ollama["last_discovery"].as_u64().is_some());
        assert_eq!(
            ollama_ids(&gw),
            [
                "ollama-gemma3-4b",
                "ollama-hf.co-bartowski-Llama-3.2-1B-Instruct-GGUF-Q4_K_M",
                "ollama-qwen3"
            ]
        );
        let info = eventually("context lengths", || {
            let v = gw.get("/api/models").json();
            let ours: Vec<Value> = v["data"]
                .as_array()?
                .iter()
                .filter(|m| m["provider"] == "ollama")
                .cloned()
                .collect();
            ours.iter()
                .all(|m| m["context_tokens"].as_u64() > Some(0))
                .then_some(ours)
        });
        let gemma = info
            .iter()
            .find(|m| m["short"] == "ollama-gemma3-4b")
            .expect("gemma listed");
        assert_eq!(gemma["id"], "gemma3:4b");
        assert_eq!(gemma["context_tokens"], 131072);
        assert_eq!(gemma["input_price_per_million"], 0.0);
        assert_eq!(gemma["output_price_per_million"], 0.0);
        assert_eq!(gemma["key_env"], Value::Null);
        assert_eq!(fake.requests_to("/api/show").len(), 3, "once per model");
        // The health counts them as available.
        let health = gw.get("/api/health").json();
        assert!(health["available_models"].as_u64() >= Some(3));
    }

    #[test]
    fn implausible_context_lengths_are_shown_as_not_reported() {
        let fake = implausible_contexts();
        let (gw, _cloud) = gateway_with(&fake.url(""));
        wait_for_discovery(&gw);
        eventually("every context length read", || {
            (fake.requests_to("/api/show").len() >= 5).then_some(())
        });
        let contexts = eventually("the good model's context", || {
            let v = gw.get("/api/models").json();
            let ours: Vec<(String, Value)> = v["data"]
                .as_array()?
                .iter()
                .filter(|m| m["provider"] == "ollama")
                .map(|m| {
                    (
                        m["id"].as_str().unwrap_or("").to_string(),
                        m["context_tokens"].clone(),
                    )
                })
                .collect();
            ours.iter()
                .any(|(id, c)| id == "good:1b" && c == 8192)
                .then_some(ours)
        });
        for (id, context) in contexts {
            let expected = if id == "good:1b" { 8192 } else { 0 };
            assert_eq!(context, expected, "{id}: as when Ollama reports none");
        }
    }

    #[test]
    fn chats_go_to_ollama_with_the_real_name_and_no_key() {
        let fake = fake_ollama(&["gemma3:4b", "qwen3:latest"]);
        let (gw, cloud) = gateway_with(&fake.url(""));
        wait_for_discovery(&gw);
        for (asked, sent) in [
            ("ollama-gemma3-4b", "gemma3:4b"),
            ("OLLAMA-GEMMA3-4B", "gemma3:4b"),
            ("gemma3:4b", "gemma3:4b"),
            ("ollama-qwen3", "qwen3:latest"),
            ("qwen3", "qwen3:latest"),
        ] {
            let r = gw.chat(asked, "hello there", json!({"temperature": 5}));
            assert_eq!(r.status, 200, "{asked}: {}", r.text());
            assert_eq!(
                r.json()["choices"][0]["message"]["content"],
                "echo: hello there"
            );
            let seen = fake.requests_to("/v1/chat/completions");
            let last = seen.last().expect("forwarded");
            assert_eq!(last.method, "POST");
            assert_eq!(last.path, "/v1/chat/completions");
            assert_eq!(last.model(), Some(sent), "{asked}");
            assert_eq!(last.header("authorization"), None, "no key to Ollama");
            assert_eq!(
                last.json.as_ref().unwrap()["temperature"],
                2.0,
                "clamped into 0..2"
            );
        }
        assert_eq!(cloud.request_count(), 0, "nothing went to the cloud");
    }

    #[test]
    fn streaming_to_an_ollama_model() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let (gw, _cloud) = gateway_with(&fake.url(""));
        wait_for_discovery(&gw);
        fake.push(Reply::chat_stream(&["Bon", "jour"]).gap(Duration::from_millis(20)));
        let r = gw.chat("ollama-gemma3-4b", "hi", json!({"stream": true}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.header("content-type")
                .unwrap_or("")
                .starts_with("text/event-stream")
        );
        let text = r.text();
        assert!(
            text.contains(r#""content":"Bon""#) && text.contains(r#""content":"jour""#),
            "{text}"
        );
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        let sent = fake.requests_to("/v1/chat/completions");
        assert_eq!(sent.len(), 1);
        assert!(sent[0].is_stream());
        assert_eq!(sent[0].model(), Some("gemma3:4b"));
        assert_eq!(sent[0].header("authorization"), None);
    }

    #[test]
    fn memory_and_sessions_apply_to_ollama_models() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let cloud = FakeUpstream::start();
        let gw = Gateway::start(
            Options::default()
                .upstream(&cloud.base_url())
                .var("OLLAMA_HOST", &fake.url(""))
                .memory(r#"{"content": "I live in Lyon.", "cache": true}"#),
        );
        wait_for_discovery(&gw);
        let first = gw.chat("ollama-gemma3-4b", "one", json!({"session_id": "s1"}));
        assert_eq!(first.status, 200, "{}", first.text());
        let second = gw.chat("gemma3:4b", "two", json!({"session_id": "s1"}));
        assert_eq!(second.status, 200, "{}", second.text());
        let sent = fake.requests_to("/v1/chat/completions");
        let messages = sent[1].json.as_ref().unwrap()["messages"].clone();
        assert_eq!(
            messages,
            json!([
                {"role": "system", "content": "I live in Lyon."},
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": "echo: one"},
                {"role": "user", "content": "two"},
            ]),
            "memory as a plain string (not Claude), then the session, then the request"
        );
        assert!(gw.dir.join("sessions/ollama-gemma3-4b@s1.json").exists());
    }

    #[test]
    fn a_new_model_is_found_on_demand() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let (gw, _cloud) = gateway_with(&fake.url(""));
        wait_for_discovery(&gw);
        assert_eq!(ollama_ids(&gw), ["ollama-gemma3-4b"]);
        // `ollama pull qwen3`, then ask for it at once: no waiting for the next round.
        fake.route(
            "GET",
            "/api/tags",
            Reply::json(200, tags(&["gemma3:4b", "qwen3:latest"])),
        );
        let r = gw.chat("ollama-qwen3", "hi", json!({}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            fake.requests_to("/v1/chat/completions")[0].model(),
            Some("qwen3:latest")
        );
        assert_eq!(ollama_ids(&gw), ["ollama-gemma3-4b", "ollama-qwen3"]);
        // Another unknown code within 5 s does not ask Ollama again.
        let asked = fake.requests_to("/api/tags").len();
        gw.chat("ollama-nope", "hi", json!({}))
            .assert_error(404, "model_not_found");
        assert_eq!(fake.requests_to("/api/tags").len(), asked);
    }

    #[test]
    fn a_new_model_is_found_on_demand_by_its_ollama_name() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let (gw, _cloud) = gateway_with(&fake.url(""));
        wait_for_discovery(&gw);
        // `ollama pull phi4:14b`, then ask for it by the name Ollama printed.
        fake.route(
            "GET",
            "/api/tags",
            Reply::json(200, tags(&["gemma3:4b", "phi4:14b"])),
        );
        let r = gw.chat("phi4:14b", "hi", json!({}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            fake.requests_to("/v1/chat/completions")[0].model(),
            Some("phi4:14b")
        );
        // Another unknown name within 5 s is answered at once, saying where it looked.
        let asked = fake.requests_to("/api/tags").len();
        let msg = gw
            .chat("phi5:1b", "hi", json!({}))
            .assert_error(404, "model_not_found");
        assert!(
            msg.contains("does not report") && msg.contains(&fake.url("")),
            "{msg}"
        );
        gw.chat("gpt-9", "hi", json!({}))
            .assert_error(404, "model_not_found");
        assert_eq!(fake.requests_to("/api/tags").len(), asked);
    }

    #[test]
    fn a_vanished_model_gets_a_clear_404() {
        let fake = fake_ollama(&["gemma3:4b", "qwen3:latest"]);
        let (gw, _cloud) = gateway_with(&fake.url(""));
        wait_for_discovery(&gw);
        let ollama = gw.running().app().ollama().clone();

        // `ollama rm gemma3:4b`: gone at the next discovery.
        fake.route(
            "GET",
            "/api/tags",
            Reply::json(200, tags(&["qwen3:latest"])),
        );
        assert_eq!(ollama.discover(), Ok(1));
        assert_eq!(ollama_ids(&gw), ["ollama-qwen3"]);
        for name in ["ollama-gemma3-4b", "gemma3:4b"] {
            let msg = gw
                .chat(name, "hi", json!({}))
                .assert_error(404, "model_not_found");
            assert!(msg.contains("no longer reports"), "{msg}");
            assert!(msg.contains(&fake.url("")), "names the endpoint: {msg}");
        }

        // Ollama stops: every model drops out.
        let endpoint = fake.url("");
        drop(fake);
        assert!(ollama.discover().is_err());
        assert!(ollama_ids(&gw).is_empty());
        let msg = gw
            .chat("ollama-qwen3", "hi", json!({}))
            .assert_error(404, "model_not_found");
        assert!(
            msg.contains("no longer reports") && msg.contains(&endpoint),
            "{msg}"
        );
        let health = gw.get("/api/health").json();
        assert_eq!(health["ollama"]["models_found"], 0);
        assert!(health["ollama"]["last_error"].is_string());
    }

    #[test]
    fn a_slow_or_mad_ollama_keeps_its_models_listed() {
        let fake = fake_ollama(&["gemma3:4b"]);
        let (gw, _cloud) = gateway_with(&fake.url(""));
        wait_for_discovery(&gw);
        let ollama = gw.running().app().ollama().clone();
        for bad in [
            Reply::hang(),
            Reply::garbage(b"HTTP/1.1 ???\r\n\r\n".to_vec()),
        ] {
            fake.route("GET", "/api/tags", bad);
            assert!(ollama.discover().is_err());
            assert_eq!(ollama_ids(&gw), ["ollama-gemma3-4b"]);
            let health = gw.get("/api/health").json();
            assert_eq!(health["ollama"]["models_found"], 1);
            assert!(health["ollama"]["last_error"].is_string());
            let r = gw.chat("ollama-gemma3-4b", "still here", json!({}));
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
}

/// The real binary, with proxy variables in its environment.
mod binary {
    use super::*;
    use crate::support::gateway::{TempDir, request};
    use crate::support::process::Server;

    fn chat(server: &Server, model: &str) -> crate::support::gateway::Reply {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        request(
            &server.url("/v1/chat/completions"),
            "POST",
            Some(&serde_json::to_vec(&body).unwrap()),
            &[],
        )
    }

    #[test]
    fn ollama_never_goes_through_a_proxy_and_a_down_ollama_warns_once() {
        let proxy = FakeUpstream::start();
        let ollama = fake_ollama(&["gemma3:4b"]);
        ollama.route("GET", "/api/tags", Reply::status(500));
        let proxy_url = proxy.url("");
        let ollama_host = ollama.url("");
        let env = [
            ("ALL_PROXY", proxy_url.as_str()),
            ("HTTP_PROXY", proxy_url.as_str()),
            ("http_proxy", proxy_url.as_str()),
            ("OLLAMA_HOST", ollama_host.as_str()),
            ("MAMMOUTH_API_KEY", "sk-test"),
            // Not a loopback address: the cloud call goes through the proxy (the control).
            ("MAMMOUTH_BASE_URL", "http://cloud.invalid/v1"),
        ];
        let server = Server::start(TempDir::new("ollama-proxy"), &[], &env);
        server.wait_for_line("Ollama discovery failed", WAIT);

        // Two more failed discoveries (SIGHUP rediscovers): still one WARN.
        for n in [2, 3] {
            server.signal("HUP");
            ollama.wait_for_requests_to("/api/tags", n, WAIT);
        }
        ollama.route("GET", "/api/tags", Reply::json(200, tags(&["gemma3:4b"])));
        server.signal("HUP");
        server.wait_for_line("Ollama discovery works again", WAIT);
        server.wait_for_line("Ollama models changed", WAIT);
        let log = server.stderr();
        assert_eq!(
            log.matches("Ollama discovery failed").count(),
            1,
            "WARN once per run of failures:\n{log}"
        );

        let r = chat(&server, "ollama-gemma3-4b");
        assert_eq!(r.status, 200, "{}", r.text());
        let sent = ollama.requests_to("/v1/chat/completions");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].model(), Some("gemma3:4b"));
        assert_eq!(sent[0].header("authorization"), None);

        // Four discoveries, a context read and a chat later, the proxy has seen nothing.
        assert_eq!(
            proxy.connections().len(),
            0,
            "nothing went through the proxy"
        );
        // The control: a cloud call does go to it (our client tunnels with CONNECT, which the fake
        // refuses, so that chat fails; the connection is what counts).
        let _ = chat(&server, "gpt41");
        assert!(!proxy.connections().is_empty(), "the proxy is in use");
    }
}
