//! xz streams (with any BCJ filter chain they declare) and legacy LZMA-alone streams, through
//! liblzma. Memory is limited to 32 MiB per stream, as squashfs-tools does.

use liblzma::stream::{Action, Status, Stream};

const MEMLIMIT: u64 = 32 << 20;

fn run(mut stream: Stream, src: &[u8], dst: &mut [u8]) -> Result<usize, ()> {
    match stream.process(src, dst, Action::Finish) {
        Ok(Status::StreamEnd) => usize::try_from(stream.total_out()).map_err(|_| ()),
        _ => Err(()),
    }
}

pub(super) fn decompress_xz(src: &[u8], dst: &mut [u8]) -> Result<usize, ()> {
    run(Stream::new_stream_decoder(MEMLIMIT, 0).map_err(|_| ())?, src, dst)
}

pub(super) fn decompress_lzma(src: &[u8], dst: &mut [u8]) -> Result<usize, ()> {
    run(Stream::new_lzma_decoder(MEMLIMIT).map_err(|_| ())?, src, dst)
}
