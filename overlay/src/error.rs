//! The one error type of the union. Each variant carries what someone needs to fix the problem;
//! `parallaxfs-fs` maps them to errno in one place.

use std::io;

/// Errors of the union layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SquashFS layer failed (corrupt image, I/O error on the image file).
    #[error("layer {layer}: {source}")]
    Squash {
        /// Index of the layer in `lowerdir` order (0 = topmost lower).
        layer: usize,
        /// What the reader said.
        source: parallaxfs_squash::Error,
    },
    /// A system call on a directory layer failed; the raw errno is kept.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// No such entry (or it is whited out).
    #[error("no such file or directory")]
    NotFound,
    /// A path component is not a directory.
    #[error("not a directory")]
    NotDir,
    /// The object is a directory where a file was wanted.
    #[error("is a directory")]
    IsDir,
    /// A name longer than 255 bytes.
    #[error("file name too long")]
    NameTooLong,
    /// The stack has no upper layer.
    #[error("read-only file system")]
    ReadOnly,
    /// The extended attribute does not exist (or is private to the overlay).
    #[error("no such attribute")]
    NoData,
    /// The object is not a symbolic link.
    #[error("not a symbolic link")]
    NotSymlink,
    /// A layer given at mount is unusable.
    #[error("{path}: {reason}")]
    BadLayer {
        /// The path as given.
        path: String,
        /// Why.
        reason: String,
    },
}

impl From<nix::errno::Errno> for Error {
    fn from(e: nix::errno::Errno) -> Error {
        Error::Io(io::Error::from_raw_os_error(e as i32))
    }
}

/// Result alias of the union layer.
pub type Result<T> = std::result::Result<T, Error>;
