//! `layers.json` and `images.json` (store_format.md §3.3, §3.4): read as JSON arrays, kept as
//! raw values so fields this tool does not know survive a rewrite, viewed through typed structs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The fields of a `layers.json` entry this tool reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LayerView {
    /// Layer ID.
    pub id: String,
    /// Parent layer ID.
    pub parent: Option<String>,
    /// `diff-digest`.
    #[serde(rename = "diff-digest")]
    pub diff_digest: Option<String>,
    /// `diff-size`.
    #[serde(rename = "diff-size")]
    pub diff_size: Option<i64>,
    /// Layer names (parallax layers have none).
    pub names: Vec<String>,
    /// `flags` (`incomplete` while c/storage writes the layer).
    pub flags: Option<BTreeMap<String, Value>>,
}

impl LayerView {
    /// Whether c/storage marked the layer as still being written.
    pub fn incomplete(&self) -> bool {
        self.flags.as_ref().and_then(|f| f.get("incomplete")).and_then(Value::as_bool).unwrap_or(false)
    }
}

/// The fields of an `images.json` entry this tool reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ImageView {
    /// Image ID.
    pub id: String,
    /// Manifest digest.
    pub digest: Option<String>,
    /// Names (`registry/repo:tag`).
    pub names: Vec<String>,
    /// Names the image had before.
    #[serde(rename = "names-history")]
    pub names_history: Vec<String>,
    /// Top layer ID.
    pub layer: Option<String>,
    /// Mapped top layers.
    #[serde(rename = "mapped-layers")]
    pub mapped_layers: Vec<String>,
    /// Big-data keys, in the order they were set.
    #[serde(rename = "big-data-names")]
    pub big_data_names: Vec<String>,
    /// Big-data sizes by key.
    #[serde(rename = "big-data-sizes")]
    pub big_data_sizes: BTreeMap<String, i64>,
    /// Big-data digests by key.
    #[serde(rename = "big-data-digests")]
    pub big_data_digests: BTreeMap<String, String>,
    /// Creation time (RFC 3339).
    pub created: Option<String>,
}

/// Reads a c/storage JSON array; a missing or empty file is an empty array.
pub fn read_array(path: &Path) -> Result<Vec<Value>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(Value::Null) => Ok(Vec::new()),
        Ok(_) => Err(Error::invalid(path, "not a JSON array")),
        Err(e) => Err(Error::invalid(path, format!("unparsable JSON: {e}"))),
    }
}

/// Typed views of every entry; an entry of the wrong shape or without an ID is an error naming
/// the file and the entry's index.
fn views<T: for<'de> Deserialize<'de>>(path: &Path, items: &[Value], id: impl Fn(&T) -> &str) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let view: T =
            serde_json::from_value(item.clone()).map_err(|e| Error::invalid(path, format!("entry {i}: {e}")))?;
        if id(&view).is_empty() {
            return Err(Error::invalid(path, format!("entry {i} has no \"id\"")));
        }
        out.push(view);
    }
    Ok(out)
}

/// Both JSON files of a store, raw and typed.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// `layers.json` entries, as read.
    pub layers_raw: Vec<Value>,
    /// `images.json` entries, as read.
    pub images_raw: Vec<Value>,
    /// Typed layers (same order).
    pub layers: Vec<LayerView>,
    /// Typed images (same order).
    pub images: Vec<ImageView>,
}

impl Metadata {
    /// Reads both files (without locking; callers lock).
    pub fn read(layers_json: &Path, images_json: &Path) -> Result<Metadata> {
        let layers_raw = read_array(layers_json)?;
        let images_raw = read_array(images_json)?;
        let layers = views(layers_json, &layers_raw, |l: &LayerView| &l.id)?;
        let images = views(images_json, &images_raw, |i: &ImageView| &i.id)?;
        Ok(Metadata { layers_raw, images_raw, layers, images })
    }

    /// The layer with this ID.
    pub fn layer(&self, id: &str) -> Option<&LayerView> {
        self.layers.iter().find(|l| l.id == id)
    }

    /// Checks what c/storage refuses to load or what would make us corrupt the store: duplicate
    /// IDs, the same name on two images (`ErrDuplicateImageNames`), an image whose top layer is
    /// not in `layers.json`, a layer whose parent is missing.
    pub fn check(&self, layers_json: &Path, images_json: &Path) -> Result<()> {
        let mut layer_ids = HashSet::new();
        for l in &self.layers {
            if !layer_ids.insert(l.id.as_str()) {
                return Err(Error::invalid(layers_json, format!("layer {} is listed twice", l.id)));
            }
        }
        for l in &self.layers {
            if let Some(p) = l.parent.as_deref().filter(|p| !p.is_empty()) {
                if !layer_ids.contains(p) {
                    return Err(Error::invalid(layers_json, format!("layer {} has unknown parent {p}", l.id)));
                }
            }
        }
        let mut image_ids = HashSet::new();
        let mut names: HashMap<&str, &str> = HashMap::new();
        for img in &self.images {
            if !image_ids.insert(img.id.as_str()) {
                return Err(Error::invalid(images_json, format!("image {} is listed twice", img.id)));
            }
            for n in &img.names {
                if let Some(other) = names.insert(n.as_str(), img.id.as_str()) {
                    if other != img.id {
                        return Err(Error::invalid(
                            images_json,
                            format!("name {n:?} is assigned to images {other} and {}", img.id),
                        ));
                    }
                }
            }
            if let Some(top) = img.layer.as_deref().filter(|t| !t.is_empty()) {
                if !layer_ids.contains(top) {
                    return Err(Error::invalid(
                        images_json,
                        format!("image {} has top layer {top}, which is not in {}", img.id, layers_json.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// IDs of the layers only `image` uses, top first: its top layer and the parents below it,
    /// up to the first one another image (or another remaining layer) still needs. What
    /// c/storage `DeleteImage` removes.
    pub fn layers_only_used_by(&self, image: &ImageView) -> Vec<String> {
        let others: Vec<&ImageView> = self.images.iter().filter(|i| i.id != image.id).collect();
        let in_use =
            |id: &str| others.iter().any(|i| i.layer.as_deref() == Some(id) || i.mapped_layers.iter().any(|m| m == id));
        let mut out: Vec<String> = Vec::new();
        let mut next = image.layer.clone().filter(|t| !t.is_empty());
        while let Some(id) = next {
            if in_use(&id) || out.contains(&id) {
                break;
            }
            // A child that stays (not being removed) keeps this layer.
            let has_other_child =
                self.layers.iter().any(|l| l.parent.as_deref() == Some(id.as_str()) && !out.contains(&l.id));
            if has_other_child {
                break;
            }
            next = self.layer(&id).and_then(|l| l.parent.clone()).filter(|p| !p.is_empty());
            out.push(id);
        }
        out
    }
}

/// Removes the entries whose `id` is in `ids`; returns how many were removed.
pub fn remove_ids(items: &mut Vec<Value>, ids: &[&str]) -> usize {
    let before = items.len();
    items.retain(|v| !v.get("id").and_then(Value::as_str).is_some_and(|id| ids.contains(&id)));
    before - items.len()
}

/// Whether an entry with this `id` is present.
pub fn contains_id(items: &[Value], id: &str) -> bool {
    items.iter().any(|v| v.get("id").and_then(Value::as_str) == Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(layers: Value, images: Value) -> Metadata {
        let dir = tempfile::tempdir().unwrap();
        let (lp, ip) = (dir.path().join("layers.json"), dir.path().join("images.json"));
        fs::write(&lp, layers.to_string()).unwrap();
        fs::write(&ip, images.to_string()).unwrap();
        Metadata::read(&lp, &ip).unwrap()
    }

    #[test]
    fn missing_and_empty_files_are_empty_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        assert!(read_array(&p).unwrap().is_empty());
        fs::write(&p, "  \n").unwrap();
        assert!(read_array(&p).unwrap().is_empty());
        fs::write(&p, "[{").unwrap();
        let err = read_array(&p).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: unparsable JSON", p.display())), "{err}");
        fs::write(&p, "{}").unwrap();
        assert_eq!(read_array(&p).unwrap_err().to_string(), format!("{}: not a JSON array", p.display()));
    }

    #[test]
    fn check_finds_what_c_storage_refuses() {
        let ok = meta(
            json!([{"id": "l1"}, {"id": "l2", "parent": "l1"}]),
            json!([{"id": "i1", "names": ["a"], "layer": "l2"}]),
        );
        ok.check(Path::new("L"), Path::new("I")).unwrap();
        let cases = [
            (json!([{"id": "l1"}, {"id": "l1"}]), json!([]), "L: layer l1 is listed twice"),
            (json!([{"id": "l2", "parent": "l1"}]), json!([]), "L: layer l2 has unknown parent l1"),
            (
                json!([{"id": "l1"}]),
                json!([{"id": "i1", "layer": "lx"}]),
                "I: image i1 has top layer lx, which is not in L",
            ),
            (
                json!([{"id": "l1"}]),
                json!([{"id": "i1", "names": ["a"], "layer": "l1"}, {"id": "i2", "names": ["a"], "layer": "l1"}]),
                "I: name \"a\" is assigned to images i1 and i2",
            ),
        ];
        for (layers, images, want) in cases {
            let m = meta(layers, images);
            assert_eq!(m.check(Path::new("L"), Path::new("I")).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn layers_only_used_by_stops_at_shared_layers() {
        let m = meta(
            json!([{"id": "base"}, {"id": "mid", "parent": "base"}, {"id": "top", "parent": "mid"}, {"id": "other", "parent": "base"}]),
            json!([{"id": "a", "layer": "top"}, {"id": "b", "layer": "other"}]),
        );
        assert_eq!(m.layers_only_used_by(&m.images[0]), vec!["top".to_string(), "mid".to_string()]);
        assert_eq!(m.layers_only_used_by(&m.images[1]), vec!["other".to_string()]);
    }

    #[test]
    fn unknown_fields_survive_and_ids_are_removed() {
        let mut items = vec![json!({"id": "a", "x-future": 1}), json!({"id": "b"})];
        assert_eq!(remove_ids(&mut items, &["b"]), 1);
        assert_eq!(items, vec![json!({"id": "a", "x-future": 1})]);
        assert!(contains_id(&items, "a"));
    }
}
