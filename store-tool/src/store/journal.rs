//! Per-run staging directories and their journals (store_format.md §6 items 7 and 10).
//!
//! Every writing run gets `STORE/.parallax-staging/<run>/`, created while the tool lock is
//! held, holding `lock` (exclusively locked for the run's whole life) and `journal.json`
//! (what the run is about to publish or remove, written before the first rename into the
//! store). Everything a migration builds (layer dir, big-data dir, side-car) is built there and
//! renamed into place. A run that dies leaves its directory behind with its lock free; the next
//! run (holding the tool lock) finds it, rolls its journal forward or back, and removes it.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::store::layout::{random_suffix, Store};
use crate::store::lock::{LockFile, LockKind};
use crate::store::publish;

/// Name of the lock file inside a staging directory.
const LOCK: &str = "lock";
/// Name of the journal inside a staging directory.
const JOURNAL: &str = "journal.json";

/// What a run intends to do to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Journal {
    /// A migration publishing image `image` with its one layer `layer` (link `link`).
    Migrate {
        /// New image ID.
        image: String,
        /// New layer ID.
        layer: String,
        /// New layer's link name.
        link: String,
        /// Host the run ran on, and the local mountpoint of its flattening mount.
        host: String,
        /// The flattening mountpoint (local to `host`).
        mountpoint: Option<PathBuf>,
    },
    /// A removal of image `image` and the layers only it used (ID and link name).
    Rmi {
        /// Image ID being removed.
        image: String,
        /// Layers being removed: (ID, link name if known).
        layers: Vec<(String, Option<String>)>,
    },
}

/// This run's staging directory; its lock is held until it is dropped or finished.
#[derive(Debug)]
pub struct Staging {
    /// `STORE/.parallax-staging/<run>/`.
    pub dir: PathBuf,
    _lock: LockFile,
}

impl Staging {
    /// Creates a fresh staging directory and locks it. The caller holds the tool lock, so no
    /// recovering run can see the directory before its lock is taken.
    pub fn create(store: &Store) -> Result<Staging> {
        let root = store.staging_root();
        store.ensure_dir(&root)?;
        let dir = root.join(format!("{}-{}", std::process::id(), random_suffix()));
        fs::create_dir(&dir).ctx("mkdir", &dir)?;
        let lock = LockFile::open(&dir.join(LOCK), 0o600)?;
        if !lock.try_lock(LockKind::Exclusive)? {
            return Err(Error::Other(format!("{}: locked by another process right after creation", dir.display())));
        }
        Ok(Staging { dir, _lock: lock })
    }

    /// Writes the journal (atomically, fsynced) before anything is published.
    pub fn write_journal(&self, journal: &Journal) -> Result<()> {
        let bytes = serde_json::to_vec(journal).map_err(|e| Error::Other(format!("encoding journal: {e}")))?;
        publish::write_atomic(&self.dir.join(JOURNAL), &bytes, 0o600)?;
        publish::sync_dir(&self.dir)
    }

    /// A path inside the staging directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Removes the staging directory (the run is complete or rolled back).
    pub fn finish(self) -> Result<()> {
        publish::remove_tree(&self.dir)
    }
}

/// A staging directory left by a run that is no longer alive.
#[derive(Debug)]
pub struct Abandoned {
    /// Its path.
    pub dir: PathBuf,
    /// Its journal, if it got that far.
    pub journal: Option<Journal>,
    /// Held while the leftover is being dealt with.
    _lock: Option<LockFile>,
}

impl Abandoned {
    /// Removes the directory.
    pub fn remove(self) -> Result<()> {
        publish::remove_tree(&self.dir)
    }
}

/// Staging directories whose owner is gone (their lock is free), except `own`. A directory
/// whose journal is unreadable is reported with `journal: None` only if nothing was published
/// from it (an unreadable journal is written atomically, so it cannot be half-written).
pub fn abandoned(store: &Store, own: Option<&Path>) -> Result<Vec<Abandoned>> {
    let root = store.staging_root();
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", &root, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let dir = entry.ctx("read directory", &root)?.path();
        if Some(dir.as_path()) == own || !dir.is_dir() {
            continue;
        }
        let lock_path = dir.join(LOCK);
        let lock = if lock_path.exists() {
            let lock = LockFile::open(&lock_path, 0o600)?;
            if !lock.try_lock(LockKind::Exclusive)? {
                continue; // a live run
            }
            Some(lock)
        } else {
            None
        };
        let journal = match fs::read(dir.join(JOURNAL)) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::invalid(dir.join(JOURNAL), format!("unparsable journal: {e}")))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read", dir.join(JOURNAL), e)),
        };
        out.push(Abandoned { dir, journal, _lock: lock });
    }
    Ok(out)
}

/// This machine's host name (journals record where a local mount lives).
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_live_runs_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), 0o022);
        let run = Staging::create(&store).unwrap();
        let j = Journal::Rmi { image: "i".into(), layers: vec![("l".into(), Some("LINK".into()))] };
        run.write_journal(&j).unwrap();
        // Our own directory is never reported; a directory without lock or journal is.
        assert!(abandoned(&store, Some(&run.dir)).unwrap().is_empty());
        fs::create_dir(store.staging_root().join("dead")).unwrap();
        let found = abandoned(&store, Some(&run.dir)).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].journal, None);
        let text = fs::read_to_string(run.path(JOURNAL)).unwrap();
        assert_eq!(serde_json::from_str::<Journal>(&text).unwrap(), j);
        run.finish().unwrap();
    }
}
