//! A regular user migrates an image from their rootless Podman storage: the tool runs itself
//! inside Podman's user namespace, the side-car records the ids containers see (root = 0, the
//! image's uid 1000 stays 1000, not the subordinate host ids the layer files have on disk), and
//! the same user runs a container from the store with parallaxfs as mount_program.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{parallaxfs, require_environment, store_tool, text};

/// The unprivileged user (shared with the parallaxfs Podman tests).
const USER: &str = "pfs-rootless";

/// Makes sure the user exists with subordinate id ranges and /dev/fuse is usable by everyone.
fn rootless_user() {
    let have = Command::new("id").arg("-u").arg(USER).output().unwrap();
    if !have.status.success() {
        let st = Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]).status().unwrap();
        assert!(st.success(), "useradd {USER}");
    }
    for f in ["/etc/subuid", "/etc/subgid"] {
        let cur = fs::read_to_string(f).unwrap_or_default();
        if !cur.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
            fs::write(f, format!("{cur}{USER}:300000:65536\n")).unwrap();
        }
    }
    assert!(Command::new("chmod").args(["0666", "/dev/fuse"]).status().unwrap().success());
}

/// A scratch dir owned by the user, with a private Podman configuration per store root.
struct UserDir(PathBuf);

impl UserDir {
    /// A storage.conf for store root `name` (rootless Podman takes `rootless_storage_path`).
    fn conf(&self, name: &str, extra: &str) -> PathBuf {
        let d = &self.0;
        let storage = d.join(format!("{name}-storage.conf"));
        fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/{name}-graph\"\nrunroot = \"{0}/{name}-run\"\n\
                 rootless_storage_path = \"{0}/{name}-graph\"\n{extra}",
                d.display()
            ),
        )
        .unwrap();
        storage
    }

    /// `program ARGS` as the user, with only the environment given here.
    fn run_as_user(&self, storage_conf: &Path, program: &Path, args: &[&str]) -> Output {
        let d = &self.0;
        let mut c = Command::new("runuser");
        c.args(["-u", USER, "--", "env", "-i"]);
        c.arg(format!("PATH={}", std::env::var("PATH").unwrap_or_default()));
        c.arg(format!("HOME={}", d.display()));
        c.arg(format!("TMPDIR={}", d.join("tmp").display()));
        c.arg(format!("XDG_RUNTIME_DIR={}", d.join("xdg").display()));
        c.arg(format!("CONTAINERS_CONF={}", d.join("containers.conf").display()));
        c.arg(format!("CONTAINERS_STORAGE_CONF={}", storage_conf.display()));
        c.arg(program).args(args);
        c.output().unwrap()
    }
}

impl Drop for UserDir {
    fn drop(&mut self) {
        for name in ["src", "consumer"] {
            let conf = self.0.join(format!("{name}-storage.conf"));
            let _ = self.run_as_user(&conf, Path::new("podman"), &["rm", "-af", "-t", "0"]);
            let _ = self.run_as_user(&conf, Path::new("podman"), &["system", "reset", "-f"]);
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn find_squash(dir: &Path) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = e.file_type().ok()?;
        if t.is_dir() {
            if let Some(found) = find_squash(&p) {
                return Some(found);
            }
        } else if t.is_file() && p.extension().is_some_and(|x| x == "squash") {
            return Some(p);
        }
    }
    None
}

#[test]
fn regular_user_migrates_and_runs_with_container_ids() {
    require_environment();
    rootless_user();
    let dir = UserDir(PathBuf::from(format!("/var/tmp/pstore-rootless-{}", std::process::id())));
    let _ = fs::remove_dir_all(&dir.0);
    for d in ["tmp", "xdg", "store", "rootfs/bin", "rootfs/data"] {
        fs::create_dir_all(dir.0.join(d)).unwrap();
    }
    // The image: busybox, a file of uid/gid 1000 and a setuid root file.
    let rootfs = dir.0.join("rootfs");
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "stat", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("data/owned"), b"by 1000\n").unwrap();
    std::os::unix::fs::chown(rootfs.join("data/owned"), Some(1000), Some(1000)).unwrap();
    fs::write(rootfs.join("data/suid"), b"root suid\n").unwrap();
    fs::set_permissions(rootfs.join("data/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    let tar = dir.0.join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
    fs::write(
        dir.0.join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\nnetns = \"none\"\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    let src = dir.conf("src", "");
    let consumer = dir.conf(
        "consumer",
        &format!(
            "[storage.options]\nadditionalimagestores = [\"{}\"]\n[storage.options.overlay]\nmount_program = \"{}\"\n",
            dir.0.join("store").display(),
            parallaxfs().display()
        ),
    );
    assert!(Command::new("chown").args(["-R", USER]).arg(&dir.0).status().unwrap().success());
    fs::set_permissions(dir.0.join("xdg"), fs::Permissions::from_mode(0o700)).unwrap();

    let podman = Path::new("podman");
    let out = dir.run_as_user(&src, podman, &["import", tar.to_str().unwrap(), "localhost/rl:latest"]);
    assert!(out.status.success(), "podman import as {USER}: {}", text(&out));
    let graph = dir.0.join("src-graph");
    let store = dir.0.join("store");
    let migrate = [
        "--migrate",
        "--podmanRoot",
        graph.to_str().unwrap(),
        "--roStoragePath",
        store.to_str().unwrap(),
        "--image",
        "localhost/rl:latest",
    ];
    let out = dir.run_as_user(&src, &store_tool(), &migrate);
    assert!(out.status.success(), "migrate as {USER}: {}", text(&out));
    assert!(text(&out).contains("Migration successfully completed"), "{}", text(&out));

    // The side-car holds the ids the container sees.
    let squash = find_squash(&store).expect("a side-car in the store");
    let listing = Command::new("unsquashfs").arg("-lln").arg(&squash).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let line =
        |name: &str| listing.lines().find(|l| l.ends_with(name)).unwrap_or_else(|| panic!("{name} in {listing}"));
    assert!(line("/data/owned").contains(" 1000/1000 "), "{}", line("/data/owned"));
    assert!(line("/bin/busybox").contains(" 0/0 "), "{}", line("/bin/busybox"));
    assert!(line("/data/suid").starts_with("-rwsr-xr-x"), "{}", line("/data/suid"));
    // Every file the tool made belongs to the user on the host.
    let uid =
        String::from_utf8_lossy(&Command::new("id").args(["-u", USER]).output().unwrap().stdout).trim().to_string();
    let owner = Command::new("find").arg(&store).args(["!", "-uid", &uid]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&owner.stdout), "", "store files not owned by {USER}");

    // The same user runs the image from the store through parallaxfs.
    let run = [
        "run",
        "--rm",
        "--runtime",
        "runc",
        "localhost/rl:latest",
        "stat",
        "-c",
        "%u:%g %n",
        "/data/owned",
        "/bin/busybox",
    ];
    let out = dir.run_as_user(&consumer, podman, &run);
    assert!(out.status.success(), "rootless run from the store: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000:1000 /data/owned\n0:0 /bin/busybox\n");
}
