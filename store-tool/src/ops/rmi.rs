//! `rmi`: removes an image, and the layers only it used, from the store (store_format.md §6
//! item 11). Order: journal, `images.json` (the commit point), `layers.json`, then the files,
//! side-car last. Running containers of the image keep reading their open side-car; images
//! sharing nothing with it are never touched.

use std::fs;

use crate::cli::Config;
use crate::error::Result;
use crate::messages::Logger;
use crate::names::Registries;
use crate::ops::recover::{recover_abandoned, settle};
use crate::ops::tool_lock;
use crate::store::journal::{Journal, Staging};
use crate::store::metadata::remove_ids;
use crate::store::{read_shared, LockedMetadata, Store};

/// How a removal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Removed.
    Removed,
    /// No such image in the store.
    NotFound,
}

/// Runs a removal.
pub fn run(cfg: &Config, log: &mut Logger<'_>) -> Result<Outcome> {
    let store = Store::new(&cfg.store, cfg.umask);
    let registries = Registries::load();
    log.info(&crate::messages::removal_start(&cfg.image));
    let meta = read_shared(&store, cfg.lock_timeout)?;
    if registries.find(&meta.images, &cfg.image).is_none() {
        return Ok(Outcome::NotFound);
    }
    let _tool = tool_lock(&store, cfg.lock_timeout, log)?;
    recover_abandoned(&store, None, cfg.lock_timeout, log)?;
    let staging = Staging::create(&store)?;
    let locked = LockedMetadata::acquire(&store, cfg.lock_timeout, &|_| {})?;
    let Some(image) = registries.find(&locked.meta.images, &cfg.image).cloned() else {
        drop(locked);
        staging.finish()?;
        return Ok(Outcome::NotFound);
    };
    let layers: Vec<(String, Option<String>)> = locked
        .meta
        .layers_only_used_by(&image)
        .into_iter()
        .map(|id| {
            let link = fs::read_to_string(store.link_file(&id)).ok().map(|l| l.trim().to_string());
            (id, link)
        })
        .collect();
    let journal = Journal::Rmi { image: image.id.clone(), layers: layers.clone() };
    staging.write_journal(&journal)?;
    log.debug(&format!("Removing image {} and {} layers", image.id, layers.len()));
    let mut images = locked.meta.images_raw.clone();
    remove_ids(&mut images, &[image.id.as_str()]);
    locked.write_images(&images)?;
    drop(locked);
    // Past the commit point: settle finishes the removal (layers.json, then the files).
    settle(&store, &journal, cfg.lock_timeout)?;
    staging.finish()?;
    Ok(Outcome::Removed)
}
