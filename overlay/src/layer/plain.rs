//! A plain directory tree as a layer. Every access is relative to a directory fd with one name
//! component at a time (`*at` calls, `O_NOFOLLOW`), so a symlink inside the layer can never
//! lead a lookup out of it, and no path string grows with the depth of the tree.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode};

use super::{FileReader, Handle, Layer, RawEntry, StatFs};
use crate::attr::{encode_dev, Attr, FileKind, Time};
use crate::error::{Error, Result};

/// An object of a plain layer: its parent directory and name, plus an `O_PATH` fd of its own
/// when it is a directory (children are looked up relative to it).
#[derive(Debug, Clone)]
pub struct PlainHandle {
    dir_fd: Option<Arc<OwnedFd>>,
    /// `O_PATH` fd of a non-directory object of a writable layer: it keeps
    /// reaching the inode whatever happens to the name (hard links, renames, unlink).
    own_fd: Option<Arc<Pin>>,
    parent: Arc<OwnedFd>,
    name: Box<[u8]>,
    /// The attributes read at lookup, for objects of a read-only layer (they never change
    /// while mounted): a listing's READDIRPLUS then costs one `fstatat` per entry, not four.
    known: Option<Arc<Attr>>,
}

impl PlainHandle {
    /// The object's own `O_PATH` fd when it is a directory.
    pub(crate) fn dir_fd(&self) -> Option<&Arc<OwnedFd>> {
        self.dir_fd.as_ref()
    }

    /// The directory holding the object (the root holds itself, as `.`).
    pub(crate) fn parent_fd(&self) -> &Arc<OwnedFd> {
        &self.parent
    }

    /// The object's own `O_PATH` fd (writable layers; not for directories).
    pub(crate) fn own_fd(&self) -> Option<&OwnedFd> {
        self.own_fd.as_deref().map(|p| &p.0)
    }

    /// The object's name in its parent.
    pub(crate) fn name(&self) -> &[u8] {
        &self.name
    }
}

/// Pinned fds held now, and how many may be: half the fd limit, so that opens, copy-ups and
/// directory fds always find room. Past it, leaves are reached by parent and name.
static PINNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The `O_PATH` fd pinning one upper non-directory, counted against the budget.
#[derive(Debug)]
pub(crate) struct Pin(OwnedFd);

impl Pin {
    fn new(fd: OwnedFd) -> Pin {
        PINNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Pin(fd)
    }

    fn available() -> bool {
        static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let budget = *BUDGET.get_or_init(|| {
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(512, |(soft, _)| usize::try_from(soft / 2).unwrap_or(usize::MAX))
        });
        PINNED.load(std::sync::atomic::Ordering::Relaxed) < budget
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        PINNED.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A read-only layer backed by a directory.
#[derive(Debug)]
pub struct PlainLayer {
    root: Arc<OwnedFd>,
    path: PathBuf,
    pin_leaves: bool,
}

fn path_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl PlainLayer {
    /// Opens the directory at `path` (symlinks in `path` itself are followed, as for any
    /// `lowerdir`; nothing below it is).
    pub fn open(path: &Path) -> Result<PlainLayer> {
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| Error::BadLayer { path: path.display().to_string(), reason: e.desc().to_string() })?;
        Ok(PlainLayer { root: Arc::new(fd), path: path.to_path_buf(), pin_leaves: false })
    }

    /// The layer as an upper: handles of non-directories hold an fd of their own.
    pub(crate) fn pinning_leaves(mut self) -> PlainLayer {
        self.pin_leaves = true;
        self
    }

    /// The root directory's `O_PATH` fd.
    pub(crate) fn root_fd(&self) -> Arc<OwnedFd> {
        self.root.clone()
    }

    /// The directory this layer was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn plain<'a>(&self, h: &'a Handle) -> Result<&'a PlainHandle> {
        match h {
            Handle::Plain(p) => Ok(&**p),
            Handle::Squash(_) => Err(Errno::EINVAL.into()),
        }
    }

    fn dir_fd<'a>(&self, h: &'a Handle) -> Result<&'a Arc<OwnedFd>> {
        self.plain(h)?.dir_fd.as_ref().ok_or(Error::NotDir)
    }

    fn stat(&self, h: &PlainHandle) -> Result<FileStat> {
        Ok(match (&h.dir_fd, &h.own_fd) {
            (Some(fd), _) => fstat(fd)?,
            (None, Some(pin)) => fstat(&pin.0)?,
            (None, None) => fstatat(&h.parent, OsStr::from_bytes(&h.name), AtFlags::AT_SYMLINK_NOFOLLOW)?,
        })
    }

    /// `/proc/self/fd/PARENT/NAME`: reaches the object without following it if it is a link.
    pub(crate) fn proc_path(h: &PlainHandle) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", h.parent.as_raw_fd()));
        p.push(OsStr::from_bytes(&h.name));
        p
    }
}

/// Opens `name` in `dir` for reading without touching its atime (lower objects never change,
/// overlay_semantics.md §9 item 35); O_NOATIME needs the owner or CAP_FOWNER, so without
/// either the open is retried without it.
fn open_for_reading<Fd: std::os::fd::AsFd>(dir: Fd, name: &OsStr, flags: OFlag) -> nix::Result<OwnedFd> {
    match openat(&dir, name, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => openat(&dir, name, flags, Mode::empty()),
        other => other,
    }
}

fn kind_of(mode: u32) -> Result<FileKind> {
    FileKind::from_mode(mode).ok_or(Error::Io(std::io::Error::from_raw_os_error(Errno::EIO as i32)))
}

fn time(secs: i64, nsecs: i64) -> Time {
    Time { secs, nsecs: u32::try_from(nsecs).unwrap_or(0) }
}

fn attr_of(st: &FileStat) -> Result<Attr> {
    let rdev = st.st_rdev;
    Ok(Attr {
        ino: st.st_ino,
        kind: kind_of(st.st_mode)?,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_dev(nix::sys::stat::major(rdev) as u32, nix::sys::stat::minor(rdev) as u32),
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
    })
}

#[derive(Debug)]
struct PlainFile(File);

impl FileReader for PlainFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }
}

impl Layer for PlainLayer {
    fn root(&self) -> Result<Handle> {
        Ok(Handle::Plain(Arc::new(PlainHandle {
            dir_fd: Some(self.root.clone()),
            own_fd: None,
            parent: self.root.clone(),
            name: Box::new(*b"."),
            known: None,
        })))
    }

    fn lookup(&self, dir: &Handle, name: &[u8]) -> Result<Option<Handle>> {
        let dir_fd = self.dir_fd(dir)?;
        let n = OsStr::from_bytes(name);
        // In a writable layer the name can change between the stat and the open below (a
        // concurrent unlink, or a rename over it). A name gone by the open is not found, as a
        // lookup a moment later would say; a name that now holds another object is looked up
        // again, so the kind and the fds always describe one object.
        for _ in 0..8 {
            let st = match fstatat(dir_fd, n, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let kind = kind_of(st.st_mode)?;
            let known = if self.pin_leaves { None } else { Some(Arc::new(attr_of(&st)?)) };
            let leaf =
                |known| PlainHandle { dir_fd: None, own_fd: None, parent: dir_fd.clone(), name: name.into(), known };
            let flags = match kind {
                FileKind::Dir => path_flags(),
                _ if self.pin_leaves && Pin::available() => OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                _ => return Ok(Some(Handle::Plain(Arc::new(leaf(known))))),
            };
            let fd = match openat(dir_fd, n, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(None),
                // Out of fds (a huge tree known to the kernel at once): a leaf is then reached
                // by parent and name, which only loses the pin's hard-link precision.
                Err(Errno::EMFILE | Errno::ENFILE) if kind != FileKind::Dir => {
                    return Ok(Some(Handle::Plain(Arc::new(leaf(known)))))
                }
                // A directory replaced by a non-directory (or the reverse) meanwhile.
                Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => continue,
                Err(e) => return Err(e.into()),
            };
            if fstat(&fd)?.st_ino != st.st_ino {
                continue;
            }
            let (dir_fd_of, own_fd) =
                if kind == FileKind::Dir { (Some(Arc::new(fd)), None) } else { (None, Some(Arc::new(Pin::new(fd)))) };
            let handle = PlainHandle { dir_fd: dir_fd_of, own_fd, parent: dir_fd.clone(), name: name.into(), known };
            return Ok(Some(Handle::Plain(Arc::new(handle))));
        }
        // Changing faster than it can be looked up: report it as busy rather than guess.
        Err(Errno::EBUSY.into())
    }

    fn attr(&self, object: &Handle) -> Result<Attr> {
        let h = self.plain(object)?;
        match &h.known {
            Some(attr) => Ok(**attr),
            None => attr_of(&self.stat(h)?),
        }
    }

    fn kind(&self, object: &Handle) -> Result<FileKind> {
        let h = self.plain(object)?;
        if h.dir_fd.is_some() {
            return Ok(FileKind::Dir);
        }
        match &h.known {
            Some(attr) => Ok(attr.kind),
            None => kind_of(self.stat(h)?.st_mode),
        }
    }

    fn read_dir(&self, dir: &Handle) -> Result<Vec<RawEntry>> {
        let dir_fd = self.dir_fd(dir)?;
        let fd = open_for_reading(dir_fd, OsStr::new("."), OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)?;
        let mut d = Dir::from_fd(fd)?;
        let mut out = Vec::new();
        for entry in d.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match entry.file_type() {
                Some(Type::Directory) => FileKind::Dir,
                Some(Type::File) => FileKind::File,
                Some(Type::Symlink) => FileKind::Symlink,
                Some(Type::BlockDevice) => FileKind::BlockDev,
                Some(Type::CharacterDevice) => FileKind::CharDev,
                Some(Type::Fifo) => FileKind::Fifo,
                Some(Type::Socket) => FileKind::Socket,
                None => match fstatat(dir_fd, OsStr::from_bytes(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => kind_of(st.st_mode)?,
                    // Removed since the directory was read (writable layers only).
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e.into()),
                },
            };
            out.push(RawEntry { name: name.into(), ino: entry.ino(), kind, object: None });
        }
        Ok(out)
    }

    fn read_link(&self, object: &Handle) -> Result<Vec<u8>> {
        let h = self.plain(object)?;
        if let Some(pin) = &h.own_fd {
            return Ok(readlinkat(&pin.0, "")?.into_vec());
        }
        Ok(readlinkat(&h.parent, OsStr::from_bytes(&h.name))?.into_vec())
    }

    fn list_xattr(&self, object: &Handle) -> Result<Vec<Vec<u8>>> {
        let path = PlainLayer::proc_path(self.plain(object)?);
        match xattr::list(&path) {
            Ok(names) => Ok(names.map(|n| n.as_bytes().to_vec()).collect()),
            Err(e) if e.raw_os_error() == Some(Errno::ENOTSUP as i32) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn get_xattr(&self, object: &Handle, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let path = PlainLayer::proc_path(self.plain(object)?);
        match xattr::get(&path, OsStr::from_bytes(name)) {
            Ok(v) => Ok(v),
            Err(e) if e.raw_os_error() == Some(Errno::ENOTSUP as i32) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn open(&self, object: &Handle) -> Result<Box<dyn FileReader>> {
        let h = self.plain(object)?;
        if let Some(pin) = &h.own_fd {
            let path = format!("/proc/self/fd/{}", pin.0.as_raw_fd());
            let fd = nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
            return Ok(Box::new(PlainFile(File::from(fd))));
        }
        let fd = open_for_reading(
            &*h.parent,
            OsStr::from_bytes(&h.name),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        )?;
        Ok(Box::new(PlainFile(File::from(fd))))
    }

    fn statfs(&self) -> Result<StatFs> {
        let st = nix::sys::statfs::fstatfs(&self.root)?;
        Ok(StatFs {
            blocks: st.blocks(),
            bfree: st.blocks_free(),
            bavail: st.blocks_available(),
            files: st.files(),
            ffree: st.files_free(),
            bsize: u32::try_from(st.block_size()).unwrap_or(4096),
            namelen: u32::try_from(st.maximum_name_length()).unwrap_or(255),
        })
    }

    fn immutable(&self) -> bool {
        true
    }
}
