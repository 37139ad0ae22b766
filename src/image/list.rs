//! `image ls` and `image stat`: listings in the format of `unsquashfs -lln` (times in UTC).

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use parallaxfs_squash::{Image, Inode, Kind};

use crate::timefmt;

/// What `ls` prints.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub long: bool,
    pub recurse: bool,
}

/// `drwxr-xr-x`-style mode string, with setuid/setgid/sticky as `ls` shows them.
pub fn mode_string(kind: Kind, perm: u16) -> String {
    let type_char = match kind {
        Kind::Dir => 'd',
        Kind::File => '-',
        Kind::Symlink => 'l',
        Kind::BlockDev => 'b',
        Kind::CharDev => 'c',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
    };
    let bit = |mask: u16, c: char| if perm & mask != 0 { c } else { '-' };
    let special = |exec: u16, special: u16, set: char, unset: char| match (perm & exec != 0, perm & special != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        type_char,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// One `unsquashfs -lln` line (without the newline).
fn long_line(image: &Image, inode: &Inode, name: &[u8]) -> Result<Vec<u8>> {
    let owner = format!("{}/{}", inode.uid, inode.gid);
    // unsquashfs pads owner + size to 25 columns.
    let width = 25usize.saturating_sub(owner.len() - 1);
    let size = match inode.kind {
        Kind::BlockDev | Kind::CharDev => {
            format!("{:>w$},{:>3}", inode.rdev_major(), inode.rdev_minor(), w = width.saturating_sub(4))
        }
        _ => format!("{:>width$}", inode.size),
    };
    let mut line =
        format!("{} {} {} {} ", mode_string(inode.kind, inode.perm), owner, size, timefmt::short(inode.mtime))
            .into_bytes();
    line.extend_from_slice(name);
    if inode.kind == Kind::Symlink {
        line.extend_from_slice(b" -> ");
        line.extend_from_slice(&image.read_link(inode)?);
    }
    Ok(line)
}

fn emit(out: &mut impl Write, image: &Image, inode: &Inode, name: &[u8], long: bool) -> Result<()> {
    if long {
        out.write_all(&long_line(image, inode, name)?)?;
    } else {
        out.write_all(name)?;
    }
    out.write_all(b"\n")?;
    Ok(())
}

/// Lists `inode` (found at `path`) and, for a directory, what is below it. Paths are printed
/// under `squashfs-root`, as unsquashfs does, so the two listings can be compared directly.
pub fn print(out: &mut impl Write, image: &Image, inode: Arc<Inode>, path: &str, opts: Options) -> Result<()> {
    let mut prefix = b"squashfs-root".to_vec();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        prefix.push(b'/');
        prefix.extend_from_slice(c.as_bytes());
    }
    // Explicit stack: pre-order, entries in name order, no recursion depth limit.
    let mut stack = vec![(prefix, inode, 0usize)];
    while let Some((name, inode, depth)) = stack.pop() {
        emit(out, image, &inode, &name, opts.long)?;
        if inode.kind != Kind::Dir || (depth > 0 && !opts.recurse) {
            continue;
        }
        let entries = image.read_dir(&inode)?;
        for entry in entries.into_iter().rev() {
            let mut child = name.clone();
            child.push(b'/');
            child.extend_from_slice(&entry.name);
            stack.push((child, image.inode(entry.inode_ref)?, depth + 1));
        }
    }
    Ok(())
}

/// `image stat`: every attribute, one per line.
pub fn stat(out: &mut impl Write, image: &Image, inode: &Inode, path: &str) -> Result<()> {
    writeln!(out, "  File: {path}")?;
    let kind = match inode.kind {
        Kind::Dir => "directory",
        Kind::File => "regular file",
        Kind::Symlink => "symbolic link",
        Kind::BlockDev => "block special file",
        Kind::CharDev => "character special file",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    };
    writeln!(out, "  Size: {}\tBlocks: {}\tType: {kind}", inode.size, inode.blocks_512())?;
    writeln!(
        out,
        "  Mode: ({:04o}/{})\tUid: {}\tGid: {}",
        inode.perm,
        mode_string(inode.kind, inode.perm),
        inode.uid,
        inode.gid
    )?;
    writeln!(out, " Inode: {}\tLinks: {}\tRef: {:#x}", inode.ino, inode.nlink, inode.inode_ref.0)?;
    if matches!(inode.kind, Kind::BlockDev | Kind::CharDev) {
        writeln!(out, "Device: {},{}", inode.rdev_major(), inode.rdev_minor())?;
    }
    if inode.kind == Kind::File && inode.sparse > 0 {
        writeln!(out, "Sparse: {} bytes", inode.sparse)?;
    }
    if inode.kind == Kind::Symlink {
        writeln!(out, "Target: {}", String::from_utf8_lossy(&image.read_link(inode)?))?;
    }
    writeln!(out, "Modify: {} UTC ({})", timefmt::short(inode.mtime), inode.mtime)?;
    for name in image.list_xattr(inode)? {
        let value = image.get_xattr(inode, &name)?.unwrap_or_default();
        writeln!(out, " Xattr: {}={}", String::from_utf8_lossy(&name), escape(&value))?;
    }
    Ok(())
}

/// Printable form of an xattr value: text as is, anything else as `0x` hex.
fn escape(v: &[u8]) -> String {
    if v.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("\"{}\"", String::from_utf8_lossy(v))
    } else {
        let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_match_ls() {
        assert_eq!(mode_string(Kind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Kind::File, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(Kind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(Kind::Dir, 0o1776), "drwxrwxrwT");
        assert_eq!(mode_string(Kind::Fifo, 0o644), "prw-r--r--");
    }
}
