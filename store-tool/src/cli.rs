//! The command line: parallax's flag form (`--migrate|--rmi --image REF [options]`) with its
//! defaults, validation order, messages and banner (store_format.md §1.1), and the subcommand
//! forms `migrate IMAGE`, `rmi IMAGE`, `list`, `verify`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::io_text;
use crate::goflag::{self, Flag, Kind, ParseError};
use crate::messages::Level;

/// parallax's flags, in banner order, with its usage strings verbatim.
const PARALLAX_FLAGS: &[Flag] = &[
    Flag { name: "migrate", kind: Kind::Bool, default: "false", usage: "Migrates an image" },
    Flag { name: "rmi", kind: Kind::Bool, default: "false", usage: "Removes an image" },
    Flag { name: "image", kind: Kind::String, default: "", usage: "the name (:tag) of the image to remove" },
    Flag {
        name: "podmanRoot",
        kind: Kind::String,
        default: "/var/lib/containers/storage",
        usage: "Path to Podman root storage directory",
    },
    Flag {
        name: "roStoragePath",
        kind: Kind::String,
        default: "/mnt/nfs/podman",
        usage: "Path to read-only storage location",
    },
    Flag {
        name: "mksquashfsPath",
        kind: Kind::String,
        default: "/usr/bin/mksquashfs",
        usage: "Path to mksquashfs binary",
    },
    Flag { name: "mksquashfs-opts", kind: Kind::String, default: "", usage: "Parameters for mksquashfs" },
    Flag {
        name: "log-level",
        kind: Kind::String,
        default: "info",
        usage: "Logging level (debug, info, warn, error, fatal, panic)",
    },
    Flag { name: "version", kind: Kind::Bool, default: "false", usage: "Print version" },
];

/// Flags parallax-store adds (accepted in every form).
const EXTRA_FLAGS: &[Flag] = &[
    Flag {
        name: "lock-timeout",
        kind: Kind::String,
        default: "10m",
        usage: "How long to wait for a busy store lock (e.g. 30s, 5m; 0 = do not wait)",
    },
    Flag {
        name: "umask",
        kind: Kind::String,
        default: "022",
        usage: "Permission bits removed from new store files (octal)",
    },
    Flag { name: "json", kind: Kind::Bool, default: "false", usage: "list/verify: print JSON" },
    Flag { name: "fix", kind: Kind::Bool, default: "false", usage: "verify: remove leftovers of interrupted runs" },
];

/// Version line(s) for `--version`.
pub fn version_text() -> String {
    format!("Parallax version: parallax-store {}\n", env!("CARGO_PKG_VERSION"))
}

/// The usage banner (to stderr; starts with an empty line, as parallax's).
pub fn banner() -> String {
    let mut out = String::from(
        "\nParallax\nOCI image migration tool for Podman on HPC systems\n\nUsage:\n  \
         parallax-store --migrate --image <image[:tag]> [options]\n  \
         parallax-store --rmi     --image <image[:tag]> [options]\n  \
         parallax-store migrate|rmi <image[:tag]> [options]\n  \
         parallax-store list|verify [--roStoragePath DIR] [--json] [--fix]\n\nOptions:\n",
    );
    for f in PARALLAX_FLAGS.iter().chain(EXTRA_FLAGS) {
        out.push_str(&format!("  --{}\t{}", f.name, f.usage));
        if !f.default.is_empty() && f.default != "false" {
            out.push_str(&format!(" (default \"{}\")", f.default));
        }
        out.push('\n');
    }
    out.push_str(
        "\nExamples:\n  parallax-store --migrate --image ubuntu:latest\n  \
         parallax-store --rmi     --image alpine:3.18\n  \
         parallax-store verify --roStoragePath /mnt/nfs/podman --json\n\n",
    );
    out
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Copy an image into the store.
    Migrate,
    /// Remove an image from the store.
    Rmi,
    /// List the store's images.
    List,
    /// Check the store's images.
    Verify,
}

/// A validated command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// The operation.
    pub op: Op,
    /// `--image` (as typed).
    pub image: String,
    /// `--podmanRoot`.
    pub podman_root: PathBuf,
    /// `--roStoragePath`.
    pub store: PathBuf,
    /// `--mksquashfsPath` (resolved on PATH when the default is missing).
    pub mksquashfs: PathBuf,
    /// `--mksquashfs-opts` split into words; `None` = parallax's defaults.
    pub mksquashfs_opts: Option<Vec<String>>,
    /// `--log-level`.
    pub log_level: Level,
    /// `--lock-timeout` (`None`: wait forever is never used; kept for clarity).
    pub lock_timeout: Option<Duration>,
    /// `--umask`.
    pub umask: u32,
    /// `--json`.
    pub json: bool,
    /// `--fix`.
    pub fix: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Request {
    /// Print the banner, exit 0.
    Help,
    /// Print the version, exit 0.
    Version,
    /// Run an operation.
    Run(Config),
}

/// A command-line mistake: printed to stderr with the banner, exit 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

/// Parses and validates `args` (without the program name).
pub fn parse(args: &[String]) -> Result<Request, UsageError> {
    let all: Vec<Flag> = PARALLAX_FLAGS.iter().chain(EXTRA_FLAGS).copied().collect();
    let sub = match args.first().map(String::as_str) {
        Some("migrate") => Some(Op::Migrate),
        Some("rmi") => Some(Op::Rmi),
        Some("list") => Some(Op::List),
        Some("verify") => Some(Op::Verify),
        Some("help") => return Ok(Request::Help),
        Some("version") => return Ok(Request::Version),
        _ => None,
    };
    let rest = if sub.is_some() { &args[1..] } else { args };
    let parsed = match goflag::parse(&all, rest, sub.is_some()) {
        Ok(p) => p,
        Err(ParseError::Help) => return Ok(Request::Help),
        Err(ParseError::Bad(msg)) => return Err(UsageError(msg)),
    };
    let get =
        |name: &str| -> String {
            parsed.values.get(name).cloned().unwrap_or_else(|| {
                all.iter().find(|f| f.name == name).map(|f| f.default.to_string()).unwrap_or_default()
            })
        };
    let is_set = |name: &str| parsed.values.contains_key(name);
    if get("version") == "true" {
        return Ok(Request::Version);
    }
    let op = match sub {
        Some(op) => {
            if is_set("migrate") || is_set("rmi") {
                return Err(UsageError("-migrate and -rmi cannot be combined with a subcommand".into()));
            }
            op
        }
        None => match (get("migrate") == "true", get("rmi") == "true") {
            (true, false) => Op::Migrate,
            (false, true) => Op::Rmi,
            _ => return Err(UsageError("Must specify either -migrate or -rmi".into())),
        },
    };
    let mut image = get("image");
    let mut store = get("roStoragePath");
    if let Some(op) = sub {
        let mut positional = parsed.positional.iter();
        match op {
            Op::Migrate | Op::Rmi if image.is_empty() => image = positional.next().cloned().unwrap_or_default(),
            Op::List | Op::Verify if !is_set("roStoragePath") => {
                if let Some(p) = positional.next() {
                    store = p.clone();
                }
            }
            _ => {}
        }
        if let Some(extra) = positional.next() {
            return Err(UsageError(format!("unexpected argument: {extra}")));
        }
    }
    let image_op = matches!(op, Op::Migrate | Op::Rmi);
    if image_op && image.is_empty() {
        return Err(UsageError("Must specify -image image (e.g. -image ubuntu:latest)".into()));
    }
    // parallax checks podmanRoot and mksquashfsPath for --rmi too; the subcommand `rmi` does
    // not need them.
    let needs_source = op == Op::Migrate || (op == Op::Rmi && sub.is_none());
    let podman_root = PathBuf::from(get("podmanRoot"));
    if needs_source {
        is_dir(&podman_root).map_err(|e| UsageError(format!("podmanRoot. Podman root directory: {e}")))?;
    }
    let store = PathBuf::from(store);
    is_dir(&store).map_err(|e| UsageError(format!("roStoragePath. Read-only storage path: {e}")))?;
    let mut mksquashfs = PathBuf::from(get("mksquashfsPath"));
    if needs_source {
        if !is_set("mksquashfsPath") && !mksquashfs.exists() {
            if let Some(found) = find_on_path("mksquashfs") {
                mksquashfs = found;
            }
        }
        is_executable(&mksquashfs).map_err(|e| UsageError(format!("mksquashfsPath. mksquashfs binary: {e}")))?;
    }
    let level_text = get("log-level");
    let log_level =
        Level::parse(&level_text).ok_or_else(|| UsageError(format!("Invalid log level \"{level_text}\"")))?;
    let opts_text = get("mksquashfs-opts");
    let mksquashfs_opts = if opts_text.is_empty() {
        None
    } else {
        Some(crate::shellwords::split(&opts_text).map_err(|e| UsageError(format!("invalid mksquashfs-opts: {e}")))?)
    };
    let timeout_text = get("lock-timeout");
    let lock_timeout = Some(
        parse_duration(&timeout_text).ok_or_else(|| UsageError(format!("invalid lock-timeout \"{timeout_text}\"")))?,
    );
    let umask_text = get("umask");
    let umask = u32::from_str_radix(&umask_text, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| UsageError(format!("invalid umask \"{umask_text}\" (octal, e.g. 022)")))?;
    if op == Op::Migrate && umask & 0o444 != 0 {
        return Err(UsageError(format!("umask {umask_text} would make store files unreadable")));
    }
    Ok(Request::Run(Config {
        op,
        image,
        podman_root,
        store,
        mksquashfs,
        mksquashfs_opts,
        log_level,
        lock_timeout,
        umask,
        json: get("json") == "true",
        fix: get("fix") == "true",
    }))
}

/// parallax's `IsDir`: a stat error, or `<p> is not a directory`.
fn is_dir(path: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", path.display())),
        Err(e) => Err(format!("stat {}: {}", path.display(), io_text(&e))),
    }
}

/// parallax's `IsExecutable`.
fn is_executable(path: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(format!("{} is a directory, not an executable", path.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(format!("{} is not executable", path.display())),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("stat {}: {}", path.display(), io_text(&e))),
    }
}

/// The first executable `name` on `$PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// `30s`, `5m`, `1h30m`, `1.5s`, or a plain number of seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    if let Ok(secs) = text.parse::<f64>() {
        return (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Request, UsageError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn err(args: &[&str]) -> String {
        match parse_args(args) {
            Err(UsageError(m)) => m,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn validation_order_like_parallax() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_str().unwrap().to_string();
        let file = tmp.path().join("f");
        fs::write(&file, b"").unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(err(&[]), "Must specify either -migrate or -rmi");
        assert_eq!(err(&["-migrate", "-rmi", "-image", "x"]), "Must specify either -migrate or -rmi");
        assert_eq!(err(&["-migrate"]), "Must specify -image image (e.g. -image ubuntu:latest)");
        assert_eq!(err(&["--migrate", "foo", "--image", "x"]), "Must specify -image image (e.g. -image ubuntu:latest)");
        assert_eq!(
            err(&["-migrate", "-image", "x", "-podmanRoot", "/nonexistent"]),
            "podmanRoot. Podman root directory: stat /nonexistent: no such file or directory"
        );
        assert_eq!(
            err(&["-rmi", "-image", "x", "-podmanRoot", &d, "-roStoragePath", f]),
            format!("roStoragePath. Read-only storage path: {f} is not a directory")
        );
        assert_eq!(
            err(&["-migrate", "-image", "x", "-podmanRoot", &d, "-roStoragePath", &d, "-mksquashfsPath", &d]),
            format!("mksquashfsPath. mksquashfs binary: {d} is a directory, not an executable")
        );
        assert_eq!(
            err(&["-migrate", "-image", "x", "-podmanRoot", &d, "-roStoragePath", &d, "-mksquashfsPath", f]),
            format!("mksquashfsPath. mksquashfs binary: {f} is not executable")
        );
        let sh = "/bin/sh";
        let base = ["-migrate", "-image", "x", "-podmanRoot", &d, "-roStoragePath", &d, "-mksquashfsPath", sh];
        fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            [base, extra].concat()
        }
        assert_eq!(err(&with(&base, &["-log-level", "loud"])), "Invalid log level \"loud\"");
        assert_eq!(
            err(&with(&base, &["-mksquashfs-opts", "-e `id`"])),
            "invalid mksquashfs-opts: command substitution (`) is not executed: -e `id`"
        );
        match parse_args(&with(&base, &["--mksquashfs-opts", "-comp 'zstd'", "--log-level=DEBUG"])).unwrap() {
            Request::Run(c) => {
                assert_eq!(c.op, Op::Migrate);
                assert_eq!(c.mksquashfs_opts, Some(vec!["-comp".to_string(), "zstd".to_string()]));
                assert_eq!(c.log_level, Level::Debug);
                assert_eq!(c.lock_timeout, Some(Duration::from_secs(600)));
                assert_eq!(c.umask, 0o022);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_version_and_subcommands() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_str().unwrap();
        assert!(matches!(parse_args(&["-help"]), Ok(Request::Help)));
        assert!(matches!(parse_args(&["-h", "-migrate"]), Ok(Request::Help)));
        assert!(matches!(parse_args(&["-version"]), Ok(Request::Version)));
        assert!(matches!(parse_args(&["--version", "-rmi"]), Ok(Request::Version)));
        assert_eq!(err(&["-unknownflag"]), "flag provided but not defined: -unknownflag");
        match parse_args(&["rmi", "alpine:3.18", "--roStoragePath", d, "--podmanRoot", "/nonexistent"]).unwrap() {
            Request::Run(c) => assert_eq!((c.op, c.image.as_str()), (Op::Rmi, "alpine:3.18")),
            other => panic!("{other:?}"),
        }
        match parse_args(&["verify", d, "--json", "--fix"]).unwrap() {
            Request::Run(c) => assert!(c.op == Op::Verify && c.json && c.fix && c.store == Path::new(d)),
            other => panic!("{other:?}"),
        }
        assert_eq!(err(&["list", d, "extra"]), "unexpected argument: extra");
        assert_eq!(err(&["rmi", "--roStoragePath", d]), "Must specify -image image (e.g. -image ubuntu:latest)");
    }

    #[test]
    fn banner_lists_every_flag_like_go() {
        let b = banner();
        assert!(b.starts_with("\nParallax\nOCI image migration tool for Podman on HPC systems\n\nUsage:\n"));
        assert!(b.contains(
            "  --podmanRoot\tPath to Podman root storage directory (default \"/var/lib/containers/storage\")\n"
        ));
        assert!(b.contains("  --migrate\tMigrates an image\n"));
        assert!(b.contains("  --mksquashfs-opts\tParameters for mksquashfs\n"));
    }

    #[test]
    fn durations() {
        let cases = [
            ("0", Some(0.0)),
            ("30s", Some(30.0)),
            ("5m", Some(300.0)),
            ("1h30m", Some(5400.0)),
            ("2.5", Some(2.5)),
            ("x", None),
            ("5d", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).map(|d| d.as_secs_f64()), want, "{text}");
        }
    }
}
