//! The session store on real files: round trips, bounds, corrupt files, old names, modes,
//! and concurrent writers in this process and in others.

use super::*;
use crate::util::fs::testdir::TestDir;
use serde_json::json;

fn msg(role: &str, content: impl Into<serde_json::Value>) -> Message {
    Message::new(role, content.into())
}

/// The names in the directory without the hidden lock files.
fn visible(d: &TestDir) -> Vec<String> {
    d.names()
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

fn turn(n: usize) -> [Message; 2] {
    [
        msg("user", format!("question {n}")),
        msg("assistant", format!("answer {n}")),
    ]
}

#[test]
fn missing_session_is_empty() {
    let d = TestDir::new("session-missing");
    let s = SessionStore::new(d.path().join("not-yet"));
    assert_eq!(s.history(None, "gpt41", "nope").unwrap(), Vec::new());
    assert!(
        !d.path().join("not-yet").exists(),
        "reading creates nothing"
    );
}

#[test]
fn append_then_read_round_trips() {
    let d = TestDir::new("session-roundtrip");
    let s = SessionStore::new(d.path().join("sessions"));
    s.append(None, "gpt41", "s1", &turn(1)).unwrap();
    let parts = json!([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:,"}}]);
    s.append(
        None,
        "gpt41",
        "s1",
        &[msg("user", parts.clone()), msg("assistant", "ok")],
    )
    .unwrap();
    let h = s.history(None, "gpt41", "s1").unwrap();
    let mut want = turn(1).to_vec();
    want.extend([msg("user", parts), msg("assistant", "ok")]);
    assert_eq!(h, want);
    // The documented file shape.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path(None, "gpt41", "s1")).unwrap()).unwrap();
    assert_eq!(
        file["history"][0],
        json!({"role": "user", "content": "question 1"})
    );
}

#[test]
fn files_with_extra_fields_are_accepted() {
    let d = TestDir::new("session-extra");
    let s = SessionStore::new(d.path());
    let text = r#"{"version": 2, "history": [
        {"role": "user", "content": "hi", "name": "bob"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}
    ]}"#;
    std::fs::write(s.path(None, "kimi", "x"), text).unwrap();
    let h = s.history(None, "kimi", "x").unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0], msg("user", "hi"));
    assert_eq!(h[1].content[0]["text"], "hello");
}

#[test]
fn keeps_the_newest_twenty() {
    let d = TestDir::new("session-trim");
    let s = SessionStore::new(d.path());
    for n in 0..15 {
        s.append(None, "gpt41", "t", &turn(n)).unwrap();
    }
    let h = s.history(None, "gpt41", "t").unwrap();
    assert_eq!(h.len(), MAX_MESSAGES);
    // 30 messages written, the oldest 10 (turns 0-4) dropped.
    assert_eq!(h[0], msg("user", "question 5"));
    assert_eq!(h[19], msg("assistant", "answer 14"));
}

#[test]
fn trimming_starts_the_history_at_a_user_message() {
    let d = TestDir::new("session-trim-turns");
    let s = SessionStore::new(d.path());
    // A turn of one message (an answer to a tool result, no new user message) puts the
    // turns out of step with the count of 20.
    for n in 0..10 {
        if n == 5 {
            s.append(None, "gpt41", "t", &[msg("assistant", "alone")])
                .unwrap();
        }
        s.append(None, "gpt41", "t", &turn(n)).unwrap();
    }
    // 21 messages: the oldest, question 0, goes; its answer goes with it.
    let h = s.history(None, "gpt41", "t").unwrap();
    assert_eq!(
        h[0],
        msg("user", "question 1"),
        "not the answer of question 0"
    );
    assert_eq!(h.len(), 19);
    assert_eq!(h[18], msg("assistant", "answer 9"));
}

#[test]
fn corrupt_file_is_moved_aside_and_kept() {
    let d = TestDir::new("session-corrupt");
    let s = SessionStore::new(d.path());
    let p = s.path(None, "gpt41", "c");
    let garbage = b"{\"history\": [{\"role\": \"user\", \"con";
    std::fs::write(&p, garbage).unwrap();
    assert_eq!(s.history(None, "gpt41", "c").unwrap(), Vec::new());
    let names = visible(&d);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("gpt41@c.json.corrupt-"), "{names:?}");
    assert_eq!(std::fs::read(d.path().join(&names[0])).unwrap(), garbage);

    // Corrupt again, most likely within the same second: the first copy is not overwritten.
    std::fs::write(&p, b"not json").unwrap();
    s.append(None, "gpt41", "c", &turn(1)).unwrap();
    assert_eq!(s.history(None, "gpt41", "c").unwrap(), turn(1));
    let aside: Vec<_> = d
        .names()
        .into_iter()
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 2, "{aside:?}");
    let mut kept: Vec<Vec<u8>> = aside
        .iter()
        .map(|n| std::fs::read(d.path().join(n)).unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, [b"not json".to_vec(), garbage.to_vec()]);
}

#[test]
fn wrong_shapes_count_as_corrupt() {
    let d = TestDir::new("session-shapes");
    let s = SessionStore::new(d.path());
    for (i, text) in [
        "",
        "[]",
        r#"{"history": "x"}"#,
        r#"{"history": [{"role": "user"}]}"#,
        "\u{0}",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("s{i}");
        std::fs::write(s.path(None, "m", &id), text).unwrap();
        assert_eq!(s.history(None, "m", &id).unwrap(), Vec::new(), "{text:?}");
        assert!(!s.path(None, "m", &id).exists());
    }
}

#[test]
fn invalid_ids_are_refused_by_history_and_append() {
    let d = TestDir::new("session-badid");
    let s = SessionStore::new(d.path());
    assert!(matches!(
        s.history(None, "m", "../x"),
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(
        s.append(None, "m", ".x", &turn(0)),
        Err(Error::InvalidRequest { .. })
    ));
    assert!(visible(&d).is_empty());
}

#[test]
fn models_have_separate_files() {
    let d = TestDir::new("session-models");
    let s = SessionStore::new(d.path());
    s.append(None, "gpt41", "same", &turn(1)).unwrap();
    s.append(None, "kimi", "same", &turn(2)).unwrap();
    assert_eq!(s.history(None, "gpt41", "same").unwrap(), turn(1));
    assert_eq!(s.history(None, "kimi", "same").unwrap(), turn(2));
    assert_eq!(visible(&d), ["gpt41@same.json", "kimi@same.json"]);
}

#[test]
fn concurrent_appends_never_lose_a_turn() {
    let d = TestDir::new("session-concurrent");
    let s = Arc::new(SessionStore::new(d.path()));
    let start = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|n| {
            let (s, start) = (s.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                s.append(None, "gpt41", "busy", &turn(n)).unwrap();
                // Readers meanwhile never see a torn or moved-aside file.
                s.history(None, "gpt41", "busy").unwrap()
            })
        })
        .collect();
    for t in threads {
        assert!(!t.join().unwrap().is_empty());
    }
    let h = s.history(None, "gpt41", "busy").unwrap();
    assert_eq!(h.len(), 16);
    for n in 0..8 {
        let [q, a] = turn(n);
        let at = h.iter().position(|m| *m == q).unwrap();
        assert_eq!(h[at + 1], a, "turn {n} kept together");
    }
    assert_eq!(visible(&d), ["gpt41@busy.json"]);
    assert!(
        lock(&s.locks).is_empty(),
        "idle sessions hold no lock entry"
    );
}

#[test]
fn many_sessions_at_once_stay_separate() {
    let d = TestDir::new("session-many");
    let s = Arc::new(SessionStore::new(d.path()));
    let threads: Vec<_> = (0..16)
        .map(|n| {
            let s = s.clone();
            std::thread::spawn(move || {
                let id = format!("s{}", n % 4);
                for k in 0..3 {
                    s.append(None, "m", &id, &turn(n * 10 + k)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for i in 0..4 {
        // 4 threads x 3 turns x 2 messages = 24, trimmed to 20.
        let h = s.history(None, "m", &format!("s{i}")).unwrap();
        assert_eq!(h.len(), MAX_MESSAGES);
        assert_eq!(h[0].role, "user", "trimming keeps whole turns here");
    }
    assert!(lock(&s.locks).is_empty());
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn files_are_0600_in_a_0700_directory() {
    let d = TestDir::new("session-modes");
    let s = SessionStore::new(d.path().join("sessions"));
    s.append(None, "gpt41", "m", &turn(1)).unwrap();
    assert_eq!(mode_of(&s.path(None, "gpt41", "m")), 0o600);
    assert_eq!(mode_of(s.dir()), 0o700);
    assert_eq!(
        mode_of(&disk::lock_path(&s.path(None, "gpt41", "m"))),
        0o600
    );
}

#[test]
fn a_session_stays_under_its_byte_cap_dropping_the_oldest() {
    let d = TestDir::new("session-bytes");
    let s = SessionStore::new(d.path());
    let big = "x".repeat(MAX_SESSION_BYTES / 5);
    for n in 0..8 {
        let turn = [msg("user", format!("{n} {big}")), msg("assistant", "ok")];
        s.append(None, "m", "big", &turn).unwrap();
        let len = std::fs::metadata(s.path(None, "m", "big")).unwrap().len() as usize;
        assert!(len <= MAX_SESSION_BYTES, "{len} bytes after turn {n}");
    }
    let h = s.history(None, "m", "big").unwrap();
    assert!(h.len() < 16 && h.len() >= 2, "{}", h.len());
    assert_eq!(
        h[h.len() - 2].content,
        json!(format!("7 {big}")),
        "the newest turn is kept"
    );
}

#[test]
fn a_turn_larger_than_the_cap_is_not_kept_and_the_history_stays() {
    let d = TestDir::new("session-huge-turn");
    let s = SessionStore::new(d.path());
    s.append(None, "m", "h", &turn(1)).unwrap();
    let huge = [
        msg("user", "y".repeat(MAX_SESSION_BYTES + 1)),
        msg("assistant", "ok"),
    ];
    s.append(None, "m", "h", &huge).unwrap();
    assert_eq!(s.history(None, "m", "h").unwrap(), turn(1));
}

#[test]
fn a_file_far_over_the_cap_is_moved_aside_not_read() {
    let d = TestDir::new("session-too-large");
    let s = SessionStore::new(d.path());
    let p = s.path(None, "m", "t");
    let body = format!(
        "{{\"history\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
        "z".repeat(4 * MAX_SESSION_BYTES + 10)
    );
    std::fs::write(&p, &body).unwrap();
    assert_eq!(s.history(None, "m", "t").unwrap(), Vec::new());
    let names = visible(&d);
    assert!(
        names.len() == 1 && names[0].contains(".corrupt-"),
        "{names:?}"
    );
}

#[test]
fn old_file_names_are_read_and_moved_to_the_new_name_on_write() {
    let d = TestDir::new("session-legacy");
    let s = SessionStore::new(d.path());
    let old = d.path().join("gpt41-chat-1.json");
    std::fs::write(
        &old,
        r#"{"history": [{"role": "user", "content": "old q"}]}"#,
    )
    .unwrap();
    assert_eq!(
        s.history(None, "gpt41", "chat-1").unwrap(),
        [msg("user", "old q")]
    );
    assert!(old.exists(), "reading moves nothing");
    s.append(None, "gpt41", "chat-1", &turn(1)).unwrap();
    let h = s.history(None, "gpt41", "chat-1").unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h[0], msg("user", "old q"));
    assert_eq!(visible(&d), ["gpt41@chat-1.json"]);
}

#[test]
fn an_append_waits_for_another_process_holding_the_session() {
    let d = TestDir::new("session-flock");
    let s = Arc::new(SessionStore::new(d.path()));
    s.append(None, "gpt41", "shared", &turn(1)).unwrap();
    // Another open file description of the lock file stands for another process (sigoe -s).
    let other = std::fs::File::open(disk::lock_path(&s.path(None, "gpt41", "shared"))).unwrap();
    other.lock().unwrap();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || s.append(None, "gpt41", "shared", &turn(2)))
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!writer.is_finished(), "the append waits for the lock");
    // (Read beside the store: its own lock is held by the waiting writer.)
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path(None, "gpt41", "shared")).unwrap()).unwrap();
    assert_eq!(on_disk["history"].as_array().unwrap().len(), 2);
    other.unlock().unwrap();
    writer.join().unwrap().unwrap();
    let mut both = turn(1).to_vec();
    both.extend(turn(2));
    assert_eq!(s.history(None, "gpt41", "shared").unwrap(), both);
}

#[test]
fn pruning_drops_the_least_recently_written_sessions() {
    let d = TestDir::new("session-prune");
    let s = SessionStore::new(d.path());
    for n in 0..5 {
        s.append(None, "m", &format!("s{n}"), &turn(n)).unwrap();
        // Distinct modification times, oldest first.
        let at =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + n as u64);
        std::fs::File::options()
            .write(true)
            .open(s.path(None, "m", &format!("s{n}")))
            .unwrap()
            .set_modified(at)
            .unwrap();
    }
    // The usage totals live in the same directory, often untouched longest: never dropped.
    let usage = d.path().join("usage.json");
    std::fs::write(&usage, "{}").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&usage)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    disk::prune_to(d.path(), 3);
    assert_eq!(
        visible(&d),
        ["m@s2.json", "m@s3.json", "m@s4.json", "usage.json"]
    );
    let hidden = d.names().iter().filter(|n| n.ends_with(".lock")).count();
    assert_eq!(hidden, 3, "lock files go with their sessions");
}

/// With client keys each key has sessions of its own: the same id under another key, or
/// without one, is another conversation.
#[test]
fn each_key_has_sessions_of_its_own() {
    let d = TestDir::new("session-owners");
    let s = SessionStore::new(d.path());
    s.append(Some("ana"), "gpt41", "notes", &turn(1)).unwrap();
    s.append(None, "gpt41", "notes", &turn(2)).unwrap();
    assert_eq!(s.history(Some("ana"), "gpt41", "notes").unwrap(), turn(1));
    assert_eq!(s.history(None, "gpt41", "notes").unwrap(), turn(2));
    assert_eq!(s.history(Some("dave"), "gpt41", "notes").unwrap(), []);
    s.append(Some("dave"), "gpt41", "notes", &turn(3)).unwrap();
    assert_eq!(s.history(Some("ana"), "gpt41", "notes").unwrap(), turn(1));
    assert_eq!(
        visible(&d),
        [
            "ana~gpt41@notes.json",
            "dave~gpt41@notes.json",
            "gpt41@notes.json"
        ]
    );
    // A file of the old naming (shared by everyone then) is not a key's.
    std::fs::write(
        d.path().join("kimi-old.json"),
        serde_json::to_vec(&serde_json::json!({"history": turn(4)})).unwrap(),
    )
    .unwrap();
    assert_eq!(s.history(Some("ana"), "kimi", "old").unwrap(), []);
    s.append(Some("ana"), "kimi", "old", &turn(5)).unwrap();
    assert_eq!(s.history(Some("ana"), "kimi", "old").unwrap(), turn(5));
    assert_eq!(s.history(None, "kimi", "old").unwrap(), turn(4));
}

#[test]
fn root_leaves_a_sessions_files_to_the_owner_of_its_directory() {
    use std::os::unix::fs::MetadataExt;
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        eprintln!("skipped: only root may give a file away");
        return;
    }
    // The gateway's directory, its user's (a systemd DynamicUser); sigoe -s runs as root.
    let d = TestDir::new("session-owner");
    std::os::unix::fs::chown(d.path(), Some(65_534), Some(65_533)).unwrap();
    let s = SessionStore::new(d.path());
    s.append(None, "gpt41", "shared", &turn(1)).unwrap();
    let path = s.path(None, "gpt41", "shared");
    for file in [path.clone(), disk::lock_path(&path)] {
        let m = std::fs::metadata(&file).unwrap();
        assert_eq!((m.uid(), m.gid()), (65_534, 65_533), "{}", file.display());
    }
}
