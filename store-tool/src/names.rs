//! Image references as parallax treats them (`common/imageutil.go`): `name[:tag]` split at the
//! last `:` after the last `/` (tag `latest` by default), short names resolved through
//! registries.conf (aliases first, then the first unqualified-search registry, as c/image's
//! `shortnames.Resolve` does for its first pull candidate), and the four spellings `FindImage`
//! accepts for a stored name.

use std::path::{Path, PathBuf};

use crate::store::metadata::ImageView;

/// `(name, tag)`; the tag is `latest` when absent.
pub fn split_name_tag(reference: &str) -> (&str, &str) {
    let last_colon = reference.rfind(':');
    let last_slash = reference.rfind('/');
    match last_colon {
        Some(c) if last_slash.is_none_or(|s| c > s) => (&reference[..c], &reference[c + 1..]),
        _ => (reference, "latest"),
    }
}

/// Whether the first component is a registry (`localhost`, or contains `.` or `:`).
pub fn has_registry(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or(name);
    first == "localhost" || first.contains('.') || first.contains(':')
}

/// What registries.conf says about short names.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    /// `unqualified-search-registries`, in order.
    pub search: Vec<String>,
    /// `[aliases]`: short name → fully qualified name (no tag).
    pub aliases: Vec<(String, String)>,
    /// The main file read (for messages).
    pub main_file: PathBuf,
}

impl Registries {
    /// Loads the files c/image would: `$CONTAINERS_REGISTRIES_CONF` or the user's or the
    /// system registries.conf, then the drop-in directories in name order (later files win).
    pub fn load() -> Registries {
        let home_conf = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/containers"));
        let main_file = match std::env::var_os("CONTAINERS_REGISTRIES_CONF") {
            Some(p) => PathBuf::from(p),
            None => match &home_conf {
                Some(h) if !nix::unistd::geteuid().is_root() && h.join("registries.conf").exists() => {
                    h.join("registries.conf")
                }
                _ => PathBuf::from("/etc/containers/registries.conf"),
            },
        };
        let mut reg = Registries { main_file: main_file.clone(), ..Registries::default() };
        reg.merge_file(&main_file);
        let mut dirs = vec![PathBuf::from("/etc/containers/registries.conf.d")];
        if let Some(h) = home_conf.filter(|_| !nix::unistd::geteuid().is_root()) {
            dirs.push(h.join("registries.conf.d"));
        }
        for dir in dirs {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.retain(|p| p.extension().is_some_and(|e| e == "conf"));
            files.sort();
            for f in files {
                reg.merge_file(&f);
            }
        }
        reg
    }

    /// Merges one file; unreadable or unparsable files are ignored (as a missing file is).
    fn merge_file(&mut self, path: &Path) {
        let Ok(text) = std::fs::read_to_string(path) else { return };
        let Ok(value) = text.parse::<toml::Table>() else { return };
        let strings = |v: &toml::Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        if let Some(v) = value.get("unqualified-search-registries") {
            self.search = strings(v);
        } else if let Some(v) = value.get("registries").and_then(|r| r.get("search")).and_then(|s| s.get("registries"))
        {
            self.search = strings(v);
        }
        if let Some(aliases) = value.get("aliases").and_then(toml::Value::as_table) {
            for (k, v) in aliases {
                if let Some(v) = v.as_str() {
                    self.aliases.retain(|(name, _)| name != k);
                    self.aliases.push((k.clone(), v.to_string()));
                }
            }
        }
    }

    /// The fully qualified `registry/repo:tag` parallax stores for `reference`.
    pub fn canonical(&self, reference: &str) -> Result<String, String> {
        let (name, tag) = split_name_tag(reference);
        if has_registry(name) {
            return Ok(format!("{name}:{tag}"));
        }
        if let Some((_, target)) = self.aliases.iter().find(|(k, _)| k == name) {
            return Ok(format!("{target}:{tag}"));
        }
        match self.search.first() {
            Some(registry) if registry == "docker.io" && !name.contains('/') => {
                Ok(format!("docker.io/library/{name}:{tag}"))
            }
            Some(registry) => Ok(format!("{registry}/{name}:{tag}")),
            None => Err(format!(
                "failed to resolve short name \"{reference}\": short-name \"{reference}\" did not resolve to an alias and no unqualified-search registries are defined in \"{}\"",
                self.main_file.display()
            )),
        }
    }

    /// The stored names `FindImage` accepts for `reference`: as typed, `name:tag`,
    /// `localhost/name:tag` (no registry), and the canonical name.
    pub fn candidates(&self, reference: &str) -> Vec<String> {
        let (name, tag) = split_name_tag(reference);
        let mut out = vec![reference.to_string(), format!("{name}:{tag}")];
        if !has_registry(name) {
            out.push(format!("localhost/{name}:{tag}"));
        }
        if let Ok(fq) = self.canonical(reference) {
            out.push(fq);
        }
        out
    }

    /// The first image (in file order) holding one of the candidate names.
    pub fn find<'a>(&self, images: &'a [ImageView], reference: &str) -> Option<&'a ImageView> {
        let candidates = self.candidates(reference);
        images.iter().find(|img| img.names.iter().any(|n| candidates.contains(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_tag() {
        let cases = [
            ("alpine", ("alpine", "latest")),
            ("alpine:3.18", ("alpine", "3.18")),
            ("localhost:5000/x", ("localhost:5000/x", "latest")),
            ("localhost:5000/x:1", ("localhost:5000/x", "1")),
            ("docker.io/library/alpine:3.22.1", ("docker.io/library/alpine", "3.22.1")),
        ];
        for (r, want) in cases {
            assert_eq!(split_name_tag(r), want, "{r}");
        }
        assert!(has_registry("localhost/x") && has_registry("quay.io/x") && has_registry("h:5000/x"));
        assert!(!has_registry("library/alpine") && !has_registry("alpine"));
    }

    #[test]
    fn canonical_names() {
        let reg = Registries {
            search: vec!["docker.io".into(), "quay.io".into()],
            aliases: vec![("centos".into(), "quay.io/centos/centos".into())],
            main_file: "/r.conf".into(),
        };
        let cases = [
            ("alpine", "docker.io/library/alpine:latest"),
            ("alpine:3.22.1", "docker.io/library/alpine:3.22.1"),
            ("user/app:1", "docker.io/user/app:1"),
            ("centos:9", "quay.io/centos/centos:9"),
            ("localhost/new-alpine", "localhost/new-alpine:latest"),
            ("docker.io/library/alpine", "docker.io/library/alpine:latest"),
        ];
        for (r, want) in cases {
            assert_eq!(reg.canonical(r).unwrap(), want, "{r}");
        }
        assert_eq!(
            reg.candidates("new-alpine"),
            vec![
                "new-alpine",
                "new-alpine:latest",
                "localhost/new-alpine:latest",
                "docker.io/library/new-alpine:latest"
            ]
        );
        let none = Registries { main_file: "/r.conf".into(), ..Registries::default() };
        assert!(none
            .canonical("alpine")
            .unwrap_err()
            .contains("no unqualified-search registries are defined in \"/r.conf\""));
    }

    #[test]
    fn reads_registries_conf_v2_and_v1() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("a.conf");
        std::fs::write(&v2, "unqualified-search-registries = [\"quay.io\"]\n[aliases]\n\"x\" = \"reg.io/y/x\"\n")
            .unwrap();
        let v1 = dir.path().join("b.conf");
        std::fs::write(&v1, "[registries.search]\nregistries = ['docker.io']\n").unwrap();
        let mut reg = Registries::default();
        reg.merge_file(&v2);
        assert_eq!(reg.canonical("a").unwrap(), "quay.io/a:latest");
        assert_eq!(reg.canonical("x:2").unwrap(), "reg.io/y/x:2");
        reg.merge_file(&v1);
        assert_eq!(reg.canonical("a").unwrap(), "docker.io/library/a:latest");
    }
}
