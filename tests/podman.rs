//! Real Podman (Debian's 4.3) with parallaxfs as the overlay `mount_program`, rootful.
//!
//! Every test builds its own storage (graphroot/runroot under a scratch dir, a generated
//! storage.conf and containers.conf passed through CONTAINERS_STORAGE_CONF / CONTAINERS_CONF;
//! nobody's global configuration is read or touched), imports a busybox image made from the
//! busybox-static binary, and checks what Podman users see: run, exec, commit, `podman diff`
//! equal to the kernel overlay driver's, `podman image mount`, `podman info`, `:O` volumes,
//! multi-layer images with whiteouts and opaque directories, ten containers at once, clear
//! errors for bad layers, and no parallaxfs process or mount left after any of it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// One isolated Podman store.
struct Podman {
    dir: PathBuf,
    /// Rootless: the unprivileged user Podman runs as.
    user: Option<&'static str>,
}

/// The unprivileged user of the rootless tests.
const ROOTLESS_USER: &str = "pfs-rootless";

/// Makes sure the rootless test user exists with subordinate id ranges, and that /dev/fuse is
/// usable by everyone (what a site enabling rootless Podman with a FUSE mount program does).
fn rootless_user() -> (u32, u32) {
    static IDS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    // Once per process: two rootless tests run at once, and both would add the user.
    *IDS.get_or_init(add_rootless_user)
}

fn add_rootless_user() -> (u32, u32) {
    let have = Command::new("id").arg("-u").arg(ROOTLESS_USER).output().unwrap();
    if !have.status.success() {
        let st = Command::new("useradd").args(["-m", "-s", "/bin/sh", ROOTLESS_USER]).status().unwrap();
        assert!(st.success(), "useradd {ROOTLESS_USER}");
    }
    for f in ["/etc/subuid", "/etc/subgid"] {
        let cur = fs::read_to_string(f).unwrap_or_default();
        if !cur.lines().any(|l| l.starts_with(&format!("{ROOTLESS_USER}:"))) {
            let mut line = cur;
            line.push_str(&format!("{ROOTLESS_USER}:300000:65536\n"));
            fs::write(f, line).unwrap();
        }
    }
    let st = Command::new("chmod").args(["0666", "/dev/fuse"]).status().unwrap();
    assert!(st.success());
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").arg(flag).arg(ROOTLESS_USER).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

const RUN_FLAGS: [&str; 6] = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

/// The binary under test: `PARALLAXFS_TEST_BIN` when set (the statically linked build, see
/// scripts/test-all), else the one cargo built.
fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::var("PARALLAXFS_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_parallaxfs").into()))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

impl Podman {
    fn new(name: &str, parallaxfs: bool) -> Podman {
        Podman::create(name, parallaxfs, None)
    }

    fn rootless(name: &str) -> Podman {
        Podman::create(name, true, Some(ROOTLESS_USER))
    }

    fn create(name: &str, parallaxfs: bool, user: Option<&'static str>) -> Podman {
        assert!(nix::unistd::geteuid().is_root(), "the Podman tests need root (rootless ones set up a user)");
        let base = if user.is_some() { PathBuf::from("/var/tmp") } else { std::env::temp_dir() };
        let dir = base.join(format!("pfs-podman-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("xdg")).unwrap();
        if user.is_some() {
            let (uid, gid) = rootless_user();
            let st = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(&dir).status().unwrap();
            assert!(st.success());
            fs::set_permissions(dir.join("xdg"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        }
        let mount_program = if parallaxfs { format!("mount_program = \"{}\"\n", bin()) } else { String::new() };
        fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n\
                 [storage.options.overlay]\n{mount_program}mountopt = \"nodev\"\n",
                dir.display()
            ),
        )
        .unwrap();
        fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{0}/events.log\"\ntmp_dir = \"{0}/tmp\"\n\
                 [containers]\nnetns = \"none\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let p = Podman { dir, user };
        p.import_busybox("localhost/bb:latest");
        p
    }

    fn cmd(&self) -> Command {
        let tmp = self.dir.join("tmp");
        if !tmp.exists() {
            fs::create_dir_all(&tmp).unwrap();
            if let Some(u) = self.user {
                let _ = Command::new("chown").arg(u).arg(&tmp).status();
            }
        }
        let vars = [
            ("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf")),
            ("CONTAINERS_CONF", self.dir.join("containers.conf")),
            ("TMPDIR", tmp),
            ("XDG_RUNTIME_DIR", self.dir.join("xdg")),
        ];
        let mut c = match self.user {
            // runuser keeps nothing of our environment but what `env` sets.
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", "env"]);
                for (k, v) in &vars {
                    c.arg(format!("{k}={}", v.display()));
                }
                c.arg(format!("HOME={}", self.dir.display()));
                c.arg("podman");
                c
            }
            None => {
                let mut c = Command::new("podman");
                c.envs(vars.iter().map(|(k, v)| (*k, v.as_os_str())));
                c
            }
        };
        c.env_remove("CONTAINERS_REGISTRIES_CONF");
        c
    }

    fn try_run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
    }

    /// Runs podman; panics with its output unless it succeeds. Returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.try_run(args);
        assert!(o.status.success(), "podman {args:?} failed:\n{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn run_in(&self, image: &str, script: &str) -> String {
        let mut args = vec!["run", "--rm"];
        args.extend(RUN_FLAGS);
        args.extend([image, "sh", "-c", script]);
        self.ok(&args)
    }

    fn import_busybox(&self, name: &str) {
        let root = self.dir.join("rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        for d in ["etc", "tmp", "var/lib/stuff/keep", "opt/app"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in
            ["sh", "ls", "cat", "echo", "find", "wc", "rm", "mkdir", "touch", "sleep", "true", "stat", "mv", "ln"]
        {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/motd"), "hello from the lower layer\n").unwrap();
        fs::write(root.join("var/lib/stuff/keep/file"), "keep me\n").unwrap();
        fs::write(root.join("opt/app/config"), "v1\n").unwrap();
        // Image files are old, as in any real image. (containers/storage's naive diff, used
        // with every mount program, compares mtimes at whole seconds when one side has no
        // nanoseconds — tar-imported files have none — so a same-size edit made within the
        // second of the import would go unnoticed by `podman commit`, with fuse-overlayfs too.)
        let st = Command::new("find")
            .arg(&root)
            .args(["-exec", "touch", "-h", "-d", "@1000000000", "{}", "+"])
            .status()
            .unwrap();
        assert!(st.success());
        let tar = self.dir.join("rootfs.tar");
        let st = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap();
        assert!(st.success());
        if let Some(u) = self.user {
            let _ = Command::new("chown").arg(u).arg(&tar).status();
        }
        self.ok(&["import", tar.to_str().unwrap(), name]);
    }

    /// parallaxfs daemons serving mounts of this store.
    fn daemons(&self) -> Vec<i32> {
        daemons_under(&self.dir)
    }

    /// Mounts under this store, but for the private bind mount containers/storage makes of its
    /// own overlay home (`graph/overlay`, any mount program or none): Podman's, not a mount
    /// program's, and left stacked now and then when several podman processes start at once.
    fn mounts(&self) -> Vec<String> {
        let needle = self.dir.to_string_lossy().into_owned();
        let storage_home = self.dir.join("graph/overlay").to_string_lossy().into_owned();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&needle) && *p != storage_home)
            .collect()
    }

    /// Containers PREFIX0..PREFIX{n-1} each wrote their index to /tmp/me: each must read its
    /// own (containers of one image never share an upper). Waits for the writes to land.
    fn assert_each_sees_its_own_upper(&self, prefix: &str, n: usize) {
        for i in 0..n {
            let name = format!("{prefix}{i}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let o = self.try_run(&["exec", &name, "cat", "/tmp/me"]);
                if o.status.success() && String::from_utf8_lossy(&o.stdout) == format!("{i}\n") {
                    break;
                }
                assert!(Instant::now() < deadline, "{name} does not see its own upper: {}", text(&o));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Waits until no parallaxfs process and no mount of this store is left.
    fn assert_clean(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (d, m) = (self.daemons(), self.mounts());
            if d.is_empty() && m.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: left behind: daemons {d:?}, mounts {m:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-af", "-t", "0"]).output();
        let _ = self.cmd().args(["image", "unmount", "-a"]).output();
        for m in self.mounts().iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = self.cmd().args(["system", "reset", "-f"]).output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Live (non-zombie) processes running the parallaxfs binary with `dir` in their arguments.
fn daemons_under(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.first().is_some_and(|a| a.ends_with("parallaxfs")) || !args.iter().any(|a| a.contains(&needle)) {
            continue;
        }
        let status = fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if status.lines().any(|l| l.starts_with("State:") && l.contains('Z')) {
            continue;
        }
        out.push(pid);
    }
    out
}

#[test]
fn run_exec_stop_rm_leave_nothing_behind() {
    let p = Podman::new("basic", true);
    let out = p.run_in(
        "localhost/bb",
        "cat /etc/motd; echo written > /tmp/new; cat /tmp/new; rm /etc/motd; cat /etc/motd 2>/dev/null || echo gone",
    );
    assert_eq!(out, "hello from the lower layer\nwritten\ngone\n");
    p.assert_clean("run --rm");
    // Detached container: exec, stop, start, rm.
    let mut args = vec!["run", "-d", "--name", "c1"];
    args.extend(RUN_FLAGS);
    args.extend(["localhost/bb", "sleep", "600"]);
    p.ok(&args);
    assert_eq!(p.daemons().len(), 1, "one parallaxfs process per container");
    assert_eq!(p.ok(&["exec", "c1", "sh", "-c", "echo hi > /opt/app/config; cat /opt/app/config"]), "hi\n");
    p.ok(&["stop", "-t", "0", "c1"]);
    p.assert_clean("stop");
    p.ok(&["start", "c1"]);
    assert_eq!(p.ok(&["exec", "c1", "cat", "/opt/app/config"]), "hi\n", "the upper survives a restart");
    p.ok(&["rm", "-f", "-t", "0", "c1"]);
    p.assert_clean("rm -f");
}

#[test]
fn info_shows_the_mount_program_version() {
    let p = Podman::new("info", true);
    let info = p.ok(&["info", "--format", "{{json .Store.GraphOptions}}"]);
    assert!(info.contains(bin()), "{info}");
    assert!(info.contains(&format!("parallaxfs: version {}", env!("CARGO_PKG_VERSION"))), "{info}");
}

/// Changes made in a container for the diff/commit tests: created, deleted, changed files, a
/// lower directory replaced by a new one, a new directory with a symlink.
const CHANGES: &str = "echo new > /tmp/created; rm /etc/motd; echo v2 > /opt/app/config; \
                       rm -rf /var/lib/stuff/keep; mkdir -p /var/lib/stuff/keep; touch /var/lib/stuff/keep/fresh; \
                       mkdir /newdir; ln -s /etc/passwd /newdir/link";

/// What a container of the committed image prints of those changes.
const COMMITTED_VIEW: &str = "gone\nv2\nnew\nfresh\n/etc/passwd\n";

/// The `podman container diff` of [`CHANGES`], as the kernel overlay driver gives it.
fn changes_diff() -> BTreeSet<String> {
    [
        "A /newdir",
        "A /newdir/link",
        "A /tmp/created",
        "A /var/lib/stuff/keep/fresh",
        "C /etc",
        "C /opt",
        "C /opt/app",
        "C /opt/app/config",
        "C /tmp",
        "C /var",
        "C /var/lib",
        "C /var/lib/stuff",
        "C /var/lib/stuff/keep",
        "D /etc/motd",
        "D /var/lib/stuff/keep/file",
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

/// Runs [`CHANGES`] in a container, then returns its `podman container diff` and what a
/// container of the image committed from it shows.
fn diff_and_commit(p: &Podman) -> (BTreeSet<String>, String) {
    // `podman diff NAME` takes an image ID prefix before a container name: a container named
    // "d" would be read as any image whose ID starts with d (one run in 16). Say `container`.
    let mut args = vec!["run", "--name", "differ"];
    args.extend(RUN_FLAGS);
    args.extend(["localhost/bb", "sh", "-c", CHANGES]);
    p.ok(&args);
    let diff: BTreeSet<String> = p.ok(&["container", "diff", "differ"]).lines().map(str::to_string).collect();
    p.ok(&["commit", "-q", "differ", "localhost/committed"]);
    let seen = p.run_in(
        "localhost/committed",
        "cat /etc/motd 2>/dev/null || echo gone; cat /opt/app/config /tmp/created; ls /var/lib/stuff/keep; \
         ls -l /newdir/link | sed 's/.* -> //'",
    );
    p.ok(&["rm", "differ"]);
    p.assert_clean("diff/commit");
    (diff, seen)
}

/// What `podman diff` and `podman commit` see must be what the kernel overlay driver gives for
/// the same changes: the committed images must show the same tree, and the diff is the one the
/// kernel driver prints for these changes (checked by hand on this Podman; in this harness the
/// kernel driver's own `podman diff` lists the whole image as added, so it is not the oracle).
#[test]
fn diff_and_commit_match_the_kernel_overlay_driver() {
    let pfs = diff_and_commit(&Podman::new("diff-pfs", true));
    let kernel = diff_and_commit(&Podman::new("diff-kernel", false));
    assert_eq!(pfs.1, kernel.1, "committed image: parallaxfs (left) vs kernel overlay driver (right)");
    assert_eq!(pfs.1, COMMITTED_VIEW);
    assert_eq!(pfs.0, changes_diff(), "podman diff through parallaxfs");
}

/// Builds a three-step image with `podman build` (every RUN step is a container mounted
/// through the mount program, then committed: deletions become whiteouts and opaque dirs in
/// the layers) and returns what a container of it shows.
fn build_layers(p: &Podman) -> String {
    let ctx = p.dir.join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Containerfile"),
        "FROM localhost/bb\n\
         RUN rm /etc/motd && echo two > /opt/app/second\n\
         RUN rm -rf /var/lib/stuff && mkdir -p /var/lib/stuff/new && echo n > /var/lib/stuff/new/f\n\
         RUN mv /opt/app /opt/moved && echo three > /opt/moved/third\n",
    )
    .unwrap();
    if let Some(u) = p.user {
        let st = Command::new("chown").arg("-R").arg(u).arg(&ctx).status().unwrap();
        assert!(st.success());
    }
    let mut args = vec!["build", "-q", "--runtime", "runc", "--network", "none", "-t", "localhost/layers"];
    args.push(ctx.to_str().unwrap());
    p.ok(&args);
    p.run_in(
        "localhost/layers",
        "cat /etc/motd 2>/dev/null || echo gone; find /var/lib/stuff | sort; ls /opt; \
         cat /opt/moved/config /opt/moved/second /opt/moved/third",
    )
}

/// What a container of [`build_layers`]'s image must show.
const BUILT_VIEW: &str = "gone\n/var/lib/stuff\n/var/lib/stuff/new\n/var/lib/stuff/new/f\nmoved\nv1\ntwo\nthree\n";

/// A multi-layer image built by `podman build`: a container of the final image must show
/// exactly the result of the steps.
#[test]
fn multi_layer_build_with_whiteouts_and_opaque_dirs() {
    let p = Podman::new("build", true);
    assert_eq!(build_layers(&p), BUILT_VIEW, "view of the built image");
    p.assert_clean("build");
}

#[test]
fn image_mount_and_overlay_volume() {
    let p = Podman::new("imgmount", true);
    let mp = p.ok(&["image", "mount", "localhost/bb"]);
    let mp = PathBuf::from(mp.trim());
    assert_eq!(fs::read_to_string(mp.join("etc/motd")).unwrap(), "hello from the lower layer\n");
    assert!(fs::write(mp.join("etc/x"), "no").is_err(), "an image mount is read-only");
    p.ok(&["image", "unmount", "localhost/bb"]);
    p.assert_clean("image unmount");
    // `-v SRC:DST:O`: an overlay over a host directory; writes stay in the container.
    let src = p.dir.join("vol");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("host"), "from host\n").unwrap();
    let vol = format!("{}:/data:O", src.display());
    let mut args = vec!["run", "--rm", "-v", &vol];
    args.extend(RUN_FLAGS);
    args.extend(["localhost/bb", "sh", "-c", "cat /data/host; echo c > /data/host; cat /data/host"]);
    assert_eq!(p.ok(&args), "from host\nc\n");
    assert_eq!(fs::read_to_string(src.join("host")).unwrap(), "from host\n", "the host dir is untouched");
    p.assert_clean("overlay volume");
}

#[test]
fn ten_containers_at_once_each_with_its_own_process_and_upper() {
    let p = Podman::new("ten", true);
    let mut children = Vec::new();
    for i in 0..10 {
        let name = format!("c{i}");
        let mut args = vec!["run".to_string(), "-d".into(), "--name".into(), name];
        args.extend(RUN_FLAGS.iter().map(|s| s.to_string()));
        args.extend(["localhost/bb".into(), "sh".into(), "-c".into(), format!("echo {i} > /tmp/me; sleep 600")]);
        children.push(p.cmd().args(&args).stdout(std::process::Stdio::null()).spawn().unwrap());
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(p.daemons().len(), 10, "one parallaxfs process per container");
    p.assert_each_sees_its_own_upper("c", 10);
    p.ok(&["rm", "-af", "-t", "0"]);
    p.assert_clean("ten containers removed");
}

/// A killed conmon/container: cleanup still unmounts and the daemon exits.
#[test]
fn killed_container_is_cleaned_up() {
    let p = Podman::new("kill", true);
    let mut args = vec!["run", "-d", "--name", "k"];
    args.extend(RUN_FLAGS);
    args.extend(["localhost/bb", "sleep", "600"]);
    p.ok(&args);
    p.ok(&["kill", "-s", "KILL", "k"]);
    p.ok(&["wait", "k"]);
    p.ok(&["rm", "k"]);
    p.assert_clean("killed container removed");
}

/// Rootless Podman (a user with subordinate ids, Podman's own user namespace): the daemon runs
/// inside it, writes land in the user's store with the container's ids mapped, and nothing
/// is left behind.
#[test]
fn rootless_run_exec_and_cleanup() {
    let p = Podman::rootless("rootless");
    let out = p.run_in(
        "localhost/bb",
        "id -u; cat /etc/motd; echo w > /opt/app/config; cat /opt/app/config; rm /etc/motd; \
         cat /etc/motd 2>/dev/null || echo gone; mkdir /newd; touch /newd/f; ls -n /newd | wc -l",
    );
    assert_eq!(out, "0\nhello from the lower layer\nw\ngone\n2\n");
    p.assert_clean("rootless run --rm");
    let mut args = vec!["run", "-d", "--name", "r1"];
    args.extend(RUN_FLAGS);
    args.extend(["localhost/bb", "sleep", "600"]);
    p.ok(&args);
    assert_eq!(p.daemons().len(), 1, "one parallaxfs process per container");
    assert_eq!(p.ok(&["exec", "r1", "sh", "-c", "echo x > /tmp/t; cat /tmp/t"]), "x\n");
    // `--userns=keep-id` makes c/storage pass uidmapping/gidmapping options.
    let mut args = vec!["run", "--rm", "--userns=keep-id"];
    args.extend(RUN_FLAGS);
    args.extend(["localhost/bb", "sh", "-c", "cat /etc/motd; ls -n /etc/motd | wc -l"]);
    assert_eq!(p.ok(&args), "hello from the lower layer\n1\n");
    p.ok(&["rm", "-f", "-t", "0", "r1"]);
    p.assert_clean("rootless rm -f");
}

/// Rootless, the rest of what a user does: `podman info` names parallaxfs, diff and commit
/// give what the rootful runs give, a multi-layer build with whiteouts and opaque dirs, an
/// image mount (inside `podman unshare`, where rootless Podman allows it), a `-v SRC:DST:O`
/// overlay volume, and three containers at once each with its own daemon.
#[test]
fn rootless_info_diff_commit_build_image_mount_volume() {
    let p = Podman::rootless("rootless-more");
    let info = p.ok(&["info", "--format", "{{json .Store.GraphOptions}}"]);
    assert!(info.contains(&format!("parallaxfs: version {}", env!("CARGO_PKG_VERSION"))), "{info}");
    let (diff, seen) = diff_and_commit(&p);
    assert_eq!(seen, COMMITTED_VIEW, "rootless committed image");
    assert_eq!(diff, changes_diff(), "rootless podman diff");
    assert_eq!(build_layers(&p), BUILT_VIEW, "rootless build");
    p.assert_clean("rootless build");
    let out = p.ok(&[
        "unshare",
        "sh",
        "-c",
        "m=$(podman image mount localhost/bb) && cat \"$m/etc/motd\" && \
         (echo no > \"$m/etc/x\") 2>/dev/null || echo read-only; podman image unmount localhost/bb >/dev/null",
    ]);
    assert_eq!(out, "hello from the lower layer\nread-only\n", "rootless image mount");
    p.assert_clean("rootless image unmount");
    let src = p.dir.join("vol");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("host"), "from host\n").unwrap();
    let st = Command::new("chown").arg("-R").arg(ROOTLESS_USER).arg(&src).status().unwrap();
    assert!(st.success());
    let vol = format!("{}:/data:O", src.display());
    let mut args = vec!["run", "--rm", "-v", &vol];
    args.extend(RUN_FLAGS);
    args.extend(["localhost/bb", "sh", "-c", "cat /data/host; echo c > /data/host; cat /data/host"]);
    assert_eq!(p.ok(&args), "from host\nc\n", "rootless overlay volume");
    assert_eq!(fs::read_to_string(src.join("host")).unwrap(), "from host\n", "the host dir is untouched");
    p.assert_clean("rootless overlay volume");
    for i in 0..3 {
        let name = format!("r{i}");
        let script = format!("echo {i} > /tmp/me; sleep 600");
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend(RUN_FLAGS);
        args.extend(["localhost/bb", "sh", "-c", &script]);
        p.ok(&args);
    }
    assert_eq!(p.daemons().len(), 3, "one parallaxfs process per rootless container");
    p.assert_each_sees_its_own_upper("r", 3);
    p.ok(&["rm", "-af", "-t", "0"]);
    p.assert_clean("rootless containers removed");
}

/// Bad layers: a clear one-line error from parallaxfs reaches the user; nothing stays mounted.
#[test]
fn bad_layer_gives_one_clear_error_and_nothing_mounted() {
    let dir = std::env::temp_dir().join(format!("pfs-podman-bad-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let corrupt = dir.join("corrupt.squash");
    fs::write(&corrupt, b"hsqs this is not really an image").unwrap();
    // An upper and workdir on a read-only filesystem.
    let ro_upper = dir.join("ro-upper");
    fs::create_dir_all(&ro_upper).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&ro_upper).status().unwrap();
    assert!(st.success());
    let ro_upper_mount = UnmountOnDrop(ro_upper.clone());
    fs::create_dir_all(ro_upper.join("u")).unwrap();
    fs::create_dir_all(ro_upper.join("w")).unwrap();
    let st = Command::new("mount").args(["-o", "remount,ro"]).arg(&ro_upper).status().unwrap();
    assert!(st.success());
    let cases = [
        (format!("lowerdir={}/missing.squash", dir.display()), "missing.squash"),
        (format!("lowerdir={}", corrupt.display()), "corrupt.squash"),
        (format!("lowerdir={}/lower,upperdir={1}/u,workdir={1}/w", dir.display(), ro_upper.display()), "ro-upper"),
    ];
    for (opts, names) in cases {
        let o = Command::new(bin()).args(["-o", &opts]).arg(dir.join("merged")).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{opts}: should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "{opts}: one line wanted, got:\n{err}");
        assert!(err.contains(names), "{opts}: the error should name the bad path: {err}");
        let merged = dir.join("merged");
        let mounted = fs::read_to_string("/proc/self/mountinfo").unwrap().contains(merged.to_str().unwrap());
        assert!(!mounted, "{opts}: left mounted");
    }
    assert!(daemons_under(&dir).is_empty());
    drop(ro_upper_mount);
    let _ = fs::remove_dir_all(&dir);
}

/// Unmounts its path when dropped: also when an assertion fails before the test's end.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
