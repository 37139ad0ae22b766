//! The additional image store on disk: its layout ([`layout`]), its c/storage metadata
//! ([`metadata`], [`json`]), locks ([`lock`]), atomic file operations ([`publish`]), the
//! per-run staging area and journal ([`journal`]), and the dummy layer's tar ([`tarsplit`]).

pub mod journal;
pub mod json;
pub mod layout;
pub mod lock;
pub mod metadata;
pub mod publish;
pub mod tarsplit;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

pub use layout::Store;
pub use metadata::Metadata;

use crate::error::Result;
use lock::{LockFile, LockKind};

/// `layers.json` and `images.json` read under their c/storage locks, held (exclusively) until
/// this is dropped. Lock order: layers, then images, as c/storage takes them.
#[derive(Debug)]
pub struct LockedMetadata<'a> {
    store: &'a Store,
    layers_lock: LockFile,
    images_lock: LockFile,
    /// Both files as read after locking.
    pub meta: Metadata,
}

impl<'a> LockedMetadata<'a> {
    /// Locks both files (waiting up to `timeout`), then reads and checks them.
    pub fn acquire(store: &'a Store, timeout: Option<Duration>, on_wait: &dyn Fn(&Path)) -> Result<LockedMetadata<'a>> {
        let layers_lock = LockFile::open(&store.layers_lock(), store.file_mode())?;
        layers_lock.lock(LockKind::Exclusive, timeout, &store.root, || on_wait(layers_lock.path()))?;
        let images_lock = LockFile::open(&store.images_lock(), store.file_mode())?;
        images_lock.lock(LockKind::Exclusive, timeout, &store.root, || on_wait(images_lock.path()))?;
        let meta = Metadata::read(&store.layers_json(), &store.images_json())?;
        meta.check(&store.layers_json(), &store.images_json())?;
        Ok(LockedMetadata { store, layers_lock, images_lock, meta })
    }

    /// Replaces `layers.json` (new token first, then the atomic rename).
    pub fn write_layers(&self, items: &[Value]) -> Result<()> {
        self.layers_lock.write_token()?;
        publish::write_atomic(&self.store.layers_json(), &json::to_go_json(items), self.store.file_mode())
    }

    /// Replaces `images.json` (new token first, then the atomic rename).
    pub fn write_images(&self, items: &[Value]) -> Result<()> {
        self.images_lock.write_token()?;
        publish::write_atomic(&self.store.images_json(), &json::to_go_json(items), self.store.file_mode())
    }
}

/// Reads both files of a store under shared locks (for `list`, `verify` and the read-only
/// "already migrated?" check). Missing lock files are not created: a read never writes.
pub fn read_shared(store: &Store, timeout: Option<Duration>) -> Result<Metadata> {
    let mut locks = Vec::new();
    for path in [store.layers_lock(), store.images_lock()] {
        if path.exists() {
            let lock = LockFile::open_read_only(&path)?;
            lock.lock(LockKind::Shared, timeout, &store.root, || {})?;
            locks.push(lock);
        }
    }
    let meta = Metadata::read(&store.layers_json(), &store.images_json())?;
    drop(locks);
    Ok(meta)
}
