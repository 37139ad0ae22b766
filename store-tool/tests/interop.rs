//! Interop: a store laid out exactly as parallax writes it (store_format.md §2.2: schemaVersion
//! 0 manifest, random IDs, c/storage's 0700/0600 modes, rsync'ed lock files, an orphan layer),
//! built here from the spec, is read by `list`, `verify`, Podman and parallaxfs mounts, is
//! "already migrated" for `migrate`, and is emptied by `rmi`.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{require_environment, text, Podman};
use sha2::{Digest, Sha256};

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() { A[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

fn mode(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

/// Writes a one-image parallax store for `localhost/tbox:latest` plus an orphan layer.
fn parallax_store(dir: &Path, store: &Path) -> (String, String) {
    let (image, layer, link) = (format!("{:0>64}", "a1b2"), format!("{:0>64}", "c3d4"), "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    let (orphan, orphan_link) = (format!("{:0>64}", "e5f6"), "ZYXWVUTSRQPONMLKJIHGFEDCBA");
    for d in ["overlay/l", "overlay-layers", "overlay-images", "overlay-containers", "squash"] {
        fs::create_dir_all(store.join(d)).unwrap();
    }
    for f in [
        "storage.lock",
        "userns.lock",
        "overlay-containers/containers.lock",
        "overlay-layers/layers.lock",
        "overlay-images/images.lock",
    ] {
        fs::write(store.join(f), b"").unwrap();
        mode(&store.join(f), 0o600);
    }
    for (id, l, marker) in [(&layer, link, true), (&orphan, orphan_link, true)] {
        let ld = store.join("overlay").join(id);
        for d in ["diff", "work", "merged", "empty"] {
            fs::create_dir_all(ld.join(d)).unwrap();
            mode(&ld.join(d), 0o700);
        }
        if marker {
            fs::write(ld.join("diff/.migrationv3-tbox-latest"), "srcid\n").unwrap();
        }
        mode(&ld.join("diff"), 0o555);
        fs::write(ld.join("link"), l).unwrap();
        symlink(format!("../{id}/diff"), store.join("overlay/l").join(l)).unwrap();
    }
    // Side-car: mksquashfs with parallax's default flags of a small rootfs.
    let rootfs = dir.join("tbox-rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    symlink("busybox", rootfs.join("bin/sh")).unwrap();
    fs::write(rootfs.join("etc/os-release"), "NAME=tbox-from-parallax\n").unwrap();
    let side = store.join(format!("squash/{link}.squash"));
    let out = Command::new("mksquashfs")
        .arg(&rootfs)
        .arg(&side)
        .args([
            "-noappend",
            "-comp",
            "zstd",
            "-Xcompression-level",
            "1",
            "-noD",
            "-no-xattrs",
            "-e",
            "security.capability",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    symlink(format!("../../squash/{link}.squash"), store.join(format!("overlay/l/{link}.squash"))).unwrap();
    let d = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{d}"]}},"history":[{{"created_by":"MV3","comment":"Flattened layers from image srcid"}}]}}"#
    );
    let c = digest(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":0,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":2048}}]}}"#,
        config.len()
    );
    let m = digest(manifest.as_bytes());
    let idir = store.join("overlay-images").join(&image);
    fs::create_dir_all(&idir).unwrap();
    fs::write(idir.join("manifest"), &manifest).unwrap();
    fs::write(idir.join(format!("={}", b64(c.as_bytes()))), &config).unwrap();
    let layers = format!(
        r#"[{{"id":"{layer}","created":"2026-04-15T00:33:04.123456789Z","compressed-diff-digest":"{d}","compressed-size":2048,"diff-digest":"{d}","diff-size":2048,"uidset":[0],"gidset":[0]}},{{"id":"{orphan}","created":"2026-04-15T00:30:00Z","diff-digest":"{d}","diff-size":2048}}]"#
    );
    let images = format!(
        r#"[{{"id":"{image}","digest":"{m}","names":["localhost/tbox:latest"],"names-history":["localhost/tbox:latest"],"layer":"{layer}","big-data-names":["manifest","{c}"],"big-data-sizes":{{"manifest":{},"{c}":{}}},"big-data-digests":{{"manifest":"{m}","{c}":"{c}"}},"created":"2026-04-15T00:33:04Z"}}]"#,
        manifest.len(),
        config.len()
    );
    fs::write(store.join("overlay-layers/layers.json"), layers).unwrap();
    fs::write(store.join("overlay-images/images.json"), images).unwrap();
    for f in ["overlay-layers/layers.json", "overlay-images/images.json"] {
        mode(&store.join(f), 0o600);
    }
    for d in ["overlay", "overlay-layers", "overlay-images"] {
        mode(&store.join(d), 0o700);
    }
    (image, link.to_string())
}

#[test]
fn parallax_store_is_listed_verified_mounted_skipped_and_removed() {
    require_environment();
    let p = Podman::new();
    let store = p.dir.path().join("store");
    fs::create_dir(&store).unwrap();
    let (image, link) = parallax_store(p.dir.path(), &store);
    let s = store.to_str().unwrap();

    let list = p.tool(&["list", s, "--json"]);
    assert!(list.status.success(), "{}", text(&list));
    let entries: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(entries[0]["id"], image.as_str());
    assert_eq!(entries[0]["kind"], "parallax");
    assert_eq!(entries[0]["source_image"], "srcid");

    let verify = p.tool(&["verify", s]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains("ok   "), "{}", text(&verify));

    // A consumer Podman lists it.
    let images = p.consumer(&store).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]).output().unwrap();
    assert!(text(&images).contains("localhost/tbox:latest"), "{}", text(&images));

    // parallaxfs serves the side-car for both lowerdir spellings: `overlay/l/LINK` (Podman
    // 4.3) and `overlay/ID/diff` (newer containers/storage), read-only and under a writable
    // upper as for a container. The diff directory holds only the migration marker: the
    // file read back exists only in the side-car.
    let layer = format!("{:0>64}", "c3d4");
    for (i, lower) in [format!("{s}/overlay/l/{link}"), format!("{s}/overlay/{layer}/diff")].iter().enumerate() {
        for writable in [false, true] {
            let base = p.dir.path().join(format!("mnt-{i}-{writable}"));
            let mp = base.join("m");
            for d in ["m", "u", "w"] {
                fs::create_dir_all(base.join(d)).unwrap();
            }
            let mut opts = format!("lowerdir={lower}");
            if writable {
                opts += &format!(",upperdir={},workdir={}", base.join("u").display(), base.join("w").display());
            }
            let out = Command::new(common::parallaxfs()).arg("-o").arg(&opts).arg(&mp).output().unwrap();
            assert!(out.status.success(), "{opts}: {}", text(&out));
            let _m = common::Mounted(mp.clone());
            let release = fs::read_to_string(mp.join("etc/os-release")).unwrap_or_else(|e| panic!("{opts}: {e}"));
            assert_eq!(release, "NAME=tbox-from-parallax\n", "{opts}");
            assert!(
                !mp.join(".migrationv3-tbox-latest").exists(),
                "{opts}: the diff dir was mounted, not the side-car"
            );
        }
    }

    // migrate of the same name: already migrated, nothing changes.
    let before = common::snapshot(&store);
    p.import_base();
    p.ok(&["tag", "localhost/base:latest", "localhost/tbox:latest"]);
    let out = p.migrate(&store, "localhost/tbox:latest");
    assert!(out.status.success() && text(&out).contains("Image already migrated. Nothing to do."), "{}", text(&out));
    assert_eq!(common::snapshot(&store), before);

    // rmi removes the image and its layer; the orphan layer stays (not ours to judge).
    let out = p.tool(&[
        "--rmi",
        "--image",
        "localhost/tbox:latest",
        "--podmanRoot",
        p.root.to_str().unwrap(),
        "--roStoragePath",
        s,
    ]);
    assert!(
        out.status.success() && text(&out).contains("Removal successfully completed for image: localhost/tbox:latest"),
        "{}",
        text(&out)
    );
    assert!(!store.join(format!("squash/{link}.squash")).exists());
    assert!(!store.join(format!("overlay/l/{link}.squash")).exists());
    assert!(!store.join("overlay-images").join(&image).exists());
    let layers: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("overlay-layers/layers.json")).unwrap()).unwrap();
    assert_eq!(layers.as_array().unwrap().len(), 1, "only the orphan is left");
    let verify = p.tool(&["verify", s]);
    assert!(verify.status.success(), "{}", text(&verify));

    // And a migration into the parallax store works: both tools' layouts side by side.
    let out = p.migrate(&store, "localhost/tbox:latest");
    assert!(out.status.success() && text(&out).contains("Migration successfully completed"), "{}", text(&out));
    let verify = p.tool(&["verify", s]);
    assert!(verify.status.success(), "{}", text(&verify));
}
