//! What the gateway knows and keeps, with no sockets and no upstream calls: the model
//! catalog and the whitelist applied to it, the client keys, the memory block, and the session
//! files.

use std::path::Path;

use crate::error::Error;

pub mod catalog;
pub mod keys;
pub mod listed;
pub mod memory;
pub mod session;

/// Writes `value` to `path` atomically, as pretty JSON with a trailing newline (the memory
/// block, session files), with this mode when given.
pub(crate) fn write_json(
    path: &Path,
    value: &impl serde::Serialize,
    mode: Option<u32>,
) -> Result<(), Error> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::File {
        path: path.to_path_buf(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    crate::util::fs::write_atomic(path, &bytes, mode).map_err(|e| Error::io(path, &e))
}
