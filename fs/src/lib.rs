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
mod io_mode;
mod listing;
pub mod node_table;
mod page_store;
pub mod prefetch;
mod write_ops;

use std::io;
use std::path::Path;

pub use adapter::OverlayFs;
pub use fuser::{Session, SessionUnmounter};
pub use parallaxfs_overlay as overlay;
pub use prefetch::Mode as PrefetchMode;

/// An empty concurrent map sharded for this machine's cores (`DashMap::new` asks
/// `available_parallelism`, which reads cgroup files, on every mount).
pub(crate) fn new_map<K: Eq + std::hash::Hash, V>() -> dashmap::DashMap<K, V> {
    dashmap::DashMap::with_shard_amount(parallaxfs_overlay::squash::map_shards())
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Mount read-only (`MS_RDONLY`).
    pub read_only: bool,
    /// Let every user in (and processes of child user namespaces); needed by containers.
    pub allow_other: bool,
    /// Let the kernel check permissions from the mode bits.
    pub default_permissions: bool,
    /// Request-serving threads (each with its own cloned /dev/fuse fd); default: one per
    /// core, at least 4 (`threads=N` sets it).
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
            // At least 4: a thread waiting on the image's storage (a cold block, a network
            // filesystem) serves nothing meanwhile; with one per core, 2 cores kept only 2
            // reads in flight where the kernel's squashfs has one per reader (cold 4 KiB
            // random reads, 4 readers: 0.92x -> 1.18x the kernel's IOPS).
            threads: parallaxfs_overlay::squash::cores().max(4),
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
    let notifier_slot = fs.notifier_slot();
    let session = Session::new(fs, mountpoint, &config)?;
    let _ = notifier_slot.set(session.notifier());
    raise_readahead(mountpoint);
    Ok(session)
}

/// Lets the kernel read ahead 4 MiB (FUSE negotiates 128 KiB): sequential reads then keep
/// several requests in flight, decompressed on every core. Needs root; ignored otherwise.
fn raise_readahead(mountpoint: &Path) {
    let Some(dev) = mount_device(mountpoint) else { return };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, "4096") {
        tracing::debug!(knob, error = %e, "could not raise readahead");
    }
}

/// `major:minor` of the new mount at `mountpoint`. `AT_STATX_DONT_SYNC` has FUSE answer from
/// the attributes it holds (`st_dev` is the superblock's) instead of asking the session, which
/// is not serving yet and would never answer. (It was read from /proc/self/mountinfo, whose
/// size grows with every mount on the host: 2.3 ms a read with 2,000 mounts.)
fn mount_device(mountpoint: &Path) -> Option<String> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let st = statx(CWD, mountpoint, AtFlags::STATX_DONT_SYNC, StatxFlags::BASIC_STATS).ok()?;
    Some(format!("{}:{}", st.stx_dev_major, st.stx_dev_minor))
}
