//! Which open handles the kernel serves through its page cache rather than by passthrough.
//!
//! The kernel keeps one I/O mode per inode: while a cached handle is open, a passthrough open
//! of the same inode fails with EIO (and the other way round). So a node with cached handles
//! open (a file still open from its create, a lower file open before its copy-up) gets cached
//! handles until they are all closed.

use dashmap::DashMap;

/// Cached (non-passthrough) open handles, per node.
#[derive(Debug)]
pub struct CachedOpens {
    by_node: DashMap<u64, u64>,
    node_of: DashMap<u64, u64>,
}

impl Default for CachedOpens {
    fn default() -> Self {
        CachedOpens { by_node: crate::new_map(), node_of: crate::new_map() }
    }
}

impl CachedOpens {
    /// Handle `fh` of node `node` was opened cached.
    pub fn opened(&self, fh: u64, node: u64) {
        *self.by_node.entry(node).or_default() += 1;
        self.node_of.insert(fh, node);
    }

    /// Handle `fh` was released.
    pub fn released(&self, fh: u64) {
        let Some((_, node)) = self.node_of.remove(&fh) else { return };
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.by_node.entry(node) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// True while node `node` has cached handles open.
    pub fn any(&self, node: u64) -> bool {
        self.by_node.contains_key(&node)
    }
}

#[cfg(test)]
mod tests {
    use super::CachedOpens;

    #[test]
    fn counts_per_node() {
        let c = CachedOpens::default();
        c.opened(1, 10);
        c.opened(2, 10);
        c.opened(3, 11);
        assert!(c.any(10) && c.any(11));
        c.released(1);
        assert!(c.any(10));
        c.released(2);
        c.released(2);
        assert!(!c.any(10) && c.any(11));
    }
}
