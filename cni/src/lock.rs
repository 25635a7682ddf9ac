//! One verb at a time per attachment: ADD, DEL and CHECK of one (container ID, ifname) hold an
//! exclusive flock(2) on `<stateDir>/<key>.lock` from before their first look at the
//! attachment until the process is done with it.
//!
//! Invariant: at most one process holds the lock of an attachment, and it holds it on the file
//! that `<key>.lock` names at that moment. The holder unlinks the file before letting go (so
//! lock files do not pile up, one per attachment ever seen); a process that waited on the
//! unlinked file finds, once it has the lock, that the path names another file or none, and
//! starts over on the path. The lock goes with the file descriptor, so every exit of the
//! process, a crash or a kill by the runtime included, releases it.
//!
//! Why per attachment: two ADDs of one attachment at once (a Multus retry overlapping the
//! first try, two runtimes restarting) would both pass the "already live" checks of add.rs
//! and both lease, plumb and register. host-local serialises per network the same way
//! (an flock on `<dataDir>/<network>/lock` around each allocation); a lock per node would also
//! queue the ADDs of unrelated pods behind one another.

use crate::error::{code, CniError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a verb waits for another one on the same attachment. Longer than the other's
/// worst case with a daemon that answers (a few daemon calls of at most 20 s each), shorter
/// than kubelet's sandbox timeout (4 min).
pub const WAIT: Duration = Duration::from_secs(60);

/// The lock of one attachment, held until dropped.
#[derive(Debug)]
pub struct AttachmentLock {
    path: PathBuf,
    _file: Flock<File>,
}

impl Drop for AttachmentLock {
    fn drop(&mut self) {
        // Still held here (the file closes after this body): the path names our file, so this
        // removes no one else's.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO, format!("{}: {what}: {e}", path.display()))
}

/// Whether `f`, which we hold locked, is still the file at `path`.
fn still_linked(f: &File, path: &Path) -> Result<bool, CniError> {
    let ours = f.metadata().map_err(|e| io(path, "fstat", e))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(m.dev() == ours.dev() && m.ino() == ours.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path, "stat", e)),
    }
}

/// Takes the lock of the attachment with key `key` in `dir` (which must exist), waiting at
/// most `wait` for a verb that holds it.
pub fn lock(dir: &Path, key: &str, wait: Duration) -> Result<AttachmentLock, CniError> {
    let path = dir.join(format!("{key}.lock"));
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io(&path, "open", e))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                if still_linked(&held, &path)? {
                    return Ok(AttachmentLock { path, _file: held });
                }
                // The holder we waited for unlinked it: try the path again at once.
                continue;
            }
            Err((_, Errno::EWOULDBLOCK)) => {}
            Err((_, e)) => return Err(io(&path, "flock", e)),
        }
        if start.elapsed() >= wait {
            return Err(CniError::new(
                code::TRY_AGAIN,
                format!(
                    "another ADD, DEL or CHECK of this attachment has held {} for {wait:?}; try again",
                    path.display()
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(16));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_and_the_file_goes_with_the_last() {
        let d = tempfile::tempdir().unwrap();
        let a = lock(d.path(), "k1", WAIT).unwrap();
        let e = lock(d.path(), "k1", Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN, "{e:?}");
        assert!(e.msg.contains("k1.lock"), "{e:?}");
        // Another attachment is not held up.
        drop(lock(d.path(), "k2", Duration::ZERO).unwrap());
        // A waiter gets the lock once the holder lets go, on a file that is linked.
        std::thread::scope(|s| {
            let w = s.spawn(|| lock(d.path(), "k1", WAIT).map(|l| l.path.exists()));
            std::thread::sleep(Duration::from_millis(50));
            drop(a);
            assert_eq!(w.join().unwrap(), Ok(true));
        });
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "a lock file stayed");
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_path() {
        let d = tempfile::tempdir().unwrap();
        let e = lock(&d.path().join("none"), "k", WAIT).unwrap_err();
        assert_eq!(e.code, code::IO);
        assert!(e.msg.contains("none/k.lock"), "{e:?}");
    }
}
