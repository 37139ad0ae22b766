//! Metadata blocks (8 KiB units of the inode, directory, id, fragment, export and xattr
//! tables) and a cursor that reads objects straddling block boundaries.
//!
//! A block is a u16 header (bit 15 set = stored uncompressed, low 15 bits = on-disk length,
//! 1..=8192) followed by its bytes; the next block starts right after, so chains only move
//! forward and every cursor is bounded by the end of its table.

use std::sync::Arc;

use crate::cache::{Counters, Weighed};
use crate::error::{Error, Result};
use crate::Inner;

/// Largest decompressed metadata block.
pub const METADATA_SIZE: usize = 8192;

/// One decompressed metadata block.
#[derive(Debug)]
pub(crate) struct MdBlock {
    pub(crate) data: Box<[u8]>,
    /// Absolute offset of the block that follows this one.
    pub(crate) next: u64,
}

impl Weighed for MdBlock {
    fn weight(&self) -> u64 {
        self.data.len() as u64
    }
}

/// The byte range of the image a table's metadata blocks must lie in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) what: &'static str,
}

impl Inner {
    /// Reads (or finds in the cache) the metadata block at absolute offset `pos`, which must lie
    /// entirely inside `bounds`.
    pub(crate) fn md_block(&self, pos: u64, bounds: Bounds) -> Result<Arc<MdBlock>> {
        if pos < bounds.start || pos >= bounds.end {
            return Err(Error::corrupt(bounds.what, pos));
        }
        let c = &self.counters;
        let block = self
            .md_cache
            .get_or_load(pos, &c.metadata_hits, &c.metadata_misses, || self.load_md_block(pos, bounds.what))?;
        // The cache is keyed by offset only; a block cached for a wider table must still fit
        // the table asking now.
        if block.next > bounds.end {
            return Err(Error::corrupt(bounds.what, pos));
        }
        Ok(block)
    }

    fn load_md_block(&self, pos: u64, what: &'static str) -> Result<MdBlock> {
        let mut scratch = Vec::new();
        let header = self.source.get(pos, 2, &mut scratch, what)?;
        let header = u16::from_le_bytes([header[0], header[1]]);
        let len = usize::from(header & 0x7fff);
        if len == 0 || len > METADATA_SIZE {
            return Err(Error::corrupt(what, pos));
        }
        let body_at = pos + 2;
        let next = body_at + len as u64;
        let raw = self.source.get(body_at, len, &mut scratch, what)?;
        let data: Box<[u8]> = if header & 0x8000 != 0 {
            raw.into()
        } else {
            let mut out = vec![0u8; METADATA_SIZE];
            let n = self.superblock.compressor.decompress(raw, &mut out).map_err(|()| Error::corrupt(what, pos))?;
            if n == 0 {
                return Err(Error::corrupt(what, pos));
            }
            out.truncate(n);
            Counters::bump(&self.counters.decompressed_bytes, n as u64);
            out.into_boxed_slice()
        };
        Ok(MdBlock { data, next })
    }

    /// A cursor at `(block, offset)` of the table described by `bounds`.
    pub(crate) fn cursor(&self, block: u64, offset: usize, bounds: Bounds) -> Result<MdCursor<'_>> {
        let current = self.md_block(block, bounds)?;
        if offset >= current.data.len() {
            return Err(Error::corrupt(bounds.what, block));
        }
        Ok(MdCursor { inner: self, bounds, block, current, offset })
    }
}

/// Reads consecutive bytes of a metadata table across block boundaries.
pub(crate) struct MdCursor<'a> {
    inner: &'a Inner,
    bounds: Bounds,
    block: u64,
    current: Arc<MdBlock>,
    offset: usize,
}

impl MdCursor<'_> {
    /// Absolute offset of the current block, for error messages.
    pub(crate) fn block(&self) -> u64 {
        self.block
    }

    /// The current position as `(block, offset)`.
    pub(crate) fn position(&self) -> (u64, usize) {
        (self.block, self.offset)
    }

    pub(crate) fn corrupt(&self, what: &'static str) -> Error {
        Error::corrupt(what, self.block)
    }

    fn advance_block(&mut self) -> Result<()> {
        let next = self.current.next;
        self.current = self.inner.md_block(next, self.bounds)?;
        self.block = next;
        self.offset = 0;
        Ok(())
    }

    /// Fills `buf`, crossing into following blocks as needed.
    pub(crate) fn read(&mut self, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            if self.offset >= self.current.data.len() {
                self.advance_block()?;
            }
            let avail = &self.current.data[self.offset..];
            let n = avail.len().min(buf.len());
            buf[..n].copy_from_slice(&avail[..n]);
            self.offset += n;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Skips `n` bytes.
    pub(crate) fn skip(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            if self.offset >= self.current.data.len() {
                self.advance_block()?;
            }
            let avail = (self.current.data.len() - self.offset) as u64;
            let step = avail.min(n);
            self.offset += step as usize;
            n -= step;
        }
        Ok(())
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads `n` bytes into a new buffer; `n` must already be bounded by the caller.
    pub(crate) fn vec(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.read(&mut v)?;
        Ok(v)
    }
}
