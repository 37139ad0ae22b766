//! Flattening: the image's layer directories are mounted read-only as one union by the
//! `parallaxfs` binary (whiteouts and opaque directories of every on-disk format applied,
//! owners, modes, hard links and devices kept), and `mksquashfs` packs the mount into the
//! side-car. No Podman mount is needed.
//!
//! Both children are started under `setpriv --pdeathsig` when util-linux's `setpriv` is on
//! PATH, so a `kill -9` of this tool also ends them: the mount goes away and nothing keeps
//! writing into the staging directory.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;

/// parallax's mksquashfs flags (`cmd/migration.go`), used unless `--mksquashfs-opts` is given.
pub const DEFAULT_MKSQUASHFS_OPTS: &[&str] =
    &["-noappend", "-comp", "zstd", "-Xcompression-level", "1", "-noD", "-no-xattrs", "-e", "security.capability"];

/// mksquashfs's cache memory with the default flags: by default it may take a quarter of RAM
/// (661 MiB for a 1 GiB image here); 256 MiB makes the same image as fast (benches/README.md).
/// Added to parallax's flags only; `--mksquashfs-opts` is used as given.
pub const MKSQUASHFS_MEM: &[&str] = &["-mem", "256M"];

/// Threads of the union mount reading small files ahead of mksquashfs (`prefetch=N`): its
/// reader takes one file at a time, so without them every small file costs one FUSE round trip
/// and, cold, one storage latency in turn (8 took a cold 30,000-file pack from 5.0 s to 2.1 s).
const PREFETCH_THREADS: usize = 8;

/// How long a mount may take to come up.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often children are polled.
const POLL: Duration = Duration::from_millis(20);

/// The `parallaxfs` binary: `$PARALLAXFS_BIN`, else next to this executable, else on PATH.
pub fn find_parallaxfs() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PARALLAXFS_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        let candidate = dir.join("parallaxfs");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    crate::cli::find_on_path("parallaxfs").ok_or_else(|| {
        Error::Mount("parallaxfs binary not found next to parallax-store, on PATH, or in $PARALLAXFS_BIN".into())
    })
}

/// A command run under `setpriv --pdeathsig SIG` when available.
fn dying_with_us(program: &Path, signal: &str) -> Command {
    match crate::cli::find_on_path("setpriv") {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.arg(format!("--pdeathsig={signal}")).arg("--").arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Collects a child's stdout and stderr into one buffer, in arrival order per stream.
fn capture(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let streams: Vec<Box<dyn Read + Send>> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for mut stream in streams {
        let buf = Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = buf.lock() {
                    b.extend_from_slice(&chunk[..n]);
                }
            }
        });
    }
    buf
}

fn captured(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    let text = buf.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    text.trim_end().to_string()
}

/// Escapes a path for fuse-overlayfs-style `lowerdir=` (`\`, `:` and `,` are special).
fn escape_lower(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn is_mounted(mountpoint: &Path) -> bool {
    let (Ok(mp), Some(Ok(parent))) = (fs::metadata(mountpoint), mountpoint.parent().map(fs::metadata)) else {
        return false;
    };
    mp.dev() != parent.dev()
}

/// A live read-only union mount; unmounted on drop.
#[derive(Debug)]
pub struct UnionMount {
    parallaxfs: PathBuf,
    /// Where the union is mounted.
    pub mountpoint: PathBuf,
    child: Option<Child>,
}

impl UnionMount {
    /// Mounts `lowers` (topmost first) at `mountpoint` (an empty directory) and returns once
    /// the mount is live.
    pub fn mount(parallaxfs: &Path, lowers: &[PathBuf], mountpoint: &Path) -> Result<UnionMount> {
        let lowerdir: Vec<String> = lowers.iter().map(|p| escape_lower(p)).collect();
        let mut cmd = dying_with_us(parallaxfs, "TERM");
        let opts = format!("lowerdir={},prefetch={PREFETCH_THREADS}", lowerdir.join(":"));
        cmd.arg("-f").arg("-o").arg(opts).arg(mountpoint);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Error::Mount(format!("starting {}: {e}", parallaxfs.display())))?;
        let output = capture(&mut child);
        let mut mount =
            UnionMount { parallaxfs: parallaxfs.to_path_buf(), mountpoint: mountpoint.to_path_buf(), child: None };
        let start = Instant::now();
        loop {
            if is_mounted(mountpoint) {
                mount.child = Some(child);
                return Ok(mount);
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(POLL);
                return Err(Error::Mount(format!("parallaxfs exited ({status}): {}", captured(&output))));
            }
            if start.elapsed() > MOUNT_TIMEOUT || crate::signals::pending().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                crate::signals::check()?;
                return Err(Error::Mount(format!(
                    "not live after {} s: {}",
                    MOUNT_TIMEOUT.as_secs(),
                    captured(&output)
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Unmounts and waits for the serving process to exit.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let status = unmount_path(&self.parallaxfs, &self.mountpoint, false);
        if status.is_err() {
            let _ = unmount_path(&self.parallaxfs, &self.mountpoint, true);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return status;
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
        status
    }
}

impl Drop for UnionMount {
    fn drop(&mut self) {
        let _ = self.unmount_inner();
    }
}

/// `parallaxfs umount [-l] MOUNTPOINT`.
pub fn unmount_path(parallaxfs: &Path, mountpoint: &Path, lazy: bool) -> Result<()> {
    let mut cmd = Command::new(parallaxfs);
    cmd.arg("umount");
    if lazy {
        cmd.arg("--lazy");
    }
    let out = cmd.arg(mountpoint).stdin(Stdio::null()).output().ctx("run", parallaxfs)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Mount(format!(
            "unmounting {}: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        )))
    }
}

/// Whether `path` is a mount point according to /proc/self/mountinfo.
pub fn listed_as_mount(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.to_string_lossy().replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011");
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Runs mksquashfs `source` → `dest` with `opts` (parallax's defaults and a memory bound when
/// `None`), showing
/// progress when `progress` is enabled; `Err` carries mksquashfs's status and output.
pub fn mksquashfs(
    bin: &Path,
    opts: Option<&[String]>,
    source: &Path,
    dest: &Path,
    progress: &mut Progress,
) -> Result<()> {
    let mut cmd = dying_with_us(bin, "KILL");
    cmd.arg(source).arg(dest);
    match opts {
        Some(words) => cmd.args(words),
        // Before parallax's flags: their last, `-e`, takes every word after it as a name to
        // exclude.
        None => cmd.args(MKSQUASHFS_MEM).args(DEFAULT_MKSQUASHFS_OPTS),
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Mksquashfs { status: format!("starting {}: {e}", bin.display()), output: String::new() })?;
    let output = capture(&mut child);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                std::thread::sleep(POLL);
                if status.success() {
                    return Ok(());
                }
                let status = match status.code() {
                    Some(code) => format!("exit status {code}"),
                    None => format!("{status}"),
                };
                return Err(Error::Mksquashfs { status, output: captured(&output) });
            }
            Ok(None) => {}
            Err(e) => return Err(Error::io("wait for", bin, e)),
        }
        if crate::signals::pending().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            crate::signals::check()?;
        }
        progress.set_bytes(fs::metadata(dest).map_or(0, |m| m.len()));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Files and bytes under `root` (for the progress bar's total); never fails, counts what it can.
pub fn measure(root: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            files += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_escaping() {
        assert_eq!(escape_lower(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
        assert_eq!(escape_lower(Path::new("/var/lib/x/diff")), "/var/lib/x/diff");
    }

    #[test]
    fn mksquashfs_failure_carries_status_and_output() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("mksquashfs");
        fs::write(&fake, "#!/bin/sh\necho \"args: $*\"; echo boom >&2; exit 3\n").unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let mut progress = Progress::disabled();
        let err = mksquashfs(&fake, None, Path::new("/src"), Path::new("/dst"), &mut progress).unwrap_err();
        match err {
            Error::Mksquashfs { status, output } => {
                assert_eq!(status, "exit status 3");
                assert!(output.contains("args: /src /dst -mem 256M -noappend -comp zstd -Xcompression-level 1 -noD -no-xattrs -e security.capability"), "{output}");
                assert!(output.contains("boom"), "{output}");
            }
            other => panic!("{other:?}"),
        }
        let missing =
            mksquashfs(&dir.path().join("nope"), None, Path::new("/s"), Path::new("/d"), &mut progress).unwrap_err();
        assert!(matches!(missing, Error::Mksquashfs { .. }), "{missing:?}");
    }
}
