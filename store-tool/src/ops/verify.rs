//! `verify`: every image's metadata, layers, big data and SquashFS side-car readable and
//! consistent. Problems name the image and the file; the exit status is non-zero when there
//! is one. Leftovers of interrupted runs and orphan files are warnings (harmless to Podman);
//! `--fix` removes the leftovers.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::cli::Config;
use crate::error::{IoContext, Result};
use crate::image_meta::sha256_digest;
use crate::messages::Logger;
use crate::store::journal;
use crate::store::layout::{big_data_file_name, is_valid_link};
use crate::store::metadata::{ImageView, Metadata};
use crate::store::{read_shared, Store};

/// What was checked for one image.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageReport {
    /// Image ID.
    pub id: String,
    /// Names.
    pub names: Vec<String>,
    /// `parallax` or `layers`.
    pub kind: &'static str,
    /// Everything wrong with it.
    pub problems: Vec<String>,
    /// Files, directories and bytes read from its side-car.
    pub squash_files: u64,
    /// Directories in the side-car.
    pub squash_dirs: u64,
    /// File bytes read from the side-car.
    pub squash_bytes: u64,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The store.
    pub store: String,
    /// No problem anywhere.
    pub ok: bool,
    /// Store-wide problems (metadata files).
    pub problems: Vec<String>,
    /// Harmless findings (leftovers, orphans).
    pub warnings: Vec<String>,
    /// Per image.
    pub images: Vec<ImageReport>,
}

/// Checks the store.
pub fn check_store(store: &Store, timeout: Option<std::time::Duration>) -> Report {
    let mut report = Report { store: store.root.display().to_string(), ..Report::default() };
    match read_shared(store, timeout) {
        Ok(meta) => {
            if let Err(e) = meta.check(&store.layers_json(), &store.images_json()) {
                report.problems.push(e.to_string());
            }
            for image in &meta.images {
                report.images.push(check_image(store, &meta, image));
            }
            orphans(store, &meta, &mut report.warnings);
        }
        Err(e) => report.problems.push(e.to_string()),
    }
    match journal::abandoned(store, None) {
        Ok(left) => {
            for a in left {
                report.warnings.push(format!(
                    "{}: left by an interrupted run (removed by the next run or verify --fix)",
                    a.dir.display()
                ));
            }
        }
        Err(e) => report.warnings.push(e.to_string()),
    }
    report.ok = report.problems.is_empty() && report.images.iter().all(|i| i.problems.is_empty());
    report
}

fn check_image(store: &Store, meta: &Metadata, image: &ImageView) -> ImageReport {
    let mut r =
        ImageReport { id: image.id.clone(), names: image.names.clone(), kind: "layers", ..ImageReport::default() };
    let p = &mut r.problems;
    // Layer chain, bottom last.
    let mut chain = Vec::new();
    let mut seen = HashSet::new();
    let mut next = image.layer.clone().filter(|l| !l.is_empty());
    if next.is_none() {
        p.push("has no top layer".into());
    }
    while let Some(id) = next {
        if !seen.insert(id.clone()) {
            p.push(format!("layer {id} is its own ancestor"));
            break;
        }
        let Some(layer) = meta.layer(&id) else {
            p.push(format!("layer {id} is not in {}", store.layers_json().display()));
            break;
        };
        if layer.diff_digest.as_deref().is_none_or(str::is_empty) {
            p.push(format!("layer {id} has no diff-digest in {}", store.layers_json().display()));
        }
        check_layer_files(store, &id, p);
        chain.push(layer.clone());
        next = layer.parent.clone().filter(|x| !x.is_empty());
    }
    // Big data.
    for key in &image.big_data_names {
        let path = store.big_data(&image.id, key);
        match fs::read(&path) {
            Ok(bytes) => {
                if let Some(want) = image.big_data_digests.get(key) {
                    let hashed = key == "manifest" || key.starts_with("sha256:") || key.starts_with("manifest-");
                    if hashed && sha256_digest(&bytes) != *want {
                        p.push(format!("{}: digest does not match {want}", path.display()));
                    }
                }
            }
            Err(e) => p.push(format!("{}: {}", path.display(), crate::error::io_text(&e))),
        }
    }
    check_manifest_and_config(store, image, &chain, p);
    // Side-car.
    let top = image.layer.as_deref().unwrap_or_default();
    let link = fs::read_to_string(store.link_file(top)).map(|l| l.trim().to_string()).unwrap_or_default();
    if !link.is_empty() {
        let (link_path, file) = (store.sidecar_symlink(&link), store.sidecar(&link));
        let has_marker = crate::ops::list::marker_content(store, top).is_some();
        let present = fs::symlink_metadata(&link_path).is_ok() || fs::symlink_metadata(&file).is_ok();
        if present || has_marker {
            r.kind = "parallax";
            match fs::read_link(&link_path) {
                Ok(target) if target == Path::new(&format!("../../squash/{link}.squash")) => {}
                Ok(target) => p.push(format!(
                    "{}: points to {} instead of ../../squash/{link}.squash",
                    link_path.display(),
                    target.display()
                )),
                Err(e) => p.push(format!("{}: {}", link_path.display(), crate::error::io_text(&e))),
            }
            match parallaxfs_squash::Image::open(&file) {
                Ok(img) => match parallaxfs_squash::check(&img) {
                    Ok(rep) => {
                        r.squash_files = rep.files;
                        r.squash_dirs = rep.dirs;
                        r.squash_bytes = rep.bytes;
                    }
                    Err(fault) => p.push(format!("{}: {fault}", file.display())),
                },
                Err(e) => p.push(format!("{}: {e}", file.display())),
            }
        }
    }
    r
}

fn check_layer_files(store: &Store, id: &str, p: &mut Vec<String>) {
    let dir = store.layer_dir(id);
    if !dir.join("diff").is_dir() {
        p.push(format!("{}: missing", dir.join("diff").display()));
    }
    match fs::read_to_string(store.link_file(id)) {
        Ok(link) => {
            let link = link.trim();
            if !is_valid_link(link) {
                p.push(format!("{}: not a link name: {link:?}", store.link_file(id).display()));
                return;
            }
            match fs::read_link(store.link_symlink(link)) {
                Ok(t) if t == Path::new(&format!("../{id}/diff")) => {}
                Ok(t) => p.push(format!(
                    "{}: points to {} instead of ../{id}/diff",
                    store.link_symlink(link).display(),
                    t.display()
                )),
                Err(e) => p.push(format!("{}: {}", store.link_symlink(link).display(), crate::error::io_text(&e))),
            }
        }
        Err(e) => p.push(format!("{}: {}", store.link_file(id).display(), crate::error::io_text(&e))),
    }
}

fn check_manifest_and_config(
    store: &Store,
    image: &ImageView,
    chain: &[crate::store::metadata::LayerView],
    p: &mut Vec<String>,
) {
    let manifest_path = store.big_data(&image.id, "manifest");
    let Ok(bytes) = fs::read(&manifest_path) else {
        if !image.big_data_names.iter().any(|k| k == "manifest") {
            p.push(format!("{}: missing (no \"manifest\" big-data item)", manifest_path.display()));
        }
        return;
    };
    let manifest: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return p.push(format!("{}: not valid JSON: {e}", manifest_path.display())),
    };
    let Some(config_key) = manifest.get("config").and_then(|c| c.get("digest")).and_then(Value::as_str) else {
        return p.push(format!("{}: names no config", manifest_path.display()));
    };
    let config_path = store.image_dir(&image.id).join(big_data_file_name(config_key));
    let config: Value = match fs::read(&config_path) {
        Ok(b) => {
            if sha256_digest(&b) != config_key {
                p.push(format!("{}: content does not match {config_key}", config_path.display()));
            }
            match serde_json::from_slice(&b) {
                Ok(v) => v,
                Err(e) => return p.push(format!("{}: not valid JSON: {e}", config_path.display())),
            }
        }
        Err(e) => {
            return p.push(format!("{}: config {config_key}: {}", config_path.display(), crate::error::io_text(&e)))
        }
    };
    let diff_ids: Vec<&str> = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let layer_digests: Vec<&str> = chain.iter().rev().filter_map(|l| l.diff_digest.as_deref()).collect();
    if !chain.is_empty() && diff_ids != layer_digests {
        p.push(format!(
            "{}: rootfs.diff_ids {diff_ids:?} do not match the layers' diff-digests {layer_digests:?}",
            config_path.display()
        ));
    }
}

/// Layer directories not in `layers.json`, and side-cars no layer links to.
fn orphans(store: &Store, meta: &Metadata, warnings: &mut Vec<String>) {
    let known: HashSet<&str> = meta.layers.iter().map(|l| l.id.as_str()).collect();
    if let Ok(entries) = fs::read_dir(store.overlay()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "l" && !name.starts_with('.') && !known.contains(name.as_str()) {
                warnings.push(format!("{}: layer directory not in layers.json", e.path().display()));
            }
        }
    }
    let links: HashSet<String> = meta
        .layers
        .iter()
        .filter_map(|l| fs::read_to_string(store.link_file(&l.id)).ok())
        .map(|l| l.trim().to_string())
        .collect();
    if let Ok(entries) = fs::read_dir(store.squash_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(link) = name.strip_suffix(".squash") {
                if !links.contains(link) {
                    warnings.push(format!("{}: side-car of no layer", e.path().display()));
                }
            }
        }
    }
}

/// Runs `verify` (with `--fix`: recovers leftovers first) and prints the report; returns
/// whether the store is sound.
pub fn run(cfg: &Config, out: &mut dyn Write, log: &mut Logger<'_>) -> Result<bool> {
    let store = Store::new(&cfg.store, cfg.umask);
    if cfg.fix {
        let _tool = crate::ops::tool_lock(&store, cfg.lock_timeout, log)?;
        crate::ops::recover::recover_abandoned(&store, None, cfg.lock_timeout, log)?;
    }
    let report = check_store(&store, cfg.lock_timeout);
    let text = if cfg.json {
        let mut s = serde_json::to_string_pretty(&report).unwrap_or_default();
        s.push('\n');
        s
    } else {
        let mut s = String::new();
        for problem in &report.problems {
            s.push_str(&format!("FAIL store: {problem}\n"));
        }
        for img in &report.images {
            let name = img.names.first().map_or("<none>", String::as_str);
            if img.problems.is_empty() {
                s.push_str(&format!(
                    "ok   {} {name} ({}; {} files, {} dirs, {} bytes read)\n",
                    &img.id[..img.id.len().min(12)],
                    img.kind,
                    img.squash_files,
                    img.squash_dirs,
                    img.squash_bytes
                ));
            }
            for problem in &img.problems {
                s.push_str(&format!("FAIL {} {name}: {problem}\n", &img.id[..img.id.len().min(12)]));
            }
        }
        for w in &report.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        let bad = report.problems.len() + report.images.iter().map(|i| i.problems.len()).sum::<usize>();
        s.push_str(&format!(
            "verify: {} images, {bad} problems, {} warnings\n",
            report.images.len(),
            report.warnings.len()
        ));
        s
    };
    out.write_all(text.as_bytes()).ctx("write", "stdout")?;
    Ok(report.ok)
}
