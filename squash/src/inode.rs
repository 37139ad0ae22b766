//! Inodes: references, the 14 on-disk types (basic and extended), and the parsed form.

use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::file::BlockMap;
use crate::metadata::{Bounds, MdCursor, METADATA_SIZE};
use crate::Inner;

/// Location of an inode: `(metadata block offset relative to the inode table) << 16 | offset
/// in the decompressed block`. Stable for the image's life, so usable as a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeRef(pub u64);

impl InodeRef {
    pub(crate) fn block(self) -> u64 {
        self.0 >> 16
    }
    pub(crate) fn offset(self) -> usize {
        (self.0 & 0xffff) as usize
    }
}

/// File type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Block device.
    BlockDev,
    /// Character device.
    CharDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl Kind {
    /// Decodes the basic type number (1..=7) used in directory entries.
    pub(crate) fn from_basic(t: u16) -> Option<Kind> {
        Some(match t {
            1 => Kind::Dir,
            2 => Kind::File,
            3 => Kind::Symlink,
            4 => Kind::BlockDev,
            5 => Kind::CharDev,
            6 => Kind::Fifo,
            7 => Kind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this type.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::Dir => libc::S_IFDIR,
            Kind::File => libc::S_IFREG,
            Kind::Symlink => libc::S_IFLNK,
            Kind::BlockDev => libc::S_IFBLK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        }
    }
}

/// One entry of an extended directory's index: where a header with this first name starts.
#[derive(Debug, Clone)]
pub(crate) struct DirIndexEntry {
    /// Byte offset of the header inside the listing.
    pub(crate) index: u32,
    /// Metadata block holding it, relative to the directory table.
    pub(crate) start_block: u32,
    pub(crate) name: Box<[u8]>,
}

/// Where a directory's listing lives.
#[derive(Debug)]
pub(crate) struct DirBody {
    pub(crate) start_block: u32,
    pub(crate) offset: u16,
    /// Listing bytes (`file_size - 3`).
    pub(crate) listing_len: u32,
    pub(crate) index: Box<[DirIndexEntry]>,
}

/// Where a regular file's data lives.
#[derive(Debug)]
pub(crate) struct FileBody {
    pub(crate) blocks_start: u64,
    /// `(fragment index, offset in the fragment block)` of the tail, if packed.
    pub(crate) fragment: Option<(u32, u32)>,
    /// Number of full-or-last data blocks (not counting the fragment tail).
    pub(crate) block_count: u64,
    /// Position of the block size list in the inode table.
    pub(crate) block_list: (u64, usize),
    pub(crate) block_map: OnceLock<Arc<BlockMap>>,
}

#[derive(Debug)]
pub(crate) enum Body {
    Dir(DirBody),
    File(FileBody),
    Symlink(Box<[u8]>),
    /// Devices keep their number in [`Inode::rdev`]; fifos and sockets have no body.
    Special,
}

/// A parsed inode.
#[derive(Debug)]
pub struct Inode {
    /// Where it lives.
    pub inode_ref: InodeRef,
    /// Inode number, unique in the image and shared by hard links.
    pub ino: u32,
    /// File type.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Link count.
    pub nlink: u32,
    /// Size: file bytes, symlink target length, or directory listing size + 3.
    pub size: u64,
    /// Bytes of sparse (all-zero, not stored) blocks of a regular file.
    pub sparse: u64,
    /// Raw device number of block/char devices (kernel `new_encode_dev` form).
    pub rdev: u32,
    pub(crate) xattr: Option<u32>,
    /// Size of the xattrs (from the xattr id table), 0 without them.
    pub(crate) xattr_size: u32,
    pub(crate) body: Body,
}

impl Inode {
    /// `st_mode`: type bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm)
    }

    /// Device major number (kernel `new_decode_dev`).
    pub fn rdev_major(&self) -> u32 {
        (self.rdev & 0xfff00) >> 8
    }

    /// Device minor number.
    pub fn rdev_minor(&self) -> u32 {
        (self.rdev & 0xff) | ((self.rdev >> 12) & 0xfff00)
    }

    /// 512-byte blocks, as the kernel reports `st_blocks` (`fs/squashfs/inode.c`): the file's
    /// non-sparse bytes, plus the size of the inode's xattrs, each rounded up to 512 bytes
    /// (so a directory or device with xattrs has blocks too).
    pub fn blocks_512(&self) -> u64 {
        let data = match self.kind {
            Kind::File => self.size.saturating_sub(self.sparse).div_ceil(512),
            _ => 0,
        };
        data + u64::from(self.xattr_size).div_ceil(512)
    }

    /// True when the inode carries extended attributes.
    pub fn has_xattrs(&self) -> bool {
        self.xattr.is_some()
    }

    pub(crate) fn dir(&self) -> Result<&DirBody> {
        match &self.body {
            Body::Dir(d) => Ok(d),
            _ => Err(Error::NotDir),
        }
    }

    pub(crate) fn file(&self) -> Result<&FileBody> {
        match &self.body {
            Body::File(f) => Ok(f),
            _ => Err(Error::NotFile),
        }
    }

    /// The symlink target bytes.
    pub fn symlink_target(&self) -> Result<&[u8]> {
        match &self.body {
            Body::Symlink(t) => Ok(t),
            _ => Err(Error::NotSymlink),
        }
    }
}

const NO_XATTR: u32 = u32::MAX;
const NO_FRAGMENT: u32 = u32::MAX;
/// PATH_MAX - 1: the longest symlink target a Linux filesystem can hand out.
const MAX_SYMLINK: u32 = 4095;
/// SquashFS names are at most 256 bytes.
pub(crate) const MAX_NAME: usize = 256;

fn xattr_field(v: u32) -> Option<u32> {
    (v != NO_XATTR).then_some(v)
}

impl Inner {
    pub(crate) fn inode_bounds(&self) -> Bounds {
        Bounds { start: self.superblock.inode_table, end: self.superblock.directory_table, what: "inode table" }
    }

    /// Parses the inode at `r` (through the inode cache).
    pub(crate) fn inode(&self, r: InodeRef) -> Result<Arc<Inode>> {
        self.inode_cache.get_or_load(r.0, || self.parse_inode(r))
    }

    fn parse_inode(&self, r: InodeRef) -> Result<Inode> {
        let sb = &self.superblock;
        let block = sb
            .inode_table
            .checked_add(r.block())
            .ok_or(Error::corrupt("inode reference out of range", sb.inode_table))?;
        if r.offset() >= METADATA_SIZE || r.0 >> 48 != 0 {
            return Err(Error::corrupt("inode reference out of range", block));
        }
        let mut c = self.cursor(block, r.offset(), self.inode_bounds())?;
        let inode_type = c.u16()?;
        let perm = c.u16()? & 0o7777;
        let uid = self.id(c.u16()?, c.block())?;
        let gid = self.id(c.u16()?, c.block())?;
        let mtime = c.u32()?;
        let ino = c.u32()?;
        if ino == 0 || ino > sb.inodes {
            return Err(c.corrupt("inode number out of range"));
        }
        let mut inode = Inode {
            inode_ref: r,
            ino,
            kind: Kind::File,
            perm,
            uid,
            gid,
            mtime,
            nlink: 1,
            size: 0,
            sparse: 0,
            rdev: 0,
            xattr: None,
            xattr_size: 0,
            body: Body::Special,
        };
        match inode_type {
            1 => self.parse_basic_dir(&mut c, &mut inode)?,
            8 => self.parse_ext_dir(&mut c, &mut inode)?,
            2 => self.parse_basic_file(&mut c, &mut inode)?,
            9 => self.parse_ext_file(&mut c, &mut inode)?,
            3 | 10 => {
                inode.kind = Kind::Symlink;
                inode.nlink = c.u32()?;
                let len = c.u32()?;
                if len == 0 || len > MAX_SYMLINK {
                    return Err(c.corrupt("symlink target length"));
                }
                let target = c.vec(len as usize)?;
                if target.contains(&0) {
                    return Err(c.corrupt("symlink target contains NUL"));
                }
                inode.size = u64::from(len);
                inode.body = Body::Symlink(target.into_boxed_slice());
                if inode_type == 10 {
                    inode.xattr = xattr_field(c.u32()?);
                }
            }
            4 | 5 | 11 | 12 => {
                inode.kind = if inode_type % 7 == 4 { Kind::BlockDev } else { Kind::CharDev };
                inode.nlink = c.u32()?;
                inode.rdev = c.u32()?;
                if inode_type > 7 {
                    inode.xattr = xattr_field(c.u32()?);
                }
            }
            6 | 7 | 13 | 14 => {
                inode.kind = if inode_type % 7 == 6 { Kind::Fifo } else { Kind::Socket };
                inode.nlink = c.u32()?;
                if inode_type > 7 {
                    inode.xattr = xattr_field(c.u32()?);
                }
            }
            _ => return Err(c.corrupt("unknown inode type")),
        }
        // As the kernel's iget does: the xattrs' size counts in st_blocks, and an xattr id the
        // table cannot resolve makes the inode unreadable.
        if let (Some(id), Some(_)) = (inode.xattr, &self.xattr) {
            inode.xattr_size = self.xattr_id(id)?.size;
        }
        Ok(inode)
    }

    fn dir_body(&self, c: &MdCursor<'_>, start_block: u32, offset: u16, file_size: u32) -> Result<DirBody> {
        if usize::from(offset) >= METADATA_SIZE || file_size < 3 {
            return Err(c.corrupt("directory inode fields"));
        }
        let start = self.superblock.directory_table.checked_add(u64::from(start_block));
        if start.is_none_or(|s| s > self.superblock.directory_table_end()) {
            return Err(c.corrupt("directory start outside the directory table"));
        }
        Ok(DirBody { start_block, offset, listing_len: file_size - 3, index: Box::new([]) })
    }

    fn parse_basic_dir(&self, c: &mut MdCursor<'_>, inode: &mut Inode) -> Result<()> {
        let start_block = c.u32()?;
        inode.nlink = c.u32()?;
        let file_size = u32::from(c.u16()?);
        let offset = c.u16()?;
        let _parent = c.u32()?;
        inode.kind = Kind::Dir;
        inode.size = u64::from(file_size);
        inode.body = Body::Dir(self.dir_body(c, start_block, offset, file_size)?);
        Ok(())
    }

    fn parse_ext_dir(&self, c: &mut MdCursor<'_>, inode: &mut Inode) -> Result<()> {
        inode.nlink = c.u32()?;
        let file_size = c.u32()?;
        let start_block = c.u32()?;
        let _parent = c.u32()?;
        let index_count = c.u16()?;
        let offset = c.u16()?;
        inode.xattr = xattr_field(c.u32()?);
        inode.kind = Kind::Dir;
        inode.size = u64::from(file_size);
        let mut body = self.dir_body(c, start_block, offset, file_size)?;
        // mksquashfs writes one index entry per metadata block the listing touches; every
        // entry names a distinct header of at least 21 bytes. Anything more is a lie.
        if u64::from(index_count) > u64::from(body.listing_len) / 21 + 1 {
            return Err(c.corrupt("directory index count exceeds the listing"));
        }
        let mut index = Vec::new();
        for _ in 0..index_count {
            let idx = c.u32()?;
            let start_block = c.u32()?;
            let name_len = c.u32()? as usize + 1;
            if name_len > MAX_NAME {
                return Err(c.corrupt("directory index name length"));
            }
            let name = c.vec(name_len)?.into_boxed_slice();
            index.push(DirIndexEntry { index: idx, start_block, name });
        }
        body.index = index.into_boxed_slice();
        inode.body = Body::Dir(body);
        Ok(())
    }

    fn file_body(&self, c: &MdCursor<'_>, start: u64, size: u64, frag: u32, frag_off: u32) -> Result<FileBody> {
        let bs = u64::from(self.superblock.block_size);
        let fragment = if frag == NO_FRAGMENT {
            None
        } else {
            if frag >= self.superblock.fragments || frag_off >= self.superblock.block_size {
                return Err(c.corrupt("fragment reference out of range"));
            }
            Some((frag, frag_off))
        };
        let block_count = if fragment.is_some() { size / bs } else { size.div_ceil(bs) };
        Ok(FileBody {
            blocks_start: start,
            fragment,
            block_count,
            block_list: c.position(),
            block_map: OnceLock::new(),
        })
    }

    fn parse_basic_file(&self, c: &mut MdCursor<'_>, inode: &mut Inode) -> Result<()> {
        let start = c.u32()?;
        let frag = c.u32()?;
        let frag_off = c.u32()?;
        let size = c.u32()?;
        inode.kind = Kind::File;
        inode.size = u64::from(size);
        inode.body = Body::File(self.file_body(c, u64::from(start), inode.size, frag, frag_off)?);
        Ok(())
    }

    fn parse_ext_file(&self, c: &mut MdCursor<'_>, inode: &mut Inode) -> Result<()> {
        let start = c.u64()?;
        let size = c.u64()?;
        let sparse = c.u64()?;
        inode.nlink = c.u32()?;
        let frag = c.u32()?;
        let frag_off = c.u32()?;
        inode.xattr = xattr_field(c.u32()?);
        if sparse > size || size > i64::MAX as u64 {
            return Err(c.corrupt("file size fields"));
        }
        inode.kind = Kind::File;
        inode.size = size;
        inode.sparse = sparse;
        inode.body = Body::File(self.file_body(c, start, size, frag, frag_off)?);
        Ok(())
    }
}
