//! Differential tests of the read-only union against the kernel's overlayfs.
//!
//! Each case generates a stack of 1 to 20 layers from a seed (`union_common::gen_stack`):
//! every file type, hard links, odd names (255 bytes, UTF-8, `.wh`-like but not `.wh.`),
//! owners, setuid/sticky modes, xattrs, whiteouts and opaque directories at every depth. Each
//! layer is a plain directory or a SquashFS image built with `mksquashfs` at test time; the
//! kernel loop-mounts the images and stacks an overlay without upperdir on them.
//!
//! - Encodings the kernel reads (native: char 0/0 whiteouts and `trusted.overlay.opaque=y`;
//!   and a mix adding xattr whiteouts in `opaque=x` directories): the kernel and parallaxfs
//!   mount the very same layers; full walks are compared field by field: names, types,
//!   modes, owners, mtimes, ctimes, sizes (directories too), st_blocks, nlink, rdev, symlink
//!   targets, xattr names and values, SHA-256 of contents.
//! - Encodings the kernel does not read (AUFS/OCI `.wh.NAME`, `.wh..wh..opq` and AUFS
//!   bookkeeping entries; a mix of every form parallaxfs reads): parallaxfs on them is compared
//!   with the kernel's overlay of the native encoding of the same stack (every field that does
//!   not depend on the exact bytes of the layer files), and with the model of
//!   `overlay_semantics.md` §1.2.
//! - Always: the model agrees with both walks; parallaxfs's own invariants hold (d_ino ==
//!   st_ino in readdir including `.` and `..`, d_type, one st_dev, st_ino unique per object and
//!   shared by hard links exactly as the kernel shares them, the st_ino layout, nlink 1 for
//!   merged directories); every whiteout and `.wh.*` name is ENOENT on lookup; a second walk
//!   after dropping the kernel's caches sees the same numbers and attributes. Cases cycle
//!   through the `-o lowerdir=` and `mount --lower` command forms, mmap and pread image I/O,
//!   and images of every compressor (and 4 KiB blocks with uncompressed inodes).
//!
//! Each test checks at its end that its cases really exercised what it is about (merged
//! directories, hidden names, every marker form it claims), so that a generator change cannot
//! quietly turn it into a test that cannot fail.
//!
//! Differences from the kernel that are by design, and how the comparison treats them:
//! - st_ino: the kernel shows the real inode numbers of same-filesystem lowers, parallaxfs
//!   `(1 + layer) << 48 | real ino` (unique across images that reuse numbers). Not compared
//!   directly; instead the names sharing an st_ino must be exactly those the kernel shows as
//!   one object, and the layout is checked against the layers (`pfs_invariants`).
//! - readdir of a non-merged lower directory: the kernel lists its char 0/0 and xattr
//!   whiteouts (lookup then says ENOENT); parallaxfs never lists a whiteout
//!   (overlay_semantics.md §1.3). The kernel walk records and skips them.
//! - listxattr on directories and extended-inode files of an image holding no xattr at all:
//!   the kernel's squashfs says EOPNOTSUPP, parallaxfs lists nothing, as for every other
//!   object (`union_common::observe_as`).
//!
//! Needs root; fails, never skips, without it.

mod union_common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use union_common::*;

/// What the cases of a test did, for the coverage checks at its end.
#[derive(Debug, Default)]
struct Coverage {
    cases: usize,
    layers: usize,
    images: usize,
    objects: usize,
    merged_dirs: usize,
    /// Paths present in some layer (reachable through that layer's own directories) that the
    /// union hides: whited out, under an opaque directory, or shadowed by a non-directory.
    hidden: usize,
    /// Whiteouts and `.wh.*` names looked up through parallaxfs (ENOENT).
    hidden_lookups: usize,
    /// Char 0/0 whiteouts the kernel's readdir listed (non-merged lower dirs; see `walk`).
    kernel_listed_whiteouts: usize,
    /// Whiteout and opaque markers written, by form.
    markers: BTreeMap<&'static str, usize>,
}

/// Every path each layer holds, ignoring whiteouts and opaqueness.
fn naive_paths(spec: &StackSpec) -> BTreeSet<Vec<u8>> {
    fn visit(dir: &DirSpec, base: &[u8], out: &mut BTreeSet<Vec<u8>>) {
        for (name, e) in &dir.children {
            let mut p = base.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            match e {
                Entry::Whiteout => {}
                Entry::Dir(d) => {
                    out.insert(p.clone());
                    visit(d, &p, out);
                }
                _ => {
                    out.insert(p);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for l in &spec.layers {
        visit(&l.root, b"", &mut out);
    }
    out
}

/// Parallaxfs over `layers`, by `form`: 0 `-o lowerdir=`, 1 `mount --lower`, 2 `-o
/// lowerdir=...,squash_io=pread`, 3 `mount --squash-io mmap --lower`.
fn mount_pfs(layers: &[PathBuf], mp: &Path, form: u64) -> TestMount {
    std::fs::create_dir(mp).unwrap();
    match form % 4 {
        0 => TestMount::lowerdir(layers, mp),
        1 => TestMount::lower_flags(layers, mp),
        2 => {
            let mut opt = lowerdir_option(layers);
            opt.push(",squash_io=pread");
            TestMount::parallaxfs(&["-o".into(), opt, mp.into()], mp)
        }
        _ => {
            let mut args: Vec<std::ffi::OsString> = vec!["mount".into(), "--squash-io".into(), "mmap".into()];
            for l in layers {
                args.push("--lower".into());
                args.push(l.into());
            }
            args.push(mp.into());
            TestMount::parallaxfs(&args, mp)
        }
    }
}

/// True for encodings the kernel reads itself: it then mounts the very layers parallaxfs
/// serves; for the others it mounts the native encoding of the same stack.
fn kernel_reads(enc: Encoding) -> bool {
    matches!(enc, Encoding::Native | Encoding::Kernel)
}

/// Counts the whiteout and opaque markers of the layers as written (source directories).
fn count_markers(dirs: &[PathBuf], counts: &mut BTreeMap<&'static str, usize>) {
    fn visit(p: &Path, counts: &mut BTreeMap<&'static str, usize>) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let name = e.file_name();
            let name = name.as_bytes();
            let mut bump = |k: &'static str| *counts.entry(k).or_default() += 1;
            if name == b".wh..wh..opq" {
                bump("opq file");
            } else if name.starts_with(b".wh..wh.") {
                bump("aufs meta");
            } else if name.starts_with(b".wh.") {
                bump(".wh. file");
            }
            if md.file_type().is_char_device() && md.rdev() == 0 {
                bump("char 0/0");
            }
            if !md.file_type().is_symlink() {
                for x in xattr::list(&path).unwrap() {
                    let v = xattr::get(&path, &x).unwrap().unwrap_or_default();
                    match (x.as_bytes(), v.as_slice()) {
                        (b"trusted.overlay.opaque", b"y") => bump("trusted opaque=y"),
                        (b"user.overlay.opaque", b"y") => bump("user opaque=y"),
                        (b"user.fuseoverlayfs.opaque", b"y") => bump("fuseoverlayfs opaque=y"),
                        (b"trusted.overlay.opaque" | b"user.overlay.opaque", b"x") => bump("opaque=x"),
                        (b"trusted.overlay.whiteout" | b"user.overlay.whiteout", _) => bump("xattr whiteout"),
                        _ => {}
                    }
                }
            }
            if md.is_dir() {
                visit(&path, counts);
            }
        }
    }
    for d in dirs {
        visit(d, counts);
    }
}

/// Looks up, through the mount at `mp`, every `.wh.*` name and char 0/0 whiteout written into
/// a layer at a path whose parent the union shows as a directory and that the union does not
/// show itself (a higher layer may cover a char 0/0 of a lower one): each must be ENOENT
/// (overlay_semantics.md §9 item 1). Returns how many were looked up.
fn check_hidden_names_absent(built: &BuiltStack, model: &Model, mp: &Path, what: &str) -> usize {
    fn visit(dir: &Path, rel: &[u8], model: &Model, mp: &Path, problems: &mut Vec<String>, checked: &mut usize) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let hidden = name.as_bytes().starts_with(b".wh.") || (md.file_type().is_char_device() && md.rdev() == 0);
            // A char 0/0 of a lower layer may be covered by a visible object of a higher one.
            if hidden && !model.contains_key(&child) && model.get(rel).is_some_and(|m| m.kind == 'd') {
                *checked += 1;
                match std::fs::symlink_metadata(mp.join(OsStr::from_bytes(&child))) {
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                    other => problems.push(format!("/{}: want ENOENT, got {other:?}", lossy(&child))),
                }
            }
            if md.is_dir() {
                visit(&e.path(), &child, model, mp, problems, checked);
            }
        }
    }
    let mut problems = Vec::new();
    let mut checked = 0;
    for d in &built.dirs {
        visit(d, b"", model, mp, &mut problems, &mut checked);
    }
    assert_no_diffs(&format!("{what}: lookup of whiteouts and .wh.* names"), &problems);
    checked
}

/// One case: a stack generated from `seed`, written in `enc`, served by parallaxfs and
/// compared with the kernel's overlay (of the same layers, or of their native encoding) and
/// with the model.
fn run_case(seed: u64, nlayers: usize, enc: Encoding, params: &GenParams, cov: &mut Coverage) {
    let spec = gen_stack(seed, nlayers, params);
    run_spec(&spec, enc, &format!("seed {seed}, {nlayers} layer(s), {enc:?} encoding"), cov);
}

/// [`run_case`] of a given stack.
fn run_spec(spec: &StackSpec, enc: Encoding, what: &str, cov: &mut Coverage) {
    let seed = spec.seed;
    let scratch = Scratch::new(&format!("diff-{enc:?}-{seed}"));
    let base = scratch.path();
    let model = model(spec);

    // The oracle: the kernel's overlay.
    let oracle = build_stack(spec, base, if kernel_reads(enc) { enc } else { Encoding::Native });
    let kernel = KernelUnion::mount(&oracle, base);
    let ktree = walk(kernel.overlay.path(), true);
    assert_no_diffs(&format!("{what}: model vs kernel"), &diff_model(&model, &ktree, "kernel"));

    let (served, _loops, views) = if kernel_reads(enc) {
        (oracle.clone(), Vec::new(), kernel.views.clone())
    } else {
        let built = build_stack(spec, base, enc);
        let (loops, views) = loop_mount_images(&built, base, &format!("{enc:?}"));
        (built, loops, views)
    };
    let views: InoViews = views.into_iter().map(Some).collect();
    let pfs = mount_pfs(&served.layers, &base.join("pfs"), seed);
    let ptree = walk(pfs.path(), false);

    let cmp = Cmp { same_layers: kernel_reads(enc), ..Cmp::default() };
    assert_no_diffs(&format!("{what}: kernel vs parallaxfs"), &diff_trees("kernel", &ktree, "pfs", &ptree, cmp));
    assert_no_diffs(&format!("{what}: model vs parallaxfs"), &diff_model(&model, &ptree, "pfs"));
    assert_no_diffs(&format!("{what}: parallaxfs invariants"), &pfs_invariants(&ptree, &ktree, &model, &views));
    cov.hidden_lookups += check_hidden_names_absent(&served, &model, pfs.path(), what);

    // Again with the kernel's dentry cache dropped: every name is looked up afresh (the first
    // walk was mostly answered from readdirplus); numbers and attributes must not move.
    drop_caches();
    let again = walk(pfs.path(), false);
    assert_no_diffs(
        &format!("{what}: parallaxfs first walk vs second walk"),
        &diff_trees("first", &ptree, "second", &again, Cmp { ino: true, dev: true, same_layers: true }),
    );
    pfs.unmount();

    count_markers(&served.dirs, &mut cov.markers);
    let naive = naive_paths(spec);
    cov.cases += 1;
    cov.layers += spec.layers.len();
    cov.images += spec.layers.iter().filter(|l| l.image).count();
    cov.objects += ptree.objs.len();
    cov.merged_dirs += model.values().filter(|m| m.merged()).count();
    cov.hidden += naive.iter().filter(|p| !model.contains_key(*p)).count();
    cov.kernel_listed_whiteouts += ktree.listed_whiteouts.len();
}

/// Runs `cases` (seed, number of layers) in encoding `enc`; then checks that they exercised
/// merged directories, hidden names, lookups of whiteouts and at least 3 markers of each form
/// in `markers`.
fn run_cases(enc: Encoding, cases: &[(u64, usize)], params: &GenParams, markers: &[&str]) -> Coverage {
    require_root();
    let start = Instant::now();
    let mut cov = Coverage::default();
    for &(seed, n) in cases {
        run_case(seed, n, enc, params, &mut cov);
    }
    eprintln!("{enc:?}: {cov:?} in {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(cov.cases, cases.len());
    assert!(cov.images > 0 && cov.images < cov.layers, "{enc:?}: images and directories must both be served: {cov:?}");
    assert!(cov.merged_dirs >= 2 * cov.cases, "{enc:?}: too few merged directories to mean anything: {cov:?}");
    assert!(cov.hidden > 5 * cov.cases, "{enc:?}: too few hidden names to mean anything: {cov:?}");
    assert!(cov.hidden_lookups > cov.cases, "{enc:?}: too few whiteouts looked up: {cov:?}");
    for m in markers {
        assert!(cov.markers.get(m).is_some_and(|n| *n >= 3), "{enc:?}: too few markers of the form {m:?}: {cov:?}");
    }
    cov
}

/// `(seed, layers)` for seeds `first..`, cycling through `layers`.
fn cases(first: u64, count: usize, layers: &[usize]) -> Vec<(u64, usize)> {
    (0..count).map(|i| (first + i as u64, layers[i % layers.len()])).collect()
}

const LAYER_COUNTS: [usize; 14] = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20];

/// Native encoding: parallaxfs and the kernel on the very same layers.
#[test]
fn native_stacks_match_kernel_overlay() {
    run_cases(
        Encoding::Native,
        &cases(1000, 42, &LAYER_COUNTS),
        &GenParams::default(),
        &["char 0/0", "trusted opaque=y"],
    );
}

/// Every form the kernel reads, xattr whiteouts included: kernel and parallaxfs on the same
/// layers.
#[test]
fn kernel_forms_match_kernel_overlay() {
    let markers = ["char 0/0", "trusted opaque=y", "opaque=x", "xattr whiteout"];
    run_cases(Encoding::Kernel, &cases(2000, 28, &LAYER_COUNTS), &GenParams::default(), &markers);
}

/// AUFS/OCI encoding: parallaxfs on `.wh.` layers vs the kernel on the native form.
#[test]
fn aufs_stacks_match_kernel_overlay_of_native_form() {
    let markers = [".wh. file", "opq file", "aufs meta"];
    run_cases(Encoding::Aufs, &cases(3000, 28, &LAYER_COUNTS), &GenParams::default(), &markers);
}

/// Every encoding parallaxfs reads, mixed within each layer, vs the kernel on the native form.
#[test]
fn mixed_encodings_match_kernel_overlay_of_native_form() {
    let markers = [
        "char 0/0",
        ".wh. file",
        "opq file",
        "aufs meta",
        "trusted opaque=y",
        "user opaque=y",
        "fuseoverlayfs opaque=y",
        "opaque=x",
        "xattr whiteout",
    ];
    run_cases(Encoding::Mixed, &cases(4000, 28, &LAYER_COUNTS), &GenParams::default(), &markers);
}

/// Bigger trees: deeper, wider directories and more multi-block files, fewer layers.
#[test]
fn large_trees_match_kernel_overlay() {
    let params = GenParams {
        max_depth: 5,
        max_children: 9,
        big_file_prob: 0.1,
        big_file_max: 1_500_000,
        ..GenParams::default()
    };
    run_cases(Encoding::Native, &cases(5000, 4, &[2, 3, 5, 8]), &params, &["char 0/0", "trusted opaque=y"]);
    run_cases(Encoding::Mixed, &cases(5100, 4, &[2, 3, 5, 8]), &params, &[".wh. file", "opq file", "char 0/0"]);
}

/// A stack of 3 layers whose root directories hold about 1,500 entries each (long names, so
/// that a listing takes many READDIR(PLUS) replies), overlapping, some whited out and some
/// opaque: the merged listing must come out whole, once per name, across reply boundaries.
#[test]
fn huge_merged_directories_match_kernel_overlay() {
    require_root();
    let meta = |perm: u32, t: i64| Meta { perm, uid: 0, gid: 0, mtime: (t, 0), xattrs: Vec::new() };
    let layer = |i: u64, image: bool| {
        let mut root = DirSpec { meta: meta(0o755, 1000 + i as i64), opaque: false, children: BTreeMap::new() };
        for j in 0..1500u64 {
            if (j + i) % 3 == 0 {
                continue;
            }
            let name = format!("entry-{j:05}-{}", "n".repeat((j % 97) as usize)).into_bytes();
            let entry = match (j * 7 + i) % 13 {
                0 => Entry::Whiteout,
                1 | 2 => {
                    let mut d = DirSpec { meta: meta(0o750, j as i64), opaque: j % 5 == i, children: BTreeMap::new() };
                    let content = Content { seed: j, len: 10, style: 1 };
                    d.children.insert(format!("in-{i}").into_bytes(), Entry::File(meta(0o644, 5), content));
                    Entry::Dir(d)
                }
                3 => Entry::Symlink(meta(0o777, 7), format!("target-{i}-{j}").into_bytes()),
                _ => {
                    Entry::File(meta(0o600, j as i64), Content { seed: j * 10 + i, len: (j % 300) as usize, style: 0 })
                }
            };
            root.children.insert(name, entry);
        }
        LayerSpec { image, root, filler: false }
    };
    let spec = StackSpec { seed: 9000, layers: vec![layer(0, false), layer(1, true), layer(2, true)] };
    let mut cov = Coverage::default();
    let start = Instant::now();
    run_spec(&spec, Encoding::Native, "huge directories, native", &mut cov);
    run_spec(&spec, Encoding::Aufs, "huge directories, AUFS", &mut cov);
    eprintln!("huge directories: {cov:?} in {:.1} s", start.elapsed().as_secs_f64());
    assert!(cov.objects > 2 * 1500, "the huge directories came out too small: {cov:?}");
    assert!(cov.merged_dirs > 100 && cov.hidden > 500, "{cov:?}");
}
