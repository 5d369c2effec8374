//! `darkport-edge-router`: parse arguments, then call the library.
//!
//! - [`cli`]: the command line (the clap tree).
//! - [`commands`]: what `run` does.

use std::process::ExitCode;

use anyhow::Result;

use darkport_proto::identity::Kind;

use cli::{Cli, Cmd};

mod cli;
mod commands;

/// jemalloc, not glibc's malloc: under the churn of many short streams
/// glibc's per-thread arenas let the router's RSS creep upwards for
/// minutes, where jemalloc gives freed pages back on a decay clock
/// (docs/benchmarks.md, "Soak").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The main thread accepts connections and talks to the controller;
/// client connections run on the router's connection threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    darkport_cli::exit(real_main().await.map(|()| ExitCode::SUCCESS))
}

async fn real_main() -> Result<()> {
    let (cli, log) = darkport_cli::start::<Cli>()?;
    match cli.cmd {
        Cmd::GenerateAssets(args) => args.write::<Cli>()?,
        Cmd::Enroll(args) => args.enroll(Kind::Router).await?,
        Cmd::Run(args) => commands::run::exec(args, log).await?,
    }
    Ok(())
}
