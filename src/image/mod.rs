//! `parallaxfs image ...`: inspect a SquashFS image without mounting it.

mod info;
mod list;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use parallaxfs_squash::{check, Image, Inode, IoMode, Kind, OpenOptions};

/// Subcommands of `parallaxfs image`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Show the superblock, as `unsquashfs -s` does.
    Info(ImageArg),
    /// List a tree (recursively, like `unsquashfs -ls`; `-l` like `unsquashfs -lln`).
    Ls(LsArgs),
    /// Show every attribute of one path.
    Stat(PathArgs),
    /// Write a regular file's bytes to standard output.
    Cat(PathArgs),
    /// Read every inode, directory, xattr and block; exit 1 naming the first fault.
    Check(ImageArg),
}

/// Options shared by every subcommand.
#[derive(Debug, Args)]
pub struct ImageArg {
    /// The SquashFS image file.
    image: PathBuf,
    /// How to read the image: auto (pread on network filesystems, else mmap), mmap or pread.
    #[arg(long, default_value = "auto", value_parser = parse_io)]
    io: IoMode,
}

/// `IMAGE PATH`.
#[derive(Debug, Args)]
pub struct PathArgs {
    #[command(flatten)]
    image: ImageArg,
    /// Path inside the image, e.g. /etc/passwd.
    path: String,
}

/// Options of `image ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    image: ImageArg,
    /// Directory (or file) inside the image to list; the root by default.
    #[arg(default_value = "/")]
    path: String,
    /// Long format: mode, numeric owner, size, time (UTC), name, symlink target.
    #[arg(short, long)]
    long: bool,
    /// List only PATH and its direct entries, not the whole subtree.
    #[arg(short = 'd', long)]
    no_recurse: bool,
}

fn parse_io(s: &str) -> std::result::Result<IoMode, String> {
    s.parse()
}

fn open(arg: &ImageArg) -> Result<Image> {
    let file = std::fs::File::open(&arg.image).with_context(|| arg.image.display().to_string())?;
    let opts = OpenOptions { io: arg.io, ..OpenOptions::default() };
    Image::open_with(file, &opts).with_context(|| arg.image.display().to_string())
}

fn resolve(image: &Image, image_path: &Path, path: &str) -> Result<std::sync::Arc<Inode>> {
    image.resolve(path.as_bytes()).with_context(|| format!("{}: {path}", image_path.display()))
}

/// Runs one `image` subcommand.
pub fn run(cmd: ImageCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        ImageCommand::Info(arg) => {
            let image = open(&arg)?;
            info::print(&mut out, &image, &arg.image)?;
        }
        ImageCommand::Ls(args) => {
            let image = open(&args.image)?;
            let inode = resolve(&image, &args.image.image, &args.path)?;
            let opts = list::Options { long: args.long, recurse: !args.no_recurse };
            list::print(&mut out, &image, inode, &args.path, opts)
                .with_context(|| format!("{}: {}", args.image.image.display(), args.path))?;
        }
        ImageCommand::Stat(args) => {
            let image = open(&args.image)?;
            let inode = resolve(&image, &args.image.image, &args.path)?;
            list::stat(&mut out, &image, &inode, &args.path)
                .with_context(|| format!("{}: {}", args.image.image.display(), args.path))?;
        }
        ImageCommand::Cat(args) => {
            let image = open(&args.image)?;
            let inode = resolve(&image, &args.image.image, &args.path)?;
            if inode.kind != Kind::File {
                bail!("{}: {}: not a regular file", args.image.image.display(), args.path);
            }
            cat(&mut out, &image, &inode).with_context(|| format!("{}: {}", args.image.image.display(), args.path))?;
        }
        ImageCommand::Check(arg) => {
            let image = open(&arg)?;
            match check(&image) {
                Ok(r) => writeln!(
                    out,
                    "{}: ok: {} directories, {} files, {} symlinks, {} special files, {} inodes, {} bytes, {} xattrs",
                    arg.image.display(),
                    r.dirs,
                    r.files,
                    r.symlinks,
                    r.specials,
                    r.inodes,
                    r.bytes,
                    r.xattrs
                )?,
                Err(fault) => bail!("{}: {fault}", arg.image.display()),
            }
        }
    }
    out.flush().or_else(ignore_broken_pipe)?;
    Ok(ExitCode::SUCCESS)
}

fn ignore_broken_pipe(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e)
    }
}

fn cat(out: &mut impl Write, image: &Image, inode: &Inode) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < inode.size {
        let n = image.read_at(inode, offset, &mut buf)?;
        if n == 0 {
            break;
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            return ignore_broken_pipe(e).map_err(Into::into);
        }
        offset += n as u64;
    }
    Ok(())
}
