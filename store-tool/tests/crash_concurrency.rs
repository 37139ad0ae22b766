//! Crash and concurrency: `kill -9` at every phase of a migration leaves a store that Podman
//! and `verify` accept, no mount and no helper process behind, and a rerun finishes; parallel
//! migrations (different images, the same image, migrate ∥ rmi) into one store lose nothing
//! and never publish a name twice.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_environment, text, Podman};

fn spawn_migrate(p: &Podman, store: &std::path::Path, image: &str) -> Child {
    Command::new(common::store_tool())
        .envs(p.envs())
        .args(["migrate", image, "--podmanRoot", p.root.to_str().unwrap(), "--roStoragePath", store.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_no_mounts(p: &Podman, store_hint: &str) {
    let start = Instant::now();
    loop {
        let left = common::mounts_under(&p.tmp());
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{store_hint}: mounts left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn image_names(store: &std::path::Path) -> Vec<String> {
    let images: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("overlay-images/images.json")).unwrap_or_else(|_| b"[]".to_vec()))
            .unwrap();
    images
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn kill_9_at_every_phase_then_rerun() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    p.build(
        "localhost/big:1",
        "RUN dd if=/dev/urandom of=/big bs=1M count=48 2>/dev/null && echo a > /a\nRUN rm /etc/gone",
        &[],
    );
    let store = p.dir.path().join("store");
    fs::create_dir(&store).unwrap();
    // How long a full migration takes here, to spread the kills over it: the faster of two
    // (the first reads the layers cold, maybe beside another test's migrations; a probe
    // slower than the rounds would put the late kills after the end).
    let full = (0..2)
        .map(|i| {
            let t = Instant::now();
            let probe = p.dir.path().join(format!("probe-{i}"));
            fs::create_dir(&probe).unwrap();
            let out = p.migrate(&probe, "localhost/big:1");
            assert!(out.status.success(), "{}", text(&out));
            t.elapsed()
        })
        .min()
        .unwrap();
    let rounds = 14u32;
    let mut interrupted = 0;
    for round in 0..rounds {
        let mut child = spawn_migrate(&p, &store, "localhost/big:1");
        std::thread::sleep(full * round / rounds);
        let _ = child.kill();
        let _ = child.wait();
        wait_no_mounts(&p, &format!("round {round}"));
        // mksquashfs is killed by the tool's death (PDEATHSIG) and exits on its own schedule.
        let deadline = Instant::now() + Duration::from_secs(20);
        let leftovers = loop {
            let out =
                Command::new("pgrep").args(["-f", &format!("mksquashfs .*{}", store.display())]).output().unwrap();
            if out.stdout.is_empty() || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(leftovers.stdout.is_empty(), "round {round}: mksquashfs still running: {}", text(&leftovers));
        let images = p.consumer(&store).args(["images"]).output().unwrap();
        assert!(images.status.success(), "round {round}: podman cannot read the store: {}", text(&images));
        let verify = p.tool(&["verify", store.to_str().unwrap()]);
        assert!(verify.status.success(), "round {round}: {}", text(&verify));
        if text(&verify).contains("left by an interrupted run") {
            interrupted += 1;
        }
        assert!(image_names(&store).len() <= 2, "round {round}: duplicate record: {:?}", image_names(&store));
    }
    assert!(interrupted >= 3, "only {interrupted} of {rounds} kills landed mid-migration (full run: {full:?})");
    let out = p.migrate(&store, "localhost/big:1");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Migration successfully completed") || text(&out).contains("Nothing to do."),
        "{}",
        text(&out)
    );
    let out = p.tool(&["verify", store.to_str().unwrap(), "--fix", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["warnings"], serde_json::json!([]), "no leftovers, no orphans: {report}");
    assert_eq!(fs::read_dir(store.join("squash")).unwrap().count(), 1);
    assert_eq!(fs::read_dir(store.join(".parallax-staging")).unwrap().count(), 0);
}

#[test]
fn four_parallel_migrations_into_one_store() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    for i in 0..4 {
        p.build(
            &format!("localhost/par{i}:1"),
            &format!("RUN echo {i} > /which && dd if=/dev/zero of=/fill bs=1M count={} 2>/dev/null", 4 + i * 4),
            &[],
        );
    }
    let store = p.dir.path().join("store");
    fs::create_dir(&store).unwrap();
    let children: Vec<Child> = (0..4).map(|i| spawn_migrate(&p, &store, &format!("localhost/par{i}:1"))).collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success() && text(&out).contains("Migration successfully completed"), "{}", text(&out));
    }
    let mut names = image_names(&store);
    names.sort();
    assert_eq!(names, (0..4).map(|i| format!("localhost/par{i}:1")).collect::<Vec<_>>());
    let out = p.tool(&["verify", store.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
    let images = p.consumer(&store).args(["images", "--format", "{{.Repository}}"]).output().unwrap();
    assert_eq!(text(&images).lines().filter(|l| l.starts_with("localhost/par")).count(), 4, "{}", text(&images));

    // The same image four times at once: one record, the others say "Nothing to do.".
    p.build("localhost/same:1", "RUN echo same > /same", &[]);
    let children: Vec<Child> = (0..4).map(|_| spawn_migrate(&p, &store, "localhost/same:1")).collect();
    let outputs: Vec<String> = children.into_iter().map(|c| text(&c.wait_with_output().unwrap())).collect();
    assert_eq!(outputs.iter().filter(|o| o.contains("Migration successfully completed")).count(), 1, "{outputs:#?}");
    assert_eq!(outputs.iter().filter(|o| o.contains("Nothing to do.")).count(), 3, "{outputs:#?}");

    // migrate ∥ rmi of another image: both effects present.
    p.build("localhost/late:1", "RUN echo late > /late", &[]);
    let migrate = spawn_migrate(&p, &store, "localhost/late:1");
    let rmi = p.tool(&["rmi", "localhost/par0:1", "--roStoragePath", store.to_str().unwrap()]);
    assert!(rmi.status.success(), "{}", text(&rmi));
    let out = migrate.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let names = image_names(&store);
    assert!(
        names.contains(&"localhost/late:1".to_string()) && !names.contains(&"localhost/par0:1".to_string()),
        "{names:?}"
    );
    let out = p.tool(&["verify", store.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
    assert_eq!(fs::read_dir(store.join("squash")).unwrap().count(), 5);
}

#[test]
fn sigterm_rolls_back_and_exits_143() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    p.build("localhost/slow:1", "RUN dd if=/dev/urandom of=/big bs=1M count=96 2>/dev/null", &[]);
    let store = p.dir.path().join("store");
    fs::create_dir(&store).unwrap();
    let mut child = spawn_migrate(&p, &store, "localhost/slow:1");
    // Wait until mksquashfs is writing, then ask politely.
    let start = Instant::now();
    while fs::read_dir(store.join(".parallax-staging"))
        .map_or(true, |mut d| d.next().is_none_or(|e| !e.unwrap().path().join("sidecar.squash").exists()))
    {
        assert!(start.elapsed() < Duration::from_secs(30), "migration never reached mksquashfs");
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let mut out = String::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(status.code(), Some(143), "{out}");
    assert!(out.contains("interrupted by SIGTERM; nothing was published"), "{out}");
    wait_no_mounts(&p, "after SIGTERM");
    assert!(image_names(&store).is_empty());
    assert_eq!(fs::read_dir(store.join("squash")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(store.join(".parallax-staging")).unwrap().count(), 0);
}
