//! Hostile images (squashfs.md §6): seeded mutations of real mksquashfs images must never make
//! the reader panic or hang, truncated files are refused at open, and one crafted image per
//! attack row gets the exact error.
//!
//! Seeds: the fixture tree built with `-noI -noD -noF -noX -b 4096` (mutations reach parser
//! logic instead of dying in a decompressor) and once per compressor. Each case mutates a seed
//! (byte flips, truncation at random points and at every metadata block boundary, superblock
//! table pointers and counts, inode fields, directory listing fields, metadata block headers),
//! opens it from memory (some cases through a temp file with pread or mmap, some with tiny
//! caches) and runs `check` plus a walk of every read API. Cases run on a worker thread; the
//! test fails naming every case that panicked, and at once if one runs longer than 10 s.
//!
//! Long runs: `PARALLAXFS_FUZZ_CASES=N` runs N random cases per seed;
//! `PARALLAXFS_FUZZ_ONLY=seed:case` replays one case.

mod common;

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{md_boundaries, md_chain, rd, wr, Raw, RawSb};
use parallaxfs_squash::{check, CacheConfig, Error, Image, InodeRef, IoMode, Kind, OpenOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A case running longer than this is a hang.
const CASE_LIMIT: Duration = Duration::from_secs(10);

struct SeedSpec {
    name: &'static str,
    args: &'static [&'static str],
    /// Random cases in a normal `cargo test` run.
    cases: usize,
    rng: u64,
}

const PLAIN: SeedSpec =
    SeedSpec { name: "plain", args: &["-noI", "-noD", "-noF", "-noX", "-b", "4096"], cases: 2500, rng: 0x0001 };
const COMPRESSED: &[SeedSpec] = &[
    SeedSpec { name: "gzip", args: &["-comp", "gzip", "-b", "4096"], cases: 600, rng: 0x0002 },
    SeedSpec { name: "lzma", args: &["-comp", "lzma", "-b", "8192"], cases: 600, rng: 0x0003 },
    SeedSpec { name: "lzo", args: &["-comp", "lzo", "-b", "16384"], cases: 600, rng: 0x0004 },
    SeedSpec { name: "xz", args: &["-comp", "xz", "-Xbcj", "x86", "-b", "8192"], cases: 600, rng: 0x0005 },
    SeedSpec { name: "lz4", args: &["-comp", "lz4", "-Xhc", "-b", "4096"], cases: 600, rng: 0x0006 },
    SeedSpec { name: "zstd", args: &["-comp", "zstd", "-b", "16384"], cases: 600, rng: 0x0007 },
];

/// The fixture tree, built once per test process.
fn tree() -> &'static std::path::Path {
    static TREE: OnceLock<std::path::PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let dir = common::scratch("tree");
        let root = dir.join("root");
        common::build_tree(&root);
        root
    })
}

fn build_image(name: &str, args: &[&str]) -> Vec<u8> {
    let dir = common::scratch(&format!("img-{name}"));
    let path = dir.join("image.squash");
    common::mksquashfs(tree(), &path, args);
    std::fs::read(&path).unwrap()
}

/// A seed image and what mutations can aim at.
struct Seed {
    bytes: Vec<u8>,
    sb: RawSb,
    /// Metadata block starts.
    md: Vec<u64>,
    /// Data block starts (from the clean image's block maps).
    data: Vec<u64>,
    /// Only for uncompressed metadata: raw layout, every inode and every listing field.
    raw: Option<RawTargets>,
}

struct RawTargets {
    raw: Raw,
    /// `(inode ref, on-disk type)`.
    inodes: Vec<(InodeRef, u16)>,
    /// `(directory, field positions (listing offset, width))`.
    listing_fields: Vec<(InodeRef, usize, usize)>,
}

impl Seed {
    fn new(spec: &SeedSpec) -> Seed {
        let bytes = build_image(spec.name, spec.args);
        let img = Image::from_bytes(bytes.clone().into()).unwrap();
        let report = check(&img).unwrap_or_else(|f| panic!("seed {} fails check: {f}", spec.name));
        assert!(
            report.files > 290 && report.specials >= 4 && report.xattrs >= 7,
            "seed {} is missing fixture parts: {report:?}",
            spec.name
        );
        let sb = RawSb::parse(&bytes);
        let all = common::all_inodes(&img);
        let mut data = Vec::new();
        for (_, r, kind) in &all {
            if *kind == Kind::File {
                if let Some(map) = img.block_map(&img.inode(*r).unwrap()).unwrap() {
                    data.extend((0..map.len()).map(|k| map.block(k).0));
                }
            }
        }
        data.sort_unstable();
        data.dedup();
        let raw = Raw::new(&bytes);
        let raw = raw.inode_blocks.iter().chain(&raw.dir_blocks).all(|m| m.uncompressed).then(|| {
            let inodes: Vec<_> = all.iter().map(|(_, r, _)| (*r, raw.read_inode(&bytes, *r, 0, 2) as u16)).collect();
            let mut listing_fields = Vec::new();
            for (_, r, kind) in &all {
                if *kind != Kind::Dir || raw.dir_listing(&bytes, *r).2 == 0 {
                    continue;
                }
                let (headers, entries) = raw.listing(&bytes, *r);
                for h in headers {
                    listing_fields.extend([(*r, h, 4), (*r, h + 4, 4), (*r, h + 8, 4)]);
                }
                for (e, _) in entries {
                    listing_fields.extend([(*r, e, 2), (*r, e + 2, 2), (*r, e + 4, 2), (*r, e + 6, 2), (*r, e + 8, 1)]);
                }
            }
            RawTargets { raw, inodes, listing_fields }
        });
        Seed { md: md_boundaries(&bytes), data, sb, bytes, raw }
    }
}

/// A value worth writing into a field of `width` bytes that held `orig`.
fn interesting(rng: &mut SmallRng, orig: u64, width: usize) -> u64 {
    let mask = if width >= 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
    const EDGES: &[u64] = &[255, 256, 257, 4095, 4096, 8191, 8192, 8193, 0x7fff, 0x8000, 65535, 65536, 1 << 24];
    let v = match rng.gen_range(0..12) {
        0 => 0,
        1 => mask,
        2 => orig.wrapping_add(1),
        3 => orig.wrapping_sub(1),
        4 => rng.gen(),
        5 => mask >> 1,
        6 => (mask >> 1) + 1,
        7 => orig.wrapping_add(rng.gen_range(2..64)),
        8 => orig.wrapping_sub(rng.gen_range(2..64)),
        9 => EDGES[rng.gen_range(0..EDGES.len())],
        10 => orig ^ (1 << rng.gen_range(0..8 * width)),
        _ => rng.gen_range(0..16),
    };
    v & mask
}

/// Superblock fields a mutation may overwrite: `(offset, width)`.
const SB_FIELDS: &[(usize, usize)] = &[
    (4, 4),  // inodes
    (12, 4), // block_size
    (16, 4), // fragments
    (20, 2), // compression
    (22, 2), // block_log
    (24, 2), // flags
    (26, 2), // no_ids
    (30, 2), // minor
    (32, 8), // root inode
    (40, 8), // bytes_used
    (48, 8), // id table
    (56, 8), // xattr id table
    (64, 8), // inode table
    (72, 8), // directory table
    (80, 8), // fragment table
    (88, 8), // export table
];

/// Field offsets and widths within an inode of on-disk type `t` (after the common header).
fn inode_fields(t: u16) -> &'static [(usize, usize)] {
    match t {
        1 => &[(16, 4), (20, 4), (24, 2), (26, 2), (28, 4)],
        8 => &[(16, 4), (20, 4), (24, 4), (28, 4), (32, 2), (34, 2), (36, 4), (40, 4), (44, 4), (48, 4)],
        2 => &[(16, 4), (20, 4), (24, 4), (28, 4), (32, 4), (36, 4)],
        9 => &[(16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 4), (52, 4), (56, 4)],
        3 | 10 => &[(16, 4), (20, 4), (24, 1)],
        4 | 5 => &[(16, 4), (20, 4)],
        11 | 12 => &[(16, 4), (20, 4), (24, 4)],
        13 | 14 => &[(16, 4), (20, 4)],
        _ => &[(16, 4)],
    }
}

const HEADER_FIELDS: &[(usize, usize)] = &[(0, 2), (2, 2), (4, 2), (6, 2), (8, 4), (12, 4)];

/// How a case opens its image.
#[derive(Debug, Clone, Copy)]
enum Open {
    Bytes,
    Pread,
    Mmap,
}

struct Case {
    desc: String,
    bytes: Vec<u8>,
    open: Open,
    tiny_cache: bool,
    /// The file is shorter than its superblock says: open must answer `Truncated`.
    expect_truncated: bool,
}

/// Number of deterministic truncation cases of a seed (they come first).
fn boundary_cases(seed: &Seed) -> usize {
    seed.md.len() * 8 + seed.data.len()
}

fn boundary_case(seed: &Seed, i: usize) -> Case {
    let mut bytes = seed.bytes.clone();
    let case =
        |desc, bytes, expect_truncated| Case { desc, bytes, open: Open::Bytes, tiny_cache: false, expect_truncated };
    if i < seed.md.len() * 8 {
        let (b, k) = (seed.md[i / 8], i % 8);
        let cut = (b as usize + (k % 4)).saturating_sub(1).min(bytes.len());
        bytes.truncate(cut);
        if k < 4 {
            case(format!("truncate at {cut} (md boundary {b})"), bytes, cut < seed.sb.bytes_used as usize)
        } else {
            if bytes.len() >= 48 {
                wr(&mut bytes, 40, 8, cut as u64);
            }
            case(format!("truncate at {cut} (md boundary {b}), bytes_used patched"), bytes, false)
        }
    } else {
        let cut = seed.data[i - seed.md.len() * 8] as usize;
        bytes.truncate(cut);
        case(format!("truncate at {cut} (data block boundary)"), bytes, true)
    }
}

fn random_case(seed: &Seed, rng: &mut SmallRng) -> Case {
    let mut bytes = seed.bytes.clone();
    let len = bytes.len();
    let meta_start = seed.sb.inode_table as usize;
    let mut desc = Vec::new();
    let mut expect_truncated = false;
    let rounds = if rng.gen_bool(0.1) { 2 } else { 1 };
    for _ in 0..rounds {
        match rng.gen_range(0..100) {
            0..=29 => {
                let n = rng.gen_range(1..=8);
                let mut flips = Vec::new();
                for _ in 0..n {
                    let at = if rng.gen_bool(0.7) { rng.gen_range(meta_start..len) } else { rng.gen_range(0..len) };
                    let x = rng.gen_range(1..=255u8);
                    bytes[at] ^= x;
                    flips.push(format!("{at}^{x:#x}"));
                }
                desc.push(format!("flip {}", flips.join(",")));
            }
            30..=34 => {
                let cut = rng.gen_range(0..bytes.len());
                bytes.truncate(cut);
                // Only an intact superblock is sure to reach the length check.
                expect_truncated |= desc.is_empty() && (cut as u64) < seed.sb.bytes_used;
                desc.push(format!("truncate at {cut}"));
                break;
            }
            35..=44 => {
                let cut = rng.gen_range(meta_start.min(bytes.len())..=bytes.len());
                bytes.truncate(cut);
                wr(&mut bytes, 40, 8, cut as u64);
                desc.push(format!("truncate at {cut}, bytes_used patched"));
                break;
            }
            45..=59 => {
                let (at, w) = SB_FIELDS[rng.gen_range(0..SB_FIELDS.len())];
                let orig = rd(&bytes, at, w);
                let v = match rng.gen_range(0..4) {
                    // Another table's start, or the file length: plausible lies.
                    0 => rd(&bytes, 48 + 8 * rng.gen_range(0..6), 8).wrapping_add(rng.gen_range(0..3)),
                    1 => len as u64 - rng.gen_range(0..3),
                    _ => interesting(rng, orig, w),
                };
                wr(&mut bytes, at, w, v);
                desc.push(format!("superblock[{at}..+{w}] {orig:#x} -> {v:#x}"));
            }
            60..=69 => {
                let m = seed.md[rng.gen_range(0..seed.md.len())] as usize;
                if m + 2 <= bytes.len() {
                    let orig = rd(&bytes, m, 2);
                    let v = match rng.gen_range(0..4) {
                        0 => orig ^ 0x8000,
                        1 => [0, 0x8000, 0x8000 | 8192, 0x8000 | 8193, 8193, 0x7fff, 0xffff][rng.gen_range(0..7)],
                        _ => interesting(rng, orig, 2),
                    };
                    wr(&mut bytes, m, 2, v);
                    desc.push(format!("md header at {m} {orig:#x} -> {v:#x}"));
                }
            }
            70..=84 if seed.raw.is_some() => {
                let t = seed.raw.as_ref().unwrap();
                let (r, ty) = t.inodes[rng.gen_range(0..t.inodes.len())];
                let fields = inode_fields(ty);
                let (k, w) = if rng.gen_bool(0.3) {
                    HEADER_FIELDS[rng.gen_range(0..HEADER_FIELDS.len())]
                } else {
                    fields[rng.gen_range(0..fields.len())]
                };
                if Raw::locate(&t.raw.inode_blocks, r.0 >> 16, (r.0 & 0xffff) as usize, k + w - 1).is_some() {
                    let orig = t.raw.read_inode(&bytes, r, k, w);
                    let v = interesting(rng, orig, w);
                    t.raw.write_inode(&mut bytes, r, k, w, v);
                    desc.push(format!("inode {:#x} (type {ty}) field +{k}/{w} {orig:#x} -> {v:#x}", r.0));
                }
            }
            85..=94 if seed.raw.is_some() => {
                let t = seed.raw.as_ref().unwrap();
                let (dir, k, w) = t.listing_fields[rng.gen_range(0..t.listing_fields.len())];
                let ats: Vec<usize> = (0..w).map(|i| t.raw.listing_at(&seed.bytes, dir, k + i)).collect();
                let orig: u64 = ats.iter().enumerate().map(|(i, &a)| u64::from(bytes[a]) << (8 * i)).sum();
                let v = interesting(rng, orig, w);
                for (i, &a) in ats.iter().enumerate() {
                    bytes[a] = (v >> (8 * i)) as u8;
                }
                desc.push(format!("listing of {:#x} +{k}/{w} {orig:#x} -> {v:#x}", dir.0));
            }
            _ => {
                // A structured overwrite anywhere in the metadata (inode, directory, fixed and
                // xattr tables, indexes): reaches the fields of compressed-metadata seeds'
                // tables that are stored raw (indexes, xattr id header, small blocks).
                let w = [1, 2, 4, 8][rng.gen_range(0..4)];
                if len > meta_start + w {
                    let at = rng.gen_range(meta_start..len - w);
                    let orig = rd(&bytes, at, w);
                    let v = interesting(rng, orig, w);
                    wr(&mut bytes, at, w, v);
                    desc.push(format!("overwrite [{at}..+{w}] {orig:#x} -> {v:#x}"));
                }
            }
        }
    }
    let open = match rng.gen_range(0..100) {
        0..=3 => Open::Pread,
        4..=5 => Open::Mmap,
        _ => Open::Bytes,
    };
    Case { desc: desc.join("; "), bytes, open, tiny_cache: rng.gen_bool(0.2), expect_truncated }
}

fn make_case(seed: &Seed, spec_rng: u64, i: usize) -> (Case, SmallRng) {
    let mut rng = SmallRng::seed_from_u64(spec_rng.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64);
    let case = if i < boundary_cases(seed) { boundary_case(seed, i) } else { random_case(seed, &mut rng) };
    (case, rng)
}

fn tiny_cache() -> CacheConfig {
    CacheConfig { metadata_bytes: 20_000, fragment_bytes: 40_000, data_bytes: 40_000, inodes: 16 }
}

/// What one case did: `Ok(opened)` or an expectation it broke.
fn run_case(case: Case, mut rng: SmallRng) -> Result<bool, String> {
    let cache = if case.tiny_cache { tiny_cache() } else { CacheConfig::default() };
    let img = match case.open {
        Open::Bytes => Image::from_bytes_with(case.bytes.into(), &cache),
        Open::Pread | Open::Mmap => {
            use std::io::Write;
            let mut f = tempfile::tempfile().map_err(|e| e.to_string())?;
            f.write_all(&case.bytes).map_err(|e| e.to_string())?;
            let io = if matches!(case.open, Open::Pread) { IoMode::Pread } else { IoMode::Mmap };
            Image::open_with(f, &OpenOptions { io, cache })
        }
    };
    if case.expect_truncated {
        return match img {
            Err(Error::Truncated { .. }) | Err(Error::NotSquashfs { .. }) => Ok(false),
            Err(e) => Err(format!("truncated file: want Error::Truncated at open, got {e:?}")),
            Ok(_) => Err("truncated file: open succeeded".into()),
        };
    }
    let Ok(img) = img else { return Ok(false) };
    common::exercise(&img, &mut rng);
    Ok(true)
}

enum Msg {
    Start(usize, String),
    Done(usize, Result<bool, String>),
}

/// Runs every case of one seed under a watchdog; fails listing the cases that panicked.
fn fuzz_seed(spec: &'static SeedSpec) {
    let t0 = Instant::now();
    let seed = Arc::new(Seed::new(spec));
    let random = std::env::var("PARALLAXFS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(spec.cases);
    let total = boundary_cases(&seed) + random;
    let only: Option<usize> = std::env::var("PARALLAXFS_FUZZ_ONLY").ok().and_then(|v| {
        let (name, case) = v.split_once(':')?;
        if name == spec.name {
            case.parse().ok()
        } else {
            Some(usize::MAX)
        }
    });
    let (tx, rx) = channel();
    let worker_seed = seed.clone();
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-{}", spec.name))
        .spawn(move || {
            for i in 0..total {
                if only.is_some_and(|o| o != i) {
                    continue;
                }
                let result = catch_unwind(AssertUnwindSafe(|| {
                    let (case, rng) = make_case(&worker_seed, spec.rng, i);
                    let _ = tx.send(Msg::Start(
                        i,
                        format!("{} [{:?}, tiny cache {}]", case.desc, case.open, case.tiny_cache),
                    ));
                    run_case(case, rng)
                }));
                let result = result.unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(format!("PANIC: {msg}"))
                });
                if tx.send(Msg::Done(i, result)).is_err() {
                    return;
                }
            }
        })
        .unwrap();
    let (mut current, mut failures, mut run, mut opened) = ((0, String::new()), Vec::new(), 0usize, 0usize);
    loop {
        match rx.recv_timeout(CASE_LIMIT) {
            Ok(Msg::Start(i, desc)) => current = (i, desc),
            Ok(Msg::Done(i, result)) => {
                run += 1;
                match result {
                    Ok(o) => opened += usize::from(o && i >= boundary_cases(&seed)),
                    Err(e) => failures.push(format!("{}:{i} ({}): {e}", spec.name, current.1)),
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "seed {} case {} ({}) still running after {CASE_LIMIT:?}: the reader hangs",
                spec.name, current.0, current.1
            ),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    worker.join().expect("fuzz worker died");
    println!(
        "seed {}: {run} cases ({} truncation-boundary, {random} random, {opened} of them opened), {} failed, {:.1} s",
        spec.name,
        boundary_cases(&seed),
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} of {run} cases failed:\n{}", failures.len(), failures.join("\n"));
    if only.is_none() {
        assert_eq!(run, total);
        // The mutations must mostly reach the parser, not die at open.
        assert!(opened * 4 >= random, "seed {}: only {opened} of {random} random cases opened", spec.name);
    }
}

#[test]
fn fuzz_uncompressed_metadata() {
    fuzz_seed(&PLAIN);
}

#[test]
fn fuzz_gzip() {
    fuzz_seed(&COMPRESSED[0]);
}

#[test]
fn fuzz_lzma() {
    fuzz_seed(&COMPRESSED[1]);
}

#[test]
fn fuzz_lzo() {
    fuzz_seed(&COMPRESSED[2]);
}

#[test]
fn fuzz_xz() {
    fuzz_seed(&COMPRESSED[3]);
}

#[test]
fn fuzz_lz4() {
    fuzz_seed(&COMPRESSED[4]);
}

#[test]
fn fuzz_zstd() {
    fuzz_seed(&COMPRESSED[5]);
}

// ---------------------------------------------------------------------------------------------
// Crafted images: one per row of the hostile table, each with the exact error.

/// The uncompressed-metadata seed with its raw layout and paths.
struct Fx {
    bytes: Vec<u8>,
    raw: Raw,
    img: Image,
}

fn fx() -> &'static Fx {
    static FX: OnceLock<Fx> = OnceLock::new();
    FX.get_or_init(|| {
        let bytes = build_image("crafted", PLAIN.args);
        let raw = Raw::new(&bytes);
        let img = Image::from_bytes(bytes.clone().into()).unwrap();
        Fx { bytes, raw, img }
    })
}

impl Fx {
    fn r(&self, path: &str) -> InodeRef {
        self.img.resolve(path.as_bytes()).unwrap_or_else(|e| panic!("{path}: {e}")).inode_ref
    }

    /// The image with `patch` applied; it must still open.
    fn patched(&self, patch: impl FnOnce(&mut Vec<u8>)) -> Image {
        let mut b = self.bytes.clone();
        patch(&mut b);
        Image::from_bytes(b.into()).expect("patched image opens")
    }

    /// The image with one inode field overwritten.
    fn with_inode_field(&self, path: &str, k: usize, width: usize, v: u64) -> Image {
        let r = self.r(path);
        self.patched(|b| self.raw.write_inode(b, r, k, width, v))
    }

    fn inode_type(&self, path: &str) -> u64 {
        self.raw.read_inode(&self.bytes, self.r(path), 0, 2)
    }

    /// Writes `v` at byte `k` of the listing of directory `dir`.
    fn write_listing(&self, b: &mut [u8], dir: InodeRef, k: usize, width: usize, v: u64) {
        for i in 0..width {
            let at = self.raw.listing_at(&self.bytes, dir, k + i);
            b[at] = (v >> (8 * i)) as u8;
        }
    }

    /// Listing offset of the entry named `name` in `dir`, and of the header before it.
    fn entry(&self, dir: &str, name: &str) -> (usize, usize) {
        let (headers, entries) = self.raw.listing(&self.bytes, self.r(dir));
        let e = entries.iter().find(|(_, n)| n == name.as_bytes()).expect("entry exists").0;
        let h = *headers.iter().filter(|&&h| h < e).max().unwrap();
        (h, e)
    }
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: parallaxfs_squash::Result<T>) {
    match r {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("want Error::Corrupt, got {other:?}"),
    }
}

fn inode(img: &Image, path: &str) -> Arc<parallaxfs_squash::Inode> {
    img.resolve(path.as_bytes()).unwrap()
}

fn read_file(img: &Image, path: &str) -> parallaxfs_squash::Result<Vec<u8>> {
    let i = img.resolve(path.as_bytes())?;
    common::read_all(img, &i, 4096)
}

#[test]
fn truncated_file_is_refused_at_open() {
    use std::io::Write;
    let fx = fx();
    let used = RawSb::parse(&fx.bytes).bytes_used;
    assert!(used as usize <= fx.bytes.len());
    for cut in [used - 1, used / 2, 97, 96, 95, 4] {
        let short = fx.bytes[..cut as usize].to_vec();
        assert!(
            matches!(Image::from_bytes(short.clone().into()), Err(Error::Truncated { bytes_used, file_len })
                if bytes_used >= cut && file_len == cut),
            "cut at {cut}"
        );
        for io in [IoMode::Pread, IoMode::Mmap] {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&short).unwrap();
            let r = Image::open_with(f, &OpenOptions { io, cache: CacheConfig::default() });
            assert!(matches!(r, Err(Error::Truncated { .. })), "cut at {cut} with {io:?}: {r:?}");
        }
    }
    // A superblock that claims one byte more than the file holds.
    let mut b = fx.bytes.clone();
    let len = b.len() as u64;
    wr(&mut b, 40, 8, len + 1);
    assert!(matches!(Image::from_bytes(b.into()), Err(Error::Truncated { .. })));
    assert!(matches!(Image::from_bytes(b"hsq".to_vec().into()), Err(Error::NotSquashfs { .. })));
}

#[test]
fn superblock_lies_are_refused_at_open() {
    let fx = fx();
    let open = |at: usize, w: usize, v: u64| {
        let mut b = fx.bytes.clone();
        wr(&mut b, at, w, v);
        Image::from_bytes(b.into())
    };
    assert!(matches!(open(0, 4, 0x1234_5678), Err(Error::NotSquashfs { magic: 0x1234_5678 })));
    assert!(matches!(open(0, 4, 0x5351_5348), Err(Error::Unsupported(m)) if m.contains("-fix")));
    assert!(matches!(open(28, 2, 3), Err(Error::Unsupported(_))));
    assert_corrupt(open(22, 2, 13)); // block_log disagrees with block_size
    assert_corrupt(open(12, 4, 3 << 12)); // block size not a power of two
    assert_corrupt(open(20, 2, 7)); // unknown compressor
    assert_corrupt(open(4, 4, 0)); // zero inodes
    assert_corrupt(open(26, 2, 0)); // no ids
    let sb = fx.raw.sb;
    assert_corrupt(open(64, 8, sb.dir_table)); // inode table not before the directory table
    assert_corrupt(open(72, 8, sb.bytes_used)); // directory table at the end
    assert_corrupt(open(48, 8, u64::MAX)); // id table absent
    assert_corrupt(open(32, 8, sb.root & !0xffff | 8192)); // root offset past any block
                                                           // Root offset inside 8 KiB but past the (short) last inode block.
    let last = fx.raw.inode_blocks.last().unwrap();
    assert!(last.len < 8000);
    assert_corrupt(open(32, 8, last.rel << 16 | 8000));
    // Root pointing at a regular file.
    assert_corrupt(open(32, 8, fx.r("/small.txt").0));
    // Every table pointer set to u64::MAX / past the end / off by one, one at a time: never Ok
    // with a wrong table, never a panic.
    for at in (48..96).step_by(8) {
        let orig = rd(&fx.bytes, at, 8);
        for v in [u64::MAX - 1, fx.bytes.len() as u64, orig.wrapping_add(1), orig.wrapping_sub(1)] {
            if let Ok(img) = open(at, 8, v) {
                let _ = check(&img);
            }
        }
    }
}

#[test]
fn metadata_block_header_length_0_or_over_8192() {
    let fx = fx();
    let first = fx.raw.inode_blocks[0];
    let in_first = common::all_inodes(&fx.img).into_iter().find(|(_, r, _)| r.0 >> 16 == 0).unwrap().1;
    for header in [0x8000u64, 0x8000 | 8193, 0x8000 | 0x7fff, 0, 8193] {
        let img = fx.patched(|b| wr(b, first.at as usize, 2, header));
        assert_corrupt(img.inode(in_first));
        assert!(check(&img).is_err());
    }
    // The uncompressed bit cleared: the raw bytes do not decompress.
    let img = fx.patched(|b| wr(b, first.at as usize, 2, first.len as u64));
    assert_corrupt(img.inode(in_first));
    // Same for the directory table: a directory whose listing starts in its first block.
    let (_, dir, _) = common::all_inodes(&fx.img)
        .into_iter()
        .find(|(_, r, k)| *k == Kind::Dir && matches!(fx.raw.dir_listing(&fx.bytes, *r), (0, _, len) if len > 0))
        .unwrap();
    let d = fx.raw.dir_blocks[0];
    let img = fx.patched(|b| wr(b, d.at as usize, 2, 0x8000));
    let dir = img.inode(dir).unwrap();
    assert_corrupt(img.read_dir(&dir));
    assert_corrupt(img.lookup(&dir, b"small.txt"));
}

#[test]
fn inode_header_fields() {
    let fx = fx();
    assert_eq!(fx.inode_type("/small.txt"), 9, "small.txt has xattrs: extended file");
    let r = fx.r("/d4/y");
    let no_ids = u64::from(fx.img.superblock().no_ids);
    let inodes = u64::from(fx.img.superblock().inodes);
    for (k, w, v, what) in [
        (0, 2, 0, "type 0"),
        (0, 2, 15, "type 15"),
        (0, 2, 0xffff, "type 65535"),
        (4, 2, no_ids, "uid index = no_ids"),
        (6, 2, 0xffff, "gid index"),
        (12, 4, 0, "inode number 0"),
        (12, 4, inodes + 1, "inode number past the count"),
    ] {
        let img = fx.with_inode_field("/d4/y", k, w, v);
        match img.inode(r) {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("{what}: want Corrupt, got {other:?}"),
        }
        assert!(check(&img).is_err(), "{what}: check passed");
    }
}

#[test]
fn symlink_target_lengths() {
    let fx = fx();
    assert_eq!(fx.inode_type("/links/long"), 3);
    let r = fx.r("/links/long");
    assert_eq!(&*fx.img.read_link(&fx.img.inode(r).unwrap()).unwrap(), "ab/".repeat(1000).as_bytes());
    for len in [0u64, 4096, 65536, u32::MAX as u64] {
        let img = fx.with_inode_field("/links/long", 20, 4, len);
        assert_corrupt(img.inode(r));
    }
    let img = fx.with_inode_field("/links/long", 24 + 7, 1, 0);
    assert_corrupt(img.inode(r));
    // Shorter but still inside the inode: accepted, and exactly that long.
    let img = fx.with_inode_field("/links/long", 20, 4, 4);
    assert_eq!(&*img.read_link(&img.inode(r).unwrap()).unwrap(), b"ab/a");
}

#[test]
fn fragment_references() {
    let fx = fx();
    let path = format!("/big/{}", common::big_name(1)); // 4 bytes, all in a fragment
    let path = path.as_str();
    assert_eq!(fx.inode_type(path), 2);
    let frags = u64::from(fx.img.superblock().fragments);
    let bs = u64::from(fx.img.superblock().block_size);
    let r = fx.r(path);
    assert_eq!(read_file(&fx.img, path).unwrap(), b"1\n1\n");
    assert_corrupt(fx.with_inode_field(path, 20, 4, frags).inode(r)); // index past the table
    assert_corrupt(fx.with_inode_field(path, 24, 4, bs).inode(r)); // offset past any block
                                                                   // Offset inside a block, but the tail would run past the fragment block's end.
    let img = fx.with_inode_field(path, 24, 4, bs - 1);
    assert!(matches!(img.read_at(&img.inode(r).unwrap(), 0, &mut [0u8; 10]), Err(Error::Corrupt { .. })));
    assert!(check(&img).is_err());
    // The fragment table entry itself: size word too big, start past the data area.
    assert_eq!(fx.inode_type("/small.txt"), 9);
    let frag = fx.raw.read_inode(&fx.bytes, fx.r("/small.txt"), 44, 4) as usize;
    assert!(frag < 512);
    let index = rd(&fx.bytes, fx.raw.sb.frag_table as usize, 8) as usize;
    // The first fragment table block is stored uncompressed (-noI): entries right after its header.
    let entry = index + 2 + 16 * frag;
    for (k, w, v) in [(8, 4, (1u64 << 24) | (bs + 1)), (0, 8, fx.raw.sb.inode_table), (8, 4, 0)] {
        let img = fx.patched(|b| wr(b, entry + k, w, v));
        assert_corrupt(read_file(&img, "/small.txt"));
    }
}

#[test]
fn data_block_fields() {
    let fx = fx();
    let path = "/multi.bin"; // 100,123 bytes: 24 blocks of 4 KiB + a fragment tail
    assert_eq!(fx.inode_type(path), 2);
    let r = fx.r(path);
    let bs = u64::from(fx.img.superblock().block_size);
    let original = read_file(&fx.img, path).unwrap();
    let read_block_3 = |img: &Image| img.read_at(&img.inode(r).unwrap(), 3 * bs, &mut [0u8; 100]);
    let word3 = fx.raw.read_inode(&fx.bytes, r, 32 + 12, 4);
    assert_eq!(word3, (1 << 24) | bs, "-noD stores blocks uncompressed");
    for (v, what) in [
        ((1 << 24) | (bs + 1), "longer than a block"),
        ((1 << 24) | (bs - 1), "uncompressed but shorter than the block"),
        (1 << 25 | bs, "unknown flag bit"),
        (bs, "compressed flag on raw bytes"),
    ] {
        let img = fx.with_inode_field(path, 32 + 12, 4, v);
        match read_block_3(&img) {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("block word {what}: want Corrupt, got {other:?}"),
        }
    }
    // Blocks that would run into the inode table.
    let img = fx.with_inode_field(path, 16, 4, fx.raw.sb.inode_table - 10);
    assert_corrupt(read_block_3(&img));
    // A sparse word reads zeros (legal), everything else is untouched.
    let img = fx.with_inode_field(path, 32 + 12, 4, 0);
    let mut data = read_file(&img, path).unwrap();
    assert!(data[3 * bs as usize..4 * bs as usize].iter().all(|&b| b == 0));
    data[3 * bs as usize..4 * bs as usize].copy_from_slice(&original[3 * bs as usize..4 * bs as usize]);
    // Later blocks shift back by the block's length: block 4 now reads what block 3 held.
    assert_eq!(data[..3 * bs as usize], original[..3 * bs as usize]);
    assert_eq!(data[4 * bs as usize..5 * bs as usize], original[3 * bs as usize..4 * bs as usize]);
}

#[test]
fn huge_file_size_with_few_blocks() {
    let fx = fx();
    let path = "/hl-a";
    assert_eq!(fx.inode_type(path), 9, "hard link with xattrs: extended inode");
    let r = fx.r(path);
    let img = fx.with_inode_field(path, 24, 8, 1 << 40);
    let i = img.inode(r).unwrap();
    assert_eq!(i.size, 1 << 40);
    assert_corrupt(img.read_at(&i, 1 << 39, &mut [0u8; 10]));
    assert!(check(&img).is_err());
    // sparse > size, size > i64::MAX.
    assert_corrupt(fx.with_inode_field(path, 32, 8, 20_001).inode(r));
    assert_corrupt(fx.with_inode_field(path, 24, 8, u64::MAX).inode(r));
}

#[test]
fn directory_header_and_entry_fields() {
    let fx = fx();
    let dir = fx.r("/d4");
    let (h, e) = fx.entry("/d4", "sub");
    let inodes = u64::from(fx.img.superblock().inodes);
    let cases: &[(usize, usize, u64, &str)] = &[
        (h, 4, 256, "header count + 1 = 257 entries"),
        (h, 4, u32::MAX as u64, "header count u32::MAX"),
        (h + 8, 4, 0, "header inode number 0"),
        (h + 8, 4, inodes + 1, "header inode number past the count"),
        (e + 4, 2, 0, "entry type 0"),
        (e + 4, 2, 8, "entry type 8 (extended types are not used in listings)"),
        (e + 6, 2, 256, "entry name length 257"),
        (e + 6, 2, 0xffff, "entry name length 65536"),
        (e, 2, 8192, "entry offset past any block"),
    ];
    for &(k, w, v, what) in cases {
        let img = fx.patched(|b| fx.write_listing(b, dir, k, w, v));
        let d = img.inode(dir).unwrap();
        match img.read_dir(&d) {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("{what}: read_dir wants Corrupt, got {other:?}"),
        }
        match img.lookup(&d, b"y") {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("{what}: lookup wants Corrupt, got {other:?}"),
        }
        assert!(check(&img).is_err(), "{what}: check passed");
    }
    // The listing claims fewer bytes than its entries take.
    let t = fx.inode_type("/d4");
    let size_field = if t == 1 { (24, 2) } else { (20, 4) };
    let size = fx.raw.read_inode(&fx.bytes, dir, size_field.0, size_field.1);
    let img = fx.with_inode_field("/d4", size_field.0, size_field.1, size - 1);
    assert_corrupt(img.read_dir(&img.inode(dir).unwrap()));
    // Entry offset inside 8 KiB but past the short last inode block it names.
    let last = fx.raw.inode_blocks.last().unwrap();
    let img = fx.patched(|b| {
        fx.write_listing(b, dir, h + 4, 4, last.rel);
        fx.write_listing(b, dir, e, 2, 8000);
    });
    let d = img.inode(dir).unwrap();
    let sub = img.read_dir(&d).unwrap().into_iter().find(|x| &*x.name == b"sub").unwrap();
    assert_corrupt(img.inode(sub.inode_ref));
    assert!(check(&img).is_err());
}

#[test]
fn directory_type_disagreeing_with_inode_is_reported_by_check() {
    let fx = fx();
    let (_, e) = fx.entry("/d4", "y");
    let img = fx.patched(|b| fx.write_listing(b, fx.r("/d4"), e + 4, 2, 3));
    let fault = check(&img).unwrap_err();
    assert!(matches!(fault.error, Error::Corrupt { what, .. } if what.contains("disagrees")), "{fault}");
}

#[test]
fn invalid_names_are_skipped_and_never_matched() {
    let fx = fx();
    let dir = fx.r("/big");
    let (_, e) = fx.entry("/big", &common::big_name(10));
    for bad in [b'/', 0] {
        let img = fx.patched(|b| fx.write_listing(b, dir, e + 8 + 3, 1, u64::from(bad)));
        let d = img.inode(dir).unwrap();
        let names = img.read_dir(&d).unwrap();
        assert_eq!(names.len(), 299, "the bad name is skipped");
        assert!(names.iter().all(|n| !n.name.contains(&bad)));
        let mut bad_name = common::big_name(10).into_bytes();
        bad_name[3] = bad;
        assert!(img.lookup(&d, &bad_name).unwrap().is_none());
        // Its neighbours are still found.
        assert!(img.lookup(&d, common::big_name(11).as_bytes()).unwrap().is_some());
    }
}

#[test]
fn directory_cycle_is_reported_by_check() {
    let fx = fx();
    // d1/d2 holds only d3: point that entry at d1 itself, so d1 contains itself two levels down.
    let (h, e) = fx.entry("/d1/d2", "d3");
    let d1 = fx.r("/d1");
    let d1_ino = u64::from(fx.img.inode(d1).unwrap().ino);
    let img = fx.patched(|b| {
        let d2 = fx.r("/d1/d2");
        fx.write_listing(b, d2, h + 4, 4, d1.0 >> 16);
        fx.write_listing(b, d2, h + 8, 4, d1_ino);
        fx.write_listing(b, d2, e, 2, d1.0 & 0xffff);
        fx.write_listing(b, d2, e + 2, 2, 0);
    });
    // The reader itself just follows it: d1/d2/d3 is d1.
    let looped = img.resolve(b"/d1/d2/d3/d2/d3/d2/d3/hl-b").unwrap();
    assert_eq!(looped.inode_ref, img.resolve(b"/d1/hl-b").unwrap().inode_ref);
    let t0 = Instant::now();
    let fault = check(&img).unwrap_err();
    assert!(matches!(fault.error, Error::Corrupt { what, .. } if what.contains("cycle")), "{fault}");
    assert!(fault.path.starts_with(b"/d1/d2/d3"), "{fault}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Pointing a deep entry at the root: same.
    let root = fx.img.root();
    let root_ino = u64::from(fx.img.inode(root).unwrap().ino);
    let img = fx.patched(|b| {
        let d2 = fx.r("/d1/d2");
        fx.write_listing(b, d2, h + 4, 4, root.0 >> 16);
        fx.write_listing(b, d2, h + 8, 4, root_ino);
        fx.write_listing(b, d2, e, 2, root.0 & 0xffff);
        fx.write_listing(b, d2, e + 2, 2, 0);
    });
    let fault = check(&img).unwrap_err();
    assert!(matches!(fault.error, Error::Corrupt { what, .. } if what.contains("cycle")), "{fault}");
}

#[test]
fn extended_directory_index_fields() {
    let fx = fx();
    let path = "/big";
    assert_eq!(fx.inode_type(path), 8, "300 entries: extended dir with an index");
    let r = fx.r(path);
    let i_count = fx.raw.read_inode(&fx.bytes, r, 32, 2);
    assert!(i_count >= 1);
    let listing_len = fx.raw.read_inode(&fx.bytes, r, 20, 4) - 3;
    let name_299 = common::big_name(299);
    assert_corrupt(fx.with_inode_field(path, 32, 2, 0xffff).inode(r)); // i_count
    assert_corrupt(fx.with_inode_field(path, 48, 4, 256).inode(r)); // index name length 257
                                                                    // Index entry pointing past the listing: lookups that use it fail, earlier names work.
    let img = fx.with_inode_field(path, 40, 4, listing_len + 5);
    let d = img.inode(r).unwrap();
    assert_corrupt(img.lookup(&d, name_299.as_bytes()));
    assert!(img.lookup(&d, common::big_name(0).as_bytes()).unwrap().is_some());
    // Index entry pointing into the middle of an entry: errors or misses, never a wrong entry.
    let img = fx.with_inode_field(path, 40, 4, fx.raw.read_inode(&fx.bytes, r, 40, 4) + 5);
    let d = img.inode(r).unwrap();
    match img.lookup(&d, name_299.as_bytes()) {
        Ok(Some(e)) => assert_eq!(&*e.name, name_299.as_bytes()),
        Ok(None) | Err(Error::Corrupt { .. }) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn xattr_fields() {
    let fx = fx();
    let sb = fx.raw.sb;
    let x = sb.xattr_table as usize;
    let kv_start = rd(&fx.bytes, x, 8);
    let ids = rd(&fx.bytes, x + 8, 4);
    let kv_blocks = md_chain(&fx.bytes, kv_start, sb.xattr_table);
    let path = "/eight.txt";
    assert_eq!(fx.inode_type(path), 9);
    let r = fx.r(path);
    let id = fx.raw.read_inode(&fx.bytes, r, 52, 4);
    let img = &fx.img;
    assert_eq!(img.get_xattr(&inode(img, path), b"user.eight").unwrap().unwrap(), b"12345678");
    // xattr id past the table: the inode itself is refused, as the kernel's iget does.
    let img = fx.with_inode_field(path, 52, 4, ids);
    assert_corrupt(img.inode(r).and_then(|i| img.list_xattr(&i)));
    // The id entry -> its key/value list.
    let id_block = rd(&fx.bytes, x + 16, 8) as usize;
    let entry = id_block + 2 + 16 * id as usize;
    let kv_ref = rd(&fx.bytes, entry, 8);
    let kv_at = |k: usize| Raw::locate(&kv_blocks, kv_ref >> 16, (kv_ref & 0xffff) as usize, k).unwrap();
    assert_eq!(rd(&fx.bytes, kv_at(0), 2), 0, "user. prefix");
    let name_len = rd(&fx.bytes, kv_at(2), 2) as usize;
    let vsize_at = 4 + name_len;
    assert_eq!(rd(&fx.bytes, kv_at(vsize_at), 4), 8);
    let patch = |k: usize, w: usize, v: u64| {
        let img = fx.patched(|b| {
            for i in 0..w {
                b[kv_at(k + i)] = (v >> (8 * i)) as u8;
            }
        });
        let i = img.inode(r).unwrap();
        (img.list_xattr(&i), img.get_xattr(&i, b"user.eight"))
    };
    // Out-of-line flag on an inline 8-byte value: "12345678" read as a reference far outside
    // the xattr table.
    let (_, got) = patch(0, 2, 0x100);
    assert_corrupt(got);
    // Value larger than Linux allows.
    let (_, got) = patch(vsize_at, 4, 65537);
    assert_corrupt(got);
    // Unknown prefix: skipped, not an error.
    let (names, got) = patch(0, 2, 5);
    assert_eq!(names.unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(got.unwrap(), None);
    // Reference in the id entry outside the xattr table.
    let img = fx.patched(|b| wr(b, entry, 8, (sb.xattr_table - kv_start + 10) << 16));
    assert_corrupt(img.list_xattr(&img.inode(r).unwrap()));
    // Count in the id entry larger than the list.
    let img = fx.patched(|b| wr(b, entry + 8, 4, u32::MAX as u64));
    assert!(img.list_xattr(&img.inode(r).unwrap()).is_err());
}

#[test]
fn export_table_entry_pointing_at_another_inode() {
    let fx = fx();
    let sb = fx.raw.sb;
    assert_ne!(sb.export_table, u64::MAX);
    let small = fx.img.inode(fx.r("/small.txt")).unwrap();
    assert_eq!(fx.img.inode_by_number(small.ino).unwrap(), Some(small.inode_ref));
    assert_eq!(fx.img.inode_by_number(0).unwrap(), None);
    assert_eq!(fx.img.inode_by_number(sb.inodes + 1).unwrap(), None);
    let block = rd(&fx.bytes, sb.export_table as usize, 8) as usize;
    let slot = block + 2 + 8 * (small.ino as usize - 1);
    assert_eq!(rd(&fx.bytes, slot, 8), small.inode_ref.0);
    let img = fx.patched(|b| wr(b, slot, 8, fx.img.root().0));
    assert_corrupt(img.inode_by_number(small.ino));
    let img = fx.patched(|b| wr(b, slot, 8, u64::MAX));
    assert_corrupt(img.inode_by_number(small.ino));
}

/// Forged readdir cookies (every byte offset of a 300-entry indexed listing) resume at the next
/// entry boundary: the entries returned are exactly the next ones of the full listing.
#[test]
fn every_readdir_cookie_resumes_at_the_next_entry() {
    let fx = fx();
    let r = fx.r("/big");
    let img = &fx.img;
    let d = img.inode(r).unwrap();
    let all = img.read_dir(&d).unwrap();
    assert_eq!(all.len(), 300);
    let (_, entries) = fx.raw.listing(&fx.bytes, r);
    assert_eq!(entries.len(), 300);
    for cookie in 0..d.size + 8 {
        let first = entries.iter().position(|(at, _)| *at as u64 >= cookie.saturating_sub(3)).unwrap_or(300);
        let mut got = Vec::new();
        img.read_dir_from(&d, cookie, &mut |e, _| {
            got.push(e.name.clone());
            if got.len() == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        let want: Vec<_> = all[first..].iter().take(3).map(|e| e.name.clone()).collect();
        assert_eq!(got, want, "cookie {cookie}");
    }
    // Every returned cookie resumes exactly after its entry.
    let mut cookies = Vec::new();
    img.read_dir_from(&d, 0, &mut |_, next| {
        cookies.push(next);
        ControlFlow::Continue(())
    })
    .unwrap();
    for (i, c) in cookies.iter().enumerate() {
        let mut rest = Vec::new();
        img.read_dir_from(&d, *c, &mut |e, _| {
            rest.push(e.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(rest, all[i + 1..]);
    }
}
