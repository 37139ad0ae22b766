//! Where everything lives in an additional image store (store_format.md §2.2, §3.2), how IDs,
//! link names and big-data file names are made, and the store validation parallax does first.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::error::{Error, IoContext, Result};

/// Name of the tool's own lock file, held for a whole transaction.
pub const TOOL_LOCK: &str = "parallax-store.lock";
/// Staging area for transactions (same filesystem as the store; ignored by c/storage and by
/// parallax's rsync filter).
pub const STAGING: &str = ".parallax-staging";
/// Prefix of the marker file in a migrated image's dummy layer.
pub const MARKER_PREFIX: &str = ".migrationv3-";
/// Length of an overlay link name.
pub const LINK_LEN: usize = 26;

/// An additional image store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    /// The store directory (`--roStoragePath`).
    pub root: PathBuf,
    /// Permission bits taken away from new files (0o022 by default).
    pub umask: u32,
}

impl Store {
    /// A store at `root`.
    pub fn new(root: impl Into<PathBuf>, umask: u32) -> Store {
        Store { root: root.into(), umask }
    }
    /// `overlay/`.
    pub fn overlay(&self) -> PathBuf {
        self.root.join("overlay")
    }
    /// `overlay/l/`.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("overlay/l")
    }
    /// `overlay/<L>/`.
    pub fn layer_dir(&self, layer: &str) -> PathBuf {
        self.overlay().join(layer)
    }
    /// `overlay/<L>/link`.
    pub fn link_file(&self, layer: &str) -> PathBuf {
        self.layer_dir(layer).join("link")
    }
    /// `overlay/l/<LINK>` → `../<L>/diff`.
    pub fn link_symlink(&self, link: &str) -> PathBuf {
        self.links_dir().join(link)
    }
    /// `overlay/l/<LINK>.squash` → `../../squash/<LINK>.squash`.
    pub fn sidecar_symlink(&self, link: &str) -> PathBuf {
        self.links_dir().join(format!("{link}.squash"))
    }
    /// `squash/`.
    pub fn squash_dir(&self) -> PathBuf {
        self.root.join("squash")
    }
    /// `squash/<LINK>.squash`.
    pub fn sidecar(&self, link: &str) -> PathBuf {
        self.squash_dir().join(format!("{link}.squash"))
    }
    /// `overlay-layers/`.
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("overlay-layers")
    }
    /// `overlay-layers/layers.json`.
    pub fn layers_json(&self) -> PathBuf {
        self.layers_dir().join("layers.json")
    }
    /// `overlay-layers/layers.lock`.
    pub fn layers_lock(&self) -> PathBuf {
        self.layers_dir().join("layers.lock")
    }
    /// `overlay-layers/<L>.tar-split.gz`.
    pub fn tar_split(&self, layer: &str) -> PathBuf {
        self.layers_dir().join(format!("{layer}.tar-split.gz"))
    }
    /// `overlay-images/`.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("overlay-images")
    }
    /// `overlay-images/images.json`.
    pub fn images_json(&self) -> PathBuf {
        self.images_dir().join("images.json")
    }
    /// `overlay-images/images.lock`.
    pub fn images_lock(&self) -> PathBuf {
        self.images_dir().join("images.lock")
    }
    /// `overlay-images/<I>/`.
    pub fn image_dir(&self, image: &str) -> PathBuf {
        self.images_dir().join(image)
    }
    /// `overlay-images/<I>/<file name of key>`.
    pub fn big_data(&self, image: &str, key: &str) -> PathBuf {
        self.image_dir(image).join(big_data_file_name(key))
    }
    /// `parallax-store.lock`.
    pub fn tool_lock(&self) -> PathBuf {
        self.root.join(TOOL_LOCK)
    }
    /// `.parallax-staging/`.
    pub fn staging_root(&self) -> PathBuf {
        self.root.join(STAGING)
    }

    /// Mode for new files: 0644 with the default umask.
    pub fn file_mode(&self) -> u32 {
        0o666 & !self.umask
    }
    /// Mode for new directories: 0755 with the default umask.
    pub fn dir_mode(&self) -> u32 {
        0o777 & !self.umask
    }

    /// Creates what a first write needs (§6 item 12): `overlay/`, `overlay/l/`,
    /// `overlay-images/`, `overlay-layers/`, `squash/`, both lock files and empty JSON arrays,
    /// plus the bookkeeping files parallax's store has. Existing entries are left as they are.
    pub fn init_skeleton(&self) -> Result<()> {
        for dir in [
            self.overlay(),
            self.links_dir(),
            self.images_dir(),
            self.layers_dir(),
            self.squash_dir(),
            self.root.join("overlay-containers"),
        ] {
            self.ensure_dir(&dir)?;
        }
        for lock in [
            self.layers_lock(),
            self.images_lock(),
            self.root.join("storage.lock"),
            self.root.join("userns.lock"),
            self.root.join("overlay-containers/containers.lock"),
        ] {
            self.ensure_file(&lock, b"")?;
        }
        for json in [self.layers_json(), self.images_json()] {
            if !json.exists() {
                super::publish::write_atomic(&json, b"[]", self.file_mode())?;
            }
        }
        Ok(())
    }

    /// `mkdir` with the store's mode unless it exists; returns whether it was created.
    pub fn ensure_dir(&self, dir: &Path) -> Result<bool> {
        match fs::DirBuilder::new().mode(self.dir_mode()).create(dir) {
            Ok(()) => {
                fs::set_permissions(dir, fs::Permissions::from_mode(self.dir_mode())).ctx("chmod", dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
            Err(e) => Err(Error::io("mkdir", dir, e)),
        }
    }

    /// Creates `path` holding `content` unless it exists.
    fn ensure_file(&self, path: &Path, content: &[u8]) -> Result<()> {
        use std::io::Write;
        match fs::OpenOptions::new().write(true).create_new(true).mode(self.file_mode()).open(path) {
            Ok(mut f) => {
                f.write_all(content).ctx("write", path)?;
                f.set_permissions(fs::Permissions::from_mode(self.file_mode())).ctx("chmod", path)?;
                f.sync_all().ctx("fsync", path)?;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::io("open", path, e)),
        }
    }
}

/// parallax's `ValidateRoStore`: the store must be a directory, empty or holding one of
/// `overlay`, `overlay-images`, `overlay-layers`. A directory holding only what this tool
/// creates before its first publish (lock file, staging area, `squash/`) is accepted too, so a
/// run killed before publishing does not lock the store out.
pub fn validate_ro_store(root: &Path) -> Result<()> {
    let not_dir = || Error::Other(format!("'{}' is not a valid directory", root.display()));
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        _ => return Err(not_dir()),
    }
    let entries = fs::read_dir(root).map_err(|e| {
        Error::Other(format!("failed reading directory '{}': {}", root.display(), crate::error::io_text(&e)))
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            Error::Other(format!("failed reading directory '{}': {}", root.display(), crate::error::io_text(&e)))
        })?;
        names.push(entry.file_name());
    }
    if names.is_empty() {
        return Ok(());
    }
    if ["overlay", "overlay-images", "overlay-layers"].iter().any(|d| root.join(d).exists()) {
        return Ok(());
    }
    if names.iter().all(|n| n == TOOL_LOCK || n == STAGING || n == "squash") {
        return Ok(());
    }
    Err(Error::Other("storage validation failed, non-empty and does not look like a podman-overlay store".into()))
}

/// c/storage `makeBigDataBaseName`: the key if every byte is in `[.0-9a-z]`, else `=` and the
/// padded standard base64 of the key.
pub fn big_data_file_name(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()) {
        key.to_string()
    } else {
        format!("={}", base64(key.as_bytes()))
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A random 64-hex ID as c/storage's `stringid.GenerateRandomID` makes them (the 12-character
/// short form is never all digits).
pub fn random_id() -> String {
    loop {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if !id[..12].bytes().all(|b| b.is_ascii_digit()) {
            return id;
        }
    }
}

/// A random overlay link name: 26 characters of the base32 alphabet `[A-Z2-7]`
/// (c/storage `drivers/overlay/randomid.go generateID`).
pub fn random_link() -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = [0u8; LINK_LEN];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| ALPHABET[usize::from(b & 31)] as char).collect()
}

/// Whether `s` is a link name c/storage could have made (`[A-Z2-7]`, 26 characters).
pub fn is_valid_link(s: &str) -> bool {
    s.len() == LINK_LEN && s.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// The marker file name of a migrated image: `.migrationv3-` + the image as typed with `/`
/// and `:` turned into `-` (parallax's `safeName`).
pub fn marker_name(image_as_typed: &str) -> String {
    format!("{MARKER_PREFIX}{}", image_as_typed.replace(['/', ':'], "-"))
}

/// A short random suffix for temporary names.
pub fn random_suffix() -> String {
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a new file `path` (must not exist) with `content`, fsynced, mode `mode`.
pub fn write_new_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).ctx("create", path)?;
    f.write_all(content).ctx("write", path)?;
    f.set_permissions(fs::Permissions::from_mode(mode)).ctx("chmod", path)?;
    f.sync_all().ctx("fsync", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_data_names_like_c_storage() {
        let cases = [
            ("manifest", "manifest".to_string()),
            ("sha256:abc", format!("={}", base64(b"sha256:abc"))),
            ("signature-1", "=c2lnbmF0dXJlLTE=".to_string()),
            ("Manifest", "=TWFuaWZlc3Q=".to_string()),
            ("1.2", "1.2".to_string()),
        ];
        for (key, want) in cases {
            assert_eq!(big_data_file_name(key), want, "{key}");
        }
        assert_eq!(
            big_data_file_name("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            "=c2hhMjU2OjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
        );
    }

    #[test]
    fn base64_padding() {
        let cases = [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn ids_and_links_are_well_formed() {
        for _ in 0..100 {
            let id = random_id();
            assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(is_valid_link(&random_link()));
        }
        assert!(!is_valid_link("abc"));
    }

    #[test]
    fn marker_names_like_parallax() {
        assert_eq!(marker_name("busybox:latest"), ".migrationv3-busybox-latest");
        assert_eq!(marker_name("docker.io/library/alpine:3.22.1"), ".migrationv3-docker.io-library-alpine-3.22.1");
    }

    #[test]
    fn store_validation_like_parallax() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(validate_ro_store(root).is_ok(), "empty dir is accepted");
        fs::write(root.join(TOOL_LOCK), b"").unwrap();
        fs::create_dir(root.join(STAGING)).unwrap();
        assert!(validate_ro_store(root).is_ok(), "our own leftovers are accepted");
        fs::write(root.join("dummy-file"), b"").unwrap();
        assert_eq!(
            validate_ro_store(root).unwrap_err().to_string(),
            "storage validation failed, non-empty and does not look like a podman-overlay store"
        );
        fs::create_dir(root.join("overlay-images")).unwrap();
        assert!(validate_ro_store(root).is_ok());
        let missing = root.join("nope");
        assert_eq!(
            validate_ro_store(&missing).unwrap_err().to_string(),
            format!("'{}' is not a valid directory", missing.display())
        );
    }
}
