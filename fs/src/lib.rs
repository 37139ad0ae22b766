//! The FUSE adapter of parallaxfs: the only crate that speaks FUSE (through `fuser`).
//!
//! Owns: the FUSE node-id table (node ids are handles, distinct from the `st_ino` users see),
//! file and directory handles, readdirplus, entry/attr timeouts and `keep_cache` for lower
//! objects that never change, passthrough for files on a real filesystem, and the one function
//! that maps errors to errno.
//!
//! Calls `parallaxfs-overlay` for every decision about the union; holds no union logic itself.
//!
//! Status: the `fuser::Filesystem` implementation arrives with the read-only union mount
//! (issue 5); this crate exists from the first commit so the layout shows the design.
#![forbid(unsafe_code)]

pub use parallaxfs_overlay as overlay;
