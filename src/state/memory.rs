//! The global memory block: `{"content": "...", "cache": true}`, put first into every request.

use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::util::fs::{read_config, without_bom};

/// The largest memory content, in bytes of UTF-8: it goes with every request, and 1 MiB
/// (some 250,000 tokens) is already more than any model's context. Only a mistake is that
/// large (a log pasted instead of a note); refused, it costs nothing, while taken, it would
/// fail or bill every request.
pub const MAX_CONTENT: usize = 1 << 20;

/// The largest `memory.json` read: [`MAX_CONTENT`] written as JSON may take up to six bytes
/// a byte (a control character is `\u0001`), plus the rest of the object; a larger file
/// cannot hold an acceptable block and is not read whole.
pub const MAX_FILE: u64 = 8 << 20;

/// The memory block. Its `Deserialize` is the strict form [`Memory::parse`] documents
/// (written by hand: serde's derive would also take `["text", true]`), so a
/// `PUT /api/memory` body and the file obey the same rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    /// Text sent as a `system` message first in every request; empty: nothing is sent.
    pub content: String,
    /// With a Claude model, mark the block for Anthropic prompt caching.
    pub cache: bool,
}

impl Default for Memory {
    /// The embedded default: empty content, `cache: true`.
    fn default() -> Self {
        Memory {
            content: String::new(),
            cache: true,
        }
    }
}

impl Memory {
    /// Parses a memory document. `content` is required (a string), `cache` optional (a bool,
    /// default true); unknown fields are an error. Errors name line and column (1-based)
    /// and, as `path`, the `origin` given. A content over [`MAX_CONTENT`] bytes is
    /// [`Error::MemoryTooLarge`].
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Memory, Error> {
        let memory = Memory::parse_any_size(bytes, origin)?;
        if memory.content.len() > MAX_CONTENT {
            return Err(Error::MemoryTooLarge {
                bytes: memory.content.len(),
                limit: MAX_CONTENT,
            });
        }
        Ok(memory)
    }

    fn parse_any_size(bytes: &[u8], origin: &Path) -> Result<Memory, Error> {
        // serde_json checks UTF-8 only inside strings and would call a bad byte elsewhere
        // "expected value"; checking first names the real problem and its place.
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let (line, column) = line_column(bytes, e.valid_up_to());
                return Err(file_error(
                    origin,
                    line,
                    column,
                    "invalid UTF-8".to_string(),
                ));
            }
        };
        if text.trim_ascii().is_empty() {
            return Err(file_error(
                origin,
                1,
                1,
                format!("it is empty; expected {EXAMPLE}"),
            ));
        }
        // Half an emoji (a lone surrogate escape, as JavaScript writes a string cut in the
        // middle of one) is read as U+FFFD, as in every other body the gateway reads.
        crate::chat::answer::lenient_json(text).map_err(|e| {
            // serde_json's Display appends " at line L column C"; we carry those as fields.
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
            // An error at the end of input is reported at column 0 of the last line; the
            // contract (and editors) count columns from 1.
            file_error(origin, e.line().max(1), e.column().max(1), message)
        })
    }

    /// Reads the file: `Ok(None)` when it does not exist (the embedded default applies),
    /// an [`Error::File`] naming file, line and column when it does not parse, and naming
    /// the file when it is not a regular file, is over [`MAX_FILE`] bytes or holds a
    /// content over [`MAX_CONTENT`] (as a file that does not parse: a start is refused, a
    /// reload keeps the block in use).
    pub fn load(path: &Path) -> Result<Option<Memory>, Error> {
        match read_config(path, MAX_FILE) {
            Ok(bytes) => match Memory::parse(&without_bom(bytes), path) {
                Err(e @ Error::MemoryTooLarge { .. }) => Err(Error::File {
                    path: path.to_path_buf(),
                    line: 0,
                    column: 0,
                    message: e.to_string(),
                }),
                other => other.map(Some),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, &e)),
        }
    }

    /// Writes the file atomically (pretty JSON, trailing newline).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        super::write_json(path, self, None)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Memory, D::Error> {
        d.deserialize_map(MemoryVisitor)
    }
}

struct MemoryVisitor;

impl<'de> Visitor<'de> for MemoryVisitor {
    type Value = Memory;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a JSON object like {EXAMPLE}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Memory, A::Error> {
        const FIELDS: &[&str] = &["content", "cache"];
        let mut content: Option<String> = None;
        let mut cache: Option<bool> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "content" if content.is_some() => {
                    return Err(de::Error::duplicate_field("content"));
                }
                "content" => content = Some(map.next_value()?),
                "cache" if cache.is_some() => return Err(de::Error::duplicate_field("cache")),
                "cache" => cache = Some(map.next_value()?),
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        Ok(Memory {
            content: content.ok_or_else(|| de::Error::missing_field("content"))?,
            cache: cache.unwrap_or(true),
        })
    }
}

/// What a memory file looks like, for error messages.
const EXAMPLE: &str = r#"{"content": "...", "cache": true}"#;

fn file_error(origin: &Path, line: usize, column: usize, message: String) -> Error {
    Error::File {
        path: origin.to_path_buf(),
        line,
        column,
        message,
    }
}

/// 1-based line and column (in bytes, as serde_json counts) of the byte at `offset`.
fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |nl| nl + 1);
    (line, before.len() - line_start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::fs::testdir::TestDir;

    fn parse(text: &str) -> Result<Memory, Error> {
        Memory::parse(text.as_bytes(), Path::new("memory.json"))
    }

    /// The error's (line, column, message), or a panic when it is another kind of error.
    fn where_(text: &[u8]) -> (usize, usize, String) {
        match Memory::parse(text, Path::new("memory.json")) {
            Err(Error::File {
                path,
                line,
                column,
                message,
            }) => {
                assert_eq!(path, Path::new("memory.json"));
                (line, column, message)
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_good_file() {
        let m = parse(r#"{"content": "Be brief.", "cache": false}"#).unwrap();
        assert_eq!(
            m,
            Memory {
                content: "Be brief.".into(),
                cache: false
            }
        );
    }

    #[test]
    fn half_an_emoji_is_read_as_the_replacement_character() {
        let m = parse(r#"{"content": "Be brief \ud83d"}"#).unwrap();
        assert_eq!(m.content, "Be brief \u{fffd}");
        let (_, _, msg) = where_(br#"{"content": "\ud83d", }"#);
        assert!(msg.contains("trailing comma"), "broken otherwise: {msg}");
    }

    #[test]
    fn cache_defaults_to_true() {
        let m = parse("{\"content\": \"x\"}\n").unwrap();
        assert!(m.cache);
        assert!(Memory::default().cache);
    }

    #[test]
    fn content_is_required() {
        let (l, _, msg) = where_(br#"{"cache": true}"#);
        assert_eq!(l, 1);
        assert!(msg.contains("missing field `content`"), "{msg}");
    }

    #[test]
    fn wrong_types_are_refused() {
        let (_, _, msg) = where_(br#"{"content": 5}"#);
        assert!(msg.contains("invalid type: integer `5`"), "{msg}");
        let (_, _, msg) = where_(br#"{"content": "x", "cache": "yes"}"#);
        assert!(msg.contains("expected a boolean"), "{msg}");
        for text in [&b"[]"[..], br#"["x", true]"#, b"null", br#""x""#] {
            let (_, _, msg) = where_(text);
            assert!(msg.contains("invalid type"), "{msg}");
            assert!(msg.contains("expected a JSON object like"), "{msg}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let (_, _, msg) = where_(br#"{"content": "x", "chache": true}"#);
        assert!(msg.contains("unknown field `chache`"), "{msg}");
    }

    #[test]
    fn duplicate_fields_are_refused() {
        let (_, _, msg) = where_(br#"{"content": "a", "content": "b"}"#);
        assert!(msg.contains("duplicate field `content`"), "{msg}");
    }

    #[test]
    fn serde_deserialize_is_as_strict_as_parse() {
        let ok: Memory = serde_json::from_str(r#"{"content": "x"}"#).unwrap();
        assert_eq!(
            ok,
            Memory {
                content: "x".into(),
                cache: true
            }
        );
        assert!(serde_json::from_str::<Memory>(r#"["x", true]"#).is_err());
        assert!(serde_json::from_str::<Memory>(r#"{"content": "x", "y": 1}"#).is_err());
        let escaped: Memory = serde_json::from_str(r#"{"cont\u0065nt": "x"}"#).unwrap();
        assert_eq!(escaped.content, "x");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let (l, c, msg) = where_(b"{\"content\": \"x\"}\n}");
        assert_eq!((l, c), (2, 1));
        assert!(msg.contains("trailing characters"), "{msg}");
    }

    #[test]
    fn empty_file_is_an_error_at_1_1() {
        for text in [&b""[..], b"  \n\t\n"] {
            let (l, c, msg) = where_(text);
            assert_eq!((l, c), (1, 1));
            assert!(msg.contains("empty"), "{msg}");
        }
    }

    #[test]
    fn errors_name_line_and_column_exactly() {
        // Line 3 is `  "cache": tru`: the bad token ends the input.
        let text = b"{\n  \"content\": \"hello\",\n  \"cache\": tru";
        let (l, c, msg) = where_(text);
        assert_eq!((l, c), (3, 14), "{msg}");
        // A missing comma: serde_json stops on the `"` that opens `cache`, column 3.
        let text = b"{\n  \"content\": \"hello\"\n  \"cache\": true\n}\n";
        let (l, c, msg) = where_(text);
        assert_eq!((l, c), (3, 3), "{msg}");
        assert!(msg.contains("expected `,` or `}`"), "{msg}");
        // Truncated after a newline: reported at the end, column 1 rather than 0.
        let (l, c, msg) = where_(b"{\n  \"content\": \"hello\",\n");
        assert_eq!((l, c), (3, 1), "{msg}");
        assert!(msg.contains("EOF"), "{msg}");
        // Display puts it together the way compilers do.
        let e = parse("{\n  \"content\": 5\n}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "memory.json:2:14: invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn invalid_utf8_names_the_bad_byte() {
        let (l, c, msg) = where_(b"{\n  \"content\": \"caf\xe9\"\n}");
        assert_eq!((l, c), (2, 18));
        assert!(msg.contains("UTF-8"), "{msg}");
        // Outside a string too, where serde_json would say something else.
        let (l, c, _) = where_(b"\xff");
        assert_eq!((l, c), (1, 1));
    }

    #[test]
    fn content_over_the_cap_is_refused() {
        let body = |n: usize| format!(r#"{{"content": "{}"}}"#, "a".repeat(n));
        assert_eq!(
            parse(&body(MAX_CONTENT)).unwrap().content.len(),
            MAX_CONTENT
        );
        assert_eq!(
            parse(&body(MAX_CONTENT + 1)),
            Err(Error::MemoryTooLarge {
                bytes: MAX_CONTENT + 1,
                limit: MAX_CONTENT
            })
        );
        // Bytes of UTF-8, as the block goes upstream: 'é' is two.
        let accents = format!(r#"{{"content": "{}"}}"#, "é".repeat(MAX_CONTENT / 2 + 1));
        assert!(matches!(
            parse(&accents),
            Err(Error::MemoryTooLarge { bytes, .. }) if bytes == MAX_CONTENT + 2
        ));
    }

    #[test]
    fn a_file_over_the_caps_is_an_error_naming_it() {
        let d = TestDir::new("memory-caps");
        let p = d.path().join("memory.json");
        // The largest content, written the longest way JSON allows: still read.
        let widest = Memory {
            content: "\u{1}".repeat(MAX_CONTENT),
            cache: true,
        };
        widest.save(&p).unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() > 6 * MAX_CONTENT as u64);
        assert_eq!(Memory::load(&p).unwrap(), Some(widest));
        // One byte more content: refused, naming the file.
        std::fs::write(
            &p,
            format!(r#"{{"content": "{}"}}"#, "a".repeat(MAX_CONTENT + 1)),
        )
        .unwrap();
        let e = Memory::load(&p).unwrap_err();
        assert!(
            matches!(&e, Error::File { path, line: 0, .. } if *path == p),
            "{e:?}"
        );
        assert!(e.to_string().contains("memory content too large"), "{e}");
        // A file larger than any acceptable one is not read whole.
        std::fs::write(&p, vec![b' '; MAX_FILE as usize + 1]).unwrap();
        let e = Memory::load(&p).unwrap_err();
        assert!(e.to_string().contains("too large ("), "{e}");
    }

    #[test]
    fn save_then_load_round_trips() {
        let d = TestDir::new("memory-roundtrip");
        let p = d.path().join("memory.json");
        let m = Memory {
            content: "Line one\n\"quoted\" \u{e9}".into(),
            cache: false,
        };
        m.save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.ends_with("}\n") && text.contains("\n  \"content\""),
            "{text}"
        );
        assert_eq!(Memory::load(&p).unwrap(), Some(m));
    }

    #[test]
    fn missing_file_is_none_and_unreadable_is_an_error() {
        let d = TestDir::new("memory-load");
        assert_eq!(Memory::load(&d.path().join("nope.json")).unwrap(), None);
        // A directory where the file should be: an I/O error, line 0.
        match Memory::load(d.path()) {
            Err(Error::File { line: 0, path, .. }) => assert_eq!(path, d.path()),
            other => panic!("{other:?}"),
        }
        let bad = d.path().join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        match Memory::load(&bad) {
            Err(Error::File { line: 1, path, .. }) => assert_eq!(path, bad),
            other => panic!("{other:?}"),
        }
    }
}
