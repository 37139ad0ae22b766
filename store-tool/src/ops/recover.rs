//! Finishing or undoing interrupted runs (store_format.md §6 item 10). Runs with the tool lock
//! held. A migration that did not reach `images.json` is undone (its layer record and files
//! removed); a removal that did reach `images.json` is finished. Either way the store ends as
//! if the interrupted run had completed or never started.

use std::path::Path;
use std::time::Duration;

use crate::error::Result;
use crate::flatten;
use crate::messages::Logger;
use crate::store::journal::{self, Journal};
use crate::store::metadata::{contains_id, remove_ids};
use crate::store::publish::{remove_file_if_present, remove_tree};
use crate::store::{LockedMetadata, Store};

/// Deals with every abandoned staging directory except `own`; returns how many.
pub fn recover_abandoned(
    store: &Store,
    own: Option<&Path>,
    timeout: Option<Duration>,
    log: &mut Logger<'_>,
) -> Result<usize> {
    let found = journal::abandoned(store, own)?;
    let count = found.len();
    for leftover in found {
        match &leftover.journal {
            Some(j) => {
                log.info(&format!("Cleaning up after an interrupted run ({})", leftover.dir.display()));
                settle(store, j, timeout)?;
            }
            None => log.debug(&format!("Removing empty staging directory {}", leftover.dir.display())),
        }
        leftover.remove()?;
    }
    Ok(count)
}

/// Brings the store to a state where the journal's run either completed or never happened.
pub fn settle(store: &Store, journal: &Journal, timeout: Option<Duration>) -> Result<()> {
    match journal {
        Journal::Migrate { image, layer, link, host, mountpoint } => {
            if let Some(mp) = mountpoint.as_deref().filter(|_| *host == journal::host_name()) {
                if flatten::listed_as_mount(mp) {
                    if let Ok(bin) = flatten::find_parallaxfs() {
                        let _ = flatten::unmount_path(&bin, mp, true);
                    }
                }
                let _ = std::fs::remove_dir(mp);
                if let Some(parent) = mp.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
            let locked = LockedMetadata::acquire(store, timeout, &|_| {})?;
            if contains_id(&locked.meta.images_raw, image) {
                return Ok(()); // published completely
            }
            let mut layers = locked.meta.layers_raw.clone();
            if remove_ids(&mut layers, &[layer.as_str()]) > 0 {
                locked.write_layers(&layers)?;
            }
            drop(locked);
            remove_layer_files(store, layer, Some(link))?;
            remove_tree(&store.image_dir(image))
        }
        Journal::Rmi { image, layers } => {
            let locked = LockedMetadata::acquire(store, timeout, &|_| {})?;
            if contains_id(&locked.meta.images_raw, image) {
                return Ok(()); // nothing was removed yet
            }
            let in_use = |id: &str| locked.meta.images.iter().any(|i| i.layer.as_deref() == Some(id));
            let removable: Vec<&str> = layers.iter().map(|(id, _)| id.as_str()).filter(|id| !in_use(id)).collect();
            let mut remaining = locked.meta.layers_raw.clone();
            if remove_ids(&mut remaining, &removable) > 0 {
                locked.write_layers(&remaining)?;
            }
            drop(locked);
            remove_tree(&store.image_dir(image))?;
            for (id, link) in layers.iter().filter(|(id, _)| removable.contains(&id.as_str())) {
                remove_layer_files(store, id, link.as_deref())?;
            }
            Ok(())
        }
    }
}

/// Removes a layer's files: tar-split, `l/LINK`, `overlay/<L>/`, then the side-car link and
/// the side-car itself (last, so a side-car never lacks its layer).
pub fn remove_layer_files(store: &Store, layer: &str, link: Option<&str>) -> Result<()> {
    remove_file_if_present(&store.tar_split(layer))?;
    if let Some(link) = link.filter(|l| !l.is_empty() && !l.contains('/')) {
        remove_file_if_present(&store.link_symlink(link))?;
        remove_tree(&store.layer_dir(layer))?;
        remove_file_if_present(&store.sidecar_symlink(link))?;
        remove_file_if_present(&store.sidecar(link))?;
    } else {
        remove_tree(&store.layer_dir(layer))?;
    }
    Ok(())
}
