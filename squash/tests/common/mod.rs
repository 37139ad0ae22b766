//! Shared by the squash integration tests: the fixture tree, images built from it with
//! mksquashfs, a raw view of an image's metadata blocks (to craft corruptions at exact fields),
//! and a walk that calls every read API of the reader.
#![allow(dead_code)]

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;

use parallaxfs_squash::{block_kind, check, Image, InodeRef, Kind};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Fixed timestamps so images are reproducible.
const EPOCH: &str = "1600000000";

/// A scratch directory under cargo's per-target tmp dir, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", env!("CARGO_CRATE_NAME")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` bytes: the first `text_part` fraction text-like (compressible), the rest random.
pub fn content(rng: &mut SmallRng, n: usize, text_part: f64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "squash",
        "block",
        "inode",
        "fragment",
        "directory",
        "lookup",
        "the",
        "of",
        "and",
        "cache",
        "zstd",
        "read",
        "layer",
        "overlay",
        "mount",
        "image",
        "table",
        "index",
        "metadata",
        "kernel",
    ];
    let text_len = (n as f64 * text_part) as usize;
    let mut out = Vec::with_capacity(n);
    while out.len() < text_len {
        out.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
        out.push(if rng.gen_range(0..12) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(text_len);
    while out.len() < n {
        out.push(rng.gen());
    }
    out
}

/// Name of the `i`th entry of the 300-entry directory.
pub fn big_name(i: usize) -> String {
    format!("entry-with-a-fairly-long-name-number-{i:04}")
}

/// Builds the standard fixture tree under `root` (which must not exist): directories,
/// small, multi-block and sparse files, symlinks (relative, absolute, long), hard links, user.
/// and trusted. xattrs (one value repeated, so stored out of line), a fifo, a socket, devices,
/// an empty directory, `d1/d2/d3` where `d2` holds only `d3`, and a 300-entry directory (so
/// an extended directory inode with an index exists).
pub fn build_tree(root: &Path) {
    use std::fs;
    let mut rng = SmallRng::seed_from_u64(0x5eed_f1c5);
    let w = |p: &str, data: &[u8]| fs::write(root.join(p), data).unwrap();
    for d in ["d1/d2/d3", "links", "e", "big", "d4/sub"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    w("small.txt", b"hello, squash\n");
    w("empty", b"");
    w("multi.bin", &content(&mut rng, 100_123, 0.5));
    w("text.txt", &content(&mut rng, 40_000, 1.0));
    let mut sparse = vec![0u8; 200_000];
    sparse.extend_from_slice(&content(&mut rng, 100_000, 0.7));
    w("sparse.bin", &sparse);
    w("hl-a", &content(&mut rng, 20_000, 0.3));
    fs::hard_link(root.join("hl-a"), root.join("d1/hl-b")).unwrap();
    w("d1/d2/d3/deep.txt", b"deep\n");
    w("d4/sub/x", &content(&mut rng, 9000, 0.9));
    w("d4/y", &content(&mut rng, 5000, 0.0));
    w("eight.txt", b"8");
    std::os::unix::fs::symlink("../small.txt", root.join("links/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("links/abs")).unwrap();
    std::os::unix::fs::symlink("../d1", root.join("links/dir")).unwrap();
    std::os::unix::fs::symlink("ab/".repeat(1000), root.join("links/long")).unwrap();
    for i in 0..300 {
        let name = root.join("big").join(big_name(i));
        match i % 50 {
            7 => std::os::unix::fs::symlink(format!("target-{i}"), &name).unwrap(),
            13 => fs::create_dir(&name).unwrap(),
            _ => fs::write(&name, format!("{i}\n").repeat(i % 5 + 1)).unwrap(),
        }
    }
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());
    // Devices need root; the fixture is still useful without them.
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let _ = mknod(&root.join("chr"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(1, 3));
    let _ = mknod(&root.join("blk"), SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), makedev(7, 300));
    let shared = content(&mut rng, 300, 1.0);
    for p in ["small.txt", "hl-a", "text.txt"] {
        xattr::set(root.join(p), "user.shared", &shared).unwrap();
    }
    xattr::set(root.join("small.txt"), "user.comment", b"a small file").unwrap();
    xattr::set(root.join("eight.txt"), "user.eight", b"12345678").unwrap();
    xattr::set(root.join("d4"), "user.dir", b"x").unwrap();
    // trusted.* needs CAP_SYS_ADMIN.
    let _ = xattr::set(root.join("d1"), "trusted.overlay.opaque", b"y");
}

/// Runs mksquashfs `src` → `dst` with reproducible times and `args`.
pub fn mksquashfs(src: &Path, dst: &Path, args: &[&str]) {
    let _ = std::fs::remove_file(dst);
    let out = Command::new("mksquashfs")
        .arg(src)
        .arg(dst)
        .args(["-all-time", EPOCH, "-mkfs-time", EPOCH, "-quiet", "-no-progress"])
        .args(args)
        .output()
        .expect("mksquashfs (squashfs-tools) must be installed");
    assert!(
        out.status.success(),
        "mksquashfs {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Superblock fields, read raw (little-endian) so tests can compute offsets themselves.
#[derive(Debug, Clone, Copy)]
pub struct RawSb {
    pub inodes: u32,
    pub block_size: u32,
    pub fragments: u32,
    pub no_ids: u16,
    pub root: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub xattr_table: u64,
    pub inode_table: u64,
    pub dir_table: u64,
    pub frag_table: u64,
    pub export_table: u64,
}

pub fn rd(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = 0u64;
    for i in 0..width {
        v |= u64::from(b[at + i]) << (8 * i);
    }
    v
}

pub fn wr(b: &mut [u8], at: usize, width: usize, v: u64) {
    for i in 0..width {
        b[at + i] = (v >> (8 * i)) as u8;
    }
}

impl RawSb {
    pub fn parse(b: &[u8]) -> RawSb {
        RawSb {
            inodes: rd(b, 4, 4) as u32,
            block_size: rd(b, 12, 4) as u32,
            fragments: rd(b, 16, 4) as u32,
            no_ids: rd(b, 26, 2) as u16,
            root: rd(b, 32, 8),
            bytes_used: rd(b, 40, 8),
            id_table: rd(b, 48, 8),
            xattr_table: rd(b, 56, 8),
            inode_table: rd(b, 64, 8),
            dir_table: rd(b, 72, 8),
            frag_table: rd(b, 80, 8),
            export_table: rd(b, 88, 8),
        }
    }

    /// End of the directory table: the first table after it.
    pub fn dir_table_end(&self) -> u64 {
        [self.frag_table, self.export_table, self.id_table, self.xattr_table]
            .into_iter()
            .filter(|&t| t != u64::MAX)
            .min()
            .unwrap_or(self.bytes_used)
    }
}

/// One metadata block as found on disk.
#[derive(Debug, Clone, Copy)]
pub struct MdBlk {
    /// Offset of its header relative to its table's start.
    pub rel: u64,
    /// Absolute offset of the header.
    pub at: u64,
    /// On-disk payload length.
    pub len: usize,
    pub uncompressed: bool,
}

/// A chain of metadata blocks from `start` up to `end`.
pub fn md_chain(b: &[u8], start: u64, end: u64) -> Vec<MdBlk> {
    let mut out = Vec::new();
    let mut at = start;
    while at + 2 <= end && (at as usize) + 2 <= b.len() {
        let h = rd(b, at as usize, 2);
        let len = (h & 0x7fff) as usize;
        out.push(MdBlk { rel: at - start, at, len, uncompressed: h & 0x8000 != 0 });
        if len == 0 {
            break;
        }
        at += 2 + len as u64;
    }
    out
}

/// Raw view of an image with uncompressed metadata (`-noI -noX`): maps logical positions in
/// the inode and directory tables to file offsets.
#[derive(Debug, Clone)]
pub struct Raw {
    pub sb: RawSb,
    pub inode_blocks: Vec<MdBlk>,
    pub dir_blocks: Vec<MdBlk>,
}

impl Raw {
    pub fn new(b: &[u8]) -> Raw {
        let sb = RawSb::parse(b);
        Raw {
            sb,
            inode_blocks: md_chain(b, sb.inode_table, sb.dir_table),
            dir_blocks: md_chain(b, sb.dir_table, sb.dir_table_end()),
        }
    }

    /// Absolute offset of byte `k` after `(block, offset)` in a table; `None` if it does not
    /// lie in an uncompressed block of the chain.
    pub fn locate(blocks: &[MdBlk], block: u64, offset: usize, k: usize) -> Option<usize> {
        let mut i = blocks.iter().position(|m| m.rel == block)?;
        let mut pos = offset + k;
        loop {
            let m = blocks.get(i)?;
            if !m.uncompressed {
                return None;
            }
            if pos < m.len {
                return Some(m.at as usize + 2 + pos);
            }
            pos -= m.len;
            i += 1;
        }
    }

    pub fn inode_at(&self, r: InodeRef, k: usize) -> usize {
        Raw::locate(&self.inode_blocks, r.0 >> 16, (r.0 & 0xffff) as usize, k).expect("inode byte in the image")
    }

    pub fn read_inode(&self, b: &[u8], r: InodeRef, k: usize, width: usize) -> u64 {
        (0..width).map(|i| u64::from(b[self.inode_at(r, k + i)]) << (8 * i)).sum()
    }

    pub fn write_inode(&self, b: &mut [u8], r: InodeRef, k: usize, width: usize, v: u64) {
        for i in 0..width {
            let at = self.inode_at(r, k + i);
            b[at] = (v >> (8 * i)) as u8;
        }
    }

    /// `(start_block, offset, listing length)` of a directory inode, from its raw fields.
    pub fn dir_listing(&self, b: &[u8], r: InodeRef) -> (u64, usize, usize) {
        match self.read_inode(b, r, 0, 2) {
            1 => (
                self.read_inode(b, r, 16, 4),
                self.read_inode(b, r, 26, 2) as usize,
                self.read_inode(b, r, 24, 2) as usize - 3,
            ),
            8 => (
                self.read_inode(b, r, 24, 4),
                self.read_inode(b, r, 34, 2) as usize,
                self.read_inode(b, r, 20, 4) as usize - 3,
            ),
            t => panic!("inode type {t} is not a directory"),
        }
    }

    /// Absolute offset of byte `k` of a directory's listing.
    pub fn listing_at(&self, b: &[u8], dir: InodeRef, k: usize) -> usize {
        let (block, offset, _) = self.dir_listing(b, dir);
        Raw::locate(&self.dir_blocks, block, offset, k).expect("listing byte in the image")
    }

    /// Positions (listing offsets) of every header and entry of a directory:
    /// `(headers, entries as (offset, name))`.
    pub fn listing(&self, b: &[u8], dir: InodeRef) -> (Vec<usize>, Vec<(usize, Vec<u8>)>) {
        let (_, _, len) = self.dir_listing(b, dir);
        let byte = |k: usize| b[self.listing_at(b, dir, k)];
        let field = |k: usize, w: usize| (0..w).map(|i| u64::from(byte(k + i)) << (8 * i)).sum::<u64>();
        let (mut headers, mut entries) = (Vec::new(), Vec::new());
        let mut pos = 0;
        while pos < len {
            headers.push(pos);
            let count = field(pos, 4) as usize + 1;
            pos += 12;
            for _ in 0..count {
                let name_len = field(pos + 6, 2) as usize + 1;
                let name = (0..name_len).map(|i| byte(pos + 8 + i)).collect();
                entries.push((pos, name));
                pos += 8 + name_len;
            }
        }
        (headers, entries)
    }
}

/// Every metadata-block start of an image (inode and directory tables, the blocks of the
/// fixed tables, their indexes, the xattr tables), as absolute offsets, sorted.
pub fn md_boundaries(b: &[u8]) -> Vec<u64> {
    let sb = RawSb::parse(b);
    let mut out: Vec<u64> = Vec::new();
    out.extend(md_chain(b, sb.inode_table, sb.dir_table).iter().map(|m| m.at));
    out.extend(md_chain(b, sb.dir_table, sb.dir_table_end()).iter().map(|m| m.at));
    let entry_sizes = [(sb.frag_table, sb.fragments as u64, 16), (sb.export_table, sb.inodes as u64, 8)];
    let mut index_tables: Vec<(u64, u64)> = entry_sizes
        .iter()
        .filter(|(t, _, _)| *t != u64::MAX)
        .map(|&(t, n, size)| (t, (n * size).div_ceil(8192)))
        .collect();
    index_tables.push((sb.id_table, (u64::from(sb.no_ids) * 4).div_ceil(8192)));
    if sb.xattr_table != u64::MAX && (sb.xattr_table as usize) + 16 <= b.len() {
        let x = sb.xattr_table as usize;
        let kv = rd(b, x, 8);
        let ids = rd(b, x + 8, 4);
        out.push(sb.xattr_table);
        if kv < sb.xattr_table {
            out.extend(md_chain(b, kv, sb.xattr_table).iter().map(|m| m.at));
        }
        index_tables.push((sb.xattr_table + 16, (ids * 16).div_ceil(8192)));
    }
    for (index, blocks) in index_tables {
        out.push(index);
        for i in 0..blocks {
            let at = (index + i * 8) as usize;
            if at + 8 <= b.len() {
                out.push(rd(b, at, 8));
            }
        }
    }
    if rd(b, 24, 2) & (1 << 10) != 0 {
        out.push(96);
    }
    out.retain(|&o| o < b.len() as u64);
    out.sort_unstable();
    out.dedup();
    out
}

/// Every path of the image with its inode reference (walks the clean image).
pub fn all_inodes(img: &Image) -> Vec<(Vec<u8>, InodeRef, Kind)> {
    let mut out = Vec::new();
    let mut stack = vec![(b"/".to_vec(), img.root())];
    while let Some((path, r)) = stack.pop() {
        let inode = img.inode(r).unwrap();
        out.push((path.clone(), r, inode.kind));
        if inode.kind == Kind::Dir {
            for e in img.read_dir(&inode).unwrap() {
                let mut p = path.clone();
                if p.len() > 1 {
                    p.push(b'/');
                }
                p.extend_from_slice(&e.name);
                stack.push((p, e.inode_ref));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What one path of an image looks like, contents included (for comparing readers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub ino: u32,
    pub link: Option<Box<[u8]>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content_hash: u64,
}

/// FNV-1a, enough to compare contents.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Reads a whole file through `read_at` in `chunk`-byte pieces.
pub fn read_all(img: &Image, inode: &parallaxfs_squash::Inode, chunk: usize) -> parallaxfs_squash::Result<Vec<u8>> {
    let mut out = vec![0u8; inode.size as usize];
    let mut pos = 0;
    while pos < out.len() {
        let end = (pos + chunk).min(out.len());
        let n = img.read_at(inode, pos as u64, &mut out[pos..end])?;
        assert_eq!(n, end - pos, "short read inside the file");
        pos = end;
    }
    Ok(out)
}

/// Every path with attributes, xattrs and a content hash, sorted by path.
pub fn describe(img: &Image) -> Vec<Record> {
    all_inodes(img)
        .into_iter()
        .map(|(path, r, _)| {
            let inode = img.inode(r).unwrap();
            let mut xattrs: Vec<_> = img
                .list_xattr(&inode)
                .unwrap()
                .into_iter()
                .map(|n| {
                    let v = img.get_xattr(&inode, &n).unwrap().unwrap();
                    (n, v)
                })
                .collect();
            xattrs.sort();
            let content_hash = match inode.kind {
                Kind::File => fnv(&read_all(img, &inode, 65536).unwrap()),
                _ => 0,
            };
            Record {
                path,
                kind: inode.kind,
                mode: inode.mode(),
                uid: inode.uid,
                gid: inode.gid,
                size: inode.size,
                mtime: inode.mtime,
                nlink: inode.nlink,
                rdev: inode.rdev,
                ino: inode.ino,
                link: img.read_link(&inode).ok(),
                xattrs,
                content_hash,
            }
        })
        .collect()
}

/// Touches everything a mount would: `check`, then a walk (visited set, budget) that reads
/// every inode, lists and gets xattrs, reads directories whole and from random cookies, looks
/// up every name and some absent ones, reads files at random and edge offsets, walks block
/// maps, reads links, resolves paths and looks inodes up by number. Errors are expected on a
/// corrupt image and ignored; only panics and hangs matter to the caller.
pub fn exercise(img: &Image, rng: &mut SmallRng) {
    let _ = check(img);
    let sb = img.superblock().clone();
    let bs = u64::from(sb.block_size);
    for ino in [0, 1, sb.inodes / 2, sb.inodes, sb.inodes.wrapping_add(1), u32::MAX, rng.gen()] {
        let _ = img.inode_by_number(ino);
    }
    let mut buf = vec![0u8; 3 * bs as usize + 7];
    let mut seen = HashSet::new();
    let mut stack = vec![img.root()];
    let mut budget = 3000usize;
    while let Some(r) = stack.pop() {
        if budget == 0 {
            break;
        }
        budget -= 1;
        if !seen.insert(r) {
            continue;
        }
        let Ok(inode) = img.inode(r) else { continue };
        if let Ok(names) = img.list_xattr(&inode) {
            for n in &names {
                let _ = img.get_xattr(&inode, n);
            }
        }
        for n in [&b"user.absent"[..], b"trusted.overlay.opaque", b"bogus", b""] {
            let _ = img.get_xattr(&inode, n);
        }
        let _ = img.read_link(&inode);
        match inode.kind {
            Kind::Dir => {
                let _ = img.read_at(&inode, 0, &mut buf[..16]);
                let mut entries = Vec::new();
                let mut cookies = Vec::new();
                let _ = img.read_dir_from(&inode, 0, &mut |e, next| {
                    entries.push(e.clone());
                    cookies.push(next);
                    if entries.len() >= 4000 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                });
                for e in &entries {
                    let _ = img.lookup(&inode, &e.name);
                    stack.push(e.inode_ref);
                }
                let long = [b'z'; 300];
                for name in [&b""[..], b".", b"..", b"a/b", b"\0", &long[..], b"zzzz", b"A", b"~"] {
                    let _ = img.lookup(&inode, name);
                }
                if let Some(e) = entries.get(rng.gen_range(0..entries.len().max(1))) {
                    let mut n = e.name.to_vec();
                    n.push(b'~');
                    let _ = img.lookup(&inode, &n);
                    n.truncate(n.len().saturating_sub(2));
                    let _ = img.lookup(&inode, &n);
                }
                for _ in 0..4 {
                    let cookie = match rng.gen_range(0..4) {
                        0 if !cookies.is_empty() => cookies[rng.gen_range(0..cookies.len())],
                        1 => u64::MAX - rng.gen_range(0..4),
                        _ => rng.gen_range(0..inode.size.saturating_add(16)),
                    };
                    let mut left = rng.gen_range(1..8);
                    let _ = img.read_dir_from(&inode, cookie, &mut |_, _| {
                        left -= 1;
                        if left == 0 {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                }
            }
            Kind::File => {
                let _ = img.read_dir(&inode);
                let _ = img.lookup(&inode, b"x");
                if let Ok(Some(map)) = img.block_map(&inode) {
                    for k in 0..map.len() {
                        let _ = block_kind(map.block(k).1);
                    }
                }
                let size = inode.size;
                let mut offsets = vec![0, size.saturating_sub(1), size, size.saturating_add(1), u64::MAX, bs - 1, bs];
                let k = size / bs.max(1);
                offsets.extend([k * bs, (k * bs).saturating_sub(1), k * bs + 1]);
                for _ in 0..6 {
                    offsets.push(rng.gen_range(0..size.saturating_add(2)));
                }
                for off in offsets {
                    let len = rng.gen_range(1..=buf.len());
                    let _ = img.read_at(&inode, off, &mut buf[..len]);
                }
            }
            _ => {
                let _ = img.read_at(&inode, 0, &mut buf[..1]);
                let _ = img.read_dir(&inode);
            }
        }
    }
    let deep = format!("/big/{}", big_name(150));
    for p in [&b"/d1/d2/d3/deep.txt"[..], deep.as_bytes(), b"/links/rel", b"/nope/x", b"/small.txt/x", b"//./d4/sub"] {
        let _ = img.resolve(p);
    }
    let _ = img.stats();
}
