//! The tasks that drive an HTTP/2 connection ([`drive_client`],
//! [`drive_server`]), what the server does with a stream it accepts
//! ([`accept_decision`]), and the close-notice stream ([`send_notice`],
//! [`read_notice`]).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use darkport_proto::codec::{encode_frame, read_frame, MAX_DIAL_FRAME};
use darkport_proto::codes::CloseCode;
use darkport_proto::msg::CloseNotice;

use super::conn::Shared;
use super::gate::Counted;
use super::halves::{RecvHalf, RecvState, SendHalf};
use super::pulse::Keepalive;
use super::remote::{h2_reason, Lost, RemoteEnd};
use crate::endpoint::KEEP_ALIVE;

type ClientConnection =
    h2::client::Connection<Counted<tokio_rustls::client::TlsStream<TcpStream>>, Bytes>;
type ServerConnection =
    h2::server::Connection<Counted<tokio_rustls::server::TlsStream<TcpStream>>, Bytes>;

/// Reads the router's [`CloseNotice`] from the notice stream, keeps it,
/// and acknowledges it by ending our side of the stream.
pub(super) async fn read_notice(
    shared: Arc<Shared>,
    response: h2::client::ResponseFuture,
    ack: h2::SendStream<Bytes>,
    mut closing: watch::Receiver<Option<(CloseCode, String)>>,
) {
    let mut ack = SendHalf::h2(ack, &shared, false);
    let mut notice = RecvHalf::h2(RecvState::Waiting(response), &shared);
    tokio::select! {
        n = read_frame::<_, CloseNotice>(&mut notice, MAX_DIAL_FRAME) => {
            if let Ok(n) = n {
                let _ = shared.notice.set(n);
                ack.finish();
            }
        }
        // Closed here: the notice stream goes (reset on drop), so the
        // connection can finish once the other streams have.
        _ = closing.changed() => {}
    }
}

pub(super) async fn drive_client(
    mut connection: ClientConnection,
    shared: Arc<Shared>,
    mut close: watch::Receiver<Option<(CloseCode, String)>>,
) {
    let mut pulse = Keepalive::new(connection.ping_pong());
    let mut tick = tokio::time::interval(KEEP_ALIVE);
    tokio::pin!(connection);
    let end = loop {
        tokio::select! {
            r = &mut connection => break match r {
                Ok(()) => RemoteEnd::Lost(Lost::RouterClosed),
                Err(e) => RemoteEnd::from_h2(&e, false, shared.hint()),
            },
            _ = tick.tick() => if let Err(e) = pulse.tick(&shared) { break e },
            _ = poll_fn(|cx| pulse.poll_pong(cx, &shared)) => {}
            Ok(()) = close.changed() => {
                // A client cannot send GOAWAY through h2; it lets what is
                // queued go out (the connection completes once every
                // stream and handle is gone), then drops the socket.
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut connection).await;
                break RemoteEnd::Lost(Lost::ClosedHere);
            }
        }
    };
    shared.finish(end);
}

/// Streams accepted from a TCP client and not yet taken by the server
/// (`Conn::accept_bi`). Past it, new streams are refused (REFUSED_STREAM):
/// a peer that opens streams faster than they are served, or opens and
/// resets them (the rapid-reset class), cannot queue them without bound.
pub const ACCEPT_QUEUE: usize = 256;

/// Streams refused because the accept queue was full, on one connection,
/// before the connection is ended with GOAWAY (ENHANCE_YOUR_CALM): an
/// honest client waits for its answers and never gets near it.
pub const MAX_REFUSED_STREAMS: u32 = 1024;

/// What to do with a stream accepted from a TCP client, given how full the
/// accept queue is and how many were refused before: pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptDecision {
    /// Queue it for the server.
    Queue,
    /// Refuse it (REFUSED_STREAM); the client may retry it.
    Refuse,
    /// End the connection (GOAWAY ENHANCE_YOUR_CALM): refused too often.
    Calm,
}

/// [`AcceptDecision`] for a stream when the queue has `room` and
/// `refused` streams were refused before on this connection.
pub fn accept_decision(room: bool, refused: u32) -> AcceptDecision {
    match (room, refused) {
        (true, _) => AcceptDecision::Queue,
        (false, r) if r >= MAX_REFUSED_STREAMS => AcceptDecision::Calm,
        (false, _) => AcceptDecision::Refuse,
    }
}

pub(super) async fn drive_server(
    mut connection: ServerConnection,
    shared: Arc<Shared>,
    streams: mpsc::Sender<(SendHalf, RecvHalf)>,
    mut close: watch::Receiver<Option<(CloseCode, String)>>,
) {
    let mut refused: u32 = 0;
    let mut pulse = Keepalive::new(connection.ping_pong());
    let mut tick = tokio::time::interval(KEEP_ALIVE);
    // The client's first stream: where the close notice goes.
    let mut notice: Option<(SendHalf, RecvHalf)> = None;
    let end = loop {
        tokio::select! {
            next = connection.accept() => match next {
                None => break RemoteEnd::Lost(Lost::ClientClosed),
                Some(Err(e)) => break RemoteEnd::from_h2(&e, false, shared.hint()),
                Some(Ok((request, mut respond))) => {
                    let recv = request.into_body();
                    // The answer's headers go out at once, so the client
                    // can read; the dial answer itself is in the body.
                    if notice.is_none() {
                        if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                            notice = Some((SendHalf::h2(send, &shared, false), RecvHalf::h2(RecvState::Open(recv), &shared)));
                        }
                        continue;
                    }
                    match accept_decision(streams.capacity() > 0, refused) {
                        AcceptDecision::Queue => {
                            if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                                let pair = (SendHalf::h2(send, &shared, true), RecvHalf::h2(RecvState::Open(recv), &shared));
                                let _ = streams.try_send(pair);
                            }
                        }
                        AcceptDecision::Refuse => {
                            refused += 1;
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        }
                        AcceptDecision::Calm => {
                            tracing::info!(remote = %shared.remote, "ending a TCP connection: {refused} streams refused, its accept queue ({ACCEPT_QUEUE}) full");
                            connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                poll_fn(|cx| connection.poll_closed(cx)),
                            )
                            .await;
                            break RemoteEnd::Lost(Lost::TooManyRefused);
                        }
                    }
                }
            },
            _ = tick.tick() => if let Err(e) = pulse.tick(&shared) { break e },
            _ = poll_fn(|cx| pulse.poll_pong(cx, &shared)) => {}
            Ok(()) = close.changed() => {
                let (code, reason) = close.borrow().clone().unwrap_or((CloseCode::Done, String::new()));
                let said = tokio::time::timeout(
                    NOTICE_TIMEOUT,
                    send_notice(&mut connection, &shared, notice.take(), code, reason),
                )
                .await;
                if said.is_err() {
                    tracing::debug!(remote = %shared.remote, "the client did not take the close notice in time");
                }
                connection.abrupt_shutdown(h2_reason(code.code()));
                // Send the GOAWAY and what is queued, briefly.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    poll_fn(|cx| connection.poll_closed(cx)),
                )
                .await;
                break RemoteEnd::Lost(Lost::ClosedHere);
            }
        }
    };
    shared.finish(end);
}

/// How long a router waits for a client to take its close notice.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes the close notice on the notice stream (waiting for the client
/// to open it, if it has not yet) and waits for the client's end of that
/// stream, which says it has read it; drives the connection meanwhile.
async fn send_notice(
    connection: &mut ServerConnection,
    shared: &Arc<Shared>,
    mut notice: Option<(SendHalf, RecvHalf)>,
    code: CloseCode,
    reason: String,
) {
    while notice.is_none() {
        match connection.accept().await {
            Some(Ok((request, mut respond))) => {
                if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                    notice = Some((
                        SendHalf::h2(send, shared, false),
                        RecvHalf::h2(RecvState::Open(request.into_body()), shared),
                    ));
                }
            }
            _ => return,
        }
    }
    let Some((mut send, mut recv)) = notice else {
        return;
    };
    // Within the frame limit whatever the reason's length.
    let frame = encode_frame(&CloseNotice::new(code, reason), MAX_DIAL_FRAME);
    let Ok(frame) = frame else { return };
    if send.write_chunk(Bytes::from(frame)).await.is_err() {
        return;
    }
    send.finish();
    let mut chunk = [Bytes::new()];
    let acked = async { while let Ok(Some(_)) = recv.read_chunks(&mut chunk).await {} };
    tokio::pin!(acked);
    loop {
        tokio::select! {
            _ = &mut acked => return,
            r = connection.accept() => if r.is_none() { return },
        }
    }
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn streams_queue_while_there_is_room_then_are_refused_then_the_connection_ends() {
        assert_eq!(accept_decision(true, 0), AcceptDecision::Queue);
        assert_eq!(
            accept_decision(true, MAX_REFUSED_STREAMS * 2),
            AcceptDecision::Queue
        );
        assert_eq!(accept_decision(false, 0), AcceptDecision::Refuse);
        assert_eq!(
            accept_decision(false, MAX_REFUSED_STREAMS - 1),
            AcceptDecision::Refuse
        );
        assert_eq!(
            accept_decision(false, MAX_REFUSED_STREAMS),
            AcceptDecision::Calm
        );
    }
}
