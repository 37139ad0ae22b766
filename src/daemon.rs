//! Becoming a daemon. The mount command forks before any thread exists; the child mounts and
//! serves, the parent exits 0 once the child reports the mount live, or passes on the child's
//! one-line error and exits 1. The child never holds the parent's stdout or stderr: Podman
//! reads a mount program's output until EOF, which it gets as soon as the parent exits.
//!
//! A fork, not a re-executed copy of ourselves: the copy paid exec, the dynamic loader and
//! the runtime's start again on every mount (about 1 ms of the 5 a mount took).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::wait::waitpid;
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, ForkResult, Pid};

/// Which side of the fork we are on.
pub enum Role {
    /// The command's own process: exit with this code.
    Parent(ExitCode),
    /// The serving process: mount, then [`Ready::send`].
    Child(Ready),
}

/// The serving process's line back to the parent.
pub struct Ready {
    pipe: File,
}

impl Ready {
    /// Tells the parent the mount is live; it exits 0.
    pub fn send(mut self) -> Result<()> {
        self.pipe.write_all(b"ready\n").context("telling the mount command the mount is live")
    }
}

/// Forks the serving process. The child's stdin and stdout are /dev/null, its stderr a pipe
/// the parent passes on if the child fails before it is ready. The parent waits at most
/// `timeout` for readiness, then kills the child and fails.
pub fn fork(timeout: Duration) -> Result<Role> {
    let threads = thread_count()?;
    if threads != 1 {
        bail!("internal error: {threads} threads before daemonizing (expected 1)");
    }
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: this process has exactly one thread (checked above), so the child is a whole
    // copy of it and may run any code, not only async-signal-safe functions. Covered by every
    // test that mounts without `-f` (tests/union_lifecycle.rs mounts and unmounts 100 times and
    // checks the errors the child passes back).
    #[allow(unsafe_code)]
    let forked = unsafe { nix::unistd::fork() }.context("forking the serving process")?;
    match forked {
        ForkResult::Child => {
            drop(ready_r);
            drop(err_r);
            let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
            dup2_stdin(&null)?;
            dup2_stdout(&null)?;
            dup2_stderr(&err_w)?;
            drop(err_w);
            tune_malloc();
            Ok(Role::Child(Ready { pipe: File::from(ready_w) }))
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(err_w);
            wait_ready(child, File::from(ready_r), File::from(err_r), timeout).map(Role::Parent)
        }
    }
}

fn wait_ready(child: Pid, mut ready: File, mut err: File, timeout: Duration) -> Result<ExitCode> {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let polled = loop {
        let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    if polled == 0 {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(child, None);
        bail!("mount not ready after {} s; gave up (is a layer on unreachable storage?)", timeout.as_secs());
    }
    let mut line = [0u8; 6];
    if ready.read_exact(&mut line).is_ok() && &line == b"ready\n" {
        return Ok(ExitCode::SUCCESS);
    }
    let mut message = String::new();
    let _ = err.read_to_string(&mut message);
    let _ = waitpid(child, None);
    // The child already wrote "parallaxfs: ..." lines; pass them on verbatim.
    eprint!("{message}");
    if message.is_empty() {
        eprintln!("parallaxfs: the serving process exited before the mount was ready");
    }
    Ok(ExitCode::FAILURE)
}

/// glibc gives every serving thread its own malloc arena and keeps freed 128 KiB block
/// buffers in them: tens of MiB of RSS per container for nothing (benches/README.md). Two
/// arenas, and buffers from 64 KiB up mapped and unmapped whole.
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; it is called before this process
    // has a second thread. Tested by tests/union_lifecycle.rs
    // (`the_daemon_keeps_at_most_two_malloc_arenas`: 8 arenas without this call).
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
    }
}

fn thread_count() -> Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    threads_in(&status).context("no thread count in /proc/self/status")
}

/// The `Threads:` field of a /proc/PID/status text.
fn threads_in(status: &str) -> Option<usize> {
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_thread_count_is_read_from_proc_status() {
        assert_eq!(super::threads_in("Name:\tx\nThreads:\t1\nSigQ:\t0/1\n"), Some(1));
        assert_eq!(super::threads_in("Threads:\t17\n"), Some(17));
        assert_eq!(super::threads_in("Name:\tx\n"), None);
        // This test process: its main thread, the one running this test, and 4 more held here
        // (other tests may add threads meanwhile, never take these away).
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let held: Vec<_> = (0..4)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || rx.lock().map(|r| r.recv().is_ok()).unwrap_or(false))
            })
            .collect();
        assert!(super::thread_count().unwrap() >= 6);
        drop(tx);
        for t in held {
            t.join().unwrap();
        }
    }
}
