//! Open file and directory handles. A directory handle keeps the merged listing built at
//! opendir, so offsets stay stable for its life (overlay_semantics.md §1.3).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parallaxfs_overlay::{DirItem, FileReader};

/// A handle table keyed by FUSE file handle numbers.
#[derive(Debug)]
pub struct Handles<T> {
    map: DashMap<u64, Arc<T>>,
    next: AtomicU64,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles { map: DashMap::new(), next: AtomicU64::new(1) }
    }
}

impl<T> Handles<T> {
    /// Stores `value`, returning its handle number.
    pub fn insert(&self, value: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.insert(fh, Arc::new(value));
        fh
    }

    /// The value of handle `fh`.
    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.map.get(&fh).map(|v| v.clone())
    }

    /// Releases handle `fh`.
    pub fn remove(&self, fh: u64) {
        self.map.remove(&fh);
    }
}

/// An open regular file.
pub type FileHandle = Box<dyn FileReader>;

/// An open directory: its listing, `.` and `..` first.
#[derive(Debug)]
pub struct DirHandle {
    /// Node id of the directory.
    pub dir: u64,
    /// `st_ino` of its parent directory (`d_ino` of `..`).
    pub parent: u64,
    /// Entries after `.` and `..`.
    pub items: Vec<DirItem>,
}
