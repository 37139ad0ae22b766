//! zlib streams (`-comp gzip`), through flate2 with one reusable context per thread.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};

thread_local! {
    static CONTEXT: RefCell<Decompress> = RefCell::new(Decompress::new(true));
}

pub(super) fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, ()> {
    CONTEXT.with(|ctx| {
        let mut ctx = ctx.borrow_mut();
        ctx.reset(true);
        match ctx.decompress(src, dst, FlushDecompress::Finish) {
            Ok(Status::StreamEnd) => usize::try_from(ctx.total_out()).map_err(|_| ()),
            _ => Err(()),
        }
    })
}
