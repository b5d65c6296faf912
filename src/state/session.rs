//! Conversation history in files: `<dir>/<shortcode>-<session_id>.json`, holding
//! `{"history": [{"role": ..., "content": ...}, ...]}`, at most [`MAX_MESSAGES`] messages
//! (oldest dropped). The server and `sigoe -s` share these files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::util::lock;

/// How many messages a session keeps.
pub const MAX_MESSAGES: usize = 20;

/// The longest session id.
const MAX_ID_LEN: usize = 128;

/// How much of a bad id an error message repeats.
const MAX_ID_ECHO: usize = 64;

const ALLOWED: &str = "letters A-Z a-z, digits 0-9, '.', '_' and '-'";

/// One stored message. `content` is kept as JSON: a string or an array of content parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: serde_json::Value,
}

/// Checks a session id: 1–128 characters of `A-Z a-z 0-9 . _ -`, not starting with `.`.
/// Anything else is [`Error::InvalidRequest`] with `param: "session_id"` and a message that
/// says what is allowed (the id itself is not echoed beyond 64 characters).
pub fn validate_id(id: &str) -> Result<(), Error> {
    let bad = |why: String| {
        Error::invalid_param(
            "session_id",
            format!("invalid session_id {}: {why}", echo(id)),
        )
    };
    if id.is_empty() {
        return Err(Error::invalid_param(
            "session_id",
            format!("session_id is empty; use 1-{MAX_ID_LEN} characters: {ALLOWED}"),
        ));
    }
    let len = id.chars().count();
    if len > MAX_ID_LEN {
        return Err(bad(format!(
            "{len} characters, at most {MAX_ID_LEN} are allowed"
        )));
    }
    if let Some((i, c)) = id.chars().enumerate().find(|&(_, c)| !is_name_char(c)) {
        return Err(bad(format!(
            "character '{}' at position {} is not allowed; use only {ALLOWED}",
            c.escape_default(),
            i + 1
        )));
    }
    if id.starts_with('.') {
        return Err(bad(
            "it must not start with '.' (hidden files, '.' and '..')".to_string(),
        ));
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A client-supplied id as an error message may show it: quoted, at most [`MAX_ID_ECHO`]
/// characters, everything outside printable ASCII escaped, so a hostile id can neither
/// flood a log line nor forge one (newlines, terminal escapes, bidi overrides).
fn echo(id: &str) -> String {
    let head: String = id.chars().take(MAX_ID_ECHO).collect();
    let more = if head.len() < id.len() { "..." } else { "" };
    format!("\"{}\"{more}", head.escape_default())
}

/// `name` with every character outside `A-Za-z0-9._-` turned into `_`, and a leading `.`
/// too, so the result is one plain, visible file-name component (never `..`, never a
/// path). Identity on ids that passed [`validate_id`].
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if is_name_char(c) { c } else { '_' })
        .collect();
    if out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// The file's shape on disk. Unknown fields are tolerated: a newer version or a hand edit
/// should not make a session "corrupt".
#[derive(Deserialize)]
struct HistoryFile {
    history: Vec<Message>,
}

#[derive(Serialize)]
struct HistoryFileRef<'a> {
    history: &'a [Message],
}

/// The session files in one directory. Cheap to share (`Arc`); every method is safe to call
/// from many threads at once.
#[derive(Debug)]
pub struct SessionStore {
    dir: PathBuf,
    /// One lock per session file, held across its read-modify-write (file I/O only, never
    /// an upstream call). An entry lives while someone holds or waits for it, so the map
    /// stays as small as the number of sessions busy at this moment.
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

impl SessionStore {
    /// A store over `dir` (created on the first write, not here).
    pub fn new(dir: impl Into<PathBuf>) -> SessionStore {
        SessionStore {
            dir: dir.into(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    #[cfg(test)]
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of one session. `model` is a short code; characters outside
    /// `A-Za-z0-9._-` in it become `_`. `id` must have passed [`validate_id`].
    pub fn path(&self, model: &str, id: &str) -> PathBuf {
        // The id is sanitised too: identity for a valid id, and a caller that forgot
        // `validate_id` still cannot leave the directory.
        self.dir
            .join(format!("{}-{}.json", sanitize(model), sanitize(id)))
    }

    /// The stored history, oldest first; empty when the file does not exist. A file that
    /// does not parse is moved aside to `<name>.corrupt-<unix seconds>` with a WARN log line
    /// (nothing is lost) and the session starts empty.
    pub fn history(&self, model: &str, id: &str) -> Result<Vec<Message>, Error> {
        validate_id(id)?;
        let path = self.path(model, id);
        // Locked too: a read that finds a corrupt file moves it aside, and must not do so
        // after a concurrent append has already replaced it with a good one.
        self.with_lock(&path, || read_history(&path))
    }

    /// Appends messages (a user turn and the assistant's reply) and keeps the newest
    /// [`MAX_MESSAGES`], writing the file atomically. The read-modify-write runs under a
    /// per-session lock, so concurrent appends on one session never lose a turn.
    pub fn append(&self, model: &str, id: &str, messages: &[Message]) -> Result<(), Error> {
        validate_id(id)?;
        let path = self.path(model, id);
        self.with_lock(&path, || {
            let mut history = read_history(&path)?;
            history.extend_from_slice(messages);
            let excess = history.len().saturating_sub(MAX_MESSAGES);
            history.drain(..excess);
            let mut bytes = serde_json::to_vec_pretty(&HistoryFileRef { history: &history })
                .map_err(|e| Error::File {
                    path: path.clone(),
                    line: 0,
                    column: 0,
                    message: e.to_string(),
                })?;
            bytes.push(b'\n');
            crate::util::fs::write_atomic(&path, &bytes, None).map_err(|e| Error::io(&path, &e))
        })
    }

    /// Runs `f` holding the lock of the session file `path`.
    fn with_lock<R>(&self, path: &Path, f: impl FnOnce() -> R) -> R {
        let entry = lock(&self.locks)
            .entry(path.to_path_buf())
            .or_default()
            .clone();
        let result = {
            let _held = lock(&entry);
            f()
        };
        // Clones are made only under the map's lock, so with it held a count of 2 (the map
        // and us) means nobody else holds or waits for this entry: it can go. (A panic in
        // `f` skips this; the entry then just stays.)
        let mut map = lock(&self.locks);
        if Arc::strong_count(&entry) == 2 {
            map.remove(path);
        }
        result
    }
}

/// Reads a session file: missing → empty; unparsable → moved aside, empty.
fn read_history(path: &Path) -> Result<Vec<Message>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, &e)),
    };
    match serde_json::from_slice::<HistoryFile>(&bytes) {
        Ok(file) => Ok(file.history),
        Err(err) => {
            let aside = move_aside(path)?;
            log::warn!(
                "session file {} does not parse ({err}); moved it to {} and started the session afresh",
                path.display(),
                aside.display()
            );
            Ok(Vec::new())
        }
    }
}

/// Moves a corrupt file aside (see [`crate::util::fs::move_aside`]). Failing to move it is
/// an error, since the next write would otherwise destroy it.
fn move_aside(path: &Path) -> Result<PathBuf, Error> {
    crate::util::fs::move_aside(path).map_err(|e| Error::io(path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::fs::testdir::TestDir;
    use serde_json::json;

    fn msg(role: &str, content: impl Into<serde_json::Value>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    fn turn(n: usize) -> [Message; 2] {
        [
            msg("user", format!("question {n}")),
            msg("assistant", format!("answer {n}")),
        ]
    }

    /// The error's message, checking it is the 400 about `session_id`.
    fn refusal(id: &str) -> String {
        match validate_id(id) {
            Err(Error::InvalidRequest { message, param }) => {
                assert_eq!(param.as_deref(), Some("session_id"), "{id:?}");
                message
            }
            other => panic!("{id:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn good_ids_pass() {
        for id in ["a", "x.y_z-1", "A-Z.09", "a..b", "trailing."] {
            assert_eq!(validate_id(id), Ok(()), "{id:?}");
        }
        assert_eq!(validate_id(&"a".repeat(128)), Ok(()));
    }

    #[test]
    fn hostile_ids_are_refused() {
        let long = "b".repeat(129);
        let hostile = [
            "../etc/passwd",
            "a/b",
            "a\\b",
            "..",
            ".",
            "...",
            ".hidden",
            "",
            long.as_str(),
            "a\0b",
            "caf\u{e9}",
            "a b",
            "%2e%2e",
            "line\nbreak",
            "tab\there",
            "rtl\u{202e}txt",
            "\u{1b}[31mred",
        ];
        for id in hostile {
            let m = refusal(id);
            // Never a raw control or non-ASCII character: the message lands in logs.
            assert!(
                m.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
                "{id:?} -> {m:?}"
            );
        }
    }

    #[test]
    fn refusals_say_what_is_wrong_and_what_is_allowed() {
        assert!(refusal("").contains("empty"));
        let m = refusal(&"b".repeat(129));
        assert!(
            m.contains("129 characters") && m.contains("at most 128"),
            "{m}"
        );
        let m = refusal("../etc/passwd");
        assert!(m.contains("character '/' at position 3"), "{m}");
        assert!(m.contains("digits 0-9"), "{m}");
        let m = refusal(".hidden");
        assert!(m.contains("must not start with '.'"), "{m}");
        let m = refusal("a\0b");
        assert!(m.contains(r"\u{0}"), "{m}");
        let m = refusal("line\nbreak");
        assert!(m.contains(r#""line\nbreak""#), "{m}");
        assert!(refusal("caf\u{e9}").contains(r"\u{e9}"));
    }

    #[test]
    fn long_bad_ids_are_echoed_only_in_part() {
        let id = format!("{}/{}", "x".repeat(100), "y".repeat(100));
        let m = refusal(&id);
        assert!(m.contains(&format!("\"{}\"...", "x".repeat(64))), "{m}");
        assert!(!m.contains(&"x".repeat(65)), "{m}");
        assert!(!m.contains('y'), "{m}");
        let m = refusal(&"z".repeat(500));
        assert!(!m.contains(&"z".repeat(65)), "{m}");
    }

    #[test]
    fn path_is_model_dash_id_json() {
        let s = SessionStore::new("/var/sessions");
        assert_eq!(
            s.path("claude-h", "chat-1"),
            Path::new("/var/sessions/claude-h-chat-1.json")
        );
        assert_eq!(
            s.path("ollama-gemma3:4b", "x"),
            Path::new("/var/sessions/ollama-gemma3_4b-x.json")
        );
        assert_eq!(s.dir(), Path::new("/var/sessions"));
    }

    #[test]
    fn hostile_models_and_ids_stay_inside_the_dir() {
        let s = SessionStore::new("/srv/s");
        let names = [
            "../../etc/passwd",
            "..",
            ".",
            "",
            ".hidden",
            "a/b",
            "a\\b",
            "/abs",
            "a\0b",
            "\u{e9}\n",
        ];
        for model in names {
            for id in names.iter().copied().chain(["ok"]) {
                let p = s.path(model, id);
                assert_eq!(p.parent(), Some(Path::new("/srv/s")), "{model:?} {id:?}");
                let file = p.file_name().unwrap().to_str().unwrap();
                assert!(!file.starts_with('.'), "{file}");
                assert!(file.ends_with(".json"));
                assert!(file.chars().all(is_name_char), "{file}");
            }
        }
        // Distinct short codes keep distinct files.
        assert_ne!(s.path("a", "x"), s.path("b", "x"));
    }

    #[test]
    fn missing_session_is_empty() {
        let d = TestDir::new("session-missing");
        let s = SessionStore::new(d.path().join("not-yet"));
        assert_eq!(s.history("gpt41", "nope").unwrap(), Vec::new());
        assert!(
            !d.path().join("not-yet").exists(),
            "reading creates nothing"
        );
    }

    #[test]
    fn append_then_read_round_trips() {
        let d = TestDir::new("session-roundtrip");
        let s = SessionStore::new(d.path().join("sessions"));
        s.append("gpt41", "s1", &turn(1)).unwrap();
        let parts = json!([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:,"}}]);
        s.append(
            "gpt41",
            "s1",
            &[msg("user", parts.clone()), msg("assistant", "ok")],
        )
        .unwrap();
        let h = s.history("gpt41", "s1").unwrap();
        let mut want = turn(1).to_vec();
        want.extend([msg("user", parts), msg("assistant", "ok")]);
        assert_eq!(h, want);
        // The documented file shape.
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.path("gpt41", "s1")).unwrap()).unwrap();
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
        std::fs::write(s.path("kimi", "x"), text).unwrap();
        let h = s.history("kimi", "x").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0], msg("user", "hi"));
        assert_eq!(h[1].content[0]["text"], "hello");
    }

    #[test]
    fn keeps_the_newest_twenty() {
        let d = TestDir::new("session-trim");
        let s = SessionStore::new(d.path());
        for n in 0..15 {
            s.append("gpt41", "t", &turn(n)).unwrap();
        }
        let h = s.history("gpt41", "t").unwrap();
        assert_eq!(h.len(), MAX_MESSAGES);
        // 30 messages written, the oldest 10 (turns 0-4) dropped.
        assert_eq!(h[0], msg("user", "question 5"));
        assert_eq!(h[19], msg("assistant", "answer 14"));
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_kept() {
        let d = TestDir::new("session-corrupt");
        let s = SessionStore::new(d.path());
        let p = s.path("gpt41", "c");
        let garbage = b"{\"history\": [{\"role\": \"user\", \"con";
        std::fs::write(&p, garbage).unwrap();
        assert_eq!(s.history("gpt41", "c").unwrap(), Vec::new());
        let names = d.names();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("gpt41-c.json.corrupt-"), "{names:?}");
        assert_eq!(std::fs::read(d.path().join(&names[0])).unwrap(), garbage);

        // Corrupt again, most likely within the same second: the first copy is not overwritten.
        std::fs::write(&p, b"not json").unwrap();
        s.append("gpt41", "c", &turn(1)).unwrap();
        assert_eq!(s.history("gpt41", "c").unwrap(), turn(1));
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
            std::fs::write(s.path("m", &id), text).unwrap();
            assert_eq!(s.history("m", &id).unwrap(), Vec::new(), "{text:?}");
            assert!(!s.path("m", &id).exists());
        }
    }

    #[test]
    fn invalid_ids_are_refused_by_history_and_append() {
        let d = TestDir::new("session-badid");
        let s = SessionStore::new(d.path());
        assert!(matches!(
            s.history("m", "../x"),
            Err(Error::InvalidRequest { .. })
        ));
        assert!(matches!(
            s.append("m", ".x", &turn(0)),
            Err(Error::InvalidRequest { .. })
        ));
        assert!(d.names().is_empty());
    }

    #[test]
    fn models_have_separate_files() {
        let d = TestDir::new("session-models");
        let s = SessionStore::new(d.path());
        s.append("gpt41", "same", &turn(1)).unwrap();
        s.append("kimi", "same", &turn(2)).unwrap();
        assert_eq!(s.history("gpt41", "same").unwrap(), turn(1));
        assert_eq!(s.history("kimi", "same").unwrap(), turn(2));
        assert_eq!(d.names(), ["gpt41-same.json", "kimi-same.json"]);
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
                    s.append("gpt41", "busy", &turn(n)).unwrap();
                    // Readers meanwhile never see a torn or moved-aside file.
                    s.history("gpt41", "busy").unwrap()
                })
            })
            .collect();
        for t in threads {
            assert!(!t.join().unwrap().is_empty());
        }
        let h = s.history("gpt41", "busy").unwrap();
        assert_eq!(h.len(), 16);
        for n in 0..8 {
            let [q, a] = turn(n);
            let at = h.iter().position(|m| *m == q).unwrap();
            assert_eq!(h[at + 1], a, "turn {n} kept together");
        }
        assert_eq!(d.names(), ["gpt41-busy.json"]);
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
                        s.append("m", &id, &turn(n * 10 + k)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for i in 0..4 {
            // 4 threads x 3 turns x 2 messages = 24, trimmed to 20.
            let h = s.history("m", &format!("s{i}")).unwrap();
            assert_eq!(h.len(), MAX_MESSAGES);
            assert_eq!(h[0].role, "user", "trimming keeps whole turns here");
        }
        assert!(lock(&s.locks).is_empty());
    }
}
