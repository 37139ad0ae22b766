//! Extended attributes: the xattr id table maps an inode's xattr index to a list of
//! `{type, name, value}` entries in the xattr table; a value may live out of line (type bit
//! 0x100), referenced by position. Name prefixes are stored as a type: 0 `user.`,
//! 1 `trusted.`, 2 `security.`; unknown types are skipped.

use crate::error::{Error, Result};
use crate::inode::Inode;
use crate::metadata::{Bounds, MdCursor, METADATA_SIZE};
use crate::table::Table;
use crate::Inner;

/// Largest xattr value Linux allows.
const MAX_VALUE: u32 = 65536;
const OUT_OF_LINE: u16 = 0x100;

/// The xattr tables of an image.
#[derive(Debug)]
pub(crate) struct XattrTables {
    /// Start of the key/value metadata blocks.
    pub(crate) kv_start: u64,
    /// Where the id table index starts (the kv blocks end before the id blocks, which end
    /// before this).
    pub(crate) kv_end: u64,
    pub(crate) ids: Table,
}

fn prefix(t: u16) -> Option<&'static [u8]> {
    match t & 0xff {
        0 => Some(b"user."),
        1 => Some(b"trusted."),
        2 => Some(b"security."),
        _ => None,
    }
}

impl Inner {
    /// Reads the 16-byte xattr id table header at open.
    pub(crate) fn xattr_tables(&self, at: u64) -> Result<XattrTables> {
        let mut scratch = Vec::new();
        let b = self.source.get(at, 16, &mut scratch, "xattr id table header")?;
        let kv_start = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let count = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if kv_start >= at || kv_start < self.superblock.id_table {
            return Err(Error::corrupt("xattr table start", at));
        }
        Ok(XattrTables {
            kv_start,
            kv_end: at,
            ids: Table::new(at + 16, u64::from(count), 16, kv_start, "xattr id table"),
        })
    }

    fn kv_cursor(&self, tables: &XattrTables, r: u64) -> Result<MdCursor<'_>> {
        let block = tables.kv_start.checked_add(r >> 16).ok_or(Error::corrupt("xattr reference", tables.kv_start))?;
        let offset = (r & 0xffff) as usize;
        if offset >= METADATA_SIZE {
            return Err(Error::corrupt("xattr reference", block));
        }
        let bounds = Bounds { start: tables.kv_start, end: tables.kv_end, what: "xattr table" };
        self.cursor(block, offset, bounds)
    }

    /// Calls `f(full_name, value)` for each attribute; values are read only if `want_value`
    /// says so for that name.
    fn each_xattr(
        &self,
        inode: &Inode,
        want_value: &dyn Fn(&[u8]) -> bool,
        f: &mut dyn FnMut(Vec<u8>, Option<Vec<u8>>) -> bool,
    ) -> Result<()> {
        let Some(id) = inode.xattr else { return Ok(()) };
        let tables = self.xattr.as_ref().ok_or(Error::corrupt("xattr table missing", 0))?;
        let entry = self.xattr_id(id)?;
        let mut c = self.kv_cursor(tables, entry.kv_ref)?;
        for _ in 0..entry.count {
            let t = c.u16()?;
            let name_len = usize::from(c.u16()?);
            let name = c.vec(name_len)?;
            let vsize = c.u32()?;
            let Some(p) = prefix(t) else {
                if t & OUT_OF_LINE != 0 && vsize != 8 {
                    return Err(c.corrupt("out-of-line xattr reference size"));
                }
                c.skip(u64::from(vsize))?;
                continue;
            };
            let mut full = p.to_vec();
            full.extend_from_slice(&name);
            let wanted = want_value(&full);
            let value = if t & OUT_OF_LINE != 0 {
                if vsize != 8 {
                    return Err(c.corrupt("out-of-line xattr reference size"));
                }
                let r = c.u64()?;
                if wanted {
                    Some(self.read_value(&mut self.kv_cursor(tables, r)?)?)
                } else {
                    None
                }
            } else if wanted {
                Some(self.value_bytes(&mut c, vsize)?)
            } else {
                c.skip(u64::from(vsize))?;
                None
            };
            if !f(full, value) {
                break;
            }
        }
        Ok(())
    }

    fn read_value(&self, c: &mut MdCursor<'_>) -> Result<Vec<u8>> {
        let vsize = c.u32()?;
        self.value_bytes(c, vsize)
    }

    fn value_bytes(&self, c: &mut MdCursor<'_>, vsize: u32) -> Result<Vec<u8>> {
        if vsize > MAX_VALUE {
            return Err(c.corrupt("xattr value size"));
        }
        c.vec(vsize as usize)
    }

    pub(crate) fn list_xattr(&self, inode: &Inode) -> Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        self.each_xattr(inode, &|_| false, &mut |n, _| {
            names.push(n);
            true
        })?;
        Ok(names)
    }

    pub(crate) fn get_xattr(&self, inode: &Inode, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.each_xattr(inode, &|n| n == name, &mut |n, v| {
            if n == name {
                found = v;
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }
}
