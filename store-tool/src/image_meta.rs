//! The migrated image's config, manifest and c/storage records (store_format.md §2.1 steps
//! 9–10, §3.3, §3.4, §6 item 3). The config is patched in place as JSON, so fields this tool
//! does not know (Docker's `Healthcheck`, `OnBuild`, ...) survive.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::source::{json_object, SourceImage};
use crate::store::json::to_go_json;
use crate::store::tarsplit::{hex, LayerTar};

/// OCI manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// The new image's blobs.
#[derive(Debug, Clone)]
pub struct NewBlobs {
    /// Big-data items to store, in order (key, bytes).
    pub items: Vec<(String, Vec<u8>)>,
    /// Manifest digest (the image's `digest`).
    pub manifest_digest: String,
}

/// Builds the one-layer config and manifest of the migrated image from the source's.
pub fn build_blobs(src: &SourceImage, layer: &LayerTar, created: &str) -> Result<NewBlobs> {
    let id = &src.view.id;
    let manifest_bytes =
        src.item("manifest").ok_or_else(|| Error::Other(format!("source image {id} has no manifest")))?;
    let manifest = json_object(manifest_bytes, "manifest", id)?;
    if manifest.get("schemaVersion").and_then(Value::as_i64) == Some(1) {
        return Err(Error::Other(format!("manifest of source image {id} is Docker schema 1, which is not supported")));
    }
    if manifest.contains_key("manifests") {
        return Err(Error::Other(format!("manifest of source image {id} is a manifest list, not an image manifest")));
    }
    let config_key = manifest
        .get("config")
        .and_then(|c| c.get("digest"))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Other(format!("manifest of source image {id} names no config")))?
        .to_string();
    let config_bytes = src
        .item(&config_key)
        .ok_or_else(|| Error::Other(format!("source image {id} lacks its config {config_key}")))?;
    let mut config = json_object(config_bytes, "config", id)?;
    config.insert("rootfs".into(), json!({"type": "layers", "diff_ids": [layer.digest]}));
    let mut history = match config.remove("history") {
        Some(Value::Array(h)) => h,
        _ => Vec::new(),
    };
    // The source's history entries no longer have layers of their own.
    for entry in &mut history {
        if let Value::Object(e) = entry {
            e.insert("empty_layer".into(), Value::Bool(true));
        }
    }
    history
        .push(json!({"created": created, "created_by": "MV3", "comment": format!("Flattened layers from image {id}")}));
    config.insert("history".into(), Value::Array(history));
    let config_out = to_go_json(&Value::Object(config));
    let config_digest = sha256_digest(&config_out);

    let mut new_manifest = Map::new();
    new_manifest.insert("schemaVersion".into(), json!(2));
    new_manifest.insert("mediaType".into(), json!(OCI_MANIFEST));
    new_manifest
        .insert("config".into(), json!({"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_out.len()}));
    new_manifest.insert(
        "layers".into(),
        json!([{"mediaType": OCI_LAYER_TAR, "digest": layer.digest, "size": layer.bytes.len()}]),
    );
    if let Some(annotations) = manifest.get("annotations").filter(|a| a.as_object().is_some_and(|o| !o.is_empty())) {
        new_manifest.insert("annotations".into(), annotations.clone());
    }
    let manifest_out = to_go_json(&Value::Object(new_manifest));
    let manifest_digest = sha256_digest(&manifest_out);

    let mut items = vec![
        ("manifest".to_string(), manifest_out.clone()),
        (config_digest.clone(), config_out),
        (format!("manifest-{manifest_digest}"), manifest_out),
    ];
    for (key, bytes) in &src.big_data {
        if *key != config_digest && !key.starts_with("manifest") {
            items.push((key.clone(), bytes.clone()));
        }
    }
    Ok(NewBlobs { items, manifest_digest })
}

/// The `layers.json` entry of the dummy layer (as c/storage `PutLayer` writes it).
pub fn layer_record(layer_id: &str, created: &str, layer: &LayerTar) -> Value {
    let size = layer.bytes.len();
    json!({
        "id": layer_id,
        "created": created,
        "compressed-diff-digest": layer.digest,
        "compressed-size": size,
        "diff-digest": layer.digest,
        "diff-size": size,
        "uidset": [0],
        "gidset": [0],
    })
}

/// The `images.json` entry of the migrated image.
pub fn image_record(image_id: &str, names: &[String], layer_id: &str, src: &SourceImage, blobs: &NewBlobs) -> Value {
    let mut sizes = Map::new();
    let mut digests = Map::new();
    for (key, bytes) in &blobs.items {
        sizes.insert(key.clone(), json!(bytes.len()));
        digests.insert(key.clone(), json!(sha256_digest(bytes)));
    }
    let mut record = Map::new();
    record.insert("id".into(), json!(image_id));
    record.insert("digest".into(), json!(blobs.manifest_digest));
    record.insert("names".into(), json!(names));
    if !src.view.names.is_empty() {
        record.insert("names-history".into(), json!(src.view.names));
    }
    record.insert("layer".into(), json!(layer_id));
    record.insert("big-data-names".into(), json!(blobs.items.iter().map(|(k, _)| k).collect::<Vec<_>>()));
    record.insert("big-data-sizes".into(), Value::Object(sizes));
    record.insert("big-data-digests".into(), Value::Object(digests));
    if let Some(created) = &src.view.created {
        record.insert("created".into(), json!(created));
    }
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::metadata::ImageView;
    use crate::store::tarsplit::{layer_tar, TarFile};

    fn source(manifest: Value, config: Value) -> SourceImage {
        let cfg = to_go_json(&config);
        let cfg_digest = sha256_digest(&cfg);
        let mut manifest = manifest;
        manifest["config"] = json!({"mediaType": "x", "digest": cfg_digest, "size": cfg.len()});
        SourceImage {
            view: ImageView { id: "src".into(), names: vec!["localhost/a:latest".into()], ..ImageView::default() },
            diff_dirs: Vec::new(),
            big_data: vec![
                (cfg_digest, cfg),
                ("manifest".into(), to_go_json(&manifest)),
                ("manifest-sha256:old".into(), b"old".to_vec()),
                ("signature-abc".into(), Vec::new()),
            ],
        }
    }

    #[test]
    fn config_patched_in_place_and_manifest_rebuilt() {
        let src = source(
            json!({"schemaVersion": 2, "layers": [], "annotations": {"a": "b"}}),
            json!({"config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Healthcheck": {"Test": ["x"]}},
                   "rootfs": {"type": "layers", "diff_ids": ["sha256:1", "sha256:2"]},
                   "history": [{"created_by": "a"}, {"created_by": "b", "empty_layer": true}]}),
        );
        let layer = layer_tar(&[TarFile { name: ".m", content: b"src\n", mode: 0o644, mtime: 0 }]);
        let blobs = build_blobs(&src, &layer, "2026-01-01T00:00:00Z").unwrap();
        let keys: Vec<&str> = blobs.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys[0], "manifest");
        assert_eq!(keys[2], format!("manifest-{}", blobs.manifest_digest));
        assert_eq!(&keys[3..], [src.big_data[0].0.as_str(), "signature-abc"]);
        let manifest: Value = serde_json::from_slice(&blobs.items[0].1).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["layers"][0]["digest"], json!(layer.digest));
        assert_eq!(manifest["layers"][0]["size"], json!(layer.bytes.len()));
        assert_eq!(manifest["annotations"], json!({"a": "b"}));
        assert_eq!(manifest["config"]["digest"], json!(keys[1]));
        assert_eq!(sha256_digest(&blobs.items[0].1), blobs.manifest_digest);
        let config: Value = serde_json::from_slice(&blobs.items[1].1).unwrap();
        assert_eq!(config["config"]["Healthcheck"], json!({"Test": ["x"]}));
        assert_eq!(config["rootfs"]["diff_ids"], json!([layer.digest]));
        let history = config["history"].as_array().unwrap();
        assert_eq!(history.len(), 3);
        assert!(history[..2].iter().all(|h| h["empty_layer"] == true));
        assert_eq!(
            history[2],
            json!({"created": "2026-01-01T00:00:00Z", "created_by": "MV3", "comment": "Flattened layers from image src"})
        );
        let record = image_record("img", &["n".into()], "lay", &src, &blobs);
        assert_eq!(record["big-data-digests"]["manifest"], json!(blobs.manifest_digest));
        assert_eq!(record["names-history"], json!(["localhost/a:latest"]));
    }

    #[test]
    fn unsupported_manifests_are_refused() {
        let layer = layer_tar(&[]);
        let cases = [
            (json!({"schemaVersion": 1}), "Docker schema 1"),
            (json!({"schemaVersion": 2, "manifests": []}), "manifest list"),
        ];
        for (manifest, want) in cases {
            let mut src = source(json!({}), json!({}));
            src.big_data[1].1 = to_go_json(&manifest);
            let err = build_blobs(&src, &layer, "x").unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
