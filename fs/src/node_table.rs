//! FUSE node ids → union nodes, with the kernel's lookup counts and the name each node was
//! last reached by.
//!
//! The node id of an object is its `st_ino` (fuser 0.18 takes the node id from `attr.ino`);
//! both are decided by `parallaxfs_overlay::inode_number`. Node 1 is the root (FUSE_ROOT_ID)
//! and is never forgotten. A node lives from the first lookup that returns it until the kernel
//! forgets every lookup of it. Copy-up needs the chain of parents of a live node: it is how a
//! change to `/a/b/c` finds (and copies up) `/a` and `/a/b` first. The kernel never forgets a
//! directory whose dentries are in use, but a node is reached by the name it was *last* found
//! under, and for hard links that may be a directory the kernel has forgotten while another
//! name keeps the inode alive (`link f links/f`, then the `links` dentry is reclaimed: the
//! next chmod of `f` found no chain and failed with ENOENT). So every slot pins its parent's
//! slot: a slot goes only when the kernel holds no lookup of it *and* no slot names it as
//! parent.

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
    /// Slots whose `parent` is this one (they keep it in the table).
    children: u64,
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
        NodeTable { root, nodes: crate::new_map() }
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
        let (generation, old_parent) = match self.nodes.entry(node.ino) {
            Entry::Occupied(mut o) => {
                // The newest lookup wins: the number may have been reused by a new upper
                // object before the kernel's FORGET of the old one arrived.
                let slot = o.get_mut();
                slot.lookups += 1;
                // A node without an upper copy tells nothing new about an object already held
                // (lower objects never change): it may come from a lookup that ran while a
                // copy-up through the held node was in flight (a readdirplus racing a
                // write-open), and storing it would drop that copy — later opens then read the
                // lower file. So only a node with an upper copy (a copy-up done elsewhere, or
                // a new upper object that took a reused number) or of another kind replaces it.
                if node.in_upper() || slot.node.kind != node.kind {
                    slot.node = node.clone();
                }
                let old = slot.parent;
                if slot.parent != parent || *slot.name != *name {
                    slot.parent = parent;
                    slot.name = name.into();
                }
                (slot.generation, Some(old))
            }
            Entry::Vacant(v) => {
                let slot =
                    Slot { node: node.clone(), parent, name: name.into(), lookups: 1, children: 0, generation: 0 };
                v.insert(slot);
                (0, None)
            }
        };
        // Outside the entry guard: the parent may live in the same shard.
        self.repin(old_parent, parent);
        generation
    }

    /// Moves a child's pin from `old` (if any) to `new`.
    fn repin(&self, old: Option<u64>, new: u64) {
        if old == Some(new) {
            return;
        }
        if let Some(mut slot) = self.nodes.get_mut(&new) {
            slot.children += 1;
        }
        if let Some(old) = old {
            self.unpin(old);
        }
    }

    /// Drops one child pin of `id`; removes it (and so on up) when nothing holds it.
    fn unpin(&self, id: u64) {
        let mut cur = id;
        for _ in 0..1 << 16 {
            let Entry::Occupied(mut o) = self.nodes.entry(cur) else { return };
            let slot = o.get_mut();
            slot.children = slot.children.saturating_sub(1);
            if slot.children > 0 || slot.lookups > 0 {
                return;
            }
            cur = o.remove().parent;
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
        let old_parent = match self.nodes.get_mut(&id) {
            Some(mut slot) => {
                let old = slot.parent;
                slot.node = node;
                slot.parent = parent;
                slot.name = name.into();
                old
            }
            None => return,
        };
        self.repin(Some(old_parent), parent);
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

    /// The FUSE id of the directory node `id` was last reached in, as the kernel names it.
    pub fn parent_id(&self, id: u64) -> Option<u64> {
        self.nodes.get(&id).map(|s| s.parent)
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

    /// Drops `count` kernel references; the node goes when none is left and no child pins it.
    pub fn forget(&self, id: u64, count: u64) {
        let parent = match self.nodes.entry(id) {
            Entry::Occupied(mut o) => {
                let slot = o.get_mut();
                slot.lookups = slot.lookups.saturating_sub(count);
                if slot.lookups > 0 || slot.children > 0 {
                    return;
                }
                o.remove().parent
            }
            Entry::Vacant(_) => return,
        };
        self.unpin(parent);
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

#[cfg(test)]
mod tests {
    use super::*;
    use parallaxfs_overlay::{PlainLayer, Stack};

    /// A stack over `root/{d1,d2}/f` (f is one file: the table only sees nodes).
    fn stack(tag: &str) -> (std::path::PathBuf, Stack) {
        let dir = std::env::temp_dir().join(format!("pfs-node-table-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d1")).unwrap();
        std::fs::create_dir_all(dir.join("d2")).unwrap();
        std::fs::write(dir.join("d1/f"), b"x").unwrap();
        let stack = Stack::new(vec![Box::new(PlainLayer::open(&dir).unwrap())]).unwrap();
        (dir, stack)
    }

    #[test]
    fn a_node_keeps_the_parent_it_was_last_reached_by() {
        let (dir, stack) = stack("pin");
        let root = stack.root().unwrap();
        let (d1, d2) = (stack.lookup(&root, b"d1").unwrap(), stack.lookup(&root, b"d2").unwrap());
        let f = stack.lookup(&d1, b"f").unwrap();
        let table = NodeTable::new(root);
        table.remember(&d1, ROOT_ID, b"d1");
        table.remember(&d2, ROOT_ID, b"d2");
        table.remember(&f, d1.ino, b"f");
        // A second name in d2 (as after link()); then the kernel forgets d2 while d1/f keeps
        // the inode alive.
        table.remember(&f, d2.ino, b"f");
        table.forget(d2.ino, 1);
        let chain = table.chain(f.ino).expect("d2 is pinned by its child");
        assert_eq!(chain.iter().map(|(n, _)| &**n).collect::<Vec<_>>(), [&b""[..], b"d2", b"f"]);
        assert_eq!(table.len(), 3);
        // The last lookup of f goes: f, then the unreferenced d2 go; d1 stays (looked up).
        table.forget(f.ino, 2);
        assert_eq!(table.len(), 1);
        assert!(table.get(d1.ino).is_some() && table.get(d2.ino).is_none());
        table.forget(d1.ino, 1);
        assert!(table.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_pinned_parent_looked_up_again_counts_lookups_again() {
        let (dir, stack) = stack("relookup");
        let root = stack.root().unwrap();
        let d1 = stack.lookup(&root, b"d1").unwrap();
        let f = stack.lookup(&d1, b"f").unwrap();
        let table = NodeTable::new(root);
        table.remember(&d1, ROOT_ID, b"d1");
        table.remember(&f, d1.ino, b"f");
        table.forget(d1.ino, 1);
        table.remember(&d1, ROOT_ID, b"d1");
        table.forget(f.ino, 1);
        assert!(table.get(d1.ino).is_some(), "d1 still has a lookup");
        table.forget(d1.ino, 1);
        assert!(table.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_lookup_that_raced_a_copy_up_does_not_replace_the_copy() {
        let (dir, lower) = stack("copyup");
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        // The lower is `dir` itself (its upper/work subdirs are just more lower entries).
        drop(lower);
        let stack = Stack::new(vec![Box::new(PlainLayer::open(&dir).unwrap())])
            .unwrap()
            .with_upper(parallaxfs_overlay::Upper::open(&upper, &work, true).unwrap());
        let root = stack.root().unwrap();
        let d1 = stack.lookup(&root, b"d1").unwrap();
        let held = stack.lookup(&d1, b"f").unwrap();
        let raced = stack.lookup(&d1, b"f").unwrap();
        let table = NodeTable::new(root.clone());
        table.remember(&d1, ROOT_ID, b"d1");
        table.remember(&held, d1.ino, b"f");
        stack
            .copy_up(&[(Box::default(), root), (b"d1"[..].into(), d1.clone()), (b"f"[..].into(), held.clone())], true)
            .unwrap();
        // A readdirplus looked `f` up before the copy-up and answers after it.
        assert!(!raced.in_upper());
        table.remember(&raced, d1.ino, b"f");
        assert!(table.get(held.ino).unwrap().in_upper(), "the held node keeps its upper copy");
        let _ = std::fs::remove_dir_all(dir);
    }
}
