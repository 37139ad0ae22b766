//! Fixed-entry lookup tables: uid/gid ids, fragments, export (inode number → inode ref) and
//! xattr ids. Each is an index of u64 metadata-block offsets followed, before it, by the
//! blocks themselves; entry `i` lives in block `index[i * size / 8192]` at offset
//! `(i * size) % 8192`. Indexes are read on first use and kept (a few bytes per 8 KiB).

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::metadata::{Bounds, MdCursor, METADATA_SIZE};
use crate::Inner;

/// One fixed-entry table.
#[derive(Debug)]
pub(crate) struct Table {
    /// Absolute offset of the index.
    index_at: u64,
    /// Number of entries.
    count: u64,
    /// Bytes per entry.
    entry_size: u64,
    /// Lowest offset its metadata blocks may start at.
    blocks_from: u64,
    what: &'static str,
    index: OnceLock<Box<[u64]>>,
}

impl Table {
    pub(crate) fn new(index_at: u64, count: u64, entry_size: u64, blocks_from: u64, what: &'static str) -> Table {
        Table { index_at, count, entry_size, blocks_from, what, index: OnceLock::new() }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    fn index(&self, inner: &Inner) -> Result<&[u64]> {
        if let Some(ix) = self.index.get() {
            return Ok(ix);
        }
        // count <= u32::MAX and entry_size <= 16, so this cannot overflow.
        let blocks = (self.count * self.entry_size).div_ceil(METADATA_SIZE as u64);
        let len = usize::try_from(blocks * 8).map_err(|_| Error::corrupt(self.what, self.index_at))?;
        let mut scratch = Vec::new();
        let raw = inner.source.get(self.index_at, len, &mut scratch, self.what)?;
        let entries: Box<[u64]> =
            raw.chunks_exact(8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect();
        let _ = self.index.set(entries);
        Ok(self.index.get().map(|b| &b[..]).unwrap_or(&[]))
    }

    /// A cursor at entry `i`.
    pub(crate) fn entry<'a>(&self, inner: &'a Inner, i: u64) -> Result<MdCursor<'a>> {
        if i >= self.count {
            return Err(Error::corrupt(self.what, self.index_at));
        }
        let byte = i * self.entry_size;
        let slot = (byte / METADATA_SIZE as u64) as usize;
        let block = *self.index(inner)?.get(slot).ok_or(Error::corrupt(self.what, self.index_at))?;
        let bounds = Bounds { start: self.blocks_from, end: self.index_at, what: self.what };
        inner.cursor(block, (byte % METADATA_SIZE as u64) as usize, bounds)
    }
}

/// Location and size of a fragment block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FragmentEntry {
    pub(crate) start: u64,
    /// Size word: bit 24 set = stored uncompressed; low 24 bits = on-disk length.
    pub(crate) size: u32,
}

/// One xattr id entry: where an inode's xattr list is and how many entries it has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XattrIdEntry {
    pub(crate) kv_ref: u64,
    pub(crate) count: u32,
    /// Bytes of all names and values (out-of-line values at their full length); the kernel
    /// adds `ceil(size / 512)` to the inode's `i_blocks`.
    pub(crate) size: u32,
}

impl Inner {
    /// Reads the whole uid/gid table (at open: it is small and needed by every inode).
    pub(crate) fn load_ids(&self) -> Result<Box<[u32]>> {
        let table = &self.id_table;
        let mut c = table.entry(self, 0)?;
        let mut ids = Vec::new();
        for _ in 0..table.count() {
            ids.push(c.u32()?);
        }
        Ok(ids.into_boxed_slice())
    }

    /// Maps an inode's uid/gid index to the id.
    pub(crate) fn id(&self, index: u16, at: u64) -> Result<u32> {
        self.ids.get(usize::from(index)).copied().ok_or(Error::corrupt("uid/gid index out of range", at))
    }

    pub(crate) fn fragment(&self, i: u32) -> Result<FragmentEntry> {
        let table = self.fragment_table.as_ref().ok_or(Error::corrupt("fragment table missing", 0))?;
        let mut c = table.entry(self, u64::from(i))?;
        let start = c.u64()?;
        let size = c.u32()?;
        Ok(FragmentEntry { start, size })
    }

    pub(crate) fn export_ref(&self, ino: u32) -> Result<Option<u64>> {
        let Some(table) = self.export_table.as_ref() else { return Ok(None) };
        if ino == 0 || u64::from(ino) > table.count() {
            return Ok(None);
        }
        let mut c = table.entry(self, u64::from(ino - 1))?;
        Ok(Some(c.u64()?))
    }

    pub(crate) fn xattr_id(&self, i: u32) -> Result<XattrIdEntry> {
        let table = self.xattr.as_ref().ok_or(Error::corrupt("xattr table missing", 0))?;
        let mut c = table.ids.entry(self, u64::from(i))?;
        let kv_ref = c.u64()?;
        let count = c.u32()?;
        let size = c.u32()?;
        Ok(XattrIdEntry { kv_ref, count, size })
    }
}
