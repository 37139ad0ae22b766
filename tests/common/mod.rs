//! Shared helpers of the integration tests: an environment check, a source-tree generator
//! with every SquashFS edge case, `mksquashfs`, a loop mount that unmounts on drop, and walkers
//! that record every attribute of a tree as the kernel shows it and as `parallaxfs_squash`
//! reads it, so the two can be compared field by field.
#![allow(dead_code, reason = "each test file uses its own subset of the helpers")]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use parallaxfs_squash::{DirEntry, Image, Inode, InodeRef, Kind};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// Fails (never skips) unless the tests can do what they must: run as root (loop mounts,
/// mknod, chown, trusted.* xattrs) with squashfs-tools installed.
pub fn require_environment() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these integration tests must run as root: they loop-mount SquashFS images with the \
         kernel, create device nodes and set trusted.* xattrs (CI runs them as root)"
    );
    for tool in ["mksquashfs", "unsquashfs"] {
        // (unsquashfs -version exits 1, so look at what it prints.)
        let ok = Command::new(tool)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(format!("{tool} version 4.").as_bytes()));
        assert!(ok, "`{tool} -version` failed: install squashfs-tools 4.x (apt-get install squashfs-tools)");
    }
}

// ---------------------------------------------------------------------------------------------
// Source tree generation
// ---------------------------------------------------------------------------------------------

/// Which of the expensive edge cases a tree gets.
#[derive(Debug, Clone, Copy)]
pub struct TreeSpec {
    /// A 100,000-entry directory `/huge` (60,000 hard links to one file + 40,000 empty files).
    pub huge_dir: bool,
    /// A sparse file of more than 4 GiB apparent size `/files/big_sparse` (extended inode,
    /// size >= 2^32).
    pub big_sparse: bool,
    /// Seed of the random contents.
    pub seed: u64,
}

/// Number of entries of `/huge`.
pub const HUGE_ENTRIES: usize = 100_000;
/// How many of them are hard links to `/huge/target` (ext4 allows 65,000 links).
pub const HUGE_LINKS: usize = 60_000;
/// Number of files in `/smallfiles`, 1 to 6,000 bytes each: about 2.7 MB of file ends, so
/// that an image with 4 KiB blocks has well over 512 fragments (a fragment table of more than
/// one metadata block).
pub const SMALL_FILES: usize = 1600;
/// Apparent size of `/files/big_sparse`: 4 GiB + a tail that is not a multiple of any block size
/// (and beyond the 100,000 bytes of data written across the 4 GiB mark).
pub const BIG_SPARSE_SIZE: u64 = (4 << 30) + 123_457;
/// Block sizes the variants use; every tree has files of exactly one block and one block + 1.
pub const BLOCK_SIZES: [u64; 3] = [4096, 131_072, 1 << 20];
/// Device numbers created under `/special`: (name, is block device, major, minor).
pub const DEVICES: [(&str, bool, u32, u32); 6] = [
    ("chr_1_3", false, 1, 3),
    ("chr_minor_300", false, 8, 300),
    ("chr_major_300", false, 300, 1),
    ("blk_7_0", true, 7, 0),
    ("blk_259_70000", true, 259, 70_000),
    ("blk_max", true, 4095, 1_048_575),
];
/// (uid, gid) pairs given to files; includes ids above 16 and 31 bits.
pub const OWNERS: [(u32, u32); 8] = [
    (0, 0),
    (1, 1),
    (1000, 100),
    (65_534, 65_534),
    (65_535, 65_536),
    (1_000_000, 2_000_000),
    (4_000_000_000, 3),
    (123_456_789, 987_654_321),
];
/// A value longer than 2 KiB set on several files so that mksquashfs stores it once, out of line
/// (short enough that it and a second value fit the 4 KiB xattr space of an ext4 inode).
pub fn long_shared_value() -> Vec<u8> {
    (0..2600u32).map(|i| b'a' + (i * 7 % 26) as u8).collect()
}

/// What the generator made that the tests need to know by path (paths start with `/`).
#[derive(Debug, Default)]
pub struct TreeFacts {
    /// Devices whose minor is above 255 (unsquashfs 4.5.1 mis-decodes them).
    pub big_minor_devices: Vec<Vec<u8>>,
    /// UTF-8 paths of regular files to fetch with `parallaxfs image cat`.
    pub cat_paths: Vec<String>,
    /// A directory with plain names only, for `image ls -d`.
    pub list_dir: String,
}

/// Sets the mtime, and an atime a day in the future (and after the mtime). mksquashfs 4.5.1
/// recognises hard links by comparing whole `struct stat`s, so an atime that its own reading
/// (of the file data or symlink target) updates under `relatime` between the lstat of two names
/// would split a hard link in two; relatime leaves an atime that is newer than mtime and ctime
/// and not older than a day alone.
fn set_mtime(path: &Path, secs: i64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let atime = TimeSpec::new((now + 86_400).max(secs + 1), 0);
    let mtime = TimeSpec::new(secs, 0);
    utimensat(nix::fcntl::AT_FDCWD, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn setx(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value).unwrap_or_else(|e| {
        panic!(
            "setting xattr {name} on {}: {e} (the test tree's filesystem must support user/trusted/security xattrs)",
            path.display()
        )
    });
}

fn write(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

fn hard_link(from: &Path, to: &Path) {
    fs::hard_link(from, to).unwrap_or_else(|e| panic!("link {} {}: {e}", from.display(), to.display()));
}

fn symlink(target: &[u8], at: &Path) {
    std::os::unix::fs::symlink(OsStr::from_bytes(target), at)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", at.display()));
}

fn random_bytes(rng: &mut SmallRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

/// Text-like bytes that compress well but are not one repeated pattern.
fn compressible_bytes(rng: &mut SmallRng, n: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 12] = [
        b"squash ",
        b"block ",
        b"fragment ",
        b"inode ",
        b"the ",
        b"kernel ",
        b"lazy ",
        b"reader\n",
        b"0123 ",
        b"xattr ",
        b"table ",
        b"mount ",
    ];
    let mut v = Vec::with_capacity(n + 16);
    while v.len() < n {
        v.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    v.truncate(n);
    v
}

/// Builds the source tree at `root` (which must not exist). Deterministic for a seed, except
/// the socket's and the huge directory's inode timestamps (set explicitly anyway).
pub fn build_tree(root: &Path, spec: &TreeSpec) -> TreeFacts {
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let mut facts = TreeFacts { list_dir: "/files".into(), ..TreeFacts::default() };
    mkdir(root);
    setx(root, "user.root", b"top");

    // --- regular files -------------------------------------------------------------------
    let files = root.join("files");
    mkdir(&files);
    let mut cat = |name: &str| facts.cat_paths.push(format!("/files/{name}"));
    write(&files.join("empty"), b"");
    cat("empty");
    write(&files.join("empty_xattr"), b"");
    setx(&files.join("empty_xattr"), "user.tag", b"empty file with an xattr");
    write(&files.join("empty_linked"), b"");
    hard_link(&files.join("empty_linked"), &files.join("empty_linked.2"));
    write(&files.join("one_byte"), b"x");
    cat("one_byte");
    for (i, bs) in BLOCK_SIZES.into_iter().enumerate() {
        for (suffix, len) in [("minus1", bs - 1), ("exact", bs), ("plus1", bs + 1)] {
            let name = format!("bs{bs}_{suffix}");
            let data = if (i + len as usize) % 2 == 0 {
                random_bytes(&mut rng, len as usize)
            } else {
                compressible_bytes(&mut rng, len as usize)
            };
            write(&files.join(&name), &data);
            cat(&name);
        }
    }
    let random = random_bytes(&mut rng, 600_001);
    write(&files.join("random_600k"), &random);
    write(&files.join("random_600k.dup"), &random);
    cat("random_600k");
    cat("random_600k.dup");
    let text = compressible_bytes(&mut rng, 3 * 1024 * 1024 + 777);
    write(&files.join("compressible_3m"), &text);
    cat("compressible_3m");
    // Alternating 64 KiB runs of random and compressible bytes: blocks of both storage kinds.
    let mut mixed = Vec::new();
    for k in 0..37 {
        if k % 2 == 0 {
            mixed.extend(random_bytes(&mut rng, 65_536));
        } else {
            mixed.extend(compressible_bytes(&mut rng, 65_536));
        }
    }
    mixed.truncate(mixed.len() - 1234);
    write(&files.join("mixed"), &mixed);
    cat("mixed");
    let small = compressible_bytes(&mut rng, 1500);
    write(&files.join("small"), &small);
    write(&files.join("small.dup"), &small);
    cat("small.dup");
    // Zeros written out (not holes): mksquashfs stores every block as sparse anyway.
    write(&files.join("zeros"), &vec![0u8; 2 * 1024 * 1024 + 100]);
    cat("zeros");
    // Holes in the middle, data at both ends; 1 MiB-aligned holes exist for every block size.
    {
        let f = File::create(files.join("sparse_5m")).unwrap();
        f.set_len(5 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&random_bytes(&mut rng, 1000), 0).unwrap();
        f.write_all_at(&random_bytes(&mut rng, 1000), (4 << 20) + (1 << 19)).unwrap();
        cat("sparse_5m");
        let g = File::create(files.join("sparse_hole_at_end")).unwrap();
        g.set_len(3 * 1024 * 1024 + 5).unwrap();
        g.write_all_at(b"data only at the start", 10).unwrap();
        cat("sparse_hole_at_end");
    }
    if spec.big_sparse {
        let f = File::create(files.join("big_sparse")).unwrap();
        f.set_len(BIG_SPARSE_SIZE).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head of a file larger than 4 GiB", 0).unwrap();
        f.write_all_at(&random_bytes(&mut rng, 5000), (2 << 30) + 7).unwrap();
        f.write_all_at(&random_bytes(&mut rng, 100_000), (4 << 30) - 50_000).unwrap();
        f.write_all_at(b"tail", BIG_SPARSE_SIZE - 4).unwrap();
        let len = f.metadata().unwrap().len();
        assert_eq!(len, BIG_SPARSE_SIZE, "big_sparse: a write went past the intended size");
        cat("big_sparse");
    }
    // nlink 3: two names here, one in another directory.
    write(&files.join("hard"), &compressible_bytes(&mut rng, 10_000));
    hard_link(&files.join("hard"), &files.join("hard.link1"));
    mkdir(&root.join("links"));
    hard_link(&files.join("hard"), &root.join("links/hard.link2"));
    cat("hard.link1");
    write(&files.join("mtime_zero"), b"epoch");
    write(&files.join("mtime_max"), b"2106");

    // --- special files -------------------------------------------------------------------
    let special = root.join("special");
    mkdir(&special);
    for (name, block, major, minor) in DEVICES {
        let kind = if block { SFlag::S_IFBLK } else { SFlag::S_IFCHR };
        let path = special.join(name);
        mknod(&path, kind, Mode::from_bits_truncate(0o640), libc::makedev(major, minor))
            .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
        if minor > 255 {
            facts.big_minor_devices.push(format!("/special/{name}").into_bytes());
        }
    }
    hard_link(&special.join("chr_1_3"), &special.join("chr_1_3.link"));
    setx(&special.join("blk_7_0"), "security.label", b"device label");
    nix::unistd::mkfifo(&special.join("fifo"), Mode::from_bits_truncate(0o620)).unwrap();
    hard_link(&special.join("fifo"), &special.join("fifo.link"));
    nix::unistd::mkfifo(&special.join("fifo_xattr"), Mode::from_bits_truncate(0o600)).unwrap();
    setx(&special.join("fifo_xattr"), "trusted.fifo", b"pipe");
    drop(std::os::unix::net::UnixListener::bind(special.join("socket")).unwrap());
    drop(std::os::unix::net::UnixListener::bind(special.join("socket_xattr")).unwrap());
    setx(&special.join("socket_xattr"), "trusted.sock", b"unix");
    hard_link(&special.join("socket"), &special.join("socket.link"));
    symlink(b"x", &special.join("symlink_1"));
    let long_target: Vec<u8> = (0..4095).map(|i| if i % 64 == 63 { b'/' } else { b'a' + (i % 26) as u8 }).collect();
    symlink(&long_target, &special.join("symlink_4095"));
    symlink(b"../files/hard", &special.join("symlink_rel"));
    symlink(b"/nonexistent/dangling", &special.join("symlink_dangling"));
    symlink(b"caf\xe9/\xff", &special.join("symlink_non_utf8"));
    symlink(b"../files", &special.join("symlink_dir"));
    hard_link(&special.join("symlink_rel"), &special.join("symlink_rel.link"));
    symlink(b"target with xattr", &special.join("symlink_xattr"));
    setx(&special.join("symlink_xattr"), "trusted.link", b"on a symlink");
    setx(&special.join("symlink_xattr"), "security.link", b"also");

    // --- modes ---------------------------------------------------------------------------
    let modes = root.join("modes");
    mkdir(&modes);
    for (name, mode) in [
        ("setuid", 0o4755),
        ("setgid", 0o2755),
        ("setgid_noexec", 0o2644),
        ("setuid_noexec", 0o4644),
        ("sticky_file", 0o1644),
        ("all_bits", 0o7777),
        ("no_bits", 0o0000),
        ("exec_only", 0o111),
    ] {
        let p = modes.join(name);
        write(&p, name.as_bytes());
        chown(&p, (1000, 1000));
        chmod(&p, mode);
    }
    for (name, mode) in
        [("sticky_dir", 0o1777), ("setgid_dir", 0o2775), ("closed_dir", 0o000), ("sticky_noexec", 0o1776)]
    {
        let p = modes.join(name);
        mkdir(&p);
        write(&p.join("inside"), b"inside");
        chmod(&p, mode);
    }
    chmod(&special.join("fifo_xattr"), 0o4600);

    // --- owners --------------------------------------------------------------------------
    let owners = root.join("owners");
    mkdir(&owners);
    for (i, owner) in OWNERS.into_iter().enumerate() {
        let p = owners.join(format!("file_{}_{}", owner.0, owner.1));
        write(&p, format!("owned {i}").as_bytes());
        chown(&p, owner);
        let d = owners.join(format!("dir_{i}"));
        mkdir(&d);
        chown(&d, owner);
    }
    symlink(b"owned link", &owners.join("link_owned"));
    chown(&owners.join("link_owned"), OWNERS[5]);
    chown(&special.join("fifo"), OWNERS[6]);
    chown(&special.join("blk_259_70000"), OWNERS[7]);

    // --- names ---------------------------------------------------------------------------
    let names = root.join("names");
    mkdir(&names);
    let name_list: Vec<Vec<u8>> = vec![
        b"a".to_vec(),
        b"ab".to_vec(),
        b"abc".to_vec(),
        b"abd".to_vec(),
        b"b".to_vec(),
        b"B".to_vec(),
        b"~".to_vec(),
        b"-dash".to_vec(),
        b"with space".to_vec(),
        b"tab\there".to_vec(),
        b"new\nline".to_vec(),
        "ünïcødé".as_bytes().to_vec(),
        b"caf\xe9".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"\x80".to_vec(),
        b"\x01control".to_vec(),
        vec![b'n'; 255],
        [vec![b'n'; 254], b"o".to_vec()].concat(),
        [vec![b'\xff'; 200], vec![b'z'; 55]].concat(),
    ];
    for n in &name_list {
        write(&names.join(OsStr::from_bytes(n)), n);
    }
    let long_dir = names.join(OsStr::from_bytes(&[b'd'; 255]));
    mkdir(&long_dir);
    write(&long_dir.join(OsStr::from_bytes(&[b'f'; 255])), b"long name in a long-named directory");
    mkdir(&names.join(OsStr::from_bytes(b"dir\xc3(")));

    // --- xattrs --------------------------------------------------------------------------
    let xd = root.join("xattrs");
    mkdir(&xd);
    setx(&xd, "user.dir", b"on a directory");
    setx(&xd, "trusted.dir", b"trusted dir");
    let shared = long_shared_value();
    for i in 0..6 {
        let p = xd.join(format!("long_shared_{i}"));
        write(&p, format!("shares a long xattr value {i}").as_bytes());
        setx(&p, "user.long", &shared);
        setx(&p, "security.small", b"s");
        if i % 2 == 0 {
            setx(&p, "trusted.also", &shared[..800]);
        }
    }
    for i in 0..3 {
        let p = xd.join(format!("long_unique_{i}"));
        write(&p, b"unique long value");
        setx(&p, "user.unique", &random_bytes(&mut rng, 2500 + i));
    }
    let p = xd.join("many");
    write(&p, b"many xattrs");
    for i in 0..30 {
        let name = format!("user.attr_{i:02}_{}", "n".repeat(i * 5));
        setx(&p, &name, format!("value {i}").as_bytes());
    }
    let p = xd.join("namespaces");
    write(&p, b"all three namespaces");
    setx(&p, "user.u", b"user value");
    setx(&p, "trusted.t", b"trusted value");
    setx(&p, "security.s", b"security value");
    let p = xd.join("binary_and_empty");
    write(&p, b"");
    setx(&p, "user.binary", &(0..=255u8).collect::<Vec<_>>());
    setx(&p, "user.empty", b"");
    let p = xd.join("hardlinked");
    write(&p, b"hard link with xattrs");
    setx(&p, "user.h", b"shared by both names");
    hard_link(&p, &xd.join("hardlinked.2"));
    for name in ["long_shared_0", "namespaces", "many"] {
        facts.cat_paths.push(format!("/xattrs/{name}"));
    }

    // --- deep nesting --------------------------------------------------------------------
    let mut deep = root.join("deep");
    for level in 0..100 {
        deep.push(format!("lvl_{level:03}"));
    }
    mkdir(&deep);
    write(&deep.join("bottom"), b"100 levels down\n");
    let deep_rel: String = (0..100).map(|l| format!("/lvl_{l:03}")).collect();
    facts.cat_paths.push(format!("/deep{deep_rel}/bottom"));

    mkdir(&root.join("emptydir"));

    // --- many small files: fragments, several directory headers, an indexed listing ------
    let sf = root.join("smallfiles");
    mkdir(&sf);
    for i in 0..SMALL_FILES {
        let len = rng.gen_range(1..=6000);
        let data = if i % 3 == 0 { random_bytes(&mut rng, len) } else { compressible_bytes(&mut rng, len) };
        let p = sf.join(format!("f{i:04}_{}", "s".repeat(i % 17)));
        write(&p, &data);
        chown(&p, OWNERS[i % OWNERS.len()]);
        if i % 97 == 0 {
            facts.cat_paths.push(format!("/smallfiles/f{i:04}_{}", "s".repeat(i % 17)));
        }
    }

    if spec.huge_dir {
        let huge = root.join("huge");
        mkdir(&huge);
        write(&huge.join("target"), b"one inode, 60,000 names");
        let target = huge.join("target");
        for i in 0..HUGE_ENTRIES - 1 {
            let p = huge.join(format!("e{i:06}{}", "x".repeat(i % 23)));
            if i < HUGE_LINKS {
                hard_link(&target, &p);
            } else {
                File::create(&p).unwrap();
            }
        }
        facts.cat_paths.push("/huge/target".into());
        facts.cat_paths.push(format!("/huge/e{:06}{}", HUGE_ENTRIES - 2, "x".repeat((HUGE_ENTRIES - 2) % 23)));
    }

    set_all_mtimes(root);
    facts
}

/// Gives every entry a distinct, deterministic mtime, children before their directory (so
/// creating entries does not change it afterwards). A few edge values by name.
fn set_all_mtimes(root: &Path) {
    let mut counter: i64 = 0;
    let mut stack = vec![(root.to_path_buf(), false)];
    while let Some((path, children_done)) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() && !children_done {
            stack.push((path.clone(), true));
            for e in fs::read_dir(&path).unwrap() {
                stack.push((e.unwrap().path(), false));
            }
            continue;
        }
        counter += 1;
        let secs = match path.file_name().map(OsStr::as_bytes) {
            Some(b"mtime_zero") => 0,
            Some(b"mtime_max") => i64::from(u32::MAX),
            _ => 1_500_000_000 + counter * 7919 % 300_000_000,
        };
        set_mtime(&path, secs);
    }
}

/// Runs `mksquashfs SRC IMG -noappend -quiet -no-progress ARGS...`; panics with its output on
/// failure.
pub fn mksquashfs(src: &Path, img: &Path, args: &[&str]) {
    let out = Command::new("mksquashfs")
        .arg(src)
        .arg(img)
        .args(["-noappend", "-quiet", "-no-progress"])
        .args(args)
        .output()
        .expect("running mksquashfs");
    assert!(
        out.status.success(),
        "mksquashfs {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Scratch space and loop mounts
// ---------------------------------------------------------------------------------------------

/// Unmounts `dir`, waiting out a short `EBUSY`, detaching lazily as a last resort.
fn unmount(dir: &Path) {
    use nix::mount::{umount2, MntFlags};
    for _ in 0..50 {
        match umount2(dir, MntFlags::empty()) {
            Ok(()) => return,
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => {
                eprintln!("umount {}: {e}", dir.display());
                return;
            }
        }
    }
    eprintln!("umount {}: still busy, detaching lazily", dir.display());
    let _ = umount2(dir, MntFlags::MNT_DETACH);
}

/// A temporary directory with a tmpfs of its own mounted on it, unmounted (with everything in
/// it) when dropped. Source trees of 100,000 entries are made and removed there in a fraction
/// of the time a disk filesystem takes (ext4 spends most of it looking for a free inode among
/// recently deleted ones), and nothing is left behind. Falls back to the plain directory when
/// the kernel's tmpfs cannot hold `user.*` xattrs (before Linux 6.6).
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
    tmpfs: bool,
}

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        mount(Some("pxfs-scratch"), dir.path(), Some("tmpfs"), MsFlags::empty(), Some("mode=0755,size=4g"))
            .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", dir.path().display()));
        let probe = dir.path().join("xattr-probe");
        write(&probe, b"");
        let tmpfs = xattr::set(&probe, "user.probe", b"1").is_ok();
        if tmpfs {
            fs::remove_file(&probe).unwrap();
        } else {
            eprintln!("tmpfs has no user.* xattrs on this kernel: building the trees on disk");
            unmount(dir.path());
        }
        Scratch { dir, tmpfs }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.tmpfs {
            unmount(self.dir.path());
        }
    }
}

/// A read-only kernel mount of a SquashFS image (`mount -t squashfs -o loop,ro`), unmounted
/// when dropped, also while a failing test unwinds. The loop device is auto-cleared by the
/// unmount.
#[derive(Debug)]
pub struct LoopMount {
    dir: PathBuf,
}

impl LoopMount {
    /// Mounts `image` on `dir` (created if missing).
    pub fn new(image: &Path, dir: &Path) -> LoopMount {
        mkdir(dir);
        let out = Command::new("mount")
            .args(["-t", "squashfs", "-o", "loop,ro"])
            .arg(image)
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t squashfs -o loop,ro {} {} failed: {}",
            image.display(),
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        LoopMount { dir: dir.to_path_buf() }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        unmount(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Recorded trees
// ---------------------------------------------------------------------------------------------

/// Everything compared about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub nlink: u64,
    pub ino: u64,
    /// `st_blocks` (512-byte units).
    pub blocks: u64,
    /// `(major, minor)` of devices.
    pub rdev: Option<(u32, u32)>,
    pub target: Option<Vec<u8>>,
    /// Names and values, in the order listed.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// [`ContentDigest`] of regular files.
    pub digest: Option<[u8; 32]>,
    /// `(name, inode number, type)` of each entry, in readdir order.
    pub entries: Option<Vec<(Vec<u8>, u64, Kind)>>,
}

/// How many fields of a [`Node`] `compare_trees` compares (all of them).
pub const NODE_FIELDS: usize = 14;

/// Path (`/` for the root, `/a/b` below it) → node.
pub type Tree = BTreeMap<Vec<u8>, Node>;

fn child_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if p != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Printable form of a path or name.
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn kind_of(ft: fs::FileType) -> Kind {
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        panic!("unknown file type {ft:?}")
    }
}

/// Bytes per piece of [`ContentDigest`].
const DIGEST_PIECE: usize = 64 << 10;

/// A digest of file contents that costs a memory scan, not SHA-256, for runs of zeros (a 4 GiB
/// sparse file is read in full four times per variant): the contents are cut into pieces at
/// fixed 64 KiB offsets, whatever the sizes of the reads that deliver them, and SHA-256 runs
/// over each piece tagged `1` followed by its bytes, or, for a piece of zeros only, over `0`
/// and its length. The encoding is injective, so equal digests mean equal contents (every byte
/// is still looked at), exactly as with a SHA-256 of the bytes themselves.
#[derive(Debug, Default)]
pub struct ContentDigest {
    sha: Sha256,
    partial: Vec<u8>,
}

impl ContentDigest {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.partial.is_empty() && data.len() >= DIGEST_PIECE {
                Self::piece(&mut self.sha, &data[..DIGEST_PIECE]);
                data = &data[DIGEST_PIECE..];
                continue;
            }
            let take = (DIGEST_PIECE - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == DIGEST_PIECE {
                Self::piece(&mut self.sha, &self.partial);
                self.partial.clear();
            }
        }
    }

    fn piece(sha: &mut Sha256, piece: &[u8]) {
        // A fold without early exit vectorises: 64 KiB is scanned at memory speed.
        if piece.iter().fold(0u8, |acc, &b| acc | b) == 0 {
            sha.update([0]);
            sha.update((piece.len() as u32).to_le_bytes());
        } else {
            sha.update([1]);
            sha.update(piece);
        }
    }

    pub fn finish(mut self) -> [u8; 32] {
        if !self.partial.is_empty() {
            Self::piece(&mut self.sha, &self.partial);
        }
        self.sha.finalize().into()
    }
}

/// [`ContentDigest`] of everything a reader yields.
pub fn digest_reader(mut r: impl Read) -> [u8; 32] {
    let mut h = ContentDigest::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    h.finish()
}

/// Walks a kernel mount with `lstat` (never following symlinks) and records every node.
/// `xattr_table`: whether the image has an xattr table. Without one, Linux's
/// `squashfs_listxattr()` answers `EOPNOTSUPP` ("check that the file system has xattrs"; seen
/// on directories and symlinks, while regular files, which have no squashfs `listxattr`, list
/// nothing), which means no xattrs; with one, `EOPNOTSUPP` is a failure like any other error.
pub fn kernel_walk(root: &Path, xattr_table: bool) -> Tree {
    let mut tree = Tree::new();
    let mut hashes: HashMap<u64, [u8; 32]> = HashMap::new();
    let mut stack: Vec<(Vec<u8>, PathBuf)> = vec![(b"/".to_vec(), root.to_path_buf())];
    while let Some((rel, abs)) = stack.pop() {
        let m = fs::symlink_metadata(&abs).unwrap_or_else(|e| panic!("lstat {}: {e}", abs.display()));
        let kind = kind_of(m.file_type());
        assert_eq!(m.mtime_nsec(), 0, "{}: squashfs has no sub-second times", show(&rel));
        let mut xattrs = Vec::new();
        let names: Vec<std::ffi::OsString> = match xattr::list(&abs) {
            Ok(names) => names.collect(),
            Err(e) if !xattr_table && e.raw_os_error() == Some(libc::EOPNOTSUPP) => Vec::new(),
            Err(e) => panic!("llistxattr {}: {e}", abs.display()),
        };
        for name in names {
            let value = xattr::get(&abs, &name)
                .unwrap_or_else(|e| panic!("lgetxattr {} {name:?}: {e}", abs.display()))
                .unwrap_or_else(|| panic!("{}: listed xattr {name:?} has no value", abs.display()));
            xattrs.push((name.as_bytes().to_vec(), value));
        }
        let mut node = Node {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: m.mtime(),
            nlink: m.nlink(),
            ino: m.ino(),
            blocks: m.blocks(),
            rdev: matches!(kind, Kind::BlockDev | Kind::CharDev)
                .then(|| (libc::major(m.rdev()), libc::minor(m.rdev()))),
            target: None,
            xattrs,
            digest: None,
            entries: None,
        };
        match kind {
            Kind::File => {
                let sha = *hashes.entry(m.ino()).or_insert_with(|| {
                    digest_reader(File::open(&abs).unwrap_or_else(|e| panic!("open {}: {e}", abs.display())))
                });
                node.digest = Some(sha);
            }
            Kind::Symlink => node.target = Some(fs::read_link(&abs).unwrap().as_os_str().as_bytes().to_vec()),
            Kind::Dir => {
                let mut entries = Vec::new();
                for e in fs::read_dir(&abs).unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display())) {
                    use std::os::unix::fs::DirEntryExt;
                    let e = e.unwrap();
                    let name = e.file_name().as_bytes().to_vec();
                    entries.push((name.clone(), e.ino(), kind_of(e.file_type().unwrap())));
                    stack.push((child_path(&rel, &name), e.path()));
                }
                node.entries = Some(entries);
            }
            _ => {}
        }
        tree.insert(rel, node);
    }
    tree
}

/// One directory as read through the library.
#[derive(Debug)]
pub struct DirInfo {
    pub path: Vec<u8>,
    pub inode: Arc<Inode>,
    pub entries: Vec<DirEntry>,
}

/// A tree read through `parallaxfs_squash`, plus what the lookup/readdir checks need.
#[derive(Debug, Default)]
pub struct ImageWalk {
    pub tree: Tree,
    pub dirs: Vec<DirInfo>,
    /// Inode number → reference, from directory entries.
    pub refs: BTreeMap<u32, InodeRef>,
    /// Path → reference.
    pub paths: BTreeMap<Vec<u8>, InodeRef>,
    pub problems: Vec<String>,
}

/// [`ContentDigest`] of a file read through `read_at` in `chunk`-byte pieces; checks every
/// read is full except at end of file.
pub fn digest_image_file(image: &Image, inode: &Inode, chunk: usize) -> Result<[u8; 32], String> {
    let mut h = ContentDigest::default();
    let mut buf = vec![0u8; chunk];
    let mut offset = 0u64;
    loop {
        let n = image.read_at(inode, offset, &mut buf).map_err(|e| format!("read_at({offset}): {e}"))?;
        let want = (inode.size - offset.min(inode.size)).min(chunk as u64) as usize;
        if n != want {
            return Err(format!("read_at({offset}, {chunk}) returned {n}, want {want}"));
        }
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(h.finish())
}

/// Walks the image through the library from the root, reading file data in `chunk`-byte
/// pieces.
pub fn image_walk(image: &Image, chunk: usize) -> ImageWalk {
    let mut walk = ImageWalk::default();
    let mut hashes: HashMap<u32, [u8; 32]> = HashMap::new();
    let mut stack = vec![(b"/".to_vec(), image.root(), None::<DirEntry>)];
    while let Some((rel, r, entry)) = stack.pop() {
        let inode = match image.inode(r) {
            Ok(i) => i,
            Err(e) => {
                walk.problems.push(format!("{}: inode({r:?}): {e}", show(&rel)));
                continue;
            }
        };
        if let Some(entry) = &entry {
            if entry.ino != inode.ino || entry.kind != inode.kind {
                walk.problems.push(format!(
                    "{}: directory entry says ino {} {:?}, inode says {} {:?}",
                    show(&rel),
                    entry.ino,
                    entry.kind,
                    inode.ino,
                    inode.kind
                ));
            }
        }
        if let Some(prev) = walk.refs.insert(inode.ino, r) {
            if prev != r {
                walk.problems.push(format!(
                    "{}: inode number {} at two references {prev:?} and {r:?}",
                    show(&rel),
                    inode.ino
                ));
            }
        }
        walk.paths.insert(rel.clone(), r);
        let mut xattrs = Vec::new();
        match image.list_xattr(&inode) {
            Ok(names) => {
                for name in names {
                    match image.get_xattr(&inode, &name) {
                        Ok(Some(v)) => xattrs.push((name, v)),
                        Ok(None) => {
                            walk.problems.push(format!("{}: listed xattr {} has no value", show(&rel), show(&name)))
                        }
                        Err(e) => walk.problems.push(format!("{}: get_xattr {}: {e}", show(&rel), show(&name))),
                    }
                }
            }
            Err(e) => walk.problems.push(format!("{}: list_xattr: {e}", show(&rel))),
        }
        if image.get_xattr(&inode, b"user.no-such-attribute").map_or(true, |v| v.is_some()) {
            walk.problems.push(format!("{}: get_xattr of an absent name is not Ok(None)", show(&rel)));
        }
        let mut node = Node {
            kind: inode.kind,
            mode: inode.mode(),
            uid: inode.uid,
            gid: inode.gid,
            size: inode.size,
            mtime: i64::from(inode.mtime),
            nlink: u64::from(inode.nlink),
            ino: u64::from(inode.ino),
            blocks: inode.blocks_512(),
            rdev: matches!(inode.kind, Kind::BlockDev | Kind::CharDev)
                .then(|| (inode.rdev_major(), inode.rdev_minor())),
            target: None,
            xattrs,
            digest: None,
            entries: None,
        };
        match inode.kind {
            Kind::File => {
                if let Some(sha) = hashes.get(&inode.ino) {
                    node.digest = Some(*sha);
                } else {
                    match digest_image_file(image, &inode, chunk) {
                        Ok(sha) => {
                            hashes.insert(inode.ino, sha);
                            node.digest = Some(sha);
                        }
                        Err(e) => walk.problems.push(format!("{}: {e}", show(&rel))),
                    }
                }
            }
            Kind::Symlink => match image.read_link(&inode) {
                Ok(t) => node.target = Some(t.to_vec()),
                Err(e) => walk.problems.push(format!("{}: read_link: {e}", show(&rel))),
            },
            Kind::Dir => match image.read_dir(&inode) {
                Ok(entries) => {
                    node.entries = Some(entries.iter().map(|e| (e.name.to_vec(), u64::from(e.ino), e.kind)).collect());
                    for e in &entries {
                        stack.push((child_path(&rel, &e.name), e.inode_ref, Some(e.clone())));
                    }
                    walk.dirs.push(DirInfo { path: rel.clone(), inode: inode.clone(), entries });
                }
                Err(e) => walk.problems.push(format!("{}: read_dir: {e}", show(&rel))),
            },
            _ => {}
        }
        if inode.kind != Kind::Symlink && image.read_link(&inode).is_ok() {
            walk.problems.push(format!("{}: read_link of a {:?} succeeded", show(&rel), inode.kind));
        }
        walk.tree.insert(rel, node);
    }
    walk
}

/// Field-by-field differences between the kernel's view and the library's.
pub fn compare_trees(label: &str, kernel: &Tree, image: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for path in kernel.keys().filter(|p| !image.contains_key(*p)) {
        out.push(format!("{label}: {} only in the kernel mount", show(path)));
    }
    for path in image.keys().filter(|p| !kernel.contains_key(*p)) {
        out.push(format!("{label}: {} only in the image walk", show(path)));
    }
    for (path, k) in kernel {
        let Some(i) = image.get(path) else { continue };
        // Exhaustive: a new field fails to compile here until it is compared and counted.
        let Node {
            kind: _,
            mode: _,
            uid: _,
            gid: _,
            size: _,
            mtime: _,
            nlink: _,
            ino: _,
            blocks: _,
            rdev: _,
            target: _,
            xattrs: _,
            digest: _,
            entries: _,
        } = k;
        let mut diff = |field: &str, kv: String, iv: String| {
            out.push(format!("{label}: {}: {field}: kernel {kv} != image {iv}", show(path)));
        };
        macro_rules! field {
            ($f:ident) => {
                if k.$f != i.$f {
                    diff(stringify!($f), format!("{:?}", k.$f), format!("{:?}", i.$f));
                }
            };
        }
        field!(kind);
        if k.mode != i.mode {
            diff("mode", format!("{:o}", k.mode), format!("{:o}", i.mode));
        }
        field!(uid);
        field!(gid);
        field!(size);
        field!(mtime);
        field!(nlink);
        field!(ino);
        field!(blocks);
        field!(rdev);
        if k.target != i.target {
            let s = |t: &Option<Vec<u8>>| t.as_deref().map(show).unwrap_or_default();
            diff("symlink target", s(&k.target), s(&i.target));
        }
        if k.xattrs != i.xattrs {
            let s = |x: &[(Vec<u8>, Vec<u8>)]| {
                x.iter()
                    .map(|(n, v)| format!("{}={} bytes sha {}", show(n), v.len(), &hex(&Sha256::digest(v))[..12]))
                    .collect::<Vec<_>>()
            };
            diff("xattrs", format!("{:?}", s(&k.xattrs)), format!("{:?}", s(&i.xattrs)));
        }
        if k.digest != i.digest {
            let s = |h: &Option<[u8; 32]>| h.map(|h| hex(&h)).unwrap_or_default();
            diff("content digest", s(&k.digest), s(&i.digest));
        }
        if k.entries != i.entries {
            let (ke, ie) = (k.entries.clone().unwrap_or_default(), i.entries.clone().unwrap_or_default());
            let at = ke.iter().zip(&ie).position(|(a, b)| a != b).unwrap_or(ke.len().min(ie.len()));
            let s = |e: Option<&(Vec<u8>, u64, Kind)>| e.map(|(n, ino, k)| format!("{} ino {ino} {k:?}", show(n)));
            diff(
                "entries",
                format!("{} entries, #{at} = {:?}", ke.len(), s(ke.get(at))),
                format!("{} entries, #{at} = {:?}", ie.len(), s(ie.get(at))),
            );
        }
    }
    out
}

/// Panics listing `problems` (at most 60) if there are any.
pub fn assert_no_problems(what: &str, problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    let mut msg = format!("{what}: {} problem(s):\n", problems.len());
    for p in problems.iter().take(60) {
        msg.push_str("  ");
        msg.push_str(p);
        msg.push('\n');
    }
    if problems.len() > 60 {
        let _ = writeln!(msg, "  ... and {} more", problems.len() - 60);
    }
    panic!("{msg}");
}

/// Writes `bytes` to a new file (for malformed inputs in error tests).
pub fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}
