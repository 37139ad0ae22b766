//! Crash consistency of the copy-on-write upper (overlay_semantics.md §2, §4, §9 items 10 and
//! 18; issue 6 "Crash consistency").
//!
//! The lower layer is a SquashFS image holding a 200 MiB file, a 24 MiB file and a directory
//! tree (about 200 files, a 16 MiB one among them, a symlink, a hard-link pair, xattrs). In a
//! loop, through a parallaxfs mount: `dd` writes one block near the end of the big file (its
//! copy-up copies 200 MiB first), `mv` moves the lower directory (a subtree copy, then a
//! whiteout) and `mv` moves the 24 MiB lower file (copy-up, then a whiteout) — and the daemon is
//! killed with SIGKILL at a random moment. Then the dead mount is unmounted with `fusermount3
//! -u`, parallaxfs is mounted again on the same upper and workdir, and:
//! - `WORKDIR/work` is empty (leftovers are deleted at mount);
//! - every name the mount shows is exactly as it was before the operations or after them
//!   (type, mode, size, content hash, link target, xattrs, link count): the big file's hash
//!   is the old one or the new one, never a torn mix or a short file;
//! - nothing is lost: the moved file is at exactly one of its two names (char-mode rename
//!   whiteouts are atomic), the moved directory at one or both (the subtree copy is placed
//!   before the source is hidden: a crash may leave a duplicate, never a loss), and whichever
//!   copy is there is complete.
//!
//! Even iterations kill while all three operations run, odd ones while only the two renames
//! run, at a moment drawn uniformly over the time they took without a kill. The first 20
//! iterations use char 0/0 whiteouts, the last 10 `.wh.NAME` files
//! (`FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT`), whose rename is a marker then a rename. What the
//! killed daemon left in `WORKDIR/work` is counted: it shows the kill landed inside a copy.
//! The seed is printed; `PFS_CRASH_SEED=N` replays one.

mod cow_common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cow_common::{entries, run, walk, Guard, Scratch, Seen};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const BIG_SIZE: u64 = 200 << 20;
const BLOCK: u64 = 4096;
/// The block `dd` replaces: near the end, so the copy-up has copied ~190 MiB first.
const MARK_BLOCK: u64 = 48_000;
const MID_SIZE: usize = 24 << 20;
const ITERATIONS: usize = 20;
/// Further iterations in `.wh.` whiteout mode.
const AUFS_ITERATIONS: usize = 10;

type Tree = BTreeMap<Vec<u8>, Seen>;

/// Block `b` of the big file: never all zero (a hole-skipping copy would notice nothing).
fn big_block(b: u64, out: &mut [u8]) {
    out.fill((b % 251) as u8 + 1);
    out[..8].copy_from_slice(&b.to_le_bytes());
}

fn lower_tree(root: &Path) {
    let mut big = fs::File::create(root.join("big")).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let per_chunk = chunk.len() as u64 / BLOCK;
    for c in 0..BIG_SIZE / chunk.len() as u64 {
        for (i, block) in chunk.chunks_mut(BLOCK as usize).enumerate() {
            big_block(c * per_chunk + i as u64, block);
        }
        big.write_all(&chunk).unwrap();
    }
    let mut rng = SmallRng::seed_from_u64(7);
    let mut bytes = |n: usize| (0..n).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>();
    fs::write(root.join("mid"), bytes(MID_SIZE)).unwrap();
    let tree = root.join("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    for i in 0..150 {
        fs::write(tree.join(format!("f{i:03}")), bytes(1024 + i * 97)).unwrap();
    }
    for i in 0..50 {
        fs::write(tree.join(format!("sub/g{i:02}")), bytes(4096 + i * 31)).unwrap();
    }
    fs::write(tree.join("sub/deeper/blob"), bytes(16 << 20)).unwrap();
    std::os::unix::fs::symlink("f000", tree.join("link")).unwrap();
    fs::hard_link(tree.join("f001"), tree.join("sub/hard")).unwrap();
    run(Command::new("setfattr").args(["-n", "user.kind", "-v", "tree"]).arg(&tree));
    run(Command::new("setfattr").args(["-n", "user.kind", "-v", "leaf"]).arg(tree.join("f002")));
    run(Command::new("chmod").arg("0750").arg(tree.join("sub")));
    fs::create_dir_all(root.join("dest")).unwrap();
    fs::write(root.join("dest/keep"), b"kept\n").unwrap();
    fs::create_dir_all(root.join("other")).unwrap();
    fs::write(root.join("other/note"), b"untouched\n").unwrap();
}

struct Layout {
    image: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mp: PathBuf,
    mark: PathBuf,
}

/// Which operations an iteration runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ops {
    All,
    RenamesOnly,
}

fn start(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn start_ops(l: &Layout, ops: Ops) -> Vec<(&'static str, Child)> {
    let mp = &l.mp;
    let mut children = Vec::new();
    if ops == Ops::All {
        let dd = start(
            Command::new("dd")
                .arg(format!("if={}", l.mark.display()))
                .arg(format!("of={}", mp.join("big").display()))
                .args(["bs=4096", &format!("seek={MARK_BLOCK}"), "count=1", "conv=notrunc", "status=none"]),
        );
        children.push(("dd big", dd));
    }
    children.push(("mv tree", start(Command::new("mv").arg("-T").arg(mp.join("tree")).arg(mp.join("dest/tree")))));
    children.push(("mv mid", start(Command::new("mv").arg("-T").arg(mp.join("mid")).arg(mp.join("dest/mid2")))));
    children
}

/// Waits for every operation (they fail with ENOTCONN once the daemon is dead); true when all
/// succeeded.
fn finish_ops(children: Vec<(&'static str, Child)>) -> Vec<(&'static str, bool, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut results = Vec::new();
    for (name, mut child) in children {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} hangs on a dead mount");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        results.push((name, status.success(), err));
    }
    results
}

/// The state of one moved object after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Old,
    New,
    /// Both names, each a complete copy (allowed for the subtree-copy rename only).
    Both,
}

fn under(path: &[u8], dir: &[u8]) -> bool {
    path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// Checks a post-crash view against the views before and after the operations; returns the
/// state of (big file, moved file, moved directory).
fn classify(seen: &Tree, old: &Tree, new: &Tree) -> Result<(State, State, State), Vec<String>> {
    let mut problems = Vec::new();
    for (path, s) in seen {
        if old.get(path) != Some(s) && new.get(path) != Some(s) {
            problems.push(format!(
                "{}: torn or unknown: {s:?} (before: {:?}, after: {:?})",
                String::from_utf8_lossy(path),
                old.get(path),
                new.get(path)
            ));
        }
    }
    let moved = [&b"big"[..], b"mid", b"dest/mid2", b"tree", b"dest/tree"];
    for path in old.keys().chain(new.keys()) {
        if !moved.iter().any(|m| under(path, m)) && !seen.contains_key(path) {
            problems.push(format!("{}: lost", String::from_utf8_lossy(path)));
        }
    }
    let big = if seen.get(&b"big"[..]) == old.get(&b"big"[..]) { State::Old } else { State::New };
    // A name present must be complete: every entry below it, as before (source) or after (copy).
    let complete = |name: &[u8], reference: &Tree| {
        let missing: Vec<String> = reference
            .keys()
            .filter(|p| under(p, name) && !seen.contains_key(*p))
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        missing
    };
    let mut state = |src: &[u8], dst: &[u8], dup_ok: bool| {
        let (s, d) = (seen.contains_key(src), seen.contains_key(dst));
        for (present, name, reference) in [(s, src, old), (d, dst, new)] {
            if present {
                for m in complete(name, reference) {
                    problems.push(format!("{m}: missing from a partial copy"));
                }
            }
        }
        match (s, d) {
            (true, false) => State::Old,
            (false, true) => State::New,
            (true, true) => {
                if !dup_ok {
                    problems.push(format!(
                        "{} and {} both present",
                        String::from_utf8_lossy(src),
                        String::from_utf8_lossy(dst)
                    ));
                }
                State::Both
            }
            (false, false) => {
                problems.push(format!("{} lost under both names", String::from_utf8_lossy(src)));
                State::Old
            }
        }
    };
    let mid = state(b"mid", b"dest/mid2", false);
    let tree = state(b"tree", b"dest/tree", true);
    if problems.is_empty() {
        Ok((big, mid, tree))
    } else {
        Err(problems)
    }
}

fn clear_dir(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
}

/// One run of the operations without a kill: (time taken, view after).
fn calibrate(g: &mut Guard, l: &Layout, ops: Ops) -> (Duration, Tree) {
    let d = g.mount_pfs(&l.image, &l.upper, &l.work, &l.mp);
    let t0 = Instant::now();
    for (name, ok, err) in finish_ops(start_ops(l, ops)) {
        assert!(ok, "{name} failed without a crash: {err}");
    }
    let took = t0.elapsed();
    let after = walk(&l.mp).unwrap();
    g.unmount_pfs(d);
    clear_dir(&l.upper);
    clear_dir(&l.work);
    (took, after)
}

#[test]
fn kill_9_during_copy_ups_and_renames_leaves_old_or_new_states() {
    let scratch = Scratch::new("cow-crash");
    let mut g = Guard::default();
    let tree = scratch.dir("tree");
    lower_tree(&tree);
    let image = scratch.0.join("lower.squash");
    run(Command::new("mksquashfs").arg(&tree).arg(&image).args([
        "-noappend",
        "-quiet",
        "-comp",
        "zstd",
        "-Xcompression-level",
        "3",
    ]));
    fs::remove_dir_all(&tree).unwrap();
    let mark = scratch.0.join("mark");
    fs::write(&mark, vec![0xEEu8; BLOCK as usize]).unwrap();
    let l = Layout { image, upper: scratch.dir("upper"), work: scratch.dir("work"), mp: scratch.dir("mnt"), mark };

    let d = g.mount_pfs(&l.image, &l.upper, &l.work, &l.mp);
    let old = walk(&l.mp).unwrap();
    g.unmount_pfs(d);
    clear_dir(&l.upper);
    clear_dir(&l.work);
    let (all_time, new) = calibrate(&mut g, &l, Ops::All);
    let (rename_time, new_renames) = calibrate(&mut g, &l, Ops::RenamesOnly);
    // The view after all operations: the renames' view plus the written big file.
    assert_eq!(new_renames.get(&b"dest/tree"[..]), new.get(&b"dest/tree"[..]));
    assert_ne!(old.get(&b"big"[..]), new.get(&b"big"[..]), "dd did not change the big file");
    assert!(new.contains_key(&b"dest/tree/sub/deeper/blob"[..]) && !new.contains_key(&b"tree"[..]));

    let seed: u64 = std::env::var("PFS_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!(
        "seed {seed} (PFS_CRASH_SEED replays); without a kill: all ops {all_time:?}, renames only {rename_time:?}"
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut interrupted = 0;
    for i in 0..ITERATIONS + AUFS_ITERATIONS {
        let ops = if i % 2 == 0 { Ops::All } else { Ops::RenamesOnly };
        let env: &[(&str, &str)] = if i < ITERATIONS { &[] } else { &[("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT", "1")] };
        let mode = if env.is_empty() { "char" } else { ".wh." };
        let window = if ops == Ops::All { all_time } else { rename_time };
        let delay = window.mul_f64(rng.gen_range(0.0..1.0));
        let d = g.mount_pfs_env(&l.image, &l.upper, &l.work, &l.mp, env);
        let children = start_ops(&l, ops);
        std::thread::sleep(delay);
        g.daemons[d].kill9();
        let results = finish_ops(children);
        g.unmount_pfs(d);
        let left_by_kill = entries(&l.work.join("work")).len();
        interrupted += usize::from(left_by_kill > 0);

        let d = g.mount_pfs_env(&l.image, &l.upper, &l.work, &l.mp, env);
        let leftovers = entries(&l.work.join("work"));
        assert!(leftovers.is_empty(), "iteration {i} (seed {seed}): WORKDIR/work not cleaned at mount: {leftovers:?}");
        let seen = walk(&l.mp).unwrap();
        let reference = if ops == Ops::All { &new } else { &new_renames };
        let (big, mid, tree) = classify(&seen, &old, reference).unwrap_or_else(|problems| {
            panic!(
                "iteration {i} (seed {seed}, {ops:?}, kill after {delay:?}, ops {results:?}):\n{}",
                problems.join("\n")
            )
        });
        let ok: Vec<&str> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
        println!(
            "iteration {i:2} ({mode}): {ops:?}, kill after {:4} ms, {left_by_kill} temp objects left in work: \
             big {big:?}, file rename {mid:?}, dir rename {tree:?} (finished: {ok:?})",
            delay.as_millis()
        );
        *tally.entry(format!("big {big:?}")).or_default() += usize::from(ops == Ops::All);
        *tally.entry(format!("file rename {mid:?}")).or_default() += 1;
        *tally.entry(format!("dir rename {tree:?}")).or_default() += 1;
        g.unmount_pfs(d);
        clear_dir(&l.upper);
        clear_dir(&l.work);
    }
    tally.retain(|_, n| *n > 0);
    println!(
        "{} kills ({interrupted} inside a copy: temp objects in work), every view old or new: {tally:?}",
        ITERATIONS + AUFS_ITERATIONS
    );
}
