//! Pushes whole decoded blocks into the kernel page cache (FUSE_NOTIFY_STORE).
//!
//! A 4 KiB random read of a SquashFS file costs the decompression of its whole block (128 KiB
//! by default). The kernel's own squashfs fills every page of the block from that one
//! decompression; a FUSE reader that answers only the 4 KiB asked for decompresses the block
//! again for each neighbouring page. After a small read is answered, its block span is queued
//! here; a background thread reads it (a cache hit in the reader) and stores it into the page
//! cache. Done after the reply, on another thread: the pages of the request being answered are
//! locked until the reply arrives, so storing them from the request thread would deadlock.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};

use crate::handles::FileHandle;

/// Largest span stored at once.
const MAX_SPAN: u64 = 1 << 20;
/// Pending spans; more are dropped (the data is only an optimisation).
const QUEUE: usize = 256;

struct Job {
    node: u64,
    file: Arc<FileHandle>,
    start: u64,
    len: u64,
}

/// The queue and its worker.
pub struct PageStore {
    sender: SyncSender<Job>,
    notifier: Arc<OnceLock<Notifier>>,
}

impl std::fmt::Debug for PageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageStore").field("ready", &self.notifier.get().is_some()).finish()
    }
}

impl PageStore {
    /// Starts the worker; it stays idle until [`PageStore::set_notifier`] is called.
    pub fn start() -> std::io::Result<PageStore> {
        let (sender, receiver) = sync_channel::<Job>(QUEUE);
        let notifier: Arc<OnceLock<Notifier>> = Arc::new(OnceLock::new());
        let worker_notifier = notifier.clone();
        std::thread::Builder::new().name("page-store".into()).spawn(move || {
            let mut buf = Vec::new();
            while let Ok(job) = receiver.recv() {
                let Some(notifier) = worker_notifier.get() else { continue };
                buf.resize(job.len as usize, 0);
                let Ok(n) = job.file.read_at(job.start, &mut buf) else { continue };
                // ENOENT (inode no longer cached) and similar are harmless: skip.
                let _ = notifier.store(INodeNo(job.node), job.start, &buf[..n]);
            }
        })?;
        Ok(PageStore { sender, notifier })
    }

    /// The handle the worker needs once the session exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Queues the decode units around a read of `[offset, offset + size)` that was smaller
    /// than a unit.
    pub fn after_read(&self, node: u64, file: &Arc<FileHandle>, offset: u64, size: u64) {
        let Some(unit) = file.decode_unit() else { return };
        if size >= unit || self.notifier.get().is_none() {
            return;
        }
        let start = offset / unit * unit;
        let end = (offset + size).div_ceil(unit) * unit;
        let len = (end - start).min(MAX_SPAN);
        let job = Job { node, file: file.clone(), start, len };
        if let Err(TrySendError::Disconnected(_)) = self.sender.try_send(job) {
            tracing::debug!("page store worker gone");
        }
    }
}
