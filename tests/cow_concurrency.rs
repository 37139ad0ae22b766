//! Concurrency of the copy-on-write union (overlay_semantics.md §2 "Copy-up of an object
//! already being copied up waits for it", §9 item 18; issue 6 "Concurrency").
//!
//! Writer threads and reader threads work at once on one parallaxfs mount over a SquashFS
//! image. Each writer runs its own seeded list of operations; some touch only its own names
//! (a lower file written and chmodded then truncated, files created, renamed and unlinked in a
//! shared lower directory, new directories, appends, a hard link, a lower directory moved),
//! others the same objects as every other writer: the first writes into the same lower files
//! (concurrent copy-ups of one object; each writer owns different 4 KiB blocks), a new file all
//! of them create and write, xattrs set on one lower file. Readers meanwhile read files that
//! never change (exact content), files being copied up and written (every byte is the lower
//! byte or a written one — never a zero or torn copy), directories being filled and moved.
//!
//! The whole run has a deadline: a deadlock fails the test (the daemon's kernel stacks are
//! printed, the daemon is killed so blocked threads return). The writers' operations commute,
//! so the final tree is deterministic: it must equal what the same threads leave on a kernel
//! overlay over the same image, and again after parallaxfs is remounted.

mod cow_common;

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cow_common::{diff, run, walk, Guard, Scratch};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const WRITERS: usize = 4;
const READERS: usize = 3;
const ROUNDS: usize = 800;
/// Runs of the whole workload, each with its own seeds on fresh upper layers.
const EPOCHS: u64 = 4;
const OWN_SIZE: u64 = 1 << 20;
const SHARED_FILES: u64 = 4;
const SHARED_SIZE: u64 = 4 << 20;
const BLOCK: usize = 4096;
const RO_FILES: u64 = 8;
const DIR_FILES: u64 = 20;
/// Small lower files in `many/`, each copied up by one writer while readers list the directory.
const MANY: u64 = 256;
const MANY_SIZE: u64 = 8192;
/// The whole workload must finish within this (it takes a few seconds).
const DEADLINE: Duration = Duration::from_secs(60);

/// Byte `off` of lower file `tag`: never 0 and never ≥ 0x80 (written bytes are ≥ 0x80).
fn old_byte(tag: u64, off: u64) -> u8 {
    ((off * 7 + tag * 13) % 127 + 1) as u8
}

fn old_content(tag: u64, size: u64) -> Vec<u8> {
    (0..size).map(|o| old_byte(tag, o)).collect()
}

fn own_tag(t: usize) -> u64 {
    t as u64
}

fn shared_tag(s: u64) -> u64 {
    100 + s
}

fn ro_tag(r: u64) -> u64 {
    200 + r
}

fn dir_file_tag(d: usize, f: u64) -> u64 {
    300 + d as u64 * 100 + f
}

fn many_tag(m: u64) -> u64 {
    1000 + m
}

fn lower_tree(root: &Path) {
    for d in ["files", "shared", "ro", "deep/a/b/c", "logs", "links", "moved", "many"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for t in 0..WRITERS {
        fs::write(root.join(format!("files/f{t}")), old_content(own_tag(t), OWN_SIZE)).unwrap();
        let dir = root.join(format!("dirs/d{t}/sub"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..DIR_FILES {
            let name = if f % 2 == 0 { format!("dirs/d{t}/x{f}") } else { format!("dirs/d{t}/sub/x{f}") };
            fs::write(root.join(name), old_content(dir_file_tag(t, f), 10_000 + f * 1000)).unwrap();
        }
    }
    for s in 0..SHARED_FILES {
        fs::write(root.join(format!("shared/s{s}")), old_content(shared_tag(s), SHARED_SIZE)).unwrap();
    }
    fs::write(root.join("shared/attrs"), b"xattrs are set on me\n").unwrap();
    // Copied up with the file; also gives the image an xattr table (without one the kernel's
    // squashfs answers listxattr with EOPNOTSUPP).
    run(Command::new("setfattr").args(["-n", "user.origin", "-v", "lower"]).arg(root.join("shared/attrs")));
    for r in 0..RO_FILES {
        fs::write(root.join(format!("ro/r{r}")), old_content(ro_tag(r), 256 << 10)).unwrap();
    }
    fs::write(root.join("deep/a/b/c/lower"), b"lower\n").unwrap();
    for m in 0..MANY {
        fs::write(root.join(format!("many/m{m}")), old_content(many_tag(m), MANY_SIZE)).unwrap();
    }
}

fn io<T>(what: &str, path: &Path, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what} {}: {e}", path.display()))
}

fn pwrite(path: &Path, create: bool, offset: u64, value: u8) -> Result<(), String> {
    let f = io("open", path, OpenOptions::new().read(true).write(true).create(create).mode(0o644).open(path))?;
    io("pwrite", path, f.write_all_at(&[value; BLOCK], offset))
}

/// Writer `t`'s operations on the union at `root` (the same list on every run).
fn writer(root: &Path, epoch: u64, t: usize) -> Result<(), String> {
    let mut rng = SmallRng::seed_from_u64(epoch * 1000 + t as u64);
    let blocks = |size: u64| size / BLOCK as u64;
    for round in 0..ROUNDS {
        let value = 0x80 | (round % 128) as u8;
        match rng.gen_range(0..12) {
            10 | 11 => {
                // Copy-up of one of this writer's small files while readers list `many/`;
                // then read-your-writes through a fresh open.
                let m = rng.gen_range(0..MANY / WRITERS as u64) * WRITERS as u64 + t as u64;
                let (p, b) = (root.join(format!("many/m{m}")), rng.gen_range(0..blocks(MANY_SIZE)));
                pwrite(&p, false, b * BLOCK as u64, value)?;
                let back = read_all(&p)?.ok_or_else(|| format!("{} vanished", p.display()))?;
                if back[b as usize * BLOCK] != value {
                    return Err(format!(
                        "{}: a read after the write shows {:#x}, not {value:#x}",
                        p.display(),
                        back[b as usize * BLOCK]
                    ));
                }
            }
            0 | 1 => {
                let b = rng.gen_range(0..blocks(OWN_SIZE));
                pwrite(&root.join(format!("files/f{t}")), false, b * BLOCK as u64, value)?;
            }
            2 | 3 => {
                // Blocks ≡ t (mod WRITERS) of a file every writer writes: one copy-up for all.
                let s = rng.gen_range(0..SHARED_FILES);
                let b = rng.gen_range(0..blocks(SHARED_SIZE) / WRITERS as u64) * WRITERS as u64 + t as u64;
                pwrite(&root.join(format!("shared/s{s}")), false, b * BLOCK as u64, value)?;
            }
            4 => {
                let b = rng.gen_range(0..64u64) * WRITERS as u64 + t as u64;
                pwrite(&root.join("shared/new"), true, b * BLOCK as u64, value)?;
            }
            5 => {
                let p = root.join(format!("deep/a/b/c/t{t}_{round}"));
                io("create", &p, fs::write(&p, format!("writer {t} round {round}\n").repeat(round % 50 + 1)))?;
                match round % 3 {
                    0 => io("unlink", &p, fs::remove_file(&p))?,
                    1 => io("rename", &p, fs::rename(&p, root.join(format!("deep/a/b/c/r{t}_{round}"))))?,
                    _ => {}
                }
            }
            6 => {
                let d = root.join(format!("deep/a/m{t}_{round}"));
                io("mkdir", &d, fs::create_dir(&d))?;
                io("create", &d, fs::write(d.join("inside"), [value; 100]))?;
            }
            7 => {
                let p = root.join("shared/attrs");
                io("setxattr", &p, xattr::set(&p, format!("user.w{t}"), format!("{round}").as_bytes()))?;
            }
            8 => {
                let p = root.join(format!("files/f{t}"));
                io("chmod", &p, fs::set_permissions(&p, fs::Permissions::from_mode(0o600 + (round % 64) as u32)))?;
            }
            _ => {
                let p = root.join(format!("logs/l{t}"));
                let mut f = io("open", &p, OpenOptions::new().append(true).create(true).open(&p))?;
                io("append", &p, f.write_all(format!("round {round}\n").as_bytes()))?;
            }
        }
        if round == ROUNDS / 2 {
            let (from, to) = (root.join(format!("dirs/d{t}")), root.join(format!("moved/d{t}")));
            io("rename dir", &from, fs::rename(&from, &to))?;
        }
        if round == ROUNDS * 3 / 4 {
            let (from, to) = (root.join(format!("files/f{t}")), root.join(format!("links/f{t}")));
            io("link", &from, fs::hard_link(&from, &to))?;
        }
    }
    let p = root.join(format!("files/f{t}"));
    let f = io("open", &p, OpenOptions::new().write(true).open(&p))?;
    io("truncate", &p, f.set_len(700_000 + t as u64 * 1000))
}

/// Reads `path` whole; `Ok(None)` when it does not exist (a name being moved or not yet made).
fn read_all(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let mut data = Vec::new();
    io("read", path, f.read_to_end(&mut data))?;
    Ok(Some(data))
}

/// Every byte is the lower byte or a written one (≥ 0x80).
fn check_written(path: &Path, tag: u64, data: &[u8]) -> Result<(), String> {
    match data.iter().enumerate().find(|&(o, &b)| b < 0x80 && b != old_byte(tag, o as u64)) {
        Some((o, b)) => {
            Err(format!("{}: byte {o} is {b:#x}, neither the lower byte nor a written one", path.display()))
        }
        None => Ok(()),
    }
}

/// Reader `r` until `done`; returns how many checks it made.
fn reader(root: &Path, r: usize, done: &AtomicBool) -> Result<u64, String> {
    let mut rng = SmallRng::seed_from_u64(5000 + r as u64);
    let mut checks = 0;
    while !done.load(Ordering::Relaxed) {
        match rng.gen_range(0..6) {
            0 => {
                let k = rng.gen_range(0..RO_FILES);
                let p = root.join(format!("ro/r{k}"));
                let data = read_all(&p)?.ok_or_else(|| format!("{} vanished", p.display()))?;
                if data != old_content(ro_tag(k), 256 << 10) {
                    return Err(format!("{}: content differs from the lower file", p.display()));
                }
            }
            1 => {
                let t = rng.gen_range(0..WRITERS);
                let p = root.join(format!("files/f{t}"));
                let data = read_all(&p)?.ok_or_else(|| format!("{} vanished", p.display()))?;
                check_written(&p, own_tag(t), &data)?;
            }
            2 => {
                let s = rng.gen_range(0..SHARED_FILES);
                let p = root.join(format!("shared/s{s}"));
                let data = read_all(&p)?.ok_or_else(|| format!("{} vanished", p.display()))?;
                if data.len() as u64 != SHARED_SIZE {
                    return Err(format!("{}: {} bytes during a copy-up", p.display(), data.len()));
                }
                check_written(&p, shared_tag(s), &data)?;
            }
            3 => {
                // Listings of directories whose entries are being copied up or created (with
                // readdirplus the kernel learns nodes from these too).
                let dirs = [
                    "deep/a/b/c",
                    "files",
                    "shared",
                    "deep/a/b",
                    "deep/a",
                    "deep",
                    "",
                    "dirs",
                    "moved",
                    "links",
                    "many",
                    "many",
                ];
                let d = root.join(dirs[rng.gen_range(0..dirs.len())]);
                for e in io("readdir", &d, fs::read_dir(&d))? {
                    let e = io("readdir", &d, e)?;
                    match fs::symlink_metadata(e.path()) {
                        Ok(_) => {}
                        Err(err) if err.kind() == ErrorKind::NotFound => {}
                        Err(err) => return Err(format!("stat {}: {err}", e.path().display())),
                    }
                }
            }
            4 => {
                // Files of a directory being moved: there, or already at the new place.
                let (t, f) = (rng.gen_range(0..WRITERS), rng.gen_range(0..DIR_FILES));
                let rel = if f % 2 == 0 { format!("d{t}/x{f}") } else { format!("d{t}/sub/x{f}") };
                let want = old_content(dir_file_tag(t, f), 10_000 + f * 1000);
                for base in ["dirs", "moved"] {
                    let p = root.join(base).join(&rel);
                    if let Some(data) = read_all(&p)? {
                        if data != want {
                            return Err(format!("{}: content differs from the lower file", p.display()));
                        }
                    }
                }
            }
            _ => {
                let p = root.join("shared/new");
                if let Some(data) = read_all(&p)? {
                    if let Some(o) = data.iter().position(|&b| b != 0 && b < 0x80) {
                        return Err(format!("{}: byte {o} is {:#x}", p.display(), data[o]));
                    }
                }
            }
        }
        checks += 1;
    }
    Ok(checks)
}

/// Runs every writer and `readers` readers on `root`; returns the readers' check count, or
/// why it failed. `on_deadline` runs (to unblock threads) if the deadline passes.
fn workload(root: &Path, epoch: u64, readers: usize, on_deadline: impl FnOnce()) -> Result<u64, String> {
    let done = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<(String, Result<(), String>)>();
    for t in 0..WRITERS {
        let (root, tx) = (root.to_path_buf(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send((format!("writer {t}"), writer(&root, epoch, t)));
        });
    }
    let reader_threads: Vec<_> = (0..readers)
        .map(|r| {
            let (root, tx, done, checks) = (root.to_path_buf(), tx.clone(), done.clone(), checks.clone());
            std::thread::spawn(move || {
                let result = reader(&root, r, &done).map(|n| {
                    checks.fetch_add(n, Ordering::Relaxed);
                });
                let _ = tx.send((format!("reader {r}"), result));
            })
        })
        .collect();
    drop(tx);
    let deadline = Instant::now() + DEADLINE;
    let mut errors = Vec::new();
    let mut writers_left = WRITERS;
    let mut finished = 0;
    while finished < WRITERS + readers {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            on_deadline();
            return Err(format!(
                "deadlock: {} of {} threads still running after {DEADLINE:?}",
                WRITERS + readers - finished,
                WRITERS + readers
            ));
        };
        match rx.recv_timeout(left) {
            Ok((who, result)) => {
                finished += 1;
                if who.starts_with("writer") {
                    writers_left -= 1;
                }
                if let Err(e) = result {
                    errors.push(format!("{who}: {e}"));
                    // Stop the readers too: the run has failed.
                    done.store(true, Ordering::Relaxed);
                }
                if writers_left == 0 {
                    done.store(true, Ordering::Relaxed);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for th in reader_threads {
        let _ = th.join();
    }
    if errors.is_empty() {
        Ok(checks.load(Ordering::Relaxed))
    } else {
        Err(errors.join("\n"))
    }
}

/// Kernel stacks of every thread of `pid` (what a deadlocked daemon waits on).
fn stacks(pid: u32) -> String {
    let mut out = String::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let stack = fs::read_to_string(task.path().join("stack")).unwrap_or_default();
        out.push_str(&format!("task {}:\n{stack}", task.file_name().to_string_lossy()));
    }
    out
}

struct Dirs {
    upper: PathBuf,
    work: PathBuf,
    mp: PathBuf,
}

fn dirs(scratch: &Scratch, tag: &str) -> Dirs {
    Dirs {
        upper: scratch.dir(&format!("{tag}-upper")),
        work: scratch.dir(&format!("{tag}-work")),
        mp: scratch.dir(&format!("{tag}-mnt")),
    }
}

#[test]
fn parallel_writers_and_readers_match_the_kernel_overlay() {
    let scratch = Scratch::new("cow-concurrency");
    let mut g = Guard::default();
    let tree = scratch.dir("tree");
    lower_tree(&tree);
    let image = scratch.0.join("lower.squash");
    run(Command::new("mksquashfs").arg(&tree).arg(&image).args(["-noappend", "-quiet", "-comp", "zstd"]));
    let klower = scratch.dir("kernel-lower");
    g.mount_squashfs(&image, &klower);
    for epoch in 0..EPOCHS {
        let p = dirs(&scratch, &format!("pfs{epoch}"));
        let d = g.mount_pfs(&image, &p.upper, &p.work, &p.mp);
        let pid = g.daemons[d].pid();
        let started = Instant::now();
        let result = workload(&p.mp, epoch, READERS, || {
            eprintln!("parallaxfs kernel stacks at the deadline:\n{}", stacks(pid));
            // Killing the daemon aborts the connection: every blocked request fails.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        });
        let checks = result.unwrap_or_else(|e| panic!("epoch {epoch}, parallaxfs: {e}"));
        let took = started.elapsed();
        let pfs_view = walk(&p.mp).unwrap();

        let k = dirs(&scratch, &format!("kernel{epoch}"));
        g.mount_kernel(&klower, &k.upper, &k.work, &k.mp);
        workload(&k.mp, epoch, 0, || {
            let _ = Command::new("umount").arg("-l").arg(&k.mp).status();
        })
        .unwrap_or_else(|e| panic!("epoch {epoch}, kernel overlay: {e}"));
        let kernel_view = walk(&k.mp).unwrap();

        let differences = diff("kernel", &kernel_view, "parallaxfs", &pfs_view);
        assert!(differences.is_empty(), "epoch {epoch}: final trees differ:\n{}", differences.join("\n"));
        g.unmount_pfs(d);
        let d = g.mount_pfs(&image, &p.upper, &p.work, &p.mp);
        let remounted = walk(&p.mp).unwrap();
        let differences = diff("kernel", &kernel_view, "parallaxfs after remount", &remounted);
        assert!(differences.is_empty(), "epoch {epoch}: trees differ after remount:\n{}", differences.join("\n"));
        g.unmount_pfs(d);
        println!(
            "epoch {epoch}: {WRITERS} writers x {ROUNDS} ops with {READERS} readers ({checks} read checks) in {took:?}; \
             {} names equal to the kernel overlay's, also after remount",
            kernel_view.len()
        );
    }
}

/// Writes into a lower directory while another thread renames it: `WRITERS` threads each open
/// files of `race/dN` for writing (a copy-up each) and write a marker, while the main thread
/// moves `race/dN` to `race-moved/dN` (a subtree copy in parallaxfs, a redirect in the kernel).
/// A write that succeeded must be in the file at its new place, as it is with the kernel
/// overlay, where the rename moves the very files that were written.
fn writes_survive_renames(root: &Path, dirs: usize, files: u64) -> Result<usize, String> {
    let mut kept = 0;
    for d in 0..dirs {
        let done = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let (root, done) = (root.to_path_buf(), done.clone());
                std::thread::spawn(move || {
                    let mut written = Vec::new();
                    for f in (0..files).filter(|f| f % WRITERS as u64 == t as u64) {
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        let p = root.join(format!("race/d{d}/x{f}"));
                        let Ok(file) = OpenOptions::new().write(true).open(&p) else { continue };
                        if file.write_all_at(&[0xA5; 64], 0).is_ok() {
                            written.push(f);
                        }
                    }
                    written
                })
            })
            .collect();
        // Let the writers start, then move the directory under them.
        std::thread::sleep(Duration::from_millis(2));
        let (from, to) = (root.join(format!("race/d{d}")), root.join(format!("race-moved/d{d}")));
        io("rename", &from, fs::rename(&from, &to))?;
        done.store(true, Ordering::Relaxed);
        for w in writers {
            for f in w.join().map_err(|_| "writer panicked".to_string())? {
                let p = to.join(format!("x{f}"));
                let data = read_all(&p)?.ok_or_else(|| format!("{} missing after the rename", p.display()))?;
                if data[..64] != [0xA5; 64] {
                    return Err(format!("{}: a write that succeeded before the rename is lost", p.display()));
                }
                kept += 1;
            }
        }
    }
    Ok(kept)
}

#[test]
fn writes_racing_renames_and_unlinks_of_lower_objects_behave_as_on_the_kernel_overlay() {
    const DIRS: usize = 12;
    const FILES: u64 = 400;
    let scratch = Scratch::new("cow-rename-race");
    let mut g = Guard::default();
    let tree = scratch.dir("tree");
    for d in 0..DIRS {
        fs::create_dir_all(tree.join(format!("race/d{d}"))).unwrap();
        for f in 0..FILES {
            fs::write(tree.join(format!("race/d{d}/x{f}")), old_content(many_tag(f), 4096)).unwrap();
        }
    }
    fs::create_dir_all(tree.join("race-moved")).unwrap();
    let image = scratch.0.join("lower.squash");
    run(Command::new("mksquashfs").arg(&tree).arg(&image).args(["-noappend", "-quiet", "-comp", "zstd"]));
    let klower = scratch.dir("kernel-lower");
    g.mount_squashfs(&image, &klower);
    let k = dirs(&scratch, "kernel");
    g.mount_kernel(&klower, &k.upper, &k.work, &k.mp);
    let kernel_kept = writes_survive_renames(&k.mp, DIRS, FILES).unwrap_or_else(|e| panic!("kernel overlay: {e}"));
    let p = dirs(&scratch, "pfs");
    let d = g.mount_pfs(&image, &p.upper, &p.work, &p.mp);
    let kept = writes_survive_renames(&p.mp, DIRS, FILES).unwrap_or_else(|e| panic!("parallaxfs: {e}"));
    println!("{DIRS} renames under writers: {kept} writes kept (kernel overlay: {kernel_kept})");
    // The moved trees are upper copies now; the next race needs lower files again.
    g.unmount_pfs(d);
    let p = dirs(&scratch, "pfs2");
    let d = g.mount_pfs(&image, &p.upper, &p.work, &p.mp);
    let opened = unlinked_names_stay_gone(&p.mp, 0, FILES).unwrap_or_else(|e| panic!("parallaxfs: {e}"));
    g.unmount_pfs(d);
    // `.wh.` mode: the unlink writes a marker, then removes the name; the copy-up checks both.
    let p = dirs(&scratch, "pfs3");
    let d = g.mount_pfs_env(&image, &p.upper, &p.work, &p.mp, &[("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT", "1")]);
    let opened_aufs =
        unlinked_names_stay_gone(&p.mp, 1, FILES).unwrap_or_else(|e| panic!("parallaxfs, .wh. mode: {e}"));
    g.unmount_pfs(d);
    let k = dirs(&scratch, "kernel2");
    g.mount_kernel(&klower, &k.upper, &k.work, &k.mp);
    let kernel_opened = unlinked_names_stay_gone(&k.mp, 0, FILES).unwrap_or_else(|e| panic!("kernel overlay: {e}"));
    println!(
        "{FILES} unlinks racing write-opens: none came back ({opened} opens won, {opened_aufs} in .wh. mode; kernel overlay: {kernel_opened})"
    );
}

/// Write-opens racing unlinks of the same lower files: a copy-up that loses the race must not
/// bring the name back (the unlink returned 0, so the name stays gone, as with the kernel).
fn unlinked_names_stay_gone(root: &Path, dir: usize, files: u64) -> Result<usize, String> {
    let mut raced = 0;
    for f in 0..files {
        let p = root.join(format!("race/d{dir}/x{f}"));
        let opener = {
            let p = p.clone();
            std::thread::spawn(move || OpenOptions::new().write(true).open(&p).map(|file| file.write_all_at(b"w", 0)))
        };
        let unlinked = fs::remove_file(&p);
        let opened = opener.join().map_err(|_| "opener panicked".to_string())?;
        raced += usize::from(opened.is_ok());
        if unlinked.is_ok() && fs::symlink_metadata(&p).is_ok() {
            return Err(format!("{}: unlinked, yet there again after a racing write-open", p.display()));
        }
    }
    Ok(raced)
}
