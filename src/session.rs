//! Conversation history in files: `<dir>/<shortcode>-<session_id>.json`, holding
//! `{"history": [{"role": ..., "content": ...}, ...]}`, at most [`MAX_MESSAGES`] messages
//! (oldest dropped). The server and `sigoe -s` share these files.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How many messages a session keeps.
pub const MAX_MESSAGES: usize = 20;

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
    let _ = id;
    todo!()
}

/// The session files in one directory. Cheap to share (`Arc`); every method is safe to call
/// from many threads at once.
#[derive(Debug)]
pub struct SessionStore {
    dir: PathBuf,
}

impl SessionStore {
    /// A store over `dir` (created on the first write, not here).
    pub fn new(dir: impl Into<PathBuf>) -> SessionStore {
        SessionStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of one session. `model` is a short code; characters outside
    /// `A-Za-z0-9._-` in it become `_`. `id` must have passed [`validate_id`].
    pub fn path(&self, model: &str, id: &str) -> PathBuf {
        let _ = (model, id);
        todo!()
    }

    /// The stored history, oldest first; empty when the file does not exist. A file that
    /// does not parse is moved aside to `<name>.corrupt-<unix seconds>` with a WARN log line
    /// (nothing is lost) and the session starts empty.
    pub fn history(&self, model: &str, id: &str) -> Result<Vec<Message>, Error> {
        let _ = (model, id);
        todo!()
    }

    /// Appends messages (a user turn and the assistant's reply) and keeps the newest
    /// [`MAX_MESSAGES`], writing the file atomically. The read-modify-write runs under a
    /// per-session lock, so concurrent appends on one session never lose a turn.
    pub fn append(&self, model: &str, id: &str, messages: &[Message]) -> Result<(), Error> {
        let _ = (model, id, messages);
        todo!()
    }
}
