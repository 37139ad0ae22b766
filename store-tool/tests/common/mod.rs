//! Shared helpers of the store tool's integration tests: a private Podman (its own root,
//! runroot, containers.conf and storage.conf under a temp dir; the user's config is never
//! read), images built from a busybox-static rootfs, the two binaries, and a tree walker that
//! records what the kernel shows of a mounted tree.
#![allow(dead_code, reason = "each test file uses its own subset of the helpers")]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The tool under test.
pub fn store_tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_parallax-store"))
}

/// The parallaxfs binary, built next to the tool (`cargo build --release -p parallaxfs`).
pub fn parallaxfs() -> PathBuf {
    let p = store_tool().with_file_name("parallaxfs");
    assert!(
        p.is_file(),
        "{} missing: build it first (cargo build --release -p parallax-store -p parallaxfs)",
        p.display()
    );
    p
}

/// Fails (never skips) unless the tests can run: root, podman, runc, mksquashfs, busybox.
pub fn require_environment() {
    assert!(nix::unistd::geteuid().is_root(), "the store tool's integration tests must run as root (podman, mounts)");
    for tool in ["podman", "runc", "mksquashfs", "unsquashfs"] {
        assert!(which(tool).is_some(), "{tool} not found: install podman, runc and squashfs-tools");
    }
    assert!(Path::new("/bin/busybox").is_file(), "/bin/busybox missing: install busybox-static");
    parallaxfs();
}

/// `tool` on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// stdout + stderr as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A private Podman installation.
pub struct Podman {
    /// Holds everything.
    pub dir: TempDir,
    /// `--root`.
    pub root: PathBuf,
    /// `--runroot`.
    pub runroot: PathBuf,
    conf: PathBuf,
    storage_conf: PathBuf,
    registries_conf: PathBuf,
}

impl Podman {
    /// A fresh, empty Podman store with its own configuration.
    pub fn new() -> Podman {
        let dir = tempfile::Builder::new().prefix("pstore-podman-").tempdir().unwrap();
        let root = dir.path().join("root");
        let runroot = dir.path().join("runroot");
        let conf = dir.path().join("containers.conf");
        let storage_conf = dir.path().join("storage.conf");
        let registries_conf = dir.path().join("registries.conf");
        fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\nnetns = \"none\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                runroot.display(),
                root.display()
            ),
        )
        .unwrap();
        fs::write(&registries_conf, "unqualified-search-registries = [\"docker.io\"]\n").unwrap();
        Podman { dir, root, runroot, conf, storage_conf, registries_conf }
    }

    /// `$TMPDIR` of every command: the tool's flattening mounts live here.
    pub fn tmp(&self) -> PathBuf {
        let t = self.dir.path().join("tmp");
        fs::create_dir_all(&t).unwrap();
        t
    }

    /// Environment every command gets (podman and the tool alike).
    pub fn envs(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("TMPDIR", self.tmp()),
            ("CONTAINERS_CONF", self.conf.clone()),
            ("CONTAINERS_STORAGE_CONF", self.storage_conf.clone()),
            ("CONTAINERS_REGISTRIES_CONF", self.registries_conf.clone()),
        ]
    }

    /// `podman --root R --runroot RR --storage-driver overlay ARGS` with the private config.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.envs(self.envs());
        c.arg("--root").arg(&self.root).arg("--runroot").arg(&self.runroot).args(["--storage-driver", "overlay"]);
        c.args(args);
        c
    }

    /// Runs podman; panics with its output on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(out.status.success(), "podman {args:?} failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A Podman with another root (a consumer) reading `store` as additional image store.
    pub fn consumer(&self, store: &Path) -> Command {
        let root = self.dir.path().join("consumer-root");
        let runroot = self.dir.path().join("consumer-runroot");
        let mut c = Command::new("podman");
        c.envs(self.envs());
        c.arg("--root").arg(root).arg("--runroot").arg(runroot).args(["--storage-driver", "overlay"]);
        c.arg("--storage-opt").arg(format!("additionalimagestore={}", store.display()));
        c
    }

    /// `localhost/base:latest`: busybox-static with a few applets linked, Env and Cmd set.
    pub fn import_base(&self) {
        let rootfs = self.dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        for d in ["etc", "tmp", "data"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in
            ["sh", "ls", "cat", "echo", "rm", "mkdir", "touch", "ln", "chmod", "chown", "mknod", "mkfifo", "true"]
        {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        fs::write(rootfs.join("etc/os-release"), "NAME=testbox\n").unwrap();
        fs::write(rootfs.join("etc/gone"), "removed later\n").unwrap();
        fs::create_dir_all(rootfs.join("data/replaced")).unwrap();
        fs::write(rootfs.join("data/replaced/old"), "old\n").unwrap();
        let tar = self.dir.path().join("rootfs.tar");
        let st = Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().unwrap();
        assert!(st.success());
        self.ok(&[
            "import",
            "--change",
            "CMD=[\"/bin/sh\"]",
            "--change",
            "ENV=PATH=/bin",
            tar.to_str().unwrap(),
            "localhost/base:latest",
        ]);
    }

    /// Builds `name` from `localhost/base` with `steps` (Containerfile lines after FROM); `files`
    /// are put in the build context first.
    pub fn build(&self, name: &str, steps: &str, files: &[(&str, &[u8])]) {
        let ctx = self.dir.path().join(format!("ctx-{}", name.replace(['/', ':'], "-")));
        fs::create_dir_all(&ctx).unwrap();
        for (file, content) in files {
            fs::write(ctx.join(file), content).unwrap();
        }
        fs::write(ctx.join("Containerfile"), format!("FROM localhost/base:latest\n{steps}\n")).unwrap();
        self.ok(&["build", "-q", "-f", ctx.join("Containerfile").to_str().unwrap(), "-t", name, ctx.to_str().unwrap()]);
    }

    /// A multi-layer image exercising whiteouts, opaque dirs, hard links, devices, fifos,
    /// owners, modes and symlinks.
    pub fn build_multi_layer(&self, name: &str) {
        let special = self.dir.path().join("special");
        let _ = fs::remove_dir_all(&special);
        fs::create_dir_all(special.join("special/sub")).unwrap();
        let s = special.join("special");
        nix::sys::stat::mknod(
            &s.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        nix::unistd::mkfifo(&s.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
        fs::write(s.join("owned"), "owned\n").unwrap();
        nix::unistd::chown(&s.join("owned"), Some(1234.into()), Some(5678.into())).unwrap();
        fs::write(s.join("suid"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(s.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(s.join("owned"), s.join("owned-link")).unwrap();
        fs::write(s.join("sub/deep"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("../special/owned", s.join("sub/link")).unwrap();
        let tar = Command::new("tar").arg("-C").arg(&special).args(["-cf", "-", "special"]).output().unwrap();
        assert!(tar.status.success());
        self.build(
            name,
            "RUN mkdir -p /data/sub && echo one > /data/a && echo two > /data/sub/b && ln /data/a /data/hl && chmod 0700 /data/sub\n\
             ADD special.tar /\n\
             RUN rm /etc/gone && rm -rf /data/replaced && mkdir /data/replaced && echo new > /data/replaced/new && rm /special/fifo\n\
             COPY Containerfile /copied\n\
             ENV FOO=bar\nCMD [\"/bin/sh\", \"-c\", \"echo hi\"]",
            &[("special.tar", &tar.stdout)],
        );
    }

    /// The diff directories of image `name`'s layers, topmost first.
    pub fn layer_dirs(&self, name: &str) -> Vec<PathBuf> {
        let id = self.ok(&["image", "inspect", "--format", "{{.Id}}", name]).trim().to_string();
        let images: serde_json::Value =
            serde_json::from_slice(&fs::read(self.root.join("overlay-images/images.json")).unwrap()).unwrap();
        let image = images.as_array().unwrap().iter().find(|i| i["id"] == id.as_str()).unwrap();
        let top = image["layer"].as_str().unwrap().to_string();
        let layers: serde_json::Value =
            serde_json::from_slice(&fs::read(self.root.join("overlay-layers/layers.json")).unwrap()).unwrap();
        let mut out = Vec::new();
        let mut next = Some(top);
        while let Some(id) = next {
            out.push(self.root.join("overlay").join(&id).join("diff"));
            next = layers
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["id"] == id.as_str())
                .and_then(|l| l["parent"].as_str())
                .map(str::to_string);
        }
        out
    }

    /// Runs the tool with this Podman's environment.
    pub fn tool(&self, args: &[&str]) -> Output {
        Command::new(store_tool()).envs(self.envs()).args(args).output().unwrap()
    }

    /// `parallax-store --migrate --podmanRoot ROOT --roStoragePath STORE --image IMAGE`.
    pub fn migrate(&self, store: &Path, image: &str) -> Output {
        self.tool(&[
            "--migrate",
            "--podmanRoot",
            self.root.to_str().unwrap(),
            "--roStoragePath",
            store.to_str().unwrap(),
            "--image",
            image,
        ])
    }
}

/// One object of a walked tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (files and symlinks).
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Device number (devices).
    pub rdev: u64,
    /// Link target or content digest.
    pub content: String,
    /// Other paths of the tree that are the same inode (hard links), sorted.
    pub links: Vec<String>,
}

/// Walks `root` (not following symlinks) and records every object by relative path.
pub fn walk(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut by_inode: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let content = if ft.is_file() {
            format!("{:x}", Sha256::digest(fs::read(&path).unwrap()))
        } else if ft.is_symlink() {
            fs::read_link(&path).unwrap().display().to_string()
        } else {
            String::new()
        };
        let key = format!("/{}", rel.display());
        if ft.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        } else {
            by_inode.entry((meta.dev(), meta.ino())).or_default().push(key.clone());
        }
        let size = if ft.is_dir() { 0 } else { meta.size() };
        let rdev = if ft.is_char_device() || ft.is_block_device() { meta.rdev() } else { 0 };
        out.insert(
            key,
            Node {
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                size,
                mtime: meta.mtime(),
                rdev,
                content,
                links: Vec::new(),
            },
        );
    }
    for paths in by_inode.values().filter(|p| p.len() > 1) {
        let mut sorted = paths.clone();
        sorted.sort();
        for p in paths {
            out.get_mut(p).unwrap().links = sorted.clone();
        }
    }
    out
}

/// A mount that is unmounted (lazily) on drop.
pub struct Mounted(pub PathBuf);

/// Podman bind-mounts its `overlay` directory on first use (and may leave container mounts):
/// everything mounted below the store goes with it.
impl Drop for Podman {
    fn drop(&mut self) {
        let below = self.dir.path().to_string_lossy().into_owned();
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> =
            info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&below)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `mount ARGS... TARGET`, unmounted on drop.
pub fn mount(args: &[&str], target: &Path) -> Mounted {
    fs::create_dir_all(target).unwrap();
    let out = Command::new("mount").args(args).arg(target).output().unwrap();
    assert!(out.status.success(), "mount {args:?} {}: {}", target.display(), text(&out));
    Mounted(target.to_path_buf())
}

/// A recursive listing with content digests and modes of `root` (to prove a store unchanged).
pub fn snapshot(root: &Path) -> BTreeMap<String, (u32, String, i64)> {
    walk(root).into_iter().map(|(k, n)| (k, (n.mode, n.content, n.mtime))).collect()
}

/// Mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_string)
        .collect()
}
