//! Helpers shared by the read-only union tests (`union_differential.rs`, `union_readonly.rs`,
//! `union_lifecycle.rs`):
//!
//! - environment: [`require_root`] (fails loudly when not root or a tool is missing) and the
//!   scratch directory every mount of a test lives in ([`Scratch`]);
//! - mounts: [`TestMount`], a guard that unmounts on drop (also while unwinding from a panic),
//!   [`KernelUnion`] (loop-mounted images + kernel overlayfs), `/proc/self/mountinfo` and
//!   `/proc/*/cmdline` scans, reaping of daemons (the test process is a child subreaper, so a
//!   daemon that outlives its launcher becomes our child and its exit status can be checked);
//! - layer stacks: a seeded generator of layer trees ([`gen_stack`]), written to disk in the
//!   native overlay encoding, the AUFS/OCI one or a random mix of every encoding parallaxfs
//!   reads ([`Encoding`]), optionally as SquashFS images; and a model of the union
//!   ([`model`]) giving each visible path its layer stack;
//! - observation: a walker of mounted trees ([`walk`]: lstat, readdir `d_ino`, xattrs,
//!   symlink targets, SHA-256 of contents), [`diff_trees`], the parallaxfs-only invariants
//!   ([`pfs_invariants`]) and layer fingerprints ([`fingerprint`]).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, AT_FDCWD};
use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

/// `statfs.f_type` of every FUSE mount.
pub const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// The binary under test: `PARALLAXFS_TEST_BIN` when set (scripts/test-all runs part of the
/// suite again against the statically linked build), else the one cargo built.
pub fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("PARALLAXFS_TEST_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_parallaxfs")), PathBuf::from)
    })
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Fails the test (never skips it) unless it runs as root with every tool it needs; makes the
/// test process a child subreaper so that daemons whose launcher exited are reaped by us.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the union tests need root (loop mounts, kernel overlayfs, mknod of whiteouts, trusted.* xattrs); \
         run them as root, e.g. `sudo -E cargo test --release --test union_differential`"
    );
    for tool in ["mksquashfs", "fusermount3", "mount", "umount", "find", "sort", "xargs", "sha256sum", "getfattr"] {
        assert!(in_path(tool), "`{tool}` is not in PATH: install squashfs-tools, fuse3, attr and coreutils");
    }
    static SUBREAPER: Once = Once::new();
    SUBREAPER.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("prctl(PR_SET_CHILD_SUBREAPER)");
    });
}

/// `echo 2 > /proc/sys/vm/drop_caches`: the next walk looks every name up again in the daemon.
pub fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").expect("writing /proc/sys/vm/drop_caches");
}

/// A private temporary directory; every mount of a test lives below it. On drop, anything
/// still mounted below it is lazily unmounted before the directory is removed, so removal
/// never descends into a live mount.
#[derive(Debug)]
pub struct Scratch {
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new scratch directory named after `tag`.
    pub fn new(tag: &str) -> Scratch {
        let dir = tempfile::Builder::new().prefix(&format!("pfs-{tag}-")).tempdir().expect("creating a tempdir");
        let root = dir.path().canonicalize().expect("canonicalizing the tempdir");
        Scratch { root, dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Creates `root/rel` (and parents) and returns it.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut left = mounts_below(&self.root);
        left.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in left {
            let _ = Command::new("umount").arg("-l").arg(&p).stderr(Stdio::null()).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mount table and processes
// ---------------------------------------------------------------------------------------------

fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && field[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((field[i + 1] - b'0') * 64 + (field[i + 2] - b'0') * 8 + (field[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Every mount point of this mount namespace, from `/proc/self/mountinfo`.
pub fn mount_points() -> Vec<PathBuf> {
    let text = fs::read("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    text.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|f| PathBuf::from(OsString::from_vec(unescape_mountinfo(f))))
        .collect()
}

/// How many mounts sit exactly at `path`.
pub fn mount_count(path: &Path) -> usize {
    mount_points().iter().filter(|p| p.as_path() == path).count()
}

/// True when something is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    mount_count(path) > 0
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    mount_points().into_iter().filter(|p| p.starts_with(dir)).collect()
}

/// A process seen in `/proc`.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// One-letter state from `/proc/PID/status` (`Z` = zombie).
    pub state: char,
    /// `argv`.
    pub args: Vec<Vec<u8>>,
}

fn proc_status(pid: i32) -> Option<(char, i32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut state = '?';
    let mut ppid = 0;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("State:") {
            state = v.trim().chars().next().unwrap_or('?');
        } else if let Some(v) = line.strip_prefix("PPid:") {
            ppid = v.trim().parse().unwrap_or(0);
        }
    }
    Some((state, ppid))
}

/// Live (non-zombie) processes, other than this one, with an argument equal to `arg`.
pub fn processes_with_arg(arg: &Path) -> Vec<Proc> {
    let me = std::process::id() as i32;
    let want = arg.as_os_str().as_bytes();
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<Vec<u8>> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(<[u8]>::to_vec).collect();
        if !args.iter().any(|a| a == want) {
            continue;
        }
        let Some((state, ppid)) = proc_status(pid) else { continue };
        if state == 'Z' || state == 'X' {
            continue;
        }
        out.push(Proc { pid, ppid, state, args });
    }
    out
}

/// Live `parallaxfs` processes serving (or about to serve) `mountpoint`.
pub fn daemons_of(mountpoint: &Path) -> Vec<Proc> {
    processes_with_arg(mountpoint)
        .into_iter()
        .filter(|p| p.args.first().is_some_and(|a0| Path::new(OsStr::from_bytes(a0)).ends_with("parallaxfs")))
        .collect()
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Gone, but not our child, so its status is unknown.
    Unknown,
}

/// Waits until `pid` is gone (reaping it when it is our child); `None` on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> Option<Exit> {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Some(Exit::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Some(Exit::Signal(sig as i32)),
            Ok(_) => {}
            Err(Errno::ECHILD) => match proc_status(pid) {
                None => return Some(Exit::Unknown),
                Some((s, _)) if s == 'Z' || s == 'X' => return Some(Exit::Unknown),
                Some(_) => {}
            },
            Err(e) => panic!("waitpid({pid}): {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Refuses mount points outside the system temporary directory (tests never mount on /mnt or
/// anywhere else that is not their own).
pub fn check_test_path(path: &Path) {
    let tmp = std::env::temp_dir().canonicalize().expect("temp dir");
    assert!(
        path.is_absolute() && path.starts_with(&tmp) && path != tmp,
        "refusing to mount at {}: test mounts live in the test's own tempdir",
        path.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Mount guards
// ---------------------------------------------------------------------------------------------

/// How to unmount a parallaxfs mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmount {
    /// `fusermount3 -u M`.
    Fusermount,
    /// `parallaxfs umount M`.
    Parallaxfs,
    /// `umount M`.
    Umount,
}

/// Runs an unmount command; on "busy" retries for up to 10 s. Another thread of the test
/// process may be spawning a child (mksquashfs, mount) right then: until it execs, the child
/// holds copies of every fd of the process, including ones a walker thread had open in the
/// mount, and the kernel refuses the unmount with EBUSY.
fn run_unmount(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cmd.output()?;
        let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
        if out.status.success() || !busy || Instant::now() >= deadline {
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mount made by a test. Dropping it unmounts (`fusermount3 -u`, or `umount` for kernel
/// mounts, then `umount -l` as a fallback) and reaps the daemon, also during a panic.
#[derive(Debug)]
pub struct TestMount {
    path: PathBuf,
    fuse: bool,
    daemon: Option<i32>,
    active: bool,
}

/// `lowerdir=A:B:C` for `-o`.
pub fn lowerdir_option(layers: &[PathBuf]) -> OsString {
    let mut s = OsString::from("lowerdir=");
    for (i, l) in layers.iter().enumerate() {
        if i > 0 {
            s.push(":");
        }
        s.push(l);
    }
    s
}

impl TestMount {
    /// `parallaxfs -o lowerdir=L1:...:Ln PATH`.
    pub fn lowerdir(layers: &[PathBuf], path: &Path) -> TestMount {
        TestMount::parallaxfs(&["-o".into(), lowerdir_option(layers), path.into()], path)
    }

    /// `parallaxfs mount --lower L1 ... --lower Ln PATH`.
    pub fn lower_flags(layers: &[PathBuf], path: &Path) -> TestMount {
        let mut args: Vec<OsString> = vec!["mount".into()];
        for l in layers {
            args.push("--lower".into());
            args.push(l.into());
        }
        args.push(path.into());
        TestMount::parallaxfs(&args, path)
    }

    /// Runs `parallaxfs ARGS`, which must mount at `path`: exit 0, nothing on stdout or
    /// stderr, the mount live, exactly one serving process left.
    pub fn parallaxfs(args: &[OsString], path: &Path) -> TestMount {
        check_test_path(path);
        let out = Command::new(bin()).args(args).stdin(Stdio::null()).output().expect("running parallaxfs");
        // Guard first, so that a failed assertion below still unmounts.
        let mut guard = TestMount { path: path.to_path_buf(), fuse: true, daemon: None, active: true };
        assert!(
            out.status.success(),
            "parallaxfs {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty() && out.stdout.is_empty(),
            "parallaxfs {args:?} printed something on success: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(path), "parallaxfs {args:?} exited 0 but nothing is mounted at {}", path.display());
        let daemons = daemons_of(path);
        assert_eq!(daemons.len(), 1, "expected exactly one parallaxfs process serving {}: {daemons:?}", path.display());
        guard.daemon = Some(daemons[0].pid);
        guard
    }

    /// `mount ARGS PATH` (kernel filesystems: loop-mounted squashfs, overlay).
    pub fn kernel(args: &[&OsStr], path: &Path) -> TestMount {
        check_test_path(path);
        let out = Command::new("mount").args(args).arg(path).output().expect("running mount");
        assert!(
            out.status.success(),
            "mount {args:?} {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        TestMount { path: path.to_path_buf(), fuse: false, daemon: None, active: true }
    }

    /// Takes over a FUSE mount made by a command under test.
    pub fn adopt(path: &Path, daemon: Option<i32>) -> TestMount {
        check_test_path(path);
        TestMount { path: path.to_path_buf(), fuse: true, daemon, active: true }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The serving process, for parallaxfs mounts.
    pub fn daemon(&self) -> Option<i32> {
        self.daemon
    }

    /// Unmounts with `fusermount3 -u` (kernel mounts: `umount`) and checks the result.
    pub fn unmount(self) {
        let how = if self.fuse { Unmount::Fusermount } else { Unmount::Umount };
        self.unmount_with(how);
    }

    /// Unmounts as asked and checks: the command succeeds, nothing is left mounted at the
    /// path, and the daemon (if any) exits 0 within 10 s and leaves no process behind.
    pub fn unmount_with(mut self, how: Unmount) {
        let mut cmd = match how {
            Unmount::Fusermount => {
                let mut c = Command::new("fusermount3");
                c.arg("-u");
                c
            }
            Unmount::Parallaxfs => {
                let mut c = Command::new(bin());
                c.arg("umount");
                c
            }
            Unmount::Umount => Command::new("umount"),
        };
        cmd.arg(&self.path);
        let out = run_unmount(&mut cmd).expect("running the unmount command");
        assert!(
            out.status.success(),
            "{how:?} of {} failed ({}): {}",
            self.path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!is_mounted(&self.path), "{how:?} returned 0 but {} is still mounted", self.path.display());
        self.active = false;
        if let Some(pid) = self.daemon.take() {
            // Generous: on a loaded 2-core machine an exit can take a while to be scheduled.
            let end = wait_gone(pid, Duration::from_secs(10));
            assert!(
                matches!(end, Some(Exit::Code(0) | Exit::Unknown)),
                "daemon {pid} of {} after {how:?}: {end:?} (want exit 0 within 10 s)",
                self.path.display()
            );
            let left = daemons_of(&self.path);
            assert!(left.is_empty(), "parallaxfs processes left for {}: {left:?}", self.path.display());
        }
    }

    /// Forgets the mount: the test has unmounted it itself (and checked the daemon).
    pub fn disarm(mut self) {
        self.active = false;
    }

    fn cleanup(&mut self) {
        if is_mounted(&self.path) {
            let mut cmd = if self.fuse {
                let mut c = Command::new("fusermount3");
                c.arg("-u");
                c
            } else {
                Command::new("umount")
            };
            let _ = run_unmount(cmd.arg(&self.path));
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).stderr(Stdio::null()).status();
        }
        if let Some(pid) = self.daemon.take() {
            if wait_gone(pid, Duration::from_secs(3)).is_none() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                let _ = wait_gone(pid, Duration::from_secs(2));
            }
        }
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if self.active {
            self.cleanup();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layer stack specs
// ---------------------------------------------------------------------------------------------

/// Ownership, permissions, time and xattrs of one object.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Permission bits incl. setuid/setgid/sticky.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// mtime (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Extended attributes (user.* and trusted.test.*).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// File contents, generated on demand.
#[derive(Debug, Clone, Copy)]
pub struct Content {
    /// Seed of the bytes.
    pub seed: u64,
    /// Length.
    pub len: usize,
    /// 0 random bytes, 1 text, 2 zeros.
    pub style: u8,
}

impl Content {
    /// The bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match self.style {
            0 => {
                let mut v = vec![0u8; self.len];
                SmallRng::seed_from_u64(self.seed).fill(&mut v[..]);
                v
            }
            1 => {
                let line = format!("line of content seed {} — ünïcode and some padding text\n", self.seed);
                line.bytes().cycle().take(self.len).collect()
            }
            _ => vec![0u8; self.len],
        }
    }
}

/// A directory of one layer.
#[derive(Debug, Clone)]
pub struct DirSpec {
    /// Its attributes.
    pub meta: Meta,
    /// Opaque (hides the same directory of lower layers).
    pub opaque: bool,
    /// Entries.
    pub children: BTreeMap<Vec<u8>, Entry>,
}

/// One entry of a layer directory.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory.
    Dir(DirSpec),
    /// A regular file.
    File(Meta, Content),
    /// A symlink (perm unused).
    Symlink(Meta, Vec<u8>),
    /// A FIFO.
    Fifo(Meta),
    /// A character (`false`) or block (`true`) device.
    Dev(Meta, bool, u64, u64),
    /// A Unix socket node.
    Socket(Meta),
    /// A whiteout of the same name in lower layers.
    Whiteout,
    /// A hard link to the regular file at this layer path.
    HardLink(Vec<u8>),
}

/// One layer: a tree, stored as a directory or as a SquashFS image.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// Stored as a SquashFS image.
    pub image: bool,
    /// The tree.
    pub root: DirSpec,
    /// The empty bottom layer added to single-layer stacks (the kernel wants 2 lowers).
    pub filler: bool,
}

/// A stack of layers, topmost first.
#[derive(Debug, Clone)]
pub struct StackSpec {
    /// Seed it was generated from.
    pub seed: u64,
    /// Layers, topmost first.
    pub layers: Vec<LayerSpec>,
}

/// Shape of generated stacks.
#[derive(Debug, Clone)]
pub struct GenParams {
    /// Deepest directory level below the root.
    pub max_depth: usize,
    /// Most entries per directory (the root gets two more).
    pub max_children: usize,
    /// Probability of a large (multi-block) file.
    pub big_file_prob: f64,
    /// Largest large file.
    pub big_file_max: usize,
    /// Probability that a layer is a SquashFS image.
    pub image_prob: f64,
    /// Probability that an entry named `a`, `b` or `c` is a directory (other names: a quarter
    /// of it); none below `max_depth`.
    pub dir_prob: f64,
    /// Probability that an entry is a whiteout.
    pub whiteout_prob: f64,
    /// Probability that a directory is opaque.
    pub opaque_prob: f64,
    /// Probability that a layer has a directory of the stack's shared skeleton (where it has
    /// no other entry of that name).
    pub skeleton_prob: f64,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_depth: 3,
            max_children: 5,
            big_file_prob: 0.02,
            big_file_max: 300_000,
            image_prob: 0.5,
            dir_prob: 0.8,
            whiteout_prob: 0.1,
            opaque_prob: 0.1,
            skeleton_prob: 0.7,
        }
    }
}

/// Names that lean towards directories.
const DIR_NAMES: [&[u8]; 3] = [b"a", b"b", b"c"];

/// Names drawn in every directory: a few common ones so layers collide, and odd ones.
const CORE_NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn odd_names() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [".hid", "sp ace", "ünïcødé", "x:y,z=w", "...", ".wh", "wh.x", "-dash", "CAPS", "a.wh."]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    v.push(vec![b'L'; 255]);
    v.push(vec![b'M'; 251]);
    v
}

fn pick_name(rng: &mut SmallRng) -> Vec<u8> {
    if rng.gen_bool(0.85) {
        CORE_NAMES.choose(rng).unwrap().as_bytes().to_vec()
    } else {
        odd_names().choose(rng).unwrap().clone()
    }
}

const IDS: [u32; 6] = [0, 0, 1000, 65534, 123_456, 7];
const FILE_PERMS: [u32; 10] = [0o644, 0o600, 0o755, 0o4755, 0o2755, 0o6711, 0o444, 0o000, 0o1644, 0o640];
const DIR_PERMS: [u32; 7] = [0o755, 0o700, 0o775, 0o1777, 0o2755, 0o555, 0o750];
const XATTR_NAMES: [&str; 5] = ["user.a", "user.mime_type", "user.long.name.with.dots", "user.empty", "trusted.test.t"];

fn gen_meta(rng: &mut SmallRng, dir: bool, xattrs: bool) -> Meta {
    let perm = if dir { *DIR_PERMS.choose(rng).unwrap() } else { *FILE_PERMS.choose(rng).unwrap() };
    let mut meta = Meta {
        perm,
        uid: *IDS.choose(rng).unwrap(),
        gid: *IDS.choose(rng).unwrap(),
        mtime: (rng.gen_range(1..2_000_000_000), rng.gen_range(0..1_000_000_000)),
        xattrs: Vec::new(),
    };
    if xattrs && rng.gen_bool(0.35) {
        let n = rng.gen_range(1..=3);
        let mut names: Vec<&str> = XATTR_NAMES.choose_multiple(rng, n).copied().collect();
        names.sort_unstable();
        for name in names {
            let len = if rng.gen_bool(0.05) { 1500 } else { rng.gen_range(0..48) };
            let value: Vec<u8> = if name == "user.empty" {
                Vec::new()
            } else if rng.gen_bool(0.5) {
                (0..len).map(|_| rng.gen()).collect()
            } else {
                (0..len).map(|_| rng.gen_range(b'a'..=b'z')).collect()
            };
            meta.xattrs.push((name.to_string(), value));
        }
    }
    meta
}

/// Contents shared between files (mksquashfs deduplicates them; layers repeat them).
const SHARED_CONTENTS: [Content; 4] = [
    Content { seed: 1, len: 0, style: 0 },
    Content { seed: 2, len: 11, style: 1 },
    Content { seed: 3, len: 5000, style: 0 },
    Content { seed: 4, len: 140_000, style: 1 },
];

fn gen_content(rng: &mut SmallRng, params: &GenParams) -> Content {
    if rng.gen_bool(0.15) {
        return *SHARED_CONTENTS.choose(rng).unwrap();
    }
    let roll = rng.gen_range(0..100);
    let len = if rng.gen_bool(params.big_file_prob) {
        rng.gen_range(131_072..=params.big_file_max.max(131_073))
    } else {
        match roll {
            0..=9 => 0,
            10..=44 => rng.gen_range(1..64),
            45..=74 => rng.gen_range(64..4096),
            75..=91 => rng.gen_range(4096..70_000),
            _ => *[4096, 131_071, 131_072, 131_073].choose(rng).unwrap(),
        }
    };
    Content { seed: rng.gen(), len, style: rng.gen_range(0..3) }
}

fn gen_target(rng: &mut SmallRng) -> Vec<u8> {
    match rng.gen_range(0..6) {
        0 => b"a".to_vec(),
        1 => b"../b/c".to_vec(),
        2 => b"/etc/passwd".to_vec(),
        3 => b"dangling/target with space".to_vec(),
        4 => "l/".repeat(150).into_bytes(),
        _ => format!("t{}", rng.gen::<u16>()).into_bytes(),
    }
}

/// Directory names shared by the layers of one stack, as `usr/lib` is by container layers.
#[derive(Debug, Default)]
struct Skeleton(BTreeMap<Vec<u8>, Skeleton>);

fn gen_skeleton(rng: &mut SmallRng, depth: usize, params: &GenParams) -> Skeleton {
    let mut sk = Skeleton::default();
    if depth >= params.max_depth {
        return sk;
    }
    for _ in 0..rng.gen_range(1..=3) {
        let name = if rng.gen_bool(0.7) { DIR_NAMES.choose(rng).unwrap().to_vec() } else { pick_name(rng) };
        sk.0.entry(name).or_insert_with(|| gen_skeleton(rng, depth + 1, params));
    }
    sk
}

fn gen_dir(rng: &mut SmallRng, depth: usize, params: &GenParams, skeleton: &Skeleton) -> DirSpec {
    let mut dir = DirSpec { meta: gen_meta(rng, true, true), opaque: false, children: BTreeMap::new() };
    let n =
        if depth == 0 { rng.gen_range(2..=params.max_children + 2) } else { rng.gen_range(0..=params.max_children) };
    for _ in 0..n {
        let name = pick_name(rng);
        if dir.children.contains_key(&name) {
            continue;
        }
        // Names "a", "b", "c" lean towards directories in every layer (as usr/ and etc/ do
        // in real images), so that directories merge across many layers.
        let dir_p = match depth < params.max_depth {
            false => 0.0,
            true if DIR_NAMES.contains(&name.as_slice()) => params.dir_prob,
            true => params.dir_prob / 4.0,
        };
        let x: f64 = rng.gen();
        let entry = if x < dir_p {
            let empty = Skeleton::default();
            let mut sub = gen_dir(rng, depth + 1, params, skeleton.0.get(&name).unwrap_or(&empty));
            sub.opaque = rng.gen_bool(params.opaque_prob);
            Entry::Dir(sub)
        } else if x < dir_p + params.whiteout_prob && name.len() <= 251 {
            Entry::Whiteout
        } else {
            match rng.gen_range(0..100) {
                0..=13 => Entry::Symlink(gen_meta(rng, false, false), gen_target(rng)),
                14..=19 => Entry::Fifo(gen_meta(rng, false, true)),
                20..=25 => {
                    let (major, minor) = (rng.gen_range(1..300), rng.gen_range(0..70_000));
                    Entry::Dev(gen_meta(rng, false, true), rng.gen_bool(0.5), major, minor)
                }
                26..=28 => Entry::Socket(gen_meta(rng, false, false)),
                _ => Entry::File(gen_meta(rng, false, true), gen_content(rng, params)),
            }
        };
        dir.children.insert(name, entry);
    }
    // The stack's shared directories, where this layer has nothing else of that name.
    for (name, sub) in &skeleton.0 {
        if !dir.children.contains_key(name) && rng.gen_bool(params.skeleton_prob) {
            let mut d = gen_dir(rng, depth + 1, params, sub);
            d.opaque = rng.gen_bool(params.opaque_prob);
            dir.children.insert(name.clone(), Entry::Dir(d));
        }
    }
    dir
}

fn join(base: &[u8], name: &[u8]) -> Vec<u8> {
    if base.is_empty() {
        return name.to_vec();
    }
    let mut p = base.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn collect_paths(dir: &DirSpec, base: &[u8], dirs: &mut Vec<Vec<u8>>, files: &mut Vec<Vec<u8>>) {
    dirs.push(base.to_vec());
    for (name, e) in &dir.children {
        match e {
            Entry::Dir(d) => collect_paths(d, &join(base, name), dirs, files),
            Entry::File(..) => files.push(join(base, name)),
            _ => {}
        }
    }
}

fn dir_at_mut<'a>(root: &'a mut DirSpec, path: &[u8]) -> &'a mut DirSpec {
    let mut d = root;
    if path.is_empty() {
        return d;
    }
    for comp in path.split(|b| *b == b'/') {
        d = match d.children.get_mut(comp) {
            Some(Entry::Dir(sub)) => sub,
            _ => unreachable!("not a directory in the spec"),
        };
    }
    d
}

fn add_hard_links(rng: &mut SmallRng, root: &mut DirSpec) {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    collect_paths(root, b"", &mut dirs, &mut files);
    if files.is_empty() {
        return;
    }
    for _ in 0..rng.gen_range(0..=3) {
        let target = files.choose(rng).unwrap().clone();
        let dir = dirs.choose(rng).unwrap().clone();
        let name = pick_name(rng);
        let d = dir_at_mut(root, &dir);
        d.children.entry(name).or_insert(Entry::HardLink(target));
    }
}

/// An empty layer.
pub fn empty_layer(filler: bool) -> LayerSpec {
    let meta = Meta { perm: 0o755, uid: 0, gid: 0, mtime: (1_000_000, 0), xattrs: Vec::new() };
    LayerSpec { image: false, root: DirSpec { meta, opaque: false, children: BTreeMap::new() }, filler }
}

/// A stack of `nlayers` generated layers (plus an empty bottom layer when `nlayers == 1`).
pub fn gen_stack(seed: u64, nlayers: usize, params: &GenParams) -> StackSpec {
    let mut rng = SmallRng::seed_from_u64(seed);
    let skeleton = gen_skeleton(&mut rng, 0, params);
    let mut layers = Vec::new();
    for _ in 0..nlayers {
        let image = rng.gen_bool(params.image_prob);
        let mut root = gen_dir(&mut rng, 0, params, &skeleton);
        add_hard_links(&mut rng, &mut root);
        layers.push(LayerSpec { image, root, filler: false });
    }
    if nlayers == 1 {
        layers.push(empty_layer(true));
    }
    StackSpec { seed, layers }
}

/// Number of entries (whiteouts and links included) in a layer tree.
pub fn spec_entries(dir: &DirSpec) -> usize {
    dir.children.values().map(|e| 1 + if let Entry::Dir(d) = e { spec_entries(d) } else { 0 }).sum()
}

// ---------------------------------------------------------------------------------------------
// Writing layers
// ---------------------------------------------------------------------------------------------

/// How whiteouts and opaque directories are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Kernel form: char device 0/0, `trusted.overlay.opaque=y`.
    Native,
    /// OCI/AUFS form: `.wh.NAME`, `.wh..wh..opq` (plus AUFS meta files that must stay hidden).
    Aufs,
    /// Every form the kernel reads (Linux >= 6.7), mixed: char 0/0 or size-0 files with
    /// `trusted.overlay.whiteout` in `trusted.overlay.opaque=x` dirs; `trusted.overlay.opaque=y`.
    Kernel,
    /// A random mix of every form parallaxfs reads: char 0/0, `.wh.NAME`, xattr whiteouts in
    /// `*.overlay.opaque=x` dirs; opaque by trusted/user overlay xattr, fuse-overlayfs xattr,
    /// `.wh..wh..opq`, or a same-layer `.wh.NAME` next to the dir; plus decoys with no effect
    /// (same-layer `.wh.N` next to a file N, `opaque=x` without whiteouts).
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpaqueForm {
    None,
    TrustedY,
    UserOverlayY,
    FuseOverlayY,
    OpqFile,
    SiblingWhiteout,
}

fn set_owner_perm(p: &Path, meta: &Meta, chmod: bool) {
    std::os::unix::fs::lchown(p, Some(meta.uid), Some(meta.gid)).unwrap_or_else(|e| panic!("lchown {p:?}: {e}"));
    if chmod {
        fs::set_permissions(p, fs::Permissions::from_mode(meta.perm)).unwrap_or_else(|e| panic!("chmod {p:?}: {e}"));
    }
}

fn set_xattrs(p: &Path, meta: &Meta) {
    for (n, v) in &meta.xattrs {
        xattr::set(p, n, v).unwrap_or_else(|e| panic!("setxattr {p:?} {n}: {e}"));
    }
}

/// The xattrs of `meta` that a special file (FIFO, device) can carry: `user.*` is refused by
/// the kernel on anything but regular files and directories (EPERM), `trusted.*` is not.
fn set_special_xattrs(p: &Path, meta: &Meta) {
    for (n, v) in meta.xattrs.iter().filter(|(n, _)| !n.starts_with("user.")) {
        xattr::set(p, n, v).unwrap_or_else(|e| panic!("setxattr {p:?} {n}: {e}"));
    }
}

fn touch_empty(p: &Path) {
    fs::write(p, b"").unwrap_or_else(|e| panic!("creating {p:?}: {e}"));
}

fn wh_path(dir: &Path, name: &[u8]) -> PathBuf {
    let mut n = b".wh.".to_vec();
    n.extend_from_slice(name);
    dir.join(OsStr::from_bytes(&n))
}

fn mknod_at(p: &Path, kind: SFlag, perm: u32, dev: u64) {
    mknod(p, kind, Mode::from_bits_truncate(perm), dev).unwrap_or_else(|e| panic!("mknod {p:?}: {e}"));
}

struct Writer<'a> {
    enc: Encoding,
    rng: &'a mut SmallRng,
    links: Vec<(PathBuf, PathBuf)>,
}

impl Writer<'_> {
    fn opaque_form(&mut self, name: &[u8], spec: &DirSpec) -> OpaqueForm {
        if !spec.opaque {
            return OpaqueForm::None;
        }
        match self.enc {
            Encoding::Native | Encoding::Kernel => OpaqueForm::TrustedY,
            Encoding::Aufs => OpaqueForm::OpqFile,
            Encoding::Mixed => {
                let mut forms =
                    vec![OpaqueForm::TrustedY, OpaqueForm::UserOverlayY, OpaqueForm::FuseOverlayY, OpaqueForm::OpqFile];
                if name.len() <= 251 {
                    forms.push(OpaqueForm::SiblingWhiteout);
                }
                *forms.choose(self.rng).unwrap()
            }
        }
    }

    fn write_dir(&mut self, spec: &DirSpec, path: &Path, form: OpaqueForm, layer_root: &Path) {
        set_owner_perm(path, &spec.meta, true);
        set_xattrs(path, &spec.meta);
        match form {
            OpaqueForm::None | OpaqueForm::SiblingWhiteout => {}
            OpaqueForm::TrustedY => xattr::set(path, "trusted.overlay.opaque", b"y").unwrap(),
            OpaqueForm::UserOverlayY => xattr::set(path, "user.overlay.opaque", b"y").unwrap(),
            OpaqueForm::FuseOverlayY => xattr::set(path, "user.fuseoverlayfs.opaque", b"y").unwrap(),
            OpaqueForm::OpqFile => touch_empty(&path.join(".wh..wh..opq")),
        }
        let mut holds_xattr_whiteouts = false;
        for (name, entry) in &spec.children {
            let p = path.join(OsStr::from_bytes(name));
            match entry {
                Entry::Dir(sub) => {
                    fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {p:?}: {e}"));
                    let form = self.opaque_form(name, sub);
                    if form == OpaqueForm::SiblingWhiteout {
                        touch_empty(&wh_path(path, name));
                    }
                    self.write_dir(sub, &p, form, layer_root);
                }
                Entry::File(meta, content) => {
                    fs::write(&p, content.bytes()).unwrap_or_else(|e| panic!("writing {p:?}: {e}"));
                    set_owner_perm(&p, meta, true);
                    set_xattrs(&p, meta);
                    if self.enc == Encoding::Mixed && name.len() <= 251 && self.rng.gen_bool(0.1) {
                        touch_empty(&wh_path(path, name));
                    }
                }
                Entry::Symlink(meta, target) => {
                    std::os::unix::fs::symlink(OsStr::from_bytes(target), &p)
                        .unwrap_or_else(|e| panic!("symlink {p:?}: {e}"));
                    set_owner_perm(&p, meta, false);
                }
                Entry::Fifo(meta) => {
                    mknod_at(&p, SFlag::S_IFIFO, meta.perm, 0);
                    set_owner_perm(&p, meta, true);
                    set_special_xattrs(&p, meta);
                }
                Entry::Dev(meta, block, major, minor) => {
                    let kind = if *block { SFlag::S_IFBLK } else { SFlag::S_IFCHR };
                    mknod_at(&p, kind, meta.perm, makedev(*major, *minor));
                    set_owner_perm(&p, meta, true);
                    set_special_xattrs(&p, meta);
                }
                Entry::Socket(meta) => {
                    mknod_at(&p, SFlag::S_IFSOCK, meta.perm, 0);
                    set_owner_perm(&p, meta, true);
                }
                Entry::Whiteout => {
                    let choice = match self.enc {
                        Encoding::Native => 0,
                        Encoding::Aufs => 1,
                        Encoding::Mixed if spec.opaque => self.rng.gen_range(0..2),
                        Encoding::Mixed => self.rng.gen_range(0..3),
                        Encoding::Kernel if spec.opaque => 0,
                        Encoding::Kernel => 2 * self.rng.gen_range(0..2),
                    };
                    match choice {
                        0 => mknod_at(&p, SFlag::S_IFCHR, 0, 0),
                        1 => touch_empty(&wh_path(path, name)),
                        _ => {
                            touch_empty(&p);
                            let xname = if self.enc == Encoding::Kernel || self.rng.gen_bool(0.5) {
                                "trusted.overlay.whiteout"
                            } else {
                                "user.overlay.whiteout"
                            };
                            xattr::set(&p, xname, b"").unwrap();
                            holds_xattr_whiteouts = true;
                        }
                    }
                }
                Entry::HardLink(target) => self.links.push((layer_root.join(OsStr::from_bytes(target)), p)),
            }
        }
        if self.enc == Encoding::Mixed && !spec.opaque && (holds_xattr_whiteouts || self.rng.gen_bool(0.1)) {
            let xname = if self.rng.gen_bool(0.5) { "trusted.overlay.opaque" } else { "user.overlay.opaque" };
            xattr::set(path, xname, b"x").unwrap();
        }
        if self.enc == Encoding::Kernel && holds_xattr_whiteouts {
            xattr::set(path, "trusted.overlay.opaque", b"x").unwrap();
        }
    }
}

fn set_time(p: &Path, mtime: (i64, i64)) {
    let atime = TimeSpec::new(1_000_000, 0);
    let mtime = TimeSpec::new(mtime.0, mtime.1);
    utimensat(AT_FDCWD, p, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .unwrap_or_else(|e| panic!("utimensat {p:?}: {e}"));
}

fn set_times(spec: &DirSpec, path: &Path) {
    for (name, entry) in &spec.children {
        let p = path.join(OsStr::from_bytes(name));
        match entry {
            Entry::Dir(sub) => set_times(sub, &p),
            Entry::File(m, _) | Entry::Symlink(m, _) | Entry::Fifo(m) | Entry::Dev(m, ..) | Entry::Socket(m) => {
                set_time(&p, m.mtime)
            }
            Entry::Whiteout | Entry::HardLink(_) => {}
        }
    }
    set_time(path, spec.meta.mtime);
}

/// Writes `layer` into the new directory `dir` in encoding `enc` (random choices from `seed`).
pub fn write_layer(layer: &LayerSpec, dir: &Path, enc: Encoding, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
    let mut w = Writer { enc, rng: &mut rng, links: Vec::new() };
    w.write_dir(&layer.root, dir, OpaqueForm::None, dir);
    for (target, link) in std::mem::take(&mut w.links) {
        fs::hard_link(&target, &link).unwrap_or_else(|e| panic!("link {target:?} {link:?}: {e}"));
    }
    if matches!(enc, Encoding::Aufs | Encoding::Mixed) && w.rng.gen_bool(0.3) {
        // AUFS bookkeeping entries: never visible.
        touch_empty(&dir.join(".wh..wh.aufs"));
        fs::create_dir(dir.join(".wh..wh.plnk")).unwrap();
        touch_empty(&dir.join(".wh..wh.plnk/1234.5678"));
    }
    set_times(&layer.root, dir);
}

/// `mksquashfs DIR IMG -noappend -quiet -xattrs -comp zstd`.
pub fn mksquashfs(dir: &Path, img: &Path) {
    mksquashfs_with(dir, img, &["-comp", "zstd"]);
}

/// Compressor options the layers of built stacks cycle through.
pub const IMAGE_OPTIONS: [&[&str]; 6] = [
    &["-comp", "zstd"],
    &["-comp", "gzip"],
    &["-comp", "xz"],
    &["-comp", "lz4"],
    &["-comp", "lzo"],
    &["-comp", "zstd", "-b", "4096", "-noI"],
];

/// `mksquashfs DIR IMG -noappend -quiet -xattrs OPTIONS`.
pub fn mksquashfs_with(dir: &Path, img: &Path, options: &[&str]) {
    let out = Command::new("mksquashfs")
        .arg(dir)
        .arg(img)
        .args(["-noappend", "-quiet", "-no-progress", "-xattrs"])
        .args(options)
        .stdin(Stdio::null())
        .output()
        .expect("running mksquashfs");
    assert!(out.status.success(), "mksquashfs {dir:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A stack written to disk.
#[derive(Debug, Clone)]
pub struct BuiltStack {
    /// The encoding.
    pub enc: Encoding,
    /// What a union mounts, topmost first: a directory or an image file per layer.
    pub layers: Vec<PathBuf>,
    /// The source directory of each layer.
    pub dirs: Vec<PathBuf>,
    /// Which layers are images.
    pub images: Vec<bool>,
}

/// Writes every layer of `spec` below `base` in encoding `enc`, building the images (with
/// compressors and block sizes cycling through [`IMAGE_OPTIONS`]).
pub fn build_stack(spec: &StackSpec, base: &Path, enc: Encoding) -> BuiltStack {
    let mut built = BuiltStack { enc, layers: Vec::new(), dirs: Vec::new(), images: Vec::new() };
    for (i, layer) in spec.layers.iter().enumerate() {
        let dir = base.join(format!("{enc:?}-L{i:02}"));
        write_layer(layer, &dir, enc, spec.seed.wrapping_mul(1000).wrapping_add(i as u64));
        let stored = if layer.image {
            let img = base.join(format!("{enc:?}-L{i:02}.sqfs"));
            let options = IMAGE_OPTIONS[(spec.seed as usize + i) % IMAGE_OPTIONS.len()];
            mksquashfs_with(&dir, &img, options);
            img
        } else {
            dir.clone()
        };
        built.layers.push(stored);
        built.dirs.push(dir);
        built.images.push(layer.image);
    }
    built
}

/// The kernel's union of a built stack: each image loop-mounted, then a read-only overlay.
/// Fields drop in order: the overlay goes before the image mounts under it.
#[derive(Debug)]
pub struct KernelUnion {
    /// The overlay mount.
    pub overlay: TestMount,
    /// Loop mounts of the images.
    pub images: Vec<TestMount>,
    /// Per layer, a directory showing the layer as the kernel reads it.
    pub views: Vec<PathBuf>,
}

/// Loop-mounts every image layer of `built` read-only below `base` (`base/TAG-loop-Lnn`).
/// Returns the mounts and, per layer, the directory showing the layer as the kernel reads it
/// (the loop mount of an image, the directory itself otherwise).
pub fn loop_mount_images(built: &BuiltStack, base: &Path, tag: &str) -> (Vec<TestMount>, Vec<PathBuf>) {
    let mut mounts = Vec::new();
    let mut views = Vec::new();
    for (i, l) in built.layers.iter().enumerate() {
        if built.images[i] {
            let mp = base.join(format!("{tag}-loop-L{i:02}"));
            fs::create_dir(&mp).unwrap_or_else(|e| panic!("mkdir {mp:?}: {e}"));
            let args: [&OsStr; 5] =
                ["-t".as_ref(), "squashfs".as_ref(), "-o".as_ref(), "loop,ro".as_ref(), l.as_os_str()];
            mounts.push(TestMount::kernel(&args, &mp));
            views.push(mp);
        } else {
            views.push(l.clone());
        }
    }
    (mounts, views)
}

impl KernelUnion {
    /// Mounts `built` below `base` (`base/kernel-loop-Lnn`, `base/kernel`).
    pub fn mount(built: &BuiltStack, base: &Path) -> KernelUnion {
        let (images, views) = loop_mount_images(built, base, "kernel");
        let mp = base.join("kernel");
        fs::create_dir(&mp).unwrap_or_else(|e| panic!("mkdir {mp:?}: {e}"));
        let opt = lowerdir_option(&views);
        let args: [&OsStr; 5] = ["-t".as_ref(), "overlay".as_ref(), "overlay".as_ref(), "-o".as_ref(), &opt];
        let overlay = TestMount::kernel(&args, &mp);
        KernelUnion { overlay, images, views }
    }
}

// ---------------------------------------------------------------------------------------------
// Model of the union
// ---------------------------------------------------------------------------------------------

/// A visible object of the union according to the spec.
#[derive(Debug, Clone)]
pub struct ModelObj {
    /// `d f l p c b s`.
    pub kind: char,
    /// (layer, path in the layer): a directory's stack top first, or a non-dir's provider.
    pub stack: Vec<(usize, Vec<u8>)>,
}

impl ModelObj {
    /// A directory built from two or more layer directories.
    pub fn merged(&self) -> bool {
        self.kind == 'd' && self.stack.len() > 1
    }
}

/// Union path (`""` = root, `a/b`) → object.
pub type Model = BTreeMap<Vec<u8>, ModelObj>;

fn entry_kind(e: &Entry) -> char {
    match e {
        Entry::Dir(_) => 'd',
        Entry::File(..) | Entry::HardLink(_) => 'f',
        Entry::Symlink(..) => 'l',
        Entry::Fifo(_) => 'p',
        Entry::Dev(_, block, ..) => {
            if *block {
                'b'
            } else {
                'c'
            }
        }
        Entry::Socket(_) => 's',
        Entry::Whiteout => 'w',
    }
}

fn model_visit(dirs: Vec<(usize, &DirSpec, Vec<u8>)>, upath: Vec<u8>, out: &mut Model) {
    out.insert(upath.clone(), ModelObj { kind: 'd', stack: dirs.iter().map(|(i, _, p)| (*i, p.clone())).collect() });
    let names: BTreeSet<&Vec<u8>> = dirs.iter().flat_map(|(_, d, _)| d.children.keys()).collect();
    for name in names {
        let mut sub = Vec::new();
        let mut leaf = None;
        for (i, d, p) in &dirs {
            match d.children.get(name) {
                None => continue,
                Some(Entry::Whiteout) => break,
                Some(Entry::Dir(s)) => {
                    sub.push((*i, s, join(p, name)));
                    if s.opaque {
                        break;
                    }
                }
                Some(other) => {
                    if sub.is_empty() {
                        leaf = Some(ModelObj { kind: entry_kind(other), stack: vec![(*i, join(p, name))] });
                    }
                    break;
                }
            }
        }
        if let Some(obj) = leaf {
            out.insert(join(&upath, name), obj);
        } else if !sub.is_empty() {
            model_visit(sub, join(&upath, name), out);
        }
    }
}

/// What the union of `spec` shows, by overlay_semantics.md §1.2 (layer roots are never opaque).
pub fn model(spec: &StackSpec) -> Model {
    let mut out = Model::new();
    let roots = spec.layers.iter().enumerate().map(|(i, l)| (i, &l.root, Vec::new())).collect();
    model_visit(roots, Vec::new(), &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Walking a mounted tree
// ---------------------------------------------------------------------------------------------

/// What lstat & co. report for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj {
    /// `d f l p c b s`.
    pub kind: char,
    /// Full st_mode.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// st_size.
    pub size: u64,
    /// st_nlink.
    pub nlink: u64,
    /// st_rdev.
    pub rdev: u64,
    /// mtime (s, ns).
    pub mtime: (i64, i64),
    /// ctime (s, ns).
    pub ctime: (i64, i64),
    /// st_blocks.
    pub blocks: u64,
    /// st_ino.
    pub ino: u64,
    /// st_dev.
    pub dev: u64,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Every listed xattr and its value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// SHA-256 of a regular file's contents.
    pub sha: Option<[u8; 32]>,
}

/// One readdir entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent {
    /// d_ino.
    pub ino: u64,
    /// d_type as a kind letter (`None`: DT_UNKNOWN).
    pub kind: Option<char>,
}

/// A walked tree: path (`""` = root, `a/b`) → object; directory → its readdir entries.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    /// Objects.
    pub objs: BTreeMap<Vec<u8>, Obj>,
    /// Raw readdir output incl. `.` and `..`.
    pub dirents: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Dirent>>,
    /// Names the kernel listed but lstat said ENOENT (whiteouts of non-merged dirs).
    pub listed_whiteouts: Vec<Vec<u8>>,
}

fn kind_of_type(t: Type) -> char {
    match t {
        Type::Directory => 'd',
        Type::File => 'f',
        Type::Symlink => 'l',
        Type::Fifo => 'p',
        Type::CharacterDevice => 'c',
        Type::BlockDevice => 'b',
        Type::Socket => 's',
    }
}

fn kind_of_mode(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFREG => 'f',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        _ => '?',
    }
}

/// SHA-256 of a file's bytes (opened with O_NOATIME, so hashing does not touch the file).
pub fn sha256_file(p: &Path) -> [u8; 32] {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(p)
        .unwrap_or_else(|e| panic!("open {p:?}: {e}"));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// `lstat` + readlink + xattrs + content hash of one path.
/// Only the `lstat` error is returned; any later failure (readlink, listxattr, getxattr,
/// reading the contents) of an object that exists panics, naming the call.
pub fn observe(p: &Path) -> std::io::Result<Obj> {
    observe_as(p, false)
}

/// [`observe`]; `kernel`: an `EOPNOTSUPP` from listxattr means "no xattrs". The kernel's
/// squashfs answers listxattr with EOPNOTSUPP for directories and extended-inode files (e.g.
/// hard links) of an image that holds no xattr at all (mksquashfs writes no xattr table), and
/// its overlay passes that on; parallaxfs answers with the empty list a plain directory layer
/// gives (and the kernel gives for basic-inode files of the same image). By design.
fn observe_as(p: &Path, kernel: bool) -> std::io::Result<Obj> {
    let md = fs::symlink_metadata(p)?;
    let kind = kind_of_mode(md.mode());
    let target = if kind == 'l' {
        Some(fs::read_link(p).unwrap_or_else(|e| panic!("readlink {p:?}: {e}")).into_os_string().into_vec())
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    let names = match xattr::list(p) {
        Ok(names) => names.collect(),
        Err(e) if kernel && e.raw_os_error() == Some(libc::EOPNOTSUPP) => Vec::new(),
        Err(e) => panic!("listxattr {p:?} ({kind}): {e}"),
    };
    for name in names {
        let value = xattr::get(p, &name)
            .unwrap_or_else(|e| panic!("getxattr {p:?} {name:?} ({kind}): {e}"))
            .unwrap_or_else(|| panic!("{p:?}: listed xattr {name:?} has no value"));
        xattrs.insert(name.into_vec(), value);
    }
    let sha = if kind == 'f' { Some(sha256_file(p)) } else { None };
    Ok(Obj {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        nlink: md.nlink(),
        rdev: md.rdev(),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        blocks: md.blocks(),
        ino: md.ino(),
        dev: md.dev(),
        target,
        xattrs,
        sha,
    })
}

fn read_dirents(p: &Path) -> BTreeMap<Vec<u8>, Dirent> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOATIME;
    let mut dir = Dir::open(p, flags, Mode::empty()).unwrap_or_else(|e| panic!("opendir {p:?}: {e}"));
    let mut out = BTreeMap::new();
    for e in dir.iter() {
        let e = e.unwrap_or_else(|err| panic!("readdir {p:?}: {err}"));
        let name = e.file_name().to_bytes().to_vec();
        let dirent = Dirent { ino: e.ino(), kind: e.file_type().map(kind_of_type) };
        assert!(out.insert(name.clone(), dirent).is_none(), "{p:?}: readdir returned {:?} twice", lossy(&name));
    }
    out
}

fn walk_dir(root: &Path, rel: &[u8], kernel: bool, tree: &mut Tree) {
    let path = if rel.is_empty() { root.to_path_buf() } else { root.join(OsStr::from_bytes(rel)) };
    let entries = read_dirents(&path);
    for (name, d) in &entries {
        if name == b"." || name == b".." {
            continue;
        }
        let child = join(rel, name);
        let p = root.join(OsStr::from_bytes(&child));
        match observe_as(&p, kernel) {
            Ok(obj) => {
                let is_dir = obj.kind == 'd';
                tree.objs.insert(child.clone(), obj);
                if is_dir {
                    walk_dir(root, &child, kernel, tree);
                }
            }
            Err(e) if kernel && e.raw_os_error() == Some(libc::ENOENT) && matches!(d.kind, Some('c' | 'f')) => {
                tree.listed_whiteouts.push(child)
            }
            Err(e) => panic!("{}: listed by readdir, but: {e}", p.display()),
        }
    }
    tree.dirents.insert(rel.to_vec(), entries);
}

/// Walks the tree mounted at `root` (never following symlinks). `kernel`: tolerate names that
/// readdir lists but lookup does not find, if they are char devices or regular files (the
/// kernel lists the char 0/0 and xattr whiteouts of non-merged lower dirs;
/// overlay_semantics.md §1.3 says they are hidden: parallaxfs differs by design), and
/// listxattr answering EOPNOTSUPP (see [`observe_as`]).
pub fn walk(root: &Path, kernel: bool) -> Tree {
    let mut tree = Tree::default();
    let obj = observe_as(root, kernel).unwrap_or_else(|e| panic!("lstat {root:?}: {e}"));
    tree.objs.insert(Vec::new(), obj);
    walk_dir(root, b"", kernel, &mut tree);
    tree
}

/// Printable form of a path or name.
pub fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 60 {
        format!("{}…({} bytes)", &s[..s.char_indices().nth(40).map_or(s.len(), |(i, _)| i)], b.len())
    } else {
        s.into_owned()
    }
}

fn show(path: &[u8]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        format!("/{}", lossy(path))
    }
}

/// What to compare besides the portable fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cmp {
    /// Compare st_ino.
    pub ino: bool,
    /// Compare st_dev.
    pub dev: bool,
    /// Compare what depends on the exact bytes of the layers, not only on the tree they
    /// encode: directory st_size, st_blocks and ctime (only meaningful when both sides serve
    /// the very same layer files).
    pub same_layers: bool,
}

/// Differences between two walks: names per directory, type, mode, uid, gid, mtime, xattrs
/// (names and values), nlink (directories too), size, rdev, symlink target and SHA-256 of
/// contents; st_ino/st_dev as asked.
pub fn diff_trees(an: &str, a: &Tree, bn: &str, b: &Tree, cmp: Cmp) -> Vec<String> {
    let mut out = Vec::new();
    for p in a.objs.keys().filter(|p| !b.objs.contains_key(*p)) {
        out.push(format!("{}: only in {an} ({})", show(p), a.objs[p].kind));
    }
    for p in b.objs.keys().filter(|p| !a.objs.contains_key(*p)) {
        out.push(format!("{}: only in {bn} ({})", show(p), b.objs[p].kind));
    }
    for (p, x) in &a.objs {
        let Some(y) = b.objs.get(p) else { continue };
        let mut field = |name: &str, l: String, r: String| {
            if l != r {
                out.push(format!("{}: {name}: {an}={l} {bn}={r}", show(p)));
            }
        };
        field("type", x.kind.to_string(), y.kind.to_string());
        field("mode", format!("{:o}", x.mode), format!("{:o}", y.mode));
        field("uid", x.uid.to_string(), y.uid.to_string());
        field("gid", x.gid.to_string(), y.gid.to_string());
        field("mtime", format!("{:?}", x.mtime), format!("{:?}", y.mtime));
        field("nlink", x.nlink.to_string(), y.nlink.to_string());
        if x.kind != 'd' {
            field("size", x.size.to_string(), y.size.to_string());
        }
        if matches!(x.kind, 'c' | 'b') {
            field("rdev", format!("{:#x}", x.rdev), format!("{:#x}", y.rdev));
        }
        field(
            "target",
            format!("{:?}", x.target.as_deref().map(lossy)),
            format!("{:?}", y.target.as_deref().map(lossy)),
        );
        field("sha256", format!("{:?}", x.sha.map(hex)), format!("{:?}", y.sha.map(hex)));
        let names = |t: &Obj| t.xattrs.keys().map(|k| lossy(k)).collect::<Vec<_>>().join(",");
        field("xattr names", names(x), names(y));
        for (k, v) in &x.xattrs {
            if let Some(w) = y.xattrs.get(k) {
                field(&format!("xattr {}", lossy(k)), hex(v), hex(w));
            }
        }
        if cmp.ino {
            field("st_ino", format!("{:#x}", x.ino), format!("{:#x}", y.ino));
        }
        if cmp.dev {
            field("st_dev", x.dev.to_string(), y.dev.to_string());
        }
        if cmp.same_layers {
            if x.kind == 'd' {
                field("size", x.size.to_string(), y.size.to_string());
            }
            field("st_blocks", x.blocks.to_string(), y.blocks.to_string());
            field("ctime", format!("{:?}", x.ctime), format!("{:?}", y.ctime));
        }
    }
    out
}

/// Lower-case hex.
pub fn hex(b: impl AsRef<[u8]>) -> String {
    b.as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// Per layer, a directory in which layer-local inode numbers can be read (`None`: unknown).
pub type InoViews = Vec<Option<PathBuf>>;

/// parallaxfs-only invariants of one walk (`t`), checked against the kernel's walk of the same
/// stack and the model:
/// - every readdir `d_ino` equals the `st_ino` of the name (`.`: the dir, `..`: its parent,
///   except at the root) and `d_type` its type;
/// - one `st_dev` for every object; `st_ino` never 0;
/// - distinct objects have distinct `st_ino`: the names sharing an `st_ino` are exactly the
///   names the kernel shows as one non-directory object (same st_dev/st_ino there);
/// - merged directories (model: >= 2 layer dirs) have nlink 1;
/// - `st_ino = (1 + provider layer) << 48 | layer-local ino` (directories: topmost layer dir),
///   the layer-local number read from `views` where known.
pub fn pfs_invariants(t: &Tree, kernel: &Tree, model: &Model, views: &InoViews) -> Vec<String> {
    let mut out = Vec::new();
    let root = &t.objs[&Vec::new()];
    for (dir, entries) in &t.dirents {
        for (name, d) in entries {
            let want = if name == b"." {
                Some(t.objs[dir].ino)
            } else if name == b".." {
                if dir.is_empty() {
                    None
                } else {
                    let parent = dir.iter().rposition(|b| *b == b'/').map_or(&dir[..0], |i| &dir[..i]);
                    Some(t.objs[parent].ino)
                }
            } else {
                let obj = &t.objs[&join(dir, name)];
                if d.kind != Some(obj.kind) {
                    out.push(format!("{}: d_type {:?} but lstat says {}", show(&join(dir, name)), d.kind, obj.kind));
                }
                Some(obj.ino)
            };
            if let Some(w) = want {
                if d.ino != w {
                    out.push(format!("{} entry {:?}: d_ino {:#x} != st_ino {w:#x}", show(dir), lossy(name), d.ino));
                }
            }
        }
    }
    let mut by_ino: HashMap<u64, Vec<&Vec<u8>>> = HashMap::new();
    for (p, o) in &t.objs {
        if o.dev != root.dev {
            out.push(format!("{}: st_dev {} != the mount's {}", show(p), o.dev, root.dev));
        }
        if o.ino == 0 {
            out.push(format!("{}: st_ino 0", show(p)));
        }
        by_ino.entry(o.ino).or_default().push(p);
    }
    // st_ino partition == the kernel's (st_dev, st_ino) partition of non-directories.
    let mut kernel_to_pfs: HashMap<(u64, u64), u64> = HashMap::new();
    for (p, o) in &t.objs {
        let Some(k) = kernel.objs.get(p) else { continue };
        if o.kind == 'd' || k.kind == 'd' {
            continue;
        }
        if let Some(prev) = kernel_to_pfs.insert((k.dev, k.ino), o.ino) {
            if prev != o.ino {
                out.push(format!(
                    "{}: same kernel object as another name, but st_ino {:#x} != {prev:#x}",
                    show(p),
                    o.ino
                ));
            }
        }
    }
    for (ino, paths) in &by_ino {
        if paths.len() < 2 {
            continue;
        }
        let kinds: Vec<char> = paths.iter().map(|p| t.objs[*p].kind).collect();
        let kernel_ids: BTreeSet<(u64, u64)> =
            paths.iter().filter_map(|p| kernel.objs.get(*p)).map(|k| (k.dev, k.ino)).collect();
        if kinds.contains(&'d') || kernel_ids.len() > 1 {
            let names: Vec<String> = paths.iter().map(|p| show(p)).collect();
            out.push(format!("st_ino {ino:#x} shared by distinct objects {names:?} (kinds {kinds:?})"));
        }
    }
    for (p, o) in &t.objs {
        let Some(m) = model.get(p) else { continue };
        if m.merged() && o.nlink != 1 {
            out.push(format!("{}: merged directory has nlink {}", show(p), o.nlink));
        }
        let (layer, lpath) = &m.stack[0];
        let slot = *layer as u64 + 1;
        if o.ino >> 48 != slot {
            out.push(format!(
                "{}: st_ino {:#x} has slot {} but the object comes from layer slot {slot}",
                show(p),
                o.ino,
                o.ino >> 48
            ));
        }
        if let Some(view) = &views[*layer] {
            let lp = if lpath.is_empty() { view.clone() } else { view.join(OsStr::from_bytes(lpath)) };
            match fs::symlink_metadata(&lp) {
                Ok(md) if o.ino != (slot << 48 | md.ino()) => out.push(format!(
                    "{}: st_ino {:#x}, want slot {slot} << 48 | {} (ino of {})",
                    show(p),
                    o.ino,
                    md.ino(),
                    lp.display()
                )),
                Ok(_) => {}
                Err(e) => out.push(format!("{}: model says it comes from {}: {e}", show(p), lp.display())),
            }
        }
    }
    out
}

/// Names of the model vs the names of a walk.
pub fn diff_model(model: &Model, t: &Tree, who: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (p, m) in model {
        match t.objs.get(p) {
            None => out.push(format!("{}: the model shows a {}, {who} does not", show(p), m.kind)),
            Some(o) if o.kind != m.kind => out.push(format!("{}: model {} vs {who} {}", show(p), m.kind, o.kind)),
            Some(_) => {}
        }
    }
    for p in t.objs.keys().filter(|p| !model.contains_key(*p)) {
        out.push(format!("{}: {who} shows it, the model does not", show(p)));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Layer fingerprints
// ---------------------------------------------------------------------------------------------

fn fp_line(md: &fs::Metadata, with_atime: bool) -> String {
    let atime = if with_atime { format!(" atime={}.{}", md.atime(), md.atime_nsec()) } else { String::new() };
    format!(
        "mode={:o} uid={} gid={} size={} nlink={} rdev={:#x} ino={} mtime={}.{} ctime={}.{}{atime}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.size(),
        md.nlink(),
        md.rdev(),
        md.ino(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec()
    )
}

fn fp_walk(root: &Path, rel: &[u8], out: &mut BTreeMap<Vec<u8>, String>) {
    let p = if rel.is_empty() { root.to_path_buf() } else { root.join(OsStr::from_bytes(rel)) };
    let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
    let kind = kind_of_mode(md.mode());
    // readlink(2) itself updates a symlink's atime, so symlink atimes are left out.
    let mut line = fp_line(&md, kind != 'l');
    for name in xattr::list(&p).unwrap() {
        let v = xattr::get(&p, &name).unwrap().unwrap_or_default();
        line.push_str(&format!(" xattr:{}={}", name.to_string_lossy(), hex(v)));
    }
    match kind {
        'f' => line.push_str(&format!(" sha256={}", hex(sha256_file(&p)))),
        'l' => line.push_str(&format!(" target={:?}", fs::read_link(&p).unwrap())),
        _ => {}
    }
    out.insert(rel.to_vec(), line);
    if kind == 'd' {
        for name in read_dirents(&p).into_keys() {
            if name != b"." && name != b".." {
                fp_walk(root, &join(rel, &name), out);
            }
        }
    }
}

/// Every byte and attribute of a layer (a directory tree, or an image file): content hashes,
/// xattrs, names, inode numbers, mode, owner, size, nlink, mtime, ctime and — for files and
/// directories of directory layers — atime. Read with O_NOATIME so that taking a fingerprint
/// changes nothing.
pub fn fingerprint(layer: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let md = fs::metadata(layer).unwrap_or_else(|e| panic!("stat {layer:?}: {e}"));
    if md.is_dir() {
        fp_walk(layer, b"", &mut out);
    } else {
        out.insert(Vec::new(), format!("{} sha256={}", fp_line(&md, false), hex(sha256_file(layer))));
    }
    out
}

/// Differences between two fingerprints.
pub fn diff_fingerprints(before: &BTreeMap<Vec<u8>, String>, after: &BTreeMap<Vec<u8>, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => out.push(format!("{}: gone", show(p))),
            Some(a) if a != b => out.push(format!("{}: before [{b}] after [{a}]", show(p))),
            Some(_) => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        out.push(format!("{}: appeared", show(p)));
    }
    out
}

/// Panics listing up to 40 problems, if any.
pub fn assert_no_diffs(what: &str, diffs: &[String]) {
    if diffs.is_empty() {
        return;
    }
    let shown: Vec<&str> = diffs.iter().take(40).map(String::as_str).collect();
    panic!("{what}: {} difference(s):\n  {}", diffs.len(), shown.join("\n  "));
}
