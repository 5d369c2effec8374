//! The load generator: the same code drives every path; only the address
//! differs. Every operation is bounded in time and checks what it gets
//! back, so a broken path fails loudly instead of looking fast.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::services::RR_SIZE;

/// Longest any single request/reply may take before the run fails.
const OP_TIMEOUT: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .with_context(|| format!("{what} took over {OP_TIMEOUT:?}"))?
}

/// One connect + 100-byte request + 100-byte reply + close.
pub async fn one_rr(addr: SocketAddr) -> Result<()> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&[b'q'; RR_SIZE]).await?;
    let mut reply = [0u8; RR_SIZE];
    tcp.read_exact(&mut reply)
        .await
        .with_context(|| format!("reading the reply from {addr}"))?;
    ensure!(reply == [b'r'; RR_SIZE], "wrong reply from {addr}");
    Ok(())
}

/// Result of a bulk transfer.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Bytes acknowledged by the sink.
    pub bytes: u64,
    /// From the first byte written to the last count received.
    pub secs: f64,
}

impl Bulk {
    /// Gigabits per second.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }
}

/// Pushes `total` bytes one way to the sink over `conns` connections.
pub async fn bulk(addr: SocketAddr, total: u64, conns: usize) -> Result<Bulk> {
    let per = total / conns as u64;
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let tcp = bounded("connecting", async { Ok(TcpStream::connect(addr).await?) })
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        streams.push(tcp);
    }
    let block: Arc<Vec<u8>> = Arc::new((0..256 * 1024).map(|i| (i * 7 + 3) as u8).collect());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut tcp in streams {
        let block = block.clone();
        tasks.spawn(async move {
            let mut left = per;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                tcp.write_all(&block[..n]).await.context("writing")?;
                left -= n as u64;
            }
            tcp.shutdown().await.context("half-closing")?;
            let mut count = [0u8; 8];
            tcp.read_exact(&mut count)
                .await
                .context("reading the sink's byte count")?;
            let got = u64::from_be_bytes(count);
            ensure!(got == per, "sink received {got} bytes of {per}");
            Ok::<_, anyhow::Error>(())
        });
    }
    // Generous bound: 2 GiB at 50 Mbit/s.
    let limit = Duration::from_secs(30 + total / (6 * 1024 * 1024));
    tokio::time::timeout(limit, async {
        while let Some(r) = tasks.join_next().await {
            r.context("bulk task panicked")??;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .with_context(|| format!("bulk transfer to {addr} took over {limit:?}"))??;
    Ok(Bulk {
        bytes: per * conns as u64,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Result of the connection-setup scenario.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Connections per second over the whole run.
    pub per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// `n` short connections, `parallel` at a time.
pub async fn setup(addr: SocketAddr, n: usize, parallel: usize) -> Result<Setup> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..parallel {
        let count = n / parallel + usize::from(w < n % parallel);
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(count);
            for _ in 0..count {
                let t = Instant::now();
                bounded("a short connection", one_rr(addr)).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut lat = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        lat.extend(r.context("setup task panicked")??);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1e3
    };
    Ok(Setup {
        per_sec: n as f64 / secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

/// Bytes each connection echoes, twice; also the ping-pong message.
const ECHO_SIZE: usize = 64;

/// Result of the ping-pong scenario.
#[derive(Debug, Clone)]
pub struct PingPong {
    /// Round trips measured.
    pub rounds: usize,
    /// Median round trip, µs.
    pub p50_us: f64,
    /// 99th percentile round trip, µs.
    pub p99_us: f64,
}

/// Round trips measured after this many unmeasured ones (connection
/// warm-up: the first ones pay for the dial and the pools filling).
const PING_WARMUP: usize = 200;

/// `rounds` round trips of one [`ECHO_SIZE`]-byte message each way on one
/// kept connection to the echo service: the latency of an acked batch
/// without the batch.
pub async fn ping_pong(addr: SocketAddr, rounds: usize) -> Result<PingPong> {
    let mut tcp = bounded("connecting for ping-pong", async {
        Ok(TcpStream::connect(addr).await?)
    })
    .await?;
    tcp.set_nodelay(true)?;
    let mut lat = Vec::with_capacity(rounds);
    for i in 0..PING_WARMUP + rounds {
        let t = Instant::now();
        bounded("a ping-pong round trip", echo_once(&mut tcp, i as u64)).await?;
        if i >= PING_WARMUP {
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1e6
    };
    Ok(PingPong {
        rounds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

async fn echo_once(tcp: &mut TcpStream, tag: u64) -> Result<()> {
    let mut msg = [0u8; ECHO_SIZE];
    msg[..8].copy_from_slice(&tag.to_be_bytes());
    tcp.write_all(&msg).await?;
    let mut back = [0u8; ECHO_SIZE];
    tcp.read_exact(&mut back).await?;
    ensure!(back == msg, "echo returned other bytes");
    Ok(())
}

/// Opens `n` connections to the echo service (`parallel` opening at a
/// time), each echoing once; then echoes once more on all of them at once,
/// which proves they are all open together. Returns them still open.
pub async fn open_many(addr: SocketAddr, n: usize, parallel: usize) -> Result<Vec<TcpStream>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            bounded("opening an echo connection", async {
                let mut tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                echo_once(&mut tcp, i as u64).await?;
                Ok(tcp)
            })
            .await
        });
    }
    let mut open = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        open.push(r.context("open task panicked")??);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut tcp) in open.into_iter().enumerate() {
        tasks.spawn(async move {
            bounded(
                "echoing on an open connection",
                echo_once(&mut tcp, i as u64),
            )
            .await?;
            Ok::<_, anyhow::Error>(tcp)
        });
    }
    let mut open = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        open.push(r.context("echo task panicked")??);
    }
    Ok(open)
}

/// Records per second of the Fluentd scenario.
#[derive(Debug, Clone, Copy)]
pub struct Fluent {
    /// Acknowledged records per second.
    pub records_per_sec: f64,
}

/// Bytes of one record as sent: `[EventTime, {"message": ..., "level": ...}]`.
fn record_entry(seq: u64) -> Vec<u8> {
    use rmpv::Value;
    let mut time = Vec::with_capacity(8);
    time.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    time.extend_from_slice(&((seq % 1_000_000_000) as u32).to_be_bytes());
    let message = format!("{seq:016} GET /api/v1/items?page=3 200 1532 bytes in 2.4 ms from 10.1.2.3 via darkport-bench");
    let v = Value::Array(vec![
        Value::Ext(0, time),
        Value::Map(vec![
            (Value::from("message"), Value::from(message)),
            (Value::from("level"), Value::from("info")),
        ]),
    ]);
    let mut out = Vec::with_capacity(160);
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &v);
    out
}

/// The PackedForward message `[tag, bin(entries), {"chunk": id, "size": n}]`.
fn packed_forward(entries: &[u8], records: usize, chunk: &str) -> Vec<u8> {
    use rmpv::Value;
    let v = Value::Array(vec![
        Value::from("bench.fluent"),
        Value::Binary(entries.to_vec()),
        Value::Map(vec![
            (Value::from("chunk"), Value::from(chunk)),
            (Value::from("size"), Value::from(records as u64)),
        ]),
    ]);
    let mut out = Vec::with_capacity(entries.len() + 64);
    let _ = rmpv::encode::write_value(&mut out, &v);
    out
}

/// Size of one encoded record, for the docs.
pub fn record_size() -> usize {
    record_entry(0).len()
}

/// The acks at the front of `buf` (their chunk ids) and how many bytes
/// they took, framed with the codec the router uses; a value cut short
/// stays for later.
fn take_acks(buf: &[u8]) -> Result<(Vec<String>, usize)> {
    let mut acks = Vec::new();
    let mut used = 0;
    while let Some(n) = darkport_fluent::scan::value_len(&buf[used..])
        .map_err(|e| anyhow::anyhow!("the receiver sent something that is not msgpack: {e}"))?
    {
        let v = &buf[used..used + n];
        let chunk = darkport_fluent::ack::parse(v)
            .and_then(darkport_fluent::scan::as_str)
            .with_context(|| format!("expected {{\"ack\": chunk}}, got {v:?}"))?;
        acks.push(String::from_utf8_lossy(chunk).into_owned());
        used += n;
    }
    Ok((acks, used))
}

/// One connection sending `total` records in PackedForward batches of
/// `batch`, at most `in_flight` batches unacknowledged, each with a
/// `chunk` that must come back as `{"ack": chunk}` in order.
pub async fn fluent(
    addr: SocketAddr,
    batch: usize,
    total: usize,
    in_flight: usize,
) -> Result<Fluent> {
    let batches = total.div_ceil(batch);
    let entries: Vec<u8> = (0..batch as u64).flat_map(record_entry).collect();
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (mut rd, mut wr) = tcp.into_split();
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let start = Instant::now();
    let writer = {
        let sem = sem.clone();
        async move {
            for i in 0..batches {
                sem.acquire().await?.forget();
                let chunk = format!("bench-{i:012}");
                let msg = packed_forward(&entries, batch, &chunk);
                sent_tx.send(chunk).ok();
                wr.write_all(&msg).await.context("sending a batch")?;
            }
            Ok::<_, anyhow::Error>(wr)
        }
    };
    let reader = async move {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let mut acked = 0;
        while acked < batches {
            let n = rd.read(&mut chunk).await.context("reading acks")?;
            if n == 0 {
                bail!("the receiver closed the connection after {acked} of {batches} acks");
            }
            buf.extend_from_slice(&chunk[..n]);
            let (acks, used) = take_acks(&buf)?;
            buf.drain(..used);
            for got in acks {
                let want = sent_rx.recv().await.context("an ack for nothing sent")?;
                ensure!(got == want, "expected ack {want}, got {got}");
                acked += 1;
                sem.add_permits(1);
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let limit = Duration::from_secs(60 + total as u64 / 5_000);
    let (w, r) = tokio::time::timeout(limit, async { tokio::join!(writer, reader) })
        .await
        .with_context(|| format!("Fluentd forward to {addr} took over {limit:?}"))?;
    let secs = start.elapsed().as_secs_f64();
    r?;
    let mut wr = w?;
    let _ = wr.shutdown().await;
    Ok(Fluent {
        records_per_sec: (batches * batch) as f64 / secs,
    })
}
