//! Where the Ollama registry gets its facts: the [`Source`] trait, its HTTP implementation
//! (`GET /api/tags`, `POST /api/show`, each within [`DISCOVERY_TIMEOUT`]), and the pure
//! parsing of both answers.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::upstream::{Target, Upstream};

/// How long one discovery (and one `/api/show`) may take.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/api/tags` answer read.
const MAX_TAGS_BODY: u64 = 8 * 1024 * 1024;
/// Largest `/api/show` answer read (it carries the whole model file and license).
const MAX_SHOW_BODY: u64 = 4 * 1024 * 1024;
/// Longer names, or names with spaces or control characters, are not Ollama's: skipped.
const MAX_NAME_LEN: usize = 256;

/// One entry of `/api/tags`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub name: String,
    /// Changes when the model is pulled again (its context length is then read again).
    pub digest: String,
}

/// Whether `name` can be an Ollama model's name: not empty, at most 256 bytes, no blanks
/// or control characters (other names in `/api/tags` are skipped).
pub(super) fn is_usable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Parses `/api/tags`: `{"models": [{"name", "digest", …}]}`. `"models": null` is an empty
/// list (Go's nil slice); a body without a `models` list is an error. Entries without a
/// usable name are skipped; a name reported twice counts once.
pub fn parse_tags(body: &[u8]) -> Result<Vec<Tag>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON ({e})"))?;
    let entries = match v.get("models") {
        Some(Value::Array(a)) => a.as_slice(),
        Some(Value::Null) => &[],
        _ => return Err("answer has no 'models' list".to_string()),
    };
    let mut seen = HashSet::new();
    let mut tags = Vec::new();
    for entry in entries {
        let name = ["name", "model"]
            .iter()
            .find_map(|k| entry.get(*k).and_then(Value::as_str))
            .map(str::trim)
            .unwrap_or("");
        if !is_usable_name(name) || !seen.insert(name.to_string()) {
            continue;
        }
        let digest = entry.get("digest").and_then(Value::as_str).unwrap_or("");
        tags.push(Tag {
            name: name.to_string(),
            digest: digest.to_string(),
        });
    }
    Ok(tags)
}

/// The context lengths believed from Ollama, in tokens: the smallest real models have a few
/// hundred, the largest ten million. A value outside (0, a negative number, 1e30, 2^64-1
/// from a broken model file or a mad server) is not reported: shown as a fact, it would
/// also refuse every request as too long, or let any through.
pub const PLAUSIBLE_CONTEXT: std::ops::RangeInclusive<u64> = 1..=100_000_000;

/// The context length in an `/api/show` answer: `model_info["<arch>.context_length"]` where
/// `<arch>` is `general.architecture`, else the first key ending in `.context_length`. An
/// answer without one, or with only values outside [`PLAUSIBLE_CONTEXT`], gives 0 (known to
/// be unknown); one that is not a JSON object is an error.
pub fn parse_context_length(body: &[u8]) -> Result<u64, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON ({e})"))?;
    if !v.is_object() {
        return Err("answer is not a JSON object".to_string());
    }
    let Some(info) = v.get("model_info").and_then(Value::as_object) else {
        return Ok(0);
    };
    // An implausible value counts as no value, as one that is not a number does.
    let as_len = |v: &Value| {
        v.as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .filter(|n| PLAUSIBLE_CONTEXT.contains(n))
    };
    let by_arch = info
        .get("general.architecture")
        .and_then(Value::as_str)
        .and_then(|arch| info.get(&format!("{arch}.context_length")))
        .and_then(as_len);
    let any = || {
        info.iter()
            .filter(|(k, _)| k.ends_with(".context_length"))
            .find_map(|(_, v)| as_len(v))
    };
    Ok(by_arch.or_else(any).unwrap_or(0))
}

/// Why a call to Ollama failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Nothing answers there: Ollama has stopped (its models drop out).
    Down(String),
    /// It answered too slowly, with an error status, or with something else than expected
    /// (the last good list stays).
    Bad(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Down(m) | Failure::Bad(m) => m,
        }
    }

    /// Sorts a failed call: nothing to connect to is [`Failure::Down`], anything else
    /// (too slow, an error status, a connection closed unanswered, a garbled or oversized
    /// answer) is [`Failure::Bad`].
    fn from_call(e: crate::upstream::retry::Failure, what: &str) -> Failure {
        use crate::upstream::retry::Failure as Call;
        match e {
            // A connection closed or reset before the answer is something there answering
            // badly, not nobody there.
            Call::Connect(ref m) if e.nobody_there() => {
                Failure::Down(format!("{what}: cannot connect ({m})"))
            }
            Call::Connect(m) => Failure::Bad(format!("{what}: {m}")),
            Call::Timeout(_) => Failure::Bad(format!(
                "{what}: no complete answer within {} s",
                DISCOVERY_TIMEOUT.as_secs()
            )),
            Call::Status { status, body, .. } => {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                Failure::Bad(format!("{what}: HTTP {status} {text}"))
            }
            Call::BadAnswer(m) | Call::BadCompletion(m) => Failure::Bad(format!("{what}: {m}")),
            Call::Cancelled => Failure::Bad(format!("{what}: cancelled")),
        }
    }
}

/// Where the registry gets its facts: Ollama over HTTP, or a script in tests.
pub trait Source: Send + Sync + 'static {
    /// `GET /api/tags`.
    fn tags(&self) -> Result<Vec<Tag>, Failure>;
    /// `POST /api/show`: the model's context length (0: it does not say).
    fn context_length(&self, name: &str) -> Result<u64, Failure>;
}

/// Ollama over HTTP: never through a proxy, statuses as data, 2 s for each call, on our
/// own client (blocking calls, from the registry's background thread, a SIGHUP's thread or
/// a request's blocking job; a list read may run while the background thread reads a
/// context length).
pub(super) struct Http {
    tags: Target,
    show: Target,
    client: Upstream,
}

impl Http {
    pub(super) fn new(base: String) -> Http {
        Http {
            tags: Target::direct(format!("{base}/api/tags")),
            show: Target::direct(format!("{base}/api/show")),
            client: Upstream::new(),
        }
    }
}

impl Source for Http {
    fn tags(&self) -> Result<Vec<Tag>, Failure> {
        let what = "GET /api/tags";
        let body = self
            .client
            .fetch_blocking("GET", &self.tags, &[], MAX_TAGS_BODY, DISCOVERY_TIMEOUT)
            .map_err(|e| Failure::from_call(e, what))?;
        parse_tags(&body).map_err(|e| Failure::Bad(format!("{what}: {e}")))
    }

    fn context_length(&self, name: &str) -> Result<u64, Failure> {
        let what = "POST /api/show";
        let body = serde_json::json!({ "model": name }).to_string();
        let body = self
            .client
            .fetch_blocking(
                "POST",
                &self.show,
                body.as_bytes(),
                MAX_SHOW_BODY,
                DISCOVERY_TIMEOUT,
            )
            .map_err(|e| Failure::from_call(e, what))?;
        parse_context_length(&body).map_err(|e| Failure::Bad(format!("{what}: {e}")))
    }
}
