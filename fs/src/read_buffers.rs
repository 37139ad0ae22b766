//! Buffers of the reads answered as asked (up to 1 MiB each), shared by the request threads.
//!
//! Two are kept between reads (a buffer per thread kept 4 MiB for good after one sequential
//! read), and at most one per core is out at once: no more reads than cores decompress at a
//! time, and each further one held its own megabyte while it waited for a core (with four
//! request threads on two cores the daemon peaked at 9.5–9.9 MiB during a sequential read).

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};

use parallaxfs_overlay::squash::{cores, BufferPool};

/// The largest read the kernel may send (max_pages 256 × 4 KiB; also the readahead asked for).
pub(crate) const MAX_READ: usize = 1 << 20;

static POOL: BufferPool = BufferPool::new(2, 2 * MAX_READ);
static OUT: Mutex<usize> = Mutex::new(0);
static RETURNED: Condvar = Condvar::new();

/// A poisoned count is still a count: a thread that panicked while holding it changed nothing.
fn out() -> MutexGuard<'static, usize> {
    OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A read buffer; returned to the pool when dropped.
pub(crate) struct ReadBuf(Vec<u8>);

impl ReadBuf {
    /// A buffer of `len` bytes (at most [`MAX_READ`]), once fewer than one per core are out.
    /// Its contents are unspecified: the caller overwrites what it sends.
    pub(crate) fn take(len: usize) -> ReadBuf {
        let limit = cores().max(1);
        let mut n = out();
        while *n >= limit {
            n = RETURNED.wait(n).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *n += 1;
        drop(n);
        ReadBuf(POOL.take(len.min(MAX_READ)))
    }
}

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        POOL.give(std::mem::take(&mut self.0));
        *out() -= 1;
        RETURNED.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn no_more_buffers_than_cores_are_out_at_once() {
        let most = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4 * cores().max(1))
            .map(|_| {
                let (most, now) = (most.clone(), now.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let mut buf = ReadBuf::take(4096);
                        let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(held, Ordering::SeqCst);
                        buf[0] = 1;
                        std::thread::yield_now();
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a reader thread panicked");
        }
        let most = most.load(Ordering::SeqCst);
        // (A buffer that never came back would have hung the 50 takes of each thread.)
        assert!(most >= 1 && most <= cores().max(1), "{most} buffers out at once, {} cores", cores());
    }

    #[test]
    fn a_buffer_has_the_length_asked_up_to_the_largest_read() {
        assert_eq!(ReadBuf::take(5000).len(), 5000);
        assert_eq!(ReadBuf::take(4 * MAX_READ).len(), MAX_READ);
    }
}
