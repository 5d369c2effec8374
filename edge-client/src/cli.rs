//! The edge client's command line: the clap tree, and nothing that acts on
//! it (that is [`crate::commands`]).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use darkport_cli::{AssetsArgs, EnrollArgs};

use edge_client::host::DEFAULT_OFFERS;
use edge_client::{Precedence, TransportMode};

#[derive(Parser)]
#[command(
    name = "darkport-edge-client",
    version,
    about = "Darkport edge client: local ports to private services, and hosting services with no open port"
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
    /// Serve local services through routers over outbound connections
    /// only: this host opens no listening socket.
    Host(HostArgs),
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

/// The settings of `host`; each is also a key of the config file.
#[derive(clap::Args)]
pub struct HostArgs {
    #[command(flatten)]
    pub common: darkport_cli::RunCommon,
    /// Identity file from `enroll`; a bind policy must let it host the
    /// services.
    #[arg(long, env = "DARKPORT_IDENTITY")]
    pub identity: PathBuf,
    /// NAME=HOST:PORT: host service NAME, served by the local TCP service
    /// at HOST:PORT, e.g. fluentd=127.0.0.1:24224 (repeatable; one
    /// connection per router carries every service; in a config file, a
    /// list).
    #[arg(long = "service", required = true)]
    pub services: Vec<String>,
    /// Router HOST:PORT to host through instead of the controller's list
    /// (repeatable; in a config file, a list).
    #[arg(long = "router")]
    pub routers: Vec<String>,
    /// How to reach routers: auto (race QUIC and TLS over TCP, prefer
    /// QUIC), quic or tcp.
    #[arg(long, env = "DARKPORT_TRANSPORT", default_value = "auto")]
    pub transport: TransportMode,
    /// Static cost of every terminator, 0 to 65535, lower preferred
    /// (routers add what they measure).
    #[arg(long, default_value_t = 0)]
    pub cost: u16,
    /// Precedence of the terminators while healthy: default, or required
    /// (used before every default one). A failing health check makes them
    /// failed.
    #[arg(long, default_value = "default", value_parser = parse_precedence)]
    pub precedence: Precedence,
    /// Idle offer streams per router: how many dials can arrive at once
    /// before the used offers are replaced (1 to 64).
    #[arg(long, default_value_t = DEFAULT_OFFERS as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub offers: u16,
    /// Host through at most this many routers (default: every router the
    /// controller lists).
    #[arg(long)]
    pub max_routers: Option<usize>,
    /// This process's name among the hosters of the same identity
    /// (default: hostname-pid).
    #[arg(long)]
    pub instance: Option<String>,
    /// On SIGTERM or Ctrl-C: withdraw from every router first, then let
    /// the open streams finish for up to this long, then reset the rest.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub grace_period: std::time::Duration,
    /// How the hoster checks each local service: none; tcp (a TCP
    /// connect); fluent-ping (a TCP connect, and the connection must not
    /// be closed or reset at once).
    #[arg(long, value_enum, default_value_t = HealthCheck::None)]
    pub health_check: HealthCheck,
    /// Time between health checks of a service (also each check's
    /// timeout, at most 5 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub health_interval: std::time::Duration,
    /// Failed checks in a row before a service's terminators are marked
    /// failed on every router; one good check restores them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_count: u32,
    /// Write a PROXY protocol v2 header to the local service before any
    /// byte: source the caller's address, TLV 0xE0 its identity, TLV 0xE1
    /// its roles joined by ','.
    #[arg(long)]
    pub proxy_protocol: bool,
}

/// `--health-check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HealthCheck {
    /// No checks: the terminators keep their precedence.
    None,
    /// A TCP connect to the local address.
    Tcp,
    /// A TCP connect, then the service must keep the connection open
    /// briefly (a Fluentd forward input does).
    FluentPing,
}

/// `--precedence`: default or required (failed is the health check's).
fn parse_precedence(s: &str) -> Result<Precedence, String> {
    match Precedence::parse(s) {
        Some(p @ (Precedence::Default | Precedence::Required)) => Ok(p),
        _ => Err(format!(
            "{s:?}: use default or required (failed is set by health checks)"
        )),
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

    fn host(args: &[&str]) -> Result<HostArgs, clap::Error> {
        let mut argv = vec!["darkport-edge-client", "host", "--identity", "h.id"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.cmd {
            Cmd::Host(h) => Ok(h),
            _ => unreachable!("parsed as host"),
        }
    }

    #[test]
    fn host_defaults() {
        let h = host(&["--service", "fluentd=127.0.0.1:24224"]).unwrap();
        assert_eq!(h.services, ["fluentd=127.0.0.1:24224"]);
        assert_eq!(h.cost, 0);
        assert_eq!(h.precedence, Precedence::Default);
        assert_eq!(usize::from(h.offers), DEFAULT_OFFERS);
        assert_eq!(h.grace_period, std::time::Duration::from_secs(30));
        assert_eq!(h.health_check, HealthCheck::None);
        assert_eq!(h.health_interval, std::time::Duration::from_secs(5));
        assert_eq!(h.health_count, 3);
        assert!(!h.proxy_protocol);
        assert_eq!(
            h.common.metrics.metrics_listen, None,
            "no listening socket unless asked"
        );
        assert!(h.max_routers.is_none() && h.instance.is_none());
    }

    #[test]
    fn host_flags_parse_and_bad_values_say_why() {
        let h = host(&[
            "--service",
            "a=127.0.0.1:1",
            "--service",
            "b=localhost:2",
            "--precedence",
            "required",
            "--cost",
            "7",
            "--offers",
            "64",
            "--health-check",
            "fluent-ping",
            "--health-interval",
            "2s",
            "--health-count",
            "1",
            "--proxy-protocol",
            "--grace-period",
            "1m",
            "--transport",
            "tcp",
            "--max-routers",
            "2",
            "--instance",
            "web-1",
        ])
        .unwrap();
        assert_eq!(h.services.len(), 2);
        assert_eq!(
            (h.precedence, h.cost, h.offers),
            (Precedence::Required, 7, 64)
        );
        assert_eq!(h.health_check, HealthCheck::FluentPing);
        assert!(h.proxy_protocol);
        assert_eq!(h.transport, TransportMode::Tcp);
        assert_eq!(
            (h.max_routers, h.instance.as_deref()),
            (Some(2), Some("web-1"))
        );
        for (bad, want) in [
            (
                &["--service", "a=127.0.0.1:1", "--precedence", "failed"][..],
                "failed is set by health checks",
            ),
            (&["--service", "a=127.0.0.1:1", "--offers", "65"][..], "65"),
            (&["--service", "a=127.0.0.1:1", "--offers", "0"][..], "0"),
            (
                &["--service", "a=127.0.0.1:1", "--health-count", "0"][..],
                "0",
            ),
            (
                &["--service", "a=127.0.0.1:1", "--health-check", "ping"][..],
                "ping",
            ),
            (&[][..], "--service"),
        ] {
            let e = host(bad).err().expect("refused").to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }
}
