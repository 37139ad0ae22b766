//! Reused buffers for decompressed data and fragment blocks.
//!
//! A block buffer is 128 KiB by default, above glibc's mmap threshold (the daemon lowers it
//! to 64 KiB to keep freed blocks out of its RSS), so a fresh `Vec` per decompression costs an
//! `mmap`, a zeroing page fault per 4 KiB and a `munmap`: a tenth of the CPU time of a cold
//! random read. A few freed buffers wait here instead, to be filled again.

use std::sync::Mutex;

/// Freed byte buffers waiting to be filled again, up to a count and a byte total (a fresh
/// buffer over the mmap threshold costs a zeroing fault per page). Also used by the FUSE side
/// for the spans it stores into the page cache.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    kept: usize,
    kept_bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `kept` buffers and `kept_bytes` bytes.
    pub const fn new(kept: usize, kept_bytes: usize) -> BufferPool {
        BufferPool { free: Mutex::new(Vec::new()), kept, kept_bytes }
    }

    /// A buffer of `len` bytes whose contents are unspecified (a reused buffer keeps old
    /// bytes): the caller overwrites what it keeps.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut free| {
            let at = free.iter().rposition(|b| b.capacity() >= len)?;
            Some(free.swap_remove(at))
        });
        let mut buf = reused.unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Keeps `buf` for reuse within the pool's limits; frees it otherwise.
    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            let kept: usize = free.iter().map(Vec::capacity).sum();
            if free.len() < self.kept && kept + buf.capacity() <= self.kept_bytes {
                free.push(buf);
            }
        }
    }
}

/// Block buffers: 8 blocks of 128 KiB, one of 1 MiB.
static FREE: BufferPool = BufferPool::new(8, 1 << 20);

/// A byte buffer that goes back to the pool when dropped.
#[derive(Debug, Default)]
pub(crate) struct BlockBuf(Vec<u8>);

impl BlockBuf {
    /// A buffer of `len` bytes whose contents are unspecified (a reused buffer keeps old
    /// bytes); the caller overwrites what it keeps.
    pub(crate) fn with_len(len: usize) -> BlockBuf {
        BlockBuf(FREE.take(len))
    }

    /// Shortens the buffer to its first `len` bytes.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl std::ops::Deref for BlockBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for BlockBuf {
    fn drop(&mut self) {
        FREE.give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::BufferPool;

    #[test]
    fn the_pool_reuses_buffers_within_its_count_and_byte_limits() {
        let pool = BufferPool::new(8, 1 << 20);
        let small = vec![7u8; 4096];
        let ptr = small.as_ptr();
        pool.give(small);
        let again = pool.take(4096);
        assert_eq!(again.as_ptr(), ptr, "the same buffer comes back");
        assert_eq!(again.len(), 4096);
        assert!(pool.free.lock().unwrap().is_empty(), "taken once only");
        for _ in 0..8 + 3 {
            pool.give(Vec::with_capacity(1024));
        }
        assert_eq!(pool.free.lock().unwrap().len(), 8, "at most 8 buffers");
        assert_eq!(pool.take(2048).len(), 2048, "a new buffer when none is large enough");
        assert_eq!(pool.free.lock().unwrap().len(), 8, "the small ones stay");
        let pool = BufferPool::new(8, 1 << 20);
        pool.give(Vec::with_capacity(1 << 20));
        pool.give(Vec::with_capacity(4096));
        assert_eq!(pool.free.lock().unwrap().len(), 1, "at most 1 MiB");
    }
}
