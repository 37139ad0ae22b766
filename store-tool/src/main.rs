//! `parallax-store`: moves images from a user's Podman storage into a read-only additional image
//! store on shared storage, one flattened SquashFS image per image, in the layout that
//! sarus-suite/parallax writes; and removes, lists and verifies them.
//!
//! Owns: the parallax-compatible command line and messages, containers/storage metadata
//! (layers.json, images.json, big-data files, lock files) and the atomic publish protocol.
//! Uses `parallaxfs-overlay` to flatten layers and `parallaxfs-squash` to verify images.
//!
//! Status: not implemented yet (issue 8). Until then every invocation fails loudly.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("parallax-store: not implemented yet (see issue 8); nothing was done");
    std::process::exit(2);
}
