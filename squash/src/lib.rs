//! Lazy, read-only SquashFS 4.0 reader over an mmap (or pread) of the image file.
//!
//! Owns: the superblock and every table of the format, block decompression (gzip, lzma, lzo,
//! xz, lz4, zstd), and bounded caches of decompressed metadata, fragment and data blocks and of
//! parsed inodes. Knows nothing of overlay or FUSE. Start at [`Image::open`].
//!
//! Invariants:
//! - `open` reads only the superblock, compressor options, the uid/gid table and the root
//!   inode, whatever the image size; everything else is read on demand.
//! - Memory is bounded by [`CacheConfig`], never by the image size.
//! - [`Image`] is `Clone + Send + Sync`; threads read at once without a global lock, and a
//!   block missed by several threads at once is decompressed once.
//! - No bytes of the image can make the reader panic, loop, or allocate by an unchecked count:
//!   every fault is an [`Error::Corrupt`] naming what and where.
#![deny(missing_docs)]

mod block_buf;
mod cache;
mod check;
mod compress;
mod dir;
mod error;
mod file;
mod inode;
mod le;
mod metadata;
mod source;
pub mod superblock;
mod table;
mod xattr;

use std::fs::File;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

pub use block_buf::BufferPool;
pub use cache::{cores, counted_cache, map_shards, CacheConfig, Stats};
pub use check::{check, CheckFault, CheckReport};
pub use compress::{Compressor, CompressorOptions};
pub use dir::DirEntry;
pub use error::{Error, Result};
pub use file::{block_kind, BlockKind, BlockMap};
pub use inode::{Inode, InodeRef, Kind};
pub use source::{is_network_fs, IoMode};
pub use superblock::SuperBlock;

use cache::{BlockCache, Counters, ObjectCache};
use file::DataBlock;
use metadata::{Bounds, MdBlock, METADATA_SIZE};
use source::Source;
use superblock::{flags, SUPERBLOCK_SIZE};
use table::Table;
use xattr::XattrTables;

/// How to open an image.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// mmap, pread, or decide by filesystem type.
    pub io: IoMode,
    /// Cache budgets.
    pub cache: CacheConfig,
}

/// An open image. Cheap to clone; all clones share caches.
#[derive(Debug, Clone)]
pub struct Image {
    inner: Arc<Inner>,
}

/// Shared state of an image: immutable after open except the caches and counters.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) superblock: SuperBlock,
    pub(crate) compressor_options: Option<CompressorOptions>,
    pub(crate) source: Source,
    pub(crate) ids: Box<[u32]>,
    pub(crate) id_table: Table,
    pub(crate) fragment_table: Option<Table>,
    pub(crate) export_table: Option<Table>,
    pub(crate) xattr: Option<XattrTables>,
    pub(crate) md_cache: BlockCache<MdBlock>,
    pub(crate) data_cache: BlockCache<DataBlock>,
    pub(crate) fragment_cache: BlockCache<DataBlock>,
    pub(crate) inode_cache: ObjectCache<Inode>,
    pub(crate) counters: Counters,
}

impl Image {
    /// Opens the image at `path` with default options.
    pub fn open(path: &Path) -> Result<Image> {
        Image::open_with(File::open(path)?, &OpenOptions::default())
    }

    /// Opens an already open image file. The file stays open for the image's life, so
    /// replacing or unlinking its path later does not affect reads.
    pub fn open_with(file: File, opts: &OpenOptions) -> Result<Image> {
        use std::os::unix::fs::FileExt;
        let mut head = [0u8; SUPERBLOCK_SIZE];
        let file_len = file.metadata()?.len();
        if file_len < SUPERBLOCK_SIZE as u64 {
            let mut magic = [0u8; 4];
            let n = file.read_at(&mut magic, 0)?;
            if n < 4 || u32::from_le_bytes(magic) != 0x7371_7368 {
                return Err(Error::NotSquashfs { magic: u32::from_le_bytes(magic) });
            }
            return Err(Error::Truncated { bytes_used: SUPERBLOCK_SIZE as u64, file_len });
        }
        file.read_exact_at(&mut head, 0)?;
        let sb = SuperBlock::parse(&head)?;
        if file_len < sb.bytes_used {
            return Err(Error::Truncated { bytes_used: sb.bytes_used, file_len });
        }
        let source = match source::resolve_mode(opts.io, &file) {
            IoMode::Pread => Source::pread(file, sb.bytes_used),
            _ => Source::mmap(file, sb.bytes_used)?,
        };
        Image::from_source(sb, source, &opts.cache)
    }

    /// Opens an image held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Arc<[u8]>) -> Result<Image> {
        Image::from_bytes_with(bytes, &CacheConfig::default())
    }

    /// Opens an image held in memory with the given cache budgets.
    pub fn from_bytes_with(bytes: Arc<[u8]>, cache: &CacheConfig) -> Result<Image> {
        let head = bytes.get(..SUPERBLOCK_SIZE).ok_or_else(|| {
            let magic = bytes.get(..4).map_or(0, |m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
            if magic == 0x7371_7368 {
                Error::Truncated { bytes_used: SUPERBLOCK_SIZE as u64, file_len: bytes.len() as u64 }
            } else {
                Error::NotSquashfs { magic }
            }
        })?;
        let sb = SuperBlock::parse(head)?;
        if (bytes.len() as u64) < sb.bytes_used {
            return Err(Error::Truncated { bytes_used: sb.bytes_used, file_len: bytes.len() as u64 });
        }
        let mut source = Source::bytes(bytes);
        source.set_limit(sb.bytes_used);
        Image::from_source(sb, source, cache)
    }

    fn from_source(sb: SuperBlock, source: Source, cache: &CacheConfig) -> Result<Image> {
        sb.compressor.check_available()?;
        let bs = u64::from(sb.block_size);
        let inode_table = sb.inode_table;
        let id_table = Table::new(sb.id_table, u64::from(sb.no_ids), 4, sb.directory_table, "id table");
        let fragment_table = sb
            .fragment_table
            .map(|at| Table::new(at, u64::from(sb.fragments), 16, sb.directory_table, "fragment table"));
        let export_table =
            sb.export_table.map(|at| Table::new(at, u64::from(sb.inodes), 8, sb.directory_table, "export table"));
        let mut inner = Inner {
            superblock: sb,
            compressor_options: None,
            source,
            ids: Box::new([]),
            id_table,
            fragment_table,
            export_table,
            xattr: None,
            md_cache: BlockCache::new(cache.metadata_bytes, METADATA_SIZE as u64),
            data_cache: BlockCache::new(cache.data_bytes.max(4 * bs), bs),
            fragment_cache: BlockCache::new(cache.fragment_bytes.max(4 * bs), bs),
            inode_cache: ObjectCache::new(cache.inodes),
            counters: Counters::default(),
        };
        if inner.superblock.has(flags::COMPRESSOR_OPTIONS) {
            let bounds = Bounds { start: SUPERBLOCK_SIZE as u64, end: inode_table, what: "compressor options" };
            let block = inner.md_block(SUPERBLOCK_SIZE as u64, bounds)?;
            let opts = CompressorOptions::parse(inner.superblock.compressor, &block.data, SUPERBLOCK_SIZE as u64)?;
            inner.compressor_options = Some(opts);
        }
        inner.ids = inner.load_ids()?;
        if let Some(at) = inner.superblock.xattr_id_table {
            inner.xattr = Some(inner.xattr_tables(at)?);
        }
        let root = inner.inode(InodeRef(inner.superblock.root_inode))?;
        if root.kind != Kind::Dir {
            return Err(Error::corrupt("root inode is not a directory", inode_table));
        }
        Ok(Image { inner: Arc::new(inner) })
    }

    /// Asks the kernel to start reading the inode and directory tables (non-blocking, but its
    /// cost grows with the tables: call it off the open path, e.g. from a thread after mount).
    pub fn prefetch_metadata(&self) {
        let sb = &self.inner.superblock;
        self.inner.source.will_need(sb.inode_table, sb.directory_table_end() - sb.inode_table);
    }

    /// The validated superblock.
    pub fn superblock(&self) -> &SuperBlock {
        &self.inner.superblock
    }

    /// Compressor options stored in the image, if any.
    pub fn compressor_options(&self) -> Option<CompressorOptions> {
        self.inner.compressor_options
    }

    /// Entries in the xattr id table, `None` when the image stores no xattrs.
    pub fn xattr_id_count(&self) -> Option<u64> {
        self.inner.xattr.as_ref().map(|x| x.ids.count())
    }

    /// The I/O backend in use (`Auto` already resolved).
    pub fn io_mode(&self) -> IoMode {
        self.inner.source.mode()
    }

    /// Reference of the root directory.
    pub fn root(&self) -> InodeRef {
        InodeRef(self.inner.superblock.root_inode)
    }

    /// The inode at `r` (cached).
    pub fn inode(&self, r: InodeRef) -> Result<Arc<Inode>> {
        self.inner.inode(r)
    }

    /// Looks `name` up in directory `dir`; `None` if absent.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
        self.inner.lookup(dir, name)
    }

    /// Resolves a `/`-separated path from the root without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Result<Arc<Inode>> {
        let mut inode = self.inode(self.root())?;
        for component in path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
            if inode.kind != Kind::Dir {
                return Err(Error::NotDir);
            }
            let entry = self.lookup(&inode, component)?.ok_or(Error::NotFound)?;
            inode = self.inode(entry.inode_ref)?;
        }
        Ok(inode)
    }

    /// Calls `f(entry, cookie_of_next)` for each entry of `dir` from `cookie` on (0 = start),
    /// without `.` and `..`, until `f` breaks. Cookies are stable for the image's life.
    pub fn read_dir_from(
        &self,
        dir: &Inode,
        cookie: u64,
        f: &mut dyn FnMut(&DirEntry, u64) -> ControlFlow<()>,
    ) -> Result<()> {
        self.inner.read_dir_from(dir, cookie, f)
    }

    /// All entries of `dir`, in name order.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        self.read_dir_from(dir, 0, &mut |e, _| {
            out.push(e.clone());
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Reads file bytes at `offset`; returns fewer than `buf.len()` only at end of file.
    pub fn read_at(&self, file: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner.read_at(file, offset, buf)
    }

    /// Non-blocking hint that file bytes `[offset, offset + len)` will be read soon: the
    /// storage is asked for the blocks holding them (a reader's read-ahead of a sequential
    /// stream; the image itself is read without the kernel's readahead).
    pub fn will_read(&self, file: &Inode, offset: u64, len: u64) -> Result<()> {
        let body = file.file()?;
        if body.block_count == 0 || len == 0 || offset >= file.size {
            return Ok(());
        }
        let bs = u64::from(self.inner.superblock.block_size);
        let last = (file.size.min(offset.saturating_add(len)) - 1) / bs;
        let map = self.inner.block_map(body)?;
        self.inner.ask_for_blocks(&map, offset / bs, last.max(offset / bs + 1));
        Ok(())
    }

    /// The file's data block map (for tools that walk blocks, e.g. copy-up skipping holes).
    pub fn block_map(&self, file: &Inode) -> Result<Option<Arc<BlockMap>>> {
        let body = file.file()?;
        if body.block_count == 0 {
            return Ok(None);
        }
        self.inner.block_map(body).map(Some)
    }

    /// The target of a symlink.
    pub fn read_link(&self, link: &Inode) -> Result<Box<[u8]>> {
        link.symlink_target().map(Into::into)
    }

    /// Full names (with prefix) of the inode's extended attributes.
    pub fn list_xattr(&self, inode: &Inode) -> Result<Vec<Vec<u8>>> {
        self.inner.list_xattr(inode)
    }

    /// The value of one extended attribute, `None` if absent.
    pub fn get_xattr(&self, inode: &Inode, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get_xattr(inode, name)
    }

    /// Finds an inode by number through the export table (`None` without one).
    pub fn inode_by_number(&self, ino: u32) -> Result<Option<InodeRef>> {
        let Some(r) = self.inner.export_ref(ino)? else { return Ok(None) };
        let inode = self.inode(InodeRef(r))?;
        if inode.ino != ino {
            return Err(Error::corrupt("export table entry points at another inode", r));
        }
        Ok(Some(InodeRef(r)))
    }

    /// Counters: blocks read, cache hits, bytes decompressed, bytes cached.
    pub fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.counters;
        Stats {
            metadata_misses: c.metadata_misses.load(Relaxed),
            metadata_hits: c.metadata_hits.load(Relaxed),
            data_misses: c.data_misses.load(Relaxed),
            data_hits: c.data_hits.load(Relaxed),
            fragment_misses: c.fragment_misses.load(Relaxed),
            fragment_hits: c.fragment_hits.load(Relaxed),
            decompressed_bytes: c.decompressed_bytes.load(Relaxed),
            cached_bytes: self.inner.md_cache.weight()
                + self.inner.data_cache.weight()
                + self.inner.fragment_cache.weight(),
        }
    }
}
