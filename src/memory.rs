//! The global memory block: `{"content": "...", "cache": true}`, put first into every request.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The memory block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// and, as `path`, the `origin` given.
    pub fn parse(text: &[u8], origin: &Path) -> Result<Memory, Error> {
        let _ = (text, origin);
        todo!()
    }

    /// Reads the file: `Ok(None)` when it does not exist (the embedded default applies),
    /// an [`Error::File`] naming file, line and column when it does not parse.
    pub fn load(path: &Path) -> Result<Option<Memory>, Error> {
        let _ = path;
        todo!()
    }

    /// Writes the file atomically (pretty JSON, trailing newline).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let _ = path;
        todo!()
    }
}
