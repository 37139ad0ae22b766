//! One `Image` shared by many threads: random reads, lookups and readdirs agree byte for byte
//! with a single-threaded read done first, while tiny cache budgets force constant eviction;
//! the caches stay within budget; and a block missed by many threads at once is decompressed
//! exactly once (single-flight).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, OnceLock};

use common::{content, mksquashfs, read_all};
use parallaxfs_squash::{block_kind, BlockKind, CacheConfig, DirEntry, Image, IoMode, Kind, OpenOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const THREADS: usize = 8;
const ITERATIONS: usize = 3000;

/// A tree of compressible and incompressible multi-block files and a few directories, and
/// its image (zstd, 64 KiB blocks).
fn fixture() -> &'static (PathBuf, PathBuf) {
    static FX: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FX.get_or_init(|| {
        let dir = common::scratch("concurrency");
        let root = dir.join("root");
        let mut rng = SmallRng::seed_from_u64(42);
        for d in ["a", "a/b", "c"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let sizes = [1_500_000usize, 700_001, 300_000, 65_536, 65_537, 50_000, 4097, 100];
        for (i, size) in sizes.iter().enumerate() {
            let text = [1.0, 0.5, 0.8, 1.0, 0.0, 0.9, 1.0, 1.0][i];
            std::fs::write(root.join(format!("f{i}")), content(&mut rng, *size, text)).unwrap();
            std::fs::write(root.join(format!("a/b/g{i}")), content(&mut rng, size / 3 + 1, text)).unwrap();
        }
        for i in 0..150 {
            std::fs::write(root.join(format!("c/small-file-number-{i:03}")), content(&mut rng, i * 37, 0.7)).unwrap();
        }
        let image = dir.join("image.squash");
        mksquashfs(&root, &image, &["-comp", "zstd", "-b", "65536"]);
        (root, image)
    })
}

fn open(image: &Path, io: IoMode, cache: CacheConfig) -> Image {
    Image::open_with(File::open(image).unwrap(), &OpenOptions { io, cache }).unwrap()
}

/// Everything a single thread reads first: file contents and directory listings by path.
struct Expected {
    files: Vec<(Vec<u8>, Vec<u8>)>,
    dirs: Vec<(Vec<u8>, Vec<DirEntry>)>,
}

fn single_threaded(img: &Image, root: &Path) -> Expected {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for (path, r, kind) in common::all_inodes(img) {
        let inode = img.inode(r).unwrap();
        match kind {
            Kind::File => {
                let data = read_all(img, &inode, 100_000).unwrap();
                let on_disk = std::fs::read(root.join(std::str::from_utf8(&path[1..]).unwrap())).unwrap();
                assert!(data == on_disk, "{} differs from the source tree", String::from_utf8_lossy(&path));
                files.push((path, data));
            }
            Kind::Dir => dirs.push((path, img.read_dir(&inode).unwrap())),
            _ => {}
        }
    }
    Expected { files, dirs }
}

fn hammer(img: &Image, expected: &Expected, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 300_000];
    for _ in 0..ITERATIONS {
        match rng.gen_range(0..10) {
            0..=6 => {
                let (path, data) = &expected.files[rng.gen_range(0..expected.files.len())];
                let inode = img.resolve(path).unwrap();
                let off = rng.gen_range(0..=data.len() + 10);
                let len = rng.gen_range(1..=buf.len());
                let n = img.read_at(&inode, off as u64, &mut buf[..len]).unwrap();
                let want = &data[off.min(data.len())..(off + len).min(data.len())];
                assert_eq!(n, want.len(), "{} at {off}+{len}", String::from_utf8_lossy(path));
                assert!(buf[..n] == *want, "{} at {off}+{len}: bytes differ", String::from_utf8_lossy(path));
            }
            7..=8 => {
                let (path, entries) = &expected.dirs[rng.gen_range(0..expected.dirs.len())];
                let dir = img.resolve(path).unwrap();
                if let Some(e) = entries.get(rng.gen_range(0..entries.len().max(1))) {
                    assert_eq!(img.lookup(&dir, &e.name).unwrap().as_ref(), Some(e));
                    let mut absent = e.name.to_vec();
                    absent.push(b'!');
                    assert_eq!(img.lookup(&dir, &absent).unwrap(), None);
                }
            }
            _ => {
                let (path, entries) = &expected.dirs[rng.gen_range(0..expected.dirs.len())];
                let dir = img.resolve(path).unwrap();
                assert_eq!(&img.read_dir(&dir).unwrap(), entries);
            }
        }
    }
}

#[test]
fn threads_agree_with_one_thread_under_eviction() {
    let (root, image) = fixture();
    let cache = CacheConfig { metadata_bytes: 8 << 10, fragment_bytes: 256 << 10, data_bytes: 256 << 10, inodes: 64 };
    let budget = cache.metadata_bytes + cache.fragment_bytes + cache.data_bytes;
    for io in [IoMode::Mmap, IoMode::Pread] {
        let img = open(image, io, cache);
        let expected = Arc::new(single_threaded(&img, root));
        // Compressed data blocks of the image: a run that decompresses more blocks than that
        // has evicted and reloaded.
        let mut compressed = HashSet::new();
        for (path, _) in &expected.files {
            if let Some(map) = img.block_map(&img.resolve(path).unwrap()).unwrap() {
                for k in 0..map.len() {
                    let (at, w) = map.block(k);
                    if matches!(block_kind(w), BlockKind::Compressed(_)) {
                        compressed.insert(at);
                    }
                }
            }
        }
        assert!(compressed.len() > 20, "fixture has only {} compressed blocks", compressed.len());
        let before = img.stats();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (img, expected) = (img.clone(), expected.clone());
                std::thread::spawn(move || hammer(&img, &expected, 1000 + t as u64))
            })
            .collect();
        for h in handles {
            h.join().expect("reader thread failed");
        }
        let after = img.stats();
        assert!(
            after.cached_bytes <= budget + 4096,
            "{io:?}: caches hold {} bytes, budget {budget}",
            after.cached_bytes
        );
        let reloaded = after.data_misses - before.data_misses;
        assert!(reloaded > compressed.len() as u64, "{io:?}: only {reloaded} data blocks decompressed: no eviction?");
        assert!(after.metadata_misses > before.metadata_misses, "{io:?}: metadata never evicted");
    }
}

/// Cold cache, many threads, one compressed block, released together by a barrier: the block
/// is decompressed once and every other thread gets it from the cache.
#[test]
fn concurrent_misses_on_one_block_decompress_it_once() {
    let dir = common::scratch("single-flight");
    let mut rng = SmallRng::seed_from_u64(7);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let data = content(&mut rng, 6 << 20, 1.0);
    std::fs::write(dir.join("root/text"), &data).unwrap();
    let image = dir.join("image.squash");
    // 1 MiB blocks: each takes long enough to decompress that the threads really overlap.
    mksquashfs(&dir.join("root"), &image, &["-comp", "zstd", "-b", "1M"]);
    // A budget that holds the whole file: what is measured is single-flight, not eviction.
    let cache = CacheConfig { data_bytes: 64 << 20, ..CacheConfig::default() };
    for io in [IoMode::Mmap, IoMode::Pread] {
        let img = open(&image, io, cache);
        let inode = img.resolve(b"/text").unwrap();
        let map = img.block_map(&inode).unwrap().unwrap();
        let bs = u64::from(img.superblock().block_size);
        for k in 0..map.len() as u64 {
            assert!(matches!(block_kind(map.block(k as usize).1), BlockKind::Compressed(_)));
            let before = img.stats();
            let barrier = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (img, inode, barrier) = (img.clone(), inode.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 4096];
                        let off = k * bs + t as u64 * 1000;
                        barrier.wait();
                        let n = img.read_at(&inode, off, &mut buf).unwrap();
                        (off, buf[..n].to_vec())
                    })
                })
                .collect();
            for h in handles {
                let (off, got) = h.join().unwrap();
                assert!(got == data[off as usize..off as usize + 4096]);
            }
            let after = img.stats();
            assert_eq!(after.data_misses - before.data_misses, 1, "{io:?} block {k}: decompressed more than once");
            assert_eq!(after.data_hits - before.data_hits, THREADS as u64 - 1, "{io:?} block {k}");
        }
    }
}

/// A read of a whole block (what sequential and page-store reads ask) is decompressed into
/// the caller's buffer and never enters the block cache; a block already cached by a partial
/// read is served from the cache.
#[test]
fn whole_block_reads_bypass_the_block_cache() {
    let (root, image) = fixture();
    let data = std::fs::read(root.join("f0")).unwrap();
    for io in [IoMode::Mmap, IoMode::Pread] {
        let img = open(image, io, CacheConfig::default());
        let inode = img.resolve(b"/f0").unwrap();
        let bs = img.superblock().block_size as usize;
        let mut block = vec![0u8; bs];
        // Block 0 first: the file's block list is then in the metadata cache.
        assert_eq!(img.read_at(&inode, 0, &mut block).unwrap(), bs);
        assert!(block == data[..bs]);
        for k in [1usize, 1] {
            let before = img.stats();
            assert_eq!(img.read_at(&inode, (k * bs) as u64, &mut block).unwrap(), bs);
            assert!(block == data[k * bs..(k + 1) * bs], "{io:?} block {k}");
            let after = img.stats();
            assert_eq!(after.data_misses - before.data_misses, 1, "{io:?}: a whole block is decompressed");
            assert_eq!(after.cached_bytes, before.cached_bytes, "{io:?}: and not cached");
        }
        let mut page = vec![0u8; 4096];
        img.read_at(&inode, (2 * bs + 100) as u64, &mut page).unwrap();
        assert!(page == data[2 * bs + 100..2 * bs + 4196]);
        let before = img.stats();
        assert!(before.cached_bytes > 0, "{io:?}: a partial read caches its block");
        assert_eq!(img.read_at(&inode, (2 * bs) as u64, &mut block).unwrap(), bs);
        assert!(block == data[2 * bs..3 * bs]);
        let after = img.stats();
        assert_eq!((after.data_misses, after.data_hits), (before.data_misses, before.data_hits + 1), "{io:?}");
    }
}

/// Open is cheap to repeat from many threads at once, and clones share one cache.
#[test]
fn clones_share_caches() {
    let (_, image) = fixture();
    let img = open(image, IoMode::Auto, CacheConfig::default());
    let inode = img.resolve(b"/f0").unwrap();
    let mut buf = vec![0u8; 1000];
    img.read_at(&inode, 0, &mut buf).unwrap();
    let misses = img.stats().data_misses;
    let clone = img.clone();
    clone.read_at(&clone.resolve(b"/f0").unwrap(), 10, &mut buf).unwrap();
    assert_eq!(clone.stats().data_misses, misses);
    assert_eq!(img.stats(), clone.stats());
    let per_path: BTreeMap<_, _> = common::all_inodes(&clone).into_iter().map(|(p, r, _)| (p, r)).collect();
    assert!(per_path.len() > 160);
}
