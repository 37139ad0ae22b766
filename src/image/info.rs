//! `image info`: the superblock in the words of `unsquashfs -s` (times in UTC).

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use parallaxfs_squash::superblock::flags;
use parallaxfs_squash::{CompressorOptions, Image};

use crate::timefmt;

fn un(compressed_flag: bool) -> &'static str {
    if compressed_flag {
        "un"
    } else {
        ""
    }
}

fn not(yes: bool) -> &'static str {
    if yes {
        ""
    } else {
        "not "
    }
}

fn xz_filters(mask: u32) -> String {
    const NAMES: [&str; 6] = ["x86", "powerpc", "ia64", "arm", "armthumb", "sparc"];
    let names: Vec<&str> = NAMES.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| *n).collect();
    names.join(", ")
}

fn gzip_strategies(mask: u16) -> String {
    const NAMES: [&str; 5] = ["default", "filtered", "huffman_only", "run_length_encoded", "fixed"];
    let names: Vec<&str> = NAMES.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| *n).collect();
    names.join(", ")
}

fn options(out: &mut impl Write, opts: Option<CompressorOptions>) -> std::io::Result<()> {
    match opts {
        Some(CompressorOptions::Gzip { level, window, strategies }) => {
            writeln!(out, "\tcompression-level {level}")?;
            writeln!(out, "\twindow-size {window}")?;
            if strategies != 0 {
                writeln!(out, "\tStrategies selected: {}", gzip_strategies(strategies))?;
            }
        }
        Some(CompressorOptions::Xz { dict_size, filters }) => {
            writeln!(out, "\tDictionary size {dict_size}")?;
            if filters != 0 {
                writeln!(out, "\tFilters selected: {}", xz_filters(filters))?;
            }
        }
        Some(CompressorOptions::Lz4 { flags, .. }) if flags & 1 != 0 => {
            writeln!(out, "\tHigh Compression option specified (-Xhc)")?;
        }
        Some(CompressorOptions::Zstd { level }) => writeln!(out, "\tcompression-level {level}")?,
        Some(CompressorOptions::Lzo { algorithm, level }) => {
            const ALGOS: [&str; 5] = ["lzo1x_1", "lzo1x_1_11", "lzo1x_1_12", "lzo1x_1_15", "lzo1x_999"];
            let name = ALGOS.get(algorithm as usize).copied().unwrap_or("unknown");
            writeln!(out, "\talgorithm {name}")?;
            if algorithm == 4 {
                writeln!(out, "\tcompression level {level}")?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Prints what `unsquashfs -s` prints.
pub fn print(out: &mut impl Write, image: &Image, path: &Path) -> Result<()> {
    let sb = image.superblock();
    let has = |f| sb.has(f);
    writeln!(out, "Found a valid SQUASHFS 4:0 superblock on {}.", path.display())?;
    writeln!(out, "Creation or last append time {}", timefmt::ctime(sb.mkfs_time))?;
    let bytes = sb.bytes_used as f64;
    writeln!(
        out,
        "Filesystem size {} bytes ({:.2} Kbytes / {:.2} Mbytes)",
        sb.bytes_used,
        bytes / 1024.0,
        bytes / (1024.0 * 1024.0)
    )?;
    writeln!(out, "Compression {}", sb.compressor.name())?;
    options(out, image.compressor_options())?;
    writeln!(out, "Block size {}", sb.block_size)?;
    writeln!(out, "Filesystem is {}exportable via NFS", not(has(flags::EXPORTABLE)))?;
    writeln!(out, "Inodes are {}compressed", un(has(flags::UNCOMPRESSED_INODES)))?;
    writeln!(out, "Data is {}compressed", un(has(flags::UNCOMPRESSED_DATA)))?;
    // mksquashfs's -noI implies -noId without setting the NOID flag: the id table is stored
    // uncompressed when either flag is set (unsquashfs -s tests both the same way).
    let ids_uncompressed = has(flags::UNCOMPRESSED_INODES) || has(flags::UNCOMPRESSED_IDS);
    writeln!(out, "Uids/Gids (Id table) are {}compressed", un(ids_uncompressed))?;
    if has(flags::NO_FRAGMENTS) {
        writeln!(out, "Fragments are not stored")?;
    } else {
        writeln!(out, "Fragments are {}compressed", un(has(flags::UNCOMPRESSED_FRAGMENTS)))?;
        writeln!(out, "Always-use-fragments option is {}specified", not(has(flags::ALWAYS_FRAGMENTS)))?;
    }
    if has(flags::NO_XATTRS) {
        writeln!(out, "Xattrs are not stored")?;
    } else {
        writeln!(out, "Xattrs are {}compressed", un(has(flags::UNCOMPRESSED_XATTRS)))?;
    }
    writeln!(out, "Duplicates are {}removed", not(has(flags::DUPLICATES)))?;
    writeln!(out, "Number of fragments {}", sb.fragments)?;
    writeln!(out, "Number of inodes {}", sb.inodes)?;
    writeln!(out, "Number of ids {}", sb.no_ids)?;
    if let Some(n) = image.xattr_id_count() {
        writeln!(out, "Number of xattr ids {n}")?;
    }
    Ok(())
}
