//! Session files through the server: two sessions never share a file, files are private,
//! and neither one session nor the number of sessions grows without bound.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

fn setup(models: &str) -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()).models(models));
    (fake, gw)
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Session files in the directory (lock files and set-aside files left out).
fn session_files(gw: &Gateway) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(gw.dir.join("sessions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[test]
fn two_sessions_whose_old_file_names_met_keep_their_own_history() {
    let (fake, gw) = setup("kimi,kimi-thinking");
    let r = gw.chat("kimi", "first secret", json!({"session_id": "thinking-x"}));
    assert_eq!(r.status, 200, "{}", r.text());
    // Before: kimi + thinking-x and kimi-thinking + x were both kimi-thinking-x.json.
    let r = gw.chat("kimi-thinking", "second", json!({"session_id": "x"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = fake.last_json().unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "second"}]),
        "another session's history leaked in"
    );
    assert_eq!(session_files(&gw).len(), 2, "{:?}", session_files(&gw));
}

#[test]
fn session_files_are_0600_in_a_0700_directory() {
    let (_fake, gw) = setup("gpt41");
    let r = gw.chat("gpt41", "private", json!({"session_id": "mine"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let dir = gw.dir.join("sessions");
    assert_eq!(mode(&dir), 0o700);
    let files = session_files(&gw);
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&dir.join(&files[0])), 0o600);
}

#[test]
fn a_session_file_stays_under_its_byte_cap() {
    let (fake, gw) = setup("gpt41");
    fake.set_default(Reply::chat("ok"));
    let big = "w ".repeat(300 * 1024);
    for n in 0..5 {
        let r = gw.chat("gpt41", &format!("{n} {big}"), json!({"session_id": "big"}));
        assert_eq!(r.status, 200);
    }
    let file = gw.dir.join("sessions").join(&session_files(&gw)[0]);
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(len <= 2 * 1024 * 1024, "{len} bytes");
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let last_user = &kept["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .nth(1)
        .unwrap()["content"];
    assert!(
        last_user.as_str().unwrap().starts_with("4 "),
        "the newest turn is kept"
    );
}

#[test]
fn the_number_of_sessions_is_capped_dropping_the_oldest() {
    let (_fake, gw) = setup("gpt41");
    let dir = gw.dir.join("sessions");
    std::fs::create_dir_all(&dir).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for n in 0..1000 {
        let p = dir.join(format!("gpt41@old{n:04}.json"));
        std::fs::write(&p, r#"{"history": []}"#).unwrap();
        let at = old + Duration::from_secs(n);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }
    let r = gw.chat("gpt41", "new", json!({"session_id": "fresh"}));
    assert_eq!(r.status, 200);
    let files = session_files(&gw);
    assert_eq!(files.len(), 1000);
    assert!(
        !files.contains(&"gpt41@old0000.json".to_string()),
        "the oldest went"
    );
    assert!(files.contains(&"gpt41@fresh.json".to_string()));
    assert!(files.contains(&"gpt41@old0001.json".to_string()));
}
