//! Prefetching on a read-only union. With `prefetch=N`, listing a directory puts its small
//! files into the page cache before anyone reads them; by default, reading the first file of a
//! directory does that for the others (a listing alone reads nothing); `prefetch=0` never
//! does. What is read afterwards is byte for byte what the kernel overlay of the same layers
//! gives.
//!
//! Residency is read with `fincore` (mincore(2) on a mapping; it reads no data). The same
//! checks on a `prefetch=0` mount show the files are not resident there, so the residency seen
//! otherwise comes from the prefetch threads.
//!
//! Needs root; fails, never skips, without it.

mod union_common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use union_common::*;

/// Small files per layer directory `d`, and the largest size used.
const FILES: usize = 60;
const MAX_SMALL: usize = 200 * 1024;
/// Larger than the prefetch limit (1 MiB): left to the kernel's readahead.
const BIG: usize = 3 << 20;

/// Bytes of `path` resident in the page cache, per `fincore`.
fn resident(path: &Path) -> u64 {
    let out = Command::new("fincore").args(["--bytes", "--noheadings", "--raw", "--output", "RES"]).arg(path).output();
    let out = out.expect("running fincore (util-linux-extra)");
    assert!(out.status.success(), "fincore {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|e| panic!("fincore output: {e}"))
}

/// Three lowers, topmost first: two directories and a SquashFS image. `d/` holds small files
/// in every layer (some replaced by upper layers, one whited out) and a big file.
fn layers(scratch: &Scratch) -> Vec<PathBuf> {
    let mut rng = SmallRng::seed_from_u64(0x05ee_d0ff_11e5);
    let mut dirs = Vec::new();
    for (i, tag) in ["top", "mid", "bottom"].iter().enumerate() {
        let d = scratch.mkdir(&format!("src-{tag}/d"));
        for f in (i * FILES / 3)..(i * FILES / 3 + FILES) {
            let len = rng.gen_range(1..=MAX_SMALL);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            fs::write(d.join(format!("f{f:03}")), bytes).unwrap();
        }
        dirs.push(d.parent().unwrap().to_path_buf());
    }
    let big: Vec<u8> = (0..BIG).map(|_| rng.gen()).collect();
    fs::write(dirs[2].join("d/big"), big).unwrap();
    // The top layer hides one of the bottom layer's files.
    nix::sys::stat::mknod(
        &dirs[0].join("d/f099"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .unwrap();
    let image = scratch.path().join("bottom.squash");
    mksquashfs(&dirs[2], &image);
    vec![dirs[0].clone(), dirs[1].clone(), image]
}

/// Lists `dir` (READDIRPLUS) without reading any file; returns its regular files and sizes.
fn list(dir: &Path) -> BTreeMap<OsString, u64> {
    let mut files = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_file() {
            files.insert(e.file_name(), m.len());
        }
    }
    files
}

/// Files of `files` in `dir` with pages in the page cache, but `except`.
fn resident_files(dir: &Path, files: &BTreeMap<OsString, u64>, except: &str) -> Vec<OsString> {
    files.keys().filter(|n| n.as_os_str() != except && resident(&dir.join(n)) > 0).cloned().collect()
}

/// The end-of-file region a store may leave out of the page cache (see `wait_resident`).
const TAIL_FOLIO: u64 = 16 << 10;

/// Page-cache drops on this host so far (`drop_pagecache` in /proc/vmstat).
fn cache_drops() -> u64 {
    let vmstat = fs::read_to_string("/proc/vmstat").expect("reading /proc/vmstat");
    vmstat.lines().find_map(|l| l.strip_prefix("drop_pagecache ")).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Waits (up to 20 s) until every small file of `files` in `dir` is resident up to its last
/// whole 16 KiB; checks that the big one, over the limit, is not. The tail is not required:
/// under CPU load the kernel now and then keeps the folio holding a store's end of file out of
/// the page cache (cause not found; a reader then reads those pages from the daemon). It was
/// the partial last page; with 6.18's large folios one CI run (18:54 UTC, clippy and builds
/// beside it) missed 1–3 whole pages before it in 21 of 100 files, each time exactly the pages
/// from the file's last 16 KiB boundary on.
/// Returns false, instead of failing, when the pages never came but someone dropped the page
/// cache since `drops` (another process on a shared machine): the caller repeats the phase.
fn wait_resident(what: &str, dir: &Path, files: &BTreeMap<OsString, u64>, drops: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let missing: Vec<(&OsString, u64, u64)> = files
            .iter()
            .filter(|(n, _)| n.as_os_str() != "big")
            .map(|(n, size)| (n, resident(&dir.join(n)), *size))
            .filter(|(_, res, size)| *res < size / TAIL_FOLIO * TAIL_FOLIO)
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            if cache_drops() > drops {
                eprintln!("{what}: the page cache was dropped meanwhile by another process; again");
                return false;
            }
            panic!("{what}: 20 s on, whole pages not resident (name, resident, size): {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(resident(&dir.join("big")), 0, "{what}: a file over the limit is left to the kernel's readahead");
    true
}

fn mount_with(layers: &[PathBuf], mp: &Path, extra: &str) -> TestMount {
    let mut opt = lowerdir_option(layers);
    opt.push(extra);
    TestMount::parallaxfs(&["-o".into(), opt, mp.into()], mp)
}

#[test]
fn listed_or_first_read_directories_get_their_small_files_cached_and_reads_match_the_kernel() {
    require_root();
    let scratch = Scratch::new("prefetch");
    let layers = layers(&scratch);

    // Control: with prefetch=0 nothing becomes resident but what is read.
    let off = mount_with(&layers, &scratch.mkdir("off"), ",prefetch=0");
    let files = list(&off.path().join("d"));
    // f000..f099 across the layers, less the whited-out f099, plus big.
    assert_eq!(files.len(), FILES / 3 * 5, "union lists {:?}", files.keys());
    assert!(!files.contains_key(OsStr::new("f099")) && files.contains_key(OsStr::new("big")));
    fs::read(off.path().join("d/f000")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stray = resident_files(&off.path().join("d"), &files, "f000");
    assert!(stray.is_empty(), "prefetch=0: files nobody read became resident: {stray:?}");
    off.unmount();

    // Default: a listing alone reads nothing; the first file read brings in its siblings.
    for attempt in 1.. {
        let drops = cache_drops();
        let dflt = mount_with(&layers, &scratch.mkdir(&format!("default{attempt}")), "");
        let dd = dflt.path().join("d");
        assert_eq!(list(&dd), files);
        std::thread::sleep(Duration::from_millis(300));
        let stray = resident_files(&dd, &files, "");
        assert!(stray.is_empty(), "default mode: a listing alone made files resident: {stray:?}");
        fs::read(dd.join("f010")).unwrap();
        let done = wait_resident("default mode, after reading f010", &dd, &files, drops);
        dflt.unmount();
        if done {
            break;
        }
        assert!(attempt < 3, "default mode: the page cache was dropped under every attempt");
    }

    let mut attempt = 0;
    let (mp, pf) = loop {
        attempt += 1;
        let drops = cache_drops();
        let mp = scratch.mkdir(&format!("pf{attempt}"));
        let pf = mount_with(&layers, &mp, ",prefetch=3");
        assert_eq!(list(&mp.join("d")), files);
        if wait_resident("prefetch=3, after listing", &mp.join("d"), &files, drops) {
            break (mp, pf);
        }
        pf.unmount();
        assert!(attempt < 3, "prefetch=3: the page cache was dropped under every attempt");
    };
    let d = mp.join("d");

    // What the cached pages hold is what the kernel overlay shows.
    let kdir = scratch.mkdir("kernel");
    let loop_dir = scratch.mkdir("bottom-loop");
    let bottom = TestMount::kernel(&[OsStr::new("-o"), OsStr::new("loop,ro"), layers[2].as_os_str()], &loop_dir);
    let kopt = format!("ro,lowerdir={}:{}:{}", layers[0].display(), layers[1].display(), loop_dir.display());
    let kernel = TestMount::kernel(
        &[OsStr::new("-t"), OsStr::new("overlay"), OsStr::new("overlay"), OsStr::new("-o"), OsStr::new(&kopt)],
        &kdir,
    );
    assert_eq!(list(&kdir.join("d")), files, "file names and sizes: kernel overlay vs parallaxfs");
    for (name, size) in &files {
        let ours = fs::read(d.join(name)).unwrap();
        let theirs = fs::read(kdir.join("d").join(name)).unwrap();
        assert_eq!(ours.len() as u64, *size, "{name:?}: length");
        assert!(ours == theirs, "{name:?}: content differs from the kernel overlay's");
        // A read at an offset inside a prefetched file too.
        if *size > 10 {
            let f = fs::File::open(d.join(name)).unwrap();
            let mut buf = vec![0u8; 7];
            f.read_exact_at(&mut buf, size / 2).unwrap();
            assert_eq!(buf[..], theirs[(*size / 2) as usize..(*size / 2) as usize + 7], "{name:?}: mid-file read");
        }
    }
    kernel.unmount();
    bottom.unmount();
    pf.unmount();
}

/// Each of `bads` refused with one line naming it and nothing mounted; then `good` mounts.
fn assert_option_is_checked(tag: &str, bads: &[&str], good: &str) {
    require_root();
    let scratch = Scratch::new(tag);
    let lower = scratch.mkdir("lower");
    fs::write(lower.join("f"), "x").unwrap();
    let mp = scratch.mkdir("mp");
    for bad in bads {
        let out =
            Command::new(bin()).arg("-o").arg(format!("lowerdir={},{bad}", lower.display())).arg(&mp).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert_eq!(err.lines().count(), 1, "{bad}: one line: {err}");
        assert!(err.contains(bad), "{bad}: the error names the option: {err}");
        assert!(!is_mounted(&mp), "{bad}: nothing mounted");
    }
    let m = mount_with(&[lower], &mp, &format!(",{good}"));
    assert_eq!(fs::read(mp.join("f")).unwrap(), b"x", "{good}");
    m.unmount();
}

#[test]
fn prefetch_option_is_checked() {
    assert_option_is_checked("prefetch-opt", &["prefetch=x", "prefetch=65", "prefetch=-1"], "prefetch=3");
}

/// A read smaller than a SquashFS block decompresses the block once and has the whole block
/// stored into the page cache (as the kernel's squashfs fills every page of a block): after one
/// 4 KiB read in the middle of a block, its 128 KiB are resident, and what they hold, read
/// back through the page cache and through a fresh mount, is the source's bytes. Over several
/// blocks read in random order by four threads at once.
#[test]
fn a_small_read_caches_its_whole_block_with_the_source_bytes() {
    require_root();
    let scratch = Scratch::new("block-store");
    let src = scratch.mkdir("src/blocks");
    // Compressible, and different in every block: zstd blocks of 128 KiB.
    let mut rng = SmallRng::seed_from_u64(0xb10c);
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta "];
    let mut bytes = Vec::new();
    while bytes.len() < 2 << 20 {
        bytes.extend_from_slice(words[rng.gen_range(0..words.len())].as_bytes());
    }
    bytes.truncate(2 << 20);
    fs::write(src.join("text"), &bytes).unwrap();
    let image = scratch.path().join("blocks.squash");
    mksquashfs(src.parent().unwrap(), &image);
    let mp = scratch.mkdir("mp");
    // prefetch=0: only the block store can make pages resident.
    // A fresh mount's files have an empty page cache (no `drop_caches`: other tests of this
    // binary, running at the same time, wait for pages to become resident).
    let m = mount_with(std::slice::from_ref(&image), &mp, ",prefetch=0");
    let path = mp.join("blocks/text");
    assert_eq!(resident(&path), 0, "nothing resident before the read");

    const BLOCK: u64 = 128 << 10;
    let f = fs::File::open(&path).unwrap();
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM).unwrap();
    let mut page = vec![0u8; 4096];
    f.read_exact_at(&mut page, 5 * BLOCK + 40960).unwrap();
    assert_eq!(page[..], bytes[(5 * BLOCK + 40960) as usize..][..4096], "the 4 KiB read itself");
    let deadline = Instant::now() + Duration::from_secs(10);
    while resident(&path) < BLOCK {
        assert!(Instant::now() < deadline, "10 s on, {} bytes resident, want the whole block", resident(&path));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut block = vec![0u8; BLOCK as usize];
    f.read_exact_at(&mut block, 5 * BLOCK).unwrap();
    assert!(block[..] == bytes[(5 * BLOCK) as usize..][..BLOCK as usize], "the stored block's bytes");
    drop(f);

    // Four threads, small reads at random places in random order on a fresh mount; then the
    // whole file.
    m.unmount();
    let m = mount_with(&[image], &mp, ",prefetch=0");
    assert_eq!(resident(&path), 0, "nothing resident on the fresh mount");
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (path, bytes) = (&path, &bytes);
            s.spawn(move || {
                let f = fs::File::open(path).unwrap();
                let mut rng = SmallRng::seed_from_u64(t);
                let mut buf = vec![0u8; 4096];
                for _ in 0..64 {
                    let off = rng.gen_range(0..(bytes.len() as u64 - 4096)) / 512 * 512;
                    f.read_exact_at(&mut buf, off).unwrap();
                    assert!(buf[..] == bytes[off as usize..][..4096], "thread {t}: 4 KiB at {off}");
                }
            });
        }
    });
    assert!(fs::read(&path).unwrap() == bytes, "the whole file after random small reads");
    m.unmount();
}

/// A directory too large for one READDIRPLUS reply, on a read-only mount (no OPENDIR: the
/// kernel reads it with handle 0 and keeps the listing): listed three times, every time all
/// names once, each `d_ino` equal to the `st_ino` of the name; the same names as the source.
#[test]
fn a_large_directory_lists_whole_across_replies_and_repeats() {
    require_root();
    let scratch = Scratch::new("big-dir");
    let src = scratch.mkdir("src/many");
    let want: std::collections::BTreeSet<OsString> =
        (0..3000).map(|i| OsString::from(format!("entry-{i:05}-{}", "n".repeat(i % 40)))).collect();
    for name in &want {
        fs::write(src.join(name), name.as_encoded_bytes()).unwrap();
    }
    let image = scratch.path().join("many.squash");
    mksquashfs(src.parent().unwrap(), &image);
    let mp = scratch.mkdir("mp");
    let m = mount_with(&[image], &mp, "");
    for round in 0..3 {
        let mut seen = std::collections::BTreeSet::new();
        for e in fs::read_dir(mp.join("many")).unwrap() {
            let e = e.unwrap();
            use std::os::unix::fs::{DirEntryExt, MetadataExt};
            let st = fs::symlink_metadata(e.path()).unwrap();
            assert_eq!(e.ino(), st.ino(), "round {round}: d_ino of {:?}", e.file_name());
            assert!(seen.insert(e.file_name()), "round {round}: {:?} listed twice", e.file_name());
        }
        assert!(seen == want, "round {round}: {} names listed, want {}", seen.len(), want.len());
    }
    let one = mp.join("many/entry-00007-nnnnnnn");
    assert_eq!(fs::read(&one).unwrap(), b"entry-00007-nnnnnnn");
    m.unmount();
}

#[test]
fn threads_option_is_checked() {
    assert_option_is_checked("threads-opt", &["threads=0", "threads=65", "threads=x"], "threads=3");
}

/// Images with 1 MiB blocks: small reads inside a block are answered from the whole block (as
/// above), and small reads across the boundary of two blocks, whose span is larger than what
/// one store takes, are still answered whole (a short answer there would tell the kernel the
/// file ends early).
#[test]
fn small_reads_across_one_mib_blocks_are_answered_whole() {
    require_root();
    let scratch = Scratch::new("mib-blocks");
    let src = scratch.mkdir("src/d");
    let mut rng = SmallRng::seed_from_u64(0x1b10c);
    let mut bytes = Vec::with_capacity(3 << 20);
    while bytes.len() < (3 << 20) + 12345 {
        bytes.extend_from_slice(format!("{:08x} ", rng.gen::<u32>()).as_bytes());
    }
    bytes.truncate((3 << 20) + 12345);
    fs::write(src.join("f"), &bytes).unwrap();
    let image = scratch.path().join("mib.squash");
    mksquashfs_with(src.parent().unwrap(), &image, &["-b", "1M"]);
    let mp = scratch.mkdir("mp");
    let m = mount_with(&[image], &mp, ",prefetch=0");
    let f = fs::File::open(mp.join("d/f")).unwrap();
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM).unwrap();
    const MIB: u64 = 1 << 20;
    for (off, len) in [(MIB - 4096, 8192), (2 * MIB - 100, 300), (MIB + 8192, 4096), (3 * MIB, 12345), (5, 7)] {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off).unwrap_or_else(|e| panic!("{len} bytes at {off}: {e}"));
        assert!(buf[..] == bytes[off as usize..][..len], "{len} bytes at {off}: wrong bytes");
    }
    assert_eq!(fs::metadata(mp.join("d/f")).unwrap().len(), bytes.len() as u64, "size after the small reads");
    assert!(fs::read(mp.join("d/f")).unwrap() == bytes, "the whole file after the small reads");
    drop(f);
    m.unmount();
}
