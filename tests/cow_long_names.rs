//! Removing and renaming lower names too long for a `.wh.` marker (overlay_semantics.md §1.4:
//! "Names longer than NAME_MAX−4 cannot take `.wh.`: use char 0/0 even in `.wh.` mode").
//!
//! A SquashFS lower holds files and directories with 251-byte names (the longest a `.wh.`
//! marker fits) and 253-byte names. In both whiteout modes, through parallaxfs: unlink of a
//! lower name, unlink after a copy-up (chmod), rename of a lower file, rmdir and rename of a
//! lower directory — each must succeed, the old name must be gone, the new one there, and the
//! same must hold after a remount on the same upper.

mod cow_common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use cow_common::{run, Guard, Scratch};

fn long(prefix: &str, len: usize) -> String {
    format!("{prefix}{}", "x".repeat(len - prefix.len()))
}

const LENGTHS: [usize; 2] = [251, 253];

fn lower_tree(root: &Path) {
    for len in LENGTHS {
        for what in ["u", "c", "r"] {
            fs::write(root.join(long(what, len)), format!("{what} {len}\n")).unwrap();
        }
        fs::create_dir_all(root.join(long("d", len))).unwrap();
        fs::create_dir_all(root.join(long("m", len)).join("inside")).unwrap();
        fs::write(root.join(long("m", len)).join("inside/f"), b"moved with its dir\n").unwrap();
    }
}

/// The operations; returns what must (not) exist afterwards.
fn apply(mp: &Path) -> Vec<(String, bool)> {
    let mut expect = Vec::new();
    for len in LENGTHS {
        let (u, c, r, d, m) = (long("u", len), long("c", len), long("r", len), long("d", len), long("m", len));
        fs::remove_file(mp.join(&u)).unwrap_or_else(|e| panic!("unlink {len}-byte name: {e}"));
        fs::set_permissions(mp.join(&c), fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(mp.join(&c)).unwrap_or_else(|e| panic!("unlink {len}-byte copied-up name: {e}"));
        fs::rename(mp.join(&r), mp.join(format!("renamed{len}")))
            .unwrap_or_else(|e| panic!("rename {len}-byte name: {e}"));
        fs::remove_dir(mp.join(&d)).unwrap_or_else(|e| panic!("rmdir {len}-byte name: {e}"));
        fs::rename(mp.join(&m), mp.join(format!("moved{len}")))
            .unwrap_or_else(|e| panic!("rename {len}-byte dir: {e}"));
        expect.extend([(u, false), (c, false), (r, false), (d, false), (m, false)]);
        expect.push((format!("renamed{len}"), true));
        expect.push((format!("moved{len}/inside/f"), true));
    }
    expect
}

fn check(mp: &Path, expect: &[(String, bool)], when: &str) {
    for (name, present) in expect {
        let there = fs::symlink_metadata(mp.join(name)).is_ok();
        assert_eq!(
            there,
            *present,
            "{when}: {} is {}",
            &name[..name.len().min(12)],
            if there { "there" } else { "missing" }
        );
    }
    let listed: Vec<String> =
        fs::read_dir(mp).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    for (name, present) in expect.iter().filter(|(n, _)| !n.contains('/')) {
        assert_eq!(listed.contains(name), *present, "{when}: readdir and {}", &name[..name.len().min(12)]);
    }
}

#[test]
fn names_too_long_for_a_wh_marker_are_removed_and_renamed_in_both_modes() {
    let scratch = Scratch::new("cow-long-names");
    let mut g = Guard::default();
    let tree = scratch.dir("tree");
    lower_tree(&tree);
    let image = scratch.0.join("lower.squash");
    run(Command::new("mksquashfs").arg(&tree).arg(&image).args(["-noappend", "-quiet", "-comp", "zstd"]));
    for (mode, env) in [("char", &[][..]), (".wh.", &[("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT", "1")][..])] {
        let tag = if env.is_empty() { "char" } else { "aufs" };
        let (upper, work, mp) = (
            scratch.dir(&format!("{tag}-upper")),
            scratch.dir(&format!("{tag}-work")),
            scratch.dir(&format!("{tag}-mnt")),
        );
        let d = g.mount_pfs_env(&image, &upper, &work, &mp, env);
        let expect = apply(&mp);
        check(&mp, &expect, &format!("{mode} mode"));
        g.unmount_pfs(d);
        let d = g.mount_pfs_env(&image, &upper, &work, &mp, env);
        check(&mp, &expect, &format!("{mode} mode, after remount"));
        g.unmount_pfs(d);
    }
}
