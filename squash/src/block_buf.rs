//! Reused buffers for decompressed data and fragment blocks.
//!
//! A block buffer is 128 KiB by default, above glibc's mmap threshold (the daemon lowers it
//! to 64 KiB to keep freed blocks out of its RSS), so a fresh `Vec` per decompression costs an
//! `mmap`, a zeroing page fault per 4 KiB and a `munmap`: a tenth of the CPU time of a cold
//! random read. A few freed buffers wait here instead, to be filled again.

use std::sync::Mutex;

/// Buffers kept for reuse, at most; more are freed.
const KEPT: usize = 8;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A byte buffer that goes back to the free list when dropped.
#[derive(Debug, Default)]
pub(crate) struct BlockBuf(Vec<u8>);

impl BlockBuf {
    /// A buffer of `len` bytes whose contents are unspecified (a reused buffer keeps old
    /// bytes); the caller overwrites what it keeps.
    pub(crate) fn with_len(len: usize) -> BlockBuf {
        let reused = FREE.lock().ok().and_then(|mut free| {
            let at = free.iter().rposition(|b| b.capacity() >= len)?;
            Some(free.swap_remove(at))
        });
        let mut buf = reused.unwrap_or_default();
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
        let buf = std::mem::take(&mut self.0);
        if buf.capacity() == 0 {
            return;
        }
        if let Ok(mut free) = FREE.lock() {
            if free.len() < KEPT {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BlockBuf;

    #[test]
    fn a_dropped_buffer_is_reused_with_its_length_restored() {
        let mut a = BlockBuf::with_len(4096);
        a.as_mut_slice().fill(7);
        a.truncate(100);
        assert_eq!(a.len(), 100);
        let ptr = a.as_ptr();
        drop(a);
        // Other tests run in parallel and share the list: look for ours among a few takes.
        let taken: Vec<BlockBuf> = (0..super::KEPT).map(|_| BlockBuf::with_len(4096)).collect();
        assert!(taken.iter().all(|b| b.len() == 4096));
        assert!(taken.iter().any(|b| b.as_ptr() == ptr), "the freed buffer was not reused");
    }
}
