//! The small endpoints: models lists, health, memory, routing errors, files on disk.

use serde_json::{Value, json};

use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

#[test]
fn openai_models_list_is_the_whitelist_in_order() {
    let gw = Gateway::start(
        Options::default().models("# mine\nkimi, gpt41\nnot-a-model\nclaude-h # fast\n"),
    );
    let r = gw.get("/v1/models");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["kimi", "gpt41", "claude-h"]);
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert!(m["created"].as_u64().unwrap() > 1_700_000_000);
        assert!(m["owned_by"].is_string());
    }
    assert_eq!(
        gw.get("/models").json(),
        v,
        "the bare path answers the same"
    );
}

#[test]
fn one_model_by_any_of_its_names() {
    let gw = Gateway::start(Options::default().models("kimi, gpt41\n"));
    for name in ["gpt41", "GPT41", "gpt-4.1", "gpt%2D4.1"] {
        let r = gw.get(&format!("/v1/models/{name}"));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.json()["id"], "gpt41", "{name}");
        assert_eq!(r.json()["object"], "model");
    }
    assert_eq!(gw.get("/models/kimi").json()["owned_by"], "moonshot");
    // Not in the list (in the catalog, but not listed), or not a model at all: 404.
    for name in ["claude-h", "no-such"] {
        gw.get(&format!("/v1/models/{name}"))
            .assert_error(404, "model_not_found");
    }
    // Deeper paths are no route.
    assert_eq!(gw.get("/v1/models/gpt41/x").status, 404);
    assert_eq!(gw.post("/v1/models/gpt41", b"{}").status, 405);
}

#[test]
fn embedded_whitelist_without_a_file() {
    let gw = Gateway::start(Options::default());
    let ids: Vec<String> = gw.get("/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "claude-h",
            "gpt41",
            "gemini-p",
            "deepseek-r1",
            "kimi",
            "grok3m"
        ]
    );
}

#[test]
fn api_models_has_the_facts_and_key_state() {
    let gw = Gateway::start(
        Options::default()
            .models("gpt41,kimi")
            .var("MAMMOUTH_API_KEY", "k"),
    );
    let v = gw.get("/api/models").json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let gpt = &data[0];
    assert_eq!(gpt["short"], "gpt41");
    assert_eq!(gpt["id"], "gpt-4.1");
    assert_eq!(gpt["provider"], "mammouth");
    assert_eq!(gpt["context_tokens"], 128000);
    assert_eq!(gpt["max_output_tokens"], 8192);
    assert_eq!(gpt["input_price_per_million"], 2.0);
    assert_eq!(gpt["output_price_per_million"], 8.0);
    assert_eq!(gpt["temperature"], json!({"min": 0.0, "max": 2.0}));
    assert_eq!(gpt["key_set"], true);
    assert_eq!(data[1]["provider"], "moonshot");
    assert_eq!(data[1]["key_set"], false);
    assert_eq!(data[1]["key_env"], "MOONSHOT_API_KEY");
}

#[test]
fn health_reports_what_the_design_lists() {
    let gw = Gateway::start(
        Options::default()
            .var("MAMMOUTH_API_KEY", "k")
            .workers(7, 9),
    );
    let r = gw.get("/api/health");
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], sigorest::VERSION);
    assert!(h["uptime_s"].is_u64());
    assert_eq!(h["memory_set"], false);
    assert_eq!(h["workers"]["total"], 7);
    // Health is answered on the connection thread, not by a worker.
    assert_eq!(h["workers"]["busy"], 0, "{h}");
    assert_eq!(h["queue"]["capacity"], 9);
    assert!(h["queue"]["depth"].is_u64());
    // Five of the six default models are Mammouth's; kimi has no key.
    assert_eq!(h["available_models"], 5);
    assert_eq!(
        h["circuit_breakers"]["gpt41"],
        json!({"state": "closed", "consecutive_failures": 0, "retry_in_s": 0})
    );
    assert!(h["ollama"]["endpoint"].is_string());
    assert!(h["ollama"]["models_found"].is_u64());
    assert_eq!(h["providers"]["mammouth"]["key_set"], true);
    assert!(!r.text().contains("\"k\""), "a key value never appears");
}

#[test]
fn memory_get_put_persist_and_reach_the_upstream() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    assert_eq!(
        gw.get("/api/memory").json(),
        json!({"content": "", "cache": true})
    );
    assert!(
        !gw.dir.join("memory.json").exists(),
        "never written except by a PUT"
    );

    let r = gw.put_json(
        "/api/memory",
        &json!({"content": "Answer in French.", "cache": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"content": "Answer in French.", "cache": false})
    );
    assert_eq!(gw.get("/api/memory").json(), r.json());
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(gw.dir.join("memory.json")).unwrap()).unwrap();
    assert_eq!(on_disk, r.json());
    assert_eq!(gw.get("/api/health").json()["memory_set"], true);

    fake.push(Reply::chat("oui"));
    assert_eq!(gw.chat("claude-h", "hi", json!({})).status, 200);
    assert_eq!(
        fake.last_json().unwrap()["messages"][0],
        json!({"role": "system", "content": "Answer in French."}),
        "cache off: a plain string, even for Claude"
    );
}

#[test]
fn bad_memory_puts_are_400_and_change_nothing() {
    let gw = Gateway::start(Options::default().memory(r#"{"content": "keep me", "cache": true}"#));
    for body in [
        &b"{"[..],
        b"[]",
        br#"{"content": 5}"#,
        br#"{"cache": true}"#,
        br#"{"content": "x", "extra": 1}"#,
        b"\xff",
    ] {
        let r = crate::support::gateway::request(&gw.url("/api/memory"), "PUT", Some(body), &[]);
        r.assert_error(400, "invalid_request");
    }
    assert_eq!(gw.get("/api/memory").json()["content"], "keep me");
    let on_disk = std::fs::read_to_string(gw.dir.join("memory.json")).unwrap();
    assert!(on_disk.contains("keep me"));
}

#[test]
fn a_memory_put_over_1_mib_of_content_is_413_and_changes_nothing() {
    let gw = Gateway::start(Options::default().memory(r#"{"content": "keep me", "cache": true}"#));
    let before = std::fs::read(gw.dir.join("memory.json")).unwrap();
    let r = gw.put_json(
        "/api/memory",
        &json!({"content": "a".repeat((1 << 20) + 1)}),
    );
    let msg = r.assert_error(413, "memory_too_large");
    assert!(
        msg.contains("1048577 bytes") && msg.contains("the limit is 1 MiB"),
        "{msg}"
    );
    assert_eq!(r.json()["error"]["param"], "content");
    assert_eq!(gw.get("/api/memory").json()["content"], "keep me");
    assert_eq!(std::fs::read(gw.dir.join("memory.json")).unwrap(), before);
    // The cap itself is allowed, and read back by a reload.
    let r = gw.put_json("/api/memory", &json!({"content": "a".repeat(1 << 20)}));
    assert_eq!(r.status, 200, "{}", r.text());
    gw.running().reload();
    assert_eq!(
        gw.get("/api/memory").json()["content"]
            .as_str()
            .map(str::len),
        Some(1 << 20)
    );
}

#[test]
fn memory_put_only_from_admin_addresses() {
    let gw = Gateway::start(Options {
        admin_allow: "10.0.0.0/8".into(),
        ..Options::default()
    });
    let r = gw.put_json("/api/memory", &json!({"content": "x"}));
    let msg = r.assert_error(403, "admin_only");
    assert!(msg.contains("127.0.0.1"), "{msg}");
    assert_eq!(
        gw.get("/api/memory").status,
        200,
        "reading is for everyone allowed on the port"
    );
}

#[test]
fn routing_errors_have_the_error_shape() {
    let gw = Gateway::start(Options::default());
    gw.get("/v2/nothing").assert_error(404, "not_found");
    gw.get("/api/healthz").assert_error(404, "not_found");
    let r = gw.get("/v1/chat/completions");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = gw.post("/v1/models", b"{}");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = crate::support::gateway::request(&gw.url("/api/memory"), "DELETE", None, &[]);
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT"));
}

#[test]
fn a_memory_file_that_does_not_parse_stops_start_up_naming_line_and_column() {
    let opts = Options::default().memory("{\n  \"content\": \"x\",\n  \"cache\": maybe\n}\n");
    let err = Gateway::try_start(opts).err().expect("start-up refused");
    let msg = err.to_string();
    assert!(msg.contains("memory.json:3:"), "{msg}");
}

#[test]
fn every_call_to_a_provider_carries_a_request_id_of_its_own() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    let id = |r: &crate::support::gateway::Reply, name: &str| {
        let id = r
            .header(name)
            .unwrap_or_else(|| panic!("no {name}: {}", r.text()));
        assert!(id.starts_with("req_") && id.len() > 12, "{id}");
        id.to_string()
    };
    let ok = gw.chat("gpt41", "hi", json!({}));
    let streamed = gw.chat("gpt41", "hi", json!({"stream": true}));
    let failed = gw.chat("no-such-model", "hi", json!({}));
    let responses = gw.post_json("/v1/responses", &json!({"model": "gpt41", "input": "hi"}));
    assert_eq!(
        (ok.status, streamed.status, failed.status, responses.status),
        (200, 200, 404, 200)
    );
    let ids = [
        id(&ok, "x-request-id"),
        id(&streamed, "x-request-id"),
        id(&failed, "x-request-id"),
        id(&responses, "x-request-id"),
    ];
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    // Anthropic's clients get Anthropic's header, once.
    let messages = gw.send(
        "POST",
        "/v1/messages",
        Some(br#"{"model": "gpt41", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}"#),
        &[("anthropic-version", "2023-06-01")],
    );
    assert_eq!(messages.status, 200);
    id(&messages, "request-id");
    assert_eq!(messages.header("x-request-id"), None);
    // The lists and the admin endpoints are not calls.
    assert_eq!(gw.get("/v1/models").header("x-request-id"), None);
}
