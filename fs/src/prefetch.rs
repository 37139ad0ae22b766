//! Reads the small files of a directory into the kernel page cache before anyone asks for
//! them (read-only mounts).
//!
//! A tool that reads a whole tree file by file (mksquashfs packing a union, `tar`, a copy)
//! waits for one FUSE `READ` round trip per small file, and on cold storage for one disk or
//! network latency (or one decompression) per file as well, one after the other. The regular
//! files of a listed directory up to [`MAX_FILE`] are taken in name order, and worker threads
//! read them and store them into the page cache (FUSE_NOTIFY_STORE): the reader finds them
//! cached, and the storage sees several reads in flight instead of one.
//!
//! A listing (`READDIRPLUS`) parks the directory's candidates. The kernel knows the entries'
//! inodes (a store needs them) only once the lister has taken the reply in, so they are queued
//! on a later request that shows it has: in [`Mode::OnListing`] (`prefetch=N`, for tools that
//! read everything they list) the next `READDIRPLUS` or the `RELEASEDIR` of that directory, or
//! the first read of one of its files; in [`Mode::OnFirstRead`] (read-only mounts by default)
//! only that first read, so a walk that lists and stats (`find`, `ls -R`) reads nothing more.
//! Stores are done off the request threads: a page locked by a `READ` being answered is only
//! released by that reply.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use fuser::{INodeNo, Notifier};
use parallaxfs_overlay::{Node, Stack};

/// Largest file read ahead (larger ones get the kernel's own readahead).
pub const MAX_FILE: u64 = 1 << 20;
/// Files waiting; more are not prefetched (the data is only an optimisation).
const QUEUE: usize = 1 << 16;
/// Directories whose lists wait for a first read; past this the parked lists are dropped.
const PARKED_DIRS: usize = 4096;
/// Threads of the on-first-read mode (the default of read-only mounts).
pub const DEFAULT_THREADS: usize = 2;

/// When a listed directory's files are read ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As soon as the directory is listed.
    OnListing,
    /// When the first file of the directory is read.
    OnFirstRead,
}

struct Job {
    ino: u64,
    node: Node,
    size: u64,
}

/// A directory's prefetch candidates: `(FUSE id, size)` in name order.
pub type Candidates = Vec<(u64, u64)>;

/// Files to read, shared by the workers. Not a `sync_channel`: std's bounded channel
/// allocates and touches every slot up front (3 MiB, 4 ms of every mount, for a queue that is
/// mostly empty).
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl Queue {
    /// Adds `job` unless the queue is full; false when full or closed.
    fn push(&self, job: Job) -> bool {
        let Ok(mut state) = self.state.lock() else { return false };
        if state.closed || state.jobs.len() >= QUEUE {
            return false;
        }
        state.jobs.push_back(job);
        self.ready.notify_one();
        true
    }

    /// The next job; None once closed.
    fn pop(&self) -> Option<Job> {
        let mut state = self.state.lock().ok()?;
        loop {
            if state.closed {
                return None;
            }
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            state = self.ready.wait(state).ok()?;
        }
    }

    fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
            state.jobs.clear();
        }
        self.ready.notify_all();
    }
}

/// The queue and its workers.
pub struct Prefetch {
    mode: Mode,
    queue: Arc<Queue>,
    parked: Mutex<HashMap<u64, Candidates>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Prefetch {
    /// Starts `threads` workers reading through `stack` and storing through the notifier
    /// once the session has put it in `notifier`.
    pub fn start(
        mode: Mode,
        stack: Arc<Stack>,
        notifier: Arc<OnceLock<Notifier>>,
        threads: usize,
    ) -> std::io::Result<Prefetch> {
        let queue = Arc::new(Queue::default());
        for i in 0..threads.max(1) {
            let (stack, notifier, queue) = (stack.clone(), notifier.clone(), queue.clone());
            std::thread::Builder::new().name(format!("prefetch-{i}")).spawn(move || work(&stack, &notifier, &queue))?;
        }
        Ok(Prefetch { mode, queue, parked: Mutex::new(HashMap::new()) })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Queues files now (`(FUSE id, node, size)`, in the order to read them).
    pub fn queue(&self, files: impl IntoIterator<Item = (u64, Node, u64)>) {
        for (ino, node, size) in files {
            if !self.queue.push(Job { ino, node, size }) {
                return;
            }
        }
    }

    /// Keeps directory `dir`'s candidates until [`Prefetch::take_parked`] asks for them.
    pub fn park(&self, dir: u64, files: Candidates) {
        let Ok(mut parked) = self.parked.lock() else { return };
        if parked.len() >= PARKED_DIRS && !parked.contains_key(&dir) {
            parked.clear();
        }
        parked.entry(dir).or_default().extend(files);
    }

    /// The parked candidates of directory `dir`, once.
    pub fn take_parked(&self, dir: u64) -> Option<Candidates> {
        self.parked.lock().ok()?.remove(&dir)
    }
}

fn work(stack: &Stack, notifier: &OnceLock<Notifier>, queue: &Queue) {
    while let Some(job) = queue.pop() {
        let Some(notifier) = notifier.get() else { continue };
        let Ok(file) = stack.open(&job.node) else { continue };
        // A buffer per file: large ones go back to the system at once (no RSS kept idle).
        let mut buf = vec![0u8; job.size as usize];
        let Ok(n) = file.read_at(0, &mut buf) else { continue };
        // fuser reports an inode the kernel has dropped meanwhile as Ok.
        if let Err(e) = notifier.store(INodeNo(job.ino), 0, &buf[..n]) {
            tracing::debug!(ino = job.ino, error = %e, "prefetch store refused");
        }
    }
}
