//! The `fuser::Filesystem` implementation. Every method has one shape: convert the arguments,
//! call the union, reply once. Union logic lives in `parallaxfs-overlay`, errno in `errno.rs`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use parallaxfs_overlay::NewObject;
use parallaxfs_overlay::{ChainBuf, Error, Node, SetAttr, Stack};

use crate::attr::{file_attr, file_type, negative, IMMUTABLE_TTL};
use crate::errno::{errno, is_fault};
use crate::handles::{FileHandle as OpenFile, Handles};
use crate::listing::{Listing, Listings};
use crate::node_table::NodeTable;
use crate::page_store::PageStore;
use crate::prefetch::{Mode as PrefetchMode, Prefetch};

/// Largest read the kernel may send (max_pages 256 × 4 KiB).
const MAX_READ: usize = 1 << 20;

/// A union stack served over FUSE.
#[derive(Debug)]
pub struct OverlayFs {
    pub(crate) stack: std::sync::Arc<Stack>,
    pub(crate) nodes: NodeTable,
    pub(crate) files: Handles<OpenFile>,
    page_store: PageStore,
    pub(crate) ttl: std::time::Duration,
    on_destroy: Option<fn()>,
    /// Upper files are handed to the kernel (FUSE passthrough) when it agreed at init.
    pub(crate) passthrough: std::sync::atomic::AtomicBool,
    /// Backing ids registered with the kernel, per node: every open handle of a node must
    /// use the same one while any is open.
    pub(crate) backing: dashmap::DashMap<u64, std::sync::Weak<fuser::BackingId>>,
    /// The backing id each passthrough handle keeps alive.
    pub(crate) backing_of_handle: dashmap::DashMap<u64, std::sync::Arc<fuser::BackingId>>,
    /// Open handles served through the page cache, per node.
    pub(crate) cached: crate::io_mode::CachedOpens,
    /// The kernel accepted FUSE_NO_OPEN_SUPPORT (read-only mounts).
    no_open: std::sync::atomic::AtomicBool,
    /// The kernel accepted FUSE_NO_OPENDIR_SUPPORT: directories are read without
    /// OPENDIR/RELEASEDIR, with handle 0, and the kernel caches every listing.
    no_opendir: std::sync::atomic::AtomicBool,
    /// Listings of directories, kept across the READDIR requests of one listing (see
    /// [`crate::listing`]); writable stacks note every change of a directory's names here.
    pub(crate) listings: Listings,
    /// Lower files opened for handle-0 reads (no OPEN on read-only mounts), kept per node so
    /// that a file read in several requests is opened once, not once per `READ`.
    lower_readers: quick_cache::sync::Cache<u64, std::sync::Arc<OpenFile>>,
    /// Small files of listed directories read into the page cache ahead (`prefetch=N`).
    prefetch: Option<Prefetch>,
}

/// How many lower files handle-0 reads keep open.
const LOWER_READERS: usize = 64;
/// How many directory listings are kept.
const LISTINGS: usize = 32;

/// Buffers of reads answered as asked (up to 1 MiB each): shared by the request threads, two
/// kept (a buffer per thread kept 4 MiB for good after one sequential read).
static READ_BUFS: parallaxfs_overlay::squash::BufferPool = parallaxfs_overlay::squash::BufferPool::new(2, 2 * MAX_READ);

pub(crate) fn fail(op: &'static str, err: &Error) -> Errno {
    if is_fault(err) {
        tracing::warn!(op, error = %err, "request failed");
    } else {
        tracing::debug!(op, error = %err, "request answered with an error");
    }
    errno(err)
}

impl OverlayFs {
    /// Serves `stack` (without an upper layer every modifying request is answered EROFS).
    pub fn new(stack: Stack) -> Result<OverlayFs, Error> {
        let root = stack.root()?;
        let page_store = PageStore::start(!stack.writable())?;
        Ok(OverlayFs {
            stack: std::sync::Arc::new(stack),
            nodes: NodeTable::new(root),
            files: Handles::default(),
            page_store,
            ttl: IMMUTABLE_TTL,
            on_destroy: None,
            passthrough: std::sync::atomic::AtomicBool::new(false),
            backing: crate::new_map(),
            backing_of_handle: crate::new_map(),
            cached: crate::io_mode::CachedOpens::default(),
            no_open: std::sync::atomic::AtomicBool::new(false),
            no_opendir: std::sync::atomic::AtomicBool::new(false),
            listings: Listings::new(LISTINGS),
            lower_readers: parallaxfs_overlay::squash::counted_cache(LOWER_READERS),
            prefetch: None,
        })
    }

    /// Runs `hook` when the session ends (after the mount is gone, before fuser would
    /// unmount the mountpoint path again — which could hit a newer mount at the same place;
    /// a daemon passes `exit`).
    pub fn on_destroy(&mut self, hook: fn()) {
        self.on_destroy = Some(hook);
    }

    /// Sets the entry/attr timeout (`timeout=` option); lower objects default to a year.
    pub fn set_ttl(&mut self, ttl: std::time::Duration) {
        self.ttl = ttl;
    }

    /// Starts `threads` threads reading the small files of listed directories into the page
    /// cache before they are read, in `mode` (read-only stacks; see [`crate::prefetch`]).
    pub fn enable_prefetch(&mut self, mode: PrefetchMode, threads: usize) -> std::io::Result<()> {
        if !self.stack.writable() && threads > 0 {
            self.prefetch = Some(Prefetch::start(mode, self.stack.clone(), self.notifier_slot(), threads)?);
        }
        Ok(())
    }

    /// Where the session's notifier goes once the mount exists (for page-cache stores).
    pub fn notifier_slot(&self) -> std::sync::Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.page_store.notifier_slot()
    }

    pub(crate) fn node(&self, id: INodeNo) -> Result<Node, Error> {
        self.nodes.get(id.0).ok_or(Error::NotFound)
    }

    /// The chain of names from the root to node `id` (what copy-up needs).
    pub(crate) fn chain(&self, id: INodeNo) -> Result<ChainBuf, Error> {
        self.nodes.chain(id.0).ok_or(Error::NotFound)
    }

    fn lookup_node(&self, parent: INodeNo, name: &OsStr) -> Result<(Node, fuser::FileAttr), Error> {
        let dir = self.node(parent)?;
        let node = self.stack.lookup(&dir, name.as_bytes())?;
        let attr = file_attr(&self.stack.attr(&node)?);
        Ok((node, attr))
    }

    /// Node `ino`, which must be a directory.
    fn dir_node(&self, ino: INodeNo) -> Result<Node, Error> {
        let dir = self.node(ino)?;
        match dir.kind {
            parallaxfs_overlay::FileKind::Dir => Ok(dir),
            _ => Err(Error::NotDir),
        }
    }

    /// The listing a READDIR of `ino` reads (cached between the requests of one listing).
    fn listing(&self, ino: INodeNo) -> Result<std::sync::Arc<Listing>, Errno> {
        self.listings
            .get(ino.0, self.stack.writable(), |order| {
                let dir = self.node(ino)?;
                let items = self.stack.read_dir(&dir)?;
                let parent = self.nodes.parent_ino(ino.0).unwrap_or(dir.ino);
                Ok(match order {
                    None => Listing::fixed(dir.ino, parent, items),
                    Some((order, version)) => Listing::hashed(dir.ino, parent, items, order, version),
                })
            })
            .map_err(|e| fail("readdir", &e))
    }

    /// The lower file of node `ino` for a read without a handle (read-only mounts only).
    fn lower_reader(&self, ino: INodeNo) -> Result<std::sync::Arc<OpenFile>, Error> {
        if let Some(file) = self.lower_readers.get(&ino.0) {
            return Ok(file);
        }
        let file = std::sync::Arc::new(OpenFile::Lower(self.node(ino).and_then(|n| self.stack.open(&n))?));
        self.lower_readers.insert(ino.0, file.clone());
        Ok(file)
    }

    /// On a read of a file, queues the small files parked for its directory (once).
    fn read_ahead_siblings(&self, ino: INodeNo) {
        if let Some(dir) = self.prefetch.as_ref().and_then(|_| self.nodes.parent_id(ino.0)) {
            self.read_ahead(dir, ino.0);
        }
    }

    /// Queues the small files parked for directory `dir`, if any, but node `except` (one
    /// being read already).
    fn read_ahead(&self, dir: u64, except: u64) {
        let Some(prefetch) = &self.prefetch else { return };
        let Some(files) = prefetch.take_parked(dir) else { return };
        let nodes = &self.nodes;
        let files = files.into_iter().filter(|(id, _)| *id != except);
        prefetch.queue(files.filter_map(|(id, size)| Some((id, nodes.get(id)?, size))));
    }

    fn read(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        // Handle 0: a read-only mount told the kernel it needs no OPEN; read from the node.
        let file = match fh.0 {
            0 => match self.lower_reader(ino) {
                Ok(file) => {
                    self.read_ahead_siblings(ino);
                    file
                }
                Err(e) => return reply.error(fail("read", &e)),
            },
            fh => match self.files.get(fh) {
                Some(f) => f,
                None => return reply.error(Errno::EBADF),
            },
        };
        // Only where lower files are all there is: with an upper, a copy-up and write could
        // land between the read and the store, which would then put stale pages in the cache.
        let span = match self.stack.writable() {
            false => self.page_store.span(&file, offset, u64::from(size)),
            true => None,
        };
        if let Some(span) = span {
            return self.read_and_store(ino, &file, offset, size, span, reply);
        }
        let mut buf = READ_BUFS.take((size as usize).min(MAX_READ));
        match file.read_at(offset, &mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(fail("read", &e)),
        }
        READ_BUFS.give(buf);
    }

    /// A read smaller than a decode unit: reads the whole units around it (one decompression),
    /// answers from them, and has the page store put them all in the page cache.
    fn read_and_store(
        &self,
        ino: INodeNo,
        file: &OpenFile,
        offset: u64,
        size: u32,
        (start, len): (u64, u64),
        reply: ReplyData,
    ) {
        let mut bytes = self.page_store.buffer(len as usize);
        match file.read_at(start, &mut bytes) {
            Ok(n) => {
                bytes.truncate(n);
                let from = ((offset - start) as usize).min(n);
                let to = from.saturating_add(size as usize).min(n);
                reply.data(&bytes[from..to]);
                if n > 0 {
                    self.page_store.store(ino.0, start, bytes);
                }
            }
            Err(e) => reply.error(fail("read", &e)),
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
        // With an upper: we drop set-user/group-ID bits on write and truncate ourselves, and in
        // return the kernel stops asking for security.capability before every write.
        let wanted = if self.stack.writable() { wanted | InitFlags::FUSE_HANDLE_KILLPRIV_V2 } else { wanted };
        // Directories need no OPENDIR/RELEASEDIR: they are read with handle 0 and the kernel
        // keeps every listing (see `crate::listing` for offsets that stay right across
        // changes). Read-only files likewise need no OPEN/RELEASE (open answers ENOSYS, which
        // the kernel then takes as success for every file, keeping their page cache).
        let wanted = wanted | InitFlags::FUSE_NO_OPENDIR_SUPPORT;
        let wanted = if self.stack.writable() { wanted } else { wanted | InitFlags::FUSE_NO_OPEN_SUPPORT };
        let _ = config.add_capabilities(wanted & config.capabilities());
        let has = config.capabilities();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.no_open.store(!self.stack.writable() && has.contains(InitFlags::FUSE_NO_OPEN_SUPPORT), relaxed);
        self.no_opendir.store(has.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT), relaxed);
        let _ = config.set_max_readahead(MAX_READ as u32);
        // Upper files are real files on a local filesystem: let the kernel do their I/O
        // (needs CAP_SYS_ADMIN in the initial namespace, i.e. rootful, and Linux 6.9+).
        if self.stack.writable()
            && nix::unistd::geteuid().is_root()
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(hook) = self.on_destroy.take() {
            hook();
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_node(parent, name) {
            Ok((node, attr)) => {
                let generation = self.nodes.remember(&node, parent.0, name.as_bytes());
                reply.entry(&self.ttl, &attr, Generation(generation));
            }
            // Lower layers never change: cache the absence too.
            Err(Error::NotFound) => reply.entry(&self.ttl, &negative(), Generation(0)),
            Err(e) => reply.error(fail("lookup", &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).and_then(|n| self.attr_of(&n, fh)) {
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

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if !self.stack.writable() && !write && self.no_open.load(std::sync::atomic::Ordering::Relaxed) {
            // Check the node still resolves to a file, then let the kernel skip opens.
            return match self.node(ino).and_then(|n| self.stack.open(&n)) {
                Ok(_) => reply.error(Errno::ENOSYS),
                Err(e) => reply.error(fail("open", &e)),
            };
        }
        let caller = (req.gid(), req.pid());
        // A writer without CAP_FSETID (root stands for it) may have bits to drop on write.
        let served = match write && req.uid() != 0 && self.stack.writable() {
            true => self.must_serve_writes(ino, caller),
            false => Ok(false),
        };
        let served = match served {
            Ok(s) => s,
            Err(e) => return reply.error(fail("open", &e)),
        };
        match self.open_file(ino, write, flags.0 & libc::O_TRUNC != 0) {
            Ok(OpenFile::Upper(file)) if served => {
                reply.opened(FileHandle(self.keep_cached(ino.0, file)), FopenFlags::empty())
            }
            Ok(OpenFile::Upper(file)) => match self.keep_upper(ino.0, file, |f| reply.open_backing(f)) {
                (fh, Some(backing)) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing),
                (fh, None) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            },
            // A lower file (upper ones are matched above). It never changes: the kernel may
            // keep its pages across opens.
            Ok(file) => {
                let fh = self.files.insert(file);
                self.cached.opened(fh, ino.0);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
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
        self.backing_of_handle.remove(&fh.0);
        self.cached.released(fh.0);
        reply.ok();
    }

    /// Nothing to do on close (writes go straight to the upper file): ENOSYS tells the kernel
    /// to stop sending FLUSH at all, one round trip less per close.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel keeps listings across opens. Lower directories never change; every change
        // to a merged or upper directory is a request on it through this mount, after which
        // the kernel drops its cached listing (the directory's i_version moves) and reads the
        // new one from us. Without a handle: listings are per directory (`crate::listing`).
        match self.dir_node(ino) {
            // Let the kernel skip opens: it then reads with handle 0 and keeps listings as if
            // FOPEN_CACHE_DIR had been answered.
            Ok(_) if self.no_opendir.load(std::sync::atomic::Ordering::Relaxed) => reply.error(Errno::ENOSYS),
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR),
            Err(e) => reply.error(fail("opendir", &e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let dir = match self.listing(ino) {
            Ok(dir) => dir,
            Err(e) => return reply.error(e),
        };
        // Offsets: 1 after ".", 2 after "..", then the listing's own (`crate::listing`).
        let dots = [(b".".as_slice(), dir.dir), (b"..".as_slice(), dir.parent)];
        for (i, (name, dino)) in dots.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*dino), i as u64 + 1, fuser::FileType::Directory, OsStr::from_bytes(name)) {
                return reply.ok();
            }
        }
        for (i, item) in dir.items.iter().enumerate().skip(dir.start(offset)) {
            let full =
                reply.add(INodeNo(item.ino), dir.offset_of(i), file_type(item.kind), OsStr::from_bytes(&item.name));
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let (dir, dir_node) = match (self.listing(ino), self.node(ino)) {
            (Ok(dir), Ok(node)) => (dir, node),
            (Err(e), _) => return reply.error(e),
            (_, Err(e)) => return reply.error(fail("readdirplus", &e)),
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
        let mut ahead = Vec::new();
        for (i, item) in dir.items.iter().enumerate().skip(dir.start(offset)) {
            let node = match self.stack.entry_node(&dir_node, item) {
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
            let generation = Generation(self.nodes.generation(node.ino));
            if reply.add(attr.ino, dir.offset_of(i), name, &self.ttl, &attr, generation) {
                break;
            }
            let small = (1..=crate::prefetch::MAX_FILE).contains(&attr.size);
            if self.prefetch.is_some() && attr.kind == fuser::FileType::RegularFile && small {
                ahead.push((item.name.clone(), attr.ino.0, attr.size));
            }
            self.nodes.remember(&node, ino.0, &item.name);
        }
        // The kernel knows the entries only once the lister has taken this reply in: the
        // files wait until the next request on the directory shows it has (or a first read).
        if let Some(prefetch) = &self.prefetch {
            if prefetch.mode() == PrefetchMode::OnListing && offset > 0 {
                self.read_ahead(ino.0, 0);
            }
            ahead.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            prefetch.park(ino.0, ahead.into_iter().map(|(_, id, size)| (id, size)).collect());
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        if self.prefetch.as_ref().is_some_and(|p| p.mode() == PrefetchMode::OnListing) {
            self.read_ahead(ino.0, 0);
        }
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
            Ok(_) if mask.contains(AccessFlags::W_OK) && !self.stack.writable() => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fail("access", &e)),
        }
    }

    // Everything below modifies the union (EROFS without an upper layer); the work is in
    // `write_ops.rs`.

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // A truncate by a caller without CAP_FSETID drops set-user/group-ID bits (the kernel
        // leaves that to us under FUSE_HANDLE_KILLPRIV_V2; root stands for CAP_FSETID here).
        let mode = match mode {
            None if size.is_some() && req.uid() != 0 => match self.mode_without_suid(ino, (req.gid(), req.pid())) {
                Ok(m) => m,
                Err(e) => return reply.error(fail("setattr", &e)),
            },
            m => m,
        };
        let set = SetAttr { mode, uid, gid, size, atime: atime.map(time_spec), mtime: mtime.map(time_spec) };
        match self.set_attr(ino, &set, fh) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(fail("setattr", &e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let what = NewObject::Special { kind: mode & libc::S_IFMT, rdev: decode_dev(rdev) };
        self.reply_new(req, parent, name, mode, umask, what, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.reply_new(req, parent, name, mode, umask, NewObject::Dir, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name.as_bytes(), false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("unlink", &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name.as_bytes(), true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rmdir", &e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, name: &OsStr, target: &Path, reply: ReplyEntry) {
        let what = NewObject::Symlink(target.as_os_str().as_bytes());
        self.reply_new(req, parent, name, 0o777, 0, what, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.rename_entry(parent, name.as_bytes(), new_parent, new_name.as_bytes(), flags.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rename", &e)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, new_parent: INodeNo, new_name: &OsStr, reply: ReplyEntry) {
        match self.link_entry(ino, new_parent, new_name.as_bytes()) {
            Ok((attr, generation)) => reply.entry(&self.ttl, &attr, Generation(generation)),
            Err(e) => reply.error(fail("link", &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // FUSE_HANDLE_KILLPRIV_V2: a writer without CAP_FSETID loses set-user/group-ID bits.
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.drop_suid(ino, (req.gid(), req.pid()), Some(fh)) {
                return reply.error(fail("write", &e));
            }
        }
        match self.write_at(fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("write", &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _pos: u32,
        reply: ReplyEmpty,
    ) {
        let changes = self.stack.changes(false);
        let done = self.chain(ino).and_then(|c| self.stack.set_xattr(&c, name.as_bytes(), value, flags));
        drop(changes);
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("setxattr", &e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let changes = self.stack.changes(false);
        let done = self.chain(ino).and_then(|c| self.stack.remove_xattr(&c, name.as_bytes()));
        drop(changes);
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("removexattr", &e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _ = flags;
        let (attr, file, generation) = match self.create_file(req, parent, name.as_bytes(), mode, umask) {
            Ok(made) => made,
            Err(e) => return reply.error(fail("create", &e)),
        };
        let (fh, generation) = (self.keep_upper(attr.ino.0, file, |f| reply.open_backing(f)), Generation(generation));
        match fh {
            (fh, Some(b)) => {
                reply.created_passthrough(&self.ttl, &attr, generation, FileHandle(fh), FopenFlags::empty(), &b)
            }
            (fh, None) => reply.created(&self.ttl, &attr, generation, FileHandle(fh), FopenFlags::empty()),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.allocate(fh, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fallocate", &e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self.copy_range(fh_in, offset_in, fh_out, offset_out, len) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("copy_file_range", &e)),
        }
    }

    fn fsync(&self, _req: &Request, _i: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match self.sync(fh, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fsync", &e)),
        }
    }

    fn fsyncdir(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        reply.ok();
    }
}

fn time_spec(t: TimeOrNow) -> Option<nix::sys::time::TimeSpec> {
    match t {
        TimeOrNow::Now => None,
        TimeOrNow::SpecificTime(t) => {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Some(nix::sys::time::TimeSpec::new(d.as_secs() as i64, i64::from(d.subsec_nanos())))
        }
    }
}

/// The kernel's `new_decode_dev`, as a `dev_t`.
fn decode_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    nix::sys::stat::makedev(u64::from(major), u64::from(minor))
}
