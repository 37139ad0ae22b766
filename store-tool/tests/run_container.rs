//! Running a container from the migrated store with parallaxfs as Podman's mount_program.
//!
//! Depends on the writable upper layer of parallaxfs (the copy-on-write issue): Podman always
//! mounts a container with `upperdir`/`workdir`. If this test fails while the others pass, look
//! at parallaxfs's upper first.

mod common;

use std::fs;

use common::{require_environment, text, Podman};

#[test]
fn podman_runs_the_migrated_image_through_parallaxfs() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    p.build_multi_layer("localhost/multi:latest");
    let store = p.dir.path().join("store");
    fs::create_dir(&store).unwrap();
    let out = p.migrate(&store, "localhost/multi");
    assert!(out.status.success(), "{}", text(&out));
    let mount_program = format!("overlay.mount_program={}", common::parallaxfs().display());
    for (args, want) in [
        (vec!["echo", "ok"], "ok\n"),
        (vec!["cat", "/data/replaced/new"], "new\n"),
        (vec!["sh", "-c", "ls /etc/gone 2>/dev/null || echo whited-out"], "whited-out\n"),
    ] {
        let out = p
            .consumer(&store)
            .args(["--storage-opt", &mount_program, "run", "--rm", "localhost/multi"])
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{args:?}");
    }
    let out = p.tool(&["rmi", "localhost/multi", "--roStoragePath", store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}
