//! `darkport-controller`: parse arguments, then call the library.
//!
//! - [`cli`]: the command line (the clap tree).
//! - [`commands`]: what each command group does, one module each.

use std::process::ExitCode;

use anyhow::Result;

use darkport_proto::msg::AdminRequest;

use cli::{Cli, Cmd, RouterCmd};

mod cli;
mod commands;

#[tokio::main]
async fn main() -> ExitCode {
    darkport_cli::exit(real_main().await)
}

async fn real_main() -> Result<ExitCode> {
    let (cli, log) = darkport_cli::start::<Cli>()?;
    match cli.cmd {
        Cmd::GenerateAssets(args) => args.write::<Cli>()?,
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
