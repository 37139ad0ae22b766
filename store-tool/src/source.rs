//! The user's Podman store an image is migrated from (`--podmanRoot`): its metadata is read
//! under c/storage's shared locks; its layers are used in place, never modified.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::names::Registries;
use crate::store::metadata::ImageView;
use crate::store::{read_shared, Store};

/// The source image and everything migration needs from it.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// Its `images.json` entry.
    pub view: ImageView,
    /// Layer content directories, topmost first (`overlay/<L>/diff`).
    pub diff_dirs: Vec<PathBuf>,
    /// Its big-data items, in `big-data-names` order.
    pub big_data: Vec<(String, Vec<u8>)>,
}

impl SourceImage {
    /// The big-data item `key`.
    pub fn item(&self, key: &str) -> Option<&[u8]> {
        self.big_data.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
    }
}

/// Finds `reference` in the Podman store at `root` and collects its layers and big data.
pub fn open(
    root: &std::path::Path,
    registries: &Registries,
    reference: &str,
    timeout: Option<Duration>,
) -> Result<SourceImage> {
    let store = Store::new(root, 0o022);
    if !store.overlay().is_dir() {
        return Err(Error::invalid(root, "not a Podman store with the overlay driver (no overlay/ directory)"));
    }
    let meta = read_shared(&store, timeout)?;
    let view = registries.find(&meta.images, reference).ok_or_else(|| Error::ImageNotFound(reference.to_string()))?;
    let mut diff_dirs = Vec::new();
    let mut seen = HashSet::new();
    let mut next = view.layer.clone().filter(|l| !l.is_empty());
    while let Some(id) = next {
        if !seen.insert(id.clone()) {
            return Err(Error::invalid(store.layers_json(), format!("layer {id} is its own ancestor")));
        }
        let layer = meta.layer(&id).ok_or_else(|| {
            Error::invalid(store.layers_json(), format!("layer {id} of image {} is not listed", view.id))
        })?;
        if layer.incomplete() {
            return Err(Error::invalid(store.layers_json(), format!("layer {id} of image {} is incomplete", view.id)));
        }
        let diff = store.layer_dir(&id).join("diff");
        if !diff.is_dir() {
            return Err(Error::invalid(&diff, format!("content of layer {id} of image {} is missing", view.id)));
        }
        diff_dirs.push(diff);
        next = layer.parent.clone().filter(|p| !p.is_empty());
    }
    if diff_dirs.is_empty() {
        return Err(Error::invalid(store.images_json(), format!("image {} has no layers", view.id)));
    }
    let mut big_data = Vec::new();
    for key in &view.big_data_names {
        let path = store.big_data(&view.id, key);
        let bytes = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        big_data.push((key.clone(), bytes));
    }
    Ok(SourceImage { view: view.clone(), diff_dirs, big_data })
}

/// Parses a big-data item as a JSON object.
pub fn json_object(bytes: &[u8], what: &str, image: &str) -> Result<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::Other(format!("{what} of source image {image} is not a JSON object"))),
        Err(e) => Err(Error::Other(format!("{what} of source image {image} is not valid JSON: {e}"))),
    }
}
