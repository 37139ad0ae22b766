//! `parallaxfs`: the command line. Parses arguments, sets up logging and calls the libraries;
//! holds no filesystem logic of its own.
//!
//! Today: `parallaxfs image info|ls|stat|cat|check IMAGE [PATH]` inspects a SquashFS image
//! without mounting it. The mount commands arrive with the union mount (issue 5).
#![forbid(unsafe_code)]

mod image;
mod timefmt;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// One FUSE process per container mount: SquashFS images plus a copy-on-write upper layer.
#[derive(Debug, Parser)]
#[command(name = "parallaxfs", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect a SquashFS image without mounting it.
    #[command(subcommand)]
    Image(image::ImageCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PARALLAXFS_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("parallaxfs: {err:#}");
            ExitCode::FAILURE
        }
    }
}
