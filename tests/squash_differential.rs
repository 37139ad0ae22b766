//! Differential tests of `parallaxfs-squash` and `parallaxfs image` against the kernel's own
//! squashfs and squashfs-tools 4.5.1.
//!
//! For every compressor and mksquashfs option variant: generate a source tree with every edge
//! case (`common::build_tree`), build an image with `mksquashfs`, loop-mount it, walk the kernel
//! mount with lstat and the image through the library (mmap with default caches, and pread with
//! tiny caches so that everything is evicted and re-read), and compare every attribute, xattr
//! and content hash. Then check lookup, readdir cookies, the export table, reads at block
//! boundaries, and the command line against `unsquashfs -lln` / `-ls` / `-s`.
//!
//! Every passing variant prints one line (also without `--nocapture`) naming its mksquashfs
//! options and counting what it compared; `cli_errors` counts its cases. Trees and images live
//! on a tmpfs mounted for each variant (`common::Scratch`), and file contents are compared
//! through a digest that scans runs of zeros instead of hashing them (`common::ContentDigest`),
//! which keeps the whole file to a couple of minutes on two cores.
//!
//! Needs root (loop mounts, mknod, trusted.* xattrs) and squashfs-tools; fails, never skips,
//! without them.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;
use parallaxfs_squash::{CacheConfig, DirEntry, Error, Image, IoMode, Kind, OpenOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// One mksquashfs variant.
struct Variant {
    name: &'static str,
    /// mksquashfs options besides `-noappend -quiet -no-progress` (and `-xattrs`, added unless
    /// the variant says `-no-xattrs`).
    args: &'static [&'static str],
    huge_dir: bool,
    big_sparse: bool,
}

impl Variant {
    fn has(&self, arg: &str) -> bool {
        self.args.contains(&arg)
    }

    fn compressor(&self) -> &'static str {
        self.args.iter().position(|a| *a == "-comp").map_or("gzip", |i| self.args[i + 1])
    }

    fn block_size(&self) -> u32 {
        match self.args.iter().position(|a| *a == "-b").map(|i| self.args[i + 1]) {
            None => 128 * 1024,
            Some("4096") => 4096,
            Some("1M") => 1 << 20,
            Some(other) => panic!("block size {other} not known to the test"),
        }
    }

    fn mksquashfs_args(&self) -> Vec<&'static str> {
        let mut args = self.args.to_vec();
        if !self.has("-no-xattrs") {
            args.push("-xattrs");
        }
        args
    }
}

macro_rules! variants {
    ($($name:ident: [$($arg:literal),*], huge_dir: $h:literal, big_sparse: $b:literal;)*) => {
        $(
            #[test]
            fn $name() {
                run_variant(&Variant {
                    name: stringify!($name),
                    args: &[$($arg),*],
                    huge_dir: $h,
                    big_sparse: $b,
                });
            }
        )*
    };
}

variants! {
    gzip: ["-comp", "gzip"], huge_dir: true, big_sparse: false;
    lzma: ["-comp", "lzma"], huge_dir: false, big_sparse: false;
    lzo: ["-comp", "lzo"], huge_dir: false, big_sparse: false;
    xz_bcj_x86: ["-comp", "xz", "-Xbcj", "x86"], huge_dir: false, big_sparse: false;
    lz4: ["-comp", "lz4"], huge_dir: false, big_sparse: false;
    lz4_hc: ["-comp", "lz4", "-Xhc"], huge_dir: false, big_sparse: false;
    zstd: ["-comp", "zstd"], huge_dir: false, big_sparse: true;
    uncompressed: ["-noI", "-noD", "-noF", "-noX"], huge_dir: true, big_sparse: false;
    uncompressed_ids: ["-noId"], huge_dir: false, big_sparse: false;
    always_use_fragments: ["-always-use-fragments"], huge_dir: false, big_sparse: false;
    no_fragments: ["-no-fragments"], huge_dir: false, big_sparse: true;
    no_exports: ["-no-exports"], huge_dir: false, big_sparse: false;
    no_xattrs: ["-no-xattrs"], huge_dir: false, big_sparse: false;
    block_4k: ["-b", "4096"], huge_dir: false, big_sparse: false;
    block_1m: ["-b", "1M"], huge_dir: false, big_sparse: true;
}

fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn open(img: &Path, io: IoMode, cache: CacheConfig) -> Image {
    let file = File::open(img).unwrap();
    let image = Image::open_with(file, &OpenOptions { io, cache })
        .unwrap_or_else(|e| panic!("opening {} with {io:?}: {e}", img.display()));
    assert_eq!(image.io_mode(), io, "io mode in use");
    image
}

/// Caches far smaller than the image: every block is evicted and read again many times.
fn tiny_caches() -> CacheConfig {
    CacheConfig { metadata_bytes: 64 << 10, fragment_bytes: 2 << 20, data_bytes: 2 << 20, inodes: 64 }
}

fn run_variant(v: &Variant) {
    require_environment();
    let started = Instant::now();
    let tmp = Scratch::new(&format!("pxfs-diff-{}-", v.name));
    let src = tmp.path().join("src");
    let spec = TreeSpec { huge_dir: v.huge_dir, big_sparse: v.big_sparse, seed: seed_of(v.name) };
    let facts = build_tree(&src, &spec);
    let img = tmp.path().join("image.sqfs");
    let args = v.mksquashfs_args();
    mksquashfs(&src, &img, &args);
    // The kernel has no legacy-lzma decompressor: it reads a gzip build of the same tree with
    // the same options instead, which has the same inodes, numbers, listings and contents.
    let kernel_img = if v.compressor() == "lzma" {
        let twin = tmp.path().join("gzip-twin.sqfs");
        let twin_args: Vec<&str> = args.iter().map(|a| if *a == "lzma" { "gzip" } else { a }).collect();
        mksquashfs(&src, &twin, &twin_args);
        twin
    } else {
        img.clone()
    };
    let built = started.elapsed();
    // Declared after `tmp` (and the opened images after this), so unmounted (and closed) before
    // the scratch tmpfs is.
    let mount = LoopMount::new(&kernel_img, &tmp.path().join("mnt"));
    let kernel = kernel_walk(mount.path(), !v.has("-no-xattrs"));
    check_coverage(v, &kernel);
    let walked_kernel = started.elapsed();
    let mut n = Counts::of(&kernel);

    let mmap = open(&img, IoMode::Mmap, CacheConfig::default());
    let pread = open(&img, IoMode::Pread, tiny_caches());
    check_superblock(v, &mmap, &kernel);
    let mut problems = Vec::new();
    for (label, image, chunk) in [("mmap", &mmap, 4095), ("pread", &pread, 131_073)] {
        let walk = image_walk(image, chunk);
        problems.extend(walk.problems.iter().map(|p| format!("{label}: {p}")));
        problems.extend(compare_trees(label, &kernel, &walk.tree));
        n.walks += 1;
        let full = label == "mmap";
        problems.extend(check_lookups(label, image, &walk, full, &mut n));
        problems.extend(check_resolve(label, image, &walk, full, &mut n));
        problems.extend(check_export(label, image, &walk, !v.has("-no-exports"), &mut n));
        problems.extend(check_boundary_reads(label, image, &walk, mount.path(), &mut n));
        if full {
            problems.extend(check_cookies(image, &walk, &mut n));
        }
    }
    check_stats(v, &mmap);
    assert_no_problems(&format!("variant {}: library vs kernel", v.name), &problems);
    let walked_image = started.elapsed();

    let mut problems = Vec::new();
    problems.extend(cli_ls_long(&img, &facts, &kernel, &mut n));
    problems.extend(cli_ls_names_and_dir(&img, &facts, &mut n));
    problems.extend(cli_info(&img, &mut n));
    problems.extend(cli_cat(&img, &facts, &kernel, &mut n));
    problems.extend(cli_check(&img, &kernel, &mut n));
    assert_no_problems(&format!("variant {}: parallaxfs image vs unsquashfs and the kernel", v.name), &problems);
    let times = format!(
        "{:.1?} (build {:.1?}, kernel walk {:.1?}, library {:.1?}, cli {:.1?})",
        started.elapsed(),
        built,
        walked_kernel - built,
        walked_image - walked_kernel,
        started.elapsed() - walked_image
    );
    report(&format!("variant {} [mksquashfs {}]: passed: {}; {times}", v.name, args.join(" "), n.summary()));
}

/// What one variant compared, for the record (printed with each passing variant).
#[derive(Debug, Default)]
struct Counts {
    paths: usize,
    inodes: usize,
    files: usize,
    file_bytes: u64,
    xattrs: usize,
    /// Library walks compared with the kernel's (mmap and pread).
    walks: usize,
    lookups: usize,
    resolves: usize,
    export_lookups: usize,
    boundary_reads: usize,
    readdir_resumes: usize,
    ls_long_lines: usize,
    ls_lines: usize,
    info_lines: usize,
    cat_files: usize,
    cat_bytes: u64,
    check_runs: usize,
}

impl Counts {
    fn of(kernel: &Tree) -> Counts {
        let mut files = BTreeSet::new();
        let mut file_bytes = 0;
        for node in kernel.values().filter(|n| n.kind == Kind::File) {
            if files.insert(node.ino) {
                file_bytes += node.size;
            }
        }
        Counts {
            paths: kernel.len(),
            inodes: kernel.values().map(|n| n.ino).collect::<BTreeSet<_>>().len(),
            files: files.len(),
            file_bytes,
            xattrs: kernel.values().map(|n| n.xattrs.len()).sum(),
            ..Counts::default()
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} paths ({} inodes) x {} walks, {} fields each = {} field comparisons, {} file contents \
             ({} bytes) hashed per walk, {} xattrs; {} lookups, {} resolves, {} export-table lookups, \
             {} boundary reads, {} readdir resumes; cli: {} `ls -l` lines vs unsquashfs -lln, {} `ls` \
             lines vs unsquashfs -ls, {} `info` lines vs unsquashfs -s, {} `cat`s ({} bytes), {} `check`s",
            self.paths,
            self.inodes,
            self.walks,
            NODE_FIELDS,
            self.paths * self.walks * NODE_FIELDS,
            self.files,
            self.file_bytes,
            self.xattrs,
            self.lookups,
            self.resolves,
            self.export_lookups,
            self.boundary_reads,
            self.readdir_resumes,
            self.ls_long_lines,
            self.ls_lines,
            self.info_lines,
            self.cat_files,
            self.cat_bytes,
            self.check_runs
        )
    }
}

/// Prints a line to the test's stderr even when libtest captures output (the capture only
/// takes what the print macros write), so the counts show in a plain `cargo test` run.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "squash_differential: {line}");
}

// ---------------------------------------------------------------------------------------------
// The tree really has the edge cases (so no comparison above is vacuous)
// ---------------------------------------------------------------------------------------------

fn check_coverage(v: &Variant, kernel: &Tree) {
    let nodes = || kernel.iter();
    let any = |what: &str, f: &dyn Fn(&Vec<u8>, &Node) -> bool| {
        assert!(nodes().any(|(p, n)| f(p, n)), "variant {}: the kernel mount has no {what}", v.name);
    };
    let file = |n: &Node| n.kind == Kind::File;
    any("empty file", &|_, n| file(n) && n.size == 0);
    any("file with nlink 3", &|_, n| file(n) && n.nlink == 3);
    any("sparse file", &|_, n| file(n) && n.blocks * 512 < n.size);
    for bs in BLOCK_SIZES {
        any(&format!("file of {bs} bytes"), &|_, n| file(n) && n.size == bs);
        any(&format!("file of {} bytes", bs + 1), &|_, n| file(n) && n.size == bs + 1);
    }
    if v.big_sparse {
        any("file over 4 GiB", &|_, n| file(n) && n.size == BIG_SPARSE_SIZE);
    }
    any("1-byte symlink", &|_, n| n.kind == Kind::Symlink && n.size == 1);
    any("4095-byte symlink", &|_, n| n.kind == Kind::Symlink && n.size == 4095);
    any("hard-linked symlink", &|_, n| n.kind == Kind::Symlink && n.nlink == 2);
    any("char device with minor > 255", &|_, n| n.kind == Kind::CharDev && n.rdev.is_some_and(|d| d.1 > 255));
    any("block device with minor > 255", &|_, n| n.kind == Kind::BlockDev && n.rdev.is_some_and(|d| d.1 > 255));
    any("char device with major > 255", &|_, n| n.kind == Kind::CharDev && n.rdev.is_some_and(|d| d.0 > 255));
    any("fifo", &|_, n| n.kind == Kind::Fifo);
    any("socket", &|_, n| n.kind == Kind::Socket);
    any("setuid file", &|_, n| file(n) && n.mode & 0o4000 != 0);
    any("setgid file", &|_, n| file(n) && n.mode & 0o2000 != 0);
    any("sticky directory", &|_, n| n.kind == Kind::Dir && n.mode & 0o1000 != 0);
    any("setgid directory", &|_, n| n.kind == Kind::Dir && n.mode & 0o2000 != 0);
    any("empty directory", &|_, n| n.entries.as_ref().is_some_and(Vec::is_empty));
    any("255-byte name", &|p, _| p.rsplit(|&b| b == b'/').next().is_some_and(|n| n.len() == 255));
    any("non-UTF-8 name", &|p, _| std::str::from_utf8(p).is_err());
    any("path 100 directories deep", &|p, _| p.iter().filter(|&&b| b == b'/').count() > 101);
    any("directory with more than 256 entries", &|_, n| n.entries.as_ref().is_some_and(|e| e.len() > 256));
    let uids: BTreeSet<u32> = nodes().map(|(_, n)| n.uid).collect();
    let gids: BTreeSet<u32> = nodes().map(|(_, n)| n.gid).collect();
    assert!(
        uids.len() >= OWNERS.len() && gids.len() >= OWNERS.len(),
        "variant {}: uids {uids:?} gids {gids:?}",
        v.name
    );
    let xattr_names: BTreeSet<&[u8]> = nodes().flat_map(|(_, n)| n.xattrs.iter().map(|(k, _)| &k[..])).collect();
    if v.has("-no-xattrs") {
        assert!(xattr_names.is_empty(), "variant {}: -no-xattrs image shows xattrs {xattr_names:?}", v.name);
    } else {
        for prefix in [&b"user."[..], b"trusted.", b"security."] {
            assert!(xattr_names.iter().any(|n| n.starts_with(prefix)), "variant {}: no {} xattr", v.name, show(prefix));
        }
        let shared = long_shared_value();
        let holders = nodes().filter(|(_, n)| n.xattrs.iter().any(|(_, val)| *val == shared)).count();
        assert!(holders >= 6, "variant {}: the long shared xattr value is on {holders} paths", v.name);
        any("xattr on a symlink", &|_, n| n.kind == Kind::Symlink && !n.xattrs.is_empty());
        any("xattr on a device", &|_, n| n.kind == Kind::BlockDev && !n.xattrs.is_empty());
        any("xattr on a fifo", &|_, n| n.kind == Kind::Fifo && !n.xattrs.is_empty());
        any("xattr on a socket", &|_, n| n.kind == Kind::Socket && !n.xattrs.is_empty());
        any("xattr on a directory", &|_, n| n.kind == Kind::Dir && !n.xattrs.is_empty());
        any("empty xattr value", &|_, n| n.xattrs.iter().any(|(_, val)| val.is_empty()));
    }
    if v.huge_dir {
        any("100,000-entry directory", &|_, n| n.entries.as_ref().is_some_and(|e| e.len() == HUGE_ENTRIES));
        any("file with 60,001 links", &|_, n| n.nlink == HUGE_LINKS as u64 + 1);
    }
}

fn check_superblock(v: &Variant, image: &Image, kernel: &Tree) {
    let sb = image.superblock();
    let distinct: BTreeSet<u64> = kernel.values().map(|n| n.ino).collect();
    assert_eq!(u64::from(sb.inodes), distinct.len() as u64, "variant {}: superblock inode count", v.name);
    assert_eq!(sb.block_size, v.block_size(), "variant {}: block size", v.name);
    assert_eq!(sb.compressor.name(), v.compressor(), "variant {}: compressor", v.name);
    assert_eq!(sb.export_table.is_some(), !v.has("-no-exports"), "variant {}: export table", v.name);
    assert_eq!(sb.xattr_id_table.is_some(), !v.has("-no-xattrs"), "variant {}: xattr table", v.name);
    if v.has("-no-fragments") {
        assert_eq!(sb.fragments, 0, "variant {}: fragments", v.name);
    } else {
        assert!(sb.fragments > 0, "variant {}: no fragments", v.name);
    }
    if v.block_size() == 4096 {
        // More than one metadata block of fragment table (512 entries each).
        assert!(sb.fragments > 512, "variant {}: only {} fragments", v.name, sb.fragments);
    }
    assert_eq!(image.root(), image.root(), "root reference is stable");
    let root = image.inode(image.root()).unwrap();
    assert_eq!(u64::from(root.ino), kernel[&b"/"[..]].ino, "variant {}: root inode number", v.name);
}

fn check_stats(v: &Variant, image: &Image) {
    let s = image.stats();
    assert!(s.metadata_misses > 0 && s.metadata_hits > 0, "variant {}: {s:?}", v.name);
    if v.has("-noD") {
        // Uncompressed data blocks are copied straight from the image, never cached.
        assert_eq!(
            (s.data_misses, s.data_hits),
            (0, 0),
            "variant {}: uncompressed data went through the cache: {s:?}",
            v.name
        );
    } else {
        assert!(s.data_misses > 0 && s.decompressed_bytes > 0, "variant {}: {s:?}", v.name);
    }
}

// ---------------------------------------------------------------------------------------------
// lookup, resolve, read_dir_from, inode_by_number, read_at at boundaries
// ---------------------------------------------------------------------------------------------

/// Names that may or may not be in a sorted directory: before the first, between neighbours,
/// after the last, prefixes and near misses of every `step`-th name, plus names no directory
/// can hold.
fn lookup_candidates(names: &[&[u8]], step: usize) -> Vec<Vec<u8>> {
    let mut c = vec![
        b"\x01".to_vec(),
        vec![0xff; 256],
        vec![b'a'; 257],
        Vec::new(),
        b".".to_vec(),
        b"..".to_vec(),
        b"a/b".to_vec(),
        b"a\0b".to_vec(),
    ];
    for &n in names.iter().step_by(step.max(1)) {
        let last = *n.last().unwrap();
        c.push([n, &b"\x01"[..]].concat());
        c.push([n, &b"\xff"[..]].concat());
        c.push([n, &b"a"[..]].concat());
        if n.len() > 1 {
            c.push(n[..n.len() - 1].to_vec());
            c.push(n[1..].to_vec());
        }
        if last > 1 {
            c.push([&n[..n.len() - 1], &[last - 1][..]].concat());
        }
        if last < 0xff {
            c.push([&n[..n.len() - 1], &[last + 1][..]].concat());
        }
    }
    c
}

fn check_lookups(label: &str, image: &Image, walk: &ImageWalk, absent: bool, n: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    for dir in &walk.dirs {
        let names: Vec<&[u8]> = dir.entries.iter().map(|e| &e.name[..]).collect();
        if names.windows(2).any(|w| w[0] >= w[1]) {
            out.push(format!("{label}: {}: read_dir is not in strictly increasing name order", show(&dir.path)));
        }
        for e in &dir.entries {
            n.lookups += 1;
            match image.lookup(&dir.inode, &e.name) {
                Ok(Some(found)) if found == *e => {}
                other => {
                    out.push(format!("{label}: lookup {} in {}: {other:?}, want {e:?}", show(&e.name), show(&dir.path)))
                }
            }
        }
        if !absent {
            continue;
        }
        let step = if names.len() > 5000 { 13 } else { 1 };
        for cand in lookup_candidates(&names, step) {
            let want = names.binary_search(&&cand[..]).ok().map(|i| dir.entries[i].clone());
            n.lookups += 1;
            match image.lookup(&dir.inode, &cand) {
                Ok(got) if got == want => {}
                other => out.push(format!(
                    "{label}: lookup {:?} in {}: {other:?}, want {want:?}",
                    show(&cand),
                    show(&dir.path)
                )),
            }
        }
    }
    out
}

fn check_resolve(label: &str, image: &Image, walk: &ImageWalk, all: bool, n: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (path, r)) in walk.paths.iter().enumerate() {
        if !all && i % 11 != 0 {
            continue;
        }
        n.resolves += 1;
        match image.resolve(path) {
            Ok(inode) if inode.inode_ref == *r => {}
            Ok(inode) => {
                out.push(format!("{label}: resolve {}: ref {:?}, walk found {r:?}", show(path), inode.inode_ref))
            }
            Err(e) => out.push(format!("{label}: resolve {}: {e}", show(path))),
        }
    }
    let missing: [(&[u8], bool); 4] = [
        (b"/no/such/path", true),
        (b"/files/no-such-file", true),
        (b"/files/empty/below-a-file", false),
        (b"/special/symlink_dir/empty", false),
    ];
    for (path, want_not_found) in missing {
        n.resolves += 1;
        match image.resolve(path) {
            Err(Error::NotFound) if want_not_found => {}
            Err(Error::NotDir) if !want_not_found => {}
            other => out.push(format!("{label}: resolve {}: {:?}", show(path), other.map(|i| i.inode_ref))),
        }
    }
    // Slashes and dots are skipped; symlinks are never followed.
    let same: [(&[u8], &[u8]); 4] = [
        (b"//files/./hard", b"/files/hard"),
        (b"/", b"/"),
        (b"", b"/"),
        (b"/special/symlink_dir", b"/special/symlink_dir"),
    ];
    for (path, same_as) in same {
        n.resolves += 1;
        let got = image.resolve(path).map(|i| i.inode_ref).ok();
        if got != walk.paths.get(same_as).copied() {
            out.push(format!("{label}: resolve {}: {got:?}", show(path)));
        }
    }
    out
}

fn check_export(label: &str, image: &Image, walk: &ImageWalk, exportable: bool, n: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    let inodes = image.superblock().inodes;
    if walk.refs.len() != inodes as usize {
        out.push(format!("{label}: {} inode numbers reachable, superblock says {inodes}", walk.refs.len()));
    }
    for (&ino, &r) in &walk.refs {
        let want = exportable.then_some(r);
        n.export_lookups += 1;
        match image.inode_by_number(ino) {
            Ok(got) if got == want => {}
            other => out.push(format!("{label}: inode_by_number({ino}): {other:?}, want {want:?}")),
        }
    }
    for ino in [0, inodes + 1, u32::MAX] {
        n.export_lookups += 1;
        if let Ok(Some(r)) = image.inode_by_number(ino) {
            out.push(format!("{label}: inode_by_number({ino}) found {r:?}"));
        }
    }
    out
}

/// Reads `len` bytes at `offset` of a kernel file, short only at end of file.
fn kernel_pread(f: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], offset + got as u64).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

fn check_boundary_reads(label: &str, image: &Image, walk: &ImageWalk, mount: &Path, n: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    let bs = u64::from(image.superblock().block_size);
    let mut seen = BTreeSet::new();
    for (i, (path, node)) in walk.tree.iter().enumerate() {
        let sampled_dir = path.starts_with(b"/smallfiles/") || path.starts_with(b"/huge/");
        if node.kind != Kind::File || !seen.insert(node.ino) || (sampled_dir && i % 50 != 0) {
            continue;
        }
        let inode = image.inode(walk.paths[path]).unwrap();
        let kernel_file = File::open(mount.join(OsStr::from_bytes(&path[1..]))).unwrap();
        let size = node.size;
        let tail = size - size % bs;
        let mut offsets =
            vec![0, 1, bs - 1, bs, bs + 1, 2 * bs - 1, 2 * bs + 3, size / 2, tail, tail.saturating_sub(1)];
        offsets.extend([size.saturating_sub(1), size, size + 1, size + bs, u64::MAX - 1, u64::MAX]);
        offsets.sort_unstable();
        offsets.dedup();
        for offset in offsets {
            for len in [1usize, 4095, bs as usize + 7] {
                let mut buf = vec![0xa5u8; len];
                n.boundary_reads += 1;
                let got = image.read_at(&inode, offset, &mut buf);
                let want = if offset >= size { Vec::new() } else { kernel_pread(&kernel_file, offset, len) };
                match got {
                    Ok(n) if n == want.len() && buf[..n] == want[..] => {}
                    Ok(n) => out.push(format!(
                        "{label}: {} read_at({offset}, {len}): {n} bytes{}, kernel {} bytes",
                        show(path),
                        if n == want.len() { " that differ" } else { "" },
                        want.len()
                    )),
                    Err(e) => out.push(format!("{label}: {} read_at({offset}, {len}): {e}", show(path))),
                }
            }
        }
        if image.read_at(&inode, 0, &mut []).ok() != Some(0) {
            out.push(format!("{label}: {} read_at with an empty buffer", show(path)));
        }
    }
    out
}

type Listed = Vec<(DirEntry, u64)>;

fn read_from(image: &Image, dir: &DirInfo, cookie: u64, limit: usize) -> Result<Listed, Error> {
    let mut got = Vec::new();
    image.read_dir_from(&dir.inode, cookie, &mut |e, next| {
        got.push((e.clone(), next));
        if got.len() >= limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    Ok(got)
}

/// `read_dir_from` resumed at every cookie it hands out yields exactly the rest, and a forged
/// cookie resumes at the entry it points into or the next one.
fn check_cookies(image: &Image, walk: &ImageWalk, counts: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    let mut rng = SmallRng::seed_from_u64(7);
    for dir in &walk.dirs {
        let p = show(&dir.path);
        let all = match read_from(image, dir, 0, usize::MAX) {
            Ok(all) => all,
            Err(e) => {
                out.push(format!("cookies: {p}: read_dir_from(0): {e}"));
                continue;
            }
        };
        let n = all.len();
        if all.iter().map(|(e, _)| e).ne(dir.entries.iter()) {
            out.push(format!("cookies: {p}: read_dir_from(0) differs from read_dir"));
            continue;
        }
        let cookies: Vec<u64> = all.iter().map(|(_, c)| *c).collect();
        if cookies.first().is_some_and(|&c| c <= 3) || cookies.windows(2).any(|w| w[0] >= w[1]) {
            out.push(format!("cookies: {p}: cookies not increasing past 3: {:?}", &cookies[..n.min(5)]));
            continue;
        }
        let mut expect = |cookie: u64, limit: usize, want: &[(DirEntry, u64)], alt: Option<&[(DirEntry, u64)]>| {
            let want_n = want.len().min(limit);
            let alt_n = alt.map(|a| a.len().min(limit));
            counts.readdir_resumes += 1;
            match read_from(image, dir, cookie, limit) {
                Ok(got) if got[..] == want[..want_n] => {}
                Ok(got) if alt.is_some_and(|a| got[..] == a[..alt_n.unwrap()]) => {}
                Ok(got) => out.push(format!(
                    "cookies: {p}: read_dir_from({cookie}) gave {} entries starting {:?}, want {} starting {:?}",
                    got.len(),
                    got.first().map(|(e, _)| show(&e.name)),
                    want_n,
                    want.first().map(|(e, _)| show(&e.name))
                )),
                Err(e) => out.push(format!("cookies: {p}: read_dir_from({cookie}): {e}")),
            }
        };
        for c in 0..=3 {
            expect(c, usize::MAX, &all, None);
        }
        expect(u64::MAX, usize::MAX, &[], None);
        let full: Vec<usize> =
            if n <= 3000 { (0..n).collect() } else { (0..n).step_by(n / 50).chain([n - 2, n - 1]).collect() };
        for i in full {
            expect(cookies[i], usize::MAX, &all[i + 1..], None);
        }
        if n > 3000 {
            for i in 0..n {
                expect(cookies[i], 2, &all[i + 1..], None);
            }
        }
        // Forged cookies: between two real ones, the result starts at the entry the cookie
        // points into (if it points at its header) or at the one after.
        let Some(&last) = cookies.last() else { continue };
        let forged: Vec<u64> =
            if n <= 200 { (4..=last + 4).collect() } else { (0..400).map(|_| rng.gen_range(4..=last + 100)).collect() };
        for v in forged {
            let limit = if n > 3000 { 3 } else { usize::MAX };
            match cookies.iter().position(|&c| c >= v) {
                None => expect(v, limit, &[], None),
                Some(i) if cookies[i] == v => expect(v, limit, &all[i + 1..], None),
                Some(i) => expect(v, limit, &all[i..], Some(&all[i + 1..])),
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

fn parallaxfs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_parallaxfs"));
    c.env_remove("PARALLAXFS_LOG").env_remove("PARALLAXFS_LOG_FILE");
    c
}

fn output(mut cmd: Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs a command that must succeed silently on stderr; returns its stdout.
fn stdout_of(cmd: Command, out: &mut Vec<String>) -> Vec<u8> {
    let what = format!("{cmd:?}");
    let o = output(cmd);
    if !o.status.success() || !o.stderr.is_empty() {
        out.push(format!("{what}: {}, stderr {:?}", o.status, String::from_utf8_lossy(&o.stderr)));
    }
    o.stdout
}

fn unsquashfs(args: &[&str], img: &Path) -> Command {
    let mut c = Command::new("unsquashfs");
    c.env("TZ", "UTC").args(args).arg(img);
    c
}

fn lines(b: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
    if v.last() == Some(&&b""[..]) {
        v.pop();
    }
    v
}

fn cli_ls_long(img: &Path, facts: &TreeFacts, kernel: &Tree, n: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    let mut ours = parallaxfs();
    ours.args(["image", "ls", "-l"]).arg(img);
    let ours = stdout_of(ours, &mut out);
    let theirs = stdout_of(unsquashfs(&["-lln"], img), &mut out);
    let (ours, theirs) = (lines(&ours), lines(&theirs));
    if ours.len() != theirs.len() {
        out.push(format!("ls -l: {} lines, unsquashfs -lln {} lines", ours.len(), theirs.len()));
    }
    let mut skipped = 0;
    n.ls_long_lines += ours.len().min(theirs.len());
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        let device = facts.big_minor_devices.iter().find(|p| {
            let suffix = [&b"squashfs-root"[..], &p[..]].concat();
            o.ends_with(&suffix) && t.ends_with(&suffix)
        });
        if let Some(path) = device {
            // unsquashfs 4.5.1 mis-decodes minors above 255: compare with the kernel instead.
            skipped += 1;
            let (major, minor) = kernel[path].rdev.unwrap();
            let field = format!(" {major},{minor:>3} ");
            if !o.windows(field.len()).any(|w| w == field.as_bytes()) {
                out.push(format!("ls -l line {i} {:?} does not show the kernel's {major},{minor}", show(o)));
            }
        } else if o != t {
            out.push(format!("ls -l line {i}:\n    ours       {}\n    unsquashfs {}", show(o), show(t)));
        }
    }
    if skipped != facts.big_minor_devices.len() {
        out.push(format!(
            "ls -l: found {skipped} device lines with minor > 255, want {}",
            facts.big_minor_devices.len()
        ));
    }
    out
}

fn cli_ls_names_and_dir(img: &Path, facts: &TreeFacts, n: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    let mut ours = parallaxfs();
    ours.args(["image", "ls"]).arg(img);
    let ours = stdout_of(ours, &mut out);
    let theirs = stdout_of(unsquashfs(&["-ls"], img), &mut out);
    n.ls_lines += lines(&theirs).len();
    if ours != theirs {
        let at = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
        out.push(format!(
            "ls differs from unsquashfs -ls at byte {at}: {:?}",
            show(&ours[at.saturating_sub(40)..(at + 40).min(ours.len())])
        ));
    }
    // -d: the directory and its direct entries only, which are those lines of the full listing.
    let mut ours = parallaxfs();
    ours.args(["image", "ls", "-l", "-d"]).arg(img).arg(&facts.list_dir);
    let ours = stdout_of(ours, &mut out);
    let full = stdout_of(unsquashfs(&["-lln"], img), &mut out);
    let dir = facts.list_dir.as_bytes();
    let want: Vec<&[u8]> = lines(&full)
        .into_iter()
        .filter(|l| {
            let Some(at) = l.windows(13).position(|w| w == b"squashfs-root") else { return false };
            let rest = &l[at + 13..];
            rest == dir
                || (rest.starts_with(dir)
                    && rest.get(dir.len()) == Some(&b'/')
                    && !rest[dir.len() + 1..].contains(&b'/'))
        })
        .collect();
    n.ls_lines += want.len();
    if lines(&ours) != want || want.len() < 10 {
        out.push(format!("ls -l -d {}: {} lines, want {}", facts.list_dir, lines(&ours).len(), want.len()));
    }
    out
}

fn cli_info(img: &Path, n: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    let mut ours = parallaxfs();
    ours.args(["image", "info"]).arg(img);
    let ours = stdout_of(ours, &mut out);
    let theirs = stdout_of(unsquashfs(&["-s"], img), &mut out);
    let (ours, theirs) = (lines(&ours), lines(&theirs));
    n.info_lines += theirs.len();
    let head = b"Found a valid SQUASHFS 4:0 superblock on ";
    if !ours.first().is_some_and(|l| l.starts_with(head)) || !theirs.first().is_some_and(|l| l.starts_with(head)) {
        out.push(format!(
            "info first line: ours {:?}, unsquashfs {:?}",
            ours.first().map(|l| show(l)),
            theirs.first().map(|l| show(l))
        ));
    }
    if ours.get(1..) != theirs.get(1..) || ours.len() < 10 {
        out.push(format!(
            "info differs from unsquashfs -s:\n--- ours\n{}\n--- unsquashfs\n{}",
            ours.iter().map(|l| show(l)).collect::<Vec<_>>().join("\n"),
            theirs.iter().map(|l| show(l)).collect::<Vec<_>>().join("\n")
        ));
    }
    out
}

fn cli_cat(img: &Path, facts: &TreeFacts, kernel: &Tree, n: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    for path in &facts.cat_paths {
        let want = kernel.get(path.as_bytes()).and_then(|n| n.digest);
        assert!(want.is_some(), "{path}: not a regular file in the kernel mount");
        n.cat_files += 1;
        n.cat_bytes += kernel[path.as_bytes()].size;
        let mut child = parallaxfs()
            .args(["image", "cat"])
            .arg(img)
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let got = digest_reader(child.stdout.take().unwrap());
        let o = child.wait_with_output().unwrap();
        if !o.status.success() || !o.stderr.is_empty() || Some(got) != want {
            out.push(format!(
                "image cat {path}: {}, stderr {:?}, content digest {} want {}",
                o.status,
                String::from_utf8_lossy(&o.stderr),
                hex(&got),
                hex(&want.unwrap())
            ));
        }
    }
    out
}

fn cli_check(img: &Path, kernel: &Tree, n: &mut Counts) -> Vec<String> {
    let mut out = Vec::new();
    let count = |k: &[Kind]| kernel.values().filter(|n| k.contains(&n.kind)).count();
    let inodes: BTreeSet<u64> = kernel.values().map(|n| n.ino).collect();
    let bytes: u64 = kernel.values().filter(|n| n.kind == Kind::File).map(|n| n.size).sum();
    let xattrs: usize = kernel.values().map(|n| n.xattrs.len()).sum();
    let want = format!(
        "{}: ok: {} directories, {} files, {} symlinks, {} special files, {} inodes, {bytes} bytes, {xattrs} xattrs\n",
        img.display(),
        count(&[Kind::Dir]),
        count(&[Kind::File]),
        count(&[Kind::Symlink]),
        count(&[Kind::BlockDev, Kind::CharDev, Kind::Fifo, Kind::Socket]),
        inodes.len(),
    );
    for io in ["mmap", "pread", "auto"] {
        let mut c = parallaxfs();
        c.args(["image", "check", "--io", io]).arg(img);
        n.check_runs += 1;
        let got = stdout_of(c, &mut out);
        if got != want.as_bytes() {
            out.push(format!("image check --io {io}: {:?}, want {want:?}", String::from_utf8_lossy(&got)));
        }
    }
    out
}

/// Errors: exit status non-zero, nothing on stdout, exactly one line on stderr, starting with
/// `parallaxfs: ` and containing every `needle`.
#[test]
fn cli_errors() {
    require_environment();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir/sub")).unwrap();
    std::fs::write(src.join("file"), b"contents").unwrap();
    std::fs::write(src.join("dir/inner"), b"inner").unwrap();
    let img = tmp.path().join("good.sqfs");
    mksquashfs(&src, &img, &[]);
    let image = std::fs::read(&img).unwrap();
    let junk = tmp.path().join("junk.bin");
    let mut rng = SmallRng::seed_from_u64(1);
    write_file(&junk, &(0..4096).map(|_| rng.gen::<u8>()).collect::<Vec<_>>());
    let short = tmp.path().join("short.bin");
    write_file(&short, b"hs");
    let empty = tmp.path().join("empty.bin");
    write_file(&empty, b"");
    // mksquashfs pads the image to a multiple of 4 KiB after `bytes_used`: a cut inside the
    // padding loses nothing (the image must still work), a cut below `bytes_used` is a truncation.
    let bytes_used = u64::from_le_bytes(image[40..48].try_into().unwrap()) as usize;
    assert!(
        bytes_used < image.len() && image.len() % 4096 == 0,
        "expected a padded image: bytes_used {bytes_used}, file {} bytes",
        image.len()
    );
    let unpadded = tmp.path().join("unpadded.sqfs");
    write_file(&unpadded, &image[..bytes_used]);
    let truncated = tmp.path().join("truncated.sqfs");
    write_file(&truncated, &image[..bytes_used - 1]);
    let halved = tmp.path().join("halved.sqfs");
    write_file(&halved, &image[..bytes_used / 2]);
    let truncation = |p: &Path, len: usize| {
        vec![p.display().to_string(), "truncated".into(), format!("{bytes_used} bytes"), format!("has {len}")]
    };
    let missing = tmp.path().join("missing.sqfs");
    let dir_as_image = tmp.path().join("src");

    let s = |p: &Path| p.display().to_string();
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (vec!["info".into(), s(&missing)], vec![s(&missing), "No such file or directory".into()]),
        (vec!["ls".into(), "-l".into(), s(&missing)], vec![s(&missing), "No such file or directory".into()]),
        (vec!["cat".into(), s(&missing), "/file".into()], vec![s(&missing), "No such file or directory".into()]),
        (vec!["check".into(), s(&missing)], vec![s(&missing), "No such file or directory".into()]),
        (vec!["info".into(), s(&junk)], vec![s(&junk), "not a SquashFS image".into()]),
        (vec!["ls".into(), s(&junk)], vec![s(&junk), "not a SquashFS image".into()]),
        (vec!["check".into(), s(&junk)], vec![s(&junk), "not a SquashFS image".into()]),
        (vec!["info".into(), s(&short)], vec![s(&short), "not a SquashFS image".into()]),
        (vec!["info".into(), s(&empty)], vec![s(&empty), "not a SquashFS image".into()]),
        (vec!["stat".into(), s(&truncated), "/file".into()], truncation(&truncated, bytes_used - 1)),
        (vec!["cat".into(), s(&truncated), "/file".into()], truncation(&truncated, bytes_used - 1)),
        (vec!["info".into(), s(&halved)], truncation(&halved, bytes_used / 2)),
        (vec!["ls".into(), s(&halved)], truncation(&halved, bytes_used / 2)),
        (vec!["check".into(), s(&halved)], truncation(&halved, bytes_used / 2)),
        (vec!["info".into(), s(&dir_as_image)], vec![s(&dir_as_image)]),
        (
            vec!["cat".into(), s(&img), "/no/such/file".into()],
            vec![s(&img), "/no/such/file".into(), "no such file".into()],
        ),
        (vec!["cat".into(), s(&img), "/dir/nope".into()], vec![s(&img), "/dir/nope".into(), "no such file".into()]),
        (vec!["ls".into(), "-l".into(), s(&img), "/nope".into()], vec![s(&img), "/nope".into(), "no such file".into()]),
        (vec!["stat".into(), s(&img), "/nope".into()], vec![s(&img), "/nope".into(), "no such file".into()]),
        (
            vec!["cat".into(), s(&img), "/file/below".into()],
            vec![s(&img), "/file/below".into(), "not a directory".into()],
        ),
        (vec!["cat".into(), s(&img), "/dir".into()], vec![s(&img), "/dir".into(), "not a regular file".into()]),
        (vec!["cat".into(), s(&img), "/".into()], vec![s(&img), "not a regular file".into()]),
    ];
    let mut problems = Vec::new();
    let error_cases = cases.len();
    for (args, needles) in cases {
        let mut c = parallaxfs();
        c.arg("image").args(&args);
        let o = output(c);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        let one_line = stderr.ends_with('\n') && stderr.matches('\n').count() == 1;
        let named = needles.iter().all(|n| stderr.contains(n.as_str()));
        if o.status.success() || !o.stdout.is_empty() || !one_line || !stderr.starts_with("parallaxfs: ") || !named {
            problems.push(format!(
                "image {args:?}: {}, stdout {} bytes, stderr {stderr:?} (want one line naming {needles:?})",
                o.status,
                o.stdout.len()
            ));
        }
    }
    // The good image itself works, so the failures above are about the inputs; so does the
    // image without its padding, which is not truncated.
    for good in [&img, &unpadded] {
        let mut c = parallaxfs();
        c.args(["image", "cat"]).arg(good).arg("/dir/inner");
        let inner = stdout_of(c, &mut problems);
        if inner != b"inner" {
            problems.push(format!("image cat {} /dir/inner gave {:?}", good.display(), show(&inner)));
        }
        let mut c = parallaxfs();
        c.args(["image", "check"]).arg(good);
        stdout_of(c, &mut problems);
    }
    assert_no_problems("parallaxfs image error handling", &problems);
    report(&format!("cli_errors: passed: {error_cases} error cases, 2 good images (one unpadded)"));
}

/// The content digest the comparisons rest on does not depend on how the bytes are delivered,
/// and tells apart contents that differ in one byte or in the length of a run of zeros.
#[test]
fn content_digest() {
    let mut rng = SmallRng::seed_from_u64(3);
    let mut data = vec![0u8; 5 << 20];
    rng.fill(&mut data[100..70_000]);
    rng.fill(&mut data[(3 << 20) + 5..(3 << 20) + 9]);
    let digest_in = |piece: usize, bytes: &[u8]| {
        let mut d = ContentDigest::default();
        bytes.chunks(piece).for_each(|c| d.update(c));
        d.finish()
    };
    let want = digest_in(1 << 20, &data);
    for piece in [1, 7, 4095, 65_536, 65_537, 131_073, data.len()] {
        assert_eq!(digest_in(piece, &data), want, "delivered in {piece}-byte reads");
    }
    let mut changed = data.clone();
    changed[(4 << 20) + 1] = 1;
    assert_ne!(digest_in(1 << 20, &changed), want, "one byte set in a run of zeros");
    assert_ne!(digest_in(1 << 20, &data[..data.len() - 1]), want, "one zero less at the end");
    assert_ne!(digest_in(1 << 20, &[0u8; 65_536 + 1]), digest_in(1 << 20, &[0u8; 65_536]), "zero runs");
    assert_ne!(digest_in(1 << 20, b""), digest_in(1 << 20, &[0]), "empty and one zero byte");
}
