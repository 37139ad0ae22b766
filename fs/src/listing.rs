//! Directory listings as the kernel reads them: entries with their `d_off`, a cache of them
//! per directory, and when a cached one is out of date.
//!
//! Directories are read without OPENDIR (FUSE_NO_OPENDIR_SUPPORT, handle 0): a READDIR names
//! only the directory and the offset to go on from, and several readers, and the kernel's own
//! cached listing (FOPEN_CACHE_DIR), may join chunks of listings taken before and after a
//! change. So an offset must mean the same place in every listing of the directory:
//! - read-only stacks never change: `d_off` is the position (3 + index; 1 and 2 are the
//!   positions after `.` and `..`);
//! - writable stacks order entries by a hash of the name, keyed per mount, and an entry's
//!   `d_off` is its hash (a cookie, as ext4's hashed directories do). A READDIR at `offset`
//!   answers the entries whose cookie is greater: every entry that was there before and after a
//!   change is listed exactly once, whatever was created, removed or copied up meanwhile.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parallaxfs_overlay::DirItem;

/// Offsets below this are `.` (0 → 1) and `..` (1 → 2).
const FIRST_ITEM: u64 = 3;
/// Names sharing a hash get ranks below this in name order (2^-54 odds per pair: never seen).
const RANKS: u64 = 256;

/// A directory's listing, `.` and `..` apart.
#[derive(Debug)]
pub struct Listing {
    /// Node id of the directory (`d_ino` of `.`).
    pub dir: u64,
    /// `st_ino` of its parent directory (`d_ino` of `..`).
    pub parent: u64,
    /// Entries in offset order.
    pub items: Vec<DirItem>,
    /// `d_off` of each item, ascending; `None`: position order (3 + index).
    cookies: Option<Vec<u64>>,
    /// The directory's version this listing was taken at.
    version: Version,
}

impl Listing {
    /// A listing that never changes: offsets are positions.
    pub fn fixed(dir: u64, parent: u64, items: Vec<DirItem>) -> Listing {
        Listing { dir, parent, items, cookies: None, version: Version::default() }
    }

    /// A listing of a directory that may change, in the order of `order`'s cookies.
    pub fn hashed(dir: u64, parent: u64, items: Vec<DirItem>, order: &CookieOrder, version: Version) -> Listing {
        let (items, cookies) = order.sort(items);
        Listing { dir, parent, items, cookies: Some(cookies), version }
    }

    /// Index of the first item a READDIR at `offset` (> 1) answers.
    pub fn start(&self, offset: u64) -> usize {
        match &self.cookies {
            None => usize::try_from(offset.saturating_sub(FIRST_ITEM - 1)).unwrap_or(usize::MAX),
            Some(c) => c.partition_point(|&cookie| cookie <= offset),
        }
    }

    /// `d_off` of item `i`: the offset a READDIR goes on from after it.
    pub fn offset_of(&self, i: usize) -> u64 {
        match &self.cookies {
            None => FIRST_ITEM + i as u64,
            Some(c) => c[i],
        }
    }
}

/// The per-mount order of writable listings: a keyed hash of the name.
#[derive(Debug, Default)]
pub struct CookieOrder {
    key: RandomState,
}

impl CookieOrder {
    fn sort(&self, items: Vec<DirItem>) -> (Vec<DirItem>, Vec<u64>) {
        // 54 bits of hash, shifted past the rank: cookies stay below 2^62 (`loff_t` is signed).
        let mut keyed: Vec<(u64, DirItem)> =
            items.into_iter().map(|it| ((self.key.hash_one(&it.name) >> 10) * RANKS, it)).collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let mut cookies = Vec::with_capacity(keyed.len());
        let mut rank = 0;
        for (i, (hash, _)) in keyed.iter().enumerate() {
            rank = if i > 0 && keyed[i - 1].0 == *hash { (rank + 1).min(RANKS - 1) } else { 0 };
            cookies.push(FIRST_ITEM + hash + rank);
        }
        (keyed.into_iter().map(|(_, it)| it).collect(), cookies)
    }
}

/// A directory's version: its own changes, and every directory rename (which moves `..` and
/// whole trees).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    own: u64,
    renames: u64,
}

/// Versions of the directories of a writable stack, moved after every change of their names.
#[derive(Debug)]
pub struct Versions {
    changed: DashMap<u64, u64>,
    dir_renames: AtomicU64,
}

impl Default for Versions {
    fn default() -> Self {
        Versions { changed: crate::new_map(), dir_renames: AtomicU64::new(0) }
    }
}

impl Versions {
    /// The version of directory `dir` now. Read it before listing: a change that lands while
    /// the listing is taken then makes the listing out of date at once.
    pub fn of(&self, dir: u64) -> Version {
        let renames = self.dir_renames.load(Ordering::Acquire);
        Version { own: self.changed.get(&dir).map_or(0, |v| *v), renames }
    }

    /// Names in `dir` changed (after the change is done).
    pub fn changed(&self, dir: u64) {
        *self.changed.entry(dir).or_insert(0) += 1;
    }

    /// A directory moved (after the move is done).
    pub fn dir_renamed(&self) {
        self.dir_renames.fetch_add(1, Ordering::AcqRel);
    }
}

/// Listings kept between the READDIR requests of one listing (the kernel keeps the whole
/// listing once it has it); a writable stack's are used only while their version is current.
#[derive(Debug)]
pub struct Listings {
    cache: quick_cache::sync::Cache<u64, Arc<Listing>>,
    versions: Versions,
    order: CookieOrder,
}

impl Listings {
    /// A cache of `capacity` listings.
    pub fn new(capacity: usize) -> Listings {
        Listings {
            cache: parallaxfs_overlay::squash::counted_cache(capacity),
            versions: Versions::default(),
            order: CookieOrder::default(),
        }
    }

    /// The version bookkeeping (writable stacks).
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// The listing of `dir`, cached or taken by `list` (`Some(order)` for a directory that may
    /// change: `list` gets its version and the cookie order).
    pub fn get<E>(
        &self,
        dir: u64,
        writable: bool,
        list: impl FnOnce(Option<(&CookieOrder, Version)>) -> Result<Listing, E>,
    ) -> Result<Arc<Listing>, E> {
        if !writable {
            return self.cache.get_or_insert_with(&dir, || list(None).map(Arc::new));
        }
        let version = self.versions.of(dir);
        if let Some(l) = self.cache.get(&dir).filter(|l| l.version == version) {
            return Ok(l);
        }
        let fresh = Arc::new(list(Some((&self.order, version)))?);
        self.cache.insert(dir, fresh.clone());
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parallaxfs_overlay::FileKind;

    fn items(names: &[&str]) -> Vec<DirItem> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| DirItem::new(n.as_bytes().into(), i as u64 + 10, FileKind::File))
            .collect()
    }

    /// Reads `listing` from `offset` in chunks of `chunk` entries, as the kernel would.
    fn read_from(listing: &Listing, offset: u64, chunk: usize) -> (Vec<String>, u64) {
        let start = listing.start(offset);
        let end = (start + chunk).min(listing.items.len());
        let names = listing.items[start..end].iter().map(|i| String::from_utf8_lossy(&i.name).into_owned()).collect();
        let next = if end > start { listing.offset_of(end - 1) } else { offset };
        (names, next)
    }

    #[test]
    fn fixed_offsets_are_positions() {
        let l = Listing::fixed(1, 1, items(&["a", "b", "c"]));
        assert_eq!(l.start(2), 0);
        assert_eq!(l.offset_of(0), 3);
        assert_eq!(l.start(3), 1);
        assert_eq!(l.start(5), 3);
        assert!(l.start(u64::MAX) > 3);
    }

    #[test]
    fn hashed_cookies_ascend_and_stay_below_two_to_the_62() {
        let order = CookieOrder::default();
        let names: Vec<String> = (0..5000).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let l = Listing::hashed(1, 1, items(&refs), &order, Version::default());
        let cookies: Vec<u64> = (0..l.items.len()).map(|i| l.offset_of(i)).collect();
        assert!(cookies.windows(2).all(|w| w[0] < w[1]), "cookies must strictly ascend");
        assert!(cookies.iter().all(|&c| (FIRST_ITEM..1 << 62).contains(&c)));
        assert_eq!(l.start(2), 0);
    }

    #[test]
    fn entries_kept_across_a_change_are_listed_once() {
        let order = CookieOrder::default();
        let before: Vec<String> = (0..300).map(|i| format!("f{i:03}")).collect();
        let refs: Vec<&str> = before.iter().map(String::as_str).collect();
        let old = Listing::hashed(1, 1, items(&refs), &order, Version::default());
        // Read a third, then every other name goes and 100 new ones come.
        let (mut seen, offset) = read_from(&old, 2, 100);
        let after: Vec<String> = before.iter().step_by(2).cloned().chain((0..100).map(|i| format!("new{i}"))).collect();
        let refs: Vec<&str> = after.iter().map(String::as_str).collect();
        let new = Listing::hashed(1, 1, items(&refs), &order, Version::default());
        let mut offset = offset;
        loop {
            let (names, next) = read_from(&new, offset, 37);
            if names.is_empty() {
                break;
            }
            seen.extend(names);
            offset = next;
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "a name was listed twice");
        for kept in before.iter().step_by(2) {
            assert!(seen.contains(kept), "{kept} was there all along but not listed");
        }
    }

    #[test]
    fn a_change_or_a_directory_rename_moves_the_version() {
        let v = Versions::default();
        let v0 = v.of(7);
        v.changed(8);
        assert_eq!(v.of(7), v0);
        v.changed(7);
        let v1 = v.of(7);
        assert_ne!(v1, v0);
        v.dir_renamed();
        assert_ne!(v.of(7), v1);
    }

    #[test]
    fn a_writable_listing_is_taken_again_after_a_change() {
        let cache = Listings::new(4);
        let mut taken = 0;
        let mut get = |cache: &Listings| {
            cache
                .get::<()>(5, true, |o| {
                    taken += 1;
                    let (order, version) = o.expect("writable listings get an order");
                    Ok(Listing::hashed(5, 1, items(&["a"]), order, version))
                })
                .map(|_| ())
        };
        get(&cache).unwrap();
        get(&cache).unwrap();
        cache.versions().changed(5);
        get(&cache).unwrap();
        assert_eq!(taken, 2);
    }
}
