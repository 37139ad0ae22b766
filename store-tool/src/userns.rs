//! Rootless migration: a regular user's layer files belong to their subordinate ids, which
//! only a user namespace mapping them can read and show as the container sees them (root = 0).
//! As parallax re-executes itself in such a namespace, this tool runs a migration by a
//! regular user again inside Podman's own (`podman unshare`): the side-car then records the
//! ids containers see, and every file it writes belongs to the user on the host.

use std::process::Command;

/// Set in the re-executed process (so it never re-executes again).
const INSIDE: &str = "_PARALLAX_STORE_IN_USERNS";

/// Runs this command again inside Podman's user namespace when the caller is a regular user
/// outside one. Returns None when this process is to do the work itself, else the exit status
/// of the run inside.
pub fn run_inside_if_rootless() -> Option<u8> {
    if nix::unistd::geteuid().is_root() || std::env::var_os(INSIDE).is_some() {
        return None;
    }
    let Some(podman) = crate::cli::find_on_path("podman") else {
        eprintln!(
            "parallax-store: a migration by a regular user runs inside Podman's user namespace, \
             but podman is not on PATH"
        );
        return Some(1);
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("parallax-store: cannot find its own executable to re-run it in the user namespace: {e}");
            return Some(1);
        }
    };
    let status =
        Command::new(podman).arg("unshare").arg(exe).args(std::env::args_os().skip(1)).env(INSIDE, "1").status();
    match status {
        Ok(s) => Some(match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(code), _) => u8::try_from(code).unwrap_or(1),
            (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
            (None, None) => 1,
        }),
        Err(e) => {
            eprintln!("parallax-store: podman unshare: {e}");
            Some(1)
        }
    }
}
