//! Union semantics of parallaxfs: the kernel overlayfs's rules, in a library.
//!
//! Owns: the `Layer` trait and its kinds (a SquashFS image from `parallaxfs-squash`, a plain
//! directory, the upper directory with its workdir), the `Stack` of ordered layers, lookup and
//! readdir merge, whiteouts and opaque directories in every on-disk form, copy-up through the
//! workdir, rename (lower directories included) and the stable, unique inode numbers users see.
//!
//! Knows nothing of FUSE (that is `parallaxfs-fs`) or of command lines. The store tool uses it to
//! flatten image layers. See `shared/docs/overlay_semantics.md` for the rules it implements.
//!
//! Status: the layer and stack types arrive with the read-only union mount (issue 5); this crate
//! exists from the first commit so the layout shows the design.
#![forbid(unsafe_code)]

pub use parallaxfs_squash as squash;
