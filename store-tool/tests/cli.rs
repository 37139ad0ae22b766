//! The command line as parallax's bats suite checks it (`parallax-cli-checks.bats` and the
//! validation rows of store_format.md §1): messages, banner, exit codes. No Podman needed.

mod common;

use std::fs;
use std::process::Command;

use common::{store_tool, text};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(store_tool()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_print_the_message_then_the_banner_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    fs::write(&plain, b"").unwrap();
    let plain = plain.to_str().unwrap();
    let not_exec = format!("mksquashfsPath. mksquashfs binary: {plain} is not executable");
    let cases: &[(&[&str], &str)] = &[
        (&[], "Must specify either -migrate or -rmi"),
        (&["-migrate", "-rmi", "-image", "x"], "Must specify either -migrate or -rmi"),
        (&["--migrate"], "Must specify -image image (e.g. -image ubuntu:latest)"),
        (&["-unknownflag"], "flag provided but not defined: -unknownflag"),
        (&["--image"], "flag needs an argument: -image"),
        (&["-migrate=maybe"], "invalid boolean value \"maybe\" for -migrate: parse error"),
        (
            &["-migrate", "-image", "x", "-podmanRoot", "/nonexistent"],
            "podmanRoot. Podman root directory: stat /nonexistent: no such file or directory",
        ),
        (
            &["-rmi", "-image", "x", "-podmanRoot", "/", "-roStoragePath", "/nonexistent"],
            "roStoragePath. Read-only storage path: stat /nonexistent",
        ),
        (
            &["-migrate", "-image", "x", "-podmanRoot", "/", "-roStoragePath", "/", "-mksquashfsPath", "/etc"],
            "mksquashfsPath. mksquashfs binary: /etc is a directory, not an executable",
        ),
        (&["-migrate", "-image", "x", "-podmanRoot", "/", "-roStoragePath", "/", "-mksquashfsPath", plain], &not_exec),
        (
            &["-migrate", "-image", "x", "-podmanRoot", "/", "-roStoragePath", "/", "-log-level", "loud"],
            "Invalid log level \"loud\"",
        ),
        (
            &[
                "-migrate",
                "-image",
                "x",
                "-podmanRoot",
                "/",
                "-roStoragePath",
                "/",
                "-mksquashfs-opts",
                "-e `touch /tmp/pwned`",
            ],
            "invalid mksquashfs-opts: ",
        ),
    ];
    for (args, want) in cases {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with(want), "{args:?}: first line {first:?}, want {want:?}");
        assert!(
            stderr.contains("OCI image migration tool") && stderr.contains("Usage"),
            "{args:?}: no banner: {stderr}"
        );
    }
    assert!(!std::path::Path::new("/tmp/pwned").exists(), "backticks must never run");
}

#[test]
fn help_and_version_exit_0() {
    for help in ["-h", "-help", "--help", "help"] {
        let (code, _, stderr) = run(&[help]);
        assert_eq!(code, 0, "{help}");
        for want in [
            "OCI image migration tool",
            "Usage",
            "--migrate",
            "--image",
            "--podmanRoot\tPath to Podman root storage directory (default \"/var/lib/containers/storage\")",
        ] {
            assert!(stderr.contains(want), "{help}: {want} missing in {stderr}");
        }
        assert!(stderr.starts_with('\n'), "the banner starts with an empty line");
    }
    for version in ["-version", "--version", "--version=true", "version"] {
        let (code, stdout, _) = run(&[version]);
        assert_eq!(code, 0, "{version}");
        assert!(stdout.starts_with("Parallax version: "), "{version}: {stdout}");
    }
}

#[test]
fn store_validation_fails_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    fs::create_dir(&store).unwrap();
    fs::write(store.join("dummy-file"), b"").unwrap();
    let root = dir.path().to_str().unwrap();
    for (op, phase) in [("--migrate", "migration"), ("--rmi", "rmi")] {
        let out = Command::new(store_tool())
            .args([op, "--image", "alpine", "--podmanRoot", root, "--roStoragePath", store.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let all = text(&out);
        assert!(all.contains(&format!("Storage validation failed before {phase}: storage validation failed, non-empty and does not look like a podman-overlay store")), "{all}");
        assert!(all.contains("level=fatal"), "{all}");
        let names: Vec<_> = fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["dummy-file"], "nothing written");
    }
}

#[test]
fn rmi_of_an_unknown_image_exits_0_like_parallax() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap();
    for args in [
        vec!["--rmi", "--image", "nothere:1", "--podmanRoot", "/", "--roStoragePath", store],
        vec!["rmi", "nothere:1", "--roStoragePath", store],
    ] {
        let out = Command::new(store_tool()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains("Could not locate image nothere:1: Image not found: \\\"nothere:1\\\""),
            "{}",
            text(&out)
        );
    }
    // An empty directory stays empty: rmi writes nothing when there is nothing to remove.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn migrate_of_an_unknown_image_fails_with_image_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let podman_root = dir.path().join("podman");
    fs::create_dir_all(podman_root.join("overlay")).unwrap();
    let store = dir.path().join("store");
    fs::create_dir(&store).unwrap();
    let out = Command::new(store_tool())
        .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
        .args([
            "migrate",
            "ghost:1",
            "--podmanRoot",
            podman_root.to_str().unwrap(),
            "--roStoragePath",
            store.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Migration failed for image 'ghost:1': Image not found: \\\"ghost:1\\\""),
        "{}",
        text(&out)
    );
    assert_eq!(fs::read_dir(&store).unwrap().count(), 0, "nothing written");
}

#[test]
fn list_and_verify_of_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap();
    let (code, stdout, _) = run(&["list", store, "--json"]);
    assert_eq!((code, stdout.trim()), (0, "[]"));
    let (code, stdout, _) = run(&["verify", "--roStoragePath", store, "--json"]);
    assert_eq!(code, 0, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    let (code, stdout, _) = run(&["verify", store]);
    assert_eq!(code, 0);
    assert!(stdout.contains("verify: 0 images, 0 problems"), "{stdout}");
}

#[test]
fn corrupt_metadata_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    fs::create_dir_all(store.join("overlay-images")).unwrap();
    fs::write(store.join("overlay-images/images.json"), b"[{\"id\":").unwrap();
    let before = common::snapshot(store);
    let (code, stdout, _) = run(&["verify", store.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stdout.contains("images.json: unparsable JSON"), "{stdout}");
    let out =
        Command::new(store_tool()).args(["rmi", "x", "--roStoragePath", store.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("RMI operation failed for image 'x': ")
            && text(&out).contains("images.json: unparsable JSON"),
        "{}",
        text(&out)
    );
    assert_eq!(common::snapshot(store), before);
}
