//! Atomic file writes: a crash or `kill -9` leaves the old file or the new one, never a torn
//! one.
//!
//! The recipe is the classic one: write a temporary file in the *same* directory (a rename
//! is only atomic within one filesystem), fsync it so its data is on disk before its name
//! is, rename it over the target, then fsync the directory so the rename itself survives a
//! power cut.
//!
//! The new file is given the owner and group of the one it replaces (or, new, of its
//! directory) when the writer may: root running `sigoe -s` in the directory of a gateway
//! that runs as its own user (systemd `DynamicUser`) would otherwise leave it a session
//! file it cannot read.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Permission bits asked for a new file when the caller names none; the process's umask
/// (a systemd unit's `UMask=`) takes bits away, as for any file the process creates.
const DEFAULT_MODE: u32 = 0o666;

/// How much of the target's name goes into the temporary name: the suffix we add is about
/// 60 bytes, and most filesystems refuse names over 255 bytes.
const MAX_NAME_IN_TEMP: usize = 150;

/// Makes temporary names unique between threads of this process; the pid separates
/// processes (the server and `sigoe` share the session directory).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (unique
/// name, so concurrent writers never share one), written, fsynced, renamed over `path`, then
/// the directory fsynced. `mode` sets the permission bits of the new file exactly (e.g.
/// `0o600` for the TLS key and the sessions); `None` keeps those of the file it replaces
/// (a `chmod 600` of the user's stays), or, for a new file, creates it as any (0666 less
/// the umask). The file keeps the owner and group of the one it replaces, and a new file
/// gets its directory's, as far as the writer may ([`give_away`]). A `path` that is a
/// symbolic link is written through: the file it names is replaced, the link stays. Creates
/// missing parent directories. On error the temporary file is removed and `path` is
/// untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let linked = fs::symlink_metadata(path)
        .is_ok_and(|m| m.file_type().is_symlink())
        .then(|| link_target(path))
        .flatten();
    let path = linked.as_deref().unwrap_or(path);
    let replaced = fs::metadata(path).ok().filter(|m| m.is_file());
    let mode = mode.or_else(|| replaced.as_ref().map(|m| m.permissions().mode() & 0o7777));
    let replaced_owner = replaced.as_ref().map(|m| (m.uid(), m.gid()));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let dir = parent_dir(path);
    fs::create_dir_all(dir)?;

    let tmp = dir.join(temp_name(name.as_bytes()));
    let result = write_and_rename(&tmp, path, bytes, mode, replaced_owner);
    if result.is_err() {
        // After a successful rename the name is gone; before it, this is our own file.
        let _ = fs::remove_file(&tmp);
    }
    result?;

    // Some filesystems (and some platforms' directory handles) refuse fsync on a directory;
    // the file itself is already safe, so that refusal is not worth failing the write.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The file a symbolic link names, followed to its end (a link to a file not there yet
/// included: its name, relative to the link's directory when the link is relative).
fn link_target(link: &Path) -> Option<PathBuf> {
    if let Ok(real) = fs::canonicalize(link) {
        return Some(real);
    }
    let mut at = link.to_path_buf();
    // A chain of links to a missing file: a few steps, never a loop.
    for _ in 0..16 {
        match fs::read_link(&at) {
            Ok(next) => at = parent_dir(&at).join(next),
            Err(_) => return Some(at),
        }
    }
    None
}

/// `O_NONBLOCK`: std has no name for it and the crate does not depend on libc. The values
/// are the kernels' (libc's `O_NONBLOCK` for each target); elsewhere 0, and only the check
/// before the open guards against a FIFO.
#[cfg(any(target_os = "linux", target_os = "android"))]
const O_NONBLOCK: i32 = if cfg!(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6"
)) {
    0o200
} else if cfg!(any(target_arch = "sparc", target_arch = "sparc64")) {
    0x4000
} else {
    0o4000
};
#[cfg(any(
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
))]
const O_NONBLOCK: i32 = 0x4;
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
)))]
const O_NONBLOCK: i32 = 0;

/// Reads a file the administrator edits (`models.csv`, `keys.csv`, `memory.json`): at most
/// `limit` bytes, and only from a regular file (a symbolic link is followed). A FIFO, a
/// device, a socket or a directory is refused without being read, so a start or a SIGHUP
/// never waits for a writer that does not come (`open` on a FIFO waits for one); a larger
/// file is refused without reading it all. Both refusals are [`io::Error`]s whose message
/// says what is wrong (`InvalidInput`, `FileTooLarge`); a missing file is `NotFound`, as
/// from [`fs::read`].
pub fn read_config(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    // Looked at before it is opened: opening a device may do something of its own.
    regular_within(&fs::metadata(path)?, limit)?;
    read_opened(path, limit)
}

/// The second half of [`read_config`]. The name may have been given to a FIFO since it was
/// looked at: opened without waiting for a writer, and what was opened looked at again
/// (reads of a regular file ignore the flag).
fn read_opened(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)?;
    let len = regular_within(&file.metadata()?, limit)?;
    // The file may grow while it is read: one byte past the limit says so.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(None, limit));
    }
    Ok(bytes)
}

/// The file's length when it is a regular file of at most `limit` bytes.
fn regular_within(meta: &fs::Metadata, limit: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else {
        Some("neither a file nor a directory")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file: it is {what}; give the path of a file"),
        ));
    }
    if meta.len() > limit {
        return Err(too_large(Some(meta.len()), limit));
    }
    Ok(meta.len())
}

fn too_large(len: Option<u64>, limit: u64) -> io::Error {
    let size = len.map_or(String::new(), |n| format!(" ({n} bytes)"));
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!(
            "too large{size}: such a file may have at most {}",
            human_size(limit)
        ),
    )
}

/// `4 MiB`, `512 KiB`, `100 bytes`: a limit as people say it.
pub fn human_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The bytes of a text file without the UTF-8 byte order mark that Windows editors
/// (Notepad) put first, which would otherwise be read as part of the first name or value.
pub fn without_bom(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    bytes
}

/// The directory `path` is in: `.` for a bare name (whose `Path::parent` is `Some("")`,
/// which no syscall accepts).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing parents with mode 0700 (for files that are nobody else's
/// business: sessions, usage); an existing directory keeps its mode, the administrator's
/// choice. A directory made here belongs to the owner of the one it is in, as far as the
/// writer may (see [`owner_for`]): root running `sigoe -s` first in a service's directory
/// would otherwise make `.sessions` a 0700 directory the service cannot write in.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let existed = dir.is_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if existed {
        return Ok(());
    }
    let made = fs::metadata(dir)?;
    let parent = fs::metadata(parent_dir(dir))
        .map(|m| (m.uid(), m.gid()))
        .ok();
    match owner_for(None, parent, (made.uid(), made.gid())) {
        Some((uid, gid)) => give_away(std::os::unix::fs::chown(dir, Some(uid), Some(gid))),
        None => Ok(()),
    }
}

/// Renames a file that does not parse to `<name>.corrupt-<unix seconds>` (with `-2`, `-3`…
/// when that exists: a rename would silently replace an earlier corrupt file), so that
/// nothing is lost and the next write does not destroy it. Returns the new path.
pub fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut base = OsString::from(path.as_os_str());
    base.push(format!(".corrupt-{secs}"));
    let mut aside = PathBuf::from(&base);
    let mut n = 1;
    while aside.symlink_metadata().is_ok() {
        n += 1;
        let mut name = base.clone();
        name.push(format!("-{n}"));
        aside = PathBuf::from(name);
    }
    fs::rename(path, &aside)?;
    Ok(aside)
}

/// Removes the temporary files [`write_atomic`] left next to `path` when a process died
/// mid-write (`kill -9`, power cut). Only for a file that one process alone writes: another
/// writer's temporary file in flight would go too. Returns how many were removed.
pub fn remove_stale_temps(path: &Path) -> usize {
    let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.as_bytes();
    let mut prefix = vec![b'.'];
    prefix.extend_from_slice(&name[..name.len().min(MAX_NAME_IN_TEMP)]);
    prefix.push(b'.');
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let bytes = file.as_bytes();
        if bytes.starts_with(&prefix)
            && bytes.ends_with(b".tmp")
            && fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// `.<name>.<pid>.<counter>.<nanos>.tmp`: hidden, recognisably ours, never shared.
fn temp_name(target: &[u8]) -> OsString {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::with_capacity(target.len().min(MAX_NAME_IN_TEMP) + 64);
    out.push(b'.');
    out.extend_from_slice(&target[..target.len().min(MAX_NAME_IN_TEMP)]);
    out.extend_from_slice(format!(".{}.{n}.{nanos}.tmp", std::process::id()).as_bytes());
    OsString::from_vec(out)
}

fn write_and_rename(
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    replaced_owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode.unwrap_or(DEFAULT_MODE))
        .open(tmp)?;
    // Before the mode is set: a change of owner clears the set-id bits.
    let created = file.metadata()?;
    let dir_owner = fs::metadata(parent_dir(tmp)).map(|m| (m.uid(), m.gid()));
    let created_owner = (created.uid(), created.gid());
    if let Some((uid, gid)) = owner_for(replaced_owner, dir_owner.ok(), created_owner) {
        give_away(std::os::unix::fs::fchown(&file, Some(uid), Some(gid)))?;
    }
    if let Some(mode) = mode {
        // The umask may have taken bits away from `mode` at creation; set them as asked.
        file.set_permissions(Permissions::from_mode(mode))?;
    }
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)
}

/// Whose a file just written should be, as `(uid, gid)`: the replaced file's owner and
/// group; for a new file, its directory's, when the writer does not own the directory (root
/// in a service's directory). `None`: it stays as created.
fn owner_for(
    replaced: Option<(u32, u32)>,
    dir: Option<(u32, u32)>,
    created: (u32, u32),
) -> Option<(u32, u32)> {
    let wanted = match replaced {
        Some(owner) => owner,
        None => dir.filter(|&(uid, _)| uid != created.0)?,
    };
    (wanted != created).then_some(wanted)
}

/// The result of giving a file to another owner, as far as the writer may: only root may
/// give a file away (and a filesystem without owners may not take one), so that refusal
/// leaves the file the writer's, as it was before sigorest tried.
fn give_away(chown: io::Result<()>) -> io::Result<()> {
    match chown {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Gives a file the writer just opened or created (a session's lock file) to the owner and
/// group of its directory `dir`, when the writer does not own the directory: see
/// [`owner_for`] and [`give_away`].
pub fn give_to_dir_owner(file: &File, dir: &Path) -> io::Result<()> {
    let meta = file.metadata()?;
    let dir = fs::metadata(dir).map(|m| (m.uid(), m.gid())).ok();
    match owner_for(None, dir, (meta.uid(), meta.gid())) {
        Some((uid, gid)) => give_away(std::os::unix::fs::fchown(file, Some(uid), Some(gid))),
        None => Ok(()),
    }
}

/// Test support for the modules that write files.
#[cfg(test)]
pub(crate) mod testdir {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A directory under the system's temporary directory, removed with everything in it when
    /// dropped. For tests of the modules that write files.
    pub(crate) struct TestDir(PathBuf);

    impl TestDir {
        pub(crate) fn new(label: &str) -> TestDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("sigorest-test-{label}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create test dir");
            TestDir(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }

        /// The names in the directory, sorted.
        pub(crate) fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&self.0)
                .expect("read test dir")
                .map(|e| {
                    e.expect("dir entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testdir::TestDir;
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn stale_temps_of_one_file_are_removed_and_nothing_else() {
        let d = TestDir::new("fs-stale");
        let target = d.path().join("usage.json");
        for name in [
            ".usage.json.123.0.456.tmp",
            ".usage.json.9.9.9.tmp",
            ".other.json.1.1.1.tmp",
            "usage.json",
            "usage.json.corrupt-1",
        ] {
            fs::write(d.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(&target), 2);
        assert_eq!(
            d.names(),
            [
                ".other.json.1.1.1.tmp",
                "usage.json",
                "usage.json.corrupt-1"
            ]
        );
    }

    #[test]
    fn move_aside_never_replaces_an_earlier_copy() {
        let d = TestDir::new("fs-aside");
        let p = d.path().join("f.json");
        fs::write(&p, b"one").unwrap();
        let a = move_aside(&p).unwrap();
        fs::write(&p, b"two").unwrap();
        let b = move_aside(&p).unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::read(a).unwrap(), b"one");
        assert_eq!(fs::read(b).unwrap(), b"two");
        assert!(!p.exists());
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_then_replaces_content() {
        let d = TestDir::new("fs-replace");
        let p = d.path().join("a.json");
        write_atomic(&p, b"one", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_atomic(&p, b"two, longer", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two, longer");
        write_atomic(&p, b"", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"");
        assert_eq!(d.names(), ["a.json"]);
    }

    #[test]
    fn the_default_mode_follows_the_umask_and_0600_is_honoured() {
        let d = TestDir::new("fs-mode");
        // What the umask makes of a plain new file (0644 under the usual 022).
        let reference = d.path().join("reference");
        fs::File::create(&reference).unwrap();
        let p = d.path().join("plain");
        write_atomic(&p, b"x", None).unwrap();
        assert_eq!(mode_of(&p), mode_of(&reference));
        let k = d.path().join("server.key");
        write_atomic(&k, b"secret", Some(0o600)).unwrap();
        assert_eq!(mode_of(&k), 0o600);
        // Replacing a plain file with a 0600 one gives the new mode, not the old one.
        write_atomic(&p, b"y", Some(0o600)).unwrap();
        assert_eq!(mode_of(&p), 0o600);
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_a_link_is_written_through() {
        let d = TestDir::new("fs-keep");
        let p = d.path().join("memory.json");
        write_atomic(&p, b"one", None).unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"two", None).unwrap();
        assert_eq!(mode_of(&p), 0o600, "the user's chmod stays");
        // A link to a file elsewhere: the file it names gets the bytes, the link stays.
        let elsewhere = d.path().join("real");
        fs::create_dir(&elsewhere).unwrap();
        let real = elsewhere.join("memory.json");
        fs::write(&real, b"old").unwrap();
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new", None).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"new");
        assert_eq!(fs::read(&link).unwrap(), b"new");
        // A link to a file not there yet (relative): the file is made, the link stays.
        let dangling = d.path().join("dangling.json");
        std::os::unix::fs::symlink("real/later.json", &dangling).unwrap();
        write_atomic(&dangling, b"made", None).unwrap();
        assert!(
            fs::symlink_metadata(&dangling)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(elsewhere.join("later.json")).unwrap(), b"made");
    }

    /// A FIFO at `path` (std cannot make one; coreutils' `mkfifo` can).
    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo").arg(path).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", path.display());
    }

    /// `read` on another thread, so that a regression blocks that thread, not the test.
    fn within_5_s(
        read: impl FnOnce() -> io::Result<Vec<u8>> + Send + 'static,
    ) -> io::Result<Vec<u8>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(read());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the read returns at once, without waiting for a writer")
    }

    #[test]
    fn read_config_refuses_what_is_not_a_regular_file_without_waiting() {
        let d = TestDir::new("fs-notfile");
        let fifo = d.path().join("models.csv");
        mkfifo(&fifo);
        let link = d.path().join("link.csv");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        for path in [fifo.clone(), link] {
            let err = within_5_s(move || read_config(&path, 100)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(
                err.to_string().contains("not a regular file: it is a FIFO"),
                "{err}"
            );
        }
        // Replaced by a FIFO after the first look: the open does not wait either.
        let err = within_5_s(move || read_opened(&fifo, 100)).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        for (path, what) in [
            (Path::new("/dev/zero"), "a device"),
            (d.path(), "a directory"),
        ] {
            let err = read_config(path, 100).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
        let err = read_config(&d.path().join("nope"), 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn read_config_reads_up_to_the_limit_and_refuses_more() {
        let d = TestDir::new("fs-limit");
        let p = d.path().join("keys.csv");
        fs::write(&p, [b'x'; 100]).unwrap();
        assert_eq!(read_config(&p, 100).unwrap().len(), 100);
        let link = d.path().join("link.csv");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert_eq!(read_config(&link, 100).unwrap().len(), 100);
        let err = read_config(&p, 99).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(
            err.to_string(),
            "too large (100 bytes): such a file may have at most 99 bytes"
        );
    }

    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(human_size(4 << 20), "4 MiB");
        assert_eq!(human_size(8 << 10), "8 KiB");
        assert_eq!(human_size(99), "99 bytes");
    }

    #[test]
    fn creates_missing_parent_directories() {
        let d = TestDir::new("fs-parents");
        let p = d.path().join("x/y/z/file.json");
        write_atomic(&p, b"{}", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{}");
    }

    #[test]
    fn failure_leaves_no_temp_file_and_keeps_the_target() {
        let d = TestDir::new("fs-fail");
        // The target is a non-empty directory: the rename must fail.
        let target = d.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"keep").unwrap();
        let err = write_atomic(&target, b"data", None).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert_eq!(d.names(), ["target"]);
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"keep");
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let d = TestDir::new("fs-noname");
        let err = write_atomic(&d.path().join(".."), b"x", None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn temp_names_are_hidden_unique_and_bounded() {
        let a = temp_name(b"s.json");
        let b = temp_name(b"s.json");
        assert_ne!(a, b);
        let a = a.to_string_lossy().into_owned();
        assert!(a.starts_with(".s.json.") && a.ends_with(".tmp"), "{a}");
        let long = vec![b'x'; 255];
        assert!(temp_name(&long).len() < 255);
    }

    /// Payload `t`,`i`: a header naming it, then a body long enough that a torn write
    /// (half old, half new) could not pass for a whole one.
    fn payload(t: usize, i: usize) -> Vec<u8> {
        let mut v = format!("{t} {i}\n").into_bytes();
        let fill = b'a' + ((t * 50 + i) % 26) as u8;
        v.resize(v.len() + 8192 + (t * 97 + i * 13) % 4096, fill);
        v
    }

    fn is_whole_payload(bytes: &[u8]) -> bool {
        let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
            return false;
        };
        let head = String::from_utf8_lossy(&bytes[..nl]);
        let mut it = head.split(' ').map(|s| s.parse::<usize>());
        match (it.next(), it.next()) {
            (Some(Ok(t)), Some(Ok(i))) => payload(t, i) == bytes,
            _ => false,
        }
    }

    #[test]
    fn concurrent_writers_never_leave_a_torn_file() {
        let d = TestDir::new("fs-concurrent");
        let p = Arc::new(d.path().join("shared.json"));
        write_atomic(&p, &payload(0, 0), None).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let bytes = fs::read(&*p).unwrap();
                    assert!(is_whole_payload(&bytes), "torn read: {} bytes", bytes.len());
                    reads += 1;
                }
                reads
            })
        };
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        write_atomic(&p, &payload(t, i), None).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().unwrap();
        assert!(reads > 0);
        let last = fs::read(&*p).unwrap();
        assert!(is_whole_payload(&last));
        assert_eq!(d.names(), ["shared.json"]);
    }

    fn owner_of(p: &Path) -> (u32, u32) {
        let m = fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    /// Whether the tests run as root (CI does), who alone may give a file away.
    fn as_root() -> bool {
        fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    #[test]
    fn the_owner_to_give_is_the_replaced_files_else_the_directorys() {
        let me = (1000, 1000);
        // A replaced file's owner and group, whoever the writer is.
        assert_eq!(owner_for(Some((999, 998)), Some(me), me), Some((999, 998)));
        assert_eq!(owner_for(Some((1000, 50)), Some(me), me), Some((1000, 50)));
        assert_eq!(owner_for(Some(me), Some((0, 0)), me), None, "as it is");
        // A new file: the directory's, when it is someone else's directory.
        assert_eq!(owner_for(None, Some((999, 998)), (0, 0)), Some((999, 998)));
        assert_eq!(
            owner_for(None, Some((1000, 50)), me),
            None,
            "the writer's own"
        );
        assert_eq!(owner_for(None, None, me), None);
        // Only root may give a file away: a refusal leaves it as it was.
        let refused = io::Error::from_raw_os_error(1); // EPERM
        assert!(give_away(Err(refused)).is_ok());
        assert!(give_away(Err(io::Error::from(io::ErrorKind::Unsupported))).is_ok());
        assert!(give_away(Err(io::Error::from(io::ErrorKind::NotFound))).is_err());
    }

    #[test]
    fn a_rewrite_by_the_owner_keeps_owner_group_and_mode() {
        let d = TestDir::new("fs-owner-same");
        let p = d.path().join("s.json");
        write_atomic(&p, b"one", Some(0o640)).unwrap();
        let before = owner_of(&p);
        write_atomic(&p, b"two", None).unwrap();
        assert_eq!((owner_of(&p), mode_of(&p)), (before, 0o640));
        // A writer that may not give the file away (not root) writes it all the same.
        let other = d.path().join("other.json");
        write_atomic(&other, b"x", None).unwrap();
        let lock = fs::File::open(&other).unwrap();
        give_to_dir_owner(&lock, d.path()).unwrap();
        assert_eq!(owner_of(&other), owner_of(d.path()));
    }

    #[test]
    fn root_leaves_a_replaced_file_to_its_owner_and_a_new_one_to_the_directorys() {
        if !as_root() {
            eprintln!("skipped: only root may give a file away");
            return;
        }
        let d = TestDir::new("fs-owner-root");
        let p = d.path().join("gpt41@s.json");
        write_atomic(&p, b"one", Some(0o600)).unwrap();
        std::os::unix::fs::chown(&p, Some(65_534), Some(65_533)).unwrap();
        write_atomic(&p, b"two", None).unwrap();
        assert_eq!(
            owner_of(&p),
            (65_534, 65_533),
            "the service's file stays its"
        );
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"two");

        // A new file in the service's directory is the service's, as is a lock file.
        let dir = d.path().join("sessions");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65_534), Some(65_533)).unwrap();
        let new = dir.join("gpt41@t.json");
        write_atomic(&new, b"new", Some(0o600)).unwrap();
        assert_eq!(owner_of(&new), (65_534, 65_533));
        assert_eq!(mode_of(&new), 0o600);
        let lock_path = dir.join(".gpt41@t.json.lock");
        let lock = fs::File::create(&lock_path).unwrap();
        give_to_dir_owner(&lock, &dir).unwrap();
        assert_eq!(owner_of(&lock_path), (65_534, 65_533));

        // So is a private directory made in it (`.sessions`, made by root's sigoe first);
        // one that exists keeps its owner.
        let private = dir.join(".sessions");
        create_private_dir(&private).unwrap();
        assert_eq!(owner_of(&private), (65_534, 65_533));
        assert_eq!(mode_of(&private), 0o700);
        let mine = d.path().join("mine");
        fs::create_dir(&mine).unwrap();
        create_private_dir(&mine).unwrap();
        assert_eq!(owner_of(&mine), (0, 0));
    }
}
