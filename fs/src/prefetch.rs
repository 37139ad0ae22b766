//! Reads the small files of each listed directory into the kernel page cache before anyone
//! asks (the `prefetch=N` mount option; read-only mounts).
//!
//! A tool that reads a whole tree file by file (mksquashfs packing a union, `tar`, a copy)
//! waits for one FUSE `READ` round trip per small file, and on cold storage for one disk or
//! network latency per file as well, one after the other. When a directory is listed
//! (`READDIRPLUS`, which also makes the kernel know every entry's inode), its regular files
//! up to [`MAX_FILE`] are queued here in name order; `N` worker threads read them and store
//! them into the page cache (FUSE_NOTIFY_STORE). The reader then finds them cached, and the
//! storage sees `N` reads in flight instead of one. Stores are done off the request threads:
//! a page locked by a `READ` being answered is only released by that reply.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use fuser::{INodeNo, Notifier};
use parallaxfs_overlay::{Node, Stack};

/// Largest file read ahead (larger ones get the kernel's own readahead).
pub const MAX_FILE: u64 = 1 << 20;
/// Files waiting; more are not prefetched (the data is only an optimisation).
const QUEUE: usize = 1 << 16;

struct Job {
    ino: u64,
    node: Node,
    size: u64,
}

/// The queue and its workers.
pub struct Prefetch {
    sender: SyncSender<Job>,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch").finish_non_exhaustive()
    }
}

impl Prefetch {
    /// Starts `threads` workers reading through `stack` and storing through the notifier
    /// once the session has put it in `notifier`.
    pub fn start(stack: Arc<Stack>, notifier: Arc<OnceLock<Notifier>>, threads: usize) -> std::io::Result<Prefetch> {
        let (sender, receiver) = sync_channel::<Job>(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..threads.max(1) {
            let (stack, notifier, receiver) = (stack.clone(), notifier.clone(), receiver.clone());
            std::thread::Builder::new()
                .name(format!("prefetch-{i}"))
                .spawn(move || work(&stack, &notifier, &receiver))?;
        }
        Ok(Prefetch { sender })
    }

    /// Queues the files of one listing (`(name, inode, node, size)`), in name order.
    pub fn queue(&self, mut files: Vec<(Vec<u8>, u64, Node, u64)>) {
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, ino, node, size) in files {
            match self.sender.try_send(Job { ino, node, size }) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return,
                Err(TrySendError::Disconnected(_)) => {
                    tracing::debug!("prefetch workers gone");
                    return;
                }
            }
        }
    }
}

fn work(stack: &Stack, notifier: &OnceLock<Notifier>, receiver: &Mutex<Receiver<Job>>) {
    let mut buf = Vec::new();
    loop {
        let job = match receiver.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let Some(notifier) = notifier.get() else { continue };
        let Ok(file) = stack.open(&job.node) else { continue };
        buf.resize(job.size as usize, 0);
        let Ok(n) = file.read_at(0, &mut buf) else { continue };
        store(notifier, job.ino, &buf[..n]);
    }
}

/// Stores `data` as the whole of inode `ino`. The kernel links the entries of a READDIRPLUS
/// reply to inodes only when the lister wakes up to read it, which can be just after the
/// job was taken: an unknown inode (ENOENT) is tried again for a few milliseconds, then left.
fn store(notifier: &Notifier, ino: u64, data: &[u8]) {
    for attempt in 0..RETRIES {
        match notifier.store(INodeNo(ino), 0, data) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_micros(100 << attempt.min(4)));
            }
            _ => return,
        }
    }
}

/// Tries for an inode the kernel does not know yet (about 10 ms in all).
const RETRIES: u32 = 8;
