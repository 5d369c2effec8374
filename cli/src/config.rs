//! Config files: `--config FILE` (TOML) with a key for every flag of the
//! command it is given to.
//!
//! There is one source of truth for settings, the clap definitions: a key
//! is a flag's long name (`max-streams-per-identity`, or with
//! underscores), its value what the flag would take. The file is turned
//! into flags and parsed by clap with the command line, so types, ranges
//! and defaults are checked once, the same way. Precedence: command-line
//! flags, then `DARKPORT_*` environment variables, then the file, then
//! defaults. A list flag given on the command line replaces the file's
//! list rather than adding to it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

/// Environment variable for `--config`.
pub const ENV_CONFIG: &str = "DARKPORT_CONFIG";

/// Largest config file read (a config is a few hundred bytes).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The `--config` flag, for a command that takes a config file.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML file with a key for any flag of this command (e.g.
    /// `listen = "0.0.0.0:4433"`); flags and DARKPORT_* variables
    /// override it. SIGHUP reads it again.
    #[arg(long, env = ENV_CONFIG, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where and why, from the parser.
        reason: String,
    },
    /// A key names no flag of the command.
    #[error("config file {path}: unknown key {key:?}; `{command}` takes: {known}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The command the file was given to.
        command: String,
        /// The keys it takes.
        known: String,
    },
    /// A key's value has a type no flag takes.
    #[error("config file {path}: key {key:?} {reason}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The settings, file and flags together, do not parse.
    #[error("with config file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// clap's message.
        reason: String,
    },
}

/// Parses the process's command line, with the config file it names, into
/// `C`. Help, version and command-line errors exit the process the way
/// clap does; a bad config file is an error naming the file.
pub fn parse<C: CommandFactory + FromArgMatches>() -> Result<C, ConfigError> {
    parse_from::<C>(std::env::args_os().collect())
}

/// [`parse`] over the given arguments (the first is the program name).
pub fn parse_from<C: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> Result<C, ConfigError> {
    // A lenient first pass finds the config file and which settings the
    // command line or the environment give: required flags may be in the
    // file, so they may be missing here.
    let mut cmd = C::command().ignore_errors(true);
    cmd.build();
    let lenient = cmd.clone().try_get_matches_from(&args);
    let (leaf, matches) = match &lenient {
        Ok(m) => leaf(&cmd, m),
        Err(_) => (&cmd, None),
    };
    let path = matches.and_then(|m| m.try_get_one::<PathBuf>("config").ok().flatten().cloned());
    let Some(path) = path else {
        return Ok(strict::<C>(&args));
    };
    let matches = matches.expect("a config path comes from matches");
    let flags = file_flags(&path, leaf, matches)?;
    let mut all = args.clone();
    // After `--`, flags would be taken as positional values.
    if !flags.is_empty() && args.iter().any(|a| a == "--") {
        return Err(ConfigError::Invalid {
            path,
            reason: "a config file cannot be combined with `--` on the command line".into(),
        });
    }
    all.extend(flags.into_iter().map(OsString::from));
    let matches = C::command()
        .try_get_matches_from(&all)
        .map_err(|e| match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                e.exit()
            }
            _ => ConfigError::Invalid {
                path: path.clone(),
                reason: e.render().to_string().trim().to_string(),
            },
        })?;
    C::from_arg_matches(&matches).map_err(|e| ConfigError::Invalid {
        path,
        reason: e.to_string(),
    })
}

/// Parses without a config file, exiting on help, version or errors as
/// clap does.
fn strict<C: CommandFactory + FromArgMatches>(args: &[OsString]) -> C {
    let matches = C::command().get_matches_from(args);
    C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The subcommand that will run, and its matches.
fn leaf<'a>(cmd: &'a Command, m: &'a ArgMatches) -> (&'a Command, Option<&'a ArgMatches>) {
    match m.subcommand() {
        Some((name, sub)) => match cmd.find_subcommand(name) {
            Some(c) => leaf(c, sub),
            None => (cmd, Some(m)),
        },
        None => (cmd, Some(m)),
    }
}

/// The file's settings as `--key=value` flags, leaving out those the
/// command line or the environment set.
fn file_flags(
    path: &Path,
    cmd: &Command,
    matches: &ArgMatches,
) -> Result<Vec<String>, ConfigError> {
    let table = read(path)?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && a.get_id() != "config")
            .ok_or_else(|| ConfigError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                command: cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string(),
                known: known_keys(cmd).join(", "),
            })?;
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let bad = |reason: &str| ConfigError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            reason: reason.to_string(),
        };
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let values = match value {
            toml::Value::Array(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    return Err(bad("takes one value, not a list"));
                }
                items.iter().map(scalar).collect::<Option<Vec<_>>>()
            }
            v => scalar(v).map(|s| vec![s]),
        }
        .ok_or_else(|| bad("must be a string, number, boolean or a list of them"))?;
        for v in values {
            match (is_switch, v.as_str()) {
                (true, "true") => flags.push(format!("--{long}")),
                (true, "false") => {}
                (true, _) => return Err(bad("is a switch: true or false")),
                (false, _) => flags.push(format!("--{long}={v}")),
            }
        }
    }
    Ok(flags)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn read(path: &Path) -> Result<toml::Table, ConfigError> {
    use std::io::Read;
    let err = |reason: String| ConfigError::Read {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "larger than {MAX_CONFIG_BYTES} bytes; is it the right file?"
        )));
    }
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            reason: e.to_string().trim().to_string(),
        })
}

/// The keys a command's config file may hold.
pub fn known_keys(cmd: &Command) -> Vec<String> {
    cmd.get_arguments()
        .filter(|a| !a.is_positional() && a.get_id() != "config" && a.get_id() != "help")
        .filter(|a| a.get_id() != "version")
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    #[derive(Parser, Debug)]
    #[command(name = "t")]
    struct Cli {
        #[arg(long, global = true, default_value = "info")]
        log_level: String,
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        Run {
            #[command(flatten)]
            config: ConfigArgs,
            #[arg(long)]
            listen: String,
            #[arg(long, default_value_t = 8)]
            max: u32,
            #[arg(long = "forward")]
            forwards: Vec<String>,
            #[arg(long)]
            verbose: bool,
        },
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn run(args: &[&str]) -> Result<Cli, ConfigError> {
        parse_from::<Cli>(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn the_file_fills_in_and_flags_override() {
        let f = file(
            "listen = \"127.0.0.1:1\"\nmax = 3\nforward = [\"a=b\", \"c=d\"]\nverbose = true\nlog_level = \"debug\"\n",
        );
        let path = f.path().to_str().expect("utf-8");
        let cli = run(&["t", "run", "--config", path]).expect("parses");
        let Cmd::Run {
            listen,
            max,
            forwards,
            verbose,
            ..
        } = cli.cmd;
        assert_eq!((listen.as_str(), max, verbose), ("127.0.0.1:1", 3, true));
        assert_eq!(forwards, ["a=b", "c=d"]);
        assert_eq!(cli.log_level, "debug");

        let cli = run(&[
            "t",
            "run",
            "--config",
            path,
            "--max",
            "5",
            "--forward",
            "x=y",
        ])
        .expect("parses");
        let Cmd::Run { max, forwards, .. } = cli.cmd;
        assert_eq!(max, 5, "the flag wins");
        assert_eq!(forwards, ["x=y"], "a list flag replaces the file's list");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let f = file("listen = \"x\"\nmax_stream = 3\n");
        let path = f.path().to_str().expect("utf-8");
        let e = run(&["t", "run", "--config", path]).expect_err("unknown key");
        let msg = e.to_string();
        assert!(msg.contains("\"max_stream\""), "{msg}");
        assert!(msg.contains(path), "{msg}");
        assert!(msg.contains("max, forward"), "{msg}");
    }

    #[test]
    fn bad_values_and_files_are_clear() {
        let f = file("listen = \"x\"\nmax = \"many\"\n");
        let path = f.path().to_str().expect("utf-8");
        let e = run(&["t", "run", "--config", path]).expect_err("bad value");
        assert!(e.to_string().contains("--max"), "{e}");
        assert!(e.to_string().contains(path), "{e}");

        let f = file("listen = [\"x\"]\n");
        let e = run(&["t", "run", "--config", f.path().to_str().expect("utf-8")])
            .expect_err("list for one value");
        assert!(e.to_string().contains("not a list"), "{e}");

        let f = file("listen = \n");
        let e =
            run(&["t", "run", "--config", f.path().to_str().expect("utf-8")]).expect_err("syntax");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");

        let e = run(&["t", "run", "--config", "/nonexistent/darkport.toml"]).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/darkport.toml"), "{e}");

        let f = file("verbose = \"yes\"\nlisten = \"x\"\n");
        let e =
            run(&["t", "run", "--config", f.path().to_str().expect("utf-8")]).expect_err("switch");
        assert!(e.to_string().contains("true or false"), "{e}");
    }

    #[test]
    fn without_a_file_it_is_plain_clap() {
        let cli = run(&["t", "run", "--listen", "l"]).expect("parses");
        let Cmd::Run { listen, max, .. } = cli.cmd;
        assert_eq!((listen.as_str(), max), ("l", 8));
    }
}
