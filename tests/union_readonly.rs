//! The read-only union mount as its users meet it: parallel readers, EROFS for every write,
//! statfs, xattrs (overlay-private ones hidden, `trusted.*` only for root), permissions, and
//! the command's error cases (bad lowerdir, corrupt image, missing or busy mountpoint: one
//! clear stderr line, exit non-zero, nothing left mounted, no process left).
//!
//! Every test builds its own stack (generated layers plus hand-made ones carrying private
//! xattrs and multi-megabyte files; SquashFS images built with `mksquashfs` at test time) below
//! its own scratch directory, and checks at the end that no layer changed by a single byte or
//! timestamp (overlay_semantics.md §9 items 35 and 36).
//!
//! Needs root; fails, never skips, without it.

mod union_common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::statvfs::{statvfs, FsFlags, Statvfs};
use nix::sys::time::TimeSpec;
use nix::unistd::AccessFlags;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use union_common::*;

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

/// Xattrs of the hand-made objects: visible ones and overlay-private ones.
const VISIBLE_XATTRS: [(&str, &[u8]); 2] = [("user.visible", b"shown to all"), ("trusted.test.t", b"root only")];
const PRIVATE_XATTRS: [(&str, &[u8]); 5] = [
    ("trusted.overlay.origin", b"\x00\xfb\x21"),
    ("trusted.overlay.impure", b"y"),
    ("user.overlay.redirect", b"/elsewhere"),
    ("user.overlay.metacopy", b""),
    ("user.fuseoverlayfs.origin", b"x"),
];

fn meta(perm: u32, xattrs: bool) -> Meta {
    let mut m = Meta { perm, uid: 0, gid: 0, mtime: (1_600_000_000, 123_000_000), xattrs: Vec::new() };
    if xattrs {
        for (n, v) in VISIBLE_XATTRS.iter().chain(PRIVATE_XATTRS.iter()) {
            m.xattrs.push((n.to_string(), v.to_vec()));
        }
    }
    m
}

/// A hand-made layer: files and a directory carrying visible and private xattrs, a root-only
/// file, and two multi-block files (one compressible, one not).
fn crafted_layer(tag: &str, image: bool) -> LayerSpec {
    let mut root = empty_layer(false).root;
    let mut add = |name: String, e: Entry| root.children.insert(name.into_bytes(), e);
    add(format!("xattrs-{tag}"), Entry::File(meta(0o644, true), Content { seed: 1, len: 100, style: 1 }));
    add(format!("root-only-{tag}"), Entry::File(meta(0o600, false), Content { seed: 2, len: 10, style: 1 }));
    add(format!("big-text-{tag}"), Entry::File(meta(0o644, false), Content { seed: 3, len: 3_000_017, style: 1 }));
    add(format!("big-random-{tag}"), Entry::File(meta(0o644, false), Content { seed: 4, len: 2_500_000, style: 0 }));
    add(format!("link-{tag}"), Entry::Symlink(meta(0o777, false), format!("big-text-{tag}").into_bytes()));
    let mut dir = DirSpec { meta: meta(0o755, true), opaque: false, children: BTreeMap::new() };
    dir.children
        .insert(b"inside".to_vec(), Entry::File(meta(0o644, false), Content { seed: 5, len: 70_000, style: 0 }));
    add(format!("dir-{tag}"), Entry::Dir(dir));
    LayerSpec { image, root, filler: false }
}

/// A stack: a hand-made image on top, a hand-made directory layer, then `generated` generated
/// layers with larger files than the defaults.
fn fixture_spec(seed: u64, generated: usize) -> StackSpec {
    let params = GenParams { big_file_prob: 0.2, big_file_max: 1_200_000, ..GenParams::default() };
    let mut spec = gen_stack(seed, generated.max(2), &params);
    spec.layers.truncate(generated.max(2));
    spec.layers.insert(0, crafted_layer("dir", false));
    spec.layers.insert(0, crafted_layer("img", true));
    spec
}

/// A fixture written to disk, with the fingerprints of its layers.
struct Fixture {
    built: BuiltStack,
    model: Model,
    before: Vec<BTreeMap<Vec<u8>, String>>,
}

impl Fixture {
    fn new(base: &Path, seed: u64, generated: usize) -> Fixture {
        let spec = fixture_spec(seed, generated);
        let built = build_stack(&spec, base, Encoding::Native);
        let model = model(&spec);
        let before = Fixture::fingerprints(&built);
        Fixture { built, model, before }
    }

    /// Every layer as mounted (directories, image files) and the source directory of each.
    fn fingerprints(built: &BuiltStack) -> Vec<BTreeMap<Vec<u8>, String>> {
        built.layers.iter().chain(built.dirs.iter()).map(|p| fingerprint(p)).collect()
    }

    /// No layer changed: contents, names, inode numbers, modes, owners, times (atime of files
    /// and directories of directory layers included), xattrs.
    fn assert_layers_unchanged(&self) {
        let after = Fixture::fingerprints(&self.built);
        let paths: Vec<&PathBuf> = self.built.layers.iter().chain(self.built.dirs.iter()).collect();
        let mut diffs = Vec::new();
        for (i, (b, a)) in self.before.iter().zip(&after).enumerate() {
            diffs.extend(diff_fingerprints(b, a).into_iter().map(|d| format!("{}: {d}", paths[i].display())));
        }
        assert_no_diffs("layers changed while mounted", &diffs);
    }

    /// The source file a union path is read from (image layers: the directory it was built
    /// from).
    fn source_of(&self, upath: &[u8]) -> PathBuf {
        let (layer, lpath) = &self.model[upath].stack[0];
        self.built.dirs[*layer].join(OsStr::from_bytes(lpath))
    }

    /// Union paths of regular files of at least `min` bytes (by the source).
    fn files(&self, min: u64) -> Vec<Vec<u8>> {
        self.model
            .iter()
            .filter(|(_, m)| m.kind == 'f')
            .map(|(p, _)| p.clone())
            .filter(|p| fs::metadata(self.source_of(p)).unwrap().len() >= min)
            .collect()
    }
}

fn upath(mp: &Path, p: &[u8]) -> PathBuf {
    if p.is_empty() {
        mp.to_path_buf()
    } else {
        mp.join(OsStr::from_bytes(p))
    }
}

// ---------------------------------------------------------------------------------------------
// Parallel readers
// ---------------------------------------------------------------------------------------------

/// What one reader process prints: every object (type, mode, owner, size, nlink, st_ino,
/// mtime, path, link target) sorted, SHA-256 of every regular file, and every xattr.
const READER_SCRIPT: &str = r#"
set -e
cd "$1"
find . -printf '%y %M %U %G %s %n %i %T@ %p -> %l\n' | LC_ALL=C sort
find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
getfattr -R -P -h -d -m - -e hex .
"#;

fn reader_command(mp: &Path, out: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(READER_SCRIPT).arg("reader").arg(mp);
    c.stdin(Stdio::null()).stdout(File::create(out).unwrap()).stderr(Stdio::piped());
    c
}

fn wait_reader(child: std::process::Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// 16 reader processes at once, on a cold mount, each walk the whole tree, stat everything,
/// hash every file and dump every xattr: each prints exactly what one reader alone printed.
/// Then 16 threads at once walk the mount and read the large files at random offsets: each
/// walk equals a walk done alone, every byte equals the source layer's.
#[test]
fn parallel_readers_see_what_a_single_reader_sees() {
    require_root();
    let scratch = Scratch::new("ro-parallel");
    let base = scratch.path();
    let fx = Fixture::new(base, 7001, 6);
    let mp = base.join("pfs");
    fs::create_dir(&mp).unwrap();

    // One reader alone, cold.
    let single = base.join("single.out");
    let m = TestMount::lowerdir(&fx.built.layers, &mp);
    drop_caches();
    let t = Instant::now();
    wait_reader(reader_command(&mp, &single).spawn().unwrap(), "the single reader");
    let single_time = t.elapsed();
    let reference = fs::read(&single).unwrap();
    let text = String::from_utf8_lossy(&reference);
    let objects = text.lines().filter(|l| l.contains(" -> ")).count();
    let is_hash = |l: &str| l.len() > 66 && l[..64].bytes().all(|c| c.is_ascii_hexdigit()) && &l[64..66] == "  ";
    let hashes = text.lines().filter(|l| is_hash(l)).count();
    assert!(objects > 50 && hashes > 20, "the reader saw too little to mean anything:\n{text}");
    for (n, v) in VISIBLE_XATTRS {
        assert!(text.contains(&format!("{n}=0x{}", hex(v))), "the reader's getfattr did not show {n}:\n{text}");
    }
    m.unmount();

    // 16 readers at once, on a fresh mount (cold daemon caches) and cold kernel caches.
    let m = TestMount::lower_flags(&fx.built.layers, &mp);
    drop_caches();
    let t = Instant::now();
    let outs: Vec<PathBuf> = (0..16).map(|i| base.join(format!("reader-{i:02}.out"))).collect();
    let children: Vec<_> = outs.iter().map(|o| reader_command(&mp, o).spawn().unwrap()).collect();
    for (i, c) in children.into_iter().enumerate() {
        wait_reader(c, &format!("reader {i}"));
    }
    let parallel_time = t.elapsed();
    for (i, o) in outs.iter().enumerate() {
        let got = fs::read(o).unwrap();
        if got != reference {
            let diff = Command::new("diff").arg(&single).arg(o).output().unwrap();
            panic!("reader {i} saw something else than the single reader:\n{}", String::from_utf8_lossy(&diff.stdout));
        }
    }

    // 16 threads at once: full walks (lstat, readdir d_ino, xattrs, hashes) and random reads.
    drop_caches();
    let alone = walk(&mp, false);
    drop_caches();
    let big = fx.files(100_000);
    assert!(big.len() >= 4, "too few large files: {big:?}");
    let sources: Vec<Vec<u8>> = big.iter().map(|p| read_noatime(&fx.source_of(p))).collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..16u64)
            .map(|i| {
                let (mp, alone, big, sources) = (&mp, &alone, &big, &sources);
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(i);
                    let mut problems = Vec::new();
                    if i % 2 == 0 {
                        let tree = walk(mp, false);
                        let cmp = Cmp { ino: true, dev: true, same_layers: true };
                        problems.extend(diff_trees("alone", alone, &format!("thread {i}"), &tree, cmp));
                        if tree.dirents != alone.dirents {
                            problems.push(format!("thread {i}: readdir results differ"));
                        }
                    }
                    for _ in 0..300 {
                        let k = rng.gen_range(0..big.len());
                        let src = &sources[k];
                        let off = rng.gen_range(0..src.len() as u64 + 10);
                        let len =
                            *[1usize, 4096, 4095, 65_536, 131_072, 131_073, 1 << 20].get(rng.gen_range(0..7)).unwrap();
                        let f = File::open(upath(mp, &big[k])).unwrap();
                        let mut buf = vec![0u8; len];
                        let n = read_full_at(&f, &mut buf, off).unwrap();
                        let want = &src[(off as usize).min(src.len())..(off as usize + len).min(src.len())];
                        if &buf[..n] != want {
                            problems.push(format!("thread {i}: /{} at {off}+{len}: wrong bytes", lossy(&big[k])));
                        }
                    }
                    problems
                })
            })
            .collect();
        let problems: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        assert_no_diffs("parallel threads", &problems);
    });
    let threads_time = t.elapsed();
    eprintln!(
        "{objects} objects, {hashes} files; one reader {single_time:?}, 16 readers {parallel_time:?}, 16 threads {threads_time:?}"
    );
    m.unmount();
    fx.assert_layers_unchanged();
}

/// A file's bytes, read without touching its atime (the layers must stay unchanged).
fn read_noatime(p: &Path) -> Vec<u8> {
    let mut f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(p).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

// ---------------------------------------------------------------------------------------------
// EROFS
// ---------------------------------------------------------------------------------------------

fn errno_of<T>(r: io::Result<T>) -> Option<i32> {
    match r {
        Ok(_) => Some(0),
        Err(e) => e.raw_os_error(),
    }
}

fn nix_errno<T>(r: nix::Result<T>) -> Option<i32> {
    match r {
        Ok(_) => Some(0),
        Err(e) => Some(e as i32),
    }
}

fn open_errno(p: &Path, flags: OFlag) -> Option<i32> {
    nix_errno(nix::fcntl::open(p, flags | OFlag::O_CLOEXEC, Mode::from_bits_truncate(0o644)))
}

/// Every modifying call on `p` (an existing object of kind `kind`, in directory `dir` of the
/// mount; `dir == p` for the mount's root, whose name belongs to the filesystem below),
/// `sibling` another object of the mount: each must fail with EROFS. Returns (call, errno)
/// pairs that did not.
fn modifying_calls(p: &Path, kind: char, dir: &Path, sibling: &Path) -> Vec<(String, Option<i32>)> {
    let fresh = |s: &str| dir.join(format!("new-{s}"));
    let root = p == dir;
    let mut r: Vec<(String, Option<i32>)> = Vec::new();
    let mut add = |what: &str, e: Option<i32>| r.push((format!("{what} {}", p.display()), e));
    let ts = TimeSpec::new(1, 0);
    add("chmod", errno_of(fs::set_permissions(p, fs::Permissions::from_mode(0o700))));
    add("lchown", errno_of(std::os::unix::fs::lchown(p, Some(1), Some(1))));
    add("utimensat", nix_errno(nix::sys::stat::utimensat(AT_FDCWD, p, &ts, &ts, UtimensatFlags::NoFollowSymlink)));
    add("setxattr user", errno_of(xattr::set(p, "user.new", b"v")));
    add("setxattr trusted", errno_of(xattr::set(p, "trusted.new", b"v")));
    add("setxattr private", errno_of(xattr::set(p, "trusted.overlay.opaque", b"y")));
    if !root {
        add("rename", errno_of(fs::rename(p, fresh("renamed"))));
        add("rename onto", errno_of(fs::rename(p, sibling)));
        let exchange = RenameFlags::RENAME_EXCHANGE;
        add("rename exchange", nix_errno(nix::fcntl::renameat2(AT_FDCWD, p, AT_FDCWD, sibling, exchange)));
    }
    match kind {
        'f' => {
            add("removexattr", errno_of(xattr::remove(p, "user.visible")));
            add("open O_WRONLY", open_errno(p, OFlag::O_WRONLY));
            add("open O_RDWR", open_errno(p, OFlag::O_RDWR));
            add("open O_RDONLY|O_TRUNC", open_errno(p, OFlag::O_RDONLY | OFlag::O_TRUNC));
            add("open O_WRONLY|O_APPEND", open_errno(p, OFlag::O_WRONLY | OFlag::O_APPEND));
            add("truncate", nix_errno(nix::unistd::truncate(p, 0)));
            add("unlink", errno_of(fs::remove_file(p)));
            add("link", errno_of(fs::hard_link(p, fresh("link"))));
            add("access W_OK", nix_errno(nix::unistd::access(p, AccessFlags::W_OK)));
        }
        'd' => {
            add("removexattr", errno_of(xattr::remove(p, "user.visible")));
            if !root {
                add("rmdir", errno_of(fs::remove_dir(p)));
            }
            add("open O_TMPFILE", open_errno(p, OFlag::O_TMPFILE | OFlag::O_RDWR));
            add("create", errno_of(File::create(p.join("created"))));
            add(
                "open O_CREAT|O_EXCL",
                open_errno(&p.join("created2"), OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY),
            );
            add("mkdir", errno_of(fs::create_dir(p.join("newdir"))));
            add("symlink", errno_of(std::os::unix::fs::symlink("t", p.join("newlink"))));
            add("mkfifo", nix_errno(nix::unistd::mkfifo(&p.join("fifo"), Mode::from_bits_truncate(0o644))));
            let dev = nix::sys::stat::makedev(1, 3);
            add("mknod", nix_errno(nix::sys::stat::mknod(&p.join("dev"), SFlag::S_IFCHR, Mode::S_IRUSR, dev)));
            add("whiteout mknod", nix_errno(nix::sys::stat::mknod(&p.join("wh"), SFlag::S_IFCHR, Mode::S_IRUSR, 0)));
            add("access W_OK", nix_errno(nix::unistd::access(p, AccessFlags::W_OK)));
        }
        'l' => {
            add("unlink", errno_of(fs::remove_file(p)));
        }
        _ => unreachable!(),
    }
    r.into_iter().filter(|(_, e)| *e != Some(libc::EROFS)).collect()
}

/// Without upperdir every modifying call fails with EROFS on every kind of object, whichever
/// layer kind provides it, while reads keep working; /proc shows the mount read-only; no
/// layer changes.
#[test]
fn every_write_is_erofs() {
    require_root();
    let scratch = Scratch::new("ro-erofs");
    let base = scratch.path();
    let fx = Fixture::new(base, 7002, 4);
    let mp = base.join("pfs");
    fs::create_dir(&mp).unwrap();
    let m = TestMount::lowerdir(&fx.built.layers, &mp);

    let line = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = line.lines().find(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap())).unwrap().to_string();
    let opts = line.split(' ').nth(5).unwrap();
    assert!(opts.split(',').any(|o| o == "ro"), "mount options {opts:?} lack ro: {line}");
    // fuser 0.18 mounts with type "fuse" (its mount(2) path ignores the subtype).
    assert!(line.contains(" - fuse"), "not a FUSE mount: {line}");

    let targets: Vec<(&str, char)> = vec![
        ("xattrs-img", 'f'),
        ("xattrs-dir", 'f'),
        ("big-text-img", 'f'),
        ("link-img", 'l'),
        ("link-dir", 'l'),
        ("dir-img", 'd'),
        ("dir-dir", 'd'),
        ("dir-img/inside", 'f'),
        ("", 'd'),
    ];
    let mut problems = Vec::new();
    let mut calls = 0;
    let sibling = mp.join("big-random-img");
    for (rel, kind) in &targets {
        let p = upath(&mp, rel.as_bytes());
        let dir = if rel.is_empty() { mp.clone() } else { p.parent().unwrap().to_path_buf() };
        let before = observe(&p).unwrap();
        let bad = modifying_calls(&p, *kind, &dir, &sibling);
        calls += 1;
        problems.extend(bad.into_iter().map(|(what, e)| format!("{what}: errno {e:?}, want EROFS")));
        let after = observe(&p).unwrap();
        if before != after {
            problems.push(format!("{}: changed by the failed calls: {before:?} -> {after:?}", p.display()));
        }
    }
    // Reads still work, on the same objects.
    let mut text = String::new();
    File::open(mp.join("xattrs-img")).unwrap().read_to_string(&mut text).unwrap();
    assert_eq!(text.as_bytes(), &Content { seed: 1, len: 100, style: 1 }.bytes()[..]);
    assert_eq!(fs::read_link(mp.join("link-dir")).unwrap(), Path::new("big-text-dir"));
    assert!(calls == targets.len());
    assert_no_diffs("modifying calls on a read-only union", &problems);
    // Nothing was created anywhere.
    for name in ["new-renamed", "new-link", "created", "newdir"] {
        assert!(fs::symlink_metadata(mp.join(name)).is_err(), "{name} appeared");
    }
    m.unmount();
    fx.assert_layers_unchanged();
}

// ---------------------------------------------------------------------------------------------
// statfs
// ---------------------------------------------------------------------------------------------

fn statfs_fields(s: &Statvfs) -> [(&'static str, u64); 7] {
    [
        ("f_bsize", s.block_size()),
        ("f_frsize", s.fragment_size()),
        ("f_blocks", s.blocks()),
        ("f_bfree", s.blocks_free()),
        ("f_bavail", s.blocks_available()),
        ("f_files", s.files()),
        ("f_ffree", s.files_free()),
    ]
}

/// statfs reports the topmost layer: an image as the kernel's squashfs reports it (compared
/// with the kernel's overlay of the same layers), a directory as its filesystem does; names
/// are at most 255 bytes; the mount is flagged read-only; f_type is FUSE's.
#[test]
fn statfs_reports_the_top_layer() {
    require_root();
    let scratch = Scratch::new("ro-statfs");
    let base = scratch.path();
    let fx = Fixture::new(base, 7003, 3);

    // Top layer: an image.
    let kernel = KernelUnion::mount(&fx.built, base);
    let mp = base.join("pfs");
    fs::create_dir(&mp).unwrap();
    let m = TestMount::lowerdir(&fx.built.layers, &mp);
    let (k, p) = (statvfs(kernel.overlay.path()).unwrap(), statvfs(&mp).unwrap());
    for ((name, kv), (_, pv)) in statfs_fields(&k).iter().zip(statfs_fields(&p).iter()) {
        assert_eq!(kv, pv, "{name}: kernel overlay {kv}, parallaxfs {pv}");
    }
    assert!(p.blocks() > 0 && p.files() > 5 && p.block_size() == 131_072, "implausible image statfs: {p:?}");
    // By design: the kernel's overlay reports the largest f_namelen of its layers (256, the
    // squashfs SQUASHFS_NAME_LEN); parallaxfs never reports more than the 255 bytes a name
    // can have through it (overlay_semantics.md §9 item 33).
    assert_eq!(k.name_max(), 256);
    assert_eq!(p.name_max(), 255);
    assert!(p.flags().contains(FsFlags::ST_RDONLY), "statvfs flags {:?} lack ST_RDONLY", p.flags());
    let sf = nix::sys::statfs::statfs(&mp).unwrap();
    assert_eq!(sf.filesystem_type().0 as i64, FUSE_SUPER_MAGIC);
    m.unmount();
    drop(kernel);

    // Top layer: a directory (the image layer dropped).
    let mp2 = base.join("pfs2");
    fs::create_dir(&mp2).unwrap();
    let m = TestMount::lower_flags(&fx.built.layers[1..], &mp2);
    let (d, p) = (statvfs(&fx.built.layers[1]).unwrap(), statvfs(&mp2).unwrap());
    for ((name, dv), (_, pv)) in statfs_fields(&d).iter().zip(statfs_fields(&p).iter()) {
        // Free counts move with whatever else runs on that filesystem.
        if !name.contains("free") && !name.contains("avail") {
            assert_eq!(dv, pv, "{name}: the top directory's filesystem {dv}, parallaxfs {pv}");
        }
    }
    assert_eq!(p.name_max(), d.name_max().min(255));
    assert!(p.flags().contains(FsFlags::ST_RDONLY));
    m.unmount();
    fx.assert_layers_unchanged();
}

// ---------------------------------------------------------------------------------------------
// xattrs and permissions
// ---------------------------------------------------------------------------------------------

/// Runs `argv` as uid/gid 65534 with no supplementary groups.
fn as_nobody(argv: &[&OsStr]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .expect("running setpriv")
}

/// Overlay-private xattrs (`trusted.overlay.*`, `user.overlay.*`, `user.fuseoverlayfs.*`) are
/// never listed and read as ENODATA, on image and directory layers; `trusted.*` is listed to
/// root only; other xattrs read back byte for byte; size queries agree with the values;
/// default permissions apply to other users.
#[test]
fn xattrs_hide_private_names_and_trusted_from_users() {
    require_root();
    let scratch = Scratch::new("ro-xattr");
    let base = scratch.path();
    // Other users must reach the mount.
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
    let fx = Fixture::new(base, 7004, 2);
    let mp = base.join("pfs");
    fs::create_dir(&mp).unwrap();
    let m = TestMount::lowerdir(&fx.built.layers, &mp);

    let mut problems = Vec::new();
    for rel in ["xattrs-img", "xattrs-dir", "dir-img", "dir-dir"] {
        let p = mp.join(rel);
        // The layer itself holds every private xattr (checked on the source directory).
        let src = fx.source_of(rel.as_bytes());
        for (n, v) in PRIVATE_XATTRS {
            assert_eq!(xattr::get(&src, n).unwrap().as_deref(), Some(v), "fixture: {n} missing on {src:?}");
        }
        let mut listed: Vec<String> = xattr::list(&p).unwrap().map(|n| n.to_string_lossy().into_owned()).collect();
        listed.sort();
        let mut want: Vec<String> = VISIBLE_XATTRS.iter().map(|(n, _)| n.to_string()).collect();
        want.sort();
        if listed != want {
            problems.push(format!("{rel}: listed {listed:?}, want {want:?}"));
        }
        for (n, v) in VISIBLE_XATTRS {
            match xattr::get(&p, n) {
                Ok(Some(got)) if got == v => {}
                other => problems.push(format!("{rel}: get {n}: {other:?}, want {v:?}")),
            }
        }
        for (n, _) in PRIVATE_XATTRS {
            match xattr::get(&p, n) {
                Ok(None) => {}
                other => problems.push(format!("{rel}: get {n}: {other:?}, want ENODATA")),
            }
        }
        match xattr::get(&p, "user.absent") {
            Ok(None) => {}
            other => problems.push(format!("{rel}: get user.absent: {other:?}, want ENODATA")),
        }
        // The same through getfattr, as root and as another user.
        let root = Command::new("getfattr").args(["-h", "-d", "-m", "-", "-e", "hex"]).arg(&p).output().unwrap();
        let root_text = String::from_utf8_lossy(&root.stdout).into_owned();
        let user = as_nobody(&[
            OsStr::new("getfattr"),
            OsStr::new("-h"),
            OsStr::new("-d"),
            OsStr::new("-m"),
            OsStr::new("-"),
            p.as_os_str(),
        ]);
        let user_text = String::from_utf8_lossy(&user.stdout).into_owned();
        if !(root.status.success() && root_text.contains("trusted.test.t=") && root_text.contains("user.visible=")) {
            problems.push(format!("{rel}: getfattr as root: {root_text:?} {}", String::from_utf8_lossy(&root.stderr)));
        }
        if !(user.status.success() && !user_text.contains("trusted.") && user_text.contains("user.visible=")) {
            problems
                .push(format!("{rel}: getfattr as uid 65534: {user_text:?} {}", String::from_utf8_lossy(&user.stderr)));
        }
        if root_text.contains("overlay") || user_text.contains("overlay") {
            problems.push(format!("{rel}: getfattr shows a private xattr: {root_text:?} {user_text:?}"));
        }
    }
    assert_no_diffs("xattrs through the union", &problems);

    // Default permissions: another user cannot read a 0600 root file, can read a 0644 one.
    for tag in ["img", "dir"] {
        let denied = as_nobody(&[OsStr::new("cat"), mp.join(format!("root-only-{tag}")).as_os_str()]);
        assert!(
            !denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
            "uid 65534 read a 0600 root file of the {tag} layer: {denied:?}"
        );
        let allowed = as_nobody(&[OsStr::new("cat"), mp.join(format!("xattrs-{tag}")).as_os_str()]);
        assert!(allowed.status.success(), "uid 65534 could not read a 0644 file: {allowed:?}");
        assert_eq!(allowed.stdout, Content { seed: 1, len: 100, style: 1 }.bytes());
    }
    m.unmount();
    fx.assert_layers_unchanged();
}

// ---------------------------------------------------------------------------------------------
// Command errors
// ---------------------------------------------------------------------------------------------

/// Runs the command under test; checks: exit non-zero, nothing on stdout, exactly one line on
/// stderr starting `parallaxfs: ` and containing `needle`, no new mount at `mp`, no new
/// process left serving `mp`.
fn assert_mount_fails(args: &[&OsStr], mp: &Path, needle: &str) {
    let mounts_before = mount_count(mp);
    let pids = |mp: &Path| daemons_of(mp).iter().map(|p| p.pid).collect::<Vec<_>>();
    let daemons_before = pids(mp);
    let out = Command::new(bin()).args(args).stdin(Stdio::null()).output().unwrap();
    // Guard: if it mounted after all, unmount it (also when an assertion below fails).
    let guard = (mount_count(mp) > mounts_before).then(|| TestMount::adopt(mp, None));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "parallaxfs {args:?} succeeded; stderr {err:?}");
    assert!(out.stdout.is_empty(), "parallaxfs {args:?} printed on stdout: {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(
        err.ends_with('\n') && err.matches('\n').count() == 1 && err.starts_with("parallaxfs: "),
        "parallaxfs {args:?}: want one `parallaxfs: ...` line on stderr, got {err:?}"
    );
    assert!(err.contains(needle), "parallaxfs {args:?}: stderr {err:?} does not mention {needle:?}");
    assert!(guard.is_none(), "parallaxfs {args:?} failed but left a mount at {}", mp.display());
    assert_eq!(mount_count(mp), mounts_before);
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids(mp) != daemons_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pids(mp), daemons_before, "parallaxfs {args:?} left processes");
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Bad lowerdirs, corrupt images, missing, non-directory and busy mountpoints: one clear
/// line, exit non-zero, nothing mounted, nothing left running. A busy mountpoint's existing
/// mount is left serving.
#[test]
fn mount_errors_are_one_line_and_leave_nothing() {
    require_root();
    let scratch = Scratch::new("ro-errors");
    let base = scratch.path();
    let layer = scratch.mkdir("layer");
    fs::write(layer.join("f"), b"content").unwrap();
    let mp = scratch.mkdir("mp");
    let mps = mp.to_str().unwrap();
    let ls = layer.to_str().unwrap();

    // A good image, then broken copies of it.
    let src = scratch.mkdir("src");
    fs::write(src.join("a-victim"), Content { seed: 9, len: 600_000, style: 1 }.bytes()).unwrap();
    fs::write(src.join("z-other"), b"small and fine").unwrap();
    let good = base.join("good.sqfs");
    mksquashfs(&src, &good);
    let bytes = fs::read(&good).unwrap();
    let inode_table = u64::from_le_bytes(bytes[64..72].try_into().unwrap()) as usize;
    let variant = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        let p = base.join(name);
        fs::write(&p, b).unwrap();
        p.to_str().unwrap().to_string()
    };
    // mksquashfs pads images to 4 KiB: cut into what the superblock says is used.
    let used = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let truncated = variant("truncated.sqfs", &|b| b.truncate(used / 2));
    let sb_only = variant("sb-only.sqfs", &|b| b.truncate(96));
    let bad_magic = variant("bad-magic.sqfs", &|b| b[0] = b'X');
    let bad_inodes = variant("bad-inodes.sqfs", &|b| b[inode_table..inode_table + 64].fill(0xff));
    let bad_version = variant("bad-version.sqfs", &|b| b[28] = 3);
    let empty = variant("empty.sqfs", &|b| b.clear());
    let text = base.join("text.sqfs");
    fs::write(&text, "not an image\n").unwrap();
    let texts = text.to_str().unwrap();
    let missing = base.join("missing");
    let missings = missing.to_str().unwrap();

    let lowerdir = |l: &str| format!("lowerdir={l}");
    let cases: Vec<(Vec<String>, PathBuf, String)> = vec![
        (vec!["-o".into(), lowerdir(&format!("{missings}:{ls}")), mps.into()], mp.clone(), missings.into()),
        (vec!["-o".into(), lowerdir(&format!("{ls}:{missings}")), mps.into()], mp.clone(), missings.into()),
        (vec!["mount".into(), "--lower".into(), missings.into(), mps.into()], mp.clone(), missings.into()),
        (vec!["-o".into(), lowerdir(texts), mps.into()], mp.clone(), texts.into()),
        (vec!["-o".into(), lowerdir(&format!("{ls}:{truncated}")), mps.into()], mp.clone(), truncated.clone()),
        (vec!["-o".into(), lowerdir(&sb_only), mps.into()], mp.clone(), sb_only.clone()),
        (vec!["-o".into(), lowerdir(&bad_magic), mps.into()], mp.clone(), bad_magic.clone()),
        (vec!["mount".into(), "--lower".into(), bad_inodes.clone(), mps.into()], mp.clone(), bad_inodes.clone()),
        (vec!["-o".into(), lowerdir(&bad_version), mps.into()], mp.clone(), bad_version.clone()),
        (vec!["-o".into(), lowerdir(&empty), mps.into()], mp.clone(), empty.clone()),
        (vec!["-o".into(), "lowerdir=".into(), mps.into()], mp.clone(), "lowerdir".into()),
        (vec!["-o".into(), "ro".into(), mps.into()], mp.clone(), "lowerdir".into()),
        (vec!["-o".into(), lowerdir(ls), missings.into()], missing.clone(), missings.into()),
        (vec!["mount".into(), "--lower".into(), ls.into(), missings.into()], missing.clone(), missings.into()),
        (vec!["-o".into(), lowerdir(ls), format!("{ls}/f")], layer.join("f"), format!("{ls}/f")),
    ];
    for (args, at, needle) in &cases {
        let args: Vec<&OsStr> = args.iter().map(|a| os(a)).collect();
        assert_mount_fails(&args, at, needle);
    }

    // Busy: a second mount on a live mountpoint fails and leaves the first one serving.
    let first = TestMount::lowerdir(std::slice::from_ref(&layer), &mp);
    let daemon = first.daemon().unwrap();
    assert_mount_fails(&[os("mount"), os("--lower"), os(ls), os(mps)], &mp, mps);
    assert_mount_fails(&[os("-o"), os(&lowerdir(ls)), os(mps)], &mp, mps);
    assert_eq!(mount_count(&mp), 1);
    assert_eq!(daemons_of(&mp).iter().map(|p| p.pid).collect::<Vec<_>>(), vec![daemon]);
    assert_eq!(fs::read(mp.join("f")).unwrap(), b"content");
    first.unmount();

    // An image whose data block is corrupt mounts (only tables are read at mount), answers EIO
    // for that file as the kernel's squashfs does, serves the rest, and keeps running.
    // The first data block (a-victim's) starts right after the superblock: break its zstd
    // frame magic.
    let bad_block = variant("bad-block.sqfs", &|b| b[96..100].fill(0xff));
    let kmp = scratch.mkdir("kernel-loop");
    let k = TestMount::kernel(&[os("-t"), os("squashfs"), os("-o"), os("loop,ro"), os(&bad_block)], &kmp);
    let kernel_err = fs::read(kmp.join("a-victim")).unwrap_err();
    assert_eq!(kernel_err.raw_os_error(), Some(libc::EIO), "the kernel read the corrupt block: {kernel_err}");
    k.unmount();
    let m = TestMount::lower_flags(&[PathBuf::from(&bad_block)], &mp);
    let err = fs::read(mp.join("a-victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "reading a corrupt block: {err}");
    assert_eq!(fs::read(mp.join("z-other")).unwrap(), b"small and fine");
    assert_eq!(daemons_of(&mp).len(), 1, "the daemon died on a corrupt block");
    m.unmount();
    assert!(mounts_below(base).is_empty(), "mounts left: {:?}", mounts_below(base));
}
