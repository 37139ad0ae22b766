//! The `Stack`: ordered layers (topmost first) merged by the kernel overlayfs's rules —
//! lookup, readdir merge, attributes of merged directories, xattr filtering.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::attr::{Attr, FileKind};
use crate::error::{Error, Result};
use crate::idmap::{parse_override, Identity};
use crate::inode_number::{lower_slot, InodeNumbers};
use crate::layer::{FileReader, Handle, Layer, StatFs};
use crate::whiteout::{
    dir_mark, has_aufs_whiteout, is_hidden_name, is_private_xattr, is_whiteout, DirMark, OPAQUE_MARKER,
};

/// Longest name the union accepts (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// One directory of a merged directory's stack.
#[derive(Debug, Clone)]
struct LayerDir {
    layer: usize,
    handle: Handle,
    mark: DirMark,
}

#[derive(Debug, Clone)]
enum Object {
    /// A directory: its layer directories, top first, truncated after the first opaque one.
    Dir(Arc<[LayerDir]>),
    /// A non-directory, provided by exactly one layer.
    Leaf { layer: usize, handle: Handle },
}

/// An object of the union as a lookup found it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The `st_ino` users see.
    pub ino: u64,
    /// File type.
    pub kind: FileKind,
    object: Object,
}

impl Node {
    /// True for a directory merged from more than one layer.
    pub fn is_merged(&self) -> bool {
        matches!(&self.object, Object::Dir(dirs) if dirs.len() > 1)
    }
}

/// One entry of a merged directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirItem {
    /// Name bytes.
    pub name: Box<[u8]>,
    /// `d_ino`, equal to the `st_ino` a lookup of the name reports.
    pub ino: u64,
    /// File type.
    pub kind: FileKind,
}

/// Options of a stack beyond its layers.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// How owners on disk are shown.
    pub identity: Identity,
    /// `noxattrs`: extended attributes are not supported through the mount.
    pub no_xattrs: bool,
}

/// Ordered read-only layers, topmost first.
#[derive(Debug)]
pub struct Stack {
    lowers: Vec<Box<dyn Layer>>,
    numbers: InodeNumbers,
    options: StackOptions,
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
        Ok(Stack { lowers, numbers: InodeNumbers::default(), options })
    }

    /// Number of lower layers.
    pub fn layer_count(&self) -> usize {
        self.lowers.len()
    }

    fn layer_dir(&self, layer: usize, handle: Handle) -> Result<LayerDir> {
        let mark = dir_mark(self.lowers[layer].as_ref(), &handle)?;
        Ok(LayerDir { layer, handle, mark })
    }

    fn number(&self, layer: usize, handle: &Handle) -> Result<u64> {
        let ino = self.lowers[layer].attr(handle)?.ino;
        Ok(self.numbers.compose(lower_slot(layer), ino))
    }

    fn dir_node(&self, dirs: Vec<LayerDir>) -> Result<Node> {
        let top = &dirs[0];
        let ino = self.number(top.layer, &top.handle)?;
        Ok(Node { ino, kind: FileKind::Dir, object: Object::Dir(dirs.into()) })
    }

    /// The root directory.
    pub fn root(&self) -> Result<Node> {
        let mut dirs = Vec::new();
        for (layer, l) in self.lowers.iter().enumerate() {
            let d = self.layer_dir(layer, l.root()?)?;
            let opaque = d.mark == DirMark::Opaque;
            dirs.push(d);
            if opaque {
                break;
            }
        }
        self.dir_node(dirs)
    }

    fn dirs<'a>(&self, node: &'a Node) -> Result<&'a [LayerDir]> {
        match &node.object {
            Object::Dir(d) => Ok(d),
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
        for d in self.dirs(dir)? {
            let layer = self.lowers[d.layer].as_ref();
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
                if found.is_empty() {
                    let ino = self.number(d.layer, &object)?;
                    return Ok(Node { ino, kind, object: Object::Leaf { layer: d.layer, handle: object } });
                }
                break;
            }
            let child = self.layer_dir(d.layer, object)?;
            let ends = child.mark == DirMark::Opaque || aufs_whiteout()?;
            found.push(child);
            if ends {
                break;
            }
        }
        if found.is_empty() {
            return Err(Error::NotFound);
        }
        self.dir_node(found)
    }

    /// Attributes, with the union's inode number and directory link-count rule.
    pub fn attr(&self, node: &Node) -> Result<Attr> {
        let mut attr = match &node.object {
            Object::Leaf { layer, handle } => self.lowers[*layer].attr(handle)?,
            Object::Dir(dirs) => {
                let mut a = self.lowers[dirs[0].layer].attr(&dirs[0].handle)?;
                if dirs.len() > 1 {
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
                    self.lowers[layer].get_xattr(&handle, name)?.as_deref().and_then(parse_override)
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
        let mut items: Vec<DirItem> = Vec::new();
        let mut seen: HashMap<Box<[u8]>, ()> = HashMap::new();
        let mut hidden: HashSet<Box<[u8]>> = HashSet::new();
        for d in dirs {
            let layer = self.lowers[d.layer].as_ref();
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
                let ino = self.numbers.compose(lower_slot(d.layer), e.ino);
                seen.insert(e.name.clone(), ());
                items.push(DirItem { name: e.name, ino, kind: e.kind });
            }
            // A layer's whiteouts hide names of the layers below it only (OCI).
            hidden.extend(whiteouts);
        }
        Ok(items)
    }

    fn entry_is_whiteout(&self, d: &LayerDir, name: &[u8], kind: FileKind) -> Result<bool> {
        if kind == FileKind::File && d.mark != DirMark::HoldsXattrWhiteouts {
            return Ok(false);
        }
        let layer = self.lowers[d.layer].as_ref();
        match layer.lookup(&d.handle, name)? {
            Some(object) => is_whiteout(layer, d.mark, &object, kind),
            None => Ok(false),
        }
    }

    fn provider(&self, node: &Node) -> (usize, Handle) {
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
        self.lowers[layer].read_link(&handle)
    }

    /// Extended attribute names, without overlay-private ones; `trusted.*` only when
    /// `privileged` (as the kernel lists them only to CAP_SYS_ADMIN).
    pub fn list_xattr(&self, node: &Node, privileged: bool) -> Result<Vec<Vec<u8>>> {
        self.xattrs_supported()?;
        let (layer, handle) = self.provider(node);
        let mut names = self.lowers[layer].list_xattr(&handle)?;
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
        self.lowers[layer].get_xattr(&handle, name)?.ok_or(Error::NoData)
    }

    /// Opens a regular file for reading.
    pub fn open(&self, node: &Node) -> Result<Box<dyn FileReader>> {
        if node.kind == FileKind::Dir {
            return Err(Error::IsDir);
        }
        let (layer, handle) = self.provider(node);
        self.lowers[layer].open(&handle)
    }

    /// Filesystem statistics: those of the topmost layer, names limited to NAME_MAX.
    pub fn statfs(&self) -> Result<StatFs> {
        let mut st = self.lowers[0].statfs()?;
        st.namelen = st.namelen.min(NAME_MAX as u32);
        Ok(st)
    }

    /// True when the object never changes while mounted (every lower object).
    pub fn is_immutable(&self, node: &Node) -> bool {
        let (layer, _) = self.provider(node);
        self.lowers[layer].immutable()
    }
}
