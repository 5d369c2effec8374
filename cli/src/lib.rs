//! What the three Darkport binaries share, and the SDK does not need:
//! logging flags and their setup, config files ([`config`]), the metrics
//! and health endpoint ([`health`]), and systemd notifications.
//!
//! Each binary flattens [`LogArgs`] into its command line, implements
//! [`CommandLine`], and starts with [`start`] (arguments, config file and
//! logging) and ends with [`exit`]; its `run` ends its start-up with
//! [`ready_until_stopped`]. [`binary`] has these and the subcommands every
//! binary shares. Libraries never depend on this crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::IsTerminal;

pub mod binary;
pub mod config;
pub mod health;

pub use binary::{
    exit, ready_until_stopped, start, AssetsArgs, CommandLine, EnrollArgs, StartError,
};

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
    /// A global subscriber is installed already, or cannot be changed.
    #[error("cannot set up logging: {0}")]
    AlreadySet(String),
}

/// Changes the log level of a running process (SIGHUP).
pub struct LogHandle {
    set: Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle").finish_non_exhaustive()
    }
}

impl LogHandle {
    /// Applies `args.log_level` (`RUST_LOG`, when set, still wins), as on
    /// start.
    pub fn reload(&self, args: &LogArgs) -> Result<(), LogError> {
        (self.set)(filter(args)?).map_err(LogError::AlreadySet)
    }
}

fn filter(args: &LogArgs) -> Result<tracing_subscriber::EnvFilter, LogError> {
    use tracing_subscriber::EnvFilter;
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(&env).map_err(|e| (env, e)),
        _ => EnvFilter::try_new(&args.log_level).map_err(|e| (args.log_level.clone(), e)),
    }
    .map_err(|(given, e)| LogError::BadFilter {
        given,
        reason: e.to_string(),
    })
}

/// Installs the global log subscriber: stderr, in the chosen format, at
/// the chosen level (`RUST_LOG` wins when set), with ANSI colour only when
/// stderr is a terminal. The handle changes the level later.
pub fn init_logging(args: &LogArgs) -> Result<LogHandle, LogError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter(args)?);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match args.log_format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().with_ansi(false).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|e| LogError::AlreadySet(e.to_string()))?;
    Ok(LogHandle {
        set: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
    })
}

/// The flags every long-running `run` shares: its config file and its
/// metrics and health endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct RunCommon {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: config::ConfigArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub metrics: health::MetricsArgs,
}

/// What a binary does on SIGHUP: parse the command line and config file
/// again (as [`config::parse`]), apply the log level, then `apply` the rest
/// of what is safe to change. A config that does not parse is logged and
/// the process carries on with the settings it has; SIGHUP never ends it.
pub fn reload_on_hangup<C>(
    log: LogHandle,
    log_args: fn(&C) -> &LogArgs,
    apply: impl Fn(&C) + Send + 'static,
) -> impl FnMut() + Send + 'static
where
    C: clap::CommandFactory + clap::FromArgMatches + 'static,
{
    move || match config::parse::<C>() {
        Ok(c) => {
            if let Err(e) = log.reload(log_args(&c)) {
                tracing::warn!("SIGHUP: log level not changed: {e}");
            }
            apply(&c);
            tracing::info!("SIGHUP: settings reloaded");
        }
        Err(e) => {
            tracing::warn!("SIGHUP: settings not reloaded, running on with the previous ones: {e}")
        }
    }
}

/// An error and its causes on one line, each cause once: many errors
/// repeat their source's text in their own message, and printing the chain
/// as is would say the same thing two or three times.
pub fn error_report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        source = s.source();
    }
    out
}

/// Writes man pages (`man1/NAME.1`, and `NAME-SUB.1` for each
/// subcommand) and bash, zsh and fish completions (`completions/SHELL/`) for
/// `cmd` into `dir`: the packages ship them. Hidden commands get none.
pub fn generate_assets(mut cmd: clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    let name = cmd.get_name().to_string();
    let man = dir.join("man1");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    cmd.build();
    fn pages(cmd: &clap::Command, name: &str, man: &std::path::Path) -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(name.to_string())).render(&mut out)?;
        std::fs::write(man.join(format!("{name}.1")), out)?;
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            pages(sub, &format!("{name}-{}", sub.get_name()), man)?;
        }
        Ok(())
    }
    pages(&cmd, &name, &man)?;
    // Named as each shell looks them up: bash by command name, zsh as
    // _NAME, fish as NAME.fish.
    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let dir = completions.join(shell.to_string());
        std::fs::create_dir_all(&dir)?;
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut out);
        std::fs::write(dir.join(file), out)?;
    }
    Ok(())
}

/// For each binary's tests: clap's own consistency checks, and help text
/// on every flag, argument and subcommand.
pub fn assert_cli_documented(cmd: clap::Command) {
    cmd.clone().debug_assert();
    let missing = missing_help(&cmd);
    assert!(missing.is_empty(), "no help text: {missing:?}");
}

/// Every flag and argument of `cmd` and its subcommands that has no help
/// text, as "COMMAND PATH: --flag" (empty when all have it).
pub fn missing_help(cmd: &clap::Command) -> Vec<String> {
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name()).trim().to_string();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" || a.is_hide_set() {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{path}: {}", a.get_long().unwrap_or(id)));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" && sub.get_about().is_none() {
                out.push(format!("{path} {}: (no about)", sub.get_name()));
            }
            walk(sub, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(cmd, "", &mut out);
    out
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
    fn error_report_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot load /x.id: {0}")]
        struct Load(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("identity: {0}")]
        struct Outer(#[source] Load);
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = Outer(Load(io()));
        let r = error_report(&e);
        assert_eq!(r.matches(&io().to_string()).count(), 1, "{r}");
        assert!(r.starts_with("identity: cannot load /x.id"), "{r}");

        #[derive(Debug, thiserror::Error)]
        #[error("startup failed")]
        struct Bare(#[source] std::io::Error);
        let r = error_report(&Bare(io()));
        assert_eq!(r, format!("startup failed: {}", io()));
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
