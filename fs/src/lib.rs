//! The FUSE adapter of parallaxfs: the only crate that speaks FUSE (through `fuser`).
//!
//! Owns: the FUSE node-id table ([`node_table`]), file and directory handles, readdirplus,
//! entry/attr timeouts and `keep_cache` for lower objects that never change, mount options,
//! and the one function that maps errors to errno ([`errno::errno`]).
//!
//! Calls `parallaxfs-overlay` for every decision about the union; holds no union logic itself.
//! Start at [`mount`].
#![forbid(unsafe_code)]

mod adapter;
mod attr;
pub mod errno;
mod handles;
pub mod node_table;

use std::io;
use std::path::Path;

pub use adapter::OverlayFs;
pub use fuser::{Session, SessionUnmounter};
pub use parallaxfs_overlay as overlay;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Mount read-only (`MS_RDONLY`).
    pub read_only: bool,
    /// Let every user in (and processes of child user namespaces); needed by containers.
    pub allow_other: bool,
    /// Let the kernel check permissions from the mode bits.
    pub default_permissions: bool,
    /// Request-serving threads (each with its own cloned /dev/fuse fd).
    pub threads: usize,
    /// Source name shown in /proc/mounts.
    pub fs_name: String,
    /// Further FUSE mount words (`suid`, `nodev`, `noexec`, `noatime`...).
    pub extra: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: true,
            allow_other: false,
            default_permissions: true,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            fs_name: "parallaxfs".into(),
            extra: Vec::new(),
        }
    }
}

fn option(word: &str) -> fuser::MountOption {
    use fuser::MountOption as M;
    match word {
        "ro" => M::RO,
        "rw" => M::RW,
        "dev" => M::Dev,
        "nodev" => M::NoDev,
        "suid" => M::Suid,
        "nosuid" => M::NoSuid,
        "exec" => M::Exec,
        "noexec" => M::NoExec,
        "atime" => M::Atime,
        "noatime" => M::NoAtime,
        "default_permissions" => M::DefaultPermissions,
        other => M::CUSTOM(other.to_string()),
    }
}

/// Mounts `fs` at `mountpoint`. When this returns the mount is live (the FUSE handshake is
/// done); call `run()` on the session to serve it. Dropping the session unmounts.
pub fn mount(fs: OverlayFs, mountpoint: &Path, opts: &MountOptions) -> io::Result<Session<OverlayFs>> {
    let mut config = fuser::Config::default();
    let mut words =
        vec![fuser::MountOption::FSName(opts.fs_name.clone()), fuser::MountOption::Subtype("parallaxfs".into())];
    words.push(if opts.read_only { fuser::MountOption::RO } else { fuser::MountOption::RW });
    if opts.default_permissions {
        words.push(fuser::MountOption::DefaultPermissions);
    }
    for w in &opts.extra {
        let o = option(w);
        if !words.contains(&o) && !matches!(o, fuser::MountOption::RO | fuser::MountOption::RW) {
            words.push(o);
        }
    }
    config.mount_options = words;
    config.acl = if opts.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    Session::new(fs, mountpoint, &config)
}
