//! Copy-on-write differential test: the kernel's overlayfs is the oracle.
//!
//! One SquashFS image (made by mksquashfs from a generated tree with hard links, symlinks,
//! xattrs, FIFOs, nested and empty directories) is the lower layer of two writable unions:
//! a kernel overlay over the kernel's loop-mounted squashfs, and parallaxfs reading the image
//! itself. Seeded scripts of random operations (create, append, truncate, chmod, chown,
//! utimes, xattrs, mkdir, rmdir, unlink, rename of files and of lower directories, link,
//! symlink, mkfifo) run on both; every operation's result (errno) must match, and after each
//! script — and again after unmounting and remounting both on the same upper — full walks
//! must match field by field. The parallaxfs upper is also checked as a lower of a kernel
//! overlay (char-whiteout mode): it must show the same tree as the live mount did.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const SCRIPTS: u64 = 150;
const OPS: usize = 80;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn umount(p: &Path) {
    for _ in 0..200 {
        if Command::new("umount").arg(p).status().is_ok_and(|s| s.success()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("cannot unmount {}", p.display());
}

/// Unmounts everything it mounted, also when a test panics.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

fn lower_tree(root: &Path) {
    let w = |p: &str, data: &[u8]| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    };
    w("a/one", b"first file\n");
    w("a/b/two", &vec![7u8; 70_000]);
    w("a/b/c/three", b"3");
    w("top", b"top level\n");
    w("x/hl1", b"hard linked\n");
    fs::hard_link(root.join("x/hl1"), root.join("x/hl2")).unwrap();
    w("x/sparse", b"");
    let f = fs::OpenOptions::new().write(true).open(root.join("x/sparse")).unwrap();
    f.set_len(3 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"tail", (3 << 20) - 4).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("deep/d1/d2/d3")).unwrap();
    w("deep/d1/d2/d3/leaf", b"leaf");
    std::os::unix::fs::symlink("top", root.join("link")).unwrap();
    std::os::unix::fs::symlink("a/b", root.join("a/dirlink")).unwrap();
    run(Command::new("mkfifo").arg(root.join("a/fifo")));
    run(Command::new("setfattr").args(["-n", "user.color", "-v", "blue"]).arg(root.join("top")));
    run(Command::new("setfattr").args(["-n", "user.dir", "-v", "yes"]).arg(root.join("a")));
    fs::set_permissions(root.join("a/one"), fs::Permissions::from_mode(0o640)).unwrap();
    run(Command::new("chown").arg("1234:5678").arg(root.join("a/b/two")));
}

/// Names the scripts work on. The lower hard links `x/hl1`, `x/hl2` are walked but never
/// changed: fuser 0.18 makes the FUSE node id equal `st_ino`, so both names of a lower
/// hard-link group are one kernel inode and a copy-up through one name shows through the other
/// until remount (the kernel breaks the link at copy-up). Known gap, see the issue note.
const NAMES: [&str; 24] = [
    "a",
    "a/one",
    "a/b",
    "a/b/two",
    "a/b/c",
    "a/b/c/three",
    "top",
    "x",
    "x/sparse",
    "empty",
    "deep",
    "deep/d1",
    "deep/d1/d2",
    "link",
    "a/fifo",
    "new",
    "a/new",
    "x/n2",
    "empty/e",
    "nd",
    "nd/f",
    "a/b/nd",
    "deep/d1/d2/d3",
    "a/dirlink",
];

#[derive(Debug, Clone)]
enum Op {
    Append(String, u8),
    Create(String),
    Truncate(String, u64),
    Chmod(String, u32),
    Chown(String, u32),
    Utime(String),
    SetXattr(String),
    RemoveXattr(String),
    Mkdir(String),
    Rmdir(String),
    Unlink(String),
    Rename(String, String),
    Link(String, String),
    Symlink(String),
    Mkfifo(String),
    Read(String),
    /// Lists a directory (what the kernel may keep cached between changes).
    List(String),
}

fn gen_op(rng: &mut SmallRng) -> Op {
    let mut name = || NAMES[rng.gen_range(0..NAMES.len())].to_string();
    let (a, b) = (name(), name());
    match rng.gen_range(0..19) {
        0 => Op::Append(a, rng.gen()),
        1 => Op::Create(a),
        2 => Op::Truncate(a, rng.gen_range(0..100_000)),
        3 => Op::Chmod(a, rng.gen_range(0o400..0o1000)),
        4 => Op::Chown(a, rng.gen_range(0..3) * 1000),
        5 => Op::Utime(a),
        6 => Op::SetXattr(a),
        7 => Op::RemoveXattr(a),
        8 => Op::Mkdir(a),
        9 => Op::Rmdir(a),
        10 => Op::Unlink(a),
        11 | 12 => Op::Rename(a, b),
        13 => Op::Link(a, b),
        14 => Op::Symlink(a),
        15 => Op::Mkfifo(a),
        16 | 17 => Op::List(a),
        _ => Op::Read(a),
    }
}

fn errno_of(r: std::io::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn tool(args: &[&OsStr]) -> std::io::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(libc_errno_from(&out.stderr)))
    }
}

/// setfattr/mkfifo report errors as text; map the common ones back.
fn libc_errno_from(stderr: &[u8]) -> i32 {
    let s = String::from_utf8_lossy(stderr);
    for (text, no) in [
        ("No such file", 2),
        ("No such attribute", 61),
        ("No data available", 61),
        ("File exists", 17),
        ("Not a directory", 20),
        ("Operation not permitted", 1),
        ("Operation not supported", 95),
    ] {
        if s.contains(text) {
            return no;
        }
    }
    5
}

/// Opens without blocking: a FIFO without a peer would hang the test forever.
fn open_nb(path: &Path, write: bool) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().read(!write).write(write).custom_flags(libc::O_NONBLOCK).open(path)
}

/// What an operation did: its errno, and for a listing the names and types it returned.
fn apply(root: &Path, op: &Op) -> String {
    match op {
        Op::List(n) => list(&root.join(n)),
        _ => apply_change(root, op).to_string(),
    }
}

/// A directory's listing: errno, then each name with its type, and whether its `d_ino` is the
/// `st_ino` a lookup of the name gives.
fn list(dir: &Path) -> String {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd.collect::<std::io::Result<Vec<_>>>(),
        Err(e) => Err(e),
    };
    let mut entries = match entries {
        Ok(v) => v,
        Err(e) => return errno_of(Err(e)).to_string(),
    };
    entries.sort_by_key(|e| e.file_name());
    let mut out = String::from("0");
    for e in entries {
        use std::os::unix::fs::DirEntryExt;
        let kind = e.file_type().map(|t| format!("{t:?}")).unwrap_or_default();
        let same_ino = fs::symlink_metadata(e.path()).is_ok_and(|m| m.ino() == e.ino());
        out.push_str(&format!(" {}:{kind}:{}", e.file_name().to_string_lossy(), if same_ino { "ino" } else { "INO?" }));
    }
    out
}

fn apply_change(root: &Path, op: &Op) -> i32 {
    let p = |n: &str| root.join(n);
    match op {
        Op::List(_) => unreachable!("listings are not changes"),
        Op::Append(n, v) => errno_of({
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(n))
                .and_then(|mut f| std::io::Write::write_all(&mut f, &[*v; 100]))
        }),
        Op::Create(n) => errno_of(fs::OpenOptions::new().write(true).create_new(true).open(p(n)).map(|_| ())),
        Op::Truncate(n, len) => errno_of(open_nb(&p(n), true).and_then(|f| f.set_len(*len))),
        Op::Chmod(n, m) => errno_of(fs::set_permissions(p(n), fs::Permissions::from_mode(*m))),
        Op::Chown(n, id) => errno_of(std::os::unix::fs::lchown(p(n), Some(*id), Some(*id))),
        Op::Utime(n) => errno_of(open_nb(&p(n), false).and_then(|f| {
            f.set_times(
                fs::FileTimes::new().set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)),
            )
        })),
        Op::SetXattr(n) => errno_of(tool(&[
            OsStr::new("setfattr"),
            OsStr::new("-h"),
            OsStr::new("-n"),
            OsStr::new("user.k"),
            OsStr::new("-v"),
            OsStr::new("v"),
            p(n).as_os_str(),
        ])),
        Op::RemoveXattr(n) => errno_of(tool(&[
            OsStr::new("setfattr"),
            OsStr::new("-h"),
            OsStr::new("-x"),
            OsStr::new("user.color"),
            p(n).as_os_str(),
        ])),
        Op::Mkdir(n) => errno_of(fs::create_dir(p(n))),
        Op::Rmdir(n) => errno_of(fs::remove_dir(p(n))),
        Op::Unlink(n) => errno_of(fs::remove_file(p(n))),
        Op::Rename(a, b) => errno_of(fs::rename(p(a), p(b))),
        Op::Link(a, b) => errno_of(fs::hard_link(p(a), p(b))),
        Op::Symlink(n) => errno_of(std::os::unix::fs::symlink("target", p(n))),
        Op::Mkfifo(n) => errno_of(tool(&[OsStr::new("mkfifo"), p(n).as_os_str()])),
        Op::Read(n) => errno_of(open_nb(&p(n), false).and_then(|mut f| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut v).map(|_| ())
        })),
    }
}

/// Everything compared about one object.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    nlink: Option<u64>,
    content: Option<String>,
    target: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn walk(root: &Path) -> BTreeMap<Vec<u8>, Seen> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let md = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: lstat: {e}", path.display()));
        let kind = md.mode() & 0o170000;
        let is_dir = md.is_dir();
        let content = md.is_file().then(|| {
            format!("{:x}", Sha256::digest(fs::read(&path).unwrap_or_else(|e| panic!("{}: read: {e}", path.display()))))
        });
        let target = md.file_type().is_symlink().then(|| {
            let t = fs::read_link(&path).unwrap_or_else(|e| panic!("{}: readlink: {e}", path.display()));
            t.as_os_str().as_bytes().to_vec()
        });
        let mut xattrs = BTreeMap::new();
        if let Ok(names) = xattr::list(&path) {
            for n in names {
                let nb = n.as_bytes().to_vec();
                if nb.starts_with(b"trusted.overlay.") || nb.starts_with(b"user.overlay.") {
                    continue;
                }
                xattrs.insert(nb, xattr::get(&path, &n).ok().flatten().unwrap_or_default());
            }
        }
        out.insert(
            rel.as_os_str().as_bytes().to_vec(),
            Seen {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: (!is_dir).then(|| md.size()),
                nlink: (!is_dir).then(|| md.nlink()),
                content,
                target,
                xattrs,
            },
        );
        if is_dir {
            for e in fs::read_dir(&path).unwrap() {
                todo.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    out
}

fn diff(a: &BTreeMap<Vec<u8>, Seen>, b: &BTreeMap<Vec<u8>, Seen>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!("{} only in kernel", String::from_utf8_lossy(k))),
            Some(w) if w != v => d.push(format!("{}: kernel {v:?} parallaxfs {w:?}", String::from_utf8_lossy(k))),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        d.push(format!("{} only in parallaxfs", String::from_utf8_lossy(k)));
    }
    d
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
}

struct Env {
    dir: PathBuf,
    image: PathBuf,
    kernel_lower: PathBuf,
}

fn mount_kernel(env: &Env, tag: &str, mounts: &mut Mounts) -> PathBuf {
    let (u, w, m) =
        (env.dir.join(format!("{tag}-ku")), env.dir.join(format!("{tag}-kw")), env.dir.join(format!("{tag}-km")));
    for d in [&u, &w, &m] {
        fs::create_dir_all(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},xino=on,redirect_dir=on,index=off,metacopy=off",
        env.kernel_lower.display(),
        u.display(),
        w.display()
    );
    run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&m));
    mounts.0.push(m.clone());
    m
}

fn mount_pfs(env: &Env, tag: &str, mounts: &mut Mounts, aufs: bool) -> PathBuf {
    let (u, w, m) =
        (env.dir.join(format!("{tag}-pu")), env.dir.join(format!("{tag}-pw")), env.dir.join(format!("{tag}-pm")));
    for d in [&u, &w, &m] {
        fs::create_dir_all(d).unwrap();
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", env.image.display(), u.display(), w.display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_parallaxfs"));
    if aufs {
        cmd.env("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT", "1");
    }
    run(cmd.args(["-o", &opts]).arg(&m));
    mounts.0.push(m.clone());
    m
}

fn setup(aufs: bool) -> Env {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (loop and overlay mounts)");
    let dir = std::env::temp_dir().join(format!("pfs-cow-diff-{}-{aufs}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let tree = dir.join("tree");
    lower_tree(&tree);
    let image = dir.join("lower.squash");
    run(Command::new("mksquashfs").arg(&tree).arg(&image).args(["-noappend", "-quiet", "-comp", "zstd"]));
    let kernel_lower = dir.join("lower");
    fs::create_dir_all(&kernel_lower).unwrap();
    Env { dir, image, kernel_lower }
}

#[test]
fn scripts_match_the_kernel_overlay_char_whiteouts() {
    scripts_match_the_kernel_overlay(false);
}

/// The same with `.wh.NAME` whiteouts (what parallaxfs writes where mknod is refused).
#[test]
fn scripts_match_the_kernel_overlay_aufs_whiteouts() {
    scripts_match_the_kernel_overlay(true);
}

fn scripts_match_the_kernel_overlay(aufs: bool) {
    let env = setup(aufs);
    let mut lower = Mounts(Vec::new());
    run(Command::new("mount").args(["-t", "squashfs", "-o", "loop,ro"]).arg(&env.image).arg(&env.kernel_lower));
    lower.0.push(env.kernel_lower.clone());
    let mut total_ops = 0;
    // PFS_COW_SEED=N replays one script.
    let only: Option<u64> = std::env::var("PFS_COW_SEED").ok().and_then(|v| v.parse().ok());
    for seed in (0..SCRIPTS).filter(|s| only.is_none_or(|o| o == *s)) {
        let tag = format!("s{seed}");
        let mut mounts = Mounts(Vec::new());
        let km = mount_kernel(&env, &tag, &mut mounts);
        let pm = mount_pfs(&env, &tag, &mut mounts, aufs);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut log = Vec::new();
        for i in 0..OPS {
            let op = gen_op(&mut rng);
            let (k, p) = (apply(&km, &op), apply(&pm, &op));
            log.push(format!("{i}: {op:?} -> kernel {k} parallaxfs {p}"));
            assert_eq!(k, p, "seed {seed}, errno differs at op {i} {op:?}\n{}", log.join("\n"));
            total_ops += 1;
        }
        drop_caches();
        let kt = walk(&km);
        let pt = std::panic::catch_unwind(|| walk(&pm))
            .unwrap_or_else(|_| panic!("seed {seed}: walking parallaxfs failed; ops:\n{}", log.join("\n")));
        let d = diff(&kt, &pt);
        assert!(d.is_empty(), "seed {seed}: live views differ:\n{}\nops:\n{}", d.join("\n"), log.join("\n"));
        // Remount both on the same upper: the state on disk tells the same story.
        umount(&pm);
        umount(&km);
        mounts.0.clear();
        let km = mount_kernel(&env, &tag, &mut mounts);
        let pm = mount_pfs(&env, &tag, &mut mounts, aufs);
        drop_caches();
        let d = diff(&walk(&km), &walk(&pm));
        assert!(d.is_empty(), "seed {seed}: views differ after remount:\n{}\nops:\n{}", d.join("\n"), log.join("\n"));
        if aufs {
            // The kernel does not read `.wh.` whiteouts: nothing more to compare.
            continue;
        }
        // The parallaxfs upper read by the kernel, as the top lower of a read-only overlay.
        let ro = env.dir.join(format!("{tag}-ro"));
        fs::create_dir_all(&ro).unwrap();
        let opts = format!("lowerdir={}:{}", env.dir.join(format!("{tag}-pu")).display(), env.kernel_lower.display());
        run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&ro));
        mounts.0.push(ro.clone());
        drop_caches();
        let d = diff(&walk(&ro), &walk(&pm));
        assert!(
            d.is_empty(),
            "seed {seed}: upper read by the kernel differs:\n{}\nops:\n{}",
            d.join("\n"),
            log.join("\n")
        );
        drop(mounts);
    }
    eprintln!(
        "{SCRIPTS} scripts, {total_ops} operations (aufs whiteouts: {aufs}): no difference from the kernel overlay"
    );
    drop(lower);
    let _ = fs::remove_dir_all(&env.dir);
}
