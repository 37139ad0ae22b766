//! LZO1X decoder (`-comp lzo`, every lzo1x variant mksquashfs writes decodes the same way).
//!
//! Written here rather than taken from `lzokay-native` because that crate decodes into a
//! growing `Vec` with no output bound: a hostile 1 MiB block could expand to hundreds of MiB.
//! This decoder writes into the caller's fixed buffer and fails as soon as a literal run or a
//! match would leave either buffer. Format: the LZO1X instruction set as documented by the
//! lzokay and Linux `lib/lzo` decoders (read to learn the format; no code copied).

/// Input cursor; every read is bounds-checked.
struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<usize, ()> {
        let b = *self.bytes.get(self.pos).ok_or(())?;
        self.pos += 1;
        Ok(usize::from(b))
    }

    fn le16(&mut self) -> Result<usize, ()> {
        Ok(self.byte()? | (self.byte()? << 8))
    }

    /// Length extension: each zero byte adds 255, the first non-zero byte ends the run.
    fn extended_length(&mut self, base: usize) -> Result<usize, ()> {
        let mut extra = 0usize;
        loop {
            let b = self.byte()?;
            if b != 0 {
                return extra.checked_add(base + b).ok_or(());
            }
            extra = extra.checked_add(255).ok_or(())?;
        }
    }
}

/// Output cursor over the caller's buffer.
struct Output<'a> {
    bytes: &'a mut [u8],
    pos: usize,
}

impl Output<'_> {
    fn literals(&mut self, input: &mut Input<'_>, len: usize) -> Result<(), ()> {
        let src_end = input.pos.checked_add(len).ok_or(())?;
        let dst_end = self.pos.checked_add(len).ok_or(())?;
        let src = input.bytes.get(input.pos..src_end).ok_or(())?;
        self.bytes.get_mut(self.pos..dst_end).ok_or(())?.copy_from_slice(src);
        input.pos = src_end;
        self.pos = dst_end;
        Ok(())
    }

    /// Copies `len` bytes from `distance` bytes back; source and destination may overlap.
    fn back_reference(&mut self, distance: usize, len: usize) -> Result<(), ()> {
        let start = self.pos.checked_sub(distance).ok_or(())?;
        if distance == 0 || self.pos.checked_add(len).ok_or(())? > self.bytes.len() {
            return Err(());
        }
        for i in 0..len {
            self.bytes[self.pos + i] = self.bytes[start + i];
        }
        self.pos += len;
        Ok(())
    }
}

pub(super) fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, ()> {
    let mut input = Input { bytes: src, pos: 0 };
    let mut out = Output { bytes: dst, pos: 0 };
    // Literals copied by the previous instruction (0..=3, or 4 for "4 or more").
    let mut state;

    let first = *src.first().ok_or(())?;
    if first >= 22 {
        input.pos = 1;
        out.literals(&mut input, usize::from(first) - 17)?;
        state = 4;
    } else if first >= 18 {
        input.pos = 1;
        state = usize::from(first) - 17;
        out.literals(&mut input, state)?;
    } else {
        state = 0;
    }

    loop {
        let inst = input.byte()?;
        let (distance, len, next_state);
        if inst >= 64 {
            // M2: 3..=8 bytes from at most 2 KiB back; H byte follows.
            let high = input.byte()?;
            distance = (high << 3) + ((inst >> 2) & 7) + 1;
            len = (inst >> 5) + 1;
            next_state = inst & 3;
        } else if inst >= 32 {
            // M3: up to 16 KiB back, length may be extended; LE16 distance follows.
            let mut l = (inst & 31) + 2;
            if l == 2 {
                l = input.extended_length(31 + 2)?;
            }
            let word = input.le16()?;
            distance = (word >> 2) + 1;
            len = l;
            next_state = word & 3;
        } else if inst >= 16 {
            // M4: 16..48 KiB back; distance 16384 exactly marks the end of the stream.
            let mut l = (inst & 7) + 2;
            if l == 2 {
                l = input.extended_length(7 + 2)?;
            }
            let word = input.le16()?;
            let d = ((inst & 8) << 11) + (word >> 2);
            if d == 0 {
                // End marker: 0x11 0x00 0x00, with nothing after it.
                return if l == 3 && input.pos == src.len() { Ok(out.pos) } else { Err(()) };
            }
            distance = d + 16384;
            len = l;
            next_state = word & 3;
        } else if state == 0 {
            // Long literal run (4 or more bytes).
            let mut l = inst + 3;
            if l == 3 {
                l = input.extended_length(15 + 3)?;
            }
            out.literals(&mut input, l)?;
            state = 4;
            continue;
        } else if state < 4 {
            // M1 after 1..3 literals: 2 bytes from at most 1 KiB back.
            distance = (inst >> 2) + (input.byte()? << 2) + 1;
            len = 2;
            next_state = inst & 3;
        } else {
            // M1 after a literal run: 3 bytes from 2..3 KiB back.
            distance = (inst >> 2) + (input.byte()? << 2) + 2049;
            len = 3;
            next_state = inst & 3;
        }
        out.back_reference(distance, len)?;
        out.literals(&mut input, next_state)?;
        state = next_state;
    }
}

#[cfg(test)]
mod tests {
    use super::decompress;

    #[test]
    fn literal_run_then_end_marker() {
        // 22+3-17 = 8 literal bytes, then the end marker.
        let src = [25u8, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', 0x11, 0, 0];
        let mut out = [0u8; 16];
        assert_eq!(decompress(&src, &mut out), Ok(8));
        assert_eq!(&out[..8], b"abcdefgh");
    }

    #[test]
    fn overflowing_output_is_refused() {
        let src = [25u8, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', 0x11, 0, 0];
        let mut out = [0u8; 4];
        assert_eq!(decompress(&src, &mut out), Err(()));
    }

    #[test]
    fn garbage_never_panics() {
        let mut out = [0u8; 64];
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            let mut src = [0u8; 24];
            for b in src.iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (seed >> 24) as u8;
            }
            let _ = decompress(&src, &mut out);
        }
    }
}
