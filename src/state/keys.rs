//! Client keys: `keys.csv`, who may use the gateway, which models, how often.
//!
//! One key a line: `name, sha256:<hex>, models, rpm, concurrency`. The name identifies the
//! key in logs and usage (never the key itself); the second field is the SHA-256 of the key,
//! so the file never holds a key that works; `models` is a `|`-separated list of short codes
//! (a code ending in `*` is a prefix: `ollama-*`) or `*` for every model; `rpm` (requests a
//! minute) and `concurrency` (requests in flight) are whole numbers, empty for no limit, and
//! may be left out with their commas. `#` starts a comment; blank lines are skipped.
//!
//! A line that does not parse is an [`Error::File`] naming file, line and column. Messages
//! never quote the name or hash fields: a key pasted into the wrong column must not end up
//! in a log line.

use std::path::Path;
use std::sync::Arc;

use crate::error::Error;
use crate::util::digest::{hex, sha256};
use crate::util::fs::{read_config, without_bom};

/// What a generated key starts with, so that people recognise one.
pub const KEY_PREFIX: &str = "sk-sigo-";
/// The highest `rpm` or `concurrency` a line may set (an `rpm` window keeps one instant per
/// request of the last minute).
pub const MAX_LIMIT: u32 = 10_000;
/// The longest key name.
const MAX_NAME: usize = 64;
/// The largest `keys.csv` read: some 40,000 keys of 100 bytes, far beyond any real list; a
/// larger file is refused as one that does not parse (not read whole into memory).
pub const MAX_FILE: u64 = 4 << 20;

/// One client key, as `keys.csv` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Shown in logs and usage; never the key.
    pub name: String,
    hash: [u8; 32],
    pub models: Models,
    /// Requests a minute; `None`: no limit.
    pub rpm: Option<u32>,
    /// Requests in flight; `None`: no limit.
    pub concurrency: Option<u32>,
}

/// The models a key may use.
#[derive(Debug, Clone, PartialEq)]
pub enum Models {
    /// `*`: every model the gateway offers.
    All,
    /// Short codes in lower case; one ending in `*` is a prefix (stored without the `*`).
    Only(Vec<Code>),
}

/// One entry of a key's model list.
#[derive(Debug, Clone, PartialEq)]
pub struct Code {
    /// Lower case, without a trailing `*`.
    pub text: String,
    /// Whether it was written with a trailing `*`.
    pub prefix: bool,
}

impl Models {
    /// Whether a model with this short code is allowed (any case).
    pub fn allows(&self, short: &str) -> bool {
        match self {
            Models::All => true,
            Models::Only(codes) => codes.iter().any(|c| c.matches(short)),
        }
    }
}

impl Code {
    /// Whether this entry names the model with this short code (any case).
    pub fn matches(&self, short: &str) -> bool {
        let short = short.to_lowercase();
        if self.prefix {
            short.starts_with(&self.text)
        } else {
            short == self.text
        }
    }
}

/// Whether a `keys.csv` that cannot be read because it is not there is simply absent (keys
/// off), or stands for a file that should be there: a symbolic link whose target is missing,
/// or a file in a directory that is missing. `Err` says which.
fn missing_on_purpose(path: &Path) -> Result<(), String> {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_symlink()
    {
        let target = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".to_string());
        return Err(format!(
            "a symbolic link to {target}, which is missing: client keys stay required \
             (restore the file, or remove the link to turn keys off)"
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "its directory {} is missing: client keys stay required (restore it, or point \
             -keys elsewhere)",
            dir.display()
        ));
    }
    Ok(())
}

/// Every key of `keys.csv`, in file order.
#[derive(Debug, Default)]
pub struct Keys {
    keys: Vec<Arc<Key>>,
}

impl Keys {
    /// Reads `keys.csv`. `Ok(None)` when the file does not exist: keys are not required.
    /// Not so when it is a symbolic link to a missing file, or its directory is missing (an
    /// unmounted volume, a moved file, a typo): someone set keys up there, and turning them
    /// off would open every model to every client — an error instead (a reload keeps the
    /// keys in use, a start is refused). A path that is not a regular file, or a file over
    /// [`MAX_FILE`], is an error too (see [`read_config`]).
    pub fn load(path: &Path) -> Result<Option<Keys>, Error> {
        let bytes = match read_config(path, MAX_FILE) {
            Ok(bytes) => without_bom(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match missing_on_purpose(path) {
                    Ok(()) => Ok(None),
                    Err(message) => Err(Error::File {
                        path: path.to_path_buf(),
                        line: 0,
                        column: 0,
                        message,
                    }),
                };
            }
            Err(e) => return Err(Error::io(path, &e)),
        };
        let text = String::from_utf8(bytes).map_err(|e| Error::File {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!(
                "not UTF-8 (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        Keys::parse(&text, path).map(Some)
    }

    /// Parses the text of `keys.csv`; `path` is for the messages.
    pub fn parse(text: &str, path: &Path) -> Result<Keys, Error> {
        let mut keys: Vec<(usize, Arc<Key>)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("");
            if content.trim().is_empty() {
                continue;
            }
            let at = |column: usize, message: String| Error::File {
                path: path.to_path_buf(),
                line,
                column,
                message,
            };
            let key = parse_line(content).map_err(|(column, m)| at(column, m))?;
            for (other_line, other) in &keys {
                if other.name.eq_ignore_ascii_case(&key.name) {
                    return Err(at(
                        1,
                        format!("this name is already used on line {other_line}"),
                    ));
                }
                if other.hash == key.hash {
                    return Err(at(
                        field_column(content, 1),
                        format!("the same key as on line {other_line}"),
                    ));
                }
            }
            keys.push((line, Arc::new(key)));
        }
        Ok(Keys {
            keys: keys.into_iter().map(|(_, k)| k).collect(),
        })
    }

    /// The key whose hash is the SHA-256 of `presented`. Every entry is compared, each in
    /// constant time, so the time taken says nothing of how close a guess came.
    pub fn find(&self, presented: &str) -> Option<Arc<Key>> {
        let hash = sha256(presented.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if same_hash(&key.hash, &hash) && found.is_none() {
                found = Some(key.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Key>> {
        self.keys.iter()
    }

    /// Whether a key of this name is in the set.
    pub fn has_name(&self, name: &str) -> bool {
        self.keys.iter().any(|k| k.name == name)
    }
}

/// One non-empty line (comment removed) → a key, or the 1-based column and the reason.
fn parse_line(content: &str) -> Result<Key, (usize, String)> {
    let fields: Vec<&str> = content.split(',').map(str::trim).collect();
    if !(3..=5).contains(&fields.len()) {
        return Err((
            1,
            format!(
                "expected 'name, sha256:<hex>, models, rpm, concurrency' (rpm and concurrency may be empty), found {} fields",
                fields.len()
            ),
        ));
    }
    let col = |n: usize| field_column(content, n);
    check_name(fields[0]).map_err(|m| (col(0), m))?;
    let hash = parse_hash(fields[1]).ok_or_else(|| {
        (
            col(1),
            "the second field must be 'sha256:' and 64 hex digits, the SHA-256 of the key \
             (sigoe -newkey NAME prints the line); the key itself never goes into this file"
                .to_string(),
        )
    })?;
    let models = parse_models(fields[2]).map_err(|m| (col(2), m))?;
    let limit = |n: usize, what: &str| -> Result<Option<u32>, (usize, String)> {
        parse_limit(fields.get(n).copied().unwrap_or("")).map_err(|()| {
            (
                col(n),
                format!(
                    "{what} must be a whole number from 1 to {MAX_LIMIT}, or empty for no limit"
                ),
            )
        })
    };
    Ok(Key {
        name: fields[0].to_string(),
        hash,
        models,
        rpm: limit(3, "rpm (requests a minute)")?,
        concurrency: limit(4, "concurrency (requests in flight)")?,
    })
}

/// The 1-based column (in characters) where field `n` starts, its white space skipped.
fn field_column(content: &str, n: usize) -> usize {
    let mut start = 0;
    for (i, field) in content.split(',').enumerate() {
        if i == n {
            let skipped = field.len() - field.trim_start().len();
            return content[..start + skipped].chars().count() + 1;
        }
        start += field.len() + 1;
    }
    1
}

/// A key name: 1–64 of `A-Z a-z 0-9 . _ - @`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a key name must be 1-{MAX_NAME} of A-Z a-z 0-9 . _ - @"
        ))
    }
}

fn parse_hash(field: &str) -> Option<[u8; 32]> {
    let hex = field
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("sha256:"))
        .and(field.get(7..))?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

fn parse_models(field: &str) -> Result<Models, String> {
    let codes: Vec<&str> = field.split('|').map(str::trim).collect();
    if codes.iter().any(|c| c.is_empty()) {
        return Err(
            "the models field lists short codes separated by '|', or '*' for every model"
                .to_string(),
        );
    }
    if codes.contains(&"*") {
        return if codes.len() == 1 {
            Ok(Models::All)
        } else {
            Err("'*' means every model: give it alone".to_string())
        };
    }
    let mut out = Vec::with_capacity(codes.len());
    for code in codes {
        let (text, prefix) = match code.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (code, false),
        };
        if text.contains('*') || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "'{}' is not a short code ('*' may only end one, as in ollama-*)",
                code.escape_default()
            ));
        }
        out.push(Code {
            text: text.to_lowercase(),
            prefix,
        });
    }
    Ok(Models::Only(out))
}

fn parse_limit(field: &str) -> Result<Option<u32>, ()> {
    if field.is_empty() {
        return Ok(None);
    }
    match field.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(Some(n)),
        _ => Err(()),
    }
}

/// Equality of two hashes in constant time: every byte is looked at, whatever differs.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A fresh key: [`KEY_PREFIX`] and 32 random bytes from the system's generator, in hex.
pub fn generate() -> Result<String, Error> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Internal {
            message: "the system's random number generator failed".to_string(),
        })?;
    Ok(format!("{KEY_PREFIX}{}", hex(&bytes)))
}

/// The `keys.csv` line for a key: every model, no limits (to be edited).
pub fn line_for(name: &str, key: &str) -> String {
    format!("{name}, sha256:{}, *, ,", hex(&sha256(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Keys, Error> {
        Keys::parse(text, Path::new("keys.csv"))
    }

    fn err(text: &str) -> (usize, usize, String) {
        match parse(text).unwrap_err() {
            Error::File {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("{other:?}"),
        }
    }

    fn hash_of(key: &str) -> String {
        format!("sha256:{}", hex(&sha256(key.as_bytes())))
    }

    #[test]
    fn a_file_with_comments_blank_lines_and_short_lines() {
        let text = format!(
            "# who may use the gateway\n\n\
             alice, {}, *, 60, 2\n\
             bob,{},gpt41|kimi|ollama-*,,  # a comment\n\
             \tcarol , {} , CLAUDE-H \n",
            hash_of("ka"),
            hash_of("kb"),
            hash_of("kc").to_uppercase().replace("SHA256", "sha256"),
        );
        let keys = parse(&text).unwrap();
        assert_eq!(keys.len(), 3);
        let alice = keys.find("ka").unwrap();
        assert_eq!(
            (alice.name.as_str(), alice.rpm, alice.concurrency),
            ("alice", Some(60), Some(2))
        );
        assert_eq!(alice.models, Models::All);
        let bob = keys.find("kb").unwrap();
        assert_eq!((bob.rpm, bob.concurrency), (None, None));
        assert!(bob.models.allows("GPT41") && bob.models.allows("kimi"));
        assert!(bob.models.allows("ollama-qwen3") && !bob.models.allows("claude-h"));
        let carol = keys.find("kc").unwrap();
        assert_eq!(carol.name, "carol");
        assert!(carol.models.allows("claude-h"));
        assert!(keys.find("kd").is_none());
        assert!(keys.find("").is_none());
        assert!(keys.has_name("bob") && !keys.has_name("Bob"));
    }

    #[test]
    fn an_empty_file_is_an_empty_set() {
        assert!(parse("# nobody yet\n\n").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_name_line_and_column() {
        let good = format!("a, {}, *", hash_of("k"));
        let cases = [
            ("a, b".to_string(), 1, 1, "expected 'name"),
            (
                format!("a, {}, *, 1, 2, 3", hash_of("k")),
                1,
                1,
                "found 6 fields",
            ),
            (format!("bad name, {}, *", hash_of("k")), 1, 1, "key name"),
            (format!(", {}, *", hash_of("k")), 1, 1, "key name"),
            ("a, sk-sigo-0123, *".to_string(), 1, 4, "sha256:"),
            ("a,sha256:abc, *".to_string(), 1, 3, "64 hex"),
            (format!("a, {}, ", hash_of("k")), 1, 77, "models field"),
            (
                format!("a, {}, gpt41||kimi", hash_of("k")),
                1,
                77,
                "models field",
            ),
            (format!("a, {}, *|gpt41", hash_of("k")), 1, 77, "alone"),
            (
                format!("a, {}, gp*t", hash_of("k")),
                1,
                77,
                "not a short code",
            ),
            (format!("a, {}, *, 0", hash_of("k")), 1, 80, "rpm"),
            (format!("a, {}, *, ten", hash_of("k")), 1, 80, "rpm"),
            (format!("a, {}, *, 10001", hash_of("k")), 1, 80, "rpm"),
            (
                format!("a, {}, *, , -1", hash_of("k")),
                1,
                82,
                "concurrency",
            ),
            (
                format!("{good}\nA, {}, *", hash_of("other")),
                2,
                1,
                "line 1",
            ),
            (
                format!("{good}\nb, {}, *", hash_of("k")),
                2,
                4,
                "same key as on line 1",
            ),
        ];
        for (text, line, column, needle) in cases {
            let (l, c, m) = err(&text);
            assert_eq!((l, c), (line, column), "{text}: {m}");
            assert!(m.contains(needle), "{text}: {m}");
        }
    }

    #[test]
    fn messages_never_quote_the_name_or_hash_fields() {
        let secret = "sk-sigo-plain-key-pasted-here";
        for text in [
            format!("alice, {secret}, *"),
            format!("{secret} x, {}, *", hash_of("k")),
            format!("alice, sha256:{secret}, *"),
        ] {
            let (_, _, m) = err(&text);
            assert!(!m.contains(secret), "{m}");
            let shown = Keys::parse(&text, Path::new("k.csv"))
                .unwrap_err()
                .to_string();
            assert!(!shown.contains("plain-key"), "{shown}");
        }
    }

    #[test]
    fn file_errors_and_a_missing_file() {
        let dir = crate::util::fs::testdir::TestDir::new("keys-load");
        assert!(Keys::load(&dir.path().join("none.csv")).unwrap().is_none());
        let path = dir.path().join("keys.csv");
        std::fs::write(&path, b"a, \xff, *\n").unwrap();
        assert!(
            Keys::load(&path)
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
        std::fs::write(&path, line_for("ann", "k1")).unwrap();
        let keys = Keys::load(&path).unwrap().unwrap();
        assert_eq!(keys.find("k1").unwrap().name, "ann");
    }

    #[cfg(unix)]
    #[test]
    fn a_missing_file_that_stands_for_keys_is_an_error_not_keys_off() {
        let dir = crate::util::fs::testdir::TestDir::new("keys-gone");
        // A link to a file that is gone (an unmounted volume): not "no keys".
        let link = dir.path().join("keys.csv");
        std::os::unix::fs::symlink(dir.path().join("volume/keys.csv"), &link).unwrap();
        let e = Keys::load(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("missing"), "{e}");
        // A file in a directory that is not there.
        let e = Keys::load(&dir.path().join("nowhere/keys.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("directory"), "{e}");
        // The link's target back: keys on.
        std::fs::create_dir(dir.path().join("volume")).unwrap();
        std::fs::write(dir.path().join("volume/keys.csv"), line_for("ann", "k1")).unwrap();
        assert!(Keys::load(&link).unwrap().is_some());
    }

    #[test]
    fn generated_keys_are_fresh_and_their_line_parses() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(
            a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64,
            "{a}"
        );
        let line = line_for("laptop-ana", &a);
        assert!(!line.contains(&a), "the line holds the hash, never the key");
        let keys = parse(&line).unwrap();
        let key = keys.find(&a).unwrap();
        assert_eq!(key.name, "laptop-ana");
        assert_eq!(
            (key.models.clone(), key.rpm, key.concurrency),
            (Models::All, None, None)
        );
        assert!(keys.find(&b).is_none());
    }

    #[test]
    fn hash_comparison() {
        let a = sha256(b"x");
        let mut b = a;
        assert!(same_hash(&a, &b));
        b[31] ^= 1;
        assert!(!same_hash(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!same_hash(&a, &b));
    }
}
