//! The 96-byte superblock: parsing, validation, and the table layout rule the kernel enforces.

use crate::compress::Compressor;
use crate::error::{Error, Result};
use crate::le::Le;

/// Size of the superblock on disk.
pub const SUPERBLOCK_SIZE: usize = 96;
/// "hsqs"
const MAGIC: u32 = 0x7371_7368;
/// "SQSH": superblock at the end (`mksquashfs -stream`).
const STREAMED_MAGIC: u32 = 0x5351_5348;
/// Table pointer meaning "no such table".
pub(crate) const ABSENT: u64 = u64::MAX;

/// Superblock flag bits.
pub mod flags {
    /// Inodes stored uncompressed (`-noI`).
    pub const UNCOMPRESSED_INODES: u16 = 1 << 0;
    /// Data stored uncompressed (`-noD`).
    pub const UNCOMPRESSED_DATA: u16 = 1 << 1;
    /// Fragments stored uncompressed (`-noF`).
    pub const UNCOMPRESSED_FRAGMENTS: u16 = 1 << 3;
    /// No fragments (`-no-fragments`).
    pub const NO_FRAGMENTS: u16 = 1 << 4;
    /// Tails of large files packed into fragments too (`-always-use-fragments`).
    pub const ALWAYS_FRAGMENTS: u16 = 1 << 5;
    /// Duplicate files were detected and shared.
    pub const DUPLICATES: u16 = 1 << 6;
    /// Export table present (NFS exportable).
    pub const EXPORTABLE: u16 = 1 << 7;
    /// Xattrs stored uncompressed (`-noX`).
    pub const UNCOMPRESSED_XATTRS: u16 = 1 << 8;
    /// No xattrs stored (`-no-xattrs`).
    pub const NO_XATTRS: u16 = 1 << 9;
    /// Compressor options follow the superblock.
    pub const COMPRESSOR_OPTIONS: u16 = 1 << 10;
    /// uid/gid table stored uncompressed (`-noId`).
    pub const UNCOMPRESSED_IDS: u16 = 1 << 11;
}

/// The validated superblock.
#[derive(Debug, Clone)]
pub struct SuperBlock {
    /// Number of inodes; inode numbers are `1..=inodes`.
    pub inodes: u32,
    /// Creation time (seconds since the epoch).
    pub mkfs_time: u32,
    /// Data block size, a power of two in 4 KiB..=1 MiB.
    pub block_size: u32,
    /// log2(block_size).
    pub block_log: u16,
    /// Entries in the fragment table.
    pub fragments: u32,
    /// The compressor.
    pub compressor: Compressor,
    /// Flag bits, see [`flags`].
    pub flags: u16,
    /// Entries in the uid/gid table.
    pub no_ids: u16,
    /// Reference of the root directory inode.
    pub root_inode: u64,
    /// Bytes of the file that belong to the image.
    pub bytes_used: u64,
    /// Absolute offset of the id table index.
    pub id_table: u64,
    /// Absolute offset of the xattr id table header, or `None`.
    pub xattr_id_table: Option<u64>,
    /// Absolute offset of the inode table.
    pub inode_table: u64,
    /// Absolute offset of the directory table.
    pub directory_table: u64,
    /// Absolute offset of the fragment table index, or `None`.
    pub fragment_table: Option<u64>,
    /// Absolute offset of the export (lookup) table index, or `None`.
    pub export_table: Option<u64>,
}

fn optional(v: u64) -> Option<u64> {
    (v != ABSENT).then_some(v)
}

impl SuperBlock {
    /// Parses and validates the first 96 bytes of an image.
    pub fn parse(b: &[u8]) -> Result<SuperBlock> {
        let mut le = Le::new(b, "superblock", 0);
        let magic = le.u32()?;
        if magic == STREAMED_MAGIC {
            return Err(Error::Unsupported(
                "streamed image (superblock at the end); convert it with `mksquashfs -fix`".into(),
            ));
        }
        if magic != MAGIC {
            return Err(Error::NotSquashfs { magic });
        }
        let inodes = le.u32()?;
        let mkfs_time = le.u32()?;
        let block_size = le.u32()?;
        let fragments = le.u32()?;
        let compression = le.u16()?;
        let block_log = le.u16()?;
        let flags = le.u16()?;
        let no_ids = le.u16()?;
        let major = le.u16()?;
        let minor = le.u16()?;
        let root_inode = le.u64()?;
        let bytes_used = le.u64()?;
        let id_table = le.u64()?;
        let xattr_id_table = le.u64()?;
        let inode_table = le.u64()?;
        let directory_table = le.u64()?;
        let fragment_table = le.u64()?;
        let export_table = le.u64()?;

        if (major, minor) != (4, 0) {
            return Err(Error::Unsupported(format!("SquashFS version {major}.{minor} (only 4.0 is supported)")));
        }
        let compressor =
            Compressor::from_id(compression).ok_or(Error::corrupt("superblock: unknown compressor id", 20))?;
        if !(12..=20).contains(&block_log) || block_size != 1 << block_log {
            return Err(Error::corrupt("superblock: block size and block_log disagree", 12));
        }
        if inodes == 0 {
            return Err(Error::corrupt("superblock: zero inodes", 4));
        }
        if no_ids == 0 {
            return Err(Error::corrupt("superblock: empty uid/gid table", 26));
        }
        if root_inode & 0xffff >= 8192 || root_inode >> 48 != 0 {
            return Err(Error::corrupt("superblock: bad root inode reference", 32));
        }
        let sb = SuperBlock {
            inodes,
            mkfs_time,
            block_size,
            block_log,
            fragments,
            compressor,
            flags,
            no_ids,
            root_inode,
            bytes_used,
            id_table,
            xattr_id_table: optional(xattr_id_table),
            inode_table,
            directory_table,
            fragment_table: optional(fragment_table),
            export_table: optional(export_table),
        };
        sb.check_layout()?;
        Ok(sb)
    }

    /// Tables appear in the order mksquashfs writes them and the kernel requires:
    /// superblock < inode table < directory table <= fragment index <= export index <=
    /// id index <= xattr <= bytes_used.
    fn check_layout(&self) -> Result<()> {
        let mut prev = SUPERBLOCK_SIZE as u64;
        let order = [
            ("inode table", Some(self.inode_table), 64),
            ("directory table", Some(self.directory_table), 72),
            ("fragment table", self.fragment_table, 80),
            ("export table", self.export_table, 88),
            ("id table", Some(self.id_table), 48),
            ("xattr id table", self.xattr_id_table, 56),
        ];
        for (i, (_, start, field)) in order.iter().enumerate() {
            let Some(start) = *start else { continue };
            // The inode table may start right after the superblock (an image without file
            // data: no data blocks, no fragments); it is never empty (the root inode), so the
            // directory table starts strictly after it; the rest may follow each other
            // directly (an empty directory table, for instance).
            let bad = if i == 1 { start <= prev } else { start < prev };
            if bad || start >= self.bytes_used {
                return Err(Error::corrupt("superblock: table offsets out of order", *field));
            }
            prev = start;
        }
        Ok(())
    }

    /// True when `flag` (see [`flags`]) is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Where the table after the directory table starts (its metadata blocks end there).
    pub(crate) fn directory_table_end(&self) -> u64 {
        [self.fragment_table, self.export_table, Some(self.id_table), self.xattr_id_table]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.bytes_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_SIZE];
        let put32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let put16 = |b: &mut Vec<u8>, at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put64 = |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 4, 1);
        put32(&mut b, 12, 131072);
        put16(&mut b, 20, 6);
        put16(&mut b, 22, 17);
        put16(&mut b, 26, 1);
        put16(&mut b, 28, 4);
        put64(&mut b, 40, 4096);
        put64(&mut b, 48, 300);
        put64(&mut b, 56, ABSENT);
        put64(&mut b, 64, 100);
        put64(&mut b, 72, 200);
        put64(&mut b, 80, ABSENT);
        put64(&mut b, 88, ABSENT);
        b
    }

    #[test]
    fn accepts_valid_and_rejects_each_lie() {
        assert!(SuperBlock::parse(&valid()).is_ok());
        let cases: &[(usize, &[u8], &str)] = &[
            (0, &[0, 0, 0, 0], "magic"),
            (12, &[0, 0, 1, 0], "block size"),
            (20, &[9, 0], "compressor"),
            (28, &[3, 0], "version"),
            (64, &[0xff, 0x01, 0, 0], "order"),
            (64, &[95, 0, 0, 0], "inode table inside the superblock"),
            (72, &[100, 0, 0, 0], "empty inode table"),
            (40, &[10, 0, 0, 0, 0, 0, 0, 0], "bytes_used"),
        ];
        for (at, bytes, name) in cases {
            let mut b = valid();
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
            assert!(SuperBlock::parse(&b).is_err(), "{name} lie accepted");
        }
    }

    #[test]
    fn inode_table_right_after_the_superblock() {
        // mksquashfs writes no data blocks or fragments for a tree of empty files.
        let mut b = valid();
        b[64..72].copy_from_slice(&(SUPERBLOCK_SIZE as u64).to_le_bytes());
        assert!(SuperBlock::parse(&b).is_ok());
    }

    #[test]
    fn streamed_image_gets_a_clear_message() {
        let mut b = valid();
        b[0..4].copy_from_slice(&STREAMED_MAGIC.to_le_bytes());
        match SuperBlock::parse(&b) {
            Err(Error::Unsupported(m)) => assert!(m.contains("mksquashfs -fix")),
            other => panic!("unexpected {other:?}"),
        }
    }
}
