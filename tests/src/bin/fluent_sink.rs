//! `darkport-fluent-sink`: a Fluentd forward-protocol receiver that prints
//! every record it gets as one JSON line on stdout:
//!
//! ```text
//! darkport-fluent-sink --listen 127.0.0.1:24224
//! {"tag":"app.log","time":1700000000,"record":{"message":"hello"}}
//! ```
//!
//! Prints `listening on ADDR` to stderr once bound. Acks records whose
//! option map carries `chunk`. Used by the quickstart as the private
//! service; see `darkport_tests::fluent` for what it accepts.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use darkport_tests::fluent::{record_line, serve, Record};

const DEFAULT_LISTEN: &str = "127.0.0.1:24224";

const USAGE: &str = "\
usage: darkport-fluent-sink [--listen ADDR]

Receives Fluentd forward-protocol records over TCP and prints each one as a
JSON line {\"tag\":..., \"time\":..., \"record\":...} on stdout.

  --listen ADDR   address to listen on (default 127.0.0.1:24224; port 0 picks one)
  -h, --help      show this help

RUST_LOG controls the log on stderr (default: warn).";

/// Parses the command line; `Ok(None)` means help was asked for.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<SocketAddr>, String> {
    let mut listen = DEFAULT_LISTEN.to_string();
    let mut args = args;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| "--listen needs an address, e.g. 127.0.0.1:24224".to_string())?;
            }
            other => match other.strip_prefix("--listen=") {
                Some(addr) => listen = addr.to_string(),
                None => return Err(format!("unexpected argument {other:?}")),
            },
        }
    }
    listen
        .parse()
        .map(Some)
        .map_err(|e| format!("--listen {listen:?}: {e} (expected IP:PORT)"))
}

/// Writes one record line and flushes, so readers see it at once.
fn print_record(r: &Record) {
    let mut out = std::io::stdout().lock();
    let line = record_line(r);
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        // Nobody is reading any more (e.g. piped into `head`): stop.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("darkport-fluent-sink: writing to stdout failed: {e}");
        std::process::exit(1);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let listen = match parse_args(std::env::args().skip(1)) {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("darkport-fluent-sink: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("darkport-fluent-sink: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    eprintln!("listening on {addr}");
    serve(listener, |r| print_record(&r)).await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<SocketAddr>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn args() {
        assert_eq!(parse(&[]), Ok(Some(DEFAULT_LISTEN.parse().expect("addr"))));
        assert_eq!(
            parse(&["--listen", "127.0.0.1:5"]),
            Ok(Some("127.0.0.1:5".parse().expect("addr")))
        );
        assert_eq!(
            parse(&["--listen=127.0.0.1:6"]),
            Ok(Some("127.0.0.1:6".parse().expect("addr")))
        );
        assert_eq!(parse(&["--help"]), Ok(None));
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
