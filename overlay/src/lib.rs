//! Union semantics of parallaxfs: the kernel overlayfs's rules, in a library.
//!
//! Owns: the [`Layer`] trait and its kinds ([`SquashLayer`] for a SquashFS image read in
//! process, [`PlainLayer`] for a directory), the [`Stack`] of ordered layers, lookup and
//! readdir merge, whiteouts and opaque directories in every on-disk form ([`whiteout`]), and
//! the stable, unique inode numbers users see ([`inode_number`]), and the copy-on-write upper
//! layer ([`upper`]): copy-up through the workdir (`copy_up.rs`) and every modification
//! (`write.rs`) with the kernel's whiteout, opaque-directory and rename rules.
//!
//! Knows nothing of FUSE (that is `parallaxfs-fs`) or of command lines. The store tool uses it
//! to flatten image layers. Start at [`Stack::new`]; the rules are those of
//! `shared/docs/overlay_semantics.md`.
//!
//! Invariants: a layer handle never escapes its layer (directory layers are walked one
//! component at a time with `O_NOFOLLOW`); `st_ino` of an object is decided in one place
//! ([`inode_number::InodeNumbers::compose`]) and is the same from lookup, getattr and readdir.
#![forbid(unsafe_code)]

pub mod attr;
mod copy_up;
mod error;
pub mod idmap;
pub mod inode_number;
pub mod layer;
mod stack;
pub mod upper;
pub mod whiteout;
mod write;

pub use attr::{Attr, FileKind, Time};
pub use copy_up::{Chain, ChainBuf};
pub use error::{Error, Result};
pub use layer::{FileReader, Handle, Layer, PlainLayer, RawEntry, SquashLayer, StatFs};
pub use parallaxfs_squash as squash;
pub use stack::{ChangeGuard, DirItem, Node, Stack, StackOptions, NAME_MAX};
pub use upper::{Upper, WhiteoutFormat};
pub use write::{Caller, NewObject, SetAttr};
