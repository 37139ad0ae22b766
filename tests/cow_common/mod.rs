//! Helpers shared by the copy-on-write stress tests (`cow_crash.rs`, `cow_concurrency.rs`):
//! a scratch directory, parallaxfs daemons run in the foreground (so the test is their parent:
//! it can SIGKILL and reap them, and no orphan is left for a PID 1 that may not reap), kernel
//! overlay mounts, a guard that unmounts everything and
//! kills every daemon it started also when a test panics, and tree walks that describe what a
//! mount shows (type, mode, size, content hash, link target, user xattrs).
#![allow(dead_code, reason = "each test file uses its own subset")]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Runs `cmd`, panicking with its stderr when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A fresh scratch directory under /var/tmp (large files: not on a tmpfs), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (FUSE, loop and overlay mounts)");
        let dir = PathBuf::from("/var/tmp").join(format!("pfs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// `name` inside the scratch dir, created as a directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Never delete through a mount that is still there (the guard, declared after the
        // scratch dir, is dropped first; if it could not unmount, leave the files).
        let prefix = self.0.as_os_str().as_bytes();
        let info = fs::read("/proc/self/mountinfo").unwrap_or_default();
        let busy =
            info.split(|&b| b == b'\n').any(|l| l.split(|&b| b == b' ').nth(4).is_some_and(|p| p.starts_with(prefix)));
        if std::thread::panicking() {
            // Keep the logs and layers of a failed run.
            eprintln!("scratch dir kept: {}", self.0.display());
        } else if !busy {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// True when `mp` is a mountpoint now (from mountinfo: a stat of a dead FUSE mount would fail,
/// one of a live mount not yet served would block).
pub fn is_mounted(mp: &Path) -> bool {
    let want = mp.as_os_str().as_bytes();
    fs::read("/proc/self/mountinfo")
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .any(|l| l.split(|&b| b == b' ').nth(4) == Some(want))
}

/// A parallaxfs daemon in the foreground (`-f`): the test is its parent.
pub struct Daemon {
    pub child: Child,
    pub mountpoint: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Everything a test mounted or started; undone on drop (panic or not), newest first.
#[derive(Default)]
pub struct Guard {
    pub daemons: Vec<Daemon>,
    pub kernel_mounts: Vec<PathBuf>,
}

impl Guard {
    /// Mounts parallaxfs (`-o lowerdir=..,upperdir=..,workdir=..`) at `mp` in the foreground and
    /// returns once the mount is served.
    pub fn mount_pfs(&mut self, lower: &Path, upper: &Path, work: &Path, mp: &Path) -> usize {
        self.mount_pfs_env(lower, upper, work, mp, &[])
    }

    /// [`Guard::mount_pfs`] with extra environment variables for the daemon.
    pub fn mount_pfs_env(&mut self, lower: &Path, upper: &Path, work: &Path, mp: &Path, env: &[(&str, &str)]) -> usize {
        fs::create_dir_all(mp).unwrap();
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        // The log goes to a file beside the mountpoint (a pipe nobody drains could block it).
        let log_path = mp.with_extension("log");
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let child = Command::new(pfs_bin())
            .args(["-f", "-o", &opts])
            .arg(mp)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting parallaxfs");
        let mut daemon = Daemon { child, mountpoint: mp.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(mp) {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let err = fs::read_to_string(&log_path).unwrap_or_default();
                panic!("parallaxfs exited ({status}) before mounting {}: {err}", mp.display());
            }
            assert!(Instant::now() < deadline, "parallaxfs did not mount {} within 30 s", mp.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        // Served once a stat answers (the mount exists before the session loop runs).
        fs::metadata(mp).unwrap();
        self.daemons.push(daemon);
        self.daemons.len() - 1
    }

    /// A kernel overlay with the options the differential test uses (one st_dev, lower-dir
    /// renames by redirect like parallaxfs's subtree copy).
    pub fn mount_kernel(&mut self, lower: &Path, upper: &Path, work: &Path, mp: &Path) {
        fs::create_dir_all(mp).unwrap();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},xino=on,redirect_dir=on,index=off,metacopy=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(mp));
        self.kernel_mounts.push(mp.to_path_buf());
    }

    /// A read-only kernel mount of a SquashFS image (`loop`).
    pub fn mount_squashfs(&mut self, image: &Path, mp: &Path) {
        fs::create_dir_all(mp).unwrap();
        run(Command::new("mount").args(["-t", "squashfs", "-o", "loop,ro"]).arg(image).arg(mp));
        self.kernel_mounts.push(mp.to_path_buf());
    }

    /// Unmounts daemon `i`'s mount (dead or alive) and waits for the daemon to exit.
    pub fn unmount_pfs(&mut self, i: usize) {
        let mp = self.daemons[i].mountpoint.clone();
        unmount(&mp);
        let d = &mut self.daemons[i];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match d.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    d.kill9();
                    panic!("parallaxfs for {} did not exit after unmount", mp.display());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// `fusermount3 -u`, then `umount`, retried while busy; lazily as the last resort.
pub fn unmount(mp: &Path) {
    for _ in 0..100 {
        if !is_mounted(mp) {
            return;
        }
        let quiet = |c: &mut Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        if quiet(Command::new("fusermount3").arg("-u").arg(mp)).is_ok_and(|s| s.success())
            || quiet(Command::new("umount").arg(mp)).is_ok_and(|s| s.success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("umount").arg("-l").arg(mp).status();
    assert!(!is_mounted(mp), "cannot unmount {}", mp.display());
}

impl Drop for Guard {
    fn drop(&mut self) {
        for mp in self.kernel_mounts.iter().rev() {
            if is_mounted(mp) {
                let _ = Command::new("umount").arg("-l").arg(mp).status();
            }
        }
        for d in self.daemons.iter_mut().rev() {
            if is_mounted(&d.mountpoint) {
                // Abort-free: a lazy unmount detaches even a busy or dead mount.
                let _ = Command::new("umount").arg("-l").arg(&d.mountpoint).status();
            }
            if matches!(d.child.try_wait(), Ok(None)) {
                d.kill9();
            }
        }
    }
}

/// What a walk records of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `S_IFMT | permission bits`.
    pub mode: u32,
    /// Size of regular files and symlinks (0 for others).
    pub size: u64,
    /// SHA-256 of a regular file's data, or a symlink's target bytes.
    pub hash: Option<[u8; 32]>,
    /// Link count of non-directories.
    pub nlink: u64,
    /// `user.*` xattrs.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// SHA-256 of bytes.
pub fn hash_bytes(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Every name below `root` (relative, without following symlinks) and what it is.
pub fn walk(root: &Path) -> std::io::Result<BTreeMap<Vec<u8>, Seen>> {
    let mut out = BTreeMap::new();
    walk_into(root, root, &mut out)?;
    Ok(out)
}

fn walk_into(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Seen>) -> std::io::Result<()> {
    let at = |path: &Path, e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    for entry in fs::read_dir(dir).map_err(|e| at(dir, e))? {
        let path = entry.map_err(|e| at(dir, e))?.path();
        let meta = fs::symlink_metadata(&path).map_err(|e| at(&path, e))?;
        let kind = meta.mode() & libc::S_IFMT;
        let (size, hash) = match kind {
            libc::S_IFREG => (meta.size(), Some(hash_file(&path).map_err(|e| at(&path, e))?)),
            libc::S_IFLNK => {
                let target = fs::read_link(&path).map_err(|e| at(&path, e))?;
                (meta.size(), Some(hash_bytes(target.as_os_str().as_bytes())))
            }
            _ => (0, None),
        };
        let mut xattrs = BTreeMap::new();
        if kind != libc::S_IFLNK {
            for name in xattr::list(&path).map_err(|e| at(&path, e))? {
                if name.as_bytes().starts_with(b"user.") {
                    let value = xattr::get(&path, &name).map_err(|e| at(&path, e))?.unwrap_or_default();
                    xattrs.insert(name.as_bytes().to_vec(), value);
                }
            }
        }
        let nlink = if kind == libc::S_IFDIR { 0 } else { meta.nlink() };
        let rel = path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        out.insert(rel, Seen { mode: meta.mode() & (libc::S_IFMT | 0o7777), size, hash, nlink, xattrs });
        if kind == libc::S_IFDIR {
            walk_into(root, &path, out)?;
        }
    }
    Ok(())
}

/// Differences between two walks, one line each (empty when equal).
pub fn diff(a_name: &str, a: &BTreeMap<Vec<u8>, Seen>, b_name: &str, b: &BTreeMap<Vec<u8>, Seen>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!("{} only in {a_name}", String::from_utf8_lossy(k))),
            Some(w) if w != v => d.push(format!("{}: {a_name} {v:?} {b_name} {w:?}", String::from_utf8_lossy(k))),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        d.push(format!("{} only in {b_name}", String::from_utf8_lossy(k)));
    }
    d
}

/// Names in a directory (empty if it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The binary under test: `PARALLAXFS_TEST_BIN` when set (the statically linked build, see
/// scripts/test-all), else the one cargo built.
pub fn pfs_bin() -> std::ffi::OsString {
    std::env::var_os("PARALLAXFS_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_parallaxfs").into())
}
