//! The one mapping from union errors to errno. Exhaustive on purpose: a new error variant does
//! not compile until someone decides its errno here.

use fuser::Errno;
use parallaxfs_overlay::Error;

/// The errno the kernel should see for `err`.
pub fn errno(err: &Error) -> Errno {
    match err {
        // The reader's own table: corrupt or unreadable image bytes are EIO, as the kernel's
        // squashfs answers; a vanished NFS file read with pread keeps its raw errno.
        Error::Squash { source, .. } => Errno::from_i32(source.errno()),
        Error::Io(e) => e.raw_os_error().map_or(Errno::EIO, Errno::from_i32),
        Error::NotFound => Errno::ENOENT,
        Error::NotDir => Errno::ENOTDIR,
        Error::IsDir => Errno::EISDIR,
        Error::NameTooLong => Errno::ENAMETOOLONG,
        Error::ReadOnly => Errno::EROFS,
        Error::NoData => Errno::NO_XATTR,
        // readlink(2) of a non-link is EINVAL.
        Error::NotSymlink => Errno::EINVAL,
        // Only raised while building a stack; if it ever reaches a request, the layer is bad.
        Error::BadLayer { .. } => Errno::EIO,
    }
}

/// True for errors worth a warning in the log (the rest are ordinary answers).
pub fn is_fault(err: &Error) -> bool {
    matches!(errno(err), e if e == Errno::EIO)
}
