//! Zstandard frames, through the zstd crate, with contexts from a shared pool.

use super::pool::Pool;

static CONTEXTS: Pool<zstd::bulk::Decompressor<'static>> = Pool::new();

pub(super) fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, ()> {
    CONTEXTS
        .with(|| zstd::bulk::Decompressor::new().ok(), |ctx| ctx.decompress_to_buffer(src, dst).map_err(|_| ()))
        .ok_or(())?
}
