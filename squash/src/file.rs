//! Regular file data: the block map, data blocks (compressed, uncompressed or sparse) and the
//! fragment tail.

use std::sync::Arc;

use crate::block_buf::BlockBuf;
use crate::cache::{Counters, Weighed};
use crate::error::{Error, Result};
use crate::inode::{FileBody, Inode};
use crate::Inner;

/// Size word bit: block stored uncompressed.
const UNCOMPRESSED: u32 = 1 << 24;
/// Offsets of every 64th block are kept; the others are summed from there.
const CHECKPOINT_EVERY: usize = 64;

/// Where each data block of a file is: its size words plus an absolute offset checkpoint
/// every 64 blocks (a 1 GiB file of 128 KiB blocks costs 33 KiB).
#[derive(Debug)]
pub struct BlockMap {
    sizes: Box<[u32]>,
    checkpoints: Box<[u64]>,
}

impl BlockMap {
    /// Number of data blocks.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// True for a file without data blocks (empty, or held entirely in a fragment).
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// `(absolute offset, size word)` of block `k`.
    pub fn block(&self, k: usize) -> (u64, u32) {
        let base = k / CHECKPOINT_EVERY * CHECKPOINT_EVERY;
        let mut at = self.checkpoints[k / CHECKPOINT_EVERY];
        for &w in &self.sizes[base..k] {
            at += u64::from(w & (UNCOMPRESSED - 1));
        }
        (at, self.sizes[k])
    }

    fn weight(&self) -> usize {
        self.sizes.len() * 4 + self.checkpoints.len() * 8
    }
}

thread_local! {
    /// The compressed bytes of the block being decompressed (one per thread, reused).
    static COMPRESSED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A decompressed data or fragment block.
#[derive(Debug)]
pub(crate) struct DataBlock(pub(crate) BlockBuf);

impl Weighed for DataBlock {
    fn weight(&self) -> u64 {
        self.0.len() as u64
    }
}

/// What a block's size word says about its bytes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// No bytes on disk: the block is all zeros.
    Sparse,
    /// Stored as is.
    Uncompressed(u32),
    /// Stored compressed.
    Compressed(u32),
}

/// Decodes a size word (data blocks and fragments use the same encoding).
pub fn block_kind(word: u32) -> BlockKind {
    let len = word & (UNCOMPRESSED - 1);
    if len == 0 {
        BlockKind::Sparse
    } else if word & UNCOMPRESSED != 0 {
        BlockKind::Uncompressed(len)
    } else {
        BlockKind::Compressed(len)
    }
}

impl Inner {
    /// The file's block map, built once on first use and kept in the cached inode.
    pub(crate) fn block_map(&self, file: &FileBody) -> Result<Arc<BlockMap>> {
        if let Some(map) = file.block_map.get() {
            return Ok(map.clone());
        }
        let sb = &self.superblock;
        let (block, offset) = file.block_list;
        let mut c = self.cursor(block, offset, self.inode_bounds())?;
        // Never trust block_count for an allocation: grow while the words are really there.
        let mut sizes = Vec::new();
        let mut checkpoints = Vec::new();
        let mut at = file.blocks_start;
        for k in 0..file.block_count {
            let word = c.u32()?;
            if word & !(UNCOMPRESSED | (UNCOMPRESSED - 1)) != 0 || word & (UNCOMPRESSED - 1) > sb.block_size {
                return Err(c.corrupt("data block size word"));
            }
            if k as usize % CHECKPOINT_EVERY == 0 {
                checkpoints.push(at);
            }
            at = at
                .checked_add(u64::from(word & (UNCOMPRESSED - 1)))
                .filter(|&end| end <= sb.inode_table)
                .ok_or(c.corrupt("data blocks run past the data area"))?;
            sizes.push(word);
        }
        let map = Arc::new(BlockMap { sizes: sizes.into(), checkpoints: checkpoints.into() });
        let _ = file.block_map.set(map.clone());
        tracing::trace!(bytes = map.weight(), "block map built");
        Ok(map)
    }

    /// Decompressed data block at `at` with on-disk length `len`; must produce exactly `expect`.
    fn data_block(&self, at: u64, len: u32, expect: usize) -> Result<Arc<DataBlock>> {
        let c = &self.counters;
        let block = self
            .data_cache
            .get_or_load(at, &c.data_hits, &c.data_misses, || self.decompress_block(at, len, "data block"))?;
        if block.0.len() != expect {
            return Err(Error::corrupt("data block decompressed to the wrong length", at));
        }
        Ok(block)
    }

    fn decompress_block(&self, at: u64, len: u32, what: &'static str) -> Result<DataBlock> {
        let mut out = BlockBuf::with_len(self.superblock.block_size as usize);
        let n = self.decompress(at, len, out.as_mut_slice(), what)?;
        out.truncate(n);
        Ok(DataBlock(out))
    }

    /// Decompresses the block at `at` into `dst`, which it must fill exactly.
    fn decompress_into(&self, at: u64, len: u32, dst: &mut [u8], what: &'static str) -> Result<()> {
        match self.decompress(at, len, dst, what)? {
            n if n == dst.len() => Ok(()),
            _ => Err(Error::corrupt("data block decompressed to the wrong length", at)),
        }
    }

    /// Decompresses the `len` bytes at `at` into `out`; returns the decompressed length.
    fn decompress(&self, at: u64, len: u32, out: &mut [u8], what: &'static str) -> Result<usize> {
        let n = COMPRESSED.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let raw = self.source.get_block(at, len as usize, &mut scratch, what)?;
            self.superblock.compressor.decompress(raw, out).map_err(|()| Error::corrupt(what, at))
        })?;
        Counters::bump(&self.counters.decompressed_bytes, n as u64);
        Ok(n)
    }

    /// The decompressed fragment block number `index`.
    fn fragment_block(&self, index: u32) -> Result<Arc<DataBlock>> {
        let entry = self.fragment(index)?;
        let c = &self.counters;
        match block_kind(entry.size) {
            BlockKind::Sparse => Err(Error::corrupt("empty fragment block", entry.start)),
            _ if entry.size & (UNCOMPRESSED - 1) > self.superblock.block_size => {
                Err(Error::corrupt("fragment block size", entry.start))
            }
            _ if entry
                .start
                .checked_add(u64::from(entry.size & (UNCOMPRESSED - 1)))
                .is_none_or(|end| end > self.superblock.inode_table) =>
            {
                Err(Error::corrupt("fragment block outside the data area", entry.start))
            }
            BlockKind::Uncompressed(len) => {
                self.fragment_cache.get_or_load(entry.start, &c.fragment_hits, &c.fragment_misses, || {
                    let mut buf = BlockBuf::with_len(len as usize);
                    self.source.read_into(entry.start, buf.as_mut_slice(), "fragment block")?;
                    Ok(DataBlock(buf))
                })
            }
            BlockKind::Compressed(len) => {
                self.fragment_cache.get_or_load(entry.start, &c.fragment_hits, &c.fragment_misses, || {
                    self.decompress_block(entry.start, len, "fragment block")
                })
            }
        }
    }

    /// Reads file bytes at `offset` into `buf`; returns the count (short only at end of file).
    pub(crate) fn read_at(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let file = inode.file()?;
        if offset >= inode.size || buf.is_empty() {
            return Ok(0);
        }
        let bs = u64::from(self.superblock.block_size);
        let end = inode.size.min(offset.saturating_add(buf.len() as u64));
        let map = if file.block_count > 0 { Some(self.block_map(file)?) } else { None };
        if let Some(map) = &map {
            self.ask_for_blocks(map, offset / bs, (end - 1) / bs);
        }
        let mut pos = offset;
        while pos < end {
            let k = pos / bs;
            let within = (pos % bs) as usize;
            let block_start = k * bs;
            let logical = (inode.size - block_start).min(bs) as usize;
            let n = ((end - pos) as usize).min(logical - within);
            let dst = &mut buf[(pos - offset) as usize..][..n];
            match &map {
                Some(map) if k < file.block_count => {
                    let (at, word) = map.block(k as usize);
                    self.copy_block(at, word, logical, within, dst)?;
                }
                _ => self.copy_tail(file, inode.size - block_start, within, dst)?,
            }
            pos += n as u64;
        }
        Ok((end - offset) as usize)
    }

    /// A read of blocks `first..=last` (more than one): one hint for all their bytes, so the
    /// storage reads them in one go while the first is decompressed.
    pub(crate) fn ask_for_blocks(&self, map: &BlockMap, first: u64, last: u64) {
        let last = last.min(map.len() as u64 - 1);
        if first >= last {
            return;
        }
        let (start, _) = map.block(first as usize);
        let (at, word) = map.block(last as usize);
        let end = at + u64::from(word & (UNCOMPRESSED - 1));
        if end > start {
            self.source.will_need(start, end - start);
        }
    }

    fn copy_block(&self, at: u64, word: u32, logical: usize, within: usize, dst: &mut [u8]) -> Result<()> {
        match block_kind(word) {
            BlockKind::Sparse => dst.fill(0),
            BlockKind::Uncompressed(len) => {
                if len as usize != logical {
                    return Err(Error::corrupt("uncompressed block length", at));
                }
                self.source.read_into(at + within as u64, dst, "data block")?;
            }
            // A read of the whole block (sequential and page-store reads): decompressed straight
            // into the caller's buffer, not through the cache. The kernel's page cache keeps
            // what such a read returns; caching it too cost a copy of every block and kept up
            // to a cache's worth of blocks, plus one buffer per thread, on the daemon's RSS.
            BlockKind::Compressed(len) if within == 0 && dst.len() == logical => {
                let c = &self.counters;
                match self.data_cache.get(at, &c.data_hits) {
                    Some(block) if block.0.len() == logical => dst.copy_from_slice(&block.0),
                    Some(_) => return Err(Error::corrupt("data block decompressed to the wrong length", at)),
                    None => {
                        Counters::bump(&c.data_misses, 1);
                        self.decompress_into(at, len, dst, "data block")?;
                    }
                }
            }
            BlockKind::Compressed(len) => {
                let block = self.data_block(at, len, logical)?;
                dst.copy_from_slice(&block.0[within..within + dst.len()]);
            }
        }
        Ok(())
    }

    fn copy_tail(&self, file: &FileBody, tail_len: u64, within: usize, dst: &mut [u8]) -> Result<()> {
        let Some((index, frag_offset)) = file.fragment else {
            return Err(Error::corrupt("file data past its last block", file.blocks_start));
        };
        let block = self.fragment_block(index)?;
        let start = frag_offset as usize;
        if (start as u64).saturating_add(tail_len) > block.0.len() as u64 {
            return Err(Error::corrupt("fragment tail past the fragment block", u64::from(index)));
        }
        dst.copy_from_slice(&block.0[start + within..start + within + dst.len()]);
        Ok(())
    }
}
