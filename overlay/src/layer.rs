//! The `Layer` trait: what the union needs from one layer, whatever it is made of.
//!
//! Kinds today: a SquashFS image ([`SquashLayer`]) and a plain directory ([`PlainLayer`]).
//! A new kind (EROFS, a remote blob store, materialized hot files) is a new implementation
//! here plus a [`Handle`] variant; the union code does not change.

mod plain;
mod squash;

use std::fmt::Debug;
use std::sync::Arc;

pub use plain::{PlainHandle, PlainLayer};
pub use squash::SquashLayer;

use crate::attr::{Attr, FileKind};
use crate::error::Result;

/// One object inside one layer. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Handle {
    /// An inode of a SquashFS image, by its place in the image: parsed again from the
    /// image's inode cache when needed, so the many objects the kernel holds after a walk
    /// keep 8 bytes each rather than a parsed inode (1.4 MB for 10,000).
    Squash(parallaxfs_squash::InodeRef),
    /// An object of a plain directory tree (shared: a handle is in every node of the table
    /// the kernel holds, so it stays one pointer wide).
    Plain(Arc<PlainHandle>),
}

/// A directory entry as one layer stores it (whiteouts included).
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// Name bytes.
    pub name: Box<[u8]>,
    /// Layer-local inode number.
    pub ino: u64,
    /// File type.
    pub kind: FileKind,
    /// The entry's object, where the listing names it (a SquashFS entry holds its inode's
    /// place): a reader of the listing needs no lookup by name to reach it.
    pub object: Option<Handle>,
}

/// Filesystem statistics of a layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatFs {
    /// Total blocks of `bsize` bytes.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
}

/// An open regular file of a layer, read with `read_at`.
pub trait FileReader: Send + Sync + Debug {
    /// Reads at `offset`; fewer bytes only at end of file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// Size of the unit the layer decodes at once (a compressed SquashFS block), if reading
    /// part of it costs as much as reading all of it. The FUSE side then pushes the whole unit
    /// into the page cache so one decompression serves every page.
    fn decode_unit(&self) -> Option<u64> {
        None
    }
}

/// What the union needs from one read-only layer.
pub trait Layer: Send + Sync + Debug {
    /// The layer's root directory.
    fn root(&self) -> Result<Handle>;
    /// Finds `name` in directory `dir`; `None` if absent.
    fn lookup(&self, dir: &Handle, name: &[u8]) -> Result<Option<Handle>>;
    /// Attributes with the layer-local inode number.
    fn attr(&self, object: &Handle) -> Result<Attr>;
    /// File type without a full attribute read where the layer can.
    fn kind(&self, object: &Handle) -> Result<FileKind> {
        Ok(self.attr(object)?.kind)
    }
    /// Every entry of `dir` except `.` and `..`, whiteouts included.
    fn read_dir(&self, dir: &Handle) -> Result<Vec<RawEntry>>;
    /// Target of a symlink.
    fn read_link(&self, object: &Handle) -> Result<Vec<u8>>;
    /// Names of extended attributes.
    fn list_xattr(&self, object: &Handle) -> Result<Vec<Vec<u8>>>;
    /// Value of one extended attribute.
    fn get_xattr(&self, object: &Handle, name: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Opens a regular file for reading.
    fn open(&self, object: &Handle) -> Result<Box<dyn FileReader>>;
    /// Filesystem statistics.
    fn statfs(&self) -> Result<StatFs>;
    /// True when entry objects never change while mounted (images); lets the FUSE side give
    /// long cache timeouts.
    fn immutable(&self) -> bool;
}
