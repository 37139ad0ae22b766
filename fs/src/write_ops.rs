//! The modifying requests of a copy-on-write mount: argument conversion around the union's
//! write operations, and the node-table bookkeeping they need (new names, renamed nodes).

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use fuser::{FileAttr, FileHandle, Generation, INodeNo, ReplyEntry, Request};
use parallaxfs_overlay::{Caller, Error, NewObject, Node, SetAttr};

use crate::adapter::{fail, OverlayFs};
use crate::attr::file_attr;
use crate::handles::FileHandle as OpenFile;

/// True when the caller (`(fsgid, pid)`) has group `gid`, as its own or a supplementary one.
fn in_group((fsgid, pid): (u32, u32), gid: u32) -> bool {
    fsgid == gid
        || std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
            let groups = status.lines().find_map(|l| l.strip_prefix("Groups:")).unwrap_or("");
            groups.split_whitespace().any(|g| g.parse() == Ok(gid))
        })
}

fn errno(e: nix::errno::Errno) -> Error {
    Error::from(e)
}

impl OverlayFs {
    fn caller(req: &Request, umask: u32) -> Caller {
        Caller { uid: req.uid(), gid: req.gid(), umask }
    }

    /// Attributes of `node`; an open upper file answers from its fd, so an unlinked but open
    /// file shows nlink 0.
    pub(crate) fn attr_of(&self, node: &Node, fh: Option<FileHandle>) -> Result<parallaxfs_overlay::Attr, Error> {
        let mut attr = self.stack.attr(node)?;
        if let Some(file) = fh.and_then(|fh| self.files.get(fh.0)) {
            if let Some(f) = file.upper() {
                let st = nix::sys::stat::fstat(f.as_fd())?;
                attr.nlink = u32::try_from(st.st_nlink).unwrap_or(u32::MAX);
                attr.size = u64::try_from(st.st_size).unwrap_or(0);
                attr.blocks = u64::try_from(st.st_blocks).unwrap_or(0);
            }
        }
        Ok(attr)
    }

    /// Opens node `ino`; `write` copies it up first.
    pub(crate) fn open_file(&self, ino: INodeNo, write: bool, truncate: bool) -> Result<OpenFile, Error> {
        if write {
            if !self.stack.writable() {
                return Err(Error::ReadOnly);
            }
            let _changes = self.stack.changes(false);
            let chain = self.chain(ino)?;
            return Ok(OpenFile::Upper(self.stack.open_write(&chain, truncate)?));
        }
        let node = self.node(ino)?;
        if node.in_upper() {
            return Ok(OpenFile::Upper(self.stack.open_upper(&node, false)?));
        }
        Ok(OpenFile::Lower(self.stack.open(&node)?))
    }

    pub(crate) fn set_attr(&self, ino: INodeNo, set: &SetAttr, fh: Option<FileHandle>) -> Result<FileAttr, Error> {
        let _changes = self.stack.changes(false);
        let chain = self.chain(ino)?;
        let file = fh.and_then(|fh| self.files.get(fh.0));
        let upper_file = file.as_deref().and_then(OpenFile::upper);
        let attr = self.stack.set_attr(&chain, set, upper_file)?;
        let mut fa = file_attr(&attr);
        fa.ino = INodeNo(self.nodes.id_of(&chain[chain.len() - 1].1));
        Ok(fa)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reply_new(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &std::ffi::OsStr,
        mode: u32,
        umask: u32,
        what: NewObject<'_>,
        reply: ReplyEntry,
    ) {
        let changes = self.stack.changes(false);
        let made = self.chain(parent).and_then(|chain| {
            let (node, _) = self.stack.create(&chain, name.as_bytes(), mode, what, Self::caller(req, umask))?;
            let attr = file_attr(&self.stack.attr(&node)?);
            self.nodes.renew(node.ino);
            Ok((attr, self.nodes.remember(&node, parent.0, name.as_bytes())))
        });
        self.listings.versions().changed(parent.0);
        drop(changes);
        match made {
            Ok((attr, generation)) => reply.entry(&self.ttl, &attr, Generation(generation)),
            Err(e) => reply.error(fail("create", &e)),
        }
    }

    pub(crate) fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> Result<(FileAttr, std::fs::File, u64), Error> {
        let _changes = self.stack.changes(false);
        let chain = self.chain(parent)?;
        let created = self.stack.create(&chain, name, mode, NewObject::File, Self::caller(req, umask));
        self.listings.versions().changed(parent.0);
        let (node, file) = created?;
        let file = match file {
            Some(f) => f,
            None => self.stack.open_upper(&node, false)?,
        };
        let attr = file_attr(&self.stack.attr(&node)?);
        self.nodes.renew(node.ino);
        let generation = self.nodes.remember(&node, parent.0, name);
        Ok((attr, file, generation))
    }

    /// Keeps an open upper file of node `node` as a new handle, registered for FUSE
    /// passthrough (reads and writes then go from the kernel straight to the upper file) when
    /// the kernel agreed to it and no cached handle of the node is open; `register` hands the
    /// fd to the kernel. Returns the handle and, for passthrough, the backing id to reply with.
    pub(crate) fn keep_upper(
        &self,
        node: u64,
        file: std::fs::File,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<fuser::BackingId>,
    ) -> (u64, Option<std::sync::Arc<fuser::BackingId>>) {
        if !self.passthrough.load(std::sync::atomic::Ordering::Relaxed) || self.cached.any(node) {
            return (self.keep_cached(node, file), None);
        }
        let backing = {
            let mut entry = self.backing.entry(node).or_default();
            match entry.upgrade() {
                Some(b) => Ok(b),
                None => register(&file).map(|b| {
                    let b = std::sync::Arc::new(b);
                    *entry = std::sync::Arc::downgrade(&b);
                    b
                }),
            }
        };
        match backing {
            Ok(b) => {
                let fh = self.files.insert(OpenFile::Upper(file));
                // Kept before the reply: a release may follow it at once.
                self.backing_of_handle.insert(fh, b.clone());
                (fh, Some(b))
            }
            Err(e) => {
                tracing::debug!(error = %e, "passthrough refused; serving the file");
                (self.keep_cached(node, file), None)
            }
        }
    }

    /// Keeps an open upper file of node `node` as a handle served here (through the page cache).
    pub(crate) fn keep_cached(&self, node: u64, file: std::fs::File) -> u64 {
        let fh = self.files.insert(OpenFile::Upper(file));
        self.cached.opened(fh, node);
        fh
    }

    /// Whether a write-open of node `ino` by a caller without CAP_FSETID (`(gid, pid)`) must be
    /// served here rather than by passthrough: its writes must drop set-user/group-ID bits, so
    /// they have to reach [`OverlayFs::drop_suid`] with the kernel's kill flag. Where
    /// passthrough handles of the node are open the kernel allows no other kind: then the bits
    /// are dropped at this open already.
    pub(crate) fn must_serve_writes(&self, ino: INodeNo, caller: (u32, u32)) -> Result<bool, Error> {
        if self.mode_without_suid(ino, caller)?.is_none() {
            return Ok(false);
        }
        if self.backing.get(&ino.0).is_some_and(|b| b.strong_count() > 0) {
            self.drop_suid(ino, caller, None)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Drops set-user-ID, and set-group-ID where group-execute is set or the caller (`(gid,
    /// pid)`) is not in the file's group, from node `ino`, as a write or truncate by a
    /// caller without CAP_FSETID must (FUSE_HANDLE_KILLPRIV_V2 leaves
    /// this to the filesystem; file capabilities go by themselves when the daemon writes or
    /// truncates the upper file).
    pub(crate) fn drop_suid(&self, ino: INodeNo, caller: (u32, u32), fh: Option<FileHandle>) -> Result<(), Error> {
        if let Some(mode) = self.mode_without_suid(ino, caller)? {
            let set = SetAttr { mode: Some(mode), ..SetAttr::default() };
            self.set_attr(ino, &set, fh)?;
        }
        Ok(())
    }

    /// The mode node `ino` keeps once set-user/group-ID bits are dropped, None when it has none
    /// to drop.
    pub(crate) fn mode_without_suid(&self, ino: INodeNo, caller: (u32, u32)) -> Result<Option<u32>, Error> {
        let attr = self.stack.attr(&self.node(ino)?)?;
        if attr.kind != parallaxfs_overlay::FileKind::File {
            return Ok(None);
        }
        let mode = u32::from(attr.perm);
        // Every write of such a caller asks: the common case (no set-id bit) costs the stat only.
        if mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return Ok(None);
        }
        let mut kept = mode & !libc::S_ISUID;
        if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group(caller, attr.gid)) {
            kept &= !libc::S_ISGID;
        }
        Ok((kept != mode).then_some(kept & 0o7777))
    }

    pub(crate) fn remove(&self, parent: INodeNo, name: &[u8], is_dir: bool) -> Result<(), Error> {
        let _changes = self.stack.changes(false);
        let chain = self.chain(parent)?;
        let removed = self.stack.remove(&chain, name, is_dir);
        self.listings.versions().changed(parent.0);
        removed
    }

    pub(crate) fn rename_entry(
        &self,
        parent: INodeNo,
        name: &[u8],
        new_parent: INodeNo,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), Error> {
        // A lower directory moves by copy: nothing else may change meanwhile. Decided before
        // the lock and checked again under it (the name may have changed in between).
        let by_copy = |s: &Self| s.node(parent).is_ok_and(|dir| s.stack.renames_by_copy(&dir, name, flags));
        let mut exclusive = by_copy(self);
        loop {
            let changes = self.stack.changes(exclusive);
            if !exclusive && by_copy(self) {
                drop(changes);
                exclusive = true;
                continue;
            }
            return self.rename_locked(parent, name, new_parent, new_name, flags);
        }
    }

    fn rename_locked(
        &self,
        parent: INodeNo,
        name: &[u8],
        new_parent: INodeNo,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), Error> {
        let from = self.chain(parent)?;
        let to = self.chain(new_parent)?;
        let moved = self.stack.lookup(&from[from.len() - 1].1, name).ok();
        let swapped = self.stack.lookup(&to[to.len() - 1].1, new_name).ok();
        let renamed = self.stack.rename(&from, name, &to, new_name, flags);
        let versions = self.listings.versions();
        versions.changed(parent.0);
        versions.changed(new_parent.0);
        let is_dir = |n: &Option<Node>| n.as_ref().is_some_and(|n| n.kind == parallaxfs_overlay::FileKind::Dir);
        if is_dir(&moved) || is_dir(&swapped) {
            versions.dir_renamed();
        }
        renamed?;
        // The node ids keep their numbers; what they stand for now lives elsewhere.
        let (from, to) = (self.chain(parent)?, self.chain(new_parent)?);
        if let Some(m) = moved {
            if let Ok(n) = self.stack.lookup(&to[to.len() - 1].1, new_name) {
                self.nodes.replace(m.ino, n, new_parent.0, new_name);
            }
            if m.kind == parallaxfs_overlay::FileKind::Dir {
                self.refresh_below(m.ino);
            }
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            if let Some(s) = swapped {
                if let Ok(n) = self.stack.lookup(&from[from.len() - 1].1, name) {
                    self.nodes.replace(s.ino, n, parent.0, name);
                }
            }
        }
        Ok(())
    }

    /// Re-resolves every known node below a moved directory: a lower directory moves by copy,
    /// so what its children stood for now lives in the copy.
    fn refresh_below(&self, dir: u64) {
        for id in self.nodes.descendants(dir) {
            let Some((parent, name)) = self.nodes.name_of(id) else { continue };
            let Some(pnode) = self.nodes.get(parent) else { continue };
            if let Ok(n) = self.stack.lookup(&pnode, &name) {
                self.nodes.replace(id, n, parent, &name);
            }
        }
    }

    pub(crate) fn link_entry(
        &self,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: &[u8],
    ) -> Result<(FileAttr, u64), Error> {
        let _changes = self.stack.changes(false);
        let source = self.chain(ino)?;
        let dir = self.chain(new_parent)?;
        let linked = self.stack.link(&source, &dir, new_name);
        self.listings.versions().changed(new_parent.0);
        let node = linked?;
        let attr = file_attr(&self.stack.attr(&node)?);
        Ok((attr, self.nodes.remember(&node, new_parent.0, new_name)))
    }

    fn upper_file(&self, fh: FileHandle) -> Result<std::sync::Arc<OpenFile>, Error> {
        let file = self.files.get(fh.0).ok_or_else(|| errno(nix::errno::Errno::EBADF))?;
        if file.upper().is_none() {
            return Err(errno(nix::errno::Errno::EBADF));
        }
        Ok(file)
    }

    pub(crate) fn write_at(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32, Error> {
        let file = self.upper_file(fh)?;
        let f = file.upper().ok_or_else(|| errno(nix::errno::Errno::EBADF))?;
        f.write_all_at(data, offset)?;
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    pub(crate) fn allocate(&self, fh: FileHandle, offset: u64, length: u64, mode: i32) -> Result<(), Error> {
        let file = self.upper_file(fh)?;
        let f = file.upper().ok_or_else(|| errno(nix::errno::Errno::EBADF))?;
        let flags = nix::fcntl::FallocateFlags::from_bits_truncate(mode);
        let (off, len) = (
            i64::try_from(offset).map_err(|_| errno(nix::errno::Errno::EFBIG))?,
            i64::try_from(length).map_err(|_| errno(nix::errno::Errno::EFBIG))?,
        );
        nix::fcntl::fallocate(f.as_fd(), flags, off, len)?;
        Ok(())
    }

    pub(crate) fn copy_range(
        &self,
        fh_in: FileHandle,
        offset_in: u64,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
    ) -> Result<u32, Error> {
        let input = self.files.get(fh_in.0).ok_or_else(|| errno(nix::errno::Errno::EBADF))?;
        let output = self.upper_file(fh_out)?;
        let out = output.upper().ok_or_else(|| errno(nix::errno::Errno::EBADF))?;
        let len = usize::try_from(len.min(1 << 30)).unwrap_or(1 << 30);
        if let Some(inp) = input.upper() {
            let (mut oi, mut oo) = (offset_in as i64, offset_out as i64);
            let n = nix::fcntl::copy_file_range(inp.as_fd(), Some(&mut oi), out.as_fd(), Some(&mut oo), len)?;
            return Ok(u32::try_from(n).unwrap_or(u32::MAX));
        }
        let mut buf = vec![0u8; len.min(1 << 20)];
        let n = input.read_at(offset_in, &mut buf)?;
        out.write_all_at(&buf[..n], offset_out)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub(crate) fn sync(&self, fh: FileHandle, datasync: bool) -> Result<(), Error> {
        match self.files.get(fh.0) {
            Some(file) => match file.upper() {
                Some(f) => self.stack.sync_file(f, datasync),
                None => Ok(()),
            },
            None => Err(errno(nix::errno::Errno::EBADF)),
        }
    }
}
