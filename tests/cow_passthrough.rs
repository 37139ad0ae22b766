//! Upper files are served by FUSE passthrough when the daemon runs as root on a kernel that
//! offers it: reads and writes of an opened upper file go from the kernel to the upper file
//! and never through the daemon. Measured from the daemon's own I/O counters
//! (/proc/PID/io): without passthrough, every byte written crosses /dev/fuse into the daemon
//! (rchar) and out to the upper file (wchar). Files opened and files created, also with
//! `volatile`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

const MIB: usize = 1 << 20;

fn io_counters(pid: &str) -> (u64, u64) {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field = |name: &str| -> u64 {
        io.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().parse().unwrap()).unwrap()
    };
    (field("rchar:"), field("wchar:"))
}

fn daemon_of(upper: &Path) -> String {
    let out = Command::new("pgrep").arg("-f").arg(format!("upperdir={}", upper.display())).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().next().expect("daemon running").to_string()
}

fn check(volatile: bool) {
    assert!(nix::unistd::geteuid().is_root(), "passthrough needs root");
    let dir = std::env::temp_dir().join(format!("pfs-passthrough-{}-{volatile}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for d in ["lower", "upper", "work", "mnt"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::write(dir.join("lower/existing"), vec![1u8; MIB]).unwrap();
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir.join("lower").display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    if volatile {
        opts.push_str(",volatile");
    }
    let mnt = dir.join("mnt");
    let st = Command::new(env!("CARGO_BIN_EXE_parallaxfs")).args(["-o", &opts]).arg(&mnt).status().unwrap();
    assert!(st.success());
    let pid = daemon_of(&dir.join("upper"));
    let result = std::panic::catch_unwind(|| {
        // A lower file opened for writing is copied up, then handed to the kernel.
        let before = io_counters(&pid);
        let mut f = fs::OpenOptions::new().write(true).open(mnt.join("existing")).unwrap();
        let chunk = vec![7u8; MIB];
        for _ in 0..32 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let data = fs::read(mnt.join("existing")).unwrap();
        assert_eq!(data.len(), 32 * MIB);
        assert!(data.iter().all(|&b| b == 7));
        let after = io_counters(&pid);
        // The copy-up itself moves 1 MiB through the daemon; 32 MiB of writes and reads must not.
        let (r, w) = (after.0 - before.0, after.1 - before.1);
        assert!(
            r < 4 * MIB as u64 && w < 4 * MIB as u64,
            "the daemon moved {r} bytes in and {w} out: writes did not bypass it"
        );
        assert_eq!(fs::read(dir.join("upper/existing")).unwrap().len(), 32 * MIB, "data is in the upper file");
        // A file made by the create itself: the handle the create returns is passthrough too.
        let before = io_counters(&pid);
        let mut f = fs::File::create(mnt.join("created")).unwrap();
        for _ in 0..32 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let after = io_counters(&pid);
        let (r, w) = (after.0 - before.0, after.1 - before.1);
        assert!(r < MIB as u64 && w < MIB as u64, "the daemon moved {r} bytes in and {w} out for a created file");
        assert_eq!(fs::read(dir.join("upper/created")).unwrap().len(), 32 * MIB);
    });
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn upper_file_io_bypasses_the_daemon() {
    check(false);
}

#[test]
fn upper_file_io_bypasses_the_daemon_with_volatile() {
    check(true);
}
