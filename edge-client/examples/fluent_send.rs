//! Send one log record to a private Fluentd through Darkport, from inside
//! the app: no local port, no sidecar, just the SDK.
//!
//! ```text
//! cargo run -p edge-client --example fluent_send -- --identity app-1.id \
//!     [--router HOST:PORT] [--service fluentd] [--tag darkport.example] [--message TEXT]
//! ```
//!
//! The identity file comes from `darkport-edge-client enroll`, and the
//! identity needs a policy that lets it dial the service. Without
//! `--router` the client asks the controller named in the identity which
//! routers are online.
//!
//! The record uses Fluentd's forward protocol, Message mode, and asks for
//! an ack, so the program only reports success once Fluentd has the record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use edge_client::{Client, ClientOptions};

const USAGE: &str = "usage: fluent_send --identity FILE [--router HOST:PORT]... \
[--service NAME] [--tag TAG] [--message TEXT]";

/// How long Fluentd gets to acknowledge the record.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    identity: String,
    routers: Vec<String>,
    service: String,
    tag: String,
    message: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        identity: String::new(),
        routers: Vec::new(),
        service: "fluentd".into(),
        tag: "darkport.example".into(),
        message: "hello from the Darkport SDK".into(),
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
            "--router" => args.routers.push(value),
            "--service" => args.service = value,
            "--tag" => args.tag = value,
            "--message" => args.message = value,
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    if args.identity.is_empty() {
        bail!("--identity is required\n{USAGE}");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;

    // 1. Load the enrolled identity (certificate, key, CA, controller).
    let client = Client::from_identity_file(
        args.identity.as_ref(),
        ClientOptions {
            routers: args.routers.clone(),
            ..Default::default()
        },
    )
    .with_context(|| format!("loading identity {}", args.identity))?;

    // 2. Dial the service by name. The router checks policy and answers
    //    before any byte flows, so a refusal is an error here, not a dead
    //    socket later.
    let mut stream = client
        .dial(&args.service)
        .await
        .with_context(|| format!("dialing {}", args.service))?;

    // 3. Write one forward-protocol record: [tag, time, record, option].
    //    The `chunk` option asks Fluentd to answer {"ack": chunk}.
    let chunk = chunk_id();
    let time = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let message = Value::Array(vec![
        Value::from(args.tag.as_str()),
        Value::from(time),
        Value::Map(vec![
            (Value::from("message"), Value::from(args.message.as_str())),
            (Value::from("host"), Value::from(hostname().as_str())),
        ]),
        Value::Map(vec![(Value::from("chunk"), Value::from(chunk.as_str()))]),
    ]);
    let mut wire = Vec::new();
    rmpv::encode::write_value(&mut wire, &message)?;
    stream
        .write_all(&wire)
        .await
        .context("sending the record")?;

    // 4. Wait for the ack. The stream is an ordinary AsyncRead.
    let ack = tokio::time::timeout(ACK_TIMEOUT, read_msgpack(&mut stream))
        .await
        .with_context(|| format!("no ack from {} within {ACK_TIMEOUT:?}", args.service))??;
    let acked = ack
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("ack")))
        .and_then(|(_, v)| v.as_str());
    if acked != Some(chunk.as_str()) {
        bail!(
            "unexpected answer from {}: {ack} (expected ack {chunk})",
            args.service
        );
    }
    println!("record acknowledged by {} (chunk {chunk})", args.service);

    // 5. Half-close cleanly (dropping an unfinished stream resets it), then
    //    close the router connection.
    stream.shutdown().await.context("closing the stream")?;
    client.close().await;
    Ok(())
}

/// Reads one msgpack value, however the bytes are split on the way.
async fn read_msgpack(stream: &mut edge_client::DialStream) -> Result<Value> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 256];
    loop {
        match rmpv::decode::read_value(&mut buf.as_slice()) {
            Ok(value) => return Ok(value),
            // Not all of it yet: read more.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => bail!("the service sent invalid msgpack: {e}"),
        }
        if buf.len() > 4096 {
            bail!("the service's answer is too long to be an ack");
        }
        let n = stream.read(&mut piece).await.context("reading the ack")?;
        if n == 0 {
            bail!("the service closed the stream without an ack");
        }
        buf.extend_from_slice(&piece[..n]);
    }
}

/// A fresh chunk id: 16 random-ish bytes, base64 (as Fluentd clients do).
fn chunk_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // std's hasher keys are randomly seeded per process; mixing in the time
    // and the pid is plenty for an id that only has to match its ack.
    let mut bytes = Vec::with_capacity(16);
    for i in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(i);
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        bytes.extend_from_slice(&h.finish().to_be_bytes());
    }
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// This machine's name, as well as std can tell.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
