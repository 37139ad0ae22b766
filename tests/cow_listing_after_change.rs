//! A directory opened before a change and read after it: the kernel keeps what that first read
//! returns as the directory's listing (FOPEN_CACHE_DIR) for the directory as it is *then*, so the
//! daemon must list at the read, not at the open. Before, a name created or renamed in between
//! was missing from every later listing of the directory (seen as a lost rename in
//! `cow_concurrency`). Also a whiteout: a lower name deleted between open and read; a copy-up
//! between two partial listings; and a reader part-way through a directory while names before
//! and after its position change (offsets must mean the same place in every listing).

mod cow_common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use cow_common::{Guard, Scratch};

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// A writable union of `scratch`'s `lower` (filled by `fill` first) over an empty upper;
/// returns its mountpoint (unmounted when `guard` goes).
fn writable_union(scratch: &Scratch, guard: &mut Guard, fill: impl FnOnce(&Path)) -> PathBuf {
    let lower = scratch.dir("lower");
    fill(&lower);
    let mnt = scratch.dir("mnt");
    guard.mount_pfs(&lower, &scratch.dir("upper"), &scratch.dir("work"), &mnt);
    mnt
}

#[test]
fn a_change_between_open_and_read_is_in_every_later_listing() {
    let scratch = Scratch::new("listing-change");
    let mut guard = Guard::default();
    let mnt = writable_union(&scratch, &mut guard, |lower| {
        fs::create_dir(lower.join("d")).unwrap();
        for n in ["a", "b", "gone"] {
            fs::write(lower.join("d").join(n), n).unwrap();
        }
    });
    let d = mnt.join("d");
    let want = |extra: &[&str], less: &[&str]| -> BTreeSet<String> {
        let mut s: BTreeSet<String> = ["a", "b", "gone"].iter().map(|s| s.to_string()).collect();
        s.extend(extra.iter().map(|s| s.to_string()));
        s.retain(|n| !less.contains(&n.as_str()));
        s
    };
    assert_eq!(names(&d), want(&[], &[]));
    for round in 0..3 {
        // Opened (OPENDIR) now, read after the changes.
        let open = fs::read_dir(&d).unwrap();
        let created = format!("new{round}");
        fs::write(d.join(&created), "x").unwrap();
        let moved = format!("moved{round}");
        fs::write(mnt.join("elsewhere"), "y").unwrap();
        fs::rename(mnt.join("elsewhere"), d.join(&moved)).unwrap();
        if round == 0 {
            fs::remove_file(d.join("gone")).unwrap();
        }
        // Attributes fresh (the kernel then sees the directory's current mtime and version
        // when its cached listing starts with the read below).
        fs::metadata(&d).unwrap();
        let _read_through_the_old_open: Vec<_> = open.collect();
        let extra: Vec<String> = (0..=round).flat_map(|r| [format!("new{r}"), format!("moved{r}")]).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        for again in 0..2 {
            assert_eq!(names(&d), want(&extra, &["gone"]), "round {round}, listing {again} after the changes");
        }
    }
}

#[test]
fn a_copy_up_between_two_partial_listings_loses_and_repeats_no_name() {
    let scratch = Scratch::new("listing-copyup");
    let mut guard = Guard::default();
    let all: BTreeSet<String> = (0..3000).map(|i| format!("file-{i:04}")).collect();
    let mnt = writable_union(&scratch, &mut guard, |lower| {
        fs::create_dir(lower.join("big")).unwrap();
        for n in &all {
            fs::write(lower.join("big").join(n), n).unwrap();
        }
    });
    let big = mnt.join("big");
    // The directory is copied up first (a copy-up below needs it): then the only change
    // between the two listings is the copy-up of one file.
    fs::write(big.join("file-0000"), "changed").unwrap();
    // One getdents (32 KiB): the kernel caches the listing's first part only.
    let mut first = fs::read_dir(&big).unwrap();
    assert!(first.next().is_some());
    drop(first);
    // A file that comes after that part is copied up (the directory does not change).
    let late = big.join("file-2999");
    fs::OpenOptions::new().append(true).open(&late).unwrap().write_all(b"+").unwrap();
    // A second open reads on from where the cache ends; a third reads the cached whole.
    for round in 0..2 {
        let mut seen = Vec::new();
        for e in fs::read_dir(&big).unwrap() {
            seen.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
        let set: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), set.len(), "listing {round}: a name listed twice");
        assert!(
            set == all,
            "listing {round}: {} names, want {}; missing {:?}",
            set.len(),
            all.len(),
            all.difference(&set).collect::<Vec<_>>()
        );
    }
}

/// One reader part-way through a large directory while names before and after its position
/// are removed and created: with offsets that were positions, every removal before the reader
/// shifted the rest and a name it had not read yet was skipped (or a read one repeated). Every
/// name present before and after the changes must come exactly once; names removed or created
/// meanwhile may come or not.
#[test]
fn a_reader_part_way_through_a_changing_directory_lists_every_kept_name_once() {
    let scratch = Scratch::new("listing-cookies");
    let mut guard = Guard::default();
    let name = |i: usize| format!("entry-with-a-longish-name-{i:05}");
    let before: BTreeSet<String> = (0..5000).map(name).collect();
    let mnt = writable_union(&scratch, &mut guard, |lower| {
        fs::create_dir(lower.join("d")).unwrap();
        for (i, n) in before.iter().enumerate() {
            // Half in the lower layer, half created through the mount below.
            if i % 2 == 0 {
                fs::write(lower.join("d").join(n), "l").unwrap();
            }
        }
    });
    let d = mnt.join("d");
    for (i, n) in before.iter().enumerate() {
        if i % 2 == 1 {
            fs::write(d.join(n), "u").unwrap();
        }
    }
    for round in 0..3 {
        let mut current = names(&d);
        // A change after that listing: the kernel's cached listing is stale, so the reader's
        // requests reach the daemon instead of being answered from the cache.
        let marker = format!("marker-{round}");
        fs::write(d.join(&marker), "m").unwrap();
        current.insert(marker);
        let mut reader = fs::read_dir(&d).unwrap();
        let mut seen: Vec<String> = Vec::new();
        // About 40% read (several getdents of 32 KiB), the rest after the changes.
        for e in reader.by_ref().take(current.len() * 2 / 5) {
            seen.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
        // Every seventh name goes (lower ones become whiteouts), 700 new ones come.
        let removed: BTreeSet<String> = current.iter().step_by(7).cloned().collect();
        for n in &removed {
            fs::remove_file(d.join(n)).unwrap();
        }
        let created: BTreeSet<String> = (0..700).map(|i| format!("new-{round}-{i:04}")).collect();
        for n in &created {
            fs::write(d.join(n), "n").unwrap();
        }
        for e in reader {
            seen.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
        let set: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), set.len(), "round {round}: a name listed twice");
        let kept: BTreeSet<&String> = current.difference(&removed).collect();
        let missing: Vec<&&String> = kept.iter().filter(|n| !set.contains(**n)).take(10).collect();
        assert!(missing.is_empty(), "round {round}: kept names not listed (first 10): {missing:?}");
        let stray: Vec<&String> =
            set.iter().filter(|n| !current.contains(*n) && !created.contains(*n)).take(10).collect();
        assert!(stray.is_empty(), "round {round}: names listed that never existed: {stray:?}");
        // A fresh listing has exactly what is there now.
        let now: BTreeSet<String> = kept.iter().map(|n| (*n).clone()).chain(created.iter().cloned()).collect();
        assert_eq!(names(&d), now, "round {round}: listing after the changes");
    }
}
