//! SIGINT, SIGTERM and SIGHUP: recorded, not fatal, so a migration can stop its children,
//! unmount, remove its staging directory and leave the store as it was. Long waits (locks,
//! mksquashfs) poll [`pending`]; publishing, once started, finishes or rolls back first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

static RECEIVED: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Installs the handlers (once per process). Failure to install leaves default behaviour.
pub fn install() {
    let flag = RECEIVED.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // Registration only fails for forbidden signals; these three are allowed.
        let _ = signal_hook::flag::register_usize(sig, Arc::clone(flag), sig as usize);
    }
}

/// The name of the first signal received since [`install`], if any.
pub fn pending() -> Option<&'static str> {
    let sig = RECEIVED.get()?.load(Ordering::SeqCst);
    match sig as i32 {
        0 => None,
        SIGINT => Some("SIGINT"),
        SIGTERM => Some("SIGTERM"),
        SIGHUP => Some("SIGHUP"),
        _ => Some("a signal"),
    }
}

/// `Err(Interrupted)` when a signal is pending.
pub fn check() -> crate::error::Result<()> {
    match pending() {
        Some(name) => Err(crate::error::Error::Interrupted(name)),
        None => Ok(()),
    }
}

/// Exit status for an interrupted run: 128 + signal number, as a shell reports it.
pub fn exit_code() -> Option<i32> {
    let sig = RECEIVED.get()?.load(Ordering::SeqCst);
    (sig != 0).then(|| 128 + sig as i32)
}
