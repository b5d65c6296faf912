//! A session file on disk: read with a size cap (a file that does not parse, or is far over
//! the cap, is moved aside), the cross-process lock around a read-modify-write, the
//! directory (mode 0700) and its pruning to the newest [`MAX_SESSIONS`] sessions.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{MAX_SESSION_BYTES, MAX_SESSIONS, Message};
use crate::error::Error;

/// A file larger than this is not read (it is moved aside): far over what sigorest writes,
/// so it is not one of its session files, or it predates the cap.
const MAX_READ: u64 = 4 * MAX_SESSION_BYTES as u64;
/// How long an append waits for another process (`sigoe -s`) to release a session.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How often the wait looks again.
const LOCK_POLL: Duration = Duration::from_millis(5);

/// The file's shape on disk. Unknown fields are tolerated: a newer version or a hand edit
/// should not make a session "corrupt".
#[derive(Deserialize)]
struct HistoryFile {
    history: Vec<Message>,
}

/// What reading a session file found.
pub(super) enum Stored {
    Missing,
    History(Vec<Message>),
    /// It does not parse, or is far too large: to be moved aside (under the lock).
    Unusable(String),
}

/// Reads a session file, reading at most [`MAX_READ`] bytes of it.
pub(super) fn read(path: &Path) -> Result<Stored, Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Stored::Missing),
        Err(e) => return Err(Error::io(path, &e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_READ + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, &e))?;
    if bytes.len() as u64 > MAX_READ {
        return Ok(Stored::Unusable(format!(
            "larger than {} MiB",
            MAX_READ >> 20
        )));
    }
    Ok(match serde_json::from_slice::<HistoryFile>(&bytes) {
        Ok(file) => Stored::History(file.history),
        Err(e) => Stored::Unusable(e.to_string()),
    })
}

/// Moves a file that could not be used aside, with a WARN line naming both names.
pub(super) fn set_aside(path: &Path, why: &str) -> Result<(), Error> {
    let aside = move_aside(path)?;
    log::warn!(
        "session file {} not used ({why}); moved it to {} and started the session afresh",
        path.display(),
        aside.display()
    );
    Ok(())
}

/// Renames a corrupt file to `<name>.corrupt-<unix seconds>` (with `-2`, `-3`… when that
/// exists: a rename would silently replace an earlier corrupt file). Failing to move it is
/// an error, since the next write would otherwise destroy it.
fn move_aside(path: &Path) -> Result<PathBuf, Error> {
    crate::util::fs::move_aside(path).map_err(|e| Error::io(path, &e))
}

/// Creates the sessions directory with mode 0700 when it is missing (an existing one keeps
/// its mode: the administrator's choice).
pub(super) fn ensure_dir(dir: &Path) -> Result<(), Error> {
    crate::util::fs::create_private_dir(dir).map_err(|e| Error::io(dir, &e))
}

/// The lock file of a session file: `.<name>.lock` beside it. The session file itself is
/// replaced by a rename on every write, so it cannot carry the lock.
pub(super) fn lock_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(OsString::from).unwrap_or_default();
    let mut lock = OsString::from(".");
    lock.push(name);
    lock.push(".lock");
    path.with_file_name(lock)
}

/// An advisory lock (`flock`) on a session's lock file, shared with `sigoe -s` and any other
/// sigorest process on the same directory; released when dropped.
pub(super) struct FileLock(File);

impl FileLock {
    /// Waits up to [`LOCK_WAIT`] for the lock: a process that holds it for longer is stuck,
    /// and a worker must not wait on it for ever.
    pub(super) fn acquire(path: &Path) -> Result<FileLock, Error> {
        let lock = lock_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock)
            .map_err(|e| Error::io(&lock, &e))?;
        // Made by root (`sigoe -s` in a service's directory), it must stay the service's.
        crate::util::fs::give_to_dir_owner(&file, crate::util::fs::parent_dir(&lock))
            .map_err(|e| Error::io(&lock, &e))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(FileLock(file)),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    thread::sleep(LOCK_POLL)
                }
                Err(TryLockError::WouldBlock) => {
                    let busy = io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "locked by another process for over {} s",
                            LOCK_WAIT.as_secs()
                        ),
                    );
                    return Err(Error::io(&lock, &busy));
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(&lock, &e)),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Drops the oldest messages until the file stays under [`MAX_SESSION_BYTES`]. The sizes
/// are taken per message once (a session may hold images), with a margin for the file's
/// indentation; the caller checks the written size.
pub(super) fn trim_to_bytes(history: &mut Vec<Message>) {
    const MARGIN: usize = 64;
    let sizes: Vec<usize> = history
        .iter()
        .map(|m| serde_json::to_vec_pretty(m).map_or(0, |b| b.len()) + MARGIN)
        .collect();
    let mut total: usize = sizes.iter().sum::<usize>() + MARGIN;
    let mut drop = 0;
    while total > MAX_SESSION_BYTES && drop < sizes.len() {
        total -= sizes[drop];
        drop += 1;
    }
    history.drain(..drop);
}

/// Keeps the directory at [`MAX_SESSIONS`] session files: after a new session was created,
/// removes the least recently written ones (and their lock files). Other sessions are not
/// locked for this: the oldest are by definition not in use, and a session removed while a
/// turn is written to it simply starts again with that turn.
pub(super) fn prune(dir: &Path) {
    prune_to(dir, MAX_SESSIONS);
}

pub(super) fn prune_to(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| super::name::is_session_file(&e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (meta.modified().unwrap_or(UNIX_EPOCH), e.path()))
        })
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    let excess = files.len() - keep;
    for (_, path) in files.into_iter().take(excess) {
        if fs::remove_file(&path).is_ok() {
            let _ = fs::remove_file(lock_path(&path));
            log::info!(file = path.display().to_string(); "oldest session dropped (too many sessions)");
        }
    }
}
