//! `list`: the store's images, as a table or as JSON (`--json`).

use std::fs;
use std::io::Write;

use serde::Serialize;

use crate::cli::Config;
use crate::error::{IoContext, Result};
use crate::store::layout::MARKER_PREFIX;
use crate::store::{read_shared, Store};

/// One image as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Image ID.
    pub id: String,
    /// Names.
    pub names: Vec<String>,
    /// Creation time as recorded.
    pub created: Option<String>,
    /// Top layer ID.
    pub layer: Option<String>,
    /// The top layer's link name.
    pub link: Option<String>,
    /// `squash/<LINK>.squash` when present.
    pub squash: Option<String>,
    /// Its size in bytes.
    pub squash_bytes: Option<u64>,
    /// Source image ID read from the migration marker, when there is one.
    pub source_image: Option<String>,
    /// `parallax` (flattened into a side-car) or `layers` (an ordinary c/storage image).
    pub kind: &'static str,
}

/// Describes every image of the store.
pub fn entries(store: &Store, timeout: Option<std::time::Duration>) -> Result<Vec<Entry>> {
    let meta = read_shared(store, timeout)?;
    let mut out = Vec::new();
    for image in &meta.images {
        let link = image
            .layer
            .as_deref()
            .and_then(|l| fs::read_to_string(store.link_file(l)).ok())
            .map(|l| l.trim().to_string());
        let squash = link.as_deref().map(|l| store.sidecar(l)).filter(|p| p.is_file());
        let source_image = image.layer.as_deref().and_then(|l| marker_content(store, l));
        out.push(Entry {
            id: image.id.clone(),
            names: image.names.clone(),
            created: image.created.clone(),
            layer: image.layer.clone(),
            link,
            squash_bytes: squash.as_ref().and_then(|p| fs::metadata(p).ok()).map(|m| m.len()),
            kind: if squash.is_some() { "parallax" } else { "layers" },
            squash: squash.map(|p| p.display().to_string()),
            source_image,
        });
    }
    Ok(out)
}

/// The content of the `.migrationv3-*` marker in a layer's `diff/`, trimmed.
pub fn marker_content(store: &Store, layer: &str) -> Option<String> {
    let diff = store.layer_dir(layer).join("diff");
    fs::read_dir(&diff)
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name();
            name.to_string_lossy().starts_with(MARKER_PREFIX).then(|| fs::read_to_string(e.path()).ok()).flatten()
        })
        .map(|c| c.trim().to_string())
}

/// Prints the listing.
pub fn run(cfg: &Config, out: &mut dyn Write) -> Result<()> {
    let store = Store::new(&cfg.store, cfg.umask);
    let entries = entries(&store, cfg.lock_timeout)?;
    let text = if cfg.json {
        let mut s = serde_json::to_string_pretty(&entries).unwrap_or_default();
        s.push('\n');
        s
    } else {
        let mut s = format!("{:<14}{:<10}{:>12}  {:<32}NAMES\n", "IMAGE ID", "KIND", "SIZE", "CREATED");
        for e in &entries {
            s.push_str(&format!(
                "{:<14}{:<10}{:>12}  {:<32}{}\n",
                &e.id[..e.id.len().min(12)],
                e.kind,
                e.squash_bytes.map_or("-".to_string(), |b| b.to_string()),
                e.created.as_deref().unwrap_or("-"),
                e.names.join(", ")
            ));
        }
        s
    };
    out.write_all(text.as_bytes()).ctx("write", "stdout")
}
