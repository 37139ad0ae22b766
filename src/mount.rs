//! Mounting: open every layer, mount, daemonize (`crate::daemon`), serve until unmounted.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use parallaxfs_fs::overlay::idmap::Identity;
use parallaxfs_fs::overlay::{Layer, PlainLayer, SquashLayer, Stack, StackOptions, Upper};
use parallaxfs_fs::{MountOptions, OverlayFs, PrefetchMode};
use parallaxfs_squash::{Image, OpenOptions};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::options::MountRequest;

/// How long the parent waits for the child to report the mount live (Podman holds the layer
/// store lock meanwhile, so an unreachable image must fail instead of hanging).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The SquashFS side-car of a c/storage layer directory, in the parallax store layout
/// (mount_program.md §2.3): `OVL/l/LINK.squash` for a lowerdir spelled `OVL/l/LINK` or
/// `OVL/ID/diff` (LINK read from `OVL/ID/link`). Decided on the spelling, without resolving
/// the lowerdir's own symlink.
pub fn side_car(lower: &Path) -> Option<std::path::PathBuf> {
    let parent = lower.parent()?;
    let (ovl, link) = if parent.file_name()? == "l" {
        (parent.parent()?.to_path_buf(), lower.file_name()?.to_os_string())
    } else if lower.file_name()? == "diff" {
        let id = parent.file_name()?;
        let ovl = parent.parent()?.to_path_buf();
        let link = std::fs::read_to_string(ovl.join(id).join("link")).ok()?;
        (ovl, std::ffi::OsString::from(link.trim()))
    } else {
        return None;
    };
    if link.is_empty() {
        return None;
    }
    let mut name = link;
    name.push(".squash");
    let candidate = ovl.join("l").join(name);
    std::fs::metadata(&candidate).ok().filter(|m| m.is_file()).map(|_| candidate)
}

fn open_layer(path: &Path, index: usize, req: &MountRequest) -> Result<Box<dyn Layer>> {
    let meta = std::fs::metadata(path).with_context(|| format!("lowerdir {}", path.display()))?;
    let image_path = if meta.is_dir() { side_car(path) } else { Some(path.to_path_buf()) };
    let Some(image_path) = image_path else {
        return Ok(Box::new(PlainLayer::open(path).map_err(|e| anyhow!("lowerdir {e}"))?));
    };
    let path = image_path.as_path();
    let file = File::open(path).with_context(|| format!("lowerdir {}", path.display()))?;
    let opts = OpenOptions { io: req.squash_io, ..OpenOptions::default() };
    let image = Image::open_with(file, &opts).with_context(|| format!("lowerdir {}", path.display()))?;
    Ok(Box::new(SquashLayer::new(image, index)))
}

/// Opens every layer of the request into a stack.
pub fn build_stack(req: &MountRequest) -> Result<Stack> {
    let layers = req.lowers.iter().enumerate().map(|(i, p)| open_layer(p, i, req)).collect::<Result<Vec<_>>>()?;
    let stack = Stack::with_options(layers, stack_options(req))?;
    let (Some(upper), Some(work)) = (&req.upper, &req.work) else { return Ok(stack) };
    let up = Upper::open(upper, work, req.volatile).map_err(|e| match e {
        parallaxfs_fs::overlay::Error::BadLayer { path, reason } if path == upper.display().to_string() => {
            anyhow!("upperdir {path}: {reason}")
        }
        parallaxfs_fs::overlay::Error::BadLayer { path, reason } => anyhow!("workdir {path}: {reason}"),
        e => anyhow!("upperdir {}: {e}", upper.display()),
    })?;
    check_writable(upper)?;
    Ok(stack.with_upper(up))
}

/// Refuses an upper directory the daemon cannot write (read-only fs, no permission) at mount
/// time, rather than failing the first write inside a container.
fn check_writable(upper: &Path) -> Result<()> {
    if let Err(e) = nix::unistd::access(upper, nix::unistd::AccessFlags::W_OK) {
        bail!("upperdir {}: not writable: {}", upper.display(), e.desc());
    }
    let st = nix::sys::statvfs::statvfs(upper).with_context(|| format!("upperdir {}", upper.display()))?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        bail!("upperdir {}: read-only file system", upper.display());
    }
    Ok(())
}

fn overflow_id(knob: &str) -> u32 {
    std::fs::read_to_string(knob).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(65534)
}

fn stack_options(req: &MountRequest) -> StackOptions {
    let identity = Identity {
        uids: req.uid_map.clone(),
        gids: req.gid_map.clone(),
        // squash_to_uid wins over squash_to_root, as in fuse-overlayfs.
        squash_uid: req.squash_uid.or(req.squash_root.then_some(0)),
        squash_gid: req.squash_gid.or(req.squash_root.then_some(0)),
        override_stat: req.override_stat,
        overflow_uid: overflow_id("/proc/sys/kernel/overflowuid"),
        overflow_gid: overflow_id("/proc/sys/kernel/overflowgid"),
    };
    StackOptions { identity, no_xattrs: req.no_xattrs }
}

fn check_mountpoint(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("mountpoint {}", path.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {}: not a directory", path.display());
    }
    if let Some(parent) = path.parent() {
        let parent_meta = std::fs::metadata(parent).with_context(|| format!("mountpoint {}", parent.display()))?;
        if parent_meta.dev() != meta.dev() {
            bail!("mountpoint {}: already a mount point; unmount it first", path.display());
        }
    }
    Ok(())
}

fn mount_options(req: &MountRequest) -> MountOptions {
    let mut opts = MountOptions { read_only: req.upper.is_none(), ..MountOptions::default() };
    if let Some(threads) = req.threads {
        opts.threads = threads;
    }
    let root = nix::unistd::geteuid().is_root();
    opts.allow_other = root || req.fuse_words.iter().any(|w| w == "allow_other");
    opts.extra = req.fuse_words.iter().filter(|w| *w != "allow_other").cloned().collect();
    if root && !opts.extra.iter().any(|w| w == "nosuid") {
        opts.extra.push("suid".into());
    }
    if !opts.extra.iter().any(|w| w == "atime") {
        opts.extra.push("noatime".into());
    }
    opts.fs_name = req.lowers.first().map_or("parallaxfs".into(), |p| p.display().to_string());
    opts
}

/// Mounts, reports readiness (a daemon: to the command that forked it), serves until the
/// mount goes away.
fn serve(req: &MountRequest, ready: Option<crate::daemon::Ready>) -> Result<()> {
    check_mountpoint(&req.mountpoint)?;
    raise_fd_limit();
    let stack = build_stack(req)?;
    let mut fs = OverlayFs::new(stack).map_err(|e| anyhow!("{e}"))?;
    // When the session ends the mount is already gone (a signal, umount, fusermount3 -u):
    // exit before fuser unmounts the mountpoint *path* once more, which would take down a
    // newer mount at the same place (a container restarted on the same merged dir).
    fs.on_destroy(|| std::process::exit(0));
    if let Some(ttl) = req.timeout {
        fs.set_ttl(ttl);
    }
    let (mode, threads) = match req.prefetch {
        Some(n) => (PrefetchMode::OnListing, n),
        None => (PrefetchMode::OnFirstRead, parallaxfs_fs::prefetch::DEFAULT_THREADS),
    };
    fs.enable_prefetch(mode, threads).context("starting the prefetch threads")?;
    // Caught from before the mount on: a SIGTERM arriving while the mount is made (a parent
    // that dies, with PDEATHSIG, as parallax-store's flattening mounts have) is then served
    // by unmounting, not by the default action, which left a dead mount behind.
    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let mut session = parallaxfs_fs::mount(fs, &req.mountpoint, &mount_options(req))
        .with_context(|| format!("mounting {}", req.mountpoint.display()))?;
    spawn_signal_handler(signals, req.mountpoint.clone(), session.unmount_callable())?;
    if let Some(ready) = ready {
        let _ = nix::unistd::setsid();
        let _ = std::env::set_current_dir("/");
        // Detached first: once the parent has "ready" it exits, and whoever ran it may
        // look at this process at once (its fds are then /dev/null, none the caller's).
        detach_stdio()?;
        ready.send()?;
    }
    session.run().context("serving the mount")?;
    Ok(())
}

/// Every upper file the kernel knows holds an `O_PATH` fd until the kernel forgets it: allow
/// as many as the system does (`fs.nr_open`; root may raise the hard limit), else the hard
/// limit. A low limit would make creating many files in a container fail with EMFILE.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let nr_open: u64 =
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(hard);
    if nr_open > hard && setrlimit(Resource::RLIMIT_NOFILE, nr_open, nr_open).is_ok() {
        return;
    }
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Unmount lazily on SIGTERM, SIGINT or SIGHUP; the session then ends (once the last open
/// file of the detached mount is closed) and we exit 0. Lazily, as libfuse does: a plain
/// unmount of a busy mount fails, and the process would then serve on with nothing left to
/// end it.
fn spawn_signal_handler(
    mut signals: signal_hook::iterator::Signals,
    mountpoint: std::path::PathBuf,
    mut unmounter: parallaxfs_fs::SessionUnmounter,
) -> Result<()> {
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if signals.forever().next().is_some() {
            if let Err(e) = lazy_unmount(&mountpoint) {
                tracing::warn!(error = %e, "lazy unmount on signal failed; trying a plain one");
                if let Err(e) = unmounter.unmount() {
                    tracing::warn!(error = %e, "unmount on signal failed");
                }
            }
        }
    })?;
    Ok(())
}

/// Detaches the mount now; the kernel ends the FUSE session when its last user is gone.
fn lazy_unmount(mountpoint: &Path) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)?;
        return Ok(());
    }
    let status = Command::new("fusermount3")
        .args(["-u", "-z", "-q", "--"])
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("fusermount3 -u -z {}: {status}", mountpoint.display());
    }
    Ok(())
}

fn detach_stdio() -> Result<()> {
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

/// `parallaxfs ... MOUNTPOINT`: in the foreground with `-f`, else in a forked daemon.
pub fn run(req: MountRequest) -> Result<ExitCode> {
    for w in &req.unknown {
        eprintln!("parallaxfs: unknown argument ignored: {w}");
    }
    if req.foreground {
        serve(&req, None)?;
        return Ok(ExitCode::SUCCESS);
    }
    match crate::daemon::fork(START_TIMEOUT)? {
        crate::daemon::Role::Parent(code) => Ok(code),
        crate::daemon::Role::Child(ready) => {
            serve(&req, Some(ready))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `parallaxfs umount MOUNTPOINT`: ends the mount; its daemon then exits 0.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<ExitCode> {
    if nix::unistd::geteuid().is_root() {
        let flags = if lazy { nix::mount::MntFlags::MNT_DETACH } else { nix::mount::MntFlags::empty() };
        nix::mount::umount2(mountpoint, flags).with_context(|| format!("unmounting {}", mountpoint.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let status = cmd.arg(mountpoint).status().context("running fusermount3")?;
    if !status.success() {
        bail!("unmounting {}: fusermount3 failed ({status})", mountpoint.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::side_car;
    use std::os::unix::fs::symlink;

    #[test]
    fn side_car_found_for_both_lowerdir_spellings() {
        let store = tempfile::tempdir().unwrap();
        let ovl = store.path().join("overlay");
        std::fs::create_dir_all(ovl.join("ID1/diff")).unwrap();
        std::fs::create_dir_all(ovl.join("ID2/diff")).unwrap();
        std::fs::create_dir_all(ovl.join("l")).unwrap();
        std::fs::create_dir_all(store.path().join("squash")).unwrap();
        std::fs::write(ovl.join("ID1/link"), "LINKONE\n").unwrap();
        std::fs::write(ovl.join("ID2/link"), "LINKTWO").unwrap();
        symlink("../ID1/diff", ovl.join("l/LINKONE")).unwrap();
        std::fs::write(store.path().join("squash/LINKONE.squash"), b"image").unwrap();
        symlink("../../squash/LINKONE.squash", ovl.join("l/LINKONE.squash")).unwrap();
        let want = Some(ovl.join("l/LINKONE.squash"));
        assert_eq!(side_car(&ovl.join("l/LINKONE")), want);
        assert_eq!(side_car(&ovl.join("ID1/diff")), want);
        // No side-car for the other layer, for `empty`, or for a plain directory.
        assert_eq!(side_car(&ovl.join("ID2/diff")), None);
        assert_eq!(side_car(&ovl.join("ID1/empty")), None);
        assert_eq!(side_car(store.path()), None);
        // A dangling side-car link is not an image.
        symlink("../../squash/LINKTWO.squash", ovl.join("l/LINKTWO.squash")).unwrap();
        assert_eq!(side_car(&ovl.join("ID2/diff")), None);
    }
}
