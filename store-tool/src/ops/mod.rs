//! The operations: [`migrate`], [`rmi`], [`list`], [`verify`], and [`recover`] (finishing or
//! undoing what interrupted runs left), which every writing operation runs first.

pub mod list;
pub mod migrate;
pub mod recover;
pub mod rmi;
pub mod verify;

use std::time::Duration;

use crate::error::Result;
use crate::messages::Logger;
use crate::store::lock::{LockFile, LockKind};
use crate::store::Store;

/// Takes the tool lock (`STORE/parallax-store.lock`), saying so when it has to wait.
pub fn tool_lock(store: &Store, timeout: Option<Duration>, log: &mut Logger<'_>) -> Result<LockFile> {
    let lock = LockFile::open(&store.tool_lock(), store.file_mode())?;
    lock.lock(LockKind::Exclusive, timeout, &store.root, || {
        log.info(&format!("Waiting for the store lock {} held by another run", store.tool_lock().display()));
    })?;
    Ok(lock)
}
