//! A small Fluentd forward-protocol receiver.
//!
//! Implements the receiving side of
//! [Forward Protocol v1](https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1)
//! over TCP, enough to stand in for Fluentd behind Darkport in tests and in
//! the quickstart:
//!
//! - Message mode: `[tag, time, record, option?]`
//! - Forward mode: `[tag, [[time, record], ...], option?]`
//! - PackedForward mode: `[tag, bin|str of concatenated [time, record], option?]`
//! - CompressedPackedForward mode: PackedForward with option
//!   `compressed: "gzip"` (one or more concatenated gzip members)
//!
//! `time` is an integer (seconds) or the `EventTime` ext type (type 0,
//! 8 bytes: big-endian seconds then nanoseconds), kept to the nanosecond.
//! Like Fluentd, a nil time means "now", and a float is accepted and
//! truncated. When the option map carries `chunk`, the receiver answers
//! `{"ack": chunk}` once the message's records have been handed over.
//!
//! It is as strict as Fluentd 1.16.11's `in_forward`, not kinder (the
//! fixtures in `fluent/tests/fixtures/forward-wire` show what the real one
//! does):
//! - a time of `[EventTime, {metadata}]` (Fluent Bit 5's default) fails the
//!   way Fluentd fails (`undefined method 'to_i' for [EventTime, {}]:Array`):
//!   the message is dropped unacked and the connection closed;
//! - with `<security>`, every HELO carries a fresh 16-byte user-auth salt,
//!   with or without users; the PING must be exactly
//!   `["PING", hostname, salt, digest, username, password digest]`, its
//!   digest is checked against the key, and the username and password only
//!   when users are configured; a failure is answered
//!   `["PONG", false, reason, "", ""]` and the connection closed.
//!
//! Not supported: heartbeats over UDP and TLS. A connection that sends
//! anything the decoder cannot make sense of is closed; nothing on the wire
//! can make the receiver panic or buffer more than [`MAX_MESSAGE`] bytes
//! (plus one read) per connection.
//!
//! [`Decoder`] is the socket-free, incremental part; [`serve`] runs it on
//! every accepted connection; [`FluentReceiver`] is a ready-made receiver
//! on 127.0.0.1 that keeps every record for inspection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use darkport_fluent::handshake::{ServerAuth, User};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

/// Largest message accepted, on the wire and after gzip decompression.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Most connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 256;

/// How long the peer gets to take an ack before the connection is dropped.
const ACK_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The event's tag.
    pub tag: String,
    /// Unix time in seconds.
    pub time: u64,
    /// Nanoseconds of an EventTime (0 for an integer time).
    pub nanos: u32,
    /// The record (a msgpack map).
    pub record: Value,
}

/// One decoded forward-protocol message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its events, in order.
    pub records: Vec<Record>,
    /// The `chunk` option, if the sender asked for an ack.
    pub chunk: Option<Value>,
}

impl Message {
    /// The encoded `{"ack": chunk}` answer, if one is due.
    pub fn ack(&self) -> Result<Option<Vec<u8>>> {
        let Some(chunk) = &self.chunk else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(64);
        let ack = Value::Map(vec![(Value::from("ack"), chunk.clone())]);
        rmpv::encode::write_value(&mut out, &ack).context("encoding the ack")?;
        Ok(Some(out))
    }
}

/// Incremental decoder for a forward-protocol byte stream, on
/// `darkport_fluent` (the codec the router uses): framing by
/// `scan::value_len`, modes and options by `message::parse`, entries by
/// `message::Entries`. Records are then decoded into `rmpv` values for
/// inspection: this is a test stand-in, the router never builds trees.
///
/// [`feed`](Decoder::feed) bytes as they arrive, then call
/// [`next_message`](Decoder::next_message) until it returns `Ok(None)`.
/// Messages may be split anywhere across feeds. After an error the stream
/// is unusable and the connection should be closed.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the first message not yet returned.
    start: usize,
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder with the [`MAX_MESSAGE`] limit.
    pub fn new() -> Decoder {
        Decoder::with_limit(MAX_MESSAGE)
    }

    /// A decoder accepting messages (and decompressed payloads) of at most
    /// `limit` bytes.
    pub fn with_limit(limit: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            limit,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as part of a message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or
    /// an error if the stream is not the forward protocol or breaks a limit.
    /// A heartbeat (top-level nil) is a message with no records.
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        use darkport_fluent::message::{self, Body, Entries};
        let pending = &self.buf[self.start..];
        let Some(len) = darkport_fluent::scan::value_len(pending)? else {
            if pending.len() > self.limit {
                bail!(
                    "message larger than the {} byte limit (already {} bytes buffered)",
                    self.limit,
                    pending.len()
                );
            }
            return Ok(None);
        };
        if len > self.limit {
            bail!(
                "message of {len} bytes is over the {} byte limit",
                self.limit
            );
        }
        let bytes = &pending[..len];
        self.start += len;
        if bytes == [0xc0] {
            return Ok(Some(Message {
                records: vec![],
                chunk: None,
            }));
        }
        let msg = message::parse(bytes)?;
        let tag = msg.tag.to_string();
        let mut records = Vec::new();
        let mut add = |time: &[u8], record: &[u8]| -> Result<()> {
            let record = read_one(record)?;
            if !record.is_map() {
                bail!("a record must be a map, got {}", kind(&record));
            }
            let (time, nanos) = event_time(&read_one(time)?)?;
            records.push(Record {
                tag: tag.clone(),
                time,
                nanos,
                record,
            });
            Ok(())
        };
        match msg.body {
            Body::Single { time, record } => add(time, record)?,
            Body::Forward { count, entries } => {
                for e in Entries::forward(count, entries) {
                    let (t, r) = e?;
                    add(t, r)?;
                }
            }
            Body::Packed(p) => {
                for e in Entries::packed(p) {
                    let (t, r) = e?;
                    add(t, r)?;
                }
            }
            Body::Compressed(gz) => {
                let mut plain = Vec::new();
                let codec = msg
                    .options
                    .compressed
                    .unwrap_or(darkport_fluent::Compression::Gzip);
                message::decompress(codec, gz, self.limit, &mut plain)?;
                for e in Entries::packed(&plain) {
                    let (t, r) = e?;
                    add(t, r)?;
                }
            }
        }
        let chunk = msg.options.chunk.map(read_one).transpose()?;
        Ok(Some(Message { records, chunk }))
    }
}

/// Decodes one whole msgpack value.
fn read_one(mut bytes: &[u8]) -> Result<Value> {
    rmpv::decode::read_value(&mut bytes).map_err(|e| anyhow!("bad msgpack: {e}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "bool",
        Value::Integer(_) => "integer",
        Value::F32(_) | Value::F64(_) => "float",
        Value::String(_) => "str",
        Value::Binary(_) => "bin",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Ext(..) => "ext",
    }
}

/// Seconds and nanoseconds of an integer, `EventTime`, float or nil (now)
/// time. An array time (`[EventTime, {metadata}]`, forward protocol v1.5
/// as Fluent Bit 5 sends it) is refused, as Fluentd 1.16 refuses it.
fn event_time(v: &Value) -> Result<(u64, u32)> {
    match v {
        Value::Array(_) => bail!(
            "NoMethodError: undefined method 'to_i' for [EventTime, {{}}]:Array (Fluentd up to 1.19.3 cannot read an array event time)"
        ),
        Value::Integer(i) => Ok((
            i.as_u64().ok_or_else(|| anyhow!("negative event time {i}"))?,
            0,
        )),
        Value::Ext(0, data) => match data.as_slice() {
            [a, b, c, d, e, f, g, h] => Ok((
                u64::from(u32::from_be_bytes([*a, *b, *c, *d])),
                u32::from_be_bytes([*e, *f, *g, *h]),
            )),
            _ => bail!("EventTime must be 8 bytes, got {}", data.len()),
        },
        Value::F64(f) if f.is_finite() && *f >= 0.0 => Ok((*f as u64, 0)),
        Value::F32(f) if f.is_finite() && *f >= 0.0 => Ok((*f as u64, 0)),
        Value::Nil => Ok((
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            0,
        )),
        Value::Ext(ty, _) => bail!("event time has ext type {ty}, expected EventTime (0)"),
        other => bail!(
            "event time must be an integer or EventTime, got {}",
            kind(other)
        ),
    }
}

/// A record sink shared by connection tasks.
type OnRecord = Arc<dyn Fn(Record) + Send + Sync>;

/// Accepts connections forever and calls `on_record` for every event, in
/// order per connection. An ack is sent only after `on_record` returned
/// for every event of the message.
pub async fn serve(listener: TcpListener, on_record: impl Fn(Record) + Send + Sync + 'static) {
    serve_counting(listener, Arc::new(on_record), Counters::default(), None).await
}

/// The hostname this receiver gives in PONG.
pub const RECEIVER_HOSTNAME: &str = "darkport-test-fluentd";

/// What a receiver counts, for tests to wait on.
#[derive(Debug, Default, Clone)]
struct Counters {
    /// Acks written to senders.
    acks: Arc<AtomicUsize>,
    /// Connections open now (counted down once everything read on one was
    /// handed to `on_record`).
    open: Arc<AtomicUsize>,
}

async fn serve_counting(
    listener: TcpListener,
    on_record: OnRecord,
    counters: Counters,
    security: Option<Arc<ServerAuth>>,
) {
    // Dropping this future (e.g. aborting its task) drops the set, which
    // aborts every connection task.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("fluent receiver: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if conns.len() >= MAX_CONNECTIONS {
                    warn!(%peer, "fluent receiver: {MAX_CONNECTIONS} connections open; closing the new one");
                    continue;
                }
                let on_record = on_record.clone();
                let counters = counters.clone();
                let security = security.clone();
                counters.open.fetch_add(1, Ordering::Relaxed);
                conns.spawn(async move {
                    match connection(tcp, &*on_record, &counters.acks, security.as_deref()).await {
                        Ok(()) => debug!(%peer, "fluent connection closed"),
                        Err(e) => warn!(%peer, "fluent connection closed: {e:#}"),
                    }
                    counters.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves one connection until the peer closes it or breaks the protocol.
async fn connection(
    mut tcp: TcpStream,
    on_record: &(dyn Fn(Record) + Send + Sync),
    acks: &AtomicUsize,
    security: Option<&ServerAuth>,
) -> Result<()> {
    let mut decoder = Decoder::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    if let Some(security) = security {
        let rest = handshake(&mut tcp, security).await?;
        decoder.feed(&rest);
    }
    loop {
        let n = tcp.read(&mut chunk).await.context("reading")?;
        if n == 0 {
            if decoder.buffered() > 0 {
                bail!(
                    "peer closed the connection in the middle of a message ({} bytes unused)",
                    decoder.buffered()
                );
            }
            // Answer the half-close so the peer sees a clean end.
            let _ = tcp.shutdown().await;
            return Ok(());
        }
        decoder.feed(&chunk[..n]);
        let mut answer = Vec::new();
        let mut count = 0;
        while let Some(msg) = decoder.next_message()? {
            let ack = msg.ack()?;
            for record in msg.records {
                on_record(record);
            }
            if let Some(ack) = ack {
                answer.extend_from_slice(&ack);
                count += 1;
            }
        }
        if !answer.is_empty() {
            tokio::time::timeout(ACK_WRITE_TIMEOUT, tcp.write_all(&answer))
                .await
                .map_err(|_| anyhow!("peer did not take its ack within {ACK_WRITE_TIMEOUT:?}"))?
                .context("sending the ack")?;
            acks.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// The server side of `<security>`, as Fluentd 1.16's in_forward does it:
/// HELO first, with a fresh user-auth salt whether or not users are
/// configured; then the PING checked (exactly 6 elements, the key's
/// digest, users only if there are any); PONG answered (a failure gets
/// `["PONG", false, reason, "", ""]` and the connection closes). Returns
/// bytes that followed the PING.
async fn handshake(tcp: &mut TcpStream, security: &ServerAuth) -> Result<Vec<u8>> {
    use darkport_fluent::handshake::{Helo, Ping, Pong, Refusal, MAX_HANDSHAKE};
    let helo = Helo {
        nonce: rand::random::<[u8; 16]>().to_vec(),
        auth: rand::random::<[u8; 16]>().to_vec(),
        keepalive: true,
    };
    tcp.write_all(&helo.encode())
        .await
        .context("sending HELO")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let len = loop {
        if let Some(n) = darkport_fluent::scan::value_len(&buf)? {
            break n;
        }
        if buf.len() > MAX_HANDSHAKE {
            bail!("PING larger than {MAX_HANDSHAKE} bytes");
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .map_err(|_| anyhow!("no PING within 10 s"))??;
        if n == 0 {
            bail!("peer closed the connection before its PING");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let pong = match Ping::parse(&buf[..len]) {
        Ok(ping) => (
            security.answer(&helo, &ping, RECEIVER_HOSTNAME),
            ping.hostname_lossy(),
        ),
        Err(_) => (Pong::refuse(&Refusal::InvalidPing), String::new()),
    };
    tcp.write_all(&pong.0.encode())
        .await
        .context("sending PONG")?;
    if !pong.0.ok {
        bail!(
            "PING from {:?} failed: {}",
            pong.1,
            String::from_utf8_lossy(&pong.0.reason)
        );
    }
    Ok(buf[len..].to_vec())
}

/// A receiver on 127.0.0.1 that keeps every record; stops when dropped.
#[derive(Debug)]
pub struct FluentReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    records: Arc<Mutex<Vec<Record>>>,
    counters: Counters,
    task: JoinHandle<()>,
}

impl FluentReceiver {
    /// Binds 127.0.0.1 on a port chosen by the OS and starts accepting.
    pub async fn start() -> Result<FluentReceiver> {
        FluentReceiver::start_with(None).await
    }

    /// [`FluentReceiver::start`], with `<security> shared_key` on: every
    /// connection must complete the handshake with `key` first.
    pub async fn start_with_shared_key(key: &str) -> Result<FluentReceiver> {
        FluentReceiver::start_with_security(key, &[]).await
    }

    /// [`FluentReceiver::start_with_shared_key`], with `<user>` sections
    /// too: (username, password) pairs, of which the PING must name one.
    pub async fn start_with_security(key: &str, users: &[(&str, &str)]) -> Result<FluentReceiver> {
        let security = ServerAuth {
            shared_key: key.to_string(),
            users: users
                .iter()
                .map(|(u, p)| User {
                    username: u.to_string(),
                    password: p.to_string(),
                })
                .collect(),
        };
        FluentReceiver::start_with(Some(Arc::new(security))).await
    }

    async fn start_with(security: Option<Arc<ServerAuth>>) -> Result<FluentReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fluent receiver")?;
        let addr = listener.local_addr()?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let counters = Counters::default();
        let sink = records.clone();
        let on_record: OnRecord = Arc::new(move |r: Record| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        });
        let task = tokio::spawn(serve_counting(
            listener,
            on_record,
            counters.clone(),
            security,
        ));
        Ok(FluentReceiver {
            addr,
            records,
            counters,
            task,
        })
    }

    /// Everything received so far, in arrival order.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many acks have been written to senders.
    pub fn acks_sent(&self) -> usize {
        self.counters.acks.load(Ordering::Relaxed)
    }

    /// How many connections are open now. Zero after a sender's
    /// connection closed means everything it carried is in
    /// [`FluentReceiver::records`]: nothing more can come of it.
    pub fn connections_open(&self) -> usize {
        self.counters.open.load(Ordering::Relaxed)
    }
}

impl Drop for FluentReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads msgpack values (acks, handshake messages) from a stream, keeping
/// what one read brought past a value for the next: a PONG and the first
/// ack can arrive in one read.
pub struct ValueReader<S> {
    /// The stream, for writing too.
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + Unpin> ValueReader<S> {
    /// Reads from `stream`.
    pub fn new(stream: S) -> ValueReader<S> {
        ValueReader {
            stream,
            buf: Vec::new(),
        }
    }

    /// The next value within `within`: `None` on timeout, `Err` if the
    /// stream fails, ends first, or sends more than 64 KiB without a value.
    pub async fn next(&mut self, within: Duration) -> Option<std::result::Result<Value, String>> {
        let mut chunk = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match darkport_fluent::scan::value_len(&self.buf) {
                Ok(Some(n)) => {
                    let v = read_one(&self.buf[..n]).map_err(|e| e.to_string());
                    self.buf.drain(..n);
                    return Some(v);
                }
                Ok(None) if self.buf.len() > 64 * 1024 => {
                    return Some(Err("over 64 KiB without a whole value".into()))
                }
                Ok(None) => {}
                Err(e) => return Some(Err(format!("not msgpack: {e}"))),
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) => return Some(Err("the stream ended".into())),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Some(Err(e.to_string())),
            }
        }
    }
}

/// The next msgpack value of a stream nothing else reads from (see
/// [`ValueReader`]).
pub async fn read_value(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> Option<std::result::Result<Value, String>> {
    ValueReader::new(stream).next(within).await
}

/// Renders a msgpack value as JSON: str and bin become strings (bin as
/// lossy UTF-8, as old clients send text as raw bytes), non-string map keys
/// their JSON text, non-finite floats null, ext `{"ext": type, "data": base64}`.
pub fn to_json(v: &Value) -> serde_json::Value {
    use base64::Engine as _;
    use serde_json::Value as J;
    match v {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => J::from(u),
            (None, Some(s)) => J::from(s),
            (None, None) => J::Null,
        },
        Value::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => J::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Value::Binary(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(ty, data) => serde_json::json!({
            "ext": ty,
            "data": base64::engine::general_purpose::STANDARD.encode(data),
        }),
    }
}

/// A record as one JSON object: `{"tag": ..., "time": ..., "record": ...}`.
pub fn record_json(r: &Record) -> serde_json::Value {
    serde_json::json!({ "tag": r.tag, "time": r.time, "record": to_json(&r.record) })
}

/// [`record_json`] as one line of text, keys in the order tag, time, record.
pub fn record_line(r: &Record) -> String {
    format!(
        "{{\"tag\":{},\"time\":{},\"record\":{}}}",
        serde_json::Value::from(r.tag.as_str()),
        r.time,
        to_json(&r.record)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encode");
        out
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (s(k), v.clone())).collect())
    }

    fn rec(seq: u64) -> Value {
        map(&[("seq", Value::from(seq)), ("msg", s("hi"))])
    }

    fn event_time(secs: u32, nanos: u32) -> Value {
        let mut data = secs.to_be_bytes().to_vec();
        data.extend_from_slice(&nanos.to_be_bytes());
        Value::Ext(0, data)
    }

    /// Feeds `bytes` in one go and collects every message.
    fn decode_all(bytes: &[u8]) -> Result<Vec<Message>> {
        let mut d = Decoder::new();
        d.feed(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.next_message()? {
            out.push(m);
        }
        assert_eq!(d.buffered(), 0, "leftover bytes");
        Ok(out)
    }

    fn one(bytes: &[u8]) -> Message {
        let mut msgs = decode_all(bytes).expect("decodes");
        assert_eq!(msgs.len(), 1);
        msgs.remove(0)
    }

    #[test]
    fn message_mode_with_integer_time_and_ack() {
        let chunk = s("cGluZw==");
        let wire = enc(&Value::Array(vec![
            s("app.log"),
            Value::from(1_700_000_000u64),
            rec(7),
            map(&[("chunk", chunk.clone()), ("size", Value::from(1))]),
        ]));
        let m = one(&wire);
        assert_eq!(
            m.records,
            vec![Record {
                tag: "app.log".into(),
                time: 1_700_000_000,
                nanos: 0,
                record: rec(7)
            }]
        );
        assert_eq!(m.chunk, Some(chunk.clone()));
        let ack = m.ack().expect("encodes").expect("ack due");
        let back = read_one(&ack).expect("ack decodes");
        assert_eq!(back, map(&[("ack", chunk)]));
    }

    #[test]
    fn message_mode_with_event_time_and_no_option() {
        let wire = enc(&Value::Array(vec![
            s("t"),
            event_time(1_700_000_001, 999),
            rec(1),
        ]));
        let m = one(&wire);
        assert_eq!(m.records[0].time, 1_700_000_001);
        assert_eq!(m.chunk, None);
        assert_eq!(m.ack().expect("ok"), None);
    }

    #[test]
    fn forward_mode() {
        let entries = (0..3)
            .map(|i| Value::Array(vec![Value::from(100 + i), rec(i)]))
            .collect();
        let wire = enc(&Value::Array(vec![
            s("fw"),
            Value::Array(entries),
            map(&[("chunk", s("c1"))]),
        ]));
        let m = one(&wire);
        assert_eq!(m.records.len(), 3);
        for (i, r) in m.records.iter().enumerate() {
            assert_eq!(r.tag, "fw");
            assert_eq!(r.time, 100 + i as u64);
            assert_eq!(r.record, rec(i as u64));
        }
        assert_eq!(m.chunk, Some(s("c1")));
    }

    fn packed_stream(n: u64) -> Vec<u8> {
        let mut packed = Vec::new();
        for i in 0..n {
            let time = if i % 2 == 0 {
                Value::from(i)
            } else {
                event_time(i as u32, 5)
            };
            packed.extend(enc(&Value::Array(vec![time, rec(i)])));
        }
        packed
    }

    fn check_packed(m: &Message, n: u64) {
        assert_eq!(m.records.len() as u64, n);
        for (i, r) in m.records.iter().enumerate() {
            assert_eq!((r.time, &r.record), (i as u64, &rec(i as u64)));
        }
    }

    #[test]
    fn packed_forward_as_bin_and_as_str() {
        let packed = packed_stream(4);
        let bin = enc(&Value::Array(vec![s("pf"), Value::Binary(packed.clone())]));
        check_packed(&one(&bin), 4);
        // Old clients send the entries as a (not necessarily UTF-8) str.
        let mut as_str = vec![0x92, 0xa2, b'p', b'f', 0xdb];
        as_str.extend((packed.len() as u32).to_be_bytes());
        as_str.extend(&packed);
        check_packed(&one(&as_str), 4);
        // `compressed: "text"` means not compressed.
        let text = enc(&Value::Array(vec![
            s("pf"),
            Value::Binary(packed),
            map(&[("compressed", s("text")), ("chunk", s("x"))]),
        ]));
        let m = one(&text);
        check_packed(&m, 4);
        assert_eq!(m.chunk, Some(s("x")));
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).expect("gzip");
        gz.finish().expect("gzip")
    }

    #[test]
    fn compressed_packed_forward() {
        let packed = packed_stream(6);
        // Two concatenated gzip members, as Fluentd may send.
        let mut body = gzip(&packed[..packed.len() / 2]);
        body.extend(gzip(&packed[packed.len() / 2..]));
        let wire = enc(&Value::Array(vec![
            s("cpf"),
            Value::Binary(body),
            map(&[("compressed", s("gzip")), ("chunk", s("z"))]),
        ]));
        let m = one(&wire);
        check_packed(&m, 6);
        assert_eq!(m.chunk, Some(s("z")));
    }

    #[test]
    fn compressed_payload_over_the_limit_is_refused() {
        let packed = packed_stream(200);
        assert!(packed.len() > 1024);
        let wire = enc(&Value::Array(vec![
            s("cpf"),
            Value::Binary(gzip(&packed)),
            map(&[("compressed", s("gzip"))]),
        ]));
        assert!(wire.len() < 1024, "the compressed message itself fits");
        let mut d = Decoder::with_limit(1024);
        d.feed(&wire);
        let e = d.next_message().expect_err("expands past the limit");
        assert!(format!("{e:#}").contains("decompressed"), "{e:#}");
    }

    fn sample_stream() -> (Vec<u8>, Vec<Record>) {
        let mut wire = enc(&Value::Array(vec![
            s("a"),
            Value::from(1),
            rec(0),
            map(&[("chunk", s("k"))]),
        ]));
        wire.extend(enc(&Value::Array(vec![
            s("b"),
            Value::Array(vec![Value::Array(vec![event_time(2, 0), rec(1)])]),
        ])));
        wire.extend(enc(&Value::Array(vec![
            s("c"),
            Value::Binary(packed_stream(2)),
        ])));
        let expected = vec![
            Record {
                tag: "a".into(),
                time: 1,
                nanos: 0,
                record: rec(0),
            },
            Record {
                tag: "b".into(),
                time: 2,
                nanos: 0,
                record: rec(1),
            },
            Record {
                tag: "c".into(),
                time: 0,
                nanos: 0,
                record: rec(0),
            },
            Record {
                tag: "c".into(),
                time: 1,
                nanos: 5,
                record: rec(1),
            },
        ];
        (wire, expected)
    }

    #[test]
    fn several_messages_split_at_every_byte_boundary() {
        let (wire, expected) = sample_stream();
        for cut in 0..=wire.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                d.feed(part);
                while let Some(m) = d.next_message().expect("valid stream") {
                    got.extend(m.records);
                }
            }
            assert_eq!(got, expected, "split at {cut}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn byte_by_byte() {
        let (wire, expected) = sample_stream();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let mut acks = 0;
        for b in &wire {
            d.feed(std::slice::from_ref(b));
            while let Some(m) = d.next_message().expect("valid stream") {
                acks += usize::from(m.chunk.is_some());
                got.extend(m.records);
            }
        }
        assert_eq!(got, expected);
        assert_eq!(acks, 1);
    }

    #[test]
    fn garbage_is_an_error() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("http", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            ("reserved marker", vec![0xc1]),
            ("not an array", enc(&s("hello"))),
            ("empty array", vec![0x90]),
            ("tag only", enc(&Value::Array(vec![s("t")]))),
            (
                "tag not a str",
                enc(&Value::Array(vec![Value::from(1), Value::from(1), rec(0)])),
            ),
            (
                "record not a map",
                enc(&Value::Array(vec![s("t"), Value::from(1), Value::from(2)])),
            ),
            (
                "no record",
                enc(&Value::Array(vec![s("t"), Value::from(1)])),
            ),
            (
                "negative time",
                enc(&Value::Array(vec![s("t"), Value::from(-1), rec(0)])),
            ),
            (
                "short EventTime",
                enc(&Value::Array(vec![
                    s("t"),
                    Value::Ext(0, vec![0; 4]),
                    rec(0),
                ])),
            ),
            (
                "other ext time",
                enc(&Value::Array(vec![
                    s("t"),
                    Value::Ext(5, vec![0; 8]),
                    rec(0),
                ])),
            ),
            (
                "option not a map",
                enc(&Value::Array(vec![
                    s("t"),
                    Value::from(1),
                    rec(0),
                    Value::from(3),
                ])),
            ),
            (
                "too many elements",
                enc(&Value::Array(vec![
                    s("t"),
                    Value::from(1),
                    rec(0),
                    map(&[]),
                    map(&[]),
                ])),
            ),
            (
                "bad forward entry",
                enc(&Value::Array(vec![
                    s("t"),
                    Value::Array(vec![Value::from(1)]),
                ])),
            ),
            (
                "truncated packed",
                enc(&Value::Array(vec![
                    s("t"),
                    Value::Binary(packed_stream(2)[..5].to_vec()),
                ])),
            ),
            (
                "bad gzip",
                enc(&Value::Array(vec![
                    s("t"),
                    Value::Binary(vec![1, 2, 3]),
                    map(&[("compressed", s("gzip"))]),
                ])),
            ),
            ("deep nesting", [vec![0x91; 100], vec![0xc0]].concat()),
            (
                "Fluent Bit 5 array time, as Fluentd 1.16 refuses it",
                enc(&Value::Array(vec![
                    s("t"),
                    Value::Array(vec![Value::Array(vec![
                        Value::Array(vec![event_time(1, 2), map(&[])]),
                        rec(0),
                    ])]),
                ])),
            ),
            (
                "array time in Message mode",
                enc(&Value::Array(vec![
                    s("t"),
                    Value::Array(vec![event_time(1, 2), map(&[])]),
                    rec(0),
                ])),
            ),
        ];
        for (name, wire) in cases {
            match decode_all(&wire) {
                Err(e) => eprintln!("{name}: {e:#}"),
                Ok(m) => panic!("{name}: accepted {m:?}"),
            }
        }
    }

    #[test]
    fn oversized_messages_are_refused_before_they_are_buffered() {
        // An array header promising 4 billion items, then filler.
        let mut d = Decoder::with_limit(1000);
        d.feed(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_message().expect("waiting").is_none());
        d.feed(&[0; 1000]);
        assert!(d.next_message().is_err());
        // A str whose length alone is over the limit.
        let mut d = Decoder::with_limit(1000);
        let mut big = vec![0x92, 0xdb, 0, 0, 0x10, 0];
        big.extend([b'x'; 2000]);
        d.feed(&big);
        assert!(d.next_message().is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        for seed in 0..300u64 {
            let len = (seed as usize * 7) % 300;
            let mut bytes = crate::payload(len, seed);
            // Half the time, start like a real message so the fuzz gets deeper.
            if seed % 2 == 0 {
                bytes.splice(0..0, [0x93, 0xa1, b't']);
            }
            let mut d = Decoder::with_limit(4096);
            for part in bytes.chunks(1 + seed as usize % 5) {
                d.feed(part);
                match d.next_message() {
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn json_rendering() {
        let r = Record {
            tag: "t".into(),
            time: 5,
            nanos: 0,
            record: Value::Map(vec![
                (s("msg"), s("hi")),
                (s("n"), Value::from(-3)),
                (s("bin"), Value::Binary(b"raw".to_vec())),
                (Value::from(1), Value::F64(f64::NAN)),
            ]),
        };
        assert_eq!(
            record_json(&r),
            serde_json::json!({"tag": "t", "time": 5, "record": {"msg": "hi", "n": -3, "bin": "raw", "1": null}})
        );
        let line = record_line(&r);
        assert!(
            line.starts_with(r#"{"tag":"t","time":5,"record":{"#),
            "{line}"
        );
        let back: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(back, record_json(&r));
    }

    #[tokio::test]
    async fn receiver_acks_and_keeps_records_over_tcp() {
        let rx = FluentReceiver::start().await.expect("start");
        let mut tcp = TcpStream::connect(rx.addr).await.expect("connect");
        let (wire, expected) = sample_stream();
        // Write in small pieces to cross read boundaries.
        for part in wire.chunks(3) {
            tcp.write_all(part).await.expect("write");
            tcp.flush().await.expect("flush");
        }
        let mut ack = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut ack))
            .await
            .expect("ack in time")
            .expect("read");
        assert_eq!(read_one(&ack[..n]).expect("ack"), map(&[("ack", s("k"))]));
        tcp.shutdown().await.expect("half-close");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
            .await
            .expect("receiver closes after our half-close")
            .expect("clean close");
        assert!(rest.is_empty());
        assert_eq!(rx.records(), expected);
        assert_eq!(rx.acks_sent(), 1);
    }

    #[tokio::test]
    async fn receiver_closes_on_garbage() {
        let rx = FluentReceiver::start().await.expect("start");
        let mut tcp = TcpStream::connect(rx.addr).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        // Closed (cleanly or by reset) without an answer.
        let r = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
            .await
            .expect("receiver closes");
        assert!(r.is_err() || buf.is_empty(), "{r:?} {buf:?}");
        assert!(rx.records().is_empty());
    }
}
