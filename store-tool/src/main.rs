//! `parallax-store`: moves images from a user's Podman storage into a read-only additional
//! image store on shared storage, one flattened SquashFS image per image, in the layout that
//! sarus-suite/parallax writes; and removes, lists and verifies them.
//!
//! Owns: the parallax-compatible command line and messages, containers/storage metadata
//! (layers.json, images.json, big-data files, lock files) and the atomic publish protocol.
//! Flattens layers through the `parallaxfs` binary (a read-only union mount fed to
//! mksquashfs) and verifies side-cars with `parallaxfs-squash`.
//!
//! Start at [`run`]; the store on disk is [`store`], each command is in [`ops`].
#![forbid(unsafe_code)]

mod cli;
mod error;
mod flatten;
mod goflag;
mod image_meta;
mod messages;
mod names;
mod ops;
mod progress;
mod shellwords;
mod signals;
mod source;
mod store;
mod userns;

use std::process::ExitCode;

use crate::cli::{Config, Op, Request, UsageError};
use crate::error::Error;
use crate::messages::Logger;

/// Exit status of usage errors (Go's `flag` with ExitOnError).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    signals::install();
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    match cli::parse(&args) {
        Err(UsageError(msg)) => {
            eprintln!("{msg}");
            eprint!("{}", cli::banner());
            ExitCode::from(EXIT_USAGE)
        }
        Ok(Request::Help) => {
            eprint!("{}", cli::banner());
            ExitCode::SUCCESS
        }
        Ok(Request::Version) => {
            print!("{}", cli::version_text());
            ExitCode::SUCCESS
        }
        Ok(Request::Run(cfg)) => ExitCode::from(run(&cfg)),
    }
}

/// Exit status for a failed operation: 128 + signal when interrupted, else 1.
fn failure_code(err: &Error) -> u8 {
    match err {
        Error::Interrupted(_) => signals::exit_code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
        _ => 1,
    }
}

/// Runs a validated command; returns the exit status.
fn run(cfg: &Config) -> u8 {
    let stdout = std::io::stdout();
    let mut handle = stdout.lock();
    let mut log = Logger::new(&mut handle, cfg.log_level, true);
    match cfg.op {
        Op::Migrate | Op::Rmi => {
            if cfg.op == Op::Migrate {
                if let Some(code) = userns::run_inside_if_rootless() {
                    return code;
                }
            }
            let phase = if cfg.op == Op::Migrate { messages::Op::Migrate } else { messages::Op::Rmi };
            if let Err(e) = store::layout::validate_ro_store(&cfg.store) {
                log.fatal(&messages::validation_failed(phase, &e));
                return 1;
            }
            if cfg.op == Op::Migrate {
                migrate(cfg, &mut log)
            } else {
                rmi(cfg, &mut log)
            }
        }
        Op::List => match ops::list::run(cfg, log.out()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("parallax-store: list {}: {e}", cfg.store.display());
                failure_code(&e)
            }
        },
        Op::Verify => {
            match ops::verify::run(cfg, log.out(), &mut Logger::new(&mut std::io::stderr(), cfg.log_level, true)) {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("parallax-store: verify {}: {e}", cfg.store.display());
                    failure_code(&e)
                }
            }
        }
    }
}

fn migrate(cfg: &Config, log: &mut Logger<'_>) -> u8 {
    match ops::migrate::run(cfg, log) {
        Ok(ops::migrate::Outcome::Migrated(id)) => {
            log.info(&messages::migration_done(&id));
            0
        }
        Ok(ops::migrate::Outcome::AlreadyMigrated) => {
            log.info(messages::ALREADY_MIGRATED);
            0
        }
        Err(e) => {
            log.fatal(&messages::migration_failed(&cfg.image, &e));
            failure_code(&e)
        }
    }
}

fn rmi(cfg: &Config, log: &mut Logger<'_>) -> u8 {
    match ops::rmi::run(cfg, log) {
        Ok(ops::rmi::Outcome::Removed) => {
            log.info(&messages::removal_done(&cfg.image));
            0
        }
        Ok(ops::rmi::Outcome::NotFound) => {
            // parallax logs this as an error and still exits 0.
            log.error(&messages::could_not_locate(&cfg.image, &Error::ImageNotFound(cfg.image.clone())));
            0
        }
        Err(e) => {
            log.fatal(&messages::rmi_failed(&cfg.image, &e));
            failure_code(&e)
        }
    }
}
