//! Checked little-endian cursor over a byte slice: every read that runs past the end is a
//! [`Error::Corrupt`], never a panic.

use crate::error::{Error, Result};

/// A bounds-checked reader of little-endian integers.
#[derive(Debug)]
pub(crate) struct Le<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
    offset: u64,
}

impl<'a> Le<'a> {
    /// `what`/`offset` describe the structure for error messages.
    pub(crate) fn new(bytes: &'a [u8], what: &'static str, offset: u64) -> Self {
        Le { bytes, pos: 0, what, offset }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| Error::corrupt(self.what, self.offset))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_refuses_short_input() {
        let data = [1u8, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        let mut le = Le::new(&data, "t", 7);
        assert_eq!(le.u16().unwrap(), 1);
        assert_eq!(le.u32().unwrap(), 2);
        assert_eq!(le.u64().unwrap(), 3);
        match le.u16() {
            Err(Error::Corrupt { what: "t", offset: 7 }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
