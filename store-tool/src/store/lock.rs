//! Lock files as c/storage uses them (store_format.md §3.6): a whole-file POSIX record lock
//! (`fcntl` F_SETLK, compatible with c/storage's F_SETLKW readers and writers, and with NFS
//! lockd/NFSv4 locks), plus the 64-byte write token a writer stores before renaming the JSON
//! it protects, so long-lived readers notice the change.
//!
//! POSIX locks belong to the process: closing any descriptor of the file drops them. So every
//! lock file is opened once per process, through one [`LockFile`], and the lock is released by
//! dropping it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use rand::RngCore;

use crate::error::{Error, IoContext, Result};

/// Shared (reader) or exclusive (writer) lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// F_RDLCK.
    Shared,
    /// F_WRLCK.
    Exclusive,
}

/// How often a busy lock is retried.
const RETRY: Duration = Duration::from_millis(20);

/// One open lock file.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// Counter of tokens written by this process (part of the token, as in c/storage).
static TOKENS: AtomicU64 = AtomicU64::new(0);

impl LockFile {
    /// Opens `path` for reading and writing, creating it (empty, `mode`) if missing.
    pub fn open(path: &Path, mode: u32) -> Result<LockFile> {
        let file = OpenOptions::new().read(true).write(true).create(true).mode(mode).open(path).ctx("open", path)?;
        Ok(LockFile { file, path: path.to_path_buf() })
    }

    /// Opens an existing lock file read-only (shared locks on someone else's store).
    pub fn open_read_only(path: &Path) -> Result<LockFile> {
        let file = File::open(path).ctx("open", path)?;
        Ok(LockFile { file, path: path.to_path_buf() })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock if nobody else holds a conflicting one; `Ok(false)` when busy.
    pub fn try_lock(&self, kind: LockKind) -> Result<bool> {
        let l_type = match kind {
            LockKind::Shared => libc::F_RDLCK,
            LockKind::Exclusive => libc::F_WRLCK,
        };
        let request =
            libc::flock { l_type: l_type as i16, l_whence: libc::SEEK_SET as i16, l_start: 0, l_len: 0, l_pid: 0 };
        match fcntl(&self.file, FcntlArg::F_SETLK(&request)) {
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
            Err(e) => Err(Error::io("lock", &self.path, std::io::Error::from(e))),
        }
    }

    /// Waits for the lock up to `timeout` (`None`: forever), calling `on_wait` once if it is
    /// busy at first. Gives up early when a signal asks us to stop.
    pub fn lock(&self, kind: LockKind, timeout: Option<Duration>, store: &Path, on_wait: impl FnOnce()) -> Result<()> {
        if self.try_lock(kind)? {
            return Ok(());
        }
        on_wait();
        let start = Instant::now();
        loop {
            crate::signals::check()?;
            if let Some(limit) = timeout {
                if start.elapsed() >= limit {
                    return Err(Error::Locked {
                        store: store.to_path_buf(),
                        lock: self.path.clone(),
                        waited_secs: start.elapsed().as_secs(),
                    });
                }
            }
            std::thread::sleep(RETRY);
            if self.try_lock(kind)? {
                return Ok(());
            }
        }
    }

    /// Writes a fresh write token at offset 0 (c/storage `lastwrite.go`): LE u64 unix
    /// nanoseconds, LE u64 per-process counter, LE u32 pid, 44 random bytes.
    pub fn write_token(&self) -> Result<()> {
        let mut token = [0u8; 64];
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        token[0..8].copy_from_slice(&nanos.to_le_bytes());
        token[8..16].copy_from_slice(&TOKENS.fetch_add(1, Ordering::SeqCst).to_le_bytes());
        token[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        rand::thread_rng().fill_bytes(&mut token[20..]);
        self.file.write_all_at(&token, 0).ctx("write", &self.path)?;
        self.file.sync_data().ctx("fdatasync", &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_64_bytes_and_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("images.lock");
        let lock = LockFile::open(&p, 0o644).unwrap();
        assert!(lock.try_lock(LockKind::Exclusive).unwrap());
        lock.write_token().unwrap();
        let first = std::fs::read(&p).unwrap();
        lock.write_token().unwrap();
        let second = std::fs::read(&p).unwrap();
        assert_eq!((first.len(), second.len()), (64, 64));
        assert_ne!(first, second);
        assert_eq!(&first[16..20], &std::process::id().to_le_bytes());
    }

    #[test]
    fn missing_lock_names_the_file() {
        let err = LockFile::open_read_only(Path::new("/nonexistent/x.lock")).unwrap_err();
        assert_eq!(err.to_string(), "open /nonexistent/x.lock: no such file or directory");
    }
}
