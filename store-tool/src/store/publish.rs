//! File operations of the publish protocol (store_format.md §3.6, §6 item 7): atomic writes
//! (temp file + fdatasync + rename), directory fsync, and removal of trees this tool owns.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::store::layout::random_suffix;

/// Replaces `path` with `content` atomically (c/storage `AtomicWriteFile`): a temp file
/// `.tmp-<name>-<random>` in the same directory, written, fdatasync'ed, chmod'ed, renamed.
/// Readers see the old or the new content, never a mix; a crash leaves at most the temp file.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::invalid(path, "has no parent directory"))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}-{}", random_suffix()));
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).ctx("create", &tmp)?;
        f.write_all(content).ctx("write", &tmp)?;
        f.sync_data().ctx("fdatasync", &tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode)).ctx("chmod", &tmp)?;
        drop(f);
        fs::rename(&tmp, path).ctx("rename", path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so renames into it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).ctx("fsync", dir)
}

/// `rename` with the path in the error.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io("rename", to, e))
}

/// Removes a file or symlink; a missing one is fine.
pub fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Removes a directory tree this tool owns; a missing one is fine. Directories without write
/// permission (a layer's `diff/` is 0555) are made writable first, so a non-root owner can
/// remove them too. Never follows symlinks.
pub fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    if !meta.is_dir() {
        return remove_file_if_present(path);
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).ctx("chmod", path)?;
    }
    for entry in fs::read_dir(path).ctx("read directory", path)? {
        let entry = entry.ctx("read directory", path)?;
        remove_tree(&entry.path())?;
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomic(&p, b"[]", 0o644).unwrap();
        write_atomic(&p, b"[1]", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"[1]");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_atomic(&dir.path().join("missing/x"), b"", 0o644).unwrap_err();
        assert!(matches!(err, Error::Io { op: "create", .. }), "{err}");
    }

    #[test]
    fn remove_tree_handles_read_only_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("layer/diff");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("marker"), b"x").unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&dir.path().join("layer")).unwrap();
        assert!(!dir.path().join("layer").exists());
        remove_tree(&dir.path().join("layer")).unwrap();
    }
}
