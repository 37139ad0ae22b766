//! A full upper disk: the writer gets ENOSPC (not EIO, not a hang), a copy-up that does not
//! fit leaves the lower file visible and the workdir clean, and lower data and existing upper
//! data stay intact.

use std::fs;
use std::io::Write;
use std::process::Command;

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

#[test]
fn full_upper_gives_enospc_and_loses_nothing() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts tmpfs and FUSE as root");
    let dir = std::env::temp_dir().join(format!("pfs-enospc-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for d in ["lower", "small", "mnt"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let lower_big = vec![3u8; 6 << 20];
    fs::write(dir.join("lower/big"), &lower_big).unwrap();
    fs::write(dir.join("lower/small"), b"lower small\n").unwrap();
    // A 4 MiB filesystem holds upper and workdir.
    let small = dir.join("small");
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(&small).status().unwrap();
    assert!(st.success());
    fs::create_dir_all(small.join("u")).unwrap();
    fs::create_dir_all(small.join("w")).unwrap();
    let mnt = dir.join("mnt");
    let opts = format!(
        "lowerdir={},upperdir={}/u,workdir={}/w",
        dir.join("lower").display(),
        small.display(),
        small.display()
    );
    let st = Command::new(env!("CARGO_BIN_EXE_parallaxfs")).args(["-o", &opts]).arg(&mnt).status().unwrap();
    assert!(st.success());
    let result = std::panic::catch_unwind(|| {
        fs::write(mnt.join("kept"), b"existing upper data\n").unwrap();
        // Writing past the free space: ENOSPC to the caller.
        let mut f = fs::File::create(mnt.join("filler")).unwrap();
        let chunk = vec![1u8; 256 << 10];
        let err = (0..64).find_map(|_| f.write_all(&chunk).and_then(|()| f.sync_data()).err());
        let err = err.expect("a 16 MiB write into a 4 MiB upper must fail");
        assert_eq!(errno(&err), libc::ENOSPC, "{err}");
        drop(f);
        // A copy-up of a 6 MiB lower file cannot fit: the open fails with ENOSPC and the lower
        // file stays what the name shows.
        let err = fs::OpenOptions::new().append(true).open(mnt.join("big")).expect_err("copy-up cannot fit");
        assert_eq!(errno(&err), libc::ENOSPC, "{err}");
        assert!(fs::read(mnt.join("big")).unwrap() == lower_big, "lower file intact through the mount");
        assert_eq!(fs::read_dir(small.join("w/work")).unwrap().count(), 0, "no half-built copy left in workdir");
        assert_eq!(fs::read(mnt.join("kept")).unwrap(), b"existing upper data\n");
        assert_eq!(fs::read(mnt.join("small")).unwrap(), b"lower small\n");
        // Space freed: writes work again.
        fs::remove_file(mnt.join("filler")).unwrap();
        // FUSE sends RELEASE asynchronously after close(): the daemon closes its upper fd (and
        // the space comes back) a moment after the last close, not within it.
        let freed = (0..800).any(|_| {
            let free = nix::sys::statvfs::statvfs(&small).map(|s| s.blocks_available()).unwrap_or(0);
            free > 256 || {
                std::thread::sleep(std::time::Duration::from_millis(25));
                false
            }
        });
        assert!(freed, "the filler's space must come back once its handle is released");
        fs::OpenOptions::new().append(true).open(mnt.join("small")).unwrap().write_all(b"more\n").unwrap();
        assert_eq!(fs::read(mnt.join("small")).unwrap(), b"lower small\nmore\n");
    });
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    // Lazily: the daemon may still hold fds on the tmpfs for a moment after the unmount above,
    // and a plain umount then failed and left the tmpfs mounted.
    let _ = Command::new("umount").arg("-l").arg(&small).status();
    assert!(fs::read(dir.join("lower/big")).unwrap() == lower_big, "lower layer untouched");
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
