//! Local TCP forwarding: each accepted connection becomes one dial, and
//! what the app sends first travels with the dial request
//! ([`Client::dial_from`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use darkport_transport::splice::{abort_on_drop, reset_tcp, splice_tcp, Ending};

use crate::Client;

/// Accepts connections on `listener` and carries each to `service` until
/// `shutdown`, then resets the connections still open. A refused dial
/// resets the local connection (the app sees its connection fail, not a
/// clean empty reply) and logs why.
pub async fn forward(
    client: Arc<Client>,
    listener: TcpListener,
    service: String,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    forward_draining(client, listener, service, shutdown, Duration::ZERO).await
}

/// [`forward`], draining on `shutdown`: the listener closes at once (new
/// app connections are refused by the kernel), and the connections in
/// flight may finish for up to `grace`; then the rest are reset.
pub async fn forward_draining(
    client: Arc<Client>,
    listener: TcpListener,
    service: String,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    info!(%local, %service, "forwarding");
    tokio::pin!(shutdown);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: keep serving.
                        warn!(%local, "accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let client = client.clone();
                let service = service.clone();
                // From now on, if this process dies the app sees a reset,
                // not a clean end after part of its bytes.
                abort_on_drop(&tcp);
                conns.spawn(async move {
                    let mut tcp = tcp;
                    // The app's first bytes travel behind the dial request.
                    match client.dial_from(&service, &mut tcp).await {
                        Err(e) => {
                            warn!(%peer, "dial to {service} refused: {e}; closing the local connection");
                            reset_tcp(tcp);
                        }
                        Ok(stream) => {
                            let (send, recv) = stream.into_split();
                            let stats = splice_tcp(tcp, send, recv).await;
                            match stats.ending {
                                Ending::Clean => debug!(%peer, %service, sent = stats.sent, received = stats.received, "connection closed"),
                                Ending::LocalReset => info!(%peer, %service, "app reset the connection; reset carried to the service"),
                                Ending::RemoteReset | Ending::Cancelled => info!(%peer, %service, "service side reset the connection"),
                            }
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    if !conns.is_empty() && !grace.is_zero() {
        info!(%local, %service, connections = conns.len(), grace_secs = grace.as_secs(), "draining: no new connections; letting the open ones finish");
        let deadline = tokio::time::Instant::now() + grace;
        while !conns.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(%local, %service, connections = conns.len(), "grace period over; resetting the connections still open");
                    break;
                }
                Some(_) = conns.join_next() => {}
            }
        }
    }
    conns.shutdown().await;
    Ok(())
}
