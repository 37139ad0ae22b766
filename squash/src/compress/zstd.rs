//! Zstandard frames, through the zstd crate with one reusable context per thread.

use std::cell::RefCell;

thread_local! {
    static CONTEXT: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        RefCell::new(zstd::bulk::Decompressor::new().ok());
}

pub(super) fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, ()> {
    CONTEXT.with(|ctx| {
        let mut ctx = ctx.borrow_mut();
        let ctx = ctx.as_mut().ok_or(())?;
        ctx.decompress_to_buffer(src, dst).map_err(|_| ())
    })
}
