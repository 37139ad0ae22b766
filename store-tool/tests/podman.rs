//! End to end with real Podman 4.3: images built locally (import + build, no registry) are
//! migrated, listed, verified, seen by a consumer Podman through `additionalimagestore`,
//! migrated again ("Nothing to do."), and removed.

mod common;

use std::fs;
use std::path::Path;

use common::{require_environment, text, Podman};

fn store_dir(p: &Podman) -> std::path::PathBuf {
    let s = p.dir.path().join("store");
    fs::create_dir_all(&s).unwrap();
    s
}

fn sidecars(store: &Path) -> Vec<String> {
    match fs::read_dir(store.join("overlay/l")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".squash"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn migrate_list_verify_remigrate_rmi() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    p.build_multi_layer("localhost/multi:latest");
    let store = store_dir(&p);

    let out = p.migrate(&store, "localhost/multi");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Migration successfully completed for image: "), "{}", text(&out));
    let id = text(&out).split("completed for image: ").nth(1).unwrap()[..64].to_string();

    // Layout (store_format.md §2.2): one parentless layer holding only the marker.
    let layers: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("overlay-layers/layers.json")).unwrap()).unwrap();
    let images: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("overlay-images/images.json")).unwrap()).unwrap();
    assert_eq!(layers.as_array().unwrap().len(), 1);
    assert_eq!(images[0]["id"], id.as_str());
    assert_eq!(images[0]["names"], serde_json::json!(["localhost/multi:latest", "localhost/multi"]));
    let layer = layers[0]["id"].as_str().unwrap();
    assert!(layers[0].get("parent").is_none());
    assert_eq!(images[0]["layer"], layer);
    let diff = store.join("overlay").join(layer).join("diff");
    let marker: Vec<_> =
        fs::read_dir(&diff).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(marker, vec![".migrationv3-localhost-multi"]);
    let src_id = p.ok(&["image", "inspect", "--format", "{{.Id}}", "localhost/multi"]).trim().to_string();
    assert_eq!(fs::read_to_string(diff.join(&marker[0])).unwrap(), format!("{src_id}\n"));
    let link = fs::read_to_string(store.join("overlay").join(layer).join("link")).unwrap();
    assert_eq!(link.len(), 26);
    assert_eq!(fs::read_link(store.join("overlay/l").join(&link)).unwrap(), Path::new(&format!("../{layer}/diff")));
    assert_eq!(
        fs::read_link(store.join(format!("overlay/l/{link}.squash"))).unwrap(),
        Path::new(&format!("../../squash/{link}.squash"))
    );
    assert!(store.join(format!("squash/{link}.squash")).is_file());
    assert!(store.join(format!("overlay-layers/{layer}.tar-split.gz")).is_file());
    let sq = std::process::Command::new("unsquashfs")
        .arg("-s")
        .arg(store.join(format!("squash/{link}.squash")))
        .output()
        .unwrap();
    let sq = text(&sq);
    assert!(sq.contains("Compression zstd") && sq.contains("compression-level 1"), "{sq}");
    assert!(!store.join(".parallax-staging").read_dir().unwrap().any(|_| true), "staging cleaned");
    assert!(common::mounts_under(&p.tmp()).is_empty(), "no mount left");
    let residue: Vec<_> = fs::read_dir(p.tmp())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("parallax-store-"))
        .collect();
    assert!(residue.is_empty(), "temp dirs left in $TMPDIR: {residue:?}");

    // A consumer Podman sees it, with the source Env and Cmd.
    let images_out =
        p.consumer(&store).args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ReadOnly}}"]).output().unwrap();
    assert!(images_out.status.success(), "{}", text(&images_out));
    assert!(text(&images_out).contains("localhost/multi:latest true"), "{}", text(&images_out));
    let inspect = p
        .consumer(&store)
        .args(["image", "inspect", "--format", "{{.Config.Env}} {{.Config.Cmd}}", "localhost/multi"])
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{}", text(&inspect));
    assert!(text(&inspect).contains("FOO=bar") && text(&inspect).contains("echo hi"), "{}", text(&inspect));

    // list / verify, text and JSON.
    let list = p.tool(&["list", store.to_str().unwrap(), "--json"]);
    assert!(list.status.success());
    let entries: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(entries[0]["id"], id.as_str());
    assert_eq!(entries[0]["kind"], "parallax");
    assert_eq!(entries[0]["source_image"], src_id.as_str());
    let verify = p.tool(&["verify", store.to_str().unwrap(), "--json"]);
    assert!(verify.status.success(), "{}", text(&verify));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["images"][0]["squash_files"].as_u64().unwrap() > 10, "{report}");

    // Second migrate: nothing to do, and not a byte, mtime or token changes.
    let before = common::snapshot(&store);
    for reference in ["localhost/multi", "localhost/multi:latest"] {
        let again = p.migrate(&store, reference);
        assert!(again.status.success(), "{}", text(&again));
        assert!(text(&again).contains("Image already migrated. Nothing to do."), "{}", text(&again));
    }
    assert_eq!(common::snapshot(&store), before);

    // rmi: everything of the image goes, the store stays removable.
    let rmi = p.tool(&[
        "--rmi",
        "--image",
        "localhost/multi",
        "--podmanRoot",
        "/nonexistent-is-fine-for-rmi",
        "--roStoragePath",
        store.to_str().unwrap(),
    ]);
    assert_eq!(rmi.status.code(), Some(2), "parallax form checks podmanRoot for --rmi too: {}", text(&rmi));
    let rmi = p.tool(&[
        "--rmi",
        "--image",
        "localhost/multi",
        "--podmanRoot",
        p.root.to_str().unwrap(),
        "--roStoragePath",
        store.to_str().unwrap(),
    ]);
    assert!(rmi.status.success(), "{}", text(&rmi));
    assert!(text(&rmi).contains("Removal successfully completed for image: localhost/multi"), "{}", text(&rmi));
    assert!(sidecars(&store).is_empty());
    assert!(fs::read_dir(store.join("squash")).unwrap().next().is_none());
    assert!(!store.join("overlay").join(layer).exists());
    assert!(!store.join("overlay-images").join(&id).exists());
    let images_out = p.consumer(&store).args(["image", "ls", "-q", "localhost/multi"]).output().unwrap();
    assert!(images_out.status.success() && images_out.stdout.is_empty(), "{}", text(&images_out));
    let verify = p.tool(&["verify", store.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify));
}

#[test]
fn references_subcommands_and_mksquashfs_opts() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    let store = store_dir(&p);
    let (root, s) = (p.root.to_str().unwrap(), store.to_str().unwrap());

    // Short name: resolved through registries.conf for the stored name, found in the source
    // store as localhost/base:latest.
    let out = p.tool(&[
        "migrate",
        "base",
        "--podmanRoot",
        root,
        "--roStoragePath",
        s,
        "--mksquashfs-opts",
        "-noappend -comp zstd -Xcompression-level 3 -noD -no-xattrs",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let images: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("overlay-images/images.json")).unwrap()).unwrap();
    assert_eq!(images[0]["names"], serde_json::json!(["docker.io/library/base:latest", "base"]));
    let squash = fs::read_dir(store.join("squash")).unwrap().next().unwrap().unwrap().path();
    let sq = text(&std::process::Command::new("unsquashfs").arg("-s").arg(&squash).output().unwrap());
    assert!(sq.contains("Compression zstd") && sq.contains("compression-level 3"), "{sq}");
    for reference in ["base", "base:latest", "docker.io/library/base"] {
        let again = p.tool(&["--migrate", "-image", reference, "-podmanRoot", root, "-roStoragePath", s]);
        assert!(text(&again).contains("Nothing to do."), "{reference}: {}", text(&again));
    }
    // Same image under another tag: a second record (different names).
    p.ok(&["tag", "localhost/base:latest", "localhost/other:1"]);
    let out = p.tool(&["migrate", "localhost/other:1", "--podmanRoot", root, "--roStoragePath", s]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.tool(&["verify", s]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("verify: 2 images, 0 problems"), "{}", text(&out));
    // rmi by the other spelling, subcommand form without podmanRoot.
    let out = p.tool(&["rmi", "base", "--roStoragePath", s]);
    assert!(out.status.success() && text(&out).contains("Removal successfully completed"), "{}", text(&out));
    let list = p.tool(&["list", s, "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!(entries[0]["names"], serde_json::json!(["localhost/other:1"]));
}

#[test]
fn mksquashfs_failure_leaves_the_store_unchanged() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    let store = store_dir(&p);
    let out = p.migrate(&store, "localhost/base");
    assert!(out.status.success(), "{}", text(&out));
    p.build("localhost/two:1", "RUN echo two > /two", &[]);
    let before = common::snapshot(&store);
    let out = p.tool(&[
        "--migrate",
        "--image",
        "localhost/two:1",
        "--podmanRoot",
        p.root.to_str().unwrap(),
        "--roStoragePath",
        store.to_str().unwrap(),
        "--mksquashfs-opts",
        "-no-such-option",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Migration failed for image 'localhost/two:1': mksquashfs: exit status"),
        "{}",
        text(&out)
    );
    let mut after = common::snapshot(&store);
    // The only difference allowed: the (empty) staging directory's mtime.
    after.remove("/.parallax-staging");
    let mut before = before;
    before.remove("/.parallax-staging");
    assert_eq!(after, before);
    assert!(common::mounts_under(&p.tmp()).is_empty(), "no mount left");
}

#[test]
fn read_only_store_is_refused_with_one_line() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    let store = store_dir(&p);
    let ro = p.dir.path().join("ro");
    let _bind = common::mount(&["--bind", store.to_str().unwrap()], &ro);
    let st = std::process::Command::new("mount").args(["-o", "remount,bind,ro"]).arg(&ro).status().unwrap();
    assert!(st.success());
    let out = p.migrate(&ro, "localhost/base");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("read-only file system"), "{}", text(&out));
    assert!(fs::read_dir(&store).unwrap().next().is_none(), "nothing written");
}

#[test]
fn disk_full_is_reported_and_rolled_back() {
    require_environment();
    let p = Podman::new();
    p.import_base();
    p.build("localhost/fat:1", "RUN dd if=/dev/urandom of=/fat bs=1M count=6 2>/dev/null", &[]);
    let store = p.dir.path().join("small");
    let _tmpfs = common::mount(&["-t", "tmpfs", "-o", "size=4m", "tmpfs"], &store);
    let out = p.migrate(&store, "localhost/fat:1");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("Migration failed for image 'localhost/fat:1': "), "{all}");
    assert!(all.contains("No space left on device") || all.contains("no space left on device"), "{all}");
    assert!(fs::read_dir(store.join("squash")).unwrap().next().is_none(), "no side-car published");
    assert!(fs::read_dir(store.join(".parallax-staging")).unwrap().next().is_none(), "staging removed");
    let verify = p.tool(&["verify", store.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(common::mounts_under(&p.tmp()).is_empty(), "no mount left");
}
