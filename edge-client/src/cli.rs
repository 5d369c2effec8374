//! The edge client's command line: the clap tree, and nothing that acts on
//! it (that is [`crate::commands`]).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use darkport_cli::{AssetsArgs, EnrollArgs};

use edge_client::TransportMode;

#[derive(Parser)]
#[command(
    name = "darkport-edge-client",
    version,
    about = "Darkport edge client: local ports to private services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    #[command(flatten)]
    pub log: darkport_cli::LogArgs,
}

impl darkport_cli::CommandLine for Cli {
    fn log_args(&self) -> &darkport_cli::LogArgs {
        &self.log
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets(AssetsArgs),
    /// Redeem an enrollment token; the key pair is made here.
    Enroll(EnrollArgs),
    /// Expose services on local TCP ports.
    Run(RunArgs),
    /// Connect stdin/stdout to a service, like nc (usable as ssh ProxyCommand).
    Dial(DialArgs),
}

/// The settings of `run`; each is also a key of the config file.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: darkport_cli::RunCommon,
    /// Identity file from `enroll`.
    #[arg(long, env = "DARKPORT_IDENTITY")]
    pub identity: PathBuf,
    /// LOCAL_ADDR=SERVICE, e.g. 127.0.0.1:24224=fluentd (repeatable;
    /// in a config file, a list).
    #[arg(long = "forward", required = true)]
    pub forwards: Vec<String>,
    /// Router HOST:PORT to use instead of asking the controller
    /// (repeatable; in a config file, a list).
    #[arg(long = "router")]
    pub routers: Vec<String>,
    /// How to reach routers: auto (race QUIC and TLS over TCP, prefer
    /// QUIC, remember TCP per router for 5 minutes where UDP does not get
    /// through), quic or tcp.
    #[arg(long, env = "DARKPORT_TRANSPORT", default_value = "auto")]
    pub transport: TransportMode,
    /// On SIGTERM or Ctrl-C: stop accepting local connections and let
    /// the open ones finish for up to this long, then reset the rest.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub grace_period: std::time::Duration,
}

/// The arguments of `dial`.
#[derive(clap::Args)]
pub struct DialArgs {
    /// The service to reach.
    pub service: String,
    /// Identity file from `enroll`.
    #[arg(long, env = "DARKPORT_IDENTITY")]
    pub identity: PathBuf,
    /// Router HOST:PORT to use instead of asking the controller (repeatable).
    #[arg(long = "router")]
    pub routers: Vec<String>,
    /// How to reach routers: auto (QUIC, falling back to TLS over TCP
    /// where UDP does not get through), quic or tcp.
    #[arg(long, env = "DARKPORT_TRANSPORT", default_value = "auto")]
    pub transport: TransportMode,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_argument_has_help() {
        darkport_cli::assert_cli_documented(Cli::command());
    }
}
