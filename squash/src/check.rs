//! Full verification of an image: every inode, directory, xattr and data byte is read once.
//! Used by `parallaxfs image check` and by the store tool's `verify`.
//!
//! The walk never trusts the tree to be a tree: a set of visited directories stops cycles
//! (a directory hard-linked into its own subtree), depth and entry budgets stop explosions.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::inode::{InodeRef, Kind};
use crate::Image;

/// Deepest directory nesting accepted (PATH_MAX / 2: every component takes at least 2 bytes).
const MAX_DEPTH: usize = 2048;

/// What a successful check saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Directories, root included.
    pub dirs: u64,
    /// Regular files (each name counted).
    pub files: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Devices, fifos and sockets.
    pub specials: u64,
    /// Distinct inode numbers seen.
    pub inodes: u64,
    /// File bytes read.
    pub bytes: u64,
    /// Extended attributes read.
    pub xattrs: u64,
}

/// The first fault found: the path it was found under and the error (with its byte offset).
#[derive(Debug)]
pub struct CheckFault {
    /// Path inside the image, `/`-separated, starting at `/`.
    pub path: Vec<u8>,
    /// What is wrong.
    pub error: Error,
}

impl std::fmt::Display for CheckFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", String::from_utf8_lossy(&self.path), self.error)
    }
}

struct Walk<'a> {
    image: &'a Image,
    report: CheckReport,
    seen_dirs: HashSet<InodeRef>,
    seen_inodes: HashSet<u32>,
    buf: Vec<u8>,
}

/// Reads the whole image; `Err` names the first fault.
pub fn check(image: &Image) -> std::result::Result<CheckReport, CheckFault> {
    let mut walk = Walk {
        image,
        report: CheckReport::default(),
        seen_dirs: HashSet::new(),
        seen_inodes: HashSet::new(),
        buf: vec![0u8; image.superblock().block_size as usize],
    };
    let fault = |path: &[u8], error| CheckFault { path: path.to_vec(), error };
    // Explicit stack of (path, inode ref, depth): no recursion, however deep the image.
    let mut stack = vec![(b"/".to_vec(), image.root(), 0usize)];
    while let Some((path, r, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(fault(&path, Error::corrupt("directory nesting too deep", 0)));
        }
        let children = walk.visit(r).map_err(|e| fault(&path, e))?;
        for (name, child) in children.into_iter().rev() {
            let mut child_path = path.clone();
            if child_path.len() > 1 {
                child_path.push(b'/');
            }
            child_path.extend_from_slice(&name);
            stack.push((child_path, child, depth + 1));
        }
    }
    let expected = u64::from(image.superblock().inodes);
    if walk.report.inodes != expected {
        let what = "superblock inode count differs from the inodes in the tree";
        return Err(fault(b"/", Error::corrupt(what, 4)));
    }
    Ok(walk.report)
}

impl Walk<'_> {
    /// Checks one inode; returns the children to visit if it is a directory seen first now.
    fn visit(&mut self, r: InodeRef) -> Result<Vec<(Box<[u8]>, InodeRef)>> {
        let inode = self.image.inode(r)?;
        if self.seen_inodes.insert(inode.ino) {
            self.report.inodes += 1;
        }
        for name in self.image.list_xattr(&inode)? {
            self.image.get_xattr(&inode, &name)?.ok_or(Error::corrupt("listed xattr has no value", 0))?;
            self.report.xattrs += 1;
        }
        match inode.kind {
            Kind::Dir => {
                if !self.seen_dirs.insert(r) {
                    return Err(Error::corrupt("directory reachable twice (cycle)", r.0));
                }
                self.report.dirs += 1;
                let mut children = Vec::new();
                let mut subdirs = 0u32;
                for entry in self.image.read_dir(&inode)? {
                    let child = self.image.inode(entry.inode_ref)?;
                    if child.kind != entry.kind || child.ino != entry.ino {
                        return Err(Error::corrupt("directory entry disagrees with its inode", r.0));
                    }
                    subdirs += u32::from(entry.kind == Kind::Dir);
                    // Every name must also be found by lookup (index consistency).
                    let found = self.image.lookup(&inode, &entry.name)?;
                    if found.as_ref().map(|f| f.inode_ref) != Some(entry.inode_ref) {
                        return Err(Error::corrupt("directory index does not find an entry", r.0));
                    }
                    children.push((entry.name, entry.inode_ref));
                }
                if inode.nlink != subdirs + 2 {
                    return Err(Error::corrupt("directory link count differs from its subdirectories", r.0));
                }
                Ok(children)
            }
            Kind::File => {
                self.report.files += 1;
                let mut offset = 0u64;
                while offset < inode.size {
                    let n = self.image.read_at(&inode, offset, &mut self.buf)?;
                    if n == 0 {
                        return Err(Error::corrupt("file shorter than its size", r.0));
                    }
                    offset += n as u64;
                }
                self.report.bytes += offset;
                Ok(Vec::new())
            }
            Kind::Symlink => {
                self.report.symlinks += 1;
                self.image.read_link(&inode)?;
                Ok(Vec::new())
            }
            _ => {
                self.report.specials += 1;
                Ok(Vec::new())
            }
        }
    }
}
