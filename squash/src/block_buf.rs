//! Reused buffers for decompressed data and fragment blocks.
//!
//! A block buffer is 128 KiB by default, above glibc's mmap threshold (the daemon lowers it
//! to 64 KiB to keep freed blocks out of its RSS), so a fresh `Vec` per decompression costs an
//! `mmap`, a zeroing page fault per 4 KiB and a `munmap`: a tenth of the CPU time of a cold
//! random read. A few freed buffers wait here instead, to be filled again.

use std::sync::Mutex;

/// Buffers kept for reuse, at most; more are freed.
const KEPT: usize = 8;
/// Bytes kept for reuse, at most (8 blocks of 128 KiB, one of 1 MiB).
const KEPT_BYTES: usize = 1 << 20;

/// Freed buffers waiting to be reused.
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    /// A freed buffer of at least `len` bytes' capacity, if one waits.
    fn take(&self, len: usize) -> Option<Vec<u8>> {
        let mut free = self.0.lock().ok()?;
        let at = free.iter().rposition(|b| b.capacity() >= len)?;
        Some(free.swap_remove(at))
    }

    /// Keeps `buf` for reuse while the pool holds fewer than [`KEPT`] buffers and
    /// [`KEPT_BYTES`] bytes; frees it otherwise.
    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        if let Ok(mut free) = self.0.lock() {
            let kept: usize = free.iter().map(Vec::capacity).sum();
            if free.len() < KEPT && kept + buf.capacity() <= KEPT_BYTES {
                free.push(buf);
            }
        }
    }
}

static FREE: Pool = Pool(Mutex::new(Vec::new()));

/// A byte buffer that goes back to the pool when dropped.
#[derive(Debug, Default)]
pub(crate) struct BlockBuf(Vec<u8>);

impl BlockBuf {
    /// A buffer of `len` bytes whose contents are unspecified (a reused buffer keeps old
    /// bytes); the caller overwrites what it keeps.
    pub(crate) fn with_len(len: usize) -> BlockBuf {
        let mut buf = FREE.take(len).unwrap_or_default();
        buf.resize(len, 0);
        BlockBuf(buf)
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
    use super::{Pool, KEPT, KEPT_BYTES};
    use std::sync::Mutex;

    #[test]
    fn the_pool_reuses_buffers_within_its_count_and_byte_limits() {
        let pool = Pool(Mutex::new(Vec::new()));
        let small = vec![7u8; 4096];
        let ptr = small.as_ptr();
        pool.give(small);
        let again = pool.take(4096).expect("the freed buffer waits");
        assert_eq!(again.as_ptr(), ptr, "the same buffer comes back");
        assert!(pool.take(1).is_none(), "taken once only");
        for _ in 0..KEPT + 3 {
            pool.give(Vec::with_capacity(1024));
        }
        assert_eq!(pool.0.lock().unwrap().len(), KEPT, "at most {KEPT} buffers");
        assert!(pool.take(2048).is_none(), "none of them is large enough for 2 KiB");
        let pool = Pool(Mutex::new(Vec::new()));
        pool.give(Vec::with_capacity(KEPT_BYTES));
        pool.give(Vec::with_capacity(4096));
        assert_eq!(pool.0.lock().unwrap().len(), 1, "at most {KEPT_BYTES} bytes");
    }
}
