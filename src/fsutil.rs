//! Atomic file writes: a crash or `kill -9` leaves the old file or the new one, never a torn
//! one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (unique
/// name, so concurrent writers never share one), written, fsynced, renamed over `path`, then
/// the directory fsynced. `mode` sets the permission bits of the new file (e.g. `0o600` for
/// the TLS key); `None` gives 0o644. Creates missing parent directories. On error the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;

    let (tmp_path, mut file) = create_temp(&dir, file_name, mode.unwrap_or(0o644))?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp_path, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    // The rename is durable only once the directory entry is on disk. Some file systems
    // refuse to fsync a directory; the file itself is complete either way.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a new, empty temporary file next to the target: `.<name>.tmp.<pid>.<n>`.
fn create_temp(dir: &Path, file_name: &std::ffi::OsStr, mode: u32) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp.{}.{n}", std::process::id()));
        let tmp = dir.join(name);
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        set_mode(&mut opts, mode);
        match opts.open(&tmp) {
            Ok(f) => {
                // The umask may have masked bits off at creation; set exactly what was asked.
                set_permissions(&f, mode)?;
                return Ok((tmp, f));
            }
            // A stale temporary file from a crashed process with a recycled pid: next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no free temporary file name")))
}

#[cfg(unix)]
fn set_mode(opts: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    opts.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_opts: &mut OpenOptions, _mode: u32) {}

#[cfg(unix)]
fn set_permissions(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_permissions(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sigorest-fsutil-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_replaces_and_leaves_no_temporary_file() {
        let dir = temp_dir("replace");
        let path = dir.join("sub").join("f.json");
        write_atomic(&path, b"one", None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"two", None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("mode");
        let key = dir.join("k");
        let other = dir.join("o");
        write_atomic(&key, b"secret", Some(0o600)).unwrap();
        write_atomic(&other, b"x", None).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&other), 0o644);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn error_leaves_target_untouched() {
        let dir = temp_dir("err");
        // The target is a non-empty directory: the rename fails.
        let target = dir.join("d");
        fs::create_dir_all(target.join("inner")).unwrap();
        assert!(write_atomic(&target, b"x", None).is_err());
        assert!(target.join("inner").is_dir());
        let names: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
