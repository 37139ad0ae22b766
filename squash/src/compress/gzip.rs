//! zlib streams (`-comp gzip`), through flate2, with contexts from a shared pool.

use flate2::{Decompress, FlushDecompress, Status};

use super::pool::Pool;

static CONTEXTS: Pool<Decompress> = Pool::new();

pub(super) fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, ()> {
    CONTEXTS
        .with(
            || Some(Decompress::new(true)),
            |ctx| {
                ctx.reset(true);
                match ctx.decompress(src, dst, FlushDecompress::Finish) {
                    Ok(Status::StreamEnd) => usize::try_from(ctx.total_out()).map_err(|_| ()),
                    _ => Err(()),
                }
            },
        )
        .ok_or(())?
}
