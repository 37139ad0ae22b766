//! `prefetch=N` on a read-only union: listing a directory puts its small files into the page
//! cache before anyone reads them, and what is read afterwards is byte for byte what the
//! kernel overlay of the same layers gives.
//!
//! Residency is read with `fincore` (mincore(2) on a mapping; it reads no data). The same
//! checks on a mount without the option show the files are not resident there, so the
//! residency seen with it comes from the prefetch threads.
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

fn mount_with(layers: &[PathBuf], mp: &Path, extra: &str) -> TestMount {
    let mut opt = lowerdir_option(layers);
    opt.push(extra);
    TestMount::parallaxfs(&["-o".into(), opt, mp.into()], mp)
}

#[test]
fn listing_a_directory_caches_its_small_files_and_reads_match_the_kernel() {
    require_root();
    let scratch = Scratch::new("prefetch");
    let layers = layers(&scratch);

    // Control: without the option nothing becomes resident from a listing.
    let plain = mount_with(&layers, &scratch.mkdir("plain"), "");
    let files = list(&plain.path().join("d"));
    // f000..f099 across the layers, less the whited-out f099, plus big.
    assert_eq!(files.len(), FILES / 3 * 5, "union lists {:?}", files.keys());
    assert!(!files.contains_key(OsStr::new("f099")) && files.contains_key(OsStr::new("big")));
    std::thread::sleep(Duration::from_millis(300));
    let stray: Vec<_> = files.keys().filter(|n| resident(&plain.path().join("d").join(n)) > 0).collect();
    assert!(stray.is_empty(), "without prefetch, listed files became resident: {stray:?}");
    plain.unmount();

    let mp = scratch.mkdir("pf");
    let pf = mount_with(&layers, &mp, ",prefetch=3");
    let d = mp.join("d");
    let files = list(&d);
    let deadline = Instant::now() + Duration::from_secs(20);
    let small: Vec<(&OsString, u64)> =
        files.iter().filter(|(n, _)| n.as_os_str() != "big").map(|(n, s)| (n, *s)).collect();
    loop {
        let missing: Vec<_> = small.iter().filter(|(n, size)| resident(&d.join(n)) < *size).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "20 s after the listing, not (wholly) resident: {missing:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(resident(&d.join("big")), 0, "a file over the limit is left to the kernel's readahead");

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

#[test]
fn prefetch_option_is_checked() {
    require_root();
    let scratch = Scratch::new("prefetch-opt");
    let lower = scratch.mkdir("lower");
    fs::write(lower.join("f"), "x").unwrap();
    let mp = scratch.mkdir("mp");
    for bad in ["prefetch=x", "prefetch=65", "prefetch=-1"] {
        let out =
            Command::new(bin()).arg("-o").arg(format!("lowerdir={},{bad}", lower.display())).arg(&mp).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert_eq!(err.lines().count(), 1, "{bad}: one line: {err}");
        assert!(err.contains(bad), "{bad}: the error names the option: {err}");
        assert!(!is_mounted(&mp), "{bad}: nothing mounted");
    }
}
