//! A SquashFS image as a layer, read in process through `parallaxfs-squash`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parallaxfs_squash::{Image, Inode, Kind};

use super::{FileReader, Handle, Layer, RawEntry, StatFs};
use crate::attr::{Attr, FileKind, Time};
use crate::error::{Error, Result};

/// A read-only layer backed by a SquashFS image.
#[derive(Debug)]
pub struct SquashLayer {
    image: Image,
    /// Position in the stack, for error messages.
    index: usize,
    /// The inode and directory tables were asked for (at the first lookup).
    tables_asked: AtomicBool,
}

impl SquashLayer {
    /// Wraps an open image; `index` is its position among the lowers (for messages).
    pub fn new(image: Image, index: usize) -> SquashLayer {
        SquashLayer { image, index, tables_asked: AtomicBool::new(false) }
    }

    /// At the first lookup, a walk is starting: have the inode and directory tables read in
    /// the background, in large sequential reads instead of one small read per block when the
    /// walk reaches it. Not at open: the mount would wait behind those reads.
    fn ask_for_tables(&self) {
        if !self.tables_asked.swap(true, Ordering::Relaxed) {
            let image = self.image.clone();
            let _ = std::thread::Builder::new().name("tables".into()).spawn(move || image.prefetch_metadata());
        }
    }

    fn err(&self, source: parallaxfs_squash::Error) -> Error {
        match source {
            parallaxfs_squash::Error::NotFound => Error::NotFound,
            parallaxfs_squash::Error::NotDir => Error::NotDir,
            parallaxfs_squash::Error::NotSymlink => Error::NotSymlink,
            parallaxfs_squash::Error::NotFile => Error::IsDir,
            source => Error::Squash { layer: self.index, source },
        }
    }

    /// The inode behind a handle (from the image's inode cache). A handle of another layer
    /// kind would be a bug in the stack; it is answered with EINVAL rather than a panic.
    fn inode(&self, h: &Handle) -> Result<Arc<Inode>> {
        match h {
            Handle::Squash(r) => self.image.inode(*r).map_err(|e| self.err(e)),
            Handle::Plain(_) => Err(Error::Io(std::io::Error::from_raw_os_error(libc_einval()))),
        }
    }
}

fn kind(k: Kind) -> FileKind {
    match k {
        Kind::Dir => FileKind::Dir,
        Kind::File => FileKind::File,
        Kind::Symlink => FileKind::Symlink,
        Kind::BlockDev => FileKind::BlockDev,
        Kind::CharDev => FileKind::CharDev,
        Kind::Fifo => FileKind::Fifo,
        Kind::Socket => FileKind::Socket,
    }
}

#[derive(Debug)]
struct SquashFile {
    image: Image,
    inode: Arc<Inode>,
    index: usize,
    /// Where the last read ended: a read starting there continues a sequential stream.
    next: AtomicU64,
}

impl FileReader for SquashFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let len = buf.len() as u64;
        // A stream read in order: ask the storage now for the next two reads' blocks, so that
        // they arrive while this one is decompressed (the image has no kernel readahead, so
        // a scattered reader, a container start, reads only what it touches).
        let previous_end = self.next.swap(offset + len, Ordering::Relaxed);
        if offset > 0 && previous_end == offset {
            let _ = self.image.will_read(&self.inode, offset + len, 2 * len);
        }
        self.image.read_at(&self.inode, offset, buf).map_err(|source| Error::Squash { layer: self.index, source })
    }

    /// A data block is decompressed whole, whatever part of it is read.
    fn decode_unit(&self) -> Option<u64> {
        Some(u64::from(self.image.superblock().block_size))
    }
}

impl Layer for SquashLayer {
    fn root(&self) -> Result<Handle> {
        // Parsed once here, so that a bad root inode fails the mount.
        let root = self.image.root();
        self.image.inode(root).map(|_| Handle::Squash(root)).map_err(|e| self.err(e))
    }

    fn lookup(&self, dir: &Handle, name: &[u8]) -> Result<Option<Handle>> {
        self.ask_for_tables();
        let dir = self.inode(dir)?;
        let Some(entry) = self.image.lookup(&dir, name).map_err(|e| self.err(e))? else { return Ok(None) };
        // Parsed now (and cached): a corrupt inode fails its lookup, not a later request.
        self.image.inode(entry.inode_ref).map_err(|e| self.err(e))?;
        Ok(Some(Handle::Squash(entry.inode_ref)))
    }

    fn attr(&self, object: &Handle) -> Result<Attr> {
        let i = self.inode(object)?;
        let t = Time { secs: i64::from(i.mtime), nsecs: 0 };
        Ok(Attr {
            ino: u64::from(i.ino),
            kind: kind(i.kind),
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
            size: i.size,
            blocks: i.blocks_512(),
            atime: t,
            mtime: t,
            ctime: t,
        })
    }

    fn kind(&self, object: &Handle) -> Result<FileKind> {
        Ok(kind(self.inode(object)?.kind))
    }

    fn read_dir(&self, dir: &Handle) -> Result<Vec<RawEntry>> {
        let entries = self.image.read_dir(&*self.inode(dir)?).map_err(|e| self.err(e))?;
        let entry = |e: parallaxfs_squash::DirEntry| RawEntry {
            name: e.name,
            ino: u64::from(e.ino),
            kind: kind(e.kind),
            object: Some(Handle::Squash(e.inode_ref)),
        };
        Ok(entries.into_iter().map(entry).collect())
    }

    fn read_link(&self, object: &Handle) -> Result<Vec<u8>> {
        self.image.read_link(&*self.inode(object)?).map(Into::into).map_err(|e| self.err(e))
    }

    fn list_xattr(&self, object: &Handle) -> Result<Vec<Vec<u8>>> {
        self.image.list_xattr(&*self.inode(object)?).map_err(|e| self.err(e))
    }

    fn get_xattr(&self, object: &Handle, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.image.get_xattr(&*self.inode(object)?, name).map_err(|e| self.err(e))
    }

    fn open(&self, object: &Handle) -> Result<Box<dyn FileReader>> {
        let inode = self.inode(object)?;
        if inode.kind != Kind::File {
            return Err(Error::IsDir);
        }
        Ok(Box::new(SquashFile { image: self.image.clone(), inode, index: self.index, next: AtomicU64::new(0) }))
    }

    fn statfs(&self) -> Result<StatFs> {
        let sb = self.image.superblock();
        Ok(StatFs {
            blocks: sb.bytes_used.div_ceil(u64::from(sb.block_size)),
            bfree: 0,
            bavail: 0,
            files: u64::from(sb.inodes),
            ffree: 0,
            bsize: sb.block_size,
            namelen: 256,
        })
    }

    fn immutable(&self) -> bool {
        true
    }
}

fn libc_einval() -> i32 {
    nix::errno::Errno::EINVAL as i32
}
