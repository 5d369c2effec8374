//! The edge router's command line: the clap tree, and nothing that acts on
//! it (that is [`crate::commands`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use darkport_cli::{AssetsArgs, EnrollArgs};

use darkport_edge_router::RouterLimits;
use darkport_transport::admission::GateLimits;

#[derive(Parser)]
#[command(
    name = "darkport-edge-router",
    version,
    about = "Darkport edge router: the public QUIC endpoint"
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
    /// Accept clients and carry their streams to services.
    Run(Box<RunArgs>),
}

/// The settings of `run`; each is also a key of the config file.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: darkport_cli::RunCommon,
    /// Identity file from `enroll`.
    #[arg(long, env = "DARKPORT_IDENTITY")]
    pub identity: PathBuf,
    /// Address to listen on: UDP for QUIC, and TCP on the same port for
    /// clients whose networks block UDP (TLS 1.3 over TCP).
    #[arg(long, env = "DARKPORT_LISTEN")]
    pub listen: SocketAddr,
    /// Listen on UDP (QUIC) only, not on TCP.
    #[arg(long, env = "DARKPORT_NO_TCP")]
    pub no_tcp: bool,
    /// HOST:PORT clients use to reach this router (default: --listen).
    /// The last policy snapshot is kept in IDENTITY.snapshot, and the
    /// certificate is renewed in IDENTITY automatically.
    #[arg(long, env = "DARKPORT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Threads carrying client connections; each connection and its
    /// streams stay on one thread (default: one per core).
    #[arg(long, env = "DARKPORT_ROUTER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Concurrent QUIC connections one client identity may hold here
    /// (reloaded on SIGHUP).
    #[arg(long, default_value_t = darkport_edge_router::MAX_CONNECTIONS_PER_IDENTITY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_identity: usize,
    /// Concurrent streams (tunneled connections) one client identity
    /// may hold here, across its connections; more are refused with
    /// LimitReached (reloaded on SIGHUP).
    #[arg(long, default_value_t = darkport_edge_router::MAX_STREAMS_PER_IDENTITY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_streams_per_identity: usize,
    /// Concurrent streams one QUIC client connection may have open; more
    /// wait at the client until one ends. What quinn keeps per connection
    /// grows with it (reloaded on SIGHUP, for new connections).
    #[arg(long, default_value_t = darkport_edge_router::MAX_STREAMS_PER_CONNECTION, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=20_000))]
    pub max_streams_per_connection: usize,
    /// Refuse new dials once the controller has not been heard from
    /// for this long (e.g. "7d", "12h"; "0" never refuses). Default:
    /// the lifetime of the router's certificate (reloaded on SIGHUP).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_policy_age: Option<std::time::Duration>,
    /// TLS handshakes in progress (peers not yet authenticated) on each
    /// listener, QUIC and TCP; when full, the oldest handshake of the
    /// busiest source prefix makes room (reloaded on SIGHUP).
    #[arg(long, default_value_t = GateLimits::default().total, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_handshakes: usize,
    /// Handshakes in progress from one source prefix (see
    /// --handshake-prefix-v4/-v6); more end the prefix's oldest.
    #[arg(long, default_value_t = GateLimits::default().per_prefix, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_handshakes_per_prefix: usize,
    /// QUIC: above this many handshakes in progress, new peers prove their
    /// address with a Retry first.
    #[arg(long, default_value_t = GateLimits::default().retry_above)]
    pub retry_above_handshakes: usize,
    /// Length of the IPv4 prefix that counts as one source for
    /// --max-handshakes-per-prefix.
    #[arg(long, default_value_t = GateLimits::default().v4_prefix, value_parser = clap::value_parser!(u8).range(0..=32))]
    handshake_prefix_v4: u8,
    /// Length of the IPv6 prefix that counts as one source.
    #[arg(long, default_value_t = GateLimits::default().v6_prefix, value_parser = clap::value_parser!(u8).range(0..=128))]
    handshake_prefix_v6: u8,
    /// On SIGTERM or Ctrl-C: refuse new dials with "draining" (clients
    /// move to another router at once) and let streams in flight go on
    /// for up to this long, then reset the rest.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub grace_period: std::time::Duration,
}

impl RunArgs {
    /// The limits these settings ask for, over `base`.
    pub fn limits(&self, mut base: RouterLimits) -> RouterLimits {
        base.max_connections_per_identity = self.max_connections_per_identity;
        base.max_streams_per_identity = self.max_streams_per_identity;
        base.max_streams_per_connection = self.max_streams_per_connection;
        if let Some(age) = self.max_policy_age {
            base.max_policy_age = (!age.is_zero()).then_some(age);
        }
        base.handshakes = GateLimits {
            total: self.max_handshakes,
            per_prefix: self.max_handshakes_per_prefix,
            retry_above: self.retry_above_handshakes,
            v4_prefix: self.handshake_prefix_v4,
            v6_prefix: self.handshake_prefix_v6,
        };
        base
    }
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
