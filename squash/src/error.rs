//! The one error type of the reader. Every fault found in image bytes is a [`Error::Corrupt`]
//! naming the structure and the absolute byte offset where it was found.

use std::io;

/// Errors of the SquashFS reader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file does not start with the SquashFS 4.0 magic.
    #[error("not a SquashFS image (magic {magic:#010x}, want 0x73717368 \"hsqs\")")]
    NotSquashfs {
        /// The first four bytes, little-endian.
        magic: u32,
    },
    /// The image bytes are inconsistent.
    #[error("corrupt image: {what} at byte offset {offset:#x}")]
    Corrupt {
        /// Which structure is bad and how.
        what: &'static str,
        /// Absolute offset in the image file of the structure (or the metadata block holding it).
        offset: u64,
    },
    /// The file is shorter than the image claims.
    #[error("truncated image: superblock says {bytes_used} bytes, the file has {file_len}")]
    Truncated {
        /// `bytes_used` from the superblock.
        bytes_used: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// A valid image this build cannot read.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// Reading the image file failed (with pread this is how a vanished NFS file shows up).
    #[error("reading image: {0}")]
    Io(#[from] io::Error),
    /// No such entry.
    #[error("no such file or directory")]
    NotFound,
    /// A path component is not a directory.
    #[error("not a directory")]
    NotDir,
    /// The inode is not a regular file.
    #[error("not a regular file")]
    NotFile,
    /// The inode is not a symbolic link.
    #[error("not a symbolic link")]
    NotSymlink,
}

impl Error {
    /// Shorthand for a [`Error::Corrupt`].
    pub(crate) fn corrupt(what: &'static str, offset: u64) -> Error {
        Error::Corrupt { what, offset }
    }

    /// The errno a filesystem should answer for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::NotDir => libc::ENOTDIR,
            Error::NotFile => libc::EISDIR,
            Error::NotSymlink => libc::EINVAL,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            // Bad bytes in an image are an I/O error to the caller, as the kernel answers.
            Error::NotSquashfs { .. } | Error::Corrupt { .. } | Error::Truncated { .. } | Error::Unsupported(_) => {
                libc::EIO
            }
        }
    }
}

/// Result alias of the reader.
pub type Result<T> = std::result::Result<T, Error>;
