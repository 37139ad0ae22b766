//! The upper layer on disk: a writable directory plus its workdir, and the few primitives every
//! modification is built from. New objects are assembled under a temporary name in
//! `WORKDIR/work` and renamed into place fully formed, so a crash never leaves a partial object
//! visible (overlay_semantics.md §1.4, §2).
//!
//! Whiteouts are written as the mount-time probe allows: char device 0/0 when `mknod` works
//! (and `FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT` is unset), else `.wh.NAME` files. Opaque
//! directories get `trusted.overlay.opaque=y` (`user.overlay.opaque=y` where trusted xattrs
//! are refused), or the `.wh..wh..opq` file when no xattr can be set.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{fstat, fstatat, mknodat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{Error, Result};
use crate::layer::PlainLayer;
use crate::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// How deletions of lower names are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Character device 0/0 (kernel, containers/storage native).
    CharDevice,
    /// Empty `.wh.NAME` file (OCI/AUFS), when mknod is not allowed.
    AufsFile,
}

/// The upper directory, its workdir and the mount-wide write policy.
#[derive(Debug)]
pub struct Upper {
    pub(crate) layer: PlainLayer,
    root: Arc<OwnedFd>,
    work: OwnedFd,
    format: WhiteoutFormat,
    volatile: bool,
    counter: AtomicU64,
    /// This process's id, for temporary names (read once: `getpid` is a system call).
    pid: u32,
    /// New char whiteouts are hard links of one template in the work directory (as the
    /// kernel's overlayfs does): a link allocates no inode. Cleared when the filesystem
    /// refuses such links; whiteouts are then made one by one.
    share_whiteouts: std::sync::atomic::AtomicBool,
    /// Upper inode → the union number its object had before a copy-up in this session.
    /// Entries go when the daemon deletes the inode: the filesystem reuses numbers.
    pub(crate) numbers: DashMap<u64, u64>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadLayer { path: path.display().to_string(), reason: reason.into() }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

impl Upper {
    /// Opens `upper` and `workdir` (same filesystem), clears leftovers of an earlier mount in
    /// `WORKDIR/work` and probes the whiteout format.
    pub fn open(upper: &Path, workdir: &Path, volatile: bool) -> Result<Upper> {
        let layer = PlainLayer::open(upper)?.pinning_leaves();
        let root = layer.root_fd();
        let wd = nix::fcntl::open(workdir, dir_flags(), Mode::empty()).map_err(|e| bad(workdir, e.desc()))?;
        let (ust, wst) = (fstat(&*root)?, fstat(&wd)?);
        if ust.st_dev != wst.st_dev {
            return Err(bad(workdir, "workdir and upperdir must be on the same filesystem"));
        }
        match nix::sys::stat::mkdirat(&wd, "work", Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(bad(workdir, format!("cannot create work directory: {}", e.desc()))),
        }
        let work = openat(&wd, "work", dir_flags() | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(|e| bad(workdir, format!("work directory: {}", e.desc())))?;
        let mut up = Upper {
            layer,
            root,
            work,
            format: WhiteoutFormat::AufsFile,
            volatile,
            counter: AtomicU64::new(0),
            pid: std::process::id(),
            share_whiteouts: std::sync::atomic::AtomicBool::new(true),
            numbers: DashMap::with_shard_amount(crate::squash::map_shards()),
        };
        up.remove_children(up.work.as_fd()).map_err(|e| bad(workdir, format!("cannot clean work directory: {e}")))?;
        up.format = up.probe_whiteout();
        Ok(up)
    }

    fn probe_whiteout(&self) -> WhiteoutFormat {
        if std::env::var_os("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT").is_some() {
            return WhiteoutFormat::AufsFile;
        }
        let tmp = self.temp_name();
        match mknodat(&self.work, tmp.as_c_str(), SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), 0) {
            Ok(()) => {
                let _ = unlinkat(&self.work, tmp.as_c_str(), UnlinkatFlags::NoRemoveDir);
                WhiteoutFormat::CharDevice
            }
            Err(_) => WhiteoutFormat::AufsFile,
        }
    }

    /// The whiteout format this mount writes.
    pub fn whiteout_format(&self) -> WhiteoutFormat {
        self.format
    }

    /// True with `volatile`: fsync is skipped.
    pub fn volatile(&self) -> bool {
        self.volatile
    }

    /// The upper root directory fd.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The workdir's `work` directory fd.
    pub fn work_fd(&self) -> BorrowedFd<'_> {
        self.work.as_fd()
    }

    /// A fresh name in the work directory.
    pub fn temp_name(&self) -> CString {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("#pfs-{}-{n}", self.pid)).expect("no NUL in a formatted name")
    }

    /// Opens a directory of the upper for reading its entries.
    pub fn open_dir(&self, dir: BorrowedFd<'_>) -> Result<OwnedFd> {
        Ok(openat(dir, ".", dir_flags(), Mode::empty())?)
    }

    /// Moves `work/tmp` to `dir/name`, replacing a whiteout of either format that stands there
    /// and nothing else (EEXIST otherwise).
    pub fn place(&self, tmp: &CString, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let n = OsStr::from_bytes(name);
        let over_whiteout = match fstatat(dir, n, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => {
                if !is_char_whiteout(&st) {
                    return Err(Errno::EEXIST.into());
                }
                true
            }
            Err(Errno::ENOENT) => false,
            Err(e) => return Err(e.into()),
        };
        if over_whiteout {
            // Exchange (works for directories too), then drop the whiteout now in work/.
            renameat2(&self.work, tmp.as_c_str(), dir, n, RenameFlags::RENAME_EXCHANGE)?;
            unlinkat(&self.work, tmp.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
        } else {
            renameat2(&self.work, tmp.as_c_str(), dir, n, RenameFlags::RENAME_NOREPLACE)?;
        }
        self.remove_aufs_whiteout(dir, name)
    }

    /// Moves the copy-up `work/tmp` to `dir/name`, where nothing may stand — not even a
    /// whiteout: a copy-up starts while its object is visible, but an unlink or rename of the
    /// name may finish before it (the kernel orders neither against an open for writing), and
    /// placing the copy over that whiteout would bring the deleted name back. Then: ENOENT,
    /// and `work/tmp` is left for the caller to discard.
    pub fn place_copy(&self, tmp: &CString, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let n = OsStr::from_bytes(name);
        let wh = aufs_name(name);
        let marked = |wh: &Option<std::ffi::OsString>| -> Result<bool> {
            let Some(wh) = wh else { return Ok(false) };
            match fstatat(dir, wh.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(_) => Ok(true),
                Err(Errno::ENOENT) => Ok(false),
                Err(e) => Err(e.into()),
            }
        };
        if marked(&wh)? {
            return Err(Error::NotFound);
        }
        match renameat2(&self.work, tmp.as_c_str(), dir, n, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                return match fstatat(dir, n, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) if is_char_whiteout(&st) => Err(Error::NotFound),
                    _ => Err(Errno::EEXIST.into()),
                };
            }
            Err(e) => return Err(e.into()),
        }
        // `.wh.` mode: an unlink writes its marker first, then removes the name if it finds
        // it. A marker that appeared since the check above means the unlink ran in between
        // and may have found nothing to remove: take the copy back out.
        if marked(&wh)? {
            match renameat2(dir, n, &self.work, tmp.as_c_str(), RenameFlags::RENAME_NOREPLACE) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
            return Err(Error::NotFound);
        }
        Ok(())
    }

    /// Removes `.wh.NAME` from `dir` if present.
    pub fn remove_aufs_whiteout(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let Some(wh) = aufs_name(name) else { return Ok(()) };
        match unlinkat(dir, wh.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Records that `name` in `dir` is deleted. An object standing there (file or directory)
    /// is swapped out atomically in char mode and then removed with everything below it.
    pub fn whiteout(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let n = OsStr::from_bytes(name);
        // Names too long for `.wh.` take a char 0/0 in either mode (ENAMETOOLONG if mknod is
        // refused): a removal never silently leaves the lower entry visible.
        let char_mode = self.format == WhiteoutFormat::CharDevice || aufs_name(name).is_none();
        // A write-open may be copying the name up meanwhile (the kernel orders it against
        // neither unlink nor rename): where the name appeared or went since it was looked at,
        // look again.
        for _ in 0..8 {
            let exists = match fstatat(dir, n, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_char_whiteout(&st) => return Ok(()),
                Ok(_) => true,
                Err(Errno::ENOENT) => false,
                Err(e) => return Err(e.into()),
            };
            if !char_mode {
                // The marker first, then the object goes — looked for only now: a copy placed
                // before the marker is found here, one placed after it sees the marker and
                // takes itself back (`place_copy`).
                self.aufs_marker(dir, name)?;
                let tmp = self.temp_name();
                return match renameat2(dir, n, &self.work, tmp.as_c_str(), RenameFlags::empty()) {
                    Ok(()) => self.remove_tree_in_work(&tmp),
                    Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(e.into()),
                };
            }
            if !exists {
                match self.new_char_whiteout(dir, n) {
                    Ok(()) => return Ok(()),
                    Err(Errno::EEXIST) => continue,
                    Err(Errno::EPERM) if self.format == WhiteoutFormat::AufsFile => return Err(Error::NameTooLong),
                    Err(e) => return Err(e.into()),
                }
            }
            let tmp = self.temp_name();
            match self.new_char_whiteout(self.work.as_fd(), tmp.as_c_str()) {
                Ok(()) => {}
                Err(Errno::EPERM) if self.format == WhiteoutFormat::AufsFile => return Err(Error::NameTooLong),
                Err(e) => return Err(e.into()),
            }
            match renameat2(&self.work, tmp.as_c_str(), dir, n, RenameFlags::RENAME_EXCHANGE) {
                Ok(()) => return self.remove_tree_in_work(&tmp),
                Err(e) => {
                    let _ = unlinkat(&self.work, tmp.as_c_str(), UnlinkatFlags::NoRemoveDir);
                    if e != Errno::ENOENT {
                        return Err(e.into());
                    }
                }
            }
        }
        // The name keeps changing under us: report it busy rather than guess.
        Err(Errno::EBUSY.into())
    }

    /// Makes `name` in `dir` a char 0/0 whiteout: a hard link of the shared template when the
    /// filesystem allows (ext4: deleting 10,000 lower files spent most of its time allocating
    /// whiteout inodes), else a node of its own.
    fn new_char_whiteout<P: ?Sized + nix::NixPath>(&self, dir: BorrowedFd<'_>, name: &P) -> nix::Result<()> {
        const TEMPLATE: &str = "#pfs-whiteout";
        let relaxed = Ordering::Relaxed;
        for _ in 0..3 {
            if !self.share_whiteouts.load(relaxed) {
                break;
            }
            match nix::unistd::linkat(&self.work, TEMPLATE, dir, name, AtFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(Errno::EEXIST) => return Err(Errno::EEXIST),
                // No template yet (every mount starts with an empty work directory).
                Err(Errno::ENOENT) => match mknodat(&self.work, TEMPLATE, SFlag::S_IFCHR, Mode::empty(), 0) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                },
                // The template has all the links the filesystem allows: start a new one.
                Err(Errno::EMLINK) => {
                    let tmp = self.temp_name();
                    mknodat(&self.work, tmp.as_c_str(), SFlag::S_IFCHR, Mode::empty(), 0)?;
                    renameat2(&self.work, tmp.as_c_str(), &self.work, TEMPLATE, RenameFlags::empty())?;
                }
                Err(_) => self.share_whiteouts.store(false, relaxed),
            }
        }
        mknodat(dir, name, SFlag::S_IFCHR, Mode::empty(), 0)
    }

    /// Creates the `.wh.NAME` marker (`.wh.` mode). Names too long for the prefix get a char
    /// 0/0 whiteout if the filesystem allows it, else ENAMETOOLONG: a removal never silently
    /// leaves the lower entry visible.
    pub fn aufs_marker(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        match aufs_name(name) {
            Some(wh) => self.create_empty(dir, wh.as_os_str().as_bytes()),
            None => match mknodat(dir, OsStr::from_bytes(name), SFlag::S_IFCHR, Mode::empty(), 0) {
                Ok(()) => Ok(()),
                Err(_) => Err(Error::NameTooLong),
            },
        }
    }

    fn create_empty(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let fd = openat(
            dir,
            OsStr::from_bytes(name),
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o700),
        )?;
        drop(fd);
        Ok(())
    }

    /// Marks a directory opaque.
    pub fn set_opaque(&self, dir: BorrowedFd<'_>) -> Result<()> {
        // `/proc/self/fd/N/.`: the directory itself (the xattr calls never follow the last
        // component, and `/proc/self/fd/N` alone is the magic link).
        let path = proc_fd(dir).join(".");
        for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
            match xattr::set(&path, name, b"y") {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.create_empty(dir, OPAQUE_MARKER)
    }

    /// Passes `r` on; on error first deletes the half-built `work/tmp`, so a failed operation
    /// leaves nothing behind.
    pub fn discard_on_error<T>(&self, tmp: &CString, r: Result<T>) -> Result<T> {
        if r.is_err() {
            let _ = self.remove_tree_in_work(tmp);
        }
        r
    }

    /// Deletes `work/tmp` and everything below it.
    pub fn remove_tree_in_work(&self, tmp: &CString) -> Result<()> {
        self.remove_entry(self.work.as_fd(), tmp.as_bytes())
    }

    /// Forgets the session number of `dir/name` if deleting that name deletes the inode.
    pub(crate) fn forget(&self, dir: BorrowedFd<'_>, name: &[u8]) {
        if self.numbers.is_empty() {
            return;
        }
        if let Ok(st) = fstatat(dir, OsStr::from_bytes(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
            if st.st_nlink <= 1 || st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                self.numbers.remove(&st.st_ino);
            }
        }
    }

    /// Removes `name` from `dir`, recursively if it is a directory (one component at a time).
    pub fn remove_entry(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let n = OsStr::from_bytes(name);
        self.forget(dir, name);
        match unlinkat(dir, n, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EISDIR) => {}
            Err(e) => return Err(e.into()),
        }
        let sub = openat(dir, n, dir_flags() | OFlag::O_NOFOLLOW, Mode::empty())?;
        self.remove_children(sub.as_fd())?;
        drop(sub);
        match unlinkat(dir, n, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every entry of the directory `dir`.
    pub fn remove_children(&self, dir: BorrowedFd<'_>) -> Result<()> {
        for name in entry_names(dir)? {
            self.remove_entry(dir, &name)?;
        }
        Ok(())
    }

    /// Flushes `fd` unless the mount is volatile.
    pub fn sync(&self, fd: BorrowedFd<'_>, data_only: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        let r = if data_only { nix::unistd::fdatasync(fd) } else { nix::unistd::fsync(fd) };
        Ok(r?)
    }
}

/// `/proc/self/fd/N`: the object behind an fd, usable where a path is required.
pub fn proc_fd(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `.wh.NAME`, or `None` when it would exceed NAME_MAX.
fn aufs_name(name: &[u8]) -> Option<std::ffi::OsString> {
    if name.len() + WHITEOUT_PREFIX.len() > crate::NAME_MAX {
        return None;
    }
    let mut v = WHITEOUT_PREFIX.to_vec();
    v.extend_from_slice(name);
    Some(std::os::unix::ffi::OsStringExt::from_vec(v))
}

/// True for a char device 0/0.
pub fn is_char_whiteout(st: &nix::sys::stat::FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Names in directory `dir`, without `.` and `..`.
pub fn entry_names(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>> {
    let fd = openat(dir, ".", dir_flags(), Mode::empty())?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}
