//! Copy-up: the first change to a lower object copies it (parents first) into the upper layer
//! (overlay_semantics.md §2). The copy is built in the workdir — data (holes kept), then
//! xattrs, owner, mode, times — and renamed into place, so the name flips atomically from the
//! lower object to the complete upper one. The parent's times are restored afterwards: a
//! copy-up never changes a visible directory. The copy keeps the object's `st_ino` for the
//! session.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmodat, fstatat, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};

use crate::attr::{Attr, FileKind, Time};
use crate::error::{Error, Result};
use crate::layer::{Handle, Layer};
use crate::stack::{LayerDir, Node, Object, Stack, UPPER};
use crate::whiteout::{is_private_xattr, DirMark};

/// A node and the names leading to it: `chain[0]` is the root (empty name), each next element
/// is named in the one before; the last is the object an operation is about.
pub type Chain = [(Box<[u8]>, Node)];

/// An owned [`Chain`].
pub type ChainBuf = Vec<(Box<[u8]>, Node)>;

/// First copies of multiply-linked objects during a tree copy: (layer, ino) → (dir, name).
type Links = HashMap<(usize, u64), (Arc<OwnedFd>, CString)>;

/// Copy-up data chunk read from the lower at once (the kernel's `OVL_COPY_UP_CHUNK_SIZE`).
const CHUNK: usize = 1 << 20;

fn timespec(t: Time) -> TimeSpec {
    TimeSpec::new(t.secs, i64::from(t.nsecs))
}

/// The upper `(parent fd, name)` of an upper object.
pub(crate) fn upper_at(handle: &Handle) -> Result<(&OwnedFd, &[u8])> {
    match handle {
        Handle::Plain(p) => Ok((p.parent_fd(), p.name())),
        Handle::Squash(_) => Err(Errno::EINVAL.into()),
    }
}

/// How an upper object is reached: by its own `O_PATH` fd where the layer pinned one (every
/// non-directory of the upper: it reaches the inode whatever became of the name it was found
/// under — hard links, renames), else by parent fd and name.
pub(crate) struct UpperRef<'a> {
    own: Option<&'a OwnedFd>,
    symlink: bool,
    dir: &'a OwnedFd,
    name: &'a [u8],
}

impl UpperRef<'_> {
    pub(crate) fn of(handle: &Handle, kind: FileKind) -> Result<UpperRef<'_>> {
        match handle {
            Handle::Plain(p) => {
                Ok(UpperRef { own: p.own_fd(), symlink: kind == FileKind::Symlink, dir: p.parent_fd(), name: p.name() })
            }
            Handle::Squash(_) => Err(Errno::EINVAL.into()),
        }
    }

    /// The own fd, where a path through `/proc/self/fd` may be followed to the object (not
    /// for symlinks: following would reach their target).
    fn followable(&self) -> Option<&OwnedFd> {
        self.own.filter(|_| !self.symlink)
    }

    /// A path reaching the object that may be followed (never a symlink's target).
    pub(crate) fn path(&self) -> std::path::PathBuf {
        match self.followable() {
            Some(fd) => crate::upper::proc_fd(fd.as_fd()),
            None => crate::upper::proc_fd(self.dir.as_fd()).join(OsStr::from_bytes(self.name)),
        }
    }

    pub(crate) fn chown(&self, uid: Option<Uid>, gid: Option<Gid>) -> Result<()> {
        match self.own {
            Some(fd) => fchownat(fd, "", uid, gid, AtFlags::AT_EMPTY_PATH)?,
            None => fchownat(self.dir, OsStr::from_bytes(self.name), uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?,
        }
        Ok(())
    }

    pub(crate) fn set_times(&self, atime: &TimeSpec, mtime: &TimeSpec) -> Result<()> {
        match self.followable() {
            Some(fd) => utimensat(
                nix::fcntl::AT_FDCWD,
                &crate::upper::proc_fd(fd.as_fd()),
                atime,
                mtime,
                UtimensatFlags::FollowSymlink,
            )?,
            None => utimensat(self.dir, OsStr::from_bytes(self.name), atime, mtime, UtimensatFlags::NoFollowSymlink)?,
        }
        Ok(())
    }

    pub(crate) fn open(&self, flags: OFlag) -> Result<File> {
        let fd = match self.followable() {
            Some(fd) => nix::fcntl::open(&crate::upper::proc_fd(fd.as_fd()), flags, Mode::empty())?,
            None => openat(self.dir, OsStr::from_bytes(self.name), flags | OFlag::O_NOFOLLOW, Mode::empty())?,
        };
        Ok(File::from(fd))
    }

    /// A new hard link `dir/name` to the object.
    pub(crate) fn link_to(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<()> {
        if let Some(fd) = self.followable() {
            let from = crate::upper::proc_fd(fd.as_fd());
            nix::unistd::linkat(nix::fcntl::AT_FDCWD, &from, dir, name, AtFlags::AT_SYMLINK_FOLLOW)?;
            return Ok(());
        }
        if let Some(fd) = self.own {
            // A symlink: AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the name is the fallback.
            if nix::unistd::linkat(fd, "", dir, name, AtFlags::AT_EMPTY_PATH).is_ok() {
                return Ok(());
            }
        }
        nix::unistd::linkat(self.dir, OsStr::from_bytes(self.name), dir, name, AtFlags::empty())?;
        Ok(())
    }
}

/// The upper directory fd of an upper directory.
pub(crate) fn upper_dir_fd(dir: &LayerDir) -> Result<&OwnedFd> {
    match &dir.handle {
        Handle::Plain(p) => p.dir_fd().map(|f| &**f).ok_or(Error::NotDir),
        Handle::Squash(_) => Err(Errno::EINVAL.into()),
    }
}

/// Sets owner then mode of `dir/name` (never following a symlink): chown clears set-id bits,
/// so the mode comes after it.
pub(crate) fn set_owner_mode(dir: BorrowedFd<'_>, name: &[u8], a: &Attr) -> Result<()> {
    let n = OsStr::from_bytes(name);
    fchownat(dir, n, Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid)), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if a.kind != FileKind::Symlink {
        fchmodat(dir, n, Mode::from_bits_truncate(u32::from(a.perm)), FchmodatFlags::FollowSymlink)?;
    }
    Ok(())
}

/// Sets atime and mtime of `dir/name` (last: every other change moves them).
pub(crate) fn set_times(dir: BorrowedFd<'_>, name: &[u8], a: &Attr) -> Result<()> {
    let n = OsStr::from_bytes(name);
    utimensat(dir, n, &timespec(a.atime), &timespec(a.mtime), UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

/// Restores a directory's atime/mtime after an entry was placed in it.
pub(crate) struct KeepTimes<'a> {
    dir: BorrowedFd<'a>,
    times: Option<(TimeSpec, TimeSpec)>,
}

impl<'a> KeepTimes<'a> {
    pub(crate) fn new(dir: BorrowedFd<'a>) -> KeepTimes<'a> {
        let times = nix::sys::stat::fstat(dir)
            .ok()
            .map(|st| (TimeSpec::new(st.st_atime, st.st_atime_nsec), TimeSpec::new(st.st_mtime, st.st_mtime_nsec)));
        KeepTimes { dir, times }
    }

    pub(crate) fn restore(self) {
        if let Some((a, m)) = self.times {
            // The fd may be O_PATH (futimens refuses those): go through /proc.
            let path = crate::upper::proc_fd(self.dir);
            let _ = utimensat(nix::fcntl::AT_FDCWD, &path, &a, &m, UtimensatFlags::FollowSymlink);
        }
    }
}

impl Stack {
    fn copy_lock(&self, ino: u64) -> std::sync::MutexGuard<'_, ()> {
        let i = (ino as usize) % self.copy_locks.len();
        self.copy_locks[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upper directory of the last node of `chain`, copying up every directory of the
    /// chain that has none yet (topmost first).
    pub(crate) fn upper_dir(&self, chain: &Chain) -> Result<LayerDir> {
        let upper = self.upper()?;
        let mut parent: Option<LayerDir> = None;
        for (name, node) in chain {
            if node.kind != FileKind::Dir {
                return Err(Error::NotDir);
            }
            if let Some(u) = node.upper.get() {
                parent = Some(u.clone());
                continue;
            }
            let Some(p) = &parent else { return Err(Error::NotFound) };
            let _guard = self.copy_lock(node.ino);
            if let Some(u) = node.upper.get() {
                parent = Some(u.clone());
                continue;
            }
            let pfd = upper_dir_fd(p)?;
            let lower = node.lowers().first().ok_or(Error::NotFound)?;
            let attr = self.layer(lower.layer).attr(&lower.handle)?;
            let keep = KeepTimes::new(pfd.as_fd());
            match fstatat(pfd, OsStr::from_bytes(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
                // Already there (made by a concurrent request before this node was built).
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                _ => {
                    let tmp = upper.temp_name();
                    mkdirat(upper.work_fd(), tmp.as_c_str(), Mode::from_bits_truncate(0o700))?;
                    let (w, t) = (upper.work_fd(), tmp.as_bytes());
                    let built = set_owner_mode(w, t, &attr)
                        .and_then(|()| self.copy_xattrs(lower.layer, &lower.handle, w, t))
                        .and_then(|()| set_times(w, t, &attr))
                        .and_then(|()| upper.place_copy(&tmp, pfd.as_fd(), name));
                    upper.discard_on_error(&tmp, built)?;
                }
            }
            keep.restore();
            let handle = upper.layer.lookup(&p.handle, name)?.ok_or(Error::NotFound)?;
            let dir = LayerDir { layer: UPPER, handle, mark: DirMark::Transparent };
            let _ = node.upper.set(dir.clone());
            parent = Some(dir);
        }
        parent.ok_or(Error::NotFound)
    }

    /// Copies the last node of `chain` up (with its data unless `data` is false: an open with
    /// O_TRUNC or a truncate to 0 needs none). Directories copy up metadata only.
    pub fn copy_up(&self, chain: &Chain, data: bool) -> Result<()> {
        let Some(((name, node), parents)) = chain.split_last() else { return Err(Error::NotFound) };
        if node.kind == FileKind::Dir {
            return self.upper_dir(chain).map(|_| ());
        }
        if node.upper.get().is_some() {
            return Ok(());
        }
        let parent = self.upper_dir(parents)?;
        let _guard = self.copy_lock(node.ino);
        if node.upper.get().is_some() {
            return Ok(());
        }
        let Object::Leaf { layer, handle } = &node.object else { return Err(Error::IsDir) };
        let upper = self.upper()?;
        let pfd = upper_dir_fd(&parent)?;
        let tmp = upper.temp_name();
        let keep = KeepTimes::new(pfd.as_fd());
        let built = self
            .build_copy(*layer, handle, upper.work_fd(), &tmp, data)
            .and_then(|()| upper.place_copy(&tmp, pfd.as_fd(), name));
        // EEXIST: copied up meanwhile through another node of the same object (whose copy
        // already has its number): adopt that copy.
        let adopted = match upper.discard_on_error(&tmp, built) {
            Err(Error::Io(e)) if e.raw_os_error() == Some(libc::EEXIST) => true,
            other => other.map(|()| false)?,
        };
        keep.restore();
        let up = upper.layer.lookup(&parent.handle, name)?.ok_or(Error::NotFound)?;
        if adopted && upper.layer.kind(&up)? != node.kind {
            // Not a copy of this object: the name was removed and made anew meanwhile.
            return Err(Error::NotFound);
        }
        if !adopted {
            upper.numbers.insert(upper.layer.attr(&up)?.ino, node.ino);
        }
        let _ = node.upper.set(LayerDir { layer: UPPER, handle: up, mark: DirMark::Transparent });
        Ok(())
    }

    /// Builds a copy of a lower non-directory as `work/tmp`.
    fn build_copy(&self, layer: usize, handle: &Handle, work: BorrowedFd<'_>, tmp: &CString, data: bool) -> Result<()> {
        let l = self.layer(layer);
        let attr = l.attr(handle)?;
        let t = tmp.as_c_str();
        match attr.kind {
            FileKind::File => {
                let fd = openat(
                    work,
                    t,
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                let file = File::from(fd);
                if data {
                    copy_data(l, handle, &file, attr.size)?;
                }
                file.set_len(if data { attr.size } else { 0 })?;
                self.upper()?.sync(file.as_fd(), false)?;
                if data && !self.upper()?.volatile() {
                    // The copy is on disk: drop its pages. ext4 (Linux 6.18) keeps each 1 MiB
                    // write as one 1 MiB folio, and every later 4 KiB write into one walks all
                    // 256 of its block buffers: random 4 KiB writes to a just-copied-up file
                    // ran at 70-90k IOPS instead of 360-430k (perf: 68% of the time in
                    // `ext4_block_write_begin`). Smaller writes cost the copy-up 20% instead.
                    let _ = nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
                }
            }
            FileKind::Symlink => {
                let target = l.read_link(handle)?;
                nix::unistd::symlinkat(OsStr::from_bytes(&target), work, t)?;
            }
            FileKind::Dir => return Err(Error::IsDir),
            kind => {
                let sflag = match kind {
                    FileKind::BlockDev => SFlag::S_IFBLK,
                    FileKind::CharDev => SFlag::S_IFCHR,
                    FileKind::Fifo => SFlag::S_IFIFO,
                    _ => SFlag::S_IFSOCK,
                };
                mknodat(work, t, sflag, Mode::from_bits_truncate(0o600), decode_dev(attr.rdev))?;
            }
        }
        // Owner before xattrs (chown drops security.capability), times last.
        set_owner_mode(work, tmp.as_bytes(), &attr)?;
        self.copy_xattrs(layer, handle, work, tmp.as_bytes())?;
        set_times(work, tmp.as_bytes(), &attr)
    }

    /// Copies the xattrs of a lower object onto `dir/name`, except overlay-private ones;
    /// names the upper refuses (user.* on symlinks, trusted.* unprivileged) are skipped.
    pub(crate) fn copy_xattrs(&self, layer: usize, handle: &Handle, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        if self.options.no_xattrs {
            return Ok(());
        }
        let l = self.layer(layer);
        let names = l.list_xattr(handle)?;
        if names.is_empty() {
            return Ok(());
        }
        let mut path = crate::upper::proc_fd(dir);
        path.push(OsStr::from_bytes(name));
        for n in names.iter().filter(|n| !is_private_xattr(n)) {
            let Some(value) = l.get_xattr(handle, n)? else { continue };
            if let Err(e) = xattr::set(&path, OsStr::from_bytes(n), &value) {
                match e.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::ENOTSUP) | Some(libc::EINVAL) => {
                        tracing::debug!(name = %String::from_utf8_lossy(n), "xattr not copied up: {e}")
                    }
                    _ => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Copies a whole merged directory tree as `dir/name` (the subtree-copy rename of a lower
    /// directory). The top directory is made opaque; objects keep their numbers.
    pub(crate) fn copy_tree(&self, node: &Node, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        self.copy_tree_linked(node, dir, name, &mut HashMap::new())
    }

    /// `copy_tree`, with the copies made so far of objects with several names (hard links
    /// inside the tree stay hard links).
    fn copy_tree_linked(&self, node: &Node, dir: BorrowedFd<'_>, name: &[u8], links: &mut Links) -> Result<()> {
        let upper = self.upper()?;
        let attr = self.attr_raw(node)?;
        let n = OsStr::from_bytes(name);
        mkdirat(dir, n, Mode::from_bits_truncate(0o700))?;
        let (layer, handle) = self.provider(node);
        set_owner_mode(dir, name, &attr)?;
        self.copy_xattrs(layer, &handle, dir, name)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let sub = Arc::new(openat(dir, n, flags, Mode::empty())?);
        if !node.lowers().is_empty() {
            upper.set_opaque(sub.as_fd())?;
        }
        for item in self.read_dir(node)? {
            let child = self.lookup(node, &item.name)?;
            if child.kind == FileKind::Dir {
                self.copy_tree_linked(&child, sub.as_fd(), &item.name, links)?;
                // Nested copies need no opaque marker of their own: their parent is opaque.
                continue;
            }
            let (layer, handle) = self.provider(&child);
            let tmp = CString::new(item.name.to_vec()).map_err(|_| Error::from(Errno::EINVAL))?;
            if layer == UPPER {
                // Already an upper object: a new name for the same inode keeps its identity,
                // its other hard links and its number, and copies nothing.
                UpperRef::of(&handle, child.kind)?.link_to(sub.as_fd(), tmp.as_c_str())?;
                continue;
            }
            let a = self.layer(layer).attr(&handle)?;
            if a.nlink > 1 {
                if let Some((first_dir, first_name)) = links.get(&(layer, a.ino)) {
                    let (fd, fname) = (first_dir.clone(), first_name.clone());
                    nix::unistd::linkat(&*fd, fname.as_c_str(), &*sub, tmp.as_c_str(), AtFlags::empty())?;
                    continue;
                }
                links.insert((layer, a.ino), (sub.clone(), tmp.clone()));
            }
            self.build_copy(layer, &handle, sub.as_fd(), &tmp, true)?;
            let ino = nix::sys::stat::fstatat(&sub, tmp.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?.st_ino;
            upper.numbers.insert(ino, child.ino);
        }
        // The copy keeps the directory's number for the session, as copied files do.
        upper.numbers.insert(nix::sys::stat::fstat(&*sub)?.st_ino, node.ino);
        set_times(dir, name, &attr)
    }

    /// Attributes of the providing layer object, without the union's number or id mapping.
    pub(crate) fn attr_raw(&self, node: &Node) -> Result<Attr> {
        let (layer, handle) = self.provider(node);
        self.layer(layer).attr(&handle)
    }
}

/// Copies file data, skipping holes: all-zero chunks of the source are not written, so sparse
/// files stay sparse whatever layer they come from. A file of several chunks is read by two
/// threads (alternate chunks; a SquashFS lower decompresses on both cores) while this one
/// writes them in order.
fn copy_data(layer: &dyn Layer, handle: &Handle, to: &File, size: u64) -> Result<()> {
    let reader = layer.open(handle)?;
    let chunks = size.div_ceil(CHUNK as u64);
    if chunks <= 1 {
        let mut buf = vec![0u8; usize::try_from(size).unwrap_or(CHUNK).clamp(1, CHUNK)];
        let n = read_chunk(&*reader, 0, size, &mut buf)?;
        return write_chunk(to, 0, &buf[..n]);
    }
    std::thread::scope(|scope| {
        let reader = &*reader;
        let mut lanes = Vec::new();
        for lane in 0..READERS {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<(Vec<u8>, usize)>>(1);
            let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let _ = empty_tx.send(vec![0u8; CHUNK]);
            scope.spawn(move || {
                for k in (lane as u64..chunks).step_by(READERS) {
                    let Ok(mut buf) = empty_rx.recv() else { return };
                    let read = read_chunk(reader, k * CHUNK as u64, size, &mut buf).map(|n| (buf, n));
                    let failed = read.is_err();
                    if full_tx.send(read).is_err() || failed {
                        return;
                    }
                }
            });
            lanes.push((full_rx, empty_tx));
        }
        for k in 0..chunks {
            let (full_rx, empty_tx) = &lanes[(k % READERS as u64) as usize];
            let (buf, n) = full_rx.recv().map_err(|_| Error::Io(std::io::Error::other("copy-up reader ended")))??;
            write_chunk(to, k * CHUNK as u64, &buf[..n])?;
            if n < CHUNK {
                break;
            }
            let _ = empty_tx.send(buf);
        }
        // Dropping the lanes ends readers still waiting for a buffer.
        Ok(())
    })
}

/// Threads reading a copy-up's chunks.
const READERS: usize = 2;

/// Reads chunk at `off` of a `size`-byte file into `buf`; returns its length.
fn read_chunk(reader: &dyn crate::layer::FileReader, off: u64, size: u64, buf: &mut [u8]) -> Result<usize> {
    let want = buf.len().min(usize::try_from(size.saturating_sub(off)).unwrap_or(buf.len()));
    let mut got = 0;
    while got < want {
        let n = reader.read_at(off + got as u64, &mut buf[got..want])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Writes a chunk unless it is all zeros (a hole).
fn write_chunk(to: &File, off: u64, bytes: &[u8]) -> Result<()> {
    if bytes.iter().any(|&b| b != 0) {
        to.write_all_at(bytes, off)?;
    }
    Ok(())
}

/// The kernel's `new_decode_dev`, as a `dev_t`.
fn decode_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    nix::sys::stat::makedev(u64::from(major), u64::from(minor))
}
