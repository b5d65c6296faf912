//! Error bodies never show the server's paths or the operating system's error text: those
//! go to the log, the client gets a message it can act on.

use serde_json::json;

use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::FakeUpstream;

/// The message of an error body, checked for what must not be in it.
fn assert_no_internals(message: &str, dir: &std::path::Path) {
    assert!(
        !message.contains(&*dir.to_string_lossy()),
        "a server path in {message:?}"
    );
    assert!(!message.contains("os error"), "an OS error in {message:?}");
}

#[test]
fn a_storage_failure_answers_without_the_path_or_the_os_error() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    // The sessions "directory" is a file: reading a session fails with ENOTDIR.
    std::fs::write(gw.dir.join("sessions"), b"not a directory").unwrap();
    let r = gw.chat("gpt41", "hi", json!({"session_id": "s1"}));
    let message = r.assert_error(500, "storage_error");
    assert_no_internals(&message, gw.dir.path());
    assert_eq!(fake.request_count(), 0, "nothing went upstream");
}

#[test]
fn an_unreachable_provider_is_named_by_kind_not_by_os_error() {
    // A port nobody listens on: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let gw = Gateway::start(Options::default().upstream(&format!("http://127.0.0.1:{port}/v1")));
    let r = gw.chat("gpt41", "hi", json!({"retries": 1}));
    let message = r.assert_error(502, "upstream_error");
    assert!(message.contains("connection refused"), "{message}");
    assert_no_internals(&message, gw.dir.path());
}

#[test]
fn a_model_that_is_not_enabled_is_explained_without_the_whitelist_path() {
    let gw = Gateway::start(Options::default().models("gpt41"));
    let r = gw.chat("kimi", "hi", json!({}));
    let message = r.assert_error(404, "model_not_found");
    assert!(message.contains("models.csv"), "{message}");
    assert_no_internals(&message, gw.dir.path());
}
