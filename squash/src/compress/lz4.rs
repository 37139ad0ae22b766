//! LZ4 raw blocks (`-comp lz4`, also `-Xhc`: same format), through lz4_flex's safe decoder.

pub(super) fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, ()> {
    lz4_flex::block::decompress_into(src, dst).map_err(|_| ())
}
