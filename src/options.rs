//! The fuse-overlayfs command-line form Podman uses for a `mount_program`:
//! `parallaxfs [-f] [-d] -o OPTS[,...] [-o ...] [SOURCE] MOUNTPOINT`.
//!
//! OPTS are split on commas outside double quotes, empty items are skipped (c/storage ≤ 1.50
//! sends `,,`), `\` escapes the next character, and `lowerdir` is split on unescaped `:`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use parallaxfs_fs::overlay::idmap::{IdMap, OverrideStat};

/// What the options ask for.
#[derive(Debug, Default, Clone)]
pub struct MountRequest {
    /// Lower layers, topmost first (SquashFS image files or directories).
    pub lowers: Vec<PathBuf>,
    /// Upper directory, if any.
    pub upper: Option<PathBuf>,
    /// Work directory, if any.
    pub work: Option<PathBuf>,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Debug logging.
    pub debug: bool,
    /// FUSE mount words to pass on (allow_other, suid, nodev, ...).
    pub fuse_words: Vec<String>,
    /// `squash_io=mmap|pread|auto`.
    pub squash_io: parallaxfs_squash::IoMode,
    /// `volatile` (or `fsync=0`, `sync=0`): fsync does not sync.
    pub volatile: bool,
    /// `uidmapping=disk:shown:count[:...]`.
    pub uid_map: IdMap,
    /// `gidmapping=...`.
    pub gid_map: IdMap,
    /// `squash_to_uid=N`.
    pub squash_uid: Option<u32>,
    /// `squash_to_gid=N`.
    pub squash_gid: Option<u32>,
    /// `squash_to_root`.
    pub squash_root: bool,
    /// `xattr_permissions=0|1|2`.
    pub override_stat: OverrideStat,
    /// `timeout=SECS`: entry/attr timeout.
    pub timeout: Option<std::time::Duration>,
    /// `noxattrs=1`.
    pub no_xattrs: bool,
    /// `prefetch=N`: N threads read the small files of each listed directory ahead (read-only
    /// mounts). Unset: two threads, started by a directory's first file read.
    pub prefetch: Option<usize>,
    /// `threads=N`: FUSE request threads (1–64). Unset: one per core, at least 4.
    pub threads: Option<usize>,
    /// Options not understood (warned about, ignored).
    pub unknown: Vec<String>,
}

/// Splits OPTS on commas outside double quotes; drops empty items.
pub fn split_options(opts: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = opts.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|s| !s.is_empty());
    out
}

/// Splits a lowerdir value on unescaped `:`; `\:` and `\\` become `:` and `\`.
pub fn split_lowerdir(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|s| !s.is_empty());
    out
}

fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Relative layer paths are resolved against the working directory (c/storage runs the mount
/// program with cwd = `<graphroot>/overlay`).
fn absolute(p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    Ok(if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) })
}

/// FUSE mount words passed through to the kernel mount.
const FUSE_WORDS: &[&str] = &[
    "ro",
    "rw",
    "allow_other",
    "allow_root",
    "default_permissions",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "kernel_cache",
];
/// Words accepted and ignored without a warning (propagation words buildah adds, `defaults`,
/// and fuse-overlayfs tuning words whose effect parallaxfs always has or never needs).
const SILENT_WORDS: &[&str] =
    &["defaults", "private", "rprivate", "shared", "rshared", "slave", "rslave", "static_nlink", "noacl", "ino32_t"];

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value.parse().map_err(|_| anyhow!("option {key}={value}: not a valid number"))
}

fn flag(key: &str, value: &str) -> Result<bool> {
    match value {
        "0" | "false" | "no" => Ok(false),
        "1" | "true" | "yes" => Ok(true),
        _ => bail!("option {key}={value}: want 0 or 1"),
    }
}

impl MountRequest {
    /// Applies one `-o` item.
    pub fn apply(&mut self, item: &str) -> Result<()> {
        let (key, value) = item.split_once('=').map_or((item, None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("lowerdir", Some(v)) => {
                self.lowers = split_lowerdir(v).iter().map(|p| absolute(p)).collect::<Result<_>>()?;
            }
            ("upperdir", Some(v)) => self.upper = Some(absolute(&unescape(v))?),
            ("workdir", Some(v)) => self.work = Some(absolute(&unescape(v))?),
            ("squash_io", Some(v)) => self.squash_io = v.parse().map_err(anyhow::Error::msg)?,
            ("context", Some(_)) => {}
            ("debug", None) => self.debug = true,
            ("volatile", None) => self.volatile = true,
            ("fsync" | "sync", Some(v)) => self.volatile = !flag(key, v)?,
            ("uidmapping", Some(v)) => self.uid_map = IdMap::parse(v).map_err(anyhow::Error::msg)?,
            ("gidmapping", Some(v)) => self.gid_map = IdMap::parse(v).map_err(anyhow::Error::msg)?,
            ("squash_to_uid", Some(v)) => self.squash_uid = Some(number(key, v)?),
            ("squash_to_gid", Some(v)) => self.squash_gid = Some(number(key, v)?),
            ("squash_to_root", None) => self.squash_root = true,
            ("xattr_permissions", Some(v)) => {
                self.override_stat = match v {
                    "0" => OverrideStat::Off,
                    "1" => OverrideStat::Privileged,
                    "2" => OverrideStat::Containers,
                    _ => bail!("option xattr_permissions={v}: want 0, 1 or 2"),
                }
            }
            ("timeout", Some(v)) => {
                let secs: f64 = number(key, v)?;
                if !secs.is_finite() || secs < 0.0 {
                    bail!("option timeout={v}: want a non-negative number of seconds");
                }
                self.timeout = Some(std::time::Duration::from_secs_f64(secs.min(1e9)));
            }
            ("noxattrs", Some(v)) => self.no_xattrs = flag(key, v)?,
            ("noxattrs", None) => self.no_xattrs = true,
            ("prefetch", Some(v)) => {
                let threads: usize = number(key, v)?;
                if threads > 64 {
                    bail!("option prefetch={v}: want 0 to 64 threads");
                }
                self.prefetch = Some(threads);
            }
            ("threads", Some(v)) => {
                let threads: usize = number(key, v)?;
                if !(1..=64).contains(&threads) {
                    bail!("option threads={v}: want 1 to 64 threads");
                }
                self.threads = Some(threads);
            }
            ("redirect_dir", Some("off")) => {}
            ("redirect_dir", Some(v)) => bail!("option redirect_dir={v}: only redirect_dir=off is supported"),
            ("xino", Some("off" | "auto" | "on")) => {}
            ("xino", Some(v)) => bail!("option xino={v}: want off, auto or on"),
            (w, None) if FUSE_WORDS.contains(&w) => self.fuse_words.push(w.to_string()),
            (w, None) if SILENT_WORDS.contains(&w) => {}
            _ => self.unknown.push(item.to_string()),
        }
        Ok(())
    }

    /// Parses the fuse-overlayfs argument form (`args` excludes the program name).
    pub fn parse(args: &[String]) -> Result<MountRequest> {
        let mut req = MountRequest::default();
        let mut bare = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            match a.as_str() {
                "-f" => req.foreground = true,
                "-d" => {
                    req.debug = true;
                    req.foreground = true;
                }
                "-o" => {
                    i += 1;
                    let Some(opts) = args.get(i) else { bail!("option -o needs a value") };
                    for item in split_options(opts) {
                        req.apply(&item)?;
                    }
                }
                s if s.starts_with("-o") => {
                    for item in split_options(&s[2..]) {
                        req.apply(&item)?;
                    }
                }
                s if s.starts_with('-') && s.len() > 1 => bail!("unknown option {s} (see parallaxfs --help)"),
                _ => bare.push(a.clone()),
            }
            i += 1;
        }
        // mount.fuse3 passes `SOURCE MOUNTPOINT`: the last bare word is the mountpoint.
        let Some(mountpoint) = bare.pop() else { bail!("no mountpoint given") };
        req.mountpoint = absolute(&mountpoint)?;
        if req.lowers.is_empty() {
            bail!("no lowerdir given (use -o lowerdir=LAYER[:LAYER...])");
        }
        if req.upper.is_some() != req.work.is_some() {
            bail!("upperdir and workdir go together: give both or neither");
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_c_storage_sends() {
        let opts = r#"lowerdir=/a:/b,upperdir=/u,workdir=/w,,volatile,context="system_u:object_r:container_file_t:s0:c1,c2",uidmapping=:0:1:1000"#;
        let items = split_options(opts);
        assert_eq!(items[0], "lowerdir=/a:/b");
        assert_eq!(items[3], "volatile");
        assert_eq!(items[4], r#"context="system_u:object_r:container_file_t:s0:c1,c2""#);
        assert_eq!(items.len(), 6);
    }

    #[test]
    fn lowerdir_escapes() {
        assert_eq!(split_lowerdir(r"/a\:b:/c::/d"), vec!["/a:b", "/c", "/d"]);
    }

    #[test]
    fn parse_forms() {
        let args: Vec<String> =
            ["-o", "lowerdir=/x:/y", "-onodev,allow_other", "src", "/m"].iter().map(|s| s.to_string()).collect();
        let r = MountRequest::parse(&args).unwrap();
        assert_eq!(r.lowers, vec![PathBuf::from("/x"), PathBuf::from("/y")]);
        assert_eq!(r.mountpoint, PathBuf::from("/m"));
        assert_eq!(r.fuse_words, vec!["nodev", "allow_other"]);
        assert!(MountRequest::parse(&["/m".to_string()]).is_err());
        let bogus: Vec<String> = ["-o", "lowerdir=/x,frobnicate", "/m"].iter().map(|s| s.to_string()).collect();
        assert_eq!(MountRequest::parse(&bogus).unwrap().unknown, vec!["frobnicate"]);
    }

    #[test]
    fn podman_4_3_rootless_string() {
        let opts = r#"lowerdir=/g/l/A:/g/l/B,upperdir=/g/u,workdir=/g/w,,volatile,context="system_u:object_r:container_file_t:s0:c1,c2",uidmapping=:0:1:1000:1000:0:1:1001:1001:64536,gidmapping=:0:1:1000:1000:0:1:1001:1001:64536"#;
        let args: Vec<String> = ["-o", opts, "/g/m"].iter().map(|s| s.to_string()).collect();
        let r = MountRequest::parse(&args).unwrap();
        assert_eq!(r.uid_map.ranges.len(), 3);
        assert_eq!(r.gid_map.ranges.len(), 3);
        assert!(r.volatile);
        assert!(r.unknown.is_empty());
        assert_eq!(r.upper, Some(PathBuf::from("/g/u")));
    }

    #[test]
    fn invalid_values_are_errors() {
        for bad in
            ["uidmapping=0:1", "squash_to_uid=x", "xattr_permissions=3", "redirect_dir=on", "timeout=-1", "fsync=2"]
        {
            let args: Vec<String> = ["-o", &format!("lowerdir=/x,{bad}"), "/m"].iter().map(|s| s.to_string()).collect();
            assert!(MountRequest::parse(&args).is_err(), "{bad} accepted");
        }
    }
}
