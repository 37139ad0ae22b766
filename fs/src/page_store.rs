//! Pushes whole decoded blocks into the kernel page cache (FUSE_NOTIFY_STORE).
//!
//! A 4 KiB random read of a SquashFS file costs the decompression of its whole block (128 KiB
//! by default). The kernel's own squashfs fills every page of the block from that one
//! decompression; a FUSE reader that answers only the 4 KiB asked for decompresses the block
//! again for each neighbouring page. So a small read reads the whole block span into a buffer
//! from here (one decompression), answers from its slice, and hands the buffer to a background
//! thread that stores it into the page cache. Done after the reply, on another thread: the
//! pages of the request being answered are locked until the reply arrives, and a store waits
//! for the locks of pages other queued reads hold, so storing from request threads could
//! deadlock them all. The buffer carries the bytes: re-reading the block on the worker would
//! decompress it a second time whenever the block cache dropped it meanwhile (it did, for
//! half of all blocks of a cold random read with four readers).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};
use parallaxfs_overlay::squash::BufferPool;

use crate::handles::FileHandle;

/// Largest span stored at once.
const MAX_SPAN: u64 = 1 << 20;
/// Pending spans; more are dropped (the data is only an optimisation).
const QUEUE: usize = 64;
/// Bytes of pending spans; more are dropped. A store can wait for page locks that queued
/// reads hold, so under cold random reads the queue fills: 64 blocks of 128 KiB put 8 MiB on
/// the daemon's peak RSS, which this bound caps.
const QUEUED_BYTES: usize = 1 << 20;

struct Job {
    node: u64,
    start: u64,
    bytes: Vec<u8>,
}

/// The queue and its worker.
pub struct PageStore {
    sender: SyncSender<Job>,
    notifier: Arc<OnceLock<Notifier>>,
    free: Arc<BufferPool>,
    /// Bytes of the spans in the queue and in the worker's hands.
    queued: Arc<ByteBudget>,
    /// Whether the worker runs; without it no span is ever asked for.
    enabled: bool,
}

impl std::fmt::Debug for PageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageStore").field("ready", &self.notifier.get().is_some()).finish()
    }
}

impl PageStore {
    /// Starts the worker when `enabled` (read-only stacks: with an upper layer nothing is
    /// stored, see `OverlayFs::read`, and a thread per container would be started for
    /// nothing); it stays idle until the session's notifier is in [`PageStore::notifier_slot`].
    pub fn start(enabled: bool) -> std::io::Result<PageStore> {
        let (sender, receiver) = sync_channel::<Job>(QUEUE);
        let notifier: Arc<OnceLock<Notifier>> = Arc::new(OnceLock::new());
        let worker_notifier = notifier.clone();
        // Two spans' worth of buffers wait for reuse.
        let free = Arc::new(BufferPool::new(2, 2 * MAX_SPAN as usize));
        let queued = Arc::new(ByteBudget::new(QUEUED_BYTES));
        if !enabled {
            return Ok(PageStore { sender, notifier, free, queued, enabled });
        }
        let worker_free = free.clone();
        let worker_queued = queued.clone();
        std::thread::Builder::new().name("page-store".into()).spawn(move || {
            while let Ok(job) = receiver.recv() {
                if let Some(notifier) = worker_notifier.get() {
                    // ENOENT (inode no longer cached) and similar are harmless: skip.
                    let _ = notifier.store(INodeNo(job.node), job.start, &job.bytes);
                }
                worker_queued.release(job.bytes.len());
                worker_free.give(job.bytes);
            }
        })?;
        Ok(PageStore { sender, notifier, free, queued, enabled })
    }

    /// The handle the worker needs once the session exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// The span of whole decode units around a read of `[offset, offset + size)` smaller than
    /// one unit: `(start, len)`, or None when nothing should be stored.
    pub fn span(&self, file: &FileHandle, offset: u64, size: u64) -> Option<(u64, u64)> {
        let unit = file.decode_unit()?;
        if !self.enabled || size >= unit || self.notifier.get().is_none() {
            return None;
        }
        let start = offset / unit * unit;
        let end = offset.saturating_add(size).div_ceil(unit).saturating_mul(unit);
        // The span must hold the whole request (it is answered from it): a read across the
        // boundary of two large units (1 MiB blocks) is read as asked, not stored.
        (end - start <= MAX_SPAN).then_some((start, end - start))
    }

    /// A buffer of `len` bytes (contents unspecified) to read a span into.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        self.free.take(len)
    }

    /// Queues `bytes`, read at `start` of FUSE node `node`, for storing into the page cache.
    pub fn store(&self, node: u64, start: u64, bytes: Vec<u8>) {
        let len = bytes.len();
        if !self.queued.try_reserve(len) {
            self.free.give(bytes);
            return;
        }
        let job = match self.sender.try_send(Job { node, start, bytes }) {
            Ok(()) => return,
            Err(TrySendError::Full(job)) => job,
            Err(TrySendError::Disconnected(job)) => {
                tracing::debug!("page store worker gone");
                job
            }
        };
        self.queued.release(len);
        self.free.give(job.bytes);
    }
}

/// A count of bytes held, refused past a limit.
#[derive(Debug)]
struct ByteBudget {
    held: AtomicUsize,
    limit: usize,
}

impl ByteBudget {
    fn new(limit: usize) -> ByteBudget {
        ByteBudget { held: AtomicUsize::new(0), limit }
    }

    /// Takes `len` bytes of the budget if they fit.
    fn try_reserve(&self, len: usize) -> bool {
        let limit = self.limit;
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(len).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    /// Gives back `len` bytes taken by [`ByteBudget::try_reserve`].
    fn release(&self, len: usize) {
        self.held.fetch_sub(len, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_does_not_fit_until_bytes_come_back() {
        let budget = ByteBudget::new(QUEUED_BYTES);
        let block = 128 << 10;
        let taken = (0..QUEUED_BYTES / block + 3).filter(|_| budget.try_reserve(block)).count();
        assert_eq!(taken, QUEUED_BYTES / block);
        assert!(!budget.try_reserve(1));
        budget.release(block);
        assert!(!budget.try_reserve(block + 1));
        assert!(budget.try_reserve(block));
        assert!(!budget.try_reserve(usize::MAX));
    }

    #[test]
    fn a_store_without_a_worker_gives_its_bytes_back() {
        let store = PageStore::start(false).unwrap();
        for _ in 0..3 {
            store.store(1, 0, vec![0; QUEUED_BYTES]);
        }
        assert_eq!(store.queued.held.load(Ordering::Relaxed), 0);
    }
}
