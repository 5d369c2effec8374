//! `darkport-controller`: parse arguments, then call the library.
//!
//! - [`cli`]: the command line (the clap tree).
//! - [`commands`]: what each command group does, one module each.

use std::process::ExitCode;

use anyhow::{Context, Result};

use darkport_proto::msg::AdminRequest;

use cli::{Cli, Cmd, RouterCmd};

mod cli;
mod commands;

#[tokio::main]
async fn main() -> ExitCode {
    match real_main().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", darkport_cli::error_report(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> Result<ExitCode> {
    let cli: Cli = darkport_cli::config::parse()?;
    let log = darkport_cli::init_logging(&cli.log)?;
    match cli.cmd {
        Cmd::GenerateAssets { dir } => {
            use clap::CommandFactory;
            darkport_cli::generate_assets(Cli::command(), &dir)
                .with_context(|| format!("cannot write to {}", dir.display()))?;
        }
        Cmd::Init(args) => commands::setup::init(args)?,
        Cmd::Join(args) => commands::setup::join(args)?,
        Cmd::Migrate(args) => commands::setup::migrate(args)?,
        Cmd::Run(args) => commands::run::exec(args, log).await?,
        Cmd::Identity(cmd) => commands::identity::exec(cmd).await?,
        Cmd::Service(cmd) => commands::service::exec(cmd).await?,
        Cmd::Policy(cmd) => return commands::policy::exec(cmd).await,
        Cmd::RouterPolicy(cmd) => commands::router_policy::exec(cmd).await?,
        Cmd::Router(RouterCmd::List(args)) => {
            commands::list(args, AdminRequest::ListRouters).await?
        }
        Cmd::Audit(a) => commands::list(a.read, AdminRequest::Audit { limit: a.limit }).await?,
    }
    Ok(ExitCode::SUCCESS)
}
