//! The one error type of `parallax-store`. Every variant names the path, image or key that is
//! wrong; `Display` is the one line printed after `Migration failed for image '…': `.

use std::io;
use std::path::{Path, PathBuf};

use crate::messages::go_quote;

/// Errors of every operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No image of that name in a store (message as parallax's `FindImage`).
    #[error("Image not found: {}", go_quote(.0))]
    ImageNotFound(String),
    /// A system call on a path failed.
    #[error("{op} {}: {}", .path.display(), io_text(.source))]
    Io {
        /// What was done (`open`, `rename`, `mkdir`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// Why it failed (raw errno kept).
        source: io::Error,
    },
    /// Store or source metadata that cannot be used as it is.
    #[error("{}: {msg}", .path.display())]
    Invalid {
        /// The file (or directory) that is wrong.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// Another process holds a store lock longer than `--lock-timeout`.
    #[error("store {} is locked by another process (waited {waited_secs}s for {}); try again later or raise --lock-timeout", .store.display(), .lock.display())]
    Locked {
        /// The store.
        store: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// How long we waited.
        waited_secs: u64,
    },
    /// mksquashfs exited non-zero (message as parallax's: status, then its output).
    #[error("mksquashfs: {status}\n{output}")]
    Mksquashfs {
        /// How it ended.
        status: String,
        /// Its combined stdout and stderr.
        output: String,
    },
    /// The read-only union of the source layers could not be mounted.
    #[error("failed to mount image: {0}")]
    Mount(String),
    /// A signal asked us to stop; everything was rolled back.
    #[error("interrupted by {0}; nothing was published")]
    Interrupted(&'static str),
    /// Anything else, already worded.
    #[error("{0}")]
    Other(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an `io::Error` with what was done to which path.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io { op, path: path.as_ref().to_path_buf(), source }
    }

    /// Metadata problem at `path`.
    pub fn invalid(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
        Error::Invalid { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
}

/// An `io::Error` worded as Go words it (`no such file or directory`, no `(os error 2)`), so
/// messages match parallax's.
pub fn io_text(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            let desc = nix::errno::Errno::from_raw(code).desc();
            let mut chars = desc.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => format!("errno {code}"),
            }
        }
        None => err.to_string(),
    }
}

/// Extension to attach op + path to `io::Result`s.
pub trait IoContext<T> {
    /// Turns the error into [`Error::Io`].
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_like_go() {
        let cases = [
            (libc::ENOENT, "stat /x: no such file or directory"),
            (libc::EACCES, "stat /x: permission denied"),
            (libc::EROFS, "stat /x: read-only file system"),
        ];
        for (code, want) in cases {
            let err = Error::io("stat", "/x", io::Error::from_raw_os_error(code));
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn image_not_found_is_quoted_like_go() {
        assert_eq!(Error::ImageNotFound("a\"b".into()).to_string(), r#"Image not found: "a\"b""#);
    }
}
