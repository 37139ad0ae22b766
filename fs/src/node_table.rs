//! FUSE node ids → union nodes, with the kernel's lookup counts and the name each node was
//! last reached by.
//!
//! The node id of an object is its `st_ino` (fuser 0.18 takes the node id from `attr.ino`);
//! both are decided by `parallaxfs_overlay::inode_number`. Node 1 is the root (FUSE_ROOT_ID)
//! and is never forgotten. A node lives from the first lookup that returns it until the kernel
//! forgets every lookup of it; the kernel never forgets a directory before its children, so
//! the chain of parents of a live node is always in the table. Copy-up needs that chain: it
//! is how a change to `/a/b/c` finds (and copies up) `/a` and `/a/b` first.

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parallaxfs_overlay::{ChainBuf, Node};

/// FUSE's fixed node id of the root.
pub const ROOT_ID: u64 = 1;

#[derive(Debug)]
struct Slot {
    node: Node,
    parent: u64,
    name: Box<[u8]>,
    lookups: u64,
    /// FUSE generation: bumped when a new object takes a number the kernel may still hold
    /// an inode for (upper inode numbers are reused), so the kernel drops the stale inode.
    generation: u64,
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
        if id == ROOT_ID || id == self.root.ino {
            return Some(self.root.clone());
        }
        self.nodes.get(&id).map(|s| s.node.clone())
    }

    /// The node id the kernel uses for `node`.
    pub fn id_of(&self, node: &Node) -> u64 {
        if node.ino == self.root.ino {
            ROOT_ID
        } else {
            node.ino
        }
    }

    /// Records one more kernel reference to `node`, reached as `name` in directory `parent`
    /// (a lookup reply, a readdirplus entry, a create).
    /// Returns the generation to reply with.
    pub fn remember(&self, node: &Node, parent: u64, name: &[u8]) -> u64 {
        if node.ino == self.root.ino {
            return 0;
        }
        match self.nodes.entry(node.ino) {
            Entry::Occupied(mut o) => {
                // The newest lookup wins: the number may have been reused by a new upper
                // object before the kernel's FORGET of the old one arrived.
                let slot = o.get_mut();
                slot.lookups += 1;
                slot.node = node.clone();
                if slot.parent != parent || *slot.name != *name {
                    slot.parent = parent;
                    slot.name = name.into();
                }
                slot.generation
            }
            Entry::Vacant(v) => {
                v.insert(Slot { node: node.clone(), parent, name: name.into(), lookups: 1, generation: 0 });
                0
            }
        }
    }

    /// The generation node `id` is answered with.
    pub fn generation(&self, id: u64) -> u64 {
        self.nodes.get(&id).map_or(0, |s| s.generation)
    }

    /// A new object now has number `id`: if the kernel may still know an older one under it,
    /// the next replies carry a new generation.
    pub fn renew(&self, id: u64) {
        if let Some(mut slot) = self.nodes.get_mut(&id) {
            slot.generation += 1;
        }
    }

    /// Replaces what node `id` stands for (after a rename or copy-up), keeping its count.
    pub fn replace(&self, id: u64, node: Node, parent: u64, name: &[u8]) {
        if let Some(mut slot) = self.nodes.get_mut(&id) {
            slot.node = node;
            slot.parent = parent;
            slot.name = name.into();
        }
    }

    /// Node ids below directory `id` (at any depth), parents before children.
    pub fn descendants(&self, id: u64) -> Vec<u64> {
        let mut found: Vec<(usize, u64)> = Vec::new();
        for slot in self.nodes.iter() {
            let mut depth = 0;
            let mut cur = slot.parent;
            while cur != ROOT_ID && cur != self.root.ino && depth < 1 << 16 {
                depth += 1;
                if cur == id {
                    found.push((depth, *slot.key()));
                    break;
                }
                match self.nodes.get(&cur) {
                    Some(p) => cur = p.parent,
                    None => break,
                }
            }
        }
        // Deeper ancestors of a node mean more depth below `id` too: sort by distance to it.
        found.sort_unstable();
        let mut ids: Vec<u64> = found.into_iter().map(|(_, i)| i).collect();
        ids.sort_by_key(|i| self.chain(*i).map_or(0, |c| c.len()));
        ids
    }

    /// `st_ino` of the directory node `id` was last found in (the root's own for the root):
    /// the `d_ino` of `..` in its listing.
    pub fn parent_ino(&self, id: u64) -> Option<u64> {
        if id == ROOT_ID || id == self.root.ino {
            return Some(self.root.ino);
        }
        let parent = self.nodes.get(&id)?.parent;
        Some(if parent == ROOT_ID { self.root.ino } else { parent })
    }

    /// Where node `id` was last reached: (parent id, name).
    pub fn name_of(&self, id: u64) -> Option<(u64, Box<[u8]>)> {
        self.nodes.get(&id).map(|s| (s.parent, s.name.clone()))
    }

    /// The names from the root down to node `id`: `[("", root), (name, node)...]`.
    pub fn chain(&self, id: u64) -> Option<ChainBuf> {
        let mut out = Vec::new();
        let mut cur = id;
        while cur != ROOT_ID && cur != self.root.ino {
            let slot = self.nodes.get(&cur)?;
            out.push((slot.name.clone(), slot.node.clone()));
            cur = slot.parent;
            if out.len() > 1 << 16 {
                return None;
            }
        }
        out.push((Box::default(), self.root.clone()));
        out.reverse();
        Some(out)
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
