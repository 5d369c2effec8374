//! Connect stdin and stdout to a service through Darkport, like `nc`.
//!
//! ```text
//! cargo run -p darkport --example dial -- --identity app-1.id --service echo \
//!     [--router HOST:PORT]... [--transport auto|quic|tcp]
//! ```
//!
//! The identity file comes from enrollment (`darkport::enroll`, or
//! `darkport-edge-client enroll`), and a policy must let the identity dial
//! the service. Without `--router` the client asks the controller named in
//! the identity which routers are online.
//!
//! What comes from stdin goes to the service; at the end of stdin the
//! service reads end of stream (a half-close) and can still answer. What
//! the service sends goes to stdout; when the service ends its side, the
//! program ends, as `nc` does.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::AsyncWriteExt;

use darkport::{
    describe_remote_end, Client, ClientOptions, RemoteEnd, Retry, SendHalf, StreamCode,
    TransportMode,
};

const USAGE: &str = "usage: dial --identity FILE --service NAME [--router HOST:PORT]... \
[--transport auto|quic|tcp]";

struct Args {
    identity: String,
    service: String,
    routers: Vec<String>,
    transport: TransportMode,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        identity: String::new(),
        service: String::new(),
        routers: Vec::new(),
        transport: TransportMode::Auto,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--identity" => args.identity = value,
            "--service" => args.service = value,
            "--router" => args.routers.push(value),
            "--transport" => args.transport = value.parse().map_err(anyhow::Error::msg)?,
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    if args.identity.is_empty() || args.service.is_empty() {
        bail!("--identity and --service are required\n{USAGE}");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(args));
    // Tokio reads stdin on a blocking thread; when the service ends first,
    // that read may never return (stdin still open). Do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn run(args: Args) -> Result<()> {
    // 1. Load the identity. The client renews its certificate in the file
    //    and caches the router list beside it.
    let client = Client::from_identity_file(
        args.identity.as_ref(),
        ClientOptions {
            routers: args.routers,
            transport: args.transport,
            ..Default::default()
        },
    )
    .with_context(|| format!("loading identity {}", args.identity))?;

    // 2. Dial. The router checks policy and answers before any byte flows,
    //    so a refusal is an error here, typed by who refused.
    let stream = match client.dial(&args.service).await {
        Ok(stream) => stream,
        Err(e) => {
            let next = match e.retry() {
                Retry::Final => "retrying as is would get the same answer",
                Retry::ElsewhereThenFinal => "every router refused this identity",
                _ => "every router was tried; try again later",
            };
            bail!("dialing {}: {e} ({next})", args.service);
        }
    };

    // 3. Copy both ways until the service ends its side.
    let (mut send, mut recv) = stream.into_split();
    let mut stdout = tokio::io::stdout();
    let received = {
        let download = tokio::io::copy(&mut recv, &mut stdout);
        until_second_ends(upload(&mut send), download).await
    };
    stdout.flush().await?;
    // Let the router see everything sent before the process ends (over
    // QUIC; over TCP it goes out with the connection's close).
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    drop((send, recv));
    client.close().await;

    match received {
        Ok(_) => Ok(()),
        Err(e) => {
            // A stream reset from the far side says who ended it.
            let end = e.get_ref().and_then(|i| i.downcast_ref::<RemoteEnd>());
            let who = describe_remote_end(end, client.identity().name.as_str(), &args.service);
            bail!("{who} ({e})")
        }
    }
}

/// Copies stdin to the service; at the end of stdin, a half-close. If
/// stdin fails, the stream is reset, so the service never takes part of
/// the input for all of it.
async fn upload(send: &mut SendHalf) -> io::Result<u64> {
    match tokio::io::copy(&mut tokio::io::stdin(), send).await {
        Ok(n) => {
            send.shutdown().await?;
            Ok(n)
        }
        Err(e) => {
            send.reset(StreamCode::Reset);
            Err(e)
        }
    }
}

/// Drives `first` and `second` together and returns `second`'s result as
/// soon as it ends, whether or not `first` has (stdin may stay open after
/// the service is done). A failed `first` is reported and stops nothing.
async fn until_second_ends<A, B, T>(first: A, second: B) -> io::Result<T>
where
    A: Future<Output = io::Result<u64>>,
    B: Future<Output = io::Result<T>>,
{
    let mut first = pin!(first);
    let mut second = pin!(second);
    let mut first_done = false;
    loop {
        tokio::select! {
            r = &mut first, if !first_done => {
                first_done = true;
                if let Err(e) = r {
                    eprintln!("reading stdin failed: {e}; the stream was reset");
                }
            }
            r = &mut second => return r,
        }
    }
}
