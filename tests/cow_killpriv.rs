//! Writes and truncates by a caller without CAP_FSETID drop set-user-ID, set-group-ID (with
//! group-execute or from a caller outside the file's group) and file capabilities, as on the kernel overlay; root's writes keep them.
//! parallaxfs takes this job from the kernel (FUSE_HANDLE_KILLPRIV_V2), so a passthrough
//! write, a write through the daemon and a truncate are each compared with the kernel.

mod cow_common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use cow_common::{Guard, Scratch};

const NOBODY: u32 = 65534;

/// A valid VFS_CAP_REVISION_2 value granting CAP_NET_RAW (bit 13) permitted.
const CAPS: [u8; 20] = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn set_caps(path: &Path) {
    xattr::set(path, "security.capability", &CAPS).unwrap_or_else(|e| panic!("set caps on {}: {e}", path.display()));
}

fn has_caps(path: &Path) -> bool {
    xattr::get(path, "security.capability").unwrap().is_some()
}

/// Files in the lower layer, all owned by root and writable by everyone.
const LOWER: &[(&str, u32)] = &[
    ("suid_append", 0o4777),
    ("sgid_x_append", 0o2777),
    ("sgid_nox_append", 0o2767),
    ("suid_trunc", 0o4777),
    ("suid_root_append", 0o4777),
    ("caps_append", 0o777),
    ("caps_root_append", 0o777),
];

fn as_nobody(script: &str, dir: &Path) {
    let st = Command::new("sh").arg("-c").arg(script).current_dir(dir).uid(NOBODY).gid(NOBODY).status().unwrap();
    assert!(st.success(), "as nobody in {}: {script}", dir.display());
}

/// The same changes on a merged view; returns each file's mode bits and whether it keeps
/// file capabilities.
fn exercise(mnt: &Path) -> BTreeMap<String, (u32, bool)> {
    // A file made in the upper by root (its later writes reach the upper file directly).
    let made = mnt.join("upper_suid");
    fs::OpenOptions::new().create_new(true).write(true).mode(0o777).open(&made).unwrap();
    fs::set_permissions(&made, fs::Permissions::from_mode(0o4777)).unwrap();
    let nobody_writes = "echo more >> suid_append && echo more >> sgid_x_append && echo more >> sgid_nox_append \
         && : > suid_trunc && echo more >> caps_append && echo more >> upper_suid";
    as_nobody(nobody_writes, mnt);
    for name in ["suid_root_append", "caps_root_append"] {
        let mut f = fs::OpenOptions::new().append(true).open(mnt.join(name)).unwrap();
        std::io::Write::write_all(&mut f, b"root\n").unwrap();
    }
    let mut names: Vec<&str> = LOWER.iter().map(|(n, _)| *n).collect();
    names.push("upper_suid");
    names
        .into_iter()
        .map(|n| {
            let p = mnt.join(n);
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            (n.to_string(), (mode, has_caps(&p)))
        })
        .collect()
}

#[test]
fn unprivileged_writes_drop_suid_sgid_and_caps_as_the_kernel_does() {
    let scratch = Scratch::new("killpriv");
    let lower = scratch.dir("lower");
    for (name, mode) in LOWER {
        let p = lower.join(name);
        fs::write(&p, b"lower\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
        if name.starts_with("caps") {
            set_caps(&p);
        }
    }
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o777)).unwrap();
    let mut guard = Guard::default();
    let kernel_mnt = scratch.dir("kmnt");
    guard.mount_kernel(&lower, &scratch.dir("kupper"), &scratch.dir("kwork"), &kernel_mnt);
    let kernel = exercise(&kernel_mnt);
    let pfs_mnt = scratch.dir("pmnt");
    guard.mount_pfs(&lower, &scratch.dir("pupper"), &scratch.dir("pwork"), &pfs_mnt);
    let ours = exercise(&pfs_mnt);
    // The oracle did what the test expects of it (so equality below means something).
    assert_eq!(kernel["suid_append"], (0o777, false));
    assert_eq!(kernel["suid_root_append"], (0o4777, false));
    assert!(!kernel["caps_append"].1, "kernel drops caps on an unprivileged write");
    assert_eq!(ours, kernel, "parallaxfs (left) vs kernel overlay (right)");
    drop(guard);
}
