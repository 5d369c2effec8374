//! What every binary's `main` does first and last, and the subcommands
//! they all have: parse the command line with its config file and set up
//! logging ([`start`]), tell systemd when `run` is up and when it stops
//! ([`ready_until_stopped`]), print a failure as one line and exit
//! ([`exit`]); `generate-assets` ([`AssetsArgs`]) and, for the router and
//! the client, `enroll` ([`EnrollArgs`]).

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use darkport_proto::identity::Kind;
use darkport_transport::enroll::{enroll, read_token, EnrollError};

use crate::config::ConfigError;
use crate::{error_report, init_logging, notify_ready, notify_stopping, reload_on_hangup};
use crate::{LogArgs, LogError, LogHandle};

/// A binary's whole command line: a clap parser that flattens
/// [`LogArgs`].
pub trait CommandLine: clap::Parser + 'static {
    /// Its logging flags.
    fn log_args(&self) -> &LogArgs;
}

/// Why a binary cannot start: its settings or its logging.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config file, or the settings with it, do not parse.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logging cannot be set up.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// The start of every `main`: the command line with its config file
/// ([`crate::config::parse`]), then logging ([`init_logging`]); the handle
/// changes the log level on SIGHUP ([`ready_until_stopped`]).
pub fn start<C: CommandLine>() -> Result<(C, LogHandle), StartError> {
    let cli: C = crate::config::parse()?;
    let log = init_logging(cli.log_args())?;
    Ok((cli, log))
}

/// The end of every `main`: `code`, or the error and its causes on one
/// line of stderr ([`error_report`]) and failure.
pub fn exit<E: AsRef<dyn std::error::Error + 'static>>(result: Result<ExitCode, E>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", error_report(e.as_ref()));
        ExitCode::FAILURE
    })
}

/// The end of every `run`'s start-up, once its sockets are bound and its
/// identity loaded: from here on SIGHUP reloads the settings
/// ([`reload_on_hangup`], then `apply`), and systemd hears READY=1. The
/// future ends at SIGTERM or Ctrl-C, once systemd has heard STOPPING=1.
pub fn ready_until_stopped<C: CommandLine>(
    log: LogHandle,
    apply: impl Fn(&C) + Send + 'static,
) -> impl Future<Output = ()> + Send {
    let reload = reload_on_hangup::<C>(log, C::log_args, apply);
    // The handlers are installed here, before systemd hears READY=1.
    let signal = darkport_transport::endpoint::shutdown_signal(reload);
    notify_ready();
    async move {
        signal.await;
        notify_stopping();
    }
}

/// `generate-assets DIR` (hidden): man pages and completions for the
/// packages.
#[derive(Debug, Clone, clap::Args)]
pub struct AssetsArgs {
    /// Directory to write man1/ and completions/ into.
    pub dir: PathBuf,
}

/// Why the assets could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to {}", dir.display())]
pub struct AssetsError {
    /// The directory given.
    pub dir: PathBuf,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

impl AssetsArgs {
    /// Writes `C`'s man pages and completions ([`crate::generate_assets`]).
    pub fn write<C: clap::CommandFactory>(&self) -> Result<(), AssetsError> {
        crate::generate_assets(C::command(), &self.dir).map_err(|source| AssetsError {
            dir: self.dir.clone(),
            source,
        })
    }
}

/// `enroll`: redeem a token for an identity file.
#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// Token text, or a file holding it.
    #[arg(long)]
    pub token: String,
    /// Where to write the identity file (0600).
    #[arg(long)]
    pub identity: PathBuf,
}

impl EnrollArgs {
    /// Redeems the token for an identity of `kind` (the key pair is made
    /// here), writes the identity file and says so on stdout.
    pub async fn enroll(&self, kind: Kind) -> Result<(), EnrollError> {
        let file = enroll(&read_token(&self.token)?, kind, &self.identity).await?;
        println!(
            "enrolled {kind} {}; identity written to {}",
            file.name,
            self.identity.display()
        );
        Ok(())
    }
}
