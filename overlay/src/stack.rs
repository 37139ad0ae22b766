//! The `Stack`: an optional upper layer over ordered lower layers (topmost first), merged by
//! the kernel overlayfs's rules — lookup, readdir merge, attributes of merged directories,
//! xattr filtering. Modifications live in `copy_up.rs` and `write.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use crate::attr::{Attr, FileKind};
use crate::error::{Error, Result};
use crate::idmap::{parse_override, Identity};
use crate::inode_number::{lower_slot, InodeNumbers};
use crate::layer::{FileReader, Handle, Layer, StatFs};
use crate::upper::Upper;
use crate::whiteout::{
    dir_mark, has_aufs_whiteout, is_hidden_name, is_private_xattr, is_whiteout, DirMark, OPAQUE_MARKER,
};

/// Longest name the union accepts (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Layer index of the upper layer (lowers are 0, 1, ... topmost first).
pub(crate) const UPPER: usize = usize::MAX;

/// One directory of a merged directory's stack.
#[derive(Debug, Clone)]
pub(crate) struct LayerDir {
    pub(crate) layer: usize,
    pub(crate) handle: Handle,
    pub(crate) mark: DirMark,
}

#[derive(Debug, Clone)]
pub(crate) enum Object {
    /// A directory: its lower layer directories, top first, truncated after the first opaque
    /// one (the upper directory, if any, is in [`Node::upper`]).
    Dir(Arc<[LayerDir]>),
    /// A non-directory, provided by exactly one layer (`UPPER` or a lower) when looked up.
    Leaf { layer: usize, handle: Handle },
}

/// An object of the union as a lookup found it. Clones share the upper slot, so a copy-up
/// done through one clone is seen by all.
#[derive(Debug, Clone)]
pub struct Node {
    /// The `st_ino` users see.
    pub ino: u64,
    /// File type.
    pub kind: FileKind,
    pub(crate) object: Object,
    /// The object's upper copy, once it has one.
    pub(crate) upper: Arc<OnceLock<LayerDir>>,
}

impl Node {
    /// True for a directory merged from more than one layer.
    pub fn is_merged(&self) -> bool {
        match &self.object {
            Object::Dir(dirs) => dirs.len() + usize::from(self.upper.get().is_some()) > 1,
            Object::Leaf { .. } => false,
        }
    }

    /// True when the object lives in the upper layer.
    pub fn in_upper(&self) -> bool {
        self.upper.get().is_some()
    }

    pub(crate) fn lowers(&self) -> &[LayerDir] {
        match &self.object {
            Object::Dir(d) => d,
            Object::Leaf { .. } => &[],
        }
    }
}

/// One entry of a merged directory listing.
#[derive(Debug, Clone)]
pub struct DirItem {
    /// Name bytes.
    pub name: Box<[u8]>,
    /// `d_ino`, equal to the `st_ino` a lookup of the name reports.
    pub ino: u64,
    /// File type.
    pub kind: FileKind,
    /// The layer and object a lookup of the name would find, where the listing knows it
    /// for sure (see [`Stack::entry_node`]).
    source: Option<(usize, Handle)>,
}

impl DirItem {
    /// An entry known by name only: [`Stack::entry_node`] looks it up.
    pub fn new(name: Box<[u8]>, ino: u64, kind: FileKind) -> DirItem {
        DirItem { name, ino, kind, source: None }
    }
}

/// Options of a stack beyond its layers.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// How owners on disk are shown.
    pub identity: Identity,
    /// `noxattrs`: extended attributes are not supported through the mount.
    pub no_xattrs: bool,
}

/// An optional upper layer over ordered read-only layers, topmost first.
#[derive(Debug)]
pub struct Stack {
    pub(crate) lowers: Vec<Box<dyn Layer>>,
    pub(crate) upper: Option<Upper>,
    numbers: InodeNumbers,
    pub(crate) options: StackOptions,
    /// Striped locks serializing copy-ups of one object.
    pub(crate) copy_locks: Box<[std::sync::Mutex<()>]>,
    /// Changes to the union vs. the subtree-copy rename of a lower directory (see
    /// [`Stack::changes`]).
    tree_lock: std::sync::RwLock<()>,
    /// The one never-set upper cell every node of a read-only stack shares (a cell per node
    /// was 80 bytes of each of the kernel's cached inodes).
    no_upper: Arc<OnceLock<LayerDir>>,
}

/// Held while a change is made to the union: shared by ordinary changes, exclusive for the
/// rename of a lower or merged directory (overlay_semantics.md §4 "The subtree is locked
/// against changes during the copy"). That rename copies the merged tree and then hides the
/// source; a copy-up or create inside the source meanwhile would land in the hidden copy and
/// be lost, although the write that caused it succeeded.
#[derive(Debug)]
pub enum ChangeGuard<'a> {
    /// Any change but a lower-directory rename.
    Shared(std::sync::RwLockReadGuard<'a, ()>),
    /// A lower-directory rename: no other change runs.
    Exclusive(std::sync::RwLockWriteGuard<'a, ()>),
}

impl Stack {
    /// A read-only union of `lowers`, topmost first.
    pub fn new(lowers: Vec<Box<dyn Layer>>) -> Result<Stack> {
        Stack::with_options(lowers, StackOptions::default())
    }

    /// A read-only union of `lowers`, topmost first, with `options`.
    pub fn with_options(lowers: Vec<Box<dyn Layer>>, options: StackOptions) -> Result<Stack> {
        if lowers.is_empty() {
            return Err(Error::BadLayer { path: String::new(), reason: "no lower layer given".into() });
        }
        let copy_locks = (0..64).map(|_| std::sync::Mutex::new(())).collect();
        let tree_lock = std::sync::RwLock::new(());
        Ok(Stack {
            lowers,
            upper: None,
            numbers: InodeNumbers::default(),
            options,
            copy_locks,
            tree_lock,
            no_upper: Arc::default(),
        })
    }

    /// Adds a writable upper layer: the union becomes copy-on-write.
    pub fn with_upper(mut self, upper: Upper) -> Stack {
        self.upper = Some(upper);
        self
    }

    /// Takes the change lock: exclusive for a lower-directory rename (see
    /// [`Stack::renames_by_copy`]), else shared. Callers take it *before* resolving the nodes
    /// the change is about, so a change that waited for a rename sees where things moved; the
    /// union's methods never take it themselves (a shared lock taken twice by one thread can
    /// deadlock behind a waiting writer).
    pub fn changes(&self, exclusive: bool) -> ChangeGuard<'_> {
        if exclusive {
            ChangeGuard::Exclusive(self.tree_lock.write().unwrap_or_else(|p| p.into_inner()))
        } else {
            ChangeGuard::Shared(self.tree_lock.read().unwrap_or_else(|p| p.into_inner()))
        }
    }

    /// True when renaming `name` in `dir` copies a merged tree (a lower or merged directory,
    /// not exchanged): such a rename needs the change lock exclusively.
    pub fn renames_by_copy(&self, dir: &Node, name: &[u8], flags: u32) -> bool {
        flags & libc::RENAME_EXCHANGE == 0
            && self.lookup(dir, name).is_ok_and(|n| n.kind == FileKind::Dir && !n.lowers().is_empty())
    }

    /// The upper layer, or EROFS.
    pub(crate) fn upper(&self) -> Result<&Upper> {
        self.upper.as_ref().ok_or(Error::ReadOnly)
    }

    /// True when the union has an upper layer.
    pub fn writable(&self) -> bool {
        self.upper.is_some()
    }

    pub(crate) fn layer(&self, index: usize) -> &dyn Layer {
        match (index, &self.upper) {
            (UPPER, Some(u)) => &u.layer,
            _ => self.lowers[index.min(self.lowers.len() - 1)].as_ref(),
        }
    }

    /// Number of lower layers.
    pub fn layer_count(&self) -> usize {
        self.lowers.len()
    }

    pub(crate) fn layer_dir(&self, layer: usize, handle: Handle) -> Result<LayerDir> {
        let mark = dir_mark(self.layer(layer), &handle)?;
        Ok(LayerDir { layer, handle, mark })
    }

    pub(crate) fn number(&self, layer: usize, handle: &Handle) -> Result<u64> {
        Ok(self.number_of(layer, self.layer(layer).attr(handle)?.ino))
    }

    /// The union number of the object with layer-local number `ino` in `layer` (for a
    /// directory, of its topmost layer directory: see [`Stack::dir_node`]).
    fn number_of(&self, layer: usize, ino: u64) -> u64 {
        if layer == UPPER {
            if let Some(n) = self.upper.as_ref().and_then(|u| u.numbers.get(&ino).map(|n| *n)) {
                return n;
            }
            // Upper number 1 would be the FUSE root id: give it an overflow number.
            return self.numbers.compose(0, if ino == 1 { u64::MAX } else { ino });
        }
        self.numbers.compose(lower_slot(layer), ino)
    }

    /// A directory node from its upper dir (if any) and lower dirs.
    pub(crate) fn dir_node(&self, upper: Option<LayerDir>, lowers: Vec<LayerDir>) -> Result<Node> {
        let ino = match (lowers.first(), &upper) {
            (Some(top), _) => self.number(top.layer, &top.handle)?,
            (None, Some(u)) => self.number(UPPER, &u.handle)?,
            (None, None) => return Err(Error::NotFound),
        };
        Ok(Node { ino, kind: FileKind::Dir, object: Object::Dir(lowers.into()), upper: self.upper_cell(upper) })
    }

    pub(crate) fn leaf_node(&self, layer: usize, handle: Handle, kind: FileKind) -> Result<Node> {
        let ino = self.number(layer, &handle)?;
        let upper = (layer == UPPER).then(|| LayerDir { layer, handle: handle.clone(), mark: DirMark::Transparent });
        Ok(Node { ino, kind, object: Object::Leaf { layer, handle }, upper: self.upper_cell(upper) })
    }

    /// A node's upper cell holding `upper`; in a read-only stack, the shared empty one.
    fn upper_cell(&self, upper: Option<LayerDir>) -> Arc<OnceLock<LayerDir>> {
        match upper {
            None if self.upper.is_none() => self.no_upper.clone(),
            upper => Arc::new(upper.map_or_else(OnceLock::new, OnceLock::from)),
        }
    }

    /// The root directory.
    pub fn root(&self) -> Result<Node> {
        let upper = match &self.upper {
            Some(u) => Some(self.layer_dir(UPPER, u.layer.root()?)?),
            None => None,
        };
        let mut dirs = Vec::new();
        if upper.as_ref().is_none_or(|u| u.mark != DirMark::Opaque) {
            for (layer, l) in self.lowers.iter().enumerate() {
                let d = self.layer_dir(layer, l.root()?)?;
                let opaque = d.mark == DirMark::Opaque;
                dirs.push(d);
                if opaque {
                    break;
                }
            }
        }
        self.dir_node(upper, dirs)
    }

    /// The layer directories of a directory node, upper first.
    pub(crate) fn dirs(&self, node: &Node) -> Result<Vec<LayerDir>> {
        match &node.object {
            Object::Dir(d) => Ok(node.upper.get().cloned().into_iter().chain(d.iter().cloned()).collect()),
            Object::Leaf { .. } => Err(Error::NotDir),
        }
    }

    /// Looks `name` up in directory `dir` (overlay_semantics.md §1.2).
    pub fn lookup(&self, dir: &Node, name: &[u8]) -> Result<Node> {
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        if is_hidden_name(name) || name.is_empty() || name == b"." || name == b".." {
            return Err(Error::NotFound);
        }
        let mut found: Vec<LayerDir> = Vec::new();
        let mut upper_dir = None;
        for d in self.dirs(dir)? {
            let d = &d;
            let layer = self.layer(d.layer);
            let aufs_whiteout = || has_aufs_whiteout(layer, &d.handle, name);
            let Some(object) = layer.lookup(&d.handle, name)? else {
                if aufs_whiteout()? {
                    break;
                }
                continue;
            };
            let kind = layer.kind(&object)?;
            if is_whiteout(layer, d.mark, &object, kind)? {
                break;
            }
            if kind != FileKind::Dir {
                if found.is_empty() && upper_dir.is_none() {
                    return self.leaf_node(d.layer, object, kind);
                }
                break;
            }
            let child = self.layer_dir(d.layer, object)?;
            let ends = child.mark == DirMark::Opaque || aufs_whiteout()?;
            if d.layer == UPPER {
                upper_dir = Some(child);
            } else {
                found.push(child);
            }
            if ends {
                break;
            }
        }
        self.dir_node(upper_dir, found)
    }

    /// True when a lookup of `name` in `dir` over the lower layers only finds an object:
    /// removing it from the union then needs a whiteout.
    pub(crate) fn lower_positive(&self, dir: &Node, name: &[u8]) -> Result<bool> {
        for d in dir.lowers() {
            let layer = self.layer(d.layer);
            let Some(object) = layer.lookup(&d.handle, name)? else {
                if has_aufs_whiteout(layer, &d.handle, name)? {
                    return Ok(false);
                }
                continue;
            };
            let kind = layer.kind(&object)?;
            return Ok(!is_whiteout(layer, d.mark, &object, kind)?);
        }
        Ok(false)
    }

    /// Attributes, with the union's inode number and directory link-count rule.
    pub fn attr(&self, node: &Node) -> Result<Attr> {
        let mut attr = match &node.object {
            Object::Leaf { .. } => {
                let (layer, handle) = self.provider(node);
                self.layer(layer).attr(&handle)?
            }
            Object::Dir(_) => {
                let (layer, handle) = self.provider(node);
                let mut a = self.layer(layer).attr(&handle)?;
                if node.is_merged() {
                    // The kernel reports 1 for merged directories ("seems to pacify find").
                    a.nlink = 1;
                }
                a
            }
        };
        attr.ino = node.ino;
        self.show_owner(node, &mut attr)?;
        Ok(attr)
    }

    /// Applies override-stat xattrs and id mappings to the owner and mode users see.
    fn show_owner(&self, node: &Node, attr: &mut Attr) -> Result<()> {
        let identity = &self.options.identity;
        if let Some(name) = identity.override_stat.xattr() {
            if matches!(attr.kind, FileKind::File | FileKind::Dir) {
                let (layer, handle) = self.provider(node);
                if let Some((uid, gid, perm)) =
                    self.layer(layer).get_xattr(&handle, name)?.as_deref().and_then(parse_override)
                {
                    attr.uid = uid;
                    attr.gid = gid;
                    attr.perm = perm;
                }
            }
        }
        attr.uid = identity.uid(attr.uid);
        attr.gid = identity.gid(attr.gid);
        Ok(())
    }

    fn hidden_xattr(&self, name: &[u8]) -> bool {
        is_private_xattr(name) || self.options.identity.override_stat.xattr() == Some(name)
    }

    fn xattrs_supported(&self) -> Result<()> {
        if self.options.no_xattrs {
            return Err(Error::Io(std::io::Error::from_raw_os_error(nix::errno::Errno::ENOTSUP as i32)));
        }
        Ok(())
    }

    /// The merged listing of `dir`, without `.` and `..` (overlay_semantics.md §1.3).
    pub fn read_dir(&self, dir: &Node) -> Result<Vec<DirItem>> {
        let dirs = self.dirs(dir)?;
        let dirs = &dirs;
        let mut items: Vec<DirItem> = Vec::new();
        let mut seen: HashMap<Box<[u8]>, ()> = HashMap::new();
        let mut hidden: HashSet<Box<[u8]>> = HashSet::new();
        for d in dirs {
            let layer = self.layer(d.layer);
            let mut whiteouts = Vec::new();
            for e in layer.read_dir(&d.handle)? {
                if let Some(target) = e.name.strip_prefix(crate::whiteout::WHITEOUT_PREFIX) {
                    if &*e.name != OPAQUE_MARKER {
                        whiteouts.push(Box::<[u8]>::from(target));
                    }
                    continue;
                }
                if e.name.len() > NAME_MAX || seen.contains_key(&e.name) || hidden.contains(&e.name) {
                    continue;
                }
                if matches!(e.kind, FileKind::CharDev | FileKind::File) && self.entry_is_whiteout(d, &e.name, e.kind)? {
                    whiteouts.push(e.name);
                    continue;
                }
                let ino = if d.layer == UPPER && e.kind == FileKind::Dir {
                    // An upper directory takes the number of a same-named lower directory
                    // below it, if any: ask the one rule lookup uses.
                    match self.lookup(dir, &e.name) {
                        Ok(n) => n.ino,
                        Err(Error::NotFound) => continue,
                        Err(e) => return Err(e),
                    }
                } else {
                    // The first occurrence of a non-directory is the object lookup finds.
                    self.number_of(d.layer, e.ino)
                };
                seen.insert(e.name.clone(), ());
                // In a read-only stack, the first occurrence of a non-directory is the object
                // a lookup finds; a directory merges with those below it, and an object of a
                // writable stack may be copied up after the listing was taken.
                let known = self.upper.is_none() && e.kind != FileKind::Dir;
                let source = e.object.filter(|_| known).map(|o| (d.layer, o));
                items.push(DirItem { name: e.name, ino, kind: e.kind, source });
            }
            // A layer's whiteouts hide names of the layers below it only (OCI).
            hidden.extend(whiteouts);
        }
        Ok(items)
    }

    /// The node of an entry of `dir`'s listing: built from the object the listing named
    /// when that is the one a lookup would find, else looked up by name (a READDIRPLUS of a
    /// SquashFS directory then reads each entry's inode, not the directory once per entry).
    pub fn entry_node(&self, dir: &Node, item: &DirItem) -> Result<Node> {
        match &item.source {
            Some((layer, object)) => self.leaf_node(*layer, object.clone(), item.kind),
            None => self.lookup(dir, &item.name),
        }
    }

    fn entry_is_whiteout(&self, d: &LayerDir, name: &[u8], kind: FileKind) -> Result<bool> {
        if kind == FileKind::File && d.mark != DirMark::HoldsXattrWhiteouts {
            return Ok(false);
        }
        let layer = self.layer(d.layer);
        match layer.lookup(&d.handle, name)? {
            Some(object) => is_whiteout(layer, d.mark, &object, kind),
            None => Ok(false),
        }
    }

    /// The layer object that provides `node`'s data and attributes: its upper copy if it has
    /// one, else the top lower.
    pub(crate) fn provider(&self, node: &Node) -> (usize, Handle) {
        if let Some(u) = node.upper.get() {
            return (UPPER, u.handle.clone());
        }
        match &node.object {
            Object::Leaf { layer, handle } => (*layer, handle.clone()),
            Object::Dir(dirs) => (dirs[0].layer, dirs[0].handle.clone()),
        }
    }

    /// Target of a symlink.
    pub fn read_link(&self, node: &Node) -> Result<Vec<u8>> {
        if node.kind != FileKind::Symlink {
            return Err(Error::NotSymlink);
        }
        let (layer, handle) = self.provider(node);
        self.layer(layer).read_link(&handle)
    }

    /// Extended attribute names, without overlay-private ones; `trusted.*` only when
    /// `privileged` (as the kernel lists them only to CAP_SYS_ADMIN).
    pub fn list_xattr(&self, node: &Node, privileged: bool) -> Result<Vec<Vec<u8>>> {
        self.xattrs_supported()?;
        let (layer, handle) = self.provider(node);
        let mut names = self.layer(layer).list_xattr(&handle)?;
        names.retain(|n| !self.hidden_xattr(n) && (privileged || !n.starts_with(b"trusted.")));
        Ok(names)
    }

    /// One extended attribute; overlay-private ones do not exist.
    pub fn get_xattr(&self, node: &Node, name: &[u8]) -> Result<Vec<u8>> {
        self.xattrs_supported()?;
        if self.hidden_xattr(name) {
            return Err(Error::NoData);
        }
        let (layer, handle) = self.provider(node);
        self.layer(layer).get_xattr(&handle, name)?.ok_or(Error::NoData)
    }

    /// Opens a regular file for reading.
    pub fn open(&self, node: &Node) -> Result<Box<dyn FileReader>> {
        if node.kind == FileKind::Dir {
            return Err(Error::IsDir);
        }
        let (layer, handle) = self.provider(node);
        self.layer(layer).open(&handle)
    }

    /// Filesystem statistics: those of the upper layer, else of the topmost lower; names
    /// limited to NAME_MAX.
    pub fn statfs(&self) -> Result<StatFs> {
        let mut st = match &self.upper {
            Some(u) => u.layer.statfs()?,
            None => self.lowers[0].statfs()?,
        };
        st.namelen = st.namelen.min(NAME_MAX as u32);
        Ok(st)
    }

    /// True when the object never changes while mounted (every lower object).
    pub fn is_immutable(&self, node: &Node) -> bool {
        let (layer, _) = self.provider(node);
        layer != UPPER && self.upper.is_none() && self.layer(layer).immutable()
    }
}
