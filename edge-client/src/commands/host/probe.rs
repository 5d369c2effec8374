//! The hoster's health checks of its local services
//! (`--health-check`), each bounded by its timeout.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::cli::HealthCheck;

/// How long `fluent-ping` watches a new connection: a service that
/// closes or resets it within this time is not serving.
const FLUENT_WATCH: Duration = Duration::from_millis(200);

/// Checks the service at `addr` the way `kind` says, within `within`.
pub async fn check(kind: HealthCheck, addr: &str, within: Duration) -> Result<(), String> {
    match kind {
        HealthCheck::None => Ok(()),
        HealthCheck::Tcp => connect(addr, within).await.map(drop),
        HealthCheck::FluentPing => fluent_ping(addr, within).await,
    }
}

async fn connect(addr: &str, within: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(within, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!("no connection to {addr} within {within:?}")),
    }
}

/// A TCP connect, then a short watch of the connection. The forward
/// protocol has no ping a client can send without writing a record: a
/// forward input without a shared key says nothing and waits; one with
/// `<security>` sends its HELO at once. Either is alive. A listener that
/// accepts and drops the connection (a proxy with no backend, a process
/// shutting down) is not. Nothing is written, so no record is made.
async fn fluent_ping(addr: &str, within: Duration) -> Result<(), String> {
    let mut tcp = connect(addr, within).await?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(FLUENT_WATCH.min(within), tcp.read(&mut byte)).await {
        // Quiet and open, or it spoke first (HELO).
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err(format!("{addr} closed the connection at once")),
        Ok(Err(e)) => Err(format!("{addr} reset the connection: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const WITHIN: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn tcp_and_fluent_ping_tell_a_serving_port_from_a_dead_one() {
        // A service that keeps connections open and says nothing.
        let quiet = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let quiet_addr = quiet.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = quiet.accept().await {
                held.push(s);
            }
        });
        // A service that greets first (Fluentd with a shared key: HELO).
        let greeter = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let greeter_addr = greeter.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = greeter.accept().await {
                let _ = s.write_all(b"\x93\xa4HELO").await;
                tokio::spawn(async move {
                    let mut b = [0u8; 16];
                    let _ = s.read(&mut b).await;
                });
            }
        });
        // A listener that drops every connection at once.
        let dropper = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dropper_addr = dropper.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = dropper.accept().await {
                drop(s);
            }
        });
        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);

        use HealthCheck::*;
        let table = [
            (None, &closed_addr, true),
            (Tcp, &quiet_addr, true),
            (Tcp, &dropper_addr, true),
            (Tcp, &closed_addr, false),
            (FluentPing, &quiet_addr, true),
            (FluentPing, &greeter_addr, true),
            (FluentPing, &dropper_addr, false),
            (FluentPing, &closed_addr, false),
        ];
        for (kind, addr, healthy) in table {
            let r = check(kind, addr, WITHIN).await;
            assert_eq!(r.is_ok(), healthy, "{kind:?} {addr}: {r:?}");
        }
    }
}
