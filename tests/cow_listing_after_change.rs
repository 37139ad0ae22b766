//! A directory opened before a change and read after it: the kernel keeps what that first read
//! returns as the directory's listing (FOPEN_CACHE_DIR) for the directory as it is *then*, so the
//! daemon must list at the read, not at the open. Before, a name created or renamed in between
//! was missing from every later listing of the directory (seen as a lost rename in
//! `cow_concurrency`). Also a whiteout: a lower name deleted between open and read.

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
