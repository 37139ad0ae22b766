//! Criterion benches of the SquashFS reader alone (`parallaxfs_squash`, no FUSE, no kernel).
//!
//! `cargo bench --bench reader` builds its images with `mksquashfs -comp zstd
//! -Xcompression-level 3 -b 128K` in a temporary directory under `/var/tmp` (or `BENCH_TMP`),
//! measures, prints a summary table with the ratios the goals ask for, writes it to
//! `benches/out/reader.md`, and removes the images.
//!
//! - `seq_read`: a 1 GiB file (`BENCH_BIG_MB`), half random and half text in 32 KiB runs (zstd
//!   packs it about 1.5:1), read start to end in 1 MiB `Image::read_at` calls, against bare zstd
//!   decompression of the same blocks into one reused buffer on one core (the limit). Goals:
//!   reader ≥ 0.85× bare zstd on one thread, ≥ 1.6× with two threads.
//! - `random_4k`: 4 KiB `read_at` at random 4 KiB-aligned offsets of the same file, 1 and 2
//!   threads. The data cache is the default (small), so most reads decompress a block.
//! - `open_lookup`: opening an image plus one path lookup in a 1,000-file and a 200,000-file
//!   image (`BENCH_LARGE_FILES`), with the mmap backend, with mmap and no lookup, and with pread.
//!   Goal: the same time within noise (opening is O(1)). Their peak RSS
//!   is measured in fresh processes (this binary re-run with `PARALLAXFS_BENCH_RSS` set, and
//!   `parallaxfs image stat` under `/usr/bin/time -v` when both exist).
//!
//! Without `--bench` (e.g. `cargo test --benches`, criterion's test mode) the images are tiny.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use parallaxfs_squash::{block_kind, BlockKind, Image, Inode, IoMode, OpenOptions};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// Set in a child run of this binary: `IMAGE\nPATH` to open and look up, then print peak RSS.
const RSS_CHILD_ENV: &str = "PARALLAXFS_BENCH_RSS";
const BIG_PATH: &str = "big/big.bin";
const READ_SIZE: usize = 1 << 20;
const RANDOM_READS: usize = 2048;
const FILES_PER_DIR: usize = 1000;

/// Per-iteration times of every bench, as measured inside `iter_custom` (warm-up included;
/// the summary takes medians, which the few warm-up calls do not move).
static TIMES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(name: &str, iters: u64, elapsed: Duration) {
    if iters > 0 {
        let per = elapsed.as_secs_f64() / iters as f64;
        TIMES.lock().unwrap().entry(name.to_owned()).or_default().push(per);
    }
}

fn median_secs(name: &str) -> Option<f64> {
    let times = TIMES.lock().unwrap();
    let mut v = times.get(name)?.clone();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 })
}

struct Sizes {
    big_mb: u64,
    small_files: usize,
    large_files: usize,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn sizes() -> Sizes {
    let real = std::env::args().any(|a| a == "--bench");
    Sizes {
        big_mb: env_num("BENCH_BIG_MB", if real { 1024 } else { 16 }),
        small_files: 1000,
        large_files: env_num("BENCH_LARGE_FILES", if real { 200_000 } else { 2000 }) as usize,
    }
}

// ------------------------------------------------------------------------------------------
// Images

fn mksquashfs(src: &Path, image: &Path) {
    let t0 = Instant::now();
    let status = Command::new("mksquashfs")
        .arg(src)
        .arg(image)
        .args(["-noappend", "-comp", "zstd", "-Xcompression-level", "3", "-b", "128K", "-no-progress", "-quiet"])
        .status()
        .expect("mksquashfs (apt-get install squashfs-tools)");
    assert!(status.success(), "mksquashfs {} failed: {status}", image.display());
    let len = std::fs::metadata(image).unwrap().len();
    eprintln!("built {} ({:.1} MiB) in {:.1} s", image.display(), len as f64 / 1048576.0, t0.elapsed().as_secs_f64());
}

/// Pseudo-text: words of a 300-word vocabulary, the first ones far more frequent.
fn text_pool(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let letters = b"etaoinshrdlcumwfgypbvkjxqz";
    let vocab: Vec<Vec<u8>> = (0..300)
        .map(|_| {
            let n = rng.gen_range(2..=10);
            (0..n).map(|_| letters[(rng.gen::<f64>().powi(2) * 26.0) as usize]).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 16);
    let mut words = 0u32;
    while out.len() < len {
        let w = &vocab[(rng.gen::<f64>().powi(3) * 300.0) as usize];
        out.extend_from_slice(w);
        words += 1;
        out.push(if words % 12 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// An image holding `big/big.bin` of `mb` MiB: 32 KiB random, 32 KiB text, and so on.
fn build_big(dir: &Path, mb: u64) -> PathBuf {
    let src = dir.join("big-src");
    std::fs::create_dir_all(src.join("big")).unwrap();
    let mut rng = SmallRng::seed_from_u64(20250101);
    let pool = text_pool(&mut rng, 4 << 20);
    let chunk = 32 * 1024;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(src.join(BIG_PATH)).unwrap());
    let mut random = vec![0u8; chunk];
    for _ in 0..mb * (1 << 20) / (2 * chunk as u64) {
        rng.fill_bytes(&mut random);
        f.write_all(&random).unwrap();
        let at = rng.gen_range(0..pool.len() - chunk);
        f.write_all(&pool[at..at + chunk]).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let image = dir.join("big.squash");
    mksquashfs(&src, &image);
    std::fs::remove_dir_all(&src).unwrap();
    image
}

/// An image of `files` small files, `FILES_PER_DIR` per directory `dNNN/`.
fn build_tree(dir: &Path, files: usize) -> PathBuf {
    let src = dir.join(format!("tree{files}-src"));
    for i in 0..files {
        let d = src.join(format!("d{:03}", i / FILES_PER_DIR));
        if i % FILES_PER_DIR == 0 {
            std::fs::create_dir_all(&d).unwrap();
        }
        std::fs::write(d.join(format!("f{i:06}")), format!("file {i}\n")).unwrap();
    }
    let image = dir.join(format!("tree{files}.squash"));
    mksquashfs(&src, &image);
    std::fs::remove_dir_all(&src).unwrap();
    image
}

/// The lookup of the open+lookup bench: the last file of the last directory.
fn lookup_path(files: usize) -> String {
    format!("d{:03}/f{:06}", (files - 1) / FILES_PER_DIR, files - 1)
}

// ------------------------------------------------------------------------------------------
// Workloads

/// Reads `len` bytes of `file` from `start` in `READ_SIZE` calls; returns a checksum.
fn read_range(image: &Image, file: &Inode, start: u64, len: u64) -> u64 {
    let mut buf = vec![0u8; READ_SIZE];
    let mut pos = start;
    let end = start + len;
    let mut sum = 0u64;
    while pos < end {
        let want = ((end - pos) as usize).min(READ_SIZE);
        let n = image.read_at(file, pos, &mut buf[..want]).unwrap();
        assert!(n > 0, "short read at {pos}");
        sum = sum.wrapping_add(u64::from(buf[n - 1]));
        pos += n as u64;
    }
    sum
}

/// A data block of the file as stored: offset in the image, size word.
struct RawBlock {
    at: usize,
    kind: BlockKind,
}

/// Bare zstd: decompresses every block of the file from the image bytes into one buffer.
fn bare_zstd(bytes: &[u8], blocks: &[RawBlock], block_size: usize) -> u64 {
    let mut ctx = zstd::bulk::Decompressor::new().unwrap();
    let mut out = vec![0u8; block_size];
    let mut sum = 0u64;
    for b in blocks {
        let n = match b.kind {
            BlockKind::Compressed(len) => {
                ctx.decompress_to_buffer(&bytes[b.at..b.at + len as usize], &mut out).unwrap()
            }
            BlockKind::Uncompressed(len) => {
                out[..len as usize].copy_from_slice(&bytes[b.at..b.at + len as usize]);
                len as usize
            }
            BlockKind::Sparse => {
                out.fill(0);
                block_size
            }
        };
        sum = sum.wrapping_add(u64::from(out[n - 1]));
    }
    sum
}

fn random_reads(image: &Image, file: &Inode, reads: usize, seed: u64) -> u64 {
    let pages = file.size / 4096;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = [0u8; 4096];
    let mut sum = 0u64;
    for _ in 0..reads {
        let at = rng.gen_range(0..pages) * 4096;
        let n = image.read_at(file, at, &mut buf).unwrap();
        sum = sum.wrapping_add(u64::from(buf[n - 1]));
    }
    sum
}

/// Runs `f(thread index)` on `threads` threads at once.
fn on_threads(threads: usize, f: impl Fn(usize) -> u64 + Sync) -> u64 {
    if threads == 1 {
        return f(0);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || f(t))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).fold(0, u64::wrapping_add)
    })
}

fn bench_seq(c: &mut Criterion, image_path: &Path) {
    let image = Image::open(image_path).unwrap();
    let file = image.resolve(BIG_PATH.as_bytes()).unwrap();
    let block_size = image.superblock().block_size as usize;
    let map = image.block_map(&file).unwrap().expect("big file has data blocks");
    let blocks: Vec<RawBlock> = (0..map.len())
        .map(|k| {
            let (at, word) = map.block(k);
            RawBlock { at: at as usize, kind: block_kind(word) }
        })
        .collect();
    assert_eq!(file.size % block_size as u64, 0, "big file must end on a block boundary (no fragment)");
    let bytes = std::fs::read(image_path).unwrap();
    let size = file.size;

    let mut g = c.benchmark_group("seq_read");
    g.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Bytes(size));
    g.bench_function("bare_zstd_1_thread", |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(bare_zstd(&bytes, &blocks, block_size));
            }
            let e = t0.elapsed();
            record("seq/bare", iters, e);
            e
        })
    });
    for threads in [1usize, 2] {
        let name = format!("seq/reader{threads}");
        g.bench_function(BenchmarkId::new("reader", format!("{threads}_thread")), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let part = size / threads as u64;
                    std::hint::black_box(on_threads(threads, |t| {
                        let start = part * t as u64;
                        let len = if t + 1 == threads { size - start } else { part };
                        read_range(&image, &file, start, len)
                    }));
                }
                let e = t0.elapsed();
                record(&name, iters, e);
                e
            })
        });
    }
    g.finish();
}

fn bench_random(c: &mut Criterion, image_path: &Path) {
    let image = Image::open(image_path).unwrap();
    let file = image.resolve(BIG_PATH.as_bytes()).unwrap();
    let mut g = c.benchmark_group("random_4k");
    g.sample_size(20).warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(RANDOM_READS as u64));
    for threads in [1usize, 2] {
        let name = format!("random/{threads}");
        let mut round = 0u64;
        g.bench_function(BenchmarkId::new("reader", format!("{threads}_thread")), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    round += 1;
                    std::hint::black_box(on_threads(threads, |t| {
                        random_reads(&image, &file, RANDOM_READS / threads, round * 16 + t as u64)
                    }));
                }
                let e = t0.elapsed();
                record(&name, iters, e);
                e
            })
        });
    }
    g.finish();
}

/// The open + lookup variants: name, I/O backend, whether to look up.
const OPEN_VARIANTS: [(&str, IoMode, bool); 3] =
    [("mmap", IoMode::Mmap, true), ("mmap_open_only", IoMode::Mmap, false), ("pread", IoMode::Pread, true)];

fn bench_open(c: &mut Criterion, images: &[(usize, PathBuf)]) {
    let mut g = c.benchmark_group("open_lookup");
    g.sample_size(50).warm_up_time(Duration::from_millis(500));
    for (variant, io, lookup) in OPEN_VARIANTS {
        for (files, path) in images {
            let target = lookup_path(*files);
            let name = format!("open/{variant}/{files}");
            let opts = OpenOptions { io, ..OpenOptions::default() };
            g.bench_function(BenchmarkId::new(variant, files), |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        let image = Image::open_with(std::fs::File::open(path).unwrap(), &opts).unwrap();
                        if lookup {
                            std::hint::black_box(image.resolve(target.as_bytes()).unwrap());
                        }
                        std::hint::black_box(&image);
                    }
                    let e = t0.elapsed();
                    record(&name, iters, e);
                    e
                })
            });
        }
    }
    g.finish();
}

// ------------------------------------------------------------------------------------------
// Peak RSS of open + one lookup, each in a fresh process

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The child side: open + lookup (or nothing, for the baseline), then print `VmHWM RssAnon`.
fn rss_child(spec: &str) {
    if let Some((image, path)) = spec.split_once('\n') {
        let image = Image::open(Path::new(image)).unwrap();
        std::hint::black_box(image.resolve(path.as_bytes()).unwrap());
        println!("{} {}", status_kib("VmHWM"), status_kib("RssAnon"));
        drop(image);
    } else {
        println!("{} {}", status_kib("VmHWM"), status_kib("RssAnon"));
    }
}

/// (VmHWM, RssAnon) in KiB of a fresh run of this binary doing `spec`.
fn rss_of(spec: &str) -> Option<(u64, u64)> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe).env(RSS_CHILD_ENV, spec).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>());
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

/// Maximum RSS in KiB of `parallaxfs image stat IMAGE PATH` under `/usr/bin/time -v`.
fn cli_rss(image: &Path, path: &str) -> Option<u64> {
    let exe = option_env!("CARGO_BIN_EXE_parallaxfs")?;
    if !Path::new("/usr/bin/time").exists() {
        return None;
    }
    let out =
        Command::new("/usr/bin/time").arg("-v").arg(exe).args(["image", "stat"]).arg(image).arg(path).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines().find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):")?.trim().parse().ok())
}

// ------------------------------------------------------------------------------------------
// Summary

/// `v` rounded, with `,` between groups of three digits.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn summary(sz: &Sizes, big_bytes: u64, images: &[(usize, PathBuf)]) -> String {
    let mb = big_bytes as f64 / 1e6;
    let mbs = |name: &str| median_secs(name).map(|s| mb / s);
    let mut out = String::new();
    let date = Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().ok();
    let date = date.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let _ = writeln!(out, "reader bench, {date}, load average {}", load.join(" "));
    let _ = writeln!(
        out,
        "images: mksquashfs -comp zstd -Xcompression-level 3 -b 128K; big/big.bin {} MiB (half random, half text)\n",
        sz.big_mb
    );
    let _ = writeln!(out, "| bench | median | goal | met? |\n|---|---|---|---|");
    let bare = mbs("seq/bare");
    let fmt_opt = |v: Option<f64>, unit: &str| v.map_or("—".to_owned(), |v| format!("{} {unit}", thousands(v)));
    let _ = writeln!(
        out,
        "| seq read, bare zstd of the same blocks, 1 thread | {} | (the limit) | |",
        fmt_opt(bare, "MB/s")
    );
    for (threads, goal) in [(1, 0.85), (2, 1.6)] {
        let r = mbs(&format!("seq/reader{threads}"));
        let ratio = r.zip(bare).map(|(r, b)| r / b);
        let _ = writeln!(
            out,
            "| seq read, `Image::read_at` 1 MiB, {threads} thread{} | {} ({}× bare) | ≥ {goal}× bare 1 thread | {} |",
            if threads > 1 { "s" } else { "" },
            fmt_opt(r, "MB/s"),
            ratio.map_or("—".to_owned(), |x| format!("{x:.2}")),
            ratio.map_or("—", |x| if x >= goal { "yes" } else { "**no**" }),
        );
    }
    let one = median_secs("random/1").map(|s| RANDOM_READS as f64 / s);
    for threads in [1, 2] {
        let iops = median_secs(&format!("random/{threads}")).map(|s| RANDOM_READS as f64 / s);
        let scale = if threads > 1 {
            iops.zip(one).map_or(String::new(), |(a, b)| format!(" ({:.2}× 1 thread)", a / b))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| random 4 KiB `read_at`, {threads} thread{} | {}{scale} | — | |",
            if threads > 1 { "s" } else { "" },
            fmt_opt(iops, "reads/s")
        );
    }
    let micros = |name: String| median_secs(&name).map_or("—".to_owned(), |s| format!("{:.1} µs", s * 1e6));
    for (variant, _, lookup) in OPEN_VARIANTS {
        let small = median_secs(&format!("open/{variant}/{}", sz.small_files));
        let large = median_secs(&format!("open/{variant}/{}", sz.large_files));
        let ratio = large.zip(small).map(|(l, s)| l / s);
        let what = match (variant, lookup) {
            ("pread", _) => "open (`IoMode::Pread`) + 1 lookup",
            (_, false) => "open only (mmap)",
            _ => "open (mmap, the default here) + 1 lookup",
        };
        let _ = writeln!(
            out,
            "| {what}: {} files / {} files | {} / {} ({}×) | same within noise | {} |",
            thousands(sz.small_files as f64),
            thousands(sz.large_files as f64),
            micros(format!("open/{variant}/{}", sz.small_files)),
            micros(format!("open/{variant}/{}", sz.large_files)),
            ratio.map_or("—".to_owned(), |x| format!("{x:.2}")),
            ratio.map_or("—", |x| if x <= 1.1 { "yes" } else { "**no**" }),
        );
    }
    let mut rss = Vec::new();
    for (files, path) in images {
        let child = rss_of(&format!("{}\n{}", path.display(), lookup_path(*files)));
        let cli = cli_rss(path, &lookup_path(*files));
        rss.push((child, cli));
    }
    let kib = |v: Option<u64>| v.map_or("—".to_owned(), |k| format!("{} KiB", thousands(k as f64)));
    let _ = writeln!(
        out,
        "| peak RSS, open + 1 lookup in a fresh process: {} files / {} files | {} / {} (RssAnon {} / {}) | same | {} |",
        thousands(sz.small_files as f64),
        thousands(sz.large_files as f64),
        kib(rss[0].0.map(|r| r.0)),
        kib(rss[1].0.map(|r| r.0)),
        kib(rss[0].0.map(|r| r.1)),
        kib(rss[1].0.map(|r| r.1)),
        match (rss[0].0, rss[1].0) {
            (Some(a), Some(b)) if b.0 <= a.0 + 512 => "yes",
            (Some(_), Some(_)) => "**no**",
            _ => "—",
        },
    );
    let _ = writeln!(
        out,
        "| peak RSS of `parallaxfs image stat IMAGE PATH` (`/usr/bin/time -v`) | {} / {} | same | |",
        kib(rss[0].1),
        kib(rss[1].1),
    );
    let base = rss_of("baseline");
    let _ = writeln!(
        out,
        "\nPeak RSS of the bench binary started and doing nothing: {}. \"same\" for RSS allows 512 KiB; for time, \
         10%.",
        kib(base.map(|r| r.0)),
    );
    out
}

fn main() {
    if let Ok(spec) = std::env::var(RSS_CHILD_ENV) {
        rss_child(&spec);
        return;
    }
    let sz = sizes();
    let base = std::env::var_os("BENCH_TMP").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let dir = tempfile::Builder::new().prefix("parallaxfs-reader-bench-").tempdir_in(&base).unwrap();
    let big = build_big(dir.path(), sz.big_mb);
    let images: Vec<(usize, PathBuf)> =
        [sz.small_files, sz.large_files].into_iter().map(|n| (n, build_tree(dir.path(), n))).collect();

    let mut c = Criterion::default().configure_from_args();
    bench_seq(&mut c, &big);
    bench_random(&mut c, &big);
    bench_open(&mut c, &images);
    c.final_summary();

    let text = summary(&sz, sz.big_mb << 20, &images);
    println!("\n{text}");
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches").join("out");
    if std::fs::create_dir_all(&out_dir).is_ok() {
        let _ = std::fs::write(out_dir.join("reader.md"), &text);
    }
}
