//! Atomic file writes: a crash or `kill -9` leaves the old file or the new one, never a torn
//! one.

use std::io;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (unique
/// name, so concurrent writers never share one), written, fsynced, renamed over `path`, then
/// the directory fsynced. `mode` sets the permission bits of the new file (e.g. `0o600` for
/// the TLS key); `None` gives 0o644. Creates missing parent directories. On error the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let _ = (path, bytes, mode);
    todo!()
}
