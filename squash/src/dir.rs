//! Directory listings: headers and entries, lookup through the directory index, and readdir
//! with resumable cookies.
//!
//! A listing is a run of headers `{count-1, inode block, base inode number}`, each followed by
//! up to 256 entries `{offset, inode delta, type, name length-1, name}`, sorted by name bytes.
//! Cookies follow the kernel's `f_pos`: the listing byte offset of an entry plus 3 (0, 1, 2 are
//! `.`, `..` and the start).

use std::ops::ControlFlow;

use crate::error::{Error, Result};
use crate::inode::{DirBody, Inode, InodeRef, Kind, MAX_NAME};
use crate::metadata::{Bounds, MdCursor, METADATA_SIZE};
use crate::Inner;

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Name bytes (1..=256 bytes, no `/` or NUL).
    pub name: Box<[u8]>,
    /// The entry's inode.
    pub inode_ref: InodeRef,
    /// Its inode number.
    pub ino: u32,
    /// Its type.
    pub kind: Kind,
}

/// Reads entries of one listing, tracking the header each belongs to.
struct ListingReader<'a> {
    cursor: MdCursor<'a>,
    /// Listing bytes consumed so far.
    pos: u64,
    len: u64,
    inodes: u32,
    /// Entries left under the current header, its inode block and base number.
    left: u32,
    inode_block: u32,
    base_ino: u32,
}

impl ListingReader<'_> {
    /// The next entry and the listing offset it starts at, or `None` at the end.
    fn next(&mut self) -> Result<Option<(DirEntry, u64)>> {
        if self.left == 0 {
            if self.pos >= self.len {
                return Ok(None);
            }
            self.read_header()?;
        }
        let start = self.pos;
        self.take(8)?;
        let offset = self.cursor.u16()?;
        let delta = self.cursor.u16()? as i16;
        let kind = Kind::from_basic(self.cursor.u16()?).ok_or(self.cursor.corrupt("directory entry type"))?;
        let name_len = usize::from(self.cursor.u16()?) + 1;
        if name_len > MAX_NAME || usize::from(offset) >= METADATA_SIZE {
            return Err(self.cursor.corrupt("directory entry fields"));
        }
        self.take(name_len as u64)?;
        let name = self.cursor.vec(name_len)?.into_boxed_slice();
        let ino = i64::from(self.base_ino) + i64::from(delta);
        if ino < 1 || ino > i64::from(self.inodes) {
            return Err(self.cursor.corrupt("directory entry inode number"));
        }
        self.left -= 1;
        let inode_ref = InodeRef(u64::from(self.inode_block) << 16 | u64::from(offset));
        Ok(Some((DirEntry { name, inode_ref, ino: ino as u32, kind }, start)))
    }

    fn read_header(&mut self) -> Result<()> {
        self.take(12)?;
        let count = self.cursor.u32()?;
        self.inode_block = self.cursor.u32()?;
        self.base_ino = self.cursor.u32()?;
        if count >= 256 {
            return Err(self.cursor.corrupt("directory header count"));
        }
        self.left = count + 1;
        Ok(())
    }

    /// Accounts for `n` bytes about to be read; the listing must hold them.
    fn take(&mut self, n: u64) -> Result<()> {
        if self.pos + n > self.len {
            return Err(self.cursor.corrupt("directory entry runs past the listing"));
        }
        self.pos += n;
        Ok(())
    }
}

/// True for names a directory may legally hold.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

impl Inner {
    fn dir_bounds(&self) -> Bounds {
        Bounds {
            start: self.superblock.directory_table,
            end: self.superblock.directory_table_end(),
            what: "directory table",
        }
    }

    /// A reader positioned at listing offset `skip`, which is `0` or a header boundary in
    /// metadata block `block` (relative to the directory table).
    fn listing_at(&self, dir: &DirBody, block: u32, skip: u64) -> Result<ListingReader<'_>> {
        let sb = &self.superblock;
        let abs = sb.directory_table + u64::from(block);
        let offset = ((u64::from(dir.offset) + skip) % METADATA_SIZE as u64) as usize;
        let cursor = self.cursor(abs, offset, self.dir_bounds())?;
        Ok(ListingReader {
            cursor,
            pos: skip,
            len: u64::from(dir.listing_len),
            inodes: sb.inodes,
            left: 0,
            inode_block: 0,
            base_ino: 0,
        })
    }

    /// Reader starting at the last indexed header whose position/name satisfies `before`.
    fn listing_from_index(
        &self,
        dir: &DirBody,
        before: impl Fn(&crate::inode::DirIndexEntry) -> bool,
    ) -> Result<ListingReader<'_>> {
        let at = dir.index.partition_point(|e| before(e));
        match at.checked_sub(1).map(|i| &dir.index[i]) {
            Some(e) if u64::from(e.index) < u64::from(dir.listing_len) => {
                self.listing_at(dir, e.start_block, u64::from(e.index))
            }
            Some(_) => Err(Error::corrupt("directory index entry past the listing", self.superblock.directory_table)),
            None => self.listing_at(dir, dir.start_block, 0),
        }
    }

    /// Finds `name` in directory `dir`. Touches at most the index and the ~8 KiB of listing
    /// after the indexed header, whatever the directory size.
    pub(crate) fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
        let body = dir.dir()?;
        if !valid_name(name) || name.len() > MAX_NAME || body.listing_len == 0 {
            return Ok(None);
        }
        let mut r = self.listing_from_index(body, |e| &*e.name <= name)?;
        while let Some((entry, _)) = r.next()? {
            match (*entry.name).cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some(entry)),
                std::cmp::Ordering::Greater => return Ok(None),
                std::cmp::Ordering::Less => {}
            }
        }
        Ok(None)
    }

    /// Calls `f(entry, cookie_of_next)` for entries from `cookie` on, until it breaks.
    pub(crate) fn read_dir_from(
        &self,
        dir: &Inode,
        cookie: u64,
        f: &mut dyn FnMut(&DirEntry, u64) -> ControlFlow<()>,
    ) -> Result<()> {
        let body = dir.dir()?;
        if body.listing_len == 0 {
            return Ok(());
        }
        let target = cookie.saturating_sub(3);
        if target >= u64::from(body.listing_len) {
            return Ok(());
        }
        let mut r = self.listing_from_index(body, |e| u64::from(e.index) <= target)?;
        while let Some((entry, start)) = r.next()? {
            if start < target || !valid_name(&entry.name) {
                continue;
            }
            if f(&entry, r.pos + 3).is_break() {
                break;
            }
        }
        Ok(())
    }
}
