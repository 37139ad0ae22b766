//! Block decompression: one file per codec, all decoding into a caller-sized buffer.
//!
//! Rules for every codec (squashfs.md §4): the output buffer has exactly the largest legal size
//! (8 KiB for metadata, `block_size` for data and fragments), a stream that would overflow it
//! is corrupt, and the caller checks the produced length against what the structure requires.
//! Codec contexts come from a pool of at most one per core, as the kernel's per-CPU
//! decompressors do (`pool`).

#[cfg(feature = "gzip")]
mod gzip;
#[cfg(feature = "lz4")]
mod lz4;
#[cfg(feature = "lzo")]
mod lzo;
#[cfg(any(feature = "zstd", feature = "gzip"))]
mod pool;
#[cfg(feature = "xz")]
mod xz;
#[cfg(feature = "zstd")]
mod zstd;

use crate::error::{Error, Result};

/// The compressors SquashFS 4.0 defines, by superblock id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    /// zlib stream (`-comp gzip`), id 1.
    Gzip,
    /// Legacy LZMA-alone stream (`-comp lzma`), id 2.
    Lzma,
    /// LZO1X (`-comp lzo`), id 3.
    Lzo,
    /// xz stream, possibly with BCJ filters (`-comp xz`), id 4.
    Xz,
    /// LZ4 raw block (`-comp lz4`, with or without `-Xhc`), id 5.
    Lz4,
    /// Zstandard frame (`-comp zstd`), id 6.
    Zstd,
}

impl Compressor {
    /// Decodes the superblock field.
    pub fn from_id(id: u16) -> Option<Compressor> {
        Some(match id {
            1 => Compressor::Gzip,
            2 => Compressor::Lzma,
            3 => Compressor::Lzo,
            4 => Compressor::Xz,
            5 => Compressor::Lz4,
            6 => Compressor::Zstd,
            _ => return None,
        })
    }

    /// The name `mksquashfs -comp` and `unsquashfs -s` use.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::Gzip => "gzip",
            Compressor::Lzma => "lzma",
            Compressor::Lzo => "lzo",
            Compressor::Xz => "xz",
            Compressor::Lz4 => "lz4",
            Compressor::Zstd => "zstd",
        }
    }

    /// The cargo feature that provides this codec.
    fn feature(self) -> &'static str {
        match self {
            Compressor::Gzip => "gzip",
            Compressor::Lzma | Compressor::Xz => "xz",
            Compressor::Lzo => "lzo",
            Compressor::Lz4 => "lz4",
            Compressor::Zstd => "zstd",
        }
    }

    /// Fails at open, naming the feature, when this build lacks the codec.
    pub(crate) fn check_available(self) -> Result<()> {
        let available = match self {
            Compressor::Gzip => cfg!(feature = "gzip"),
            Compressor::Lzma | Compressor::Xz => cfg!(feature = "xz"),
            Compressor::Lzo => cfg!(feature = "lzo"),
            Compressor::Lz4 => cfg!(feature = "lz4"),
            Compressor::Zstd => cfg!(feature = "zstd"),
        };
        if available {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "image uses {}; rebuild parallaxfs-squash with feature \"{}\"",
                self.name(),
                self.feature()
            )))
        }
    }

    /// Decompresses `src` into `dst`, returning the number of bytes produced.
    /// `Err(())` means the stream is invalid or does not fit in `dst`; the caller knows the
    /// offset and turns it into [`Error::Corrupt`].
    pub(crate) fn decompress(self, src: &[u8], dst: &mut [u8]) -> std::result::Result<usize, ()> {
        match self {
            #[cfg(feature = "gzip")]
            Compressor::Gzip => gzip::decompress(src, dst),
            #[cfg(feature = "xz")]
            Compressor::Xz => xz::decompress_xz(src, dst),
            #[cfg(feature = "xz")]
            Compressor::Lzma => xz::decompress_lzma(src, dst),
            #[cfg(feature = "lzo")]
            Compressor::Lzo => lzo::decompress(src, dst),
            #[cfg(feature = "lz4")]
            Compressor::Lz4 => lz4::decompress(src, dst),
            #[cfg(feature = "zstd")]
            Compressor::Zstd => zstd::decompress(src, dst),
            #[allow(unreachable_patterns)]
            _ => Err(()),
        }
    }
}

/// Compressor options stored after the superblock (flag COMP_OPT). Only what changes
/// decoding is validated; the rest is kept for `image info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressorOptions {
    /// gzip: compression level, window bits, strategies bitmask.
    Gzip {
        /// 1..9
        level: u32,
        /// 8..15
        window: u16,
        /// bitmask of zlib strategies tried
        strategies: u16,
    },
    /// xz: dictionary size and BCJ filters bitmask.
    Xz {
        /// dictionary size in bytes
        dict_size: u32,
        /// bit 0 x86, 1 powerpc, 2 ia64, 3 arm, 4 armthumb, 5 sparc
        filters: u32,
    },
    /// lz4: format version (must be 1) and flags (bit 0 = high compression).
    Lz4 {
        /// 1
        version: u32,
        /// bit 0: `-Xhc`
        flags: u32,
    },
    /// zstd: compression level.
    Zstd {
        /// 1..22
        level: u32,
    },
    /// lzo: algorithm and level.
    Lzo {
        /// 0 lzo1x_1 .. 4 lzo1x_999
        algorithm: u32,
        /// level for lzo1x_999
        level: u32,
    },
    /// An options block this reader does not interpret.
    Other,
}

impl CompressorOptions {
    /// Parses the decompressed options block for `comp`.
    pub(crate) fn parse(comp: Compressor, b: &[u8], offset: u64) -> Result<CompressorOptions> {
        let mut le = crate::le::Le::new(b, "compressor options", offset);
        Ok(match comp {
            Compressor::Gzip => CompressorOptions::Gzip { level: le.u32()?, window: le.u16()?, strategies: le.u16()? },
            Compressor::Xz => CompressorOptions::Xz { dict_size: le.u32()?, filters: le.u32()? },
            Compressor::Lz4 => {
                let version = le.u32()?;
                let flags = le.u32()?;
                if version != 1 {
                    return Err(Error::Unsupported(format!(
                        "lz4 options version {version} (only version 1 is defined)"
                    )));
                }
                CompressorOptions::Lz4 { version, flags }
            }
            Compressor::Zstd => CompressorOptions::Zstd { level: le.u32()? },
            Compressor::Lzo => CompressorOptions::Lzo { algorithm: le.u32()?, level: le.u32()? },
            Compressor::Lzma => CompressorOptions::Other,
        })
    }
}
