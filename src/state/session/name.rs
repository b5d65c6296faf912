//! Session ids and file names: which ids are allowed, and the file name of a session.
//!
//! A session's file is `<model>@<id>.json`. The id is `A-Z a-z 0-9 . _ -` only (checked by
//! [`validate_id`]), and the model's short code is written with every byte outside
//! `A-Z a-z 0-9 . _ -` (and a leading `.`) as `%XX`, so neither part can hold an `@`: the
//! name splits back at its one `@`, and two sessions never share a file. (The old
//! `<model>-<id>.json` did not: `kimi` + `thinking-x` and `kimi-thinking` + `x` met in
//! `kimi-thinking-x.json`.) [`legacy_file_name`] is that old name, still read.
//!
//! A session of a client key (with `keys.csv`) is `<key>~<model>@<id>.json`, the key's name
//! written as the model's is (so without `~` or `@`): each key has sessions of its own, and
//! no key reaches another's, or those made without a key.

use std::fmt::Write;

use crate::error::Error;

/// The longest session id.
const MAX_ID_LEN: usize = 128;

/// How much of a bad id an error message repeats.
const MAX_ID_ECHO: usize = 64;

const ALLOWED: &str = "letters A-Z a-z, digits 0-9, '.', '_' and '-'";

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

/// A short code as the first part of a file name: bytes outside `A-Za-z0-9._-`, a leading
/// `.` and `%` itself become `%XX`. Injective, never empty, never holds `@` or `/`.
fn encode_model(model: &str) -> String {
    let mut out = String::with_capacity(model.len() + 2);
    for (i, b) in model.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            // Writing into a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

/// The file name of a session: `<encoded model>@<id>.json`, or, for a client key's,
/// `<encoded key>~<encoded model>@<id>.json`. The id is sanitised too (the identity on ids
/// that passed [`validate_id`]), so a caller that forgot to validate still gets one plain
/// file name.
pub(super) fn file_name(owner: Option<&str>, model: &str, id: &str) -> String {
    match owner {
        None => format!("{}@{}.json", encode_model(model), sanitize(id)),
        Some(key) => format!(
            "{}~{}@{}.json",
            encode_model(key),
            encode_model(model),
            sanitize(id)
        ),
    }
}

/// Whether a file in the sessions directory is a session's (what the bound on their number
/// may remove): `…@….json`. Not the usage file (`usage.json`, or any `-usage-file` put
/// there), nor a file of the old `…-….json` naming, which could be any file with a `-` in
/// its name (those go when their session is next written, or stay).
pub(super) fn is_session_file(name: &str) -> bool {
    name.ends_with(".json") && !name.starts_with('.') && name.contains('@')
}

/// The name sigorest used before: `<model>-<id>.json`, both parts sanitised. Ambiguous
/// (see the module's text), so it is only read, and replaced by [`file_name`] on the
/// session's next write.
pub(super) fn legacy_file_name(model: &str, id: &str) -> String {
    format!("{}-{}.json", sanitize(model), sanitize(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
    fn hostile_models_and_ids_stay_inside_the_dir() {
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
                let p = Path::new("/srv/s").join(file_name(None, model, id));
                assert_eq!(p.parent(), Some(Path::new("/srv/s")), "{model:?} {id:?}");
                let file = p.file_name().unwrap().to_str().unwrap();
                assert!(!file.starts_with('.'), "{file}");
                assert!(file.ends_with(".json"));
                assert!(
                    file.chars()
                        .all(|c| is_name_char(c) || c == '@' || c == '%'),
                    "{file}"
                );
            }
        }
        // Distinct short codes keep distinct files.
        assert_ne!(file_name(None, "a", "x"), file_name(None, "b", "x"));
    }

    #[test]
    fn file_names_are_model_at_id() {
        assert_eq!(
            file_name(None, "claude-h", "chat-1"),
            "claude-h@chat-1.json"
        );
        assert_eq!(
            file_name(None, "ollama-gemma3:4b", "x"),
            "ollama-gemma3%3A4b@x.json"
        );
        assert_eq!(file_name(None, ".m", "x"), "%2Em@x.json");
        assert_eq!(file_name(None, "a%b", "x"), "a%25b@x.json");
        // A key's own: its name first, encoded as a model's; never one without a key.
        assert_eq!(
            file_name(Some("ana"), "gpt41", "notes"),
            "ana~gpt41@notes.json"
        );
        assert_eq!(
            file_name(Some("bo@home"), "gpt41", "x"),
            "bo%40home~gpt41@x.json"
        );
        assert_eq!(file_name(Some(".k"), "m", "x"), "%2Ek~m@x.json");
        assert_ne!(file_name(Some("a"), "m", "x"), file_name(None, "a~m", "x"));
        assert!(is_session_file("ana~gpt41@notes.json") && is_session_file("gpt41@x.json"));
        for other in [
            "usage.json",
            "my-usage.json",
            "kimi-x.json",
            ".x@y.json.tmp",
        ] {
            assert!(!is_session_file(other), "{other}");
        }
        assert_eq!(
            legacy_file_name("claude-h", "chat-1"),
            "claude-h-chat-1.json"
        );
    }

    #[test]
    fn names_that_met_in_one_file_now_have_their_own() {
        // The collisions of the old naming scheme.
        assert_eq!(
            legacy_file_name("kimi", "thinking-x"),
            legacy_file_name("kimi-thinking", "x")
        );
        assert_ne!(
            file_name(None, "kimi", "thinking-x"),
            file_name(None, "kimi-thinking", "x")
        );
        assert_ne!(
            file_name(None, "ollama-gemma3", "4b-x"),
            file_name(None, "ollama-gemma3-4b", "x")
        );
        // Sanitising mapped ':' and '_' alike; the encoding keeps them apart.
        assert_ne!(file_name(None, "m:1", "x"), file_name(None, "m_1", "x"));
        assert_ne!(file_name(None, "m@1", "x"), file_name(None, "m", "1@x"));
    }
}
