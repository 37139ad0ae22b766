//! `migrate`: one image from the Podman store into the additional image store, as parallax
//! lays it out (store_format.md §2, §6 items 2–10), published atomically:
//!
//! 1. read the source image (shared locks on the source store);
//! 2. under the tool lock: create the store skeleton, recover interrupted runs, check whether
//!    the image is already there, create this run's staging directory and journal;
//! 3. without any store lock: build the dummy layer, blobs and side-car in staging (mksquashfs
//!    of a read-only parallaxfs union of the source layers);
//! 4. under the tool lock and the c/storage locks: check again, rename the side-car, its link,
//!    the layer dir, `l/LINK`, tar-split and big-data dir into place, then write `layers.json`,
//!    then `images.json`, the commit point.
//!
//! Any failure undoes what step 4 published and removes the staging directory.

use std::fs;
use std::io::IsTerminal;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::time::SystemTime;

use crate::cli::Config;
use crate::error::{Error, IoContext, Result};
use crate::flatten::{self, UnionMount};
use crate::image_meta::{build_blobs, image_record, layer_record, NewBlobs};
use crate::messages::Logger;
use crate::names::Registries;
use crate::ops::recover::{recover_abandoned, settle};
use crate::ops::tool_lock;
use crate::progress::Progress;
use crate::source::{self, SourceImage};
use crate::store::journal::{host_name, Journal, Staging};
use crate::store::json::{from_unix, rfc3339_nano};
use crate::store::layout::write_new_file;
use crate::store::layout::{marker_name, random_id, random_link};
use crate::store::metadata::Metadata;
use crate::store::publish::{rename, sync_dir};
use crate::store::tarsplit::{layer_tar, LayerTar, TarFile};
use crate::store::{read_shared, LockedMetadata, Store};

/// How a migration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published as this image ID.
    Migrated(String),
    /// The store already has it.
    AlreadyMigrated,
}

/// The dummy layer and the new image's blobs, computed once.
#[derive(Debug, Clone)]
struct Prepared {
    marker: String,
    content: String,
    mtime: u64,
    tar: LayerTar,
    blobs: NewBlobs,
}

/// Builds the dummy layer's tar and the blobs (fails early on an unusable source manifest).
fn prepare(image: &str, src: &SourceImage) -> Result<Prepared> {
    let now = build_time();
    let mtime = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let marker = marker_name(image);
    let content = format!("{}\n", src.view.id);
    let tar = layer_tar(&[TarFile { name: &marker, content: content.as_bytes(), mode: 0o644, mtime }]);
    let blobs = build_blobs(src, &tar, &crate::store::json::rfc3339_seconds(now))?;
    Ok(Prepared { marker, content, mtime, tar, blobs })
}

/// Everything one migration works with.
#[derive(Debug, Clone, Copy)]
struct Job<'a> {
    cfg: &'a Config,
    store: &'a Store,
    registries: &'a Registries,
    src: &'a SourceImage,
    prepared: &'a Prepared,
    plan: &'a Plan,
    staging: &'a Staging,
}

/// What this run publishes.
#[derive(Debug, Clone)]
struct Plan {
    image: String,
    layer: String,
    link: String,
    names: Vec<String>,
    mountpoint: PathBuf,
}

/// Runs a migration.
pub fn run(cfg: &Config, log: &mut Logger<'_>) -> Result<Outcome> {
    let store = Store::new(&cfg.store, cfg.umask);
    let registries = Registries::load();
    log.info(&crate::messages::migration_start(&cfg.image));
    // A read-only look first, before the source store is even read (as parallax does): an
    // image already there costs no lock and changes no byte.
    if store.images_json().exists() {
        let meta = read_shared(&store, cfg.lock_timeout)?;
        if is_migrated(&store, &registries, &meta, &cfg.image).unwrap_or(false) {
            return Ok(Outcome::AlreadyMigrated);
        }
    }
    let src = source::open(&cfg.podman_root, &registries, &cfg.image, cfg.lock_timeout)?;
    log.debug(&format!("Source image {} has {} layers", src.view.id, src.diff_dirs.len()));
    let names = stored_names(&registries, &cfg.image, &src)?;
    let prepared = prepare(&cfg.image, &src)?;

    let tool = tool_lock(&store, cfg.lock_timeout, log)?;
    store.init_skeleton()?;
    recover_abandoned(&store, None, cfg.lock_timeout, log)?;
    let meta = read_shared(&store, cfg.lock_timeout)?;
    meta.check(&store.layers_json(), &store.images_json())?;
    if is_migrated(&store, &registries, &meta, &cfg.image)? {
        return Ok(Outcome::AlreadyMigrated);
    }
    let staging = Staging::create(&store)?;
    let plan = new_plan(&store, &meta, names, &staging);
    let journal = Journal::Migrate {
        image: plan.image.clone(),
        layer: plan.layer.clone(),
        link: plan.link.clone(),
        host: host_name(),
        mountpoint: Some(plan.mountpoint.clone()),
    };
    staging.write_journal(&journal)?;
    drop(tool);

    let job = Job {
        cfg,
        store: &store,
        registries: &registries,
        src: &src,
        prepared: &prepared,
        plan: &plan,
        staging: &staging,
    };
    let result = build(&job, log).and_then(|()| publish(&job, log));
    match result {
        Ok(Outcome::Migrated(id)) => {
            staging.finish()?;
            Ok(Outcome::Migrated(id))
        }
        other => {
            let _tool = tool_lock(&store, cfg.lock_timeout, log)?;
            settle(&store, &journal, cfg.lock_timeout)?;
            staging.finish()?;
            other
        }
    }
}

/// The names parallax stores: the canonical name, plus the reference as typed when it
/// differs. When a short name does not resolve (no search registries), the source image's
/// own matching name is used instead of failing.
fn stored_names(registries: &Registries, typed: &str, src: &SourceImage) -> Result<Vec<String>> {
    let fq = match registries.canonical(typed) {
        Ok(fq) => fq,
        Err(resolve_error) => {
            let candidates = registries.candidates(typed);
            src.view
                .names
                .iter()
                .find(|n| candidates.contains(n))
                .cloned()
                .ok_or_else(|| Error::Other(format!("resolve canonical name: {resolve_error}")))?
        }
    };
    let mut names = vec![fq.clone()];
    if fq != typed {
        names.push(typed.to_string());
    }
    Ok(names)
}

/// parallax's `checkIfMigrated`: the image is found by name, its top layer's link is readable
/// and both `overlay/l/LINK.squash` and `squash/LINK.squash` exist. Found but incomplete is an
/// error (never a second record).
fn is_migrated(store: &Store, registries: &Registries, meta: &Metadata, reference: &str) -> Result<bool> {
    let Some(image) = registries.find(&meta.images, reference) else { return Ok(false) };
    let top = image.layer.clone().unwrap_or_default();
    let link_file = store.link_file(&top);
    let link = fs::read_to_string(&link_file).map_err(|e| {
        Error::Other(format!(
            "image {reference} is in the store as {} but {}: {}; remove it with --rmi and migrate again",
            image.id,
            link_file.display(),
            crate::error::io_text(&e)
        ))
    })?;
    let link = link.trim();
    for path in [store.sidecar_symlink(link), store.sidecar(link)] {
        if fs::metadata(&path).is_err() {
            return Err(Error::Other(format!(
                "image {reference} is in the store as {} but its side-car {} is missing; remove it with --rmi and migrate again",
                image.id,
                path.display()
            )));
        }
    }
    Ok(true)
}

/// Fresh IDs and link name, unused in the metadata and on disk.
fn new_plan(store: &Store, meta: &Metadata, names: Vec<String>, staging: &Staging) -> Plan {
    let image = loop {
        let id = random_id();
        if !meta.images.iter().any(|i| i.id == id) && !store.image_dir(&id).exists() {
            break id;
        }
    };
    let layer = loop {
        let id = random_id();
        if meta.layer(&id).is_none() && !store.layer_dir(&id).exists() {
            break id;
        }
    };
    let link = loop {
        let link = random_link();
        if fs::symlink_metadata(store.link_symlink(&link)).is_err()
            && fs::symlink_metadata(store.sidecar(&link)).is_err()
        {
            break link;
        }
    };
    let run = staging.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mountpoint = std::env::temp_dir().join(format!("parallax-store-{run}")).join("rootfs");
    Plan { image, layer, link, names, mountpoint }
}

/// `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
fn build_time() -> SystemTime {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map_or_else(SystemTime::now, from_unix)
}

/// Builds everything in the staging directory: layer dir, links, tar-split, big data, side-car.
fn build(job: &Job<'_>, log: &mut Logger<'_>) -> Result<()> {
    let Job { cfg, store, src, prepared, plan, staging, .. } = *job;
    let (file_mode, dir_mode) = (store.file_mode(), store.dir_mode());
    let Prepared { marker, content, mtime, tar, blobs } = prepared;

    let layer_dir = staging.path("layer");
    let diff = layer_dir.join("diff");
    for dir in [&layer_dir, &diff, &layer_dir.join("work"), &layer_dir.join("merged"), &layer_dir.join("empty")] {
        fs::create_dir(dir).ctx("mkdir", dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode)).ctx("chmod", dir)?;
    }
    write_new_file(&diff.join(marker), content.as_bytes(), 0o644)?;
    filetime_set(&diff.join(marker), *mtime)?;
    fs::set_permissions(&diff, fs::Permissions::from_mode(0o555 & dir_mode)).ctx("chmod", &diff)?;
    write_new_file(&layer_dir.join("link"), plan.link.as_bytes(), file_mode)?;
    symlink(format!("../{}/diff", plan.layer), staging.path("link")).ctx("symlink", staging.path("link"))?;
    symlink(format!("../../squash/{}.squash", plan.link), staging.path("squash-link"))
        .ctx("symlink", staging.path("squash-link"))?;
    write_new_file(&staging.path("tar-split.gz"), &tar.tar_split_gz, file_mode)?;
    let image_dir = staging.path("image");
    fs::create_dir(&image_dir).ctx("mkdir", &image_dir)?;
    fs::set_permissions(&image_dir, fs::Permissions::from_mode(dir_mode)).ctx("chmod", &image_dir)?;
    for (key, bytes) in &blobs.items {
        write_new_file(&image_dir.join(crate::store::layout::big_data_file_name(key)), bytes, file_mode)?;
    }
    crate::signals::check()?;

    let parallaxfs = flatten::find_parallaxfs()?;
    let mp_parent = plan.mountpoint.parent().unwrap_or(&plan.mountpoint).to_path_buf();
    fs::create_dir_all(&plan.mountpoint).ctx("mkdir", &plan.mountpoint)?;
    let sidecar = staging.path("sidecar.squash");
    let squashed = (|| {
        log.info(&format!("Mounting {} layers of image {}", src.diff_dirs.len(), src.view.id));
        let mount = UnionMount::mount(&parallaxfs, &src.diff_dirs, &plan.mountpoint)?;
        let mut progress = if std::io::stdout().is_terminal() {
            let (files, bytes) = flatten::measure(&plan.mountpoint);
            Progress::bytes(bytes, files, "mksquashfs")
        } else {
            Progress::disabled()
        };
        log.info(&format!("Creating squash side-car for layer {}", plan.link));
        flatten::mksquashfs(
            &cfg.mksquashfs,
            cfg.mksquashfs_opts.as_deref(),
            &plan.mountpoint,
            &sidecar,
            &mut progress,
        )?;
        progress.finish();
        mount.unmount()
    })();
    let _ = fs::remove_dir(&plan.mountpoint);
    let _ = fs::remove_dir(&mp_parent);
    squashed?;
    let file = fs::File::open(&sidecar).ctx("open", &sidecar)?;
    file.sync_all().ctx("fsync", &sidecar)?;
    fs::set_permissions(&sidecar, fs::Permissions::from_mode(file_mode)).ctx("chmod", &sidecar)?;
    parallaxfs_squash::Image::open_with(file, &parallaxfs_squash::OpenOptions::default())
        .map_err(|e| Error::Other(format!("mksquashfs wrote an unreadable image {}: {e}", sidecar.display())))?;
    sync_dir(&staging.dir)
}

/// Sets a file's mtime (and atime) to `secs`.
fn filetime_set(path: &std::path::Path, secs: u64) -> Result<()> {
    let t = nix::sys::time::TimeSpec::new(secs as i64, 0);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Error::io("utimensat", path, e.into()))
}

/// Moves the staged files into the store and commits the records.
fn publish(job: &Job<'_>, log: &mut Logger<'_>) -> Result<Outcome> {
    let Job { cfg, store, registries, src, prepared, plan, staging } = *job;
    let _tool = tool_lock(store, cfg.lock_timeout, log)?;
    let locked = LockedMetadata::acquire(store, cfg.lock_timeout, &|_| {})?;
    if is_migrated(store, registries, &locked.meta, &cfg.image)? {
        return Ok(Outcome::AlreadyMigrated);
    }
    for name in &plan.names {
        if let Some(other) = locked.meta.images.iter().find(|i| i.names.contains(name)) {
            return Err(Error::Other(format!("name {name} is already used by image {} in the store", other.id)));
        }
    }
    crate::signals::check()?;
    rename(&staging.path("sidecar.squash"), &store.sidecar(&plan.link))?;
    rename(&staging.path("squash-link"), &store.sidecar_symlink(&plan.link))?;
    rename(&staging.path("layer"), &store.layer_dir(&plan.layer))?;
    rename(&staging.path("link"), &store.link_symlink(&plan.link))?;
    rename(&staging.path("tar-split.gz"), &store.tar_split(&plan.layer))?;
    rename(&staging.path("image"), &store.image_dir(&plan.image))?;
    for dir in [store.squash_dir(), store.links_dir(), store.overlay(), store.layers_dir(), store.images_dir()] {
        sync_dir(&dir)?;
    }
    let created = rfc3339_nano(SystemTime::now());
    let mut layers = locked.meta.layers_raw.clone();
    layers.push(layer_record(&plan.layer, &created, &prepared.tar));
    locked.write_layers(&layers)?;
    let mut images = locked.meta.images_raw.clone();
    images.push(image_record(&plan.image, &plan.names, &plan.layer, src, &prepared.blobs));
    locked.write_images(&images)?;
    Ok(Outcome::Migrated(plan.image.clone()))
}
