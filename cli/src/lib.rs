//! What the three Darkport binaries share, and the SDK does not need:
//! logging flags and their setup, and systemd readiness notifications.
//!
//! Each binary flattens [`LogArgs`] into its command line and calls
//! [`init_logging`] first thing. Libraries never depend on this crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::IsTerminal;

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; colour only on a terminal.
    Text,
    /// One JSON object per event: `timestamp`, `level`, `target`, `fields`
    /// (with `message`), for log shippers.
    Json,
}

/// Logging flags, the same for every binary. `RUST_LOG`, when set,
/// overrides `--log-level`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = ENV_LOG_FORMAT
    )]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a filter such as
    /// "info,darkport_edge_router=debug".
    #[arg(long, global = true, default_value = "info", env = ENV_LOG_LEVEL)]
    pub log_level: String,
}

/// Environment variable for `--log-format`.
pub const ENV_LOG_FORMAT: &str = "DARKPORT_LOG_FORMAT";

/// Environment variable for `--log-level`.
pub const ENV_LOG_LEVEL: &str = "DARKPORT_LOG_LEVEL";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The level or filter does not parse.
    #[error("--log-level {given:?} is not a level or filter ({reason}); use error, warn, info, debug or trace, or e.g. \"info,darkport_edge_router=debug\"")]
    BadFilter {
        /// What was given.
        given: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A global subscriber is installed already.
    #[error("logging was set up twice: {0}")]
    AlreadySet(String),
}

/// Installs the global log subscriber: stderr, in the chosen format, at
/// the chosen level (`RUST_LOG` wins when set), with ANSI colour only when
/// stderr is a terminal.
pub fn init_logging(args: &LogArgs) -> Result<(), LogError> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(&env).map_err(|e| (env, e)),
        _ => EnvFilter::try_new(&args.log_level).map_err(|e| (args.log_level.clone(), e)),
    }
    .map_err(|(given, e)| LogError::BadFilter {
        given,
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    result.map_err(|e| LogError::AlreadySet(e.to_string()))
}

/// Tells systemd (`Type=notify`) that the service is up: its sockets are
/// bound and its identity and configuration are loaded. Does nothing when
/// not started by systemd (no `NOTIFY_SOCKET`).
pub fn notify_ready() {
    notify(sd_notify::NotifyState::Ready, "READY=1");
}

/// Tells systemd that the service is stopping (draining), so a stop is not
/// mistaken for a hang.
pub fn notify_stopping() {
    notify(sd_notify::NotifyState::Stopping, "STOPPING=1");
}

fn notify(state: sd_notify::NotifyState<'_>, what: &str) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!("cannot tell systemd {what}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["x"]).expect("defaults");
        assert_eq!(cli.log.log_format, LogFormat::Text);
        assert_eq!(cli.log.log_level, "info");
        let cli = Cli::try_parse_from(["x", "--log-format", "json", "--log-level", "debug"])
            .expect("flags");
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert_eq!(cli.log.log_level, "debug");
        assert!(Cli::try_parse_from(["x", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn a_bad_level_is_a_clear_error() {
        let args = LogArgs {
            log_format: LogFormat::Text,
            log_level: "info,=[".into(),
        };
        // RUST_LOG, if the test environment sets it, would win; only check
        // the message when it does not.
        if std::env::var("RUST_LOG").is_err() {
            let e = init_logging(&args).expect_err("bad filter");
            assert!(e.to_string().contains("--log-level"), "{e}");
        }
    }
}
