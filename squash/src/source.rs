//! Where image bytes come from: an mmap of the file, `pread` on it, or bytes in memory.
//!
//! With mmap, only metadata (inode, directory, fragment, id and xattr tables: small, hot,
//! read in 8 KiB pieces at random) is read through the map. Data and fragment blocks are
//! read with `pread` in every mode: one I/O of exactly the block, and the image's data pages
//! never enter the daemon's RSS (through the map, a cold read of a 357 MiB image left
//! 351 MiB of mapped file pages in VmHWM).
//!
//! mmap is zero-copy and shares the page cache between all mounts of an image, but a page that
//! cannot be read (file truncated after open, NFS `ESTALE`, Lustre eviction) raises SIGBUS and
//! kills the process. `pread` turns the same faults into `EIO`. [`IoMode::Auto`] picks pread on
//! network and cluster filesystems and mmap elsewhere. Parsing code never re-reads a field
//! from the source (read-once rule), so a file changing under the map cannot make one check
//! pass and a later use see another value.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use memmap2::{Advice, Mmap};

use crate::error::{Error, Result};

/// How the image file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// pread on network/cluster filesystems (NFS, Lustre, GPFS, CIFS, Ceph, BeeGFS, FUSE),
    /// mmap elsewhere.
    #[default]
    Auto,
    /// Always mmap.
    Mmap,
    /// Always pread.
    Pread,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<IoMode, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "mmap" => Ok(IoMode::Mmap),
            "pread" => Ok(IoMode::Pread),
            other => Err(format!("unknown I/O mode {other:?} (want auto, mmap or pread)")),
        }
    }
}

/// `statfs` magic numbers of filesystems whose files can vanish or shrink under a reader on
/// another node; mapping them invites SIGBUS.
const NETWORK_FS_MAGICS: &[i64] = &[
    0x6969,                // NFS
    0x0BD0_0BD0,           // Lustre
    0xFF53_4D42u32 as i64, // CIFS
    0xFE53_4D42u32 as i64, // SMB2
    0x4750_4653,           // GPFS
    0x00C3_6400,           // Ceph
    0x1983_0326,           // BeeGFS
    0x6573_5546,           // FUSE
    0x5346_414F,           // AFS
];

/// True when `file` lives on a filesystem where pread is the safe choice.
pub fn is_network_fs(file: &File) -> bool {
    match nix::sys::statfs::fstatfs(file) {
        #[allow(clippy::unnecessary_cast, reason = "f_type is i64 or u32 by libc target")]
        Ok(st) => NETWORK_FS_MAGICS.contains(&(st.filesystem_type().0 as i64)),
        Err(_) => false,
    }
}

/// The mode `Auto` resolves to for this file.
pub(crate) fn resolve_mode(mode: IoMode, file: &File) -> IoMode {
    match mode {
        IoMode::Auto if is_network_fs(file) => IoMode::Pread,
        IoMode::Auto => IoMode::Mmap,
        other => other,
    }
}

/// The image bytes `[0, limit)`; `limit` is `bytes_used` once the superblock is read.
#[derive(Debug)]
pub(crate) struct Source {
    kind: Kind,
    limit: u64,
}

#[derive(Debug)]
enum Kind {
    Mmap { map: Mmap, file: File },
    Pread(File),
    Bytes(Arc<[u8]>),
}

impl Source {
    /// Maps the first `len` bytes of `file`, which the caller has checked exist.
    #[allow(unsafe_code)]
    pub(crate) fn mmap(file: File, len: u64) -> Result<Source> {
        let map_len = usize::try_from(len).map_err(|_| Error::Unsupported("image too large".into()))?;
        // SAFETY: the mapping is read-only and private. `Image::open` checked that the file
        // holds at least `len` bytes, so every offset the reader accepts (all are checked
        // against `limit == len`) lies inside the file as it was at open. Store images are
        // published by rename and never rewritten in place; a file truncated behind our back
        // is the documented SIGBUS risk that `IoMode::Pread` exists for (test:
        // `pread_survives_truncation`). Bytes are copied out once per use (read-once parsing),
        // so no check is ever made on one value and acted on with another.
        let map = unsafe { memmap2::MmapOptions::new().len(map_len).map(&file)? };
        // Metadata lookups are random; readahead windows would waste I/O on remote storage.
        let _ = map.advise(Advice::Random);
        // Data blocks are read with pread on this file: no readahead past what is asked for
        // (a container start would otherwise pull in MiBs it never touches); a read of
        // several blocks asks for all of them at once (`will_need`).
        let _ = nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM);
        Ok(Source { kind: Kind::Mmap { map, file }, limit: len })
    }

    /// Reads `file` with pread; `len` bytes are known to exist.
    pub(crate) fn pread(file: File, len: u64) -> Source {
        let _ = nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM);
        Source { kind: Kind::Pread(file), limit: len }
    }

    /// Bytes in memory (tests, fuzzing).
    pub(crate) fn bytes(bytes: Arc<[u8]>) -> Source {
        let limit = bytes.len() as u64;
        Source { kind: Kind::Bytes(bytes), limit }
    }

    /// Lowers the readable range to `bytes_used`.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = self.limit.min(limit);
    }

    /// Which backend is in use.
    pub(crate) fn mode(&self) -> IoMode {
        match self.kind {
            Kind::Mmap { .. } | Kind::Bytes(_) => IoMode::Mmap,
            Kind::Pread(_) => IoMode::Pread,
        }
    }

    fn range(&self, off: u64, len: usize, what: &'static str) -> Result<std::ops::Range<usize>> {
        let end = off.checked_add(len as u64).filter(|&e| e <= self.limit);
        match end {
            // Both fit in usize: limit <= the mapped/in-memory length (or the file for pread).
            Some(end) => Ok(off as usize..end as usize),
            None => Err(Error::corrupt(what, off)),
        }
    }

    /// Borrows `len` bytes at `off` without copying when the source is in memory; with pread
    /// the bytes are read into `scratch`. `what` names the structure for errors.
    pub(crate) fn get<'a>(
        &'a self,
        off: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        what: &'static str,
    ) -> Result<&'a [u8]> {
        let r = self.range(off, len, what)?;
        match &self.kind {
            Kind::Mmap { map, .. } => Ok(&map[r]),
            Kind::Bytes(b) => Ok(&b[r]),
            Kind::Pread(f) => pread_into(f, off, len, scratch),
        }
    }

    /// Like [`Source::get`] for a data or fragment block: never through the map.
    pub(crate) fn get_block<'a>(
        &'a self,
        off: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        what: &'static str,
    ) -> Result<&'a [u8]> {
        match &self.kind {
            Kind::Mmap { file, .. } => {
                self.range(off, len, what)?;
                pread_into(file, off, len, scratch)
            }
            _ => self.get(off, len, scratch, what),
        }
    }

    /// Copies `buf.len()` bytes at `off` into `buf` (uncompressed data and fragment blocks;
    /// never through the map).
    pub(crate) fn read_into(&self, off: u64, buf: &mut [u8], what: &'static str) -> Result<()> {
        let r = self.range(off, buf.len(), what)?;
        match &self.kind {
            Kind::Bytes(b) => buf.copy_from_slice(&b[r]),
            Kind::Mmap { file, .. } | Kind::Pread(file) => file.read_exact_at(buf, off)?,
        }
        Ok(())
    }

    /// Non-blocking hint that `[off, off+len)` will be read soon (the metadata tables, the
    /// blocks of a read of several blocks).
    pub(crate) fn will_need(&self, off: u64, len: u64) {
        let (Ok(o), Ok(l)) = (usize::try_from(off), usize::try_from(len)) else { return };
        match &self.kind {
            Kind::Mmap { map, .. } if o < map.len() => {
                let _ = map.advise_range(Advice::WillNeed, o, l.min(map.len() - o));
            }
            Kind::Pread(f) => {
                let (Ok(o), Ok(l)) = (i64::try_from(off), i64::try_from(len)) else { return };
                let _ = nix::fcntl::posix_fadvise(f, o, l, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED);
            }
            _ => {}
        }
    }
}

fn pread_into<'a>(file: &File, off: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    let buf = &mut scratch[..len];
    file.read_exact_at(buf, off)?;
    Ok(buf)
}
