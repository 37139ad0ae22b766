//! The `st_ino` users see: unique across layers and stable for the mount's life.
//!
//! `compose(slot, ino) = slot << 48 | ino`, slot 0 = upper, slot i = i-th lower (per layer, so
//! images whose numbering overlaps stay distinct). A real number of 2^48 or more (or 0) gets a
//! number from a per-mount table in slot 0xFFFF: unique, not persistent. Never 0.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

const SLOT_BITS: u32 = 48;
const OVERFLOW_SLOT: u64 = 0xFFFF;

/// Slot of the i-th lower layer (0-based, topmost first).
pub fn lower_slot(index: usize) -> u16 {
    u16::try_from(index + 1).unwrap_or(u16::MAX - 1).min(0xFFFE)
}

/// Allocator of union-wide inode numbers.
#[derive(Debug)]
pub struct InodeNumbers {
    overflow: DashMap<(u16, u64), u64>,
    next: AtomicU64,
}

impl Default for InodeNumbers {
    fn default() -> Self {
        // Only numbers of 2^48 and more land here: two shards are plenty.
        InodeNumbers { overflow: DashMap::with_shard_amount(2), next: AtomicU64::new(0) }
    }
}

impl InodeNumbers {
    /// The number of object `ino` of the layer in `slot`.
    pub fn compose(&self, slot: u16, ino: u64) -> u64 {
        if ino != 0 && ino < 1 << SLOT_BITS {
            return u64::from(slot) << SLOT_BITS | ino;
        }
        *self
            .overflow
            .entry((slot, ino))
            .or_insert_with(|| OVERFLOW_SLOT << SLOT_BITS | (self.next.fetch_add(1, Ordering::Relaxed) + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_stable() {
        let n = InodeNumbers::default();
        assert_eq!(n.compose(1, 5), (1 << 48) | 5);
        assert_ne!(n.compose(1, 5), n.compose(2, 5));
        let big = n.compose(3, 1 << 50);
        assert_eq!(big, n.compose(3, 1 << 50));
        assert_ne!(big, n.compose(4, 1 << 50));
        assert_ne!(n.compose(1, 0), 0);
    }
}
