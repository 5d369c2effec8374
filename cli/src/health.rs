//! `--metrics-listen ADDR`: Prometheus metrics at `/metrics`, readiness at
//! `/ready` and liveness at `/live`, over plain HTTP/1.1.
//!
//! The endpoint is meant for loopback or a private monitoring network:
//! it has no TLS and no authentication, so a warning is logged when it
//! listens anywhere else. What a peer can make it hold is bounded: 64
//! connections at once, 10 s per connection, 5 s to send the request
//! head, GET and HEAD only, no request bodies read.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use darkport_transport::admission::{GateLimits, HandshakeGate};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Connections served at once; a new one past this ends the oldest of the
/// host holding most.
pub const MAX_CONNECTIONS: usize = 64;

/// Connections one client host may hold (more end its oldest).
pub const MAX_CONNECTIONS_PER_HOST: usize = 16;

/// Longest a connection may stay open.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Time to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The flag, for every long-running command.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at /metrics, and /ready and /live, on this
    /// TCP address (e.g. 127.0.0.1:9464). Off by default; plain HTTP with
    /// no authentication, so keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR", env = "DARKPORT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Whether the component can do its job now: `Err` says why not.
pub type ReadyCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the endpoint serves.
pub struct Health {
    /// Every metric of the component.
    pub registry: Registry,
    /// Answers `/ready`.
    pub ready: ReadyCheck,
    /// Run before each scrape, to bring computed gauges (ages) up to date.
    pub refresh: Vec<Box<dyn Fn() + Send + Sync>>,
}

impl Health {
    /// What a component serves: `metrics`, registered under the
    /// `darkport` prefix; `/ready` asks `ready`, and `refresh` (if any)
    /// runs before each scrape.
    pub fn of<M: Send + Sync + 'static>(
        metrics: Arc<M>,
        register: fn(&M, &mut Registry),
        ready: fn(&M) -> Result<(), String>,
        refresh: Option<fn(&M)>,
    ) -> Health {
        let mut registry = Registry::with_prefix("darkport");
        register(&metrics, &mut registry);
        let refresh: Vec<Box<dyn Fn() + Send + Sync>> = match refresh {
            Some(f) => {
                let m = metrics.clone();
                vec![Box::new(move || f(&m))]
            }
            None => vec![],
        };
        Health {
            registry,
            ready: Box::new(move || ready(&metrics)),
            refresh,
        }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

/// Why the endpoint cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}; pick a free address for --metrics-listen")]
pub struct HealthError {
    /// The address.
    pub addr: SocketAddr,
    /// The socket error.
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` (warning when it is not loopback).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HealthError> {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "--metrics-listen is not a loopback address: metrics and health are served without TLS or authentication to anyone who can reach it"
        );
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError { addr, source })
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, health: Arc<Health>, shutdown: impl Future<Output = ()>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /ready and /live");
    }
    // Connections are held per client host; when all are taken, the
    // oldest of the host holding most makes room, so one host (or a
    // scraper gone wrong) cannot keep probes from others out.
    let gate = HandshakeGate::new(GateLimits {
        total: MAX_CONNECTIONS,
        per_prefix: MAX_CONNECTIONS_PER_HOST,
        retry_above: usize::MAX,
        v4_prefix: 32,
        v6_prefix: 128,
    });
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let mut slot = gate.enter(peer.ip());
        let health = health.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let health = health.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&health, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                () = slot.evicted() => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

/// The answer to one request: pure but for the registry and the checks.
pub fn answer<B>(health: &Health, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            for refresh in &health.refresh {
                refresh();
            }
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &health.registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("cannot encode metrics: {e}\n"),
                ),
            }
        }
        "/ready" => match (health.ready)() {
            Ok(()) => reply(StatusCode::OK, TEXT, "ready\n".into()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        "/live" => reply(StatusCode::OK, TEXT, "live\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /metrics, /ready or /live\n".into(),
        ),
    }
}

/// Starts the endpoint if `--metrics-listen` was given: binds now (so a
/// bad address fails the start), serves in the background until
/// `shutdown`.
pub async fn start(
    args: &MetricsArgs,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<tokio::task::JoinHandle<()>>, HealthError> {
    let Some(addr) = args.metrics_listen else {
        return Ok(None);
    };
    let listener = bind(addr).await?;
    Ok(Some(tokio::spawn(serve(
        listener,
        Arc::new(health),
        shutdown,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// `Health::of` wires a component's metrics type: registered under
    /// the prefix, `/ready` asked of it, refreshed before each scrape.
    #[test]
    fn of_registers_asks_and_refreshes() {
        #[derive(Default)]
        struct Probe {
            scrapes: Counter,
            up: AtomicBool,
        }
        impl Probe {
            fn register(&self, r: &mut Registry) {
                r.register("scrapes", "Scrapes", self.scrapes.clone());
            }
            fn ready(&self) -> Result<(), String> {
                self.up
                    .load(Ordering::Relaxed)
                    .then_some(())
                    .ok_or("down".into())
            }
            fn refresh(&self) {
                self.scrapes.inc();
            }
        }
        let probe = Arc::new(Probe::default());
        let health = Health::of(
            probe.clone(),
            Probe::register,
            Probe::ready,
            Some(Probe::refresh),
        );
        assert_eq!(get(&health, "/ready").0, StatusCode::SERVICE_UNAVAILABLE);
        probe.up.store(true, Ordering::Relaxed);
        assert_eq!(get(&health, "/ready").0, StatusCode::OK);
        let (_, body) = get(&health, "/metrics");
        assert!(body.contains("darkport_scrapes_total 1"), "{body}");
    }

    fn get(health: &Health, path: &str) -> (StatusCode, String) {
        let req = Request::get(path).body(()).expect("request");
        let resp = answer(health, &req);
        let status = resp.status();
        let body = resp.into_body();
        let bytes = futures_body(body);
        (status, String::from_utf8(bytes).expect("utf-8"))
    }

    fn futures_body(body: Full<Bytes>) -> Vec<u8> {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(body.collect())
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn routes() {
        let mut registry = Registry::with_prefix("darkport");
        let c = Counter::<u64>::default();
        registry.register("things", "Things", c.clone());
        c.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let health = Health {
            registry,
            ready: Box::new(move || {
                if r.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("no snapshot yet".into())
                }
            }),
            refresh: vec![],
        };
        let (s, body) = get(&health, "/metrics");
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("darkport_things_total 1"), "{body}");
        assert_eq!(get(&health, "/live").0, StatusCode::OK);
        let (s, body) = get(&health, "/ready");
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no snapshot yet"));
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&health, "/ready").0, StatusCode::OK);
        assert_eq!(get(&health, "/nope").0, StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(()).expect("request");
        assert_eq!(
            answer(&health, &post).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    /// One host holding every connection (idle, headers never sent) does
    /// not keep a probe from another host out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_answers_while_one_host_holds_every_slot() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Arc::new(Health {
            registry: Registry::default(),
            ready: Box::new(|| Ok(())),
            refresh: vec![],
        });
        let server = tokio::spawn(serve(listener, health, std::future::pending()));
        let mut hog = Vec::new();
        for _ in 0..MAX_CONNECTIONS * 2 {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind("127.0.0.2:0".parse().expect("addr"))
                .expect("bind 127.0.0.2");
            hog.push(socket.connect(addr).await.expect("connect"));
        }
        for i in 0..5 {
            let probe = async {
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                s.write_all(b"GET /live HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await?;
                Ok::<_, std::io::Error>(out)
            };
            let out = tokio::time::timeout(Duration::from_secs(2), probe)
                .await
                .unwrap_or_else(|_| panic!("probe {i}: no answer within 2 s"))
                .expect("probe");
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        }
        server.abort();
    }
}
