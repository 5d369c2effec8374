//! `darkport-edge-client`: parse arguments, then call the library.
//!
//! - [`cli`]: the command line (the clap tree).
//! - [`commands`]: what `run`, `dial` and `host` do, one module each.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use darkport_proto::identity::Kind;

use cli::{Cli, Cmd};

mod cli;
mod commands;

/// One thread: the client's router connection and every stream on it share
/// a core, with no cross-thread wake-up per packet (measured: bulk 1.29x
/// -> 1.62x stunnel, CPU per GiB down 17%; docs/benchmarks.md).
fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(real_main());
    // `dial` reads stdin on a blocking thread; when the tunnel ends first,
    // that read may never return (stdin still open). Do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    darkport_cli::exit(result.map(|()| ExitCode::SUCCESS))
}

async fn real_main() -> Result<()> {
    let (cli, log) = darkport_cli::start::<Cli>()?;
    match cli.cmd {
        Cmd::GenerateAssets(args) => args.write::<Cli>()?,
        Cmd::Enroll(args) => args.enroll(Kind::Client).await?,
        Cmd::Run(args) => commands::run::exec(args, log).await?,
        Cmd::Dial(args) => commands::dial::exec(args).await?,
        Cmd::Host(args) => commands::host::exec(args, log).await?,
    }
    Ok(())
}
