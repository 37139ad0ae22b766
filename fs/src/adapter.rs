//! The `fuser::Filesystem` implementation. Every method has one shape: convert the arguments,
//! call the union, reply once. Union logic lives in `parallaxfs-overlay`, errno in `errno.rs`.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use parallaxfs_overlay::{Error, Node, Stack};

use crate::attr::{file_attr, file_type, negative, IMMUTABLE_TTL};
use crate::errno::{errno, is_fault};
use crate::handles::{DirHandle, FileHandle as OpenFile, Handles};
use crate::node_table::NodeTable;
use crate::page_store::PageStore;

/// Largest read the kernel may send (max_pages 256 × 4 KiB).
const MAX_READ: usize = 1 << 20;

/// A union stack served over FUSE.
#[derive(Debug)]
pub struct OverlayFs {
    stack: Stack,
    nodes: NodeTable,
    files: Handles<OpenFile>,
    dirs: Handles<DirHandle>,
    page_store: PageStore,
    ttl: std::time::Duration,
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn fail(op: &'static str, err: &Error) -> Errno {
    if is_fault(err) {
        tracing::warn!(op, error = %err, "request failed");
    } else {
        tracing::debug!(op, error = %err, "request answered with an error");
    }
    errno(err)
}

impl OverlayFs {
    /// Serves `stack` (read-only: every modifying request is answered EROFS).
    pub fn new(stack: Stack) -> Result<OverlayFs, Error> {
        let root = stack.root()?;
        let page_store = PageStore::start()?;
        Ok(OverlayFs {
            stack,
            nodes: NodeTable::new(root),
            files: Handles::default(),
            dirs: Handles::default(),
            page_store,
            ttl: IMMUTABLE_TTL,
        })
    }

    /// Sets the entry/attr timeout (`timeout=` option); lower objects default to a year.
    pub fn set_ttl(&mut self, ttl: std::time::Duration) {
        self.ttl = ttl;
    }

    /// Where the session's notifier goes once the mount exists (for page-cache stores).
    pub fn notifier_slot(&self) -> std::sync::Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.page_store.notifier_slot()
    }

    fn node(&self, id: INodeNo) -> Result<Node, Error> {
        self.nodes.get(id.0).ok_or(Error::NotFound)
    }

    fn lookup_node(&self, parent: INodeNo, name: &OsStr) -> Result<(Node, fuser::FileAttr), Error> {
        let dir = self.node(parent)?;
        let node = self.stack.lookup(&dir, name.as_bytes())?;
        let attr = file_attr(&self.stack.attr(&node)?);
        Ok((node, attr))
    }

    fn open_dir(&self, ino: INodeNo) -> Result<u64, Error> {
        let dir = self.node(ino)?;
        let items = self.stack.read_dir(&dir)?;
        let parent = self.nodes.parent(ino.0).unwrap_or(dir.ino);
        Ok(self.dirs.insert(DirHandle { dir: dir.ino, parent, items }))
    }

    fn read(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        let Some(file) = self.files.get(fh.0) else { return reply.error(Errno::EBADF) };
        let done = READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize((size as usize).min(MAX_READ), 0);
            match file.read_at(offset, &mut buf) {
                Ok(n) => {
                    reply.data(&buf[..n]);
                    n > 0
                }
                Err(e) => {
                    reply.error(fail("read", &e));
                    false
                }
            }
        });
        if done {
            self.page_store.after_read(ino.0, &file, offset, u64::from(size));
        }
    }
}

impl Filesystem for OverlayFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_MAX_PAGES;
        let _ = config.add_capabilities(wanted & config.capabilities());
        let _ = config.set_max_readahead(MAX_READ as u32);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_node(parent, name) {
            Ok((node, attr)) => {
                let parent = self.nodes.get(parent.0).map(|d| d.ino);
                self.nodes.remember_in(&node, parent);
                reply.entry(&self.ttl, &attr, Generation(0));
            }
            // Lower layers never change: cache the absence too.
            Err(Error::NotFound) => reply.entry(&self.ttl, &negative(), Generation(0)),
            Err(e) => reply.error(fail("lookup", &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).and_then(|n| self.stack.attr(&n)) {
            Ok(attr) => reply.attr(&self.ttl, &file_attr(&attr)),
            Err(e) => reply.error(fail("getattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).and_then(|n| self.stack.read_link(&n)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(fail("readlink", &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino).and_then(|n| self.stack.open(&n)) {
            Ok(file) => reply.opened(FileHandle(self.files.insert(file)), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(fail("open", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        OverlayFs::read(self, ino, fh, offset, size, reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(fh.0);
        reply.ok();
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.open_dir(ino) {
            // Lower directories never change: let the kernel cache their listings.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR),
            Err(e) => reply.error(fail("opendir", &e)),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(dir) = self.dirs.get(fh.0) else { return reply.error(Errno::EBADF) };
        // Offsets: 1 after ".", 2 after "..", 3 + i after item i.
        let dots = [(b".".as_slice(), dir.dir), (b"..".as_slice(), dir.parent)];
        for (i, (name, dino)) in dots.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*dino), i as u64 + 1, fuser::FileType::Directory, OsStr::from_bytes(name)) {
                return reply.ok();
            }
        }
        let start = (offset as usize).saturating_sub(2);
        for (i, item) in dir.items.iter().enumerate().skip(start) {
            let full = reply.add(INodeNo(item.ino), i as u64 + 3, file_type(item.kind), OsStr::from_bytes(&item.name));
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let (Some(dir), Ok(dir_node)) = (self.dirs.get(fh.0), self.node(ino)) else {
            return reply.error(Errno::EBADF);
        };
        // "." and ".." carry attributes but the kernel takes no reference on them.
        let dot_attr = match self.stack.attr(&dir_node) {
            Ok(a) => file_attr(&a),
            Err(e) => return reply.error(fail("readdirplus", &e)),
        };
        // The kernel links neither to a dentry; their attributes only carry `d_ino`.
        let dotdot_attr = fuser::FileAttr { ino: INodeNo(dir.parent), ..dot_attr };
        for (i, (name, attr)) in
            [(b".".as_slice(), &dot_attr), (b"..".as_slice(), &dotdot_attr)].iter().enumerate().skip(offset as usize)
        {
            if reply.add(attr.ino, i as u64 + 1, OsStr::from_bytes(name), &self.ttl, attr, Generation(0)) {
                return reply.ok();
            }
        }
        let start = (offset as usize).saturating_sub(2);
        for (i, item) in dir.items.iter().enumerate().skip(start) {
            let node = match self.stack.lookup(&dir_node, &item.name) {
                Ok(n) => n,
                Err(e) => {
                    fail("readdirplus lookup", &e);
                    continue;
                }
            };
            let attr = match self.stack.attr(&node) {
                Ok(a) => file_attr(&a),
                Err(e) => {
                    fail("readdirplus getattr", &e);
                    continue;
                }
            };
            let name = OsStr::from_bytes(&item.name);
            if reply.add(attr.ino, i as u64 + 3, name, &self.ttl, &attr, Generation(0)) {
                break;
            }
            self.nodes.remember_in(&node, Some(dir_node.ino));
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dirs.remove(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.stack.statfs() {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize),
            Err(e) => reply.error(fail("statfs", &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.node(ino).and_then(|n| self.stack.get_xattr(&n, name.as_bytes())) {
            Ok(value) if size == 0 => reply.size(value.len() as u32),
            Ok(value) if value.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(value) => reply.data(&value),
            Err(e) => reply.error(fail("getxattr", &e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.node(ino).and_then(|n| self.stack.list_xattr(&n, req.uid() == 0)) {
            Ok(names) => {
                let mut list = Vec::new();
                for n in names {
                    list.extend_from_slice(&n);
                    list.push(0);
                }
                if size == 0 {
                    reply.size(list.len() as u32);
                } else if list.len() > size as usize {
                    reply.error(Errno::ERANGE);
                } else {
                    reply.data(&list);
                }
            }
            Err(e) => reply.error(fail("listxattr", &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.node(ino) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fail("access", &e)),
        }
    }

    // Everything below modifies the union: a stack without an upper layer is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _r: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, _v: &[u8], _f: i32, _p: u32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _f: i32, reply: ReplyCreate) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _o: u64, _l: u64, _m: i32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fsync(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        reply.ok();
    }
}
