//! More upper files than the daemon may hold fds for: upper non-directories are pinned by an
//! O_PATH fd only within half of the fd limit; past it they are reached by parent and name, so
//! creating, writing, reading and removing thousands of files keeps working (a daemon limited
//! to 1024 fds here, 3,000 files).

use std::fs;
use std::process::Command;

#[test]
fn thousands_of_files_under_a_small_fd_limit() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts FUSE filesystems as root");
    let dir = std::env::temp_dir().join(format!("pfs-many-files-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for d in ["lower", "upper", "work", "mnt"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let mnt = dir.join("mnt");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir.join("lower").display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    let st = Command::new("prlimit")
        .args(["--nofile=1024:1024", "--"])
        .arg(env!("CARGO_BIN_EXE_parallaxfs"))
        .args(["-o", &opts])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let result = std::panic::catch_unwind(|| {
        let d = mnt.join("d");
        fs::create_dir(&d).unwrap();
        for i in 0..3000 {
            fs::write(d.join(format!("f{i}")), format!("{i}\n")).unwrap_or_else(|e| panic!("create f{i}: {e}"));
        }
        assert_eq!(fs::read_dir(&d).unwrap().count(), 3000);
        for i in (0..3000).step_by(7) {
            assert_eq!(fs::read_to_string(d.join(format!("f{i}"))).unwrap(), format!("{i}\n"));
        }
        fs::write(d.join("f2999"), "rewritten\n").unwrap();
        assert_eq!(fs::read_to_string(d.join("f2999")).unwrap(), "rewritten\n");
        fs::hard_link(d.join("f5"), d.join("link-to-f5")).unwrap();
        fs::remove_file(d.join("f5")).unwrap();
        assert_eq!(fs::read_to_string(d.join("link-to-f5")).unwrap(), "5\n");
        for i in 0..1000 {
            fs::remove_file(d.join(format!("f{}", 1000 + i))).unwrap();
        }
        assert_eq!(fs::read_dir(&d).unwrap().count(), 2000);
    });
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
