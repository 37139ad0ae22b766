//! Modifications of a copy-on-write union (overlay_semantics.md §1.4, §4, §5): create, mkdir,
//! mknod, symlink, link, unlink, rmdir, rename, setattr, xattrs, open for writing. Each
//! operation copies up what it changes, builds new objects in the workdir and renames them into
//! place, and leaves whiteouts where a lower name must disappear.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{fstat, fstatat, mkdirat, mknodat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{unlinkat, Gid, Uid, UnlinkatFlags};

use crate::attr::{Attr, FileKind};
use crate::copy_up::{set_owner_mode, upper_at, upper_dir_fd, Chain, KeepTimes, UpperRef};
use crate::error::{Error, Result};
use crate::stack::{Node, Stack};
use crate::upper::{is_char_whiteout, WhiteoutFormat};
use crate::whiteout::{is_hidden_name, is_private_xattr};
use crate::NAME_MAX;

/// Who asks, for the owner of new objects.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// fsuid as the mount shows it.
    pub uid: u32,
    /// fsgid as the mount shows it.
    pub gid: u32,
    /// umask of the calling process.
    pub umask: u32,
}

/// What a setattr changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner (as shown).
    pub uid: Option<u32>,
    /// New group (as shown).
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New atime (`None` inside = now).
    pub atime: Option<Option<TimeSpec>>,
    /// New mtime (`None` inside = now).
    pub mtime: Option<Option<TimeSpec>>,
}

/// What a new object is.
#[derive(Debug, Clone)]
pub enum NewObject<'a> {
    /// Regular file (opened read-write for the caller).
    File,
    /// Directory.
    Dir,
    /// Symlink with this target.
    Symlink(&'a [u8]),
    /// Device, FIFO or socket: file type bits and device number.
    Special {
        /// `S_IFMT` bits.
        kind: u32,
        /// `dev_t`.
        rdev: u64,
    },
}

fn check_new_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if is_hidden_name(name) {
        return Err(Errno::EINVAL.into());
    }
    Ok(())
}

fn now_or(t: Option<TimeSpec>) -> TimeSpec {
    t.unwrap_or(TimeSpec::new(0, libc::UTIME_NOW))
}

impl Stack {
    fn disk_uid(&self, shown: u32) -> u32 {
        self.options.identity.disk_uid(shown)
    }

    fn disk_gid(&self, shown: u32) -> u32 {
        self.options.identity.disk_gid(shown)
    }

    fn visible(&self, dir: &Node, name: &[u8]) -> Result<Option<Node>> {
        match self.lookup(dir, name) {
            Ok(n) => Ok(Some(n)),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates `name` in the last directory of `dir` and returns its node (and, for a regular
    /// file, the file opened read-write).
    pub fn create(
        &self,
        dir: &Chain,
        name: &[u8],
        mode: u32,
        what: NewObject<'_>,
        who: Caller,
    ) -> Result<(Node, Option<File>)> {
        check_new_name(name)?;
        let (_, parent) = dir.last().ok_or(Error::NotFound)?;
        if self.visible(parent, name)?.is_some() {
            return Err(Errno::EEXIST.into());
        }
        if let NewObject::Special { kind, rdev: 0 } = what {
            if kind == libc::S_IFCHR {
                // A char 0/0 would be a whiteout: the kernel's overlay refuses it too.
                return Err(Errno::EPERM.into());
            }
        }
        let upper = self.upper()?;
        let pdir = self.upper_dir(dir)?;
        let pfd = upper_dir_fd(&pdir)?;
        let pst = fstat(pfd)?;
        let setgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let gid = if setgid_parent { pst.st_gid } else { self.disk_gid(who.gid) };
        let mut perm = mode & 0o7777 & !who.umask;
        let (work, tmp) = (upper.work_fd(), upper.temp_name());
        let t = tmp.as_c_str();
        let mut file = None;
        let built = (|| -> Result<()> {
            match what {
                NewObject::File => {
                    let fd = openat(
                        work,
                        t,
                        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    )?;
                    file = Some(File::from(fd));
                }
                NewObject::Dir => {
                    mkdirat(work, t, Mode::from_bits_truncate(0o700))?;
                    if setgid_parent {
                        perm |= libc::S_ISGID;
                    }
                }
                NewObject::Symlink(target) => nix::unistd::symlinkat(OsStr::from_bytes(target), work, t)?,
                NewObject::Special { kind, rdev } => {
                    mknodat(work, t, SFlag::from_bits_truncate(kind), Mode::from_bits_truncate(0o600), rdev)?
                }
            }
            let kind = match what {
                NewObject::Symlink(_) => FileKind::Symlink,
                NewObject::Dir => FileKind::Dir,
                _ => FileKind::File,
            };
            let attr = Attr { uid: self.disk_uid(who.uid), gid, perm: perm as u16, kind, ..blank_attr() };
            set_owner_mode(work, tmp.as_bytes(), &attr)?;
            if matches!(what, NewObject::Dir) && !parent.lowers().is_empty() {
                // A new directory in a merged parent hides whatever a lower has of that name.
                let fd = openat(work, t, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
                upper.set_opaque(fd.as_fd())?;
            }
            upper.place(&tmp, pfd.as_fd(), name)
        })();
        upper.discard_on_error(&tmp, built)?;
        let node = self.lookup(parent, name)?;
        Ok((node, file))
    }

    /// A new name `name` in the last directory of `dir` for the last node of `source`.
    pub fn link(&self, source: &Chain, dir: &Chain, name: &[u8]) -> Result<Node> {
        check_new_name(name)?;
        let (_, parent) = dir.last().ok_or(Error::NotFound)?;
        let (_, node) = source.last().ok_or(Error::NotFound)?;
        if node.kind == FileKind::Dir {
            return Err(Errno::EPERM.into());
        }
        if self.visible(parent, name)?.is_some() {
            return Err(Errno::EEXIST.into());
        }
        self.copy_up(source, true)?;
        let upper = self.upper()?;
        let pdir = self.upper_dir(dir)?;
        let src = node.upper.get().ok_or(Error::NotFound)?;
        let tmp = upper.temp_name();
        UpperRef::of(&src.handle, node.kind)?.link_to(upper.work_fd(), tmp.as_c_str())?;
        upper.discard_on_error(&tmp, upper.place(&tmp, upper_dir_fd(&pdir)?.as_fd(), name))?;
        self.lookup(parent, name)
    }

    /// Removes the non-directory `name` (`dir == false`) or the empty directory `name`.
    pub fn remove(&self, dir: &Chain, name: &[u8], is_dir: bool) -> Result<()> {
        let (_, parent) = dir.last().ok_or(Error::NotFound)?;
        let node = self.visible(parent, name)?.ok_or(Error::NotFound)?;
        match (is_dir, node.kind == FileKind::Dir) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            (true, true) if !self.read_dir(&node)?.is_empty() => return Err(Errno::ENOTEMPTY.into()),
            _ => {}
        }
        let upper = self.upper()?;
        let below = self.lower_positive(parent, name)?;
        let pdir = self.upper_dir(dir)?;
        let pfd = upper_dir_fd(&pdir)?;
        if below {
            return upper.whiteout(pfd.as_fd(), name);
        }
        if is_dir {
            // Only whiteouts can be left in it: they go with it.
            let sub = openat(
                pfd,
                OsStr::from_bytes(name),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            upper.remove_children(sub.as_fd())?;
            upper.forget(pfd.as_fd(), name);
            unlinkat(pfd, OsStr::from_bytes(name), UnlinkatFlags::RemoveDir)?;
        } else {
            upper.forget(pfd.as_fd(), name);
            unlinkat(pfd, OsStr::from_bytes(name), UnlinkatFlags::NoRemoveDir)?;
        }
        Ok(())
    }

    /// Renames `name` in `from` to `new_name` in `to` (flags: RENAME_NOREPLACE, RENAME_EXCHANGE).
    pub fn rename(&self, from: &Chain, name: &[u8], to: &Chain, new_name: &[u8], flags: u32) -> Result<()> {
        const KNOWN: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        if flags & !KNOWN != 0 || flags == KNOWN {
            return Err(Errno::EINVAL.into());
        }
        check_new_name(new_name)?;
        let (_, sparent) = from.last().ok_or(Error::NotFound)?;
        let (_, dparent) = to.last().ok_or(Error::NotFound)?;
        let src = self.visible(sparent, name)?.ok_or(Error::NotFound)?;
        let dst = self.visible(dparent, new_name)?;
        let upper = self.upper()?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(Error::NotFound)?;
            if [&src, &dst].iter().any(|n| n.kind == FileKind::Dir && !n.lowers().is_empty()) {
                return Err(Errno::EXDEV.into());
            }
            let s = self.prepare_source(from, name, &src)?;
            let d = self.prepare_source(to, new_name, &dst)?;
            renameat2(
                s.as_fd(),
                OsStr::from_bytes(name),
                d.as_fd(),
                OsStr::from_bytes(new_name),
                RenameFlags::RENAME_EXCHANGE,
            )?;
            return Ok(());
        }
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST.into());
            }
            if d.ino == src.ino {
                // Two names of one object (or the same name): POSIX says do nothing.
                return Ok(());
            }
            match (src.kind == FileKind::Dir, d.kind == FileKind::Dir) {
                (true, false) => return Err(Error::NotDir),
                (false, true) => return Err(Error::IsDir),
                (true, true) if !self.read_dir(d)?.is_empty() => return Err(Errno::ENOTEMPTY.into()),
                _ => {}
            }
        }
        let src_below = self.lower_positive(sparent, name)?;
        let dst_below = self.lower_positive(dparent, new_name)?;
        let dfd = upper_dir_fd(&self.upper_dir(to)?)?.try_clone()?;
        let dst_name = OsStr::from_bytes(new_name);
        if src.kind == FileKind::Dir && !src.lowers().is_empty() {
            // A lower or merged directory: copy the merged tree, put it in place, then hide
            // the source (a crash leaves a duplicate, never a loss).
            let tmp = upper.temp_name();
            upper.discard_on_error(&tmp, self.copy_tree(&src, upper.work_fd(), tmp.as_bytes()))?;
            self.clear_target(dfd.as_fd(), new_name)?;
            upper.place(&tmp, dfd.as_fd(), new_name)?;
            return self.remove_source(from, name, src_below);
        }
        let sfd = self.prepare_source(from, name, &src)?;
        if src.kind == FileKind::Dir && (dst_below || !dparent.lowers().is_empty()) {
            let sub = openat(
                &sfd,
                OsStr::from_bytes(name),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            upper.set_opaque(sub.as_fd())?;
        }
        self.clear_target(dfd.as_fd(), new_name)?;
        // A name too long for a `.wh.` marker takes a char 0/0 whiteout in either mode.
        let char_mode = upper.whiteout_format() == WhiteoutFormat::CharDevice || name.len() + 4 > NAME_MAX;
        if src_below && !char_mode {
            // `.wh.` mode: the marker first; until the rename the source stays visible (OCI).
            upper.aufs_marker(sfd.as_fd(), name)?;
        }
        // Char mode, non-directory: the rename leaves the whiteout atomically.
        let atomic = src_below && char_mode && src.kind != FileKind::Dir;
        let rflags = if atomic { RenameFlags::RENAME_WHITEOUT } else { RenameFlags::empty() };
        upper.forget(dfd.as_fd(), new_name);
        match renameat2(&sfd, OsStr::from_bytes(name), &dfd, dst_name, rflags) {
            // RENAME_WHITEOUT needs mknod, which `.wh.` mode mounts were refused.
            Err(Errno::EPERM) if atomic && upper.whiteout_format() == WhiteoutFormat::AufsFile => {
                return Err(Error::NameTooLong)
            }
            r => r?,
        }
        if src_below && char_mode && !atomic {
            upper.whiteout(sfd.as_fd(), name)?;
        }
        upper.remove_aufs_whiteout(dfd.as_fd(), new_name)?;
        Ok(())
    }

    /// Copies up the source of a rename (and its parents); returns its upper parent fd.
    fn prepare_source(&self, dir: &Chain, name: &[u8], node: &Node) -> Result<std::os::fd::OwnedFd> {
        let mut chain: crate::ChainBuf = dir.to_vec();
        chain.push((name.into(), node.clone()));
        self.copy_up(&chain, true)?;
        Ok(upper_dir_fd(&self.upper_dir(dir)?)?.try_clone()?)
    }

    /// Makes `dir/name` of the upper free for a rename onto it: whiteouts and the leftovers of
    /// an empty merged directory go; a non-directory stays (the rename replaces it).
    fn clear_target(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let n = OsStr::from_bytes(name);
        match fstatat(dir, n, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let sub = openat(
                    dir,
                    n,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                let upper = self.upper()?;
                upper.remove_children(sub.as_fd())?;
                upper.forget(dir, name);
                unlinkat(dir, n, UnlinkatFlags::RemoveDir)?;
            }
            Ok(st) if is_char_whiteout(&st) => unlinkat(dir, n, UnlinkatFlags::NoRemoveDir)?,
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Hides or removes the source name of a directory moved by copy.
    fn remove_source(&self, dir: &Chain, name: &[u8], below: bool) -> Result<()> {
        let upper = self.upper()?;
        let pfd = upper_dir_fd(&self.upper_dir(dir)?)?.try_clone()?;
        if below {
            return upper.whiteout(pfd.as_fd(), name);
        }
        upper.remove_entry(pfd.as_fd(), name)
    }

    /// Changes attributes of the last node of `chain` (copying it up) and returns the new ones.
    pub fn set_attr(&self, chain: &Chain, set: &SetAttr, fh: Option<&File>) -> Result<Attr> {
        let (_, node) = chain.last().ok_or(Error::NotFound)?;
        self.copy_up(chain, set.size != Some(0))?;
        let up = node.upper.get().ok_or(Error::NotFound)?;
        let obj = UpperRef::of(&up.handle, node.kind)?;
        if set.uid.is_some() || set.gid.is_some() {
            let uid = set.uid.map(|u| Uid::from_raw(self.disk_uid(u)));
            let gid = set.gid.map(|g| Gid::from_raw(self.disk_gid(g)));
            obj.chown(uid, gid)?;
        }
        if let Some(mode) = set.mode {
            if node.kind != FileKind::Symlink {
                std::fs::set_permissions(obj.path(), std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))?;
            }
        }
        if let Some(size) = set.size {
            match fh {
                Some(f) => f.set_len(size)?,
                None => obj.open(OFlag::O_WRONLY | OFlag::O_CLOEXEC)?.set_len(size)?,
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let omit = TimeSpec::new(0, libc::UTIME_OMIT);
            obj.set_times(&set.atime.map_or(omit, now_or), &set.mtime.map_or(omit, now_or))?;
        }
        self.attr(node)
    }

    /// Sets an xattr on the last node of `chain` (copying it up).
    pub fn set_xattr(&self, chain: &Chain, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if is_private_xattr(name) || self.options.identity.override_stat.xattr() == Some(name) {
            return Err(Errno::EPERM.into());
        }
        if self.options.no_xattrs {
            return Err(Errno::ENOTSUP.into());
        }
        self.copy_up(chain, true)?;
        let path = self.upper_path(chain)?;
        let r = match flags {
            libc::XATTR_CREATE | libc::XATTR_REPLACE => {
                let exists = xattr::get(&path, OsStr::from_bytes(name))?.is_some();
                match (flags, exists) {
                    (libc::XATTR_CREATE, true) => return Err(Errno::EEXIST.into()),
                    (libc::XATTR_REPLACE, false) => return Err(Error::NoData),
                    _ => xattr::set(&path, OsStr::from_bytes(name), value),
                }
            }
            _ => xattr::set(&path, OsStr::from_bytes(name), value),
        };
        Ok(r?)
    }

    /// Removes an xattr of the last node of `chain` (ENODATA without a copy-up if absent).
    pub fn remove_xattr(&self, chain: &Chain, name: &[u8]) -> Result<()> {
        let (_, node) = chain.last().ok_or(Error::NotFound)?;
        if is_private_xattr(name) {
            return Err(Errno::EPERM.into());
        }
        self.get_xattr(node, name)?;
        self.copy_up(chain, true)?;
        let path = self.upper_path(chain)?;
        match xattr::remove(&path, OsStr::from_bytes(name)) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Err(Error::NoData),
            r => Ok(r?),
        }
    }

    /// `/proc/self/fd/PARENT/NAME` of the upper copy of the last node of `chain`.
    fn upper_path(&self, chain: &Chain) -> Result<std::path::PathBuf> {
        let (_, node) = chain.last().ok_or(Error::NotFound)?;
        let up = node.upper.get().ok_or(Error::NotFound)?;
        let (pfd, name) = upper_at(&up.handle)?;
        // xattr calls never follow the last component: reach the object by its name.
        Ok(proc_child(pfd.as_fd(), name))
    }

    /// Opens the last node of `chain` for writing (`truncate`: O_TRUNC), copying it up.
    pub fn open_write(&self, chain: &Chain, truncate: bool) -> Result<File> {
        let (_, node) = chain.last().ok_or(Error::NotFound)?;
        if node.kind == FileKind::Dir {
            return Err(Error::IsDir);
        }
        self.copy_up(chain, !truncate)?;
        self.open_upper(node, truncate)
    }

    /// Opens the upper copy of `node` read-write (and truncates it with `truncate`).
    pub fn open_upper(&self, node: &Node, truncate: bool) -> Result<File> {
        let up = node.upper.get().ok_or(Error::NotFound)?;
        let mut flags = OFlag::O_RDWR | OFlag::O_CLOEXEC;
        if truncate {
            flags |= OFlag::O_TRUNC;
        }
        UpperRef::of(&up.handle, node.kind)?.open(flags)
    }

    /// Flushes an upper file unless the mount is volatile.
    pub fn sync_file(&self, file: &File, data_only: bool) -> Result<()> {
        self.upper()?.sync(file.as_fd(), data_only)
    }

    /// Keeps a directory's times while `f` changes entries in it (for callers outside).
    pub fn keeping_times<T>(&self, dir: BorrowedFd<'_>, f: impl FnOnce() -> T) -> T {
        let keep = KeepTimes::new(dir);
        let r = f();
        keep.restore();
        r
    }
}

fn proc_child(dir: BorrowedFd<'_>, name: &[u8]) -> std::path::PathBuf {
    let mut p = crate::upper::proc_fd(dir);
    p.push(OsStr::from_bytes(name));
    p
}

fn blank_attr() -> Attr {
    Attr {
        ino: 0,
        kind: FileKind::File,
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 0,
        blocks: 0,
        atime: Default::default(),
        mtime: Default::default(),
        ctime: Default::default(),
    }
}
