//! Flattening: the side-car made from a multi-layer image, loop-mounted by the kernel, equals
//! the kernel's own overlay of the same layer directories (full walk: names, types, modes,
//! owners, sizes, content, link targets, device numbers, mtimes, hard-link groups).

mod common;

use std::fs;
use std::process::Command;

use common::{mount, require_environment, text, walk, Podman};

#[test]
fn side_car_equals_kernel_overlay_of_the_layers() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    p.build_multi_layer("localhost/multi:latest");
    let store = p.dir.path().join("store");
    fs::create_dir(&store).unwrap();
    let out = Command::new(common::store_tool())
        .envs(p.envs())
        .env("SOURCE_DATE_EPOCH", "2000000000")
        .args([
            "migrate",
            "localhost/multi",
            "--podmanRoot",
            p.root.to_str().unwrap(),
            "--roStoragePath",
            store.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let squash = fs::read_dir(store.join("squash")).unwrap().next().unwrap().unwrap().path();

    let lowers = p.layer_dirs("localhost/multi");
    assert!(lowers.len() >= 5, "{lowers:?}");
    let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let _ovl = mount(
        &["-t", "overlay", "overlay", "-o", &format!("ro,lowerdir={}", lowerdir.join(":"))],
        &p.dir.path().join("kernel-overlay"),
    );
    let _sq =
        mount(&["-t", "squashfs", "-o", "loop,ro", squash.to_str().unwrap()], &p.dir.path().join("kernel-squash"));
    let want = walk(&p.dir.path().join("kernel-overlay"));
    let got = walk(&p.dir.path().join("kernel-squash"));

    // The fixture has what the comparison is about.
    for path in [
        "/special/null",
        "/special/owned",
        "/special/owned-link",
        "/special/suid",
        "/data/hl",
        "/data/replaced/new",
        "/special/sub/link",
    ] {
        assert!(want.contains_key(path), "{path} missing from the overlay: fixture broken");
    }
    for gone in ["/etc/gone", "/data/replaced/old", "/special/fifo"] {
        assert!(!want.contains_key(gone), "{gone}: whiteout not applied by the kernel?");
    }
    let mut diffs = Vec::new();
    for (path, w) in &want {
        match got.get(path) {
            None => diffs.push(format!("{path}: missing from the side-car")),
            Some(g) => {
                // Directory nlink/size differ by filesystem; everything else must match.
                let mut g = g.clone();
                let mut w = w.clone();
                if w.mode & 0o170000 == 0o040000 {
                    g.size = 0;
                    w.size = 0;
                }
                if g != w {
                    diffs.push(format!("{path}:\n  overlay {w:?}\n  squash  {g:?}"));
                }
            }
        }
    }
    for path in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("{path}: only in the side-car"));
    }
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
    assert_eq!(got["/special/owned"].uid, 1234);
    assert_eq!(got["/special/suid"].mode & 0o7777, 0o4755);
    assert_eq!(got["/data/a"].links, vec!["/data/a".to_string(), "/data/hl".to_string()]);
}

#[test]
fn side_car_is_reproducible_with_source_date_epoch() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    p.build("localhost/r:1", "RUN echo x > /x && rm /etc/gone", &[]);
    let mut sums = Vec::new();
    for run in 0..2 {
        let store = p.dir.path().join(format!("store{run}"));
        fs::create_dir(&store).unwrap();
        let out = Command::new(common::store_tool())
            .envs(p.envs())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args([
                "migrate",
                "localhost/r:1",
                "--podmanRoot",
                p.root.to_str().unwrap(),
                "--roStoragePath",
                store.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let squash = fs::read_dir(store.join("squash")).unwrap().next().unwrap().unwrap().path();
        let layers: serde_json::Value =
            serde_json::from_slice(&fs::read(store.join("overlay-layers/layers.json")).unwrap()).unwrap();
        use sha2::Digest;
        sums.push((
            format!("{:x}", sha2::Sha256::digest(fs::read(&squash).unwrap())),
            layers[0]["diff-digest"].clone(),
        ));
    }
    assert_eq!(sums[0], sums[1], "side-car bytes and layer digest are reproducible");
}
