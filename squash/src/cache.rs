//! Bounded, thread-safe caches of decompressed blocks and parsed inodes, with counters.
//!
//! Built on `quick_cache::sync::Cache`: weighted capacity in bytes, sharded (no global lock),
//! S3-FIFO eviction (a big sequential read does not flush hot metadata), and single-flight
//! loading: concurrent misses on one key decompress it once while the others wait for it.
//! Metadata, fragment and data blocks live in separate caches, so a hostile image cannot make
//! one kind of block be served as another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::error::Result;

/// Cache budgets. Memory used by the reader is bounded by their sum plus small per-image state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Decompressed metadata blocks (inode, directory, id, fragment, xattr tables), in bytes.
    pub metadata_bytes: u64,
    /// Decompressed fragment blocks, in bytes (at least four blocks of the image are kept).
    pub fragment_bytes: u64,
    /// Decompressed data blocks, in bytes, at least four blocks of the image (uncompressed and
    /// sparse blocks never enter it).
    pub data_bytes: u64,
    /// Parsed inodes, in entries.
    pub inodes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        // File data belongs in the kernel page cache (FUSE keep_cache); these only absorb
        // unaligned and repeated reads. Sized so a daemon stays well under 16 MiB RSS.
        CacheConfig { metadata_bytes: 2 << 20, fragment_bytes: 512 << 10, data_bytes: 512 << 10, inodes: 1024 }
    }
}

/// Counters of one image, for `stats` and for tests that prove laziness.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) metadata_misses: AtomicU64,
    pub(crate) metadata_hits: AtomicU64,
    pub(crate) data_misses: AtomicU64,
    pub(crate) data_hits: AtomicU64,
    pub(crate) fragment_misses: AtomicU64,
    pub(crate) fragment_hits: AtomicU64,
    pub(crate) decompressed_bytes: AtomicU64,
}

/// A snapshot of an image's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Metadata blocks read from the image (cache misses).
    pub metadata_misses: u64,
    /// Metadata block cache hits.
    pub metadata_hits: u64,
    /// Compressed data blocks decompressed.
    pub data_misses: u64,
    /// Data block cache hits.
    pub data_hits: u64,
    /// Fragment blocks read.
    pub fragment_misses: u64,
    /// Fragment cache hits.
    pub fragment_hits: u64,
    /// Bytes produced by decompression, all kinds.
    pub decompressed_bytes: u64,
    /// Bytes held by the block caches now.
    pub cached_bytes: u64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// Weighs a cached block by its length plus bookkeeping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByLength;

/// Anything whose cache weight is its byte size.
pub(crate) trait Weighed {
    fn weight(&self) -> u64;
}

impl<T: Weighed> Weighter<u64, Arc<T>> for ByLength {
    fn weight(&self, _key: &u64, val: &Arc<T>) -> u64 {
        val.weight() + 64
    }
}

/// A byte-bounded cache keyed by absolute image offset.
pub(crate) struct BlockCache<T: Weighed> {
    cache: Cache<u64, Arc<T>, ByLength>,
}

impl<T: Weighed> std::fmt::Debug for BlockCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache").field("bytes", &self.cache.weight()).finish()
    }
}

impl<T: Weighed> BlockCache<T> {
    /// `typical` is the usual entry size, used to size the hash table.
    pub(crate) fn new(bytes: u64, typical: u64) -> Self {
        let bytes = bytes.max(1);
        let typical = typical.max(1);
        let items = usize::try_from((bytes / typical).max(16)).unwrap_or(16);
        // quick_cache splits the budget between shards and refuses an entry heavier than a
        // shard's share, so with 1 MiB blocks and a few MiB of budget the default shard count
        // (4 per core) would cache nothing. Keep room for at least four typical blocks a shard.
        let parallel = cores() * 4;
        let fit = usize::try_from(bytes / (4 * typical)).unwrap_or(1).max(1);
        let shards = prev_power_of_two(parallel.min(fit));
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(bytes)
            .shards(shards)
            .build()
            .expect("cache options are in range");
        BlockCache { cache: Cache::with_options(options, ByLength, Default::default(), Default::default()) }
    }

    /// Returns the cached block or loads it once, however many threads ask at the same time.
    pub(crate) fn get_or_load(
        &self,
        key: u64,
        hits: &AtomicU64,
        misses: &AtomicU64,
        load: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
        let mut loaded = false;
        let v = self.cache.get_or_insert_with(&key, || {
            loaded = true;
            load().map(Arc::new)
        })?;
        Counters::bump(if loaded { misses } else { hits }, 1);
        Ok(v)
    }

    /// The cached block, if any, counted as a hit; never loads.
    pub(crate) fn get(&self, key: u64, hits: &AtomicU64) -> Option<Arc<T>> {
        let v = self.cache.get(&key)?;
        Counters::bump(hits, 1);
        Some(v)
    }

    pub(crate) fn weight(&self) -> u64 {
        self.cache.weight()
    }
}

/// A count-bounded cache of parsed objects.
pub(crate) struct ObjectCache<T> {
    cache: Cache<u64, Arc<T>>,
}

impl<T> std::fmt::Debug for ObjectCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCache").field("len", &self.cache.len()).finish()
    }
}

/// CPUs this process may run on (its affinity mask, which Slurm's and Podman's cpusets set),
/// asked once. Not `available_parallelism`: that reads /proc/self/cgroup and the cgroup's CPU
/// quota files on every call (a tenth of a millisecond of every mount went there); a quota
/// limits CPU time, not how many threads may run at once.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else { return 4 };
        (0..nix::sched::CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).count().max(1)
    })
}

/// Shards for a concurrent map used by every request thread: a power of two, four per core
/// (as dashmap's default, which asks `available_parallelism` itself).
pub fn map_shards() -> usize {
    (cores() * 4).next_power_of_two().max(2)
}

/// A cache of at most `items` entries, sharded for [`cores`] (quick_cache's own default asks
/// the standard library again).
pub fn counted_cache<K: Eq + std::hash::Hash, V: Clone>(items: usize) -> quick_cache::sync::Cache<K, V> {
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(items)
        .weight_capacity(items as u64)
        .shards(prev_power_of_two(cores() * 4))
        .build()
        .expect("cache options are in range");
    quick_cache::sync::Cache::with_options(options, Default::default(), Default::default(), Default::default())
}

/// Largest power of two not above `n` (n ≥ 1).
fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

impl<T> ObjectCache<T> {
    pub(crate) fn new(entries: u64) -> Self {
        let n = usize::try_from(entries.max(16)).unwrap_or(16);
        ObjectCache { cache: counted_cache(n) }
    }

    pub(crate) fn get_or_load(&self, key: u64, load: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        self.cache.get_or_insert_with(&key, || load().map(Arc::new))
    }
}

#[cfg(test)]
mod tests {
    use super::{cores, map_shards};

    #[test]
    fn cores_are_the_cpus_of_the_affinity_mask() {
        // `nproc` counts the CPUs of the affinity mask too (and ignores cgroup quotas).
        let out = std::process::Command::new("nproc")
            .env_remove("OMP_NUM_THREADS")
            .env_remove("OMP_THREAD_LIMIT")
            .output()
            .unwrap();
        let nproc: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(cores(), nproc);
        assert!(map_shards().is_power_of_two() && map_shards() >= 2 * cores());
    }
}
