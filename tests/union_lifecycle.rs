//! Life and death of a parallaxfs mount: 100 mount/unmount cycles leave no process and no
//! mount behind; every way to end a mount (`fusermount3 -u`, `parallaxfs umount`, `umount`,
//! SIGTERM, SIGINT, SIGHUP, lazy unmount with a file still open) makes the daemon exit 0;
//! `kill -9` of the daemon leaves a dead mount that `fusermount3 -u` clears; a busy mount
//! refuses a plain unmount and keeps serving; the daemon runs detached (stdio on /dev/null,
//! cwd `/`), or in the foreground with `-f`.
//!
//! Processes are checked in /proc (`State:` of /proc/PID/status; zombies count as gone, since
//! PID 1 here does not reap orphans). The test process is a child subreaper, so the daemons,
//! orphaned when their launcher exits, become its children and their exit status is checked.
//!
//! Needs root; fails, never skips, without it.

mod union_common;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use union_common::*;

/// A small stack: a directory layer over an image layer, each with a known file.
struct Layers {
    scratch: Scratch,
    layers: Vec<PathBuf>,
}

const TOP: &[u8] = b"from the directory layer\n";
const BOTTOM_LEN: usize = 700_000;

fn bottom_bytes() -> Vec<u8> {
    Content { seed: 11, len: BOTTOM_LEN, style: 1 }.bytes()
}

fn layers(tag: &str) -> Layers {
    let scratch = Scratch::new(tag);
    let top = scratch.mkdir("top");
    fs::write(top.join("top-file"), TOP).unwrap();
    let src = scratch.mkdir("bottom-src");
    fs::write(src.join("bottom-file"), bottom_bytes()).unwrap();
    fs::create_dir(src.join("dir")).unwrap();
    fs::write(src.join("dir/inner"), b"inner").unwrap();
    let img = scratch.path().join("bottom.sqfs");
    mksquashfs(&src, &img);
    Layers { layers: vec![top, img], scratch }
}

impl Layers {
    fn mountpoint(&self, name: &str) -> PathBuf {
        self.scratch.mkdir(name)
    }
}

/// The mount serves both layers.
fn check_serving(mp: &Path) {
    assert_eq!(fs::read(mp.join("top-file")).unwrap(), TOP);
    assert_eq!(fs::read(mp.join("dir/inner")).unwrap(), b"inner");
    let f = File::open(mp.join("bottom-file")).unwrap();
    let mut buf = vec![0u8; 1000];
    assert_eq!(f.read_at(&mut buf, 500_000).unwrap(), 1000);
    assert_eq!(buf, bottom_bytes()[500_000..501_000]);
}

/// Nothing of the mount is left: no mount at `mp`, no live process naming it.
fn assert_nothing_left(mp: &Path) {
    assert!(!is_mounted(mp), "{} is still mounted", mp.display());
    let left = processes_with_arg(mp);
    assert!(left.is_empty(), "processes left for {}: {left:?}", mp.display());
}

/// Sends `sig` to the daemon of `m`; it must unmount and exit 0 within 10 s.
fn stop_with_signal(m: TestMount, sig: Signal) {
    let pid = m.daemon().expect("a daemon");
    let mp = m.path().to_path_buf();
    kill(Pid::from_raw(pid), sig).unwrap();
    let end = wait_gone(pid, Duration::from_secs(10));
    assert!(matches!(end, Some(Exit::Code(0))), "daemon {pid} after {sig}: {end:?} (want exit 0 within 10 s)");
    assert!(!is_mounted(&mp), "daemon exited after {sig} but {} is still mounted", mp.display());
    m.disarm();
    assert_nothing_left(&mp);
}

/// How cycle `i` ends its mount.
#[derive(Debug, Clone, Copy)]
enum End {
    Command(Unmount),
    Signal(Signal),
}

const ENDS: [End; 6] = [
    End::Command(Unmount::Fusermount),
    End::Command(Unmount::Parallaxfs),
    End::Command(Unmount::Umount),
    End::Signal(Signal::SIGTERM),
    End::Signal(Signal::SIGINT),
    End::Signal(Signal::SIGHUP),
];

/// 100 times on the same mountpoint: mount (both command forms), read through the mount,
/// end it (every way in turn); each time the daemon exits 0 and nothing is left. At the end
/// no process names the mountpoint and nothing is mounted below the scratch directory.
#[test]
fn hundred_mount_cycles_leave_nothing_behind() {
    require_root();
    let l = layers("life-cycles");
    let mp = l.mountpoint("mp");
    let start = Instant::now();
    let mut pids = Vec::new();
    for i in 0..100 {
        let m = if i % 2 == 0 { TestMount::lowerdir(&l.layers, &mp) } else { TestMount::lower_flags(&l.layers, &mp) };
        pids.push(m.daemon().unwrap());
        check_serving(&mp);
        assert_eq!(mount_count(&mp), 1, "cycle {i}: more than one mount at the mountpoint");
        match ENDS[i % ENDS.len()] {
            End::Command(how) => m.unmount_with(how),
            End::Signal(sig) => stop_with_signal(m, sig),
        }
        assert_nothing_left(&mp);
    }
    let elapsed = start.elapsed();
    eprintln!("100 cycles in {elapsed:?}");
    // Every daemon is gone (zombies count as gone; ours were reaped by wait_gone).
    for pid in &pids {
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            let state = status.lines().find_map(|l| l.strip_prefix("State:")).unwrap_or("").trim().to_string();
            let name = status.lines().find_map(|l| l.strip_prefix("Name:")).unwrap_or("").trim().to_string();
            // The pid may have been reused by an unrelated process.
            assert!(
                name != "parallaxfs" || state.starts_with('Z') || state.starts_with('X'),
                "daemon {pid} still alive: {state}"
            );
        }
    }
    assert_nothing_left(&mp);
    assert!(mounts_below(l.scratch.path()).is_empty(), "mounts left: {:?}", mounts_below(l.scratch.path()));
    let mut uniq = pids.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), 100, "a daemon served two cycles");
}

/// `kill -9` of the daemon: the mount stays, dead (ENOTCONN); `fusermount3 -u` clears it; the
/// same mountpoint then mounts again and serves.
#[test]
fn kill_9_leaves_a_mount_that_fusermount_clears() {
    require_root();
    let l = layers("life-kill9");
    let mp = l.mountpoint("mp");
    let m = TestMount::lowerdir(&l.layers, &mp);
    check_serving(&mp);
    let pid = m.daemon().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let end = wait_gone(pid, Duration::from_secs(10));
    assert_eq!(end, Some(Exit::Signal(Signal::SIGKILL as i32)));
    assert!(is_mounted(&mp), "the mount vanished with its daemon");
    // A name the kernel has not cached must be asked of the (dead) daemon.
    let err = fs::metadata(mp.join("never-looked-up")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "stat on a dead mount: {err}");
    assert!(daemons_of(&mp).is_empty());
    // The daemon is reaped: a guard without it unmounts with `fusermount3 -u` (and checks it
    // worked).
    m.disarm();
    let dead = TestMount::adopt(&mp, None);
    dead.unmount_with(Unmount::Fusermount);
    assert_nothing_left(&mp);
    let again = TestMount::lower_flags(&l.layers, &mp);
    check_serving(&mp);
    again.unmount();
    assert_nothing_left(&mp);
}

/// `parallaxfs umount` of a mount with an open file fails (EBUSY, one line, exit non-zero)
/// and the mount keeps serving; SIGTERM then detaches it at once, the open file stays
/// readable, and the daemon exits 0 when it is closed. The same with `parallaxfs umount
/// --lazy`.
#[test]
fn busy_mounts_refuse_plain_unmount_and_go_lazily() {
    require_root();
    let l = layers("life-busy");
    let mp = l.mountpoint("mp");
    for lazy in [LazyEnd::Sigterm, LazyEnd::Command, LazyEnd::Sigint] {
        let m = TestMount::lowerdir(&l.layers, &mp);
        let pid = m.daemon().unwrap();
        let f = File::open(mp.join("bottom-file")).unwrap();
        let out = Command::new(bin()).arg("umount").arg(&mp).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "parallaxfs umount of a busy mount succeeded");
        assert!(
            err.starts_with("parallaxfs: ") && err.matches('\n').count() == 1 && err.contains("busy"),
            "want one `parallaxfs: ... busy` line, got {err:?}"
        );
        assert!(is_mounted(&mp));
        check_serving(&mp);

        match lazy {
            LazyEnd::Sigterm => kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap(),
            LazyEnd::Sigint => kill(Pid::from_raw(pid), Signal::SIGINT).unwrap(),
            LazyEnd::Command => {
                let out = Command::new(bin())
                    .args([OsString::from("umount"), "--lazy".into(), mp.clone().into()])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "parallaxfs umount --lazy: {}", String::from_utf8_lossy(&out.stderr));
                assert!(out.stderr.is_empty() && out.stdout.is_empty());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while is_mounted(&mp) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_mounted(&mp), "{lazy:?}: the busy mount was not detached");
        // Detached, but the open file is still served.
        let mut buf = vec![0u8; 4096];
        assert_eq!(f.read_at(&mut buf, 123_456).unwrap(), 4096, "{lazy:?}");
        assert_eq!(buf, bottom_bytes()[123_456..123_456 + 4096]);
        assert_eq!(wait_gone(pid, Duration::from_millis(300)), None, "{lazy:?}: the daemon left while a file was open");
        drop(f);
        let end = wait_gone(pid, Duration::from_secs(10));
        assert_eq!(end, Some(Exit::Code(0)), "{lazy:?}: daemon after the last close");
        m.disarm();
        assert_nothing_left(&mp);
    }
}

#[derive(Debug, Clone, Copy)]
enum LazyEnd {
    Sigterm,
    Sigint,
    Command,
}

/// The launcher returns once the mount is live and leaves exactly one process: stdin,
/// stdout and stderr on /dev/null, cwd `/` (so it never holds the mountpoint or the caller's
/// directory busy), in a session of its own.
#[test]
fn the_daemon_runs_detached() {
    require_root();
    let l = layers("life-detached");
    let mp = l.mountpoint("mp");
    let m = TestMount::lowerdir(&l.layers, &mp);
    let pid = m.daemon().unwrap();
    for fd in 0..3 {
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "daemon fd {fd}");
    }
    assert_eq!(fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), Path::new("/"));
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    assert_eq!(fields[3], pid.to_string(), "the daemon is not a session leader: {stat}");
    m.unmount();
    assert_nothing_left(&mp);
}

/// The mount's readahead is raised to 4 MiB right after the mount is made (the device
/// number is asked without a request to the session, which is not serving yet).
#[test]
fn the_mount_reads_ahead_4_mib() {
    require_root();
    let l = layers("life-readahead");
    let mp = l.mountpoint("mp");
    let m = TestMount::lowerdir(&l.layers, &mp);
    let dev = fs::metadata(&mp).unwrap().dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let kb = fs::read_to_string(&knob).unwrap_or_else(|e| panic!("{knob}: {e}"));
    assert_eq!(kb.trim(), "4096", "{knob}");
    m.unmount();
    assert_nothing_left(&mp);
}

/// SIGTERM at any moment of a foreground start (as a dying parent's PDEATHSIG sends it, e.g.
/// parallax-store's flattening mount when the tool is killed): the process ends and no mount is
/// left, also when the signal lands while the mount is being made (it used to kill the process
/// by default there, leaving a dead mount).
#[test]
fn sigterm_at_any_moment_of_a_start_leaves_no_mount() {
    require_root();
    let l = layers("life-early-term");
    let mp = l.mountpoint("mp");
    let opt = lowerdir_option(&l.layers);
    for i in 0..40u64 {
        let mut child = Command::new(bin())
            .args([OsString::from("-f"), OsString::from("-o"), opt.clone(), mp.clone().into()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // 0 to 8 ms after the start, spread over the process start and the mount.
        std::thread::sleep(Duration::from_micros(i * 200));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        let left = is_mounted(&mp);
        if left {
            // Leave nothing for the next iteration or test, then fail.
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
        assert!(!left, "SIGTERM {} µs after the start left a mount at {} ({status})", i * 200, mp.display());
    }
    assert_nothing_left(&mp);
}

/// glibc gives each thread that allocates an arena of its own (64 MiB of address space, and
/// freed block buffers kept in each); the daemon allows two, however many threads serve.
#[test]
fn the_daemon_keeps_at_most_two_malloc_arenas() {
    require_root();
    let l = layers("life-arenas");
    let mp = l.mountpoint("mp");
    let m = TestMount::lowerdir(&l.layers, &mp);
    let pid = m.daemon().unwrap();
    // Lookups of names that are not there: every serving thread gets requests.
    std::thread::scope(|s| {
        for t in 0..8 {
            let mp = &mp;
            s.spawn(move || {
                for i in 0..300 {
                    assert!(fs::symlink_metadata(mp.join(format!("missing-{t}-{i}"))).is_err());
                }
            });
        }
    });
    check_serving(&mp);
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let extra = heap_arenas(&maps);
    assert!(extra <= 1, "the daemon has {extra} malloc arenas besides the main one:\n{maps}");
    m.unmount();
    assert_nothing_left(&mp);
}

/// Non-main glibc arenas in a /proc/PID/maps text: anonymous mappings covering exactly one
/// 64 MiB-aligned 64 MiB region (a heap's mapped part, then its reserved rest).
fn heap_arenas(maps: &str) -> usize {
    const HEAP: u64 = 64 << 20;
    let anon: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, _perms, _off, _dev, inode) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            if inode != "0" || f.next().is_some() {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect();
    let mut count = 0;
    for (i, &(start, _)) in anon.iter().enumerate() {
        if start % HEAP != 0 {
            continue;
        }
        let mut end = start;
        for &(a, b) in &anon[i..] {
            if a != end || b > start + HEAP {
                break;
            }
            end = b;
        }
        if end == start + HEAP {
            count += 1;
        }
    }
    count
}

/// `-f` keeps the command in the foreground as the serving process; SIGTERM, SIGINT or
/// `fusermount3 -u` end it with exit 0.
#[test]
fn foreground_mode_serves_and_exits_0() {
    require_root();
    let l = layers("life-foreground");
    let mp = l.mountpoint("mp");
    for how in [Some(Signal::SIGTERM), Some(Signal::SIGINT), None] {
        let mut lower = OsString::from("lowerdir=");
        lower.push(&l.layers[0]);
        lower.push(":");
        lower.push(&l.layers[1]);
        // Reaped by `wait_gone` (waitpid) through the guard, not by `Child::wait`.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new(bin())
            .arg("-f")
            .arg("-o")
            .arg(&lower)
            .arg(&mp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let m = TestMount::adopt(&mp, Some(pid));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&mp) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(is_mounted(&mp), "parallaxfs -f did not mount within 10 s");
        check_serving(&mp);
        assert_eq!(daemons_of(&mp).iter().map(|p| p.pid).collect::<Vec<_>>(), vec![pid]);
        let mut stderr = child.stderr.take().unwrap();
        match how {
            Some(sig) => stop_with_signal(m, sig),
            None => m.unmount_with(Unmount::Fusermount),
        }
        let mut err = String::new();
        stderr.read_to_string(&mut err).unwrap();
        assert!(err.is_empty(), "parallaxfs -f printed on stderr: {err:?}");
        assert_nothing_left(&mp);
    }
}

/// The names of process `pid`'s threads once each has named itself and the session has
/// started its `fuser_threads` request threads. A thread takes its name from inside, after it
/// started (until then it shows the process's name, which only the main thread keeps), and the
/// session spawns its request threads one after the other after the mount is already live.
fn thread_names(pid: i32, fuser_threads: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut names: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .collect();
        names.sort();
        let settled = names.iter().filter(|n| *n == "parallaxfs").count() == 1
            && names.iter().filter(|n| n.starts_with("fuser-")).count() == fuser_threads;
        if settled || Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The request threads a mount starts by default: one per CPU this process may run on, at
/// least 4 (what `nproc` counts).
fn default_request_threads() -> usize {
    let out = Command::new("nproc").env_remove("OMP_NUM_THREADS").env_remove("OMP_THREAD_LIMIT").output().unwrap();
    let cpus: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    cpus.max(4)
}

/// A mount starts the threads it uses and no more: every mount has its request threads, and
/// only a read-only one the page-store worker (with an upper layer nothing is stored into the
/// page cache, and Podman starts one process per container).
#[test]
fn only_read_only_mounts_start_a_page_store_thread() {
    require_root();
    let l = layers("life-threads");
    let ro_mp = l.mountpoint("ro");
    let ro = TestMount::lowerdir(&l.layers, &ro_mp);
    let want = default_request_threads();
    let ro_threads = thread_names(ro.daemon().unwrap(), want);
    let (upper, work, rw_mp) = (l.scratch.mkdir("upper"), l.scratch.mkdir("work"), l.mountpoint("rw"));
    let mut opts = lowerdir_option(&l.layers);
    opts.push(format!(",upperdir={},workdir={}", upper.display(), work.display()));
    let rw = TestMount::parallaxfs(&["-o".into(), opts, rw_mp.clone().into()], &rw_mp);
    fs::write(rw_mp.join("new-file"), b"x").unwrap();
    let rw_threads = thread_names(rw.daemon().unwrap(), want);
    for names in [&ro_threads, &rw_threads] {
        assert_eq!(names.iter().filter(|n| n.starts_with("fuser-")).count(), want, "threads: {names:?}");
        assert_eq!(names.iter().filter(|n| *n == "parallaxfs").count(), 1, "threads: {names:?}");
    }
    assert!(ro_threads.iter().any(|n| n == "page-store"), "read-only mount threads: {ro_threads:?}");
    assert!(!rw_threads.iter().any(|n| n == "page-store"), "writable mount threads: {rw_threads:?}");
    check_serving(&ro_mp);
    check_serving(&rw_mp);
    ro.unmount();
    rw.unmount();
    assert_nothing_left(&ro_mp);
    assert_nothing_left(&rw_mp);
}
