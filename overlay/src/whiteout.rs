//! Whiteouts and opaque directories, in every on-disk form a layer may hold. All detection
//! lives here (overlay_semantics.md §1.1):
//!
//! | form | meaning |
//! |---|---|
//! | char device 0/0 named N | whiteout of N (kernel, c/storage native) |
//! | regular file `.wh.N` | whiteout of N (OCI/AUFS tars, fuse-overlayfs without mknod) |
//! | empty file N with `trusted.overlay.whiteout` / `user.overlay.whiteout`, in a dir whose `*.overlay.opaque` is `x` | whiteout of N (userspace layer builders) |
//! | dir xattr `trusted.overlay.opaque`, `user.overlay.opaque` or `user.fuseoverlayfs.opaque` = `y` | opaque dir |
//! | file `.wh..wh..opq` inside the dir | opaque dir (OCI/AUFS) |
//!
//! Names starting with `.wh.` are never visible; overlay-private xattrs are never shown.

use crate::attr::FileKind;
use crate::error::Result;
use crate::layer::{Handle, Layer};

/// Prefix of AUFS/OCI whiteout names.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// AUFS/OCI opaque marker file.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

const OPAQUE_XATTRS: [&[u8]; 3] = [b"trusted.overlay.opaque", b"user.overlay.opaque", b"user.fuseoverlayfs.opaque"];
const WHITEOUT_XATTRS: [&[u8]; 2] = [b"trusted.overlay.whiteout", b"user.overlay.whiteout"];
const PRIVATE_XATTR_PREFIXES: [&[u8]; 3] = [b"trusted.overlay.", b"user.overlay.", b"user.fuseoverlayfs."];

/// What a layer directory's markers say about merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirMark {
    /// Merged with the layers below.
    Transparent,
    /// Hides everything below it.
    Opaque,
    /// Merged, and may hold xattr whiteouts (`*.overlay.opaque` = `x`).
    HoldsXattrWhiteouts,
}

/// True for names the union never shows (`.wh.*`).
pub fn is_hidden_name(name: &[u8]) -> bool {
    name.starts_with(WHITEOUT_PREFIX)
}

/// True for xattrs private to overlay implementations.
pub fn is_private_xattr(name: &[u8]) -> bool {
    PRIVATE_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Reads the opaque markers of a layer directory.
pub fn dir_mark(layer: &dyn Layer, dir: &Handle) -> Result<DirMark> {
    let mut holds_xattr_whiteouts = false;
    for name in OPAQUE_XATTRS {
        match layer.get_xattr(dir, name)? {
            Some(v) if v.first() == Some(&b'y') => return Ok(DirMark::Opaque),
            Some(v) if v.first() == Some(&b'x') => holds_xattr_whiteouts = true,
            _ => {}
        }
    }
    if layer.lookup(dir, OPAQUE_MARKER)?.is_some() {
        return Ok(DirMark::Opaque);
    }
    Ok(if holds_xattr_whiteouts { DirMark::HoldsXattrWhiteouts } else { DirMark::Transparent })
}

/// True when `object` (of `kind`, inside a directory marked `mark`) is a whiteout.
pub fn is_whiteout(layer: &dyn Layer, mark: DirMark, object: &Handle, kind: FileKind) -> Result<bool> {
    match kind {
        FileKind::CharDev => Ok(layer.attr(object)?.rdev == 0),
        FileKind::File if mark == DirMark::HoldsXattrWhiteouts => {
            if layer.attr(object)?.size != 0 {
                return Ok(false);
            }
            for name in WHITEOUT_XATTRS {
                if layer.get_xattr(object, name)?.is_some() {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// True when the layer directory holds an AUFS whiteout `.wh.NAME` for `name`.
pub fn has_aufs_whiteout(layer: &dyn Layer, dir: &Handle, name: &[u8]) -> Result<bool> {
    if name.len() + WHITEOUT_PREFIX.len() > 255 {
        return Ok(false);
    }
    let mut wh = WHITEOUT_PREFIX.to_vec();
    wh.extend_from_slice(name);
    Ok(layer.lookup(dir, &wh)?.is_some())
}
