//! `parallaxfs`: the command line. Parses arguments, sets up logging, daemonizes and calls the
//! libraries; holds no filesystem logic of its own.
//!
//! Forms:
//! - `parallaxfs -o lowerdir=A:B[,...] [-f] [-d] [SOURCE] MOUNTPOINT`: the fuse-overlayfs form
//!   Podman uses for a `mount_program`;
//! - `parallaxfs mount --lower PATH... MOUNTPOINT` and `parallaxfs umount MOUNTPOINT`;
//! - `parallaxfs image info|ls|stat|cat|check IMAGE [PATH]`: inspect an image without mounting.
#![deny(unsafe_code)]

mod daemon;
mod image;
mod mount;
mod options;
mod timefmt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::options::MountRequest;

const AFTER_HELP: &str = "\
Podman mount_program form (as fuse-overlayfs):
  parallaxfs [-f] [-d] -o lowerdir=LAYER[:LAYER...][,OPTION...] [SOURCE] MOUNTPOINT
  LAYER is a directory or a SquashFS image file, topmost first. Without upperdir the union is
  read-only. OPTION: squash_io=auto|mmap|pread, prefetch=N (read-only: N threads read the
  small files of each listed directory into the page cache ahead of their readers; by default
  two threads do it for a directory once one of its files is read; 0: never), threads=N
  (FUSE request threads, 1-64; default one per core, at least 4), FUSE words
  (allow_other, suid, nodev, ...); unknown options are warned about and ignored.

Environment: PARALLAXFS_LOG sets the log filter (e.g. debug); PARALLAXFS_LOG_FILE sends the
log of a daemonized mount to a file.";

/// One FUSE process per container mount: SquashFS images plus a copy-on-write upper layer.
#[derive(Debug, Parser)]
#[command(name = "parallaxfs", version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect a SquashFS image without mounting it.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Mount a union of layers (read-only without --upper).
    Mount(MountArgs),
    /// Unmount a parallaxfs mount; its process then exits.
    Umount {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// Detach now, finish when the last user is gone.
        #[arg(short, long)]
        lazy: bool,
    },
}

#[derive(Debug, clap::Args)]
struct MountArgs {
    /// A lower layer: a directory or a SquashFS image file; repeat, topmost first.
    #[arg(long = "lower", required = true)]
    lowers: Vec<PathBuf>,
    /// The writable upper directory (copy-on-write); needs --work.
    #[arg(long = "upper", requires = "work")]
    upper: Option<PathBuf>,
    /// The work directory, on the same filesystem as --upper.
    #[arg(long = "work", requires = "upper")]
    work: Option<PathBuf>,
    /// Stay in the foreground.
    #[arg(short, long)]
    foreground: bool,
    /// How to read images: auto (pread on network filesystems), mmap or pread.
    #[arg(long, default_value = "auto")]
    squash_io: String,
    /// Further options, as with -o in the mount_program form.
    #[arg(short, long)]
    options: Vec<String>,
    /// Where to mount.
    mountpoint: PathBuf,
}

fn init_logging(debug: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARALLAXFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if debug { "debug" } else { "warn" }));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match std::env::var_os("PARALLAXFS_LOG_FILE").map(|p| std::fs::OpenOptions::new().create(true).append(true).open(p))
    {
        Some(Ok(file)) => builder.with_ansi(false).with_writer(std::sync::Mutex::new(file)).init(),
        _ => builder.with_writer(std::io::stderr).init(),
    }
}

fn mount_request(args: MountArgs) -> anyhow::Result<MountRequest> {
    let mut req = MountRequest {
        foreground: args.foreground,
        squash_io: args.squash_io.parse().map_err(anyhow::Error::msg)?,
        ..MountRequest::default()
    };
    let cwd = std::env::current_dir()?;
    req.lowers = args.lowers.iter().map(|p| cwd.join(p)).collect();
    req.mountpoint = cwd.join(&args.mountpoint);
    req.upper = args.upper.as_ref().map(|p| cwd.join(p));
    req.work = args.work.as_ref().map(|p| cwd.join(p));
    for o in &args.options {
        for item in options::split_options(o) {
            req.apply(&item)?;
        }
    }
    Ok(req)
}

fn run(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let first = args.first().map(String::as_str);
    if args.iter().any(|a| a == "--version" || a == "-V") && !matches!(first, Some("image")) {
        println!("parallaxfs: version {}", env!("CARGO_PKG_VERSION"));
        return Ok(ExitCode::SUCCESS);
    }
    let subcommand = matches!(first, Some("image" | "mount" | "umount" | "help" | "--help" | "-h"));
    if !subcommand {
        let req = MountRequest::parse(&args)?;
        init_logging(req.debug);
        return mount::run(req);
    }
    let cli = Cli::parse();
    init_logging(false);
    match cli.command {
        Command::Image(cmd) => image::run(cmd),
        Command::Mount(m) => mount::run(mount_request(m)?),
        Command::Umount { mountpoint, lazy } => mount::umount(&mountpoint, lazy),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("parallaxfs: {err:#}");
            ExitCode::FAILURE
        }
    }
}
