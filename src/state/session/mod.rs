//! Conversation history in files: `<dir>/<model>@<session_id>.json`, or
//! `<dir>/<key>~<model>@<session_id>.json` for a client key's (see [`name`] for the
//! encoding, which keeps two sessions from ever sharing a file), holding
//! `{"history": [{"role": ..., "content": ...}, ...]}`. The server and `sigoe -s` share
//! these files.
//!
//! Bounds: at most [`MAX_MESSAGES`] messages and [`MAX_SESSION_BYTES`] a session (oldest
//! messages dropped), at most [`MAX_SESSIONS`] session files (the least recently written
//! dropped). Files are written atomically with mode 0600, in a directory created with mode
//! 0700. A read-modify-write holds an in-process lock and an advisory `flock` on a lock file
//! beside the session, so concurrent writers — threads of the server, other processes such
//! as `sigoe -s` — never lose a turn. Files of the old `<model>-<id>.json` naming are still
//! read, and replaced by the new name on the session's next write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::util::lock;
use disk::{FileLock, Stored};
use name::{file_name, legacy_file_name};

mod disk;
mod name;

pub use name::validate_id;

/// How many messages a session keeps.
pub const MAX_MESSAGES: usize = 20;
/// How large a session file may grow; the oldest messages are dropped to stay below. A turn
/// larger than this on its own is not kept (WARN).
pub const MAX_SESSION_BYTES: usize = 2 * 1024 * 1024;
/// How many session files the directory keeps; creating one more drops the least recently
/// written.
pub const MAX_SESSIONS: usize = 1000;

/// One stored message. `content` is kept as JSON: a string or an array of content parts.
/// An assistant turn that called tools keeps its calls (`tool_calls`, in the OpenAI shape)
/// and a tool result the call it answers (`tool_call_id`); files without them (older ones)
/// read as before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message with only a role and content.
    pub fn new(role: &str, content: serde_json::Value) -> Message {
        Message {
            role: role.to_string(),
            content,
            ..Message::default()
        }
    }

    /// The ids of an assistant turn's tool calls, in order (empty without calls).
    pub fn call_ids(&self) -> Vec<&str> {
        call_ids(self.tool_calls.as_ref())
    }
}

/// The `id`s of a `tool_calls` list (OpenAI shape), in order; calls without one are left out.
pub fn call_ids(tool_calls: Option<&serde_json::Value>) -> Vec<&str> {
    tool_calls
        .and_then(serde_json::Value::as_array)
        .map_or_else(Vec::new, |calls| {
            calls.iter().filter_map(|c| c["id"].as_str()).collect()
        })
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

    /// The file of one session. `owner` is the client key's name (with `keys.csv`), `model`
    /// a short code; `id` must have passed [`validate_id`].
    pub fn path(&self, owner: Option<&str>, model: &str, id: &str) -> PathBuf {
        self.dir.join(file_name(owner, model, id))
    }

    /// The stored history, oldest first; empty when the file does not exist. A file that
    /// does not parse (or is far over the size cap) is moved aside to
    /// `<name>.corrupt-<unix seconds>` with a WARN log line (nothing is lost) and the
    /// session starts empty. Reading creates nothing.
    pub fn history(
        &self,
        owner: Option<&str>,
        model: &str,
        id: &str,
    ) -> Result<Vec<Message>, Error> {
        validate_id(id)?;
        let path = self.path(owner, model, id);
        self.with_lock(&path, || match disk::read(&path)? {
            Stored::History(history) => Ok(history),
            // (The old naming had no keys' sessions.)
            Stored::Missing if owner.is_some() => Ok(Vec::new()),
            Stored::Missing => self.legacy_history(model, id),
            Stored::Unusable(_) => {
                // Another process may be replacing it: look again holding its lock, and
                // move aside only what is still unusable then.
                let _held = FileLock::acquire(&path)?;
                match disk::read(&path)? {
                    Stored::History(history) => Ok(history),
                    Stored::Missing => Ok(Vec::new()),
                    Stored::Unusable(why) => disk::set_aside(&path, &why).map(|()| Vec::new()),
                }
            }
        })
    }

    /// A session's history under the old file name, when there is one that parses (read
    /// only: an unusable old file is left alone).
    fn legacy_history(&self, model: &str, id: &str) -> Result<Vec<Message>, Error> {
        match disk::read(&self.dir.join(legacy_file_name(model, id)))? {
            Stored::History(history) => Ok(history),
            Stored::Missing | Stored::Unusable(_) => Ok(Vec::new()),
        }
    }

    /// Appends messages (a user turn and the assistant's reply) and keeps the newest
    /// [`MAX_MESSAGES`] within [`MAX_SESSION_BYTES`], writing the file atomically. The
    /// read-modify-write runs under the session's locks (this process's and the file lock),
    /// so concurrent appends never lose a turn.
    pub fn append(
        &self,
        owner: Option<&str>,
        model: &str,
        id: &str,
        messages: &[Message],
    ) -> Result<(), Error> {
        validate_id(id)?;
        let path = self.path(owner, model, id);
        self.with_lock(&path, || {
            disk::ensure_dir(&self.dir)?;
            let _held = FileLock::acquire(&path)?;
            // (The old naming had no keys' sessions: a key never takes over a shared one.)
            let legacy = owner
                .is_none()
                .then(|| self.dir.join(legacy_file_name(model, id)));
            let (mut history, created, migrated) = match disk::read(&path)? {
                Stored::History(history) => (history, false, false),
                Stored::Unusable(why) => {
                    disk::set_aside(&path, &why)?;
                    (Vec::new(), true, false)
                }
                Stored::Missing => match legacy.as_deref().map(disk::read).transpose()? {
                    Some(Stored::History(history)) => (history, true, true),
                    _ => (Vec::new(), true, false),
                },
            };
            history.extend_from_slice(messages);
            let full = history.len();
            let excess = history.len().saturating_sub(MAX_MESSAGES);
            history.drain(..excess);
            disk::trim_to_bytes(&mut history);
            if history.len() < full {
                // Trimmed: the history starts at a user message, not with the rest of a
                // turn (an answer, a tool result) whose question is gone.
                let first_user = history.iter().position(|m| m.role == "user");
                history.drain(..first_user.unwrap_or(0));
            }
            if history.len() < messages.len().min(MAX_MESSAGES) {
                log::warn!(model = model, session = id, limit = MAX_SESSION_BYTES; "turn larger than a session may hold; not kept");
                return Ok(());
            }
            self.write(&path, &history)?;
            if let Some(legacy) = legacy.filter(|_| migrated) {
                let _ = std::fs::remove_file(legacy);
            }
            if created {
                disk::prune(&self.dir);
            }
            Ok(())
        })
    }

    fn write(&self, path: &Path, history: &[Message]) -> Result<(), Error> {
        super::write_json(path, &HistoryFileRef { history }, Some(0o600))
    }

    /// Runs `f` holding this process's lock of the session file `path`.
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

#[cfg(test)]
mod tests;
