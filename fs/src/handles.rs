//! Open file handles. (Directories have none: see `crate::listing`.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parallaxfs_overlay::FileReader;

/// A handle table keyed by FUSE file handle numbers.
#[derive(Debug)]
pub struct Handles<T> {
    map: DashMap<u64, Arc<T>>,
    next: AtomicU64,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles { map: crate::new_map(), next: AtomicU64::new(1) }
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

/// An open regular file: a lower file read through its layer, or an upper file's fd.
#[derive(Debug)]
pub enum FileHandle {
    /// Read-only, from a lower layer.
    Lower(Box<dyn FileReader>),
    /// An upper file (read and written with pread/pwrite).
    Upper(std::fs::File),
}

impl FileHandle {
    /// Reads at `offset`; fewer bytes only at end of file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, parallaxfs_overlay::Error> {
        match self {
            FileHandle::Lower(r) => r.read_at(offset, buf),
            FileHandle::Upper(f) => {
                let mut done = 0;
                while done < buf.len() {
                    match std::os::unix::fs::FileExt::read_at(f, &mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(done)
            }
        }
    }

    /// Size of the unit a lower layer decodes at once (see `FileReader::decode_unit`).
    pub fn decode_unit(&self) -> Option<u64> {
        match self {
            FileHandle::Lower(r) => r.decode_unit(),
            FileHandle::Upper(_) => None,
        }
    }

    /// The upper file, for writes.
    pub fn upper(&self) -> Option<&std::fs::File> {
        match self {
            FileHandle::Upper(f) => Some(f),
            FileHandle::Lower(_) => None,
        }
    }
}
