//! A directory opened before a change and read after it: the kernel keeps what that first read
//! returns as the directory's listing (FOPEN_CACHE_DIR) for the directory as it is *then*, so the
//! daemon must list at the read, not at the open. Before, a name created or renamed in between
//! was missing from every later listing of the directory (seen as a lost rename in
//! `cow_concurrency`). Also a whiteout: a lower name deleted between open and read.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::process::Command;

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn a_change_between_open_and_read_is_in_every_later_listing() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts FUSE filesystems as root");
    let dir = std::env::temp_dir().join(format!("pfs-listing-change-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for d in ["lower/d", "upper", "work", "mnt"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    for n in ["a", "b", "gone"] {
        fs::write(dir.join("lower/d").join(n), n).unwrap();
    }
    let mnt = dir.join("mnt");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir.join("lower").display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    let st = Command::new(env!("CARGO_BIN_EXE_parallaxfs")).args(["-o", &opts]).arg(&mnt).status().unwrap();
    assert!(st.success());
    let result = std::panic::catch_unwind(|| {
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
    });
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_copy_up_between_two_partial_listings_loses_and_repeats_no_name() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts FUSE filesystems as root");
    let dir = std::env::temp_dir().join(format!("pfs-listing-copyup-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for d in ["lower/big", "upper", "work", "mnt"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let all: BTreeSet<String> = (0..3000).map(|i| format!("file-{i:04}")).collect();
    for n in &all {
        fs::write(dir.join("lower/big").join(n), n).unwrap();
    }
    let mnt = dir.join("mnt");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir.join("lower").display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    let st = Command::new(env!("CARGO_BIN_EXE_parallaxfs")).args(["-o", &opts]).arg(&mnt).status().unwrap();
    assert!(st.success());
    let result = std::panic::catch_unwind(|| {
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
    });
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
