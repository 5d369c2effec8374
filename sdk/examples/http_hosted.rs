//! Serve an HTTP app straight over Darkport, with no local port: the
//! program hosts a service, and every caller's stream is an HTTP/1.1
//! connection served by hyper. The answer names the caller, as the router
//! verified it.
//!
//! ```text
//! cargo run -p darkport --example http_hosted -- --identity web-1.id --service web \
//!     [--router HOST:PORT]...
//! # then, from an identity a dial policy allows:
//! darkport-edge-client run --identity app-1.id --forward 127.0.0.1:8080=web &
//! curl http://127.0.0.1:8080/
//! ```
//!
//! A bind policy must let the identity host the service
//! (`darkport-controller policy create web-hosts --type bind
//! --service-roles web --identity-roles web-1`). Ctrl-C drains: the
//! routers are told first, so no new caller arrives, then the program
//! waits for the open connections.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

use darkport::{Caller, Client, ClientOptions, ListenOptions};

#[tokio::main]
async fn main() -> Result<()> {
    let (identity, service, routers) = args()?;
    let client = Client::from_identity_file(
        identity.as_ref(),
        ClientOptions {
            routers,
            ..Default::default()
        },
    )?;
    let listener = client
        .listen(&service, ListenOptions::default())
        .await
        .with_context(|| format!("hosting {service}"))?;
    eprintln!("serving {service} over Darkport; no local port is open");
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let accepted = accepted?;
                let caller = accepted.caller;
                let io = TokioIo::new(accepted.stream);
                connections.spawn(async move {
                    let answer = hyper::service::service_fn(move |req| hello(req, caller.clone()));
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, answer)
                        .await
                    {
                        eprintln!("connection ended: {e}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Withdraw from every router first, then let the open connections end.
    listener.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    client.close().await;
    Ok(())
}

/// The app: it knows who calls without any login of its own.
async fn hello(
    req: Request<Incoming>,
    caller: Caller,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let roles: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
    let body = format!(
        "hello, {} (roles: {}); you asked for {} through router {}\n",
        caller.identity,
        roles.join(","),
        req.uri().path(),
        caller.router
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// `--identity FILE --service NAME [--router HOST:PORT]...`
fn args() -> Result<(String, String, Vec<String>)> {
    let (mut identity, mut service, mut routers) = (None, None, vec![]);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--identity" => identity = Some(value()?),
            "--service" => service = Some(value()?),
            "--router" => routers.push(value()?),
            other => bail!("unknown argument {other:?}; use --identity FILE --service NAME [--router HOST:PORT]..."),
        }
    }
    match (identity, service) {
        (Some(i), Some(s)) => Ok((i, s, routers)),
        _ => bail!("usage: http_hosted --identity FILE --service NAME [--router HOST:PORT]..."),
    }
}
