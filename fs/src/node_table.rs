//! FUSE node ids → union nodes, with the kernel's lookup counts.
//!
//! The node id of an object is its `st_ino` (fuser 0.18 takes the node id from `attr.ino`);
//! both are decided by `parallaxfs_overlay::inode_number`. Node 1 is the root (FUSE_ROOT_ID)
//! and is never forgotten. A node lives from the first lookup that returns it until the kernel
//! forgets every lookup of it.

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parallaxfs_overlay::Node;

/// FUSE's fixed node id of the root.
pub const ROOT_ID: u64 = 1;

#[derive(Debug)]
struct Slot {
    node: Node,
    lookups: u64,
    /// `st_ino` of the directory it was last found in (readdir's `..` of a directory).
    parent: Option<u64>,
}

/// The table of nodes the kernel knows.
#[derive(Debug)]
pub struct NodeTable {
    root: Node,
    nodes: DashMap<u64, Slot>,
}

impl NodeTable {
    /// A table holding only the root.
    pub fn new(root: Node) -> NodeTable {
        NodeTable { root, nodes: DashMap::new() }
    }

    /// The node with id `id`, if the kernel may still use it.
    pub fn get(&self, id: u64) -> Option<Node> {
        if id == ROOT_ID {
            return Some(self.root.clone());
        }
        self.nodes.get(&id).map(|s| s.node.clone())
    }

    /// Records one more kernel reference to `node` (a lookup reply, a readdirplus entry).
    pub fn remember(&self, node: &Node) {
        self.remember_in(node, None);
    }

    /// Records one more kernel reference to `node`, found in the directory whose `st_ino` is
    /// `parent`.
    pub fn remember_in(&self, node: &Node, parent: Option<u64>) {
        if node.ino == self.root.ino {
            return;
        }
        match self.nodes.entry(node.ino) {
            Entry::Occupied(mut o) => {
                let slot = o.get_mut();
                slot.lookups += 1;
                slot.parent = parent.or(slot.parent);
            }
            Entry::Vacant(v) => {
                v.insert(Slot { node: node.clone(), lookups: 1, parent });
            }
        }
    }

    /// `st_ino` of the directory node `id` was last found in (the root's own for the root).
    pub fn parent(&self, id: u64) -> Option<u64> {
        if id == ROOT_ID {
            return Some(self.root.ino);
        }
        self.nodes.get(&id).and_then(|s| s.parent)
    }

    /// Drops `count` kernel references; the node goes when none is left.
    pub fn forget(&self, id: u64, count: u64) {
        if let Entry::Occupied(mut o) = self.nodes.entry(id) {
            let slot = o.get_mut();
            slot.lookups = slot.lookups.saturating_sub(count);
            if slot.lookups == 0 {
                o.remove();
            }
        }
    }

    /// Nodes held (for stats and leak tests).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when only the root is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}
