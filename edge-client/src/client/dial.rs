//! One dial: which routers to try and in what order ([`DialError::retry`]
//! decides where a failure goes next), the request with the early bytes
//! behind it, and the wait for the router's answer.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tracing::{debug, warn};

use darkport_proto::codec::{read_frame, write_frame, MAX_DIAL_FRAME};
use darkport_proto::codes::{CloseCode, StreamCode};
use darkport_proto::msg::{DialRequest, DialResponse};
use darkport_proto::token::fmt_time;
use darkport_proto::ProtoError;
use darkport_transport::mux::{RecvHalf, RemoteEnd, SendHalf, Transport};
use darkport_transport::unix_now;

use super::pooled::{refused, Live};
use super::{clock, Client, DIAL_TIMEOUT, LIVENESS_WINDOW, MAX_EARLY_DATA};
use crate::error::Retry;
use crate::{DialError, DialStream, RouterFailure};

/// How long a failed dial over TCP waits for its connection's close code.
const TCP_CLOSE_GRACE: Duration = Duration::from_millis(250);
impl Client {
    pub(super) async fn dial_inner(
        &self,
        service: &str,
        mut early: Option<&mut Early<'_>>,
    ) -> Result<DialStream, DialError> {
        self.check_certificate()?;
        let mut last = None;
        for _round in 0..3 {
            let mut candidates = self.candidates(service, &mut last, clock());
            if candidates.is_empty() {
                // Nothing to use now: connect, and wait for it.
                if let Err(e) = self.fill().await {
                    // A router's refusal says more than "no router".
                    if !matches!(
                        last,
                        Some(DialError::IdentityRefused { .. } | DialError::RouterRevoked { .. })
                    ) {
                        last = Some(e);
                    }
                }
                candidates = self.candidates(service, &mut last, clock());
                if candidates.is_empty() {
                    continue;
                }
            }
            let e = match self
                .dial_any(service, candidates, &mut last, early.as_deref_mut())
                .await
            {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            match e.retry() {
                Retry::Elsewhere => last = Some(e),
                Retry::RefreshList => {
                    // Our router list is out of date: ask the controller
                    // now and connect to the routers that may serve it.
                    last = Some(e);
                    self.refresh_routers_now().await;
                    let _ = self.fill().await;
                }
                Retry::ElsewhereThenFinal | Retry::Final => return Err(e),
            }
        }
        Err(last.unwrap_or(DialError::NoRouters))
    }

    async fn dial_any(
        &self,
        service: &str,
        candidates: Vec<Live>,
        last: &mut Option<DialError>,
        mut early: Option<&mut Early<'_>>,
    ) -> Result<DialStream, DialError> {
        for live in candidates {
            match self.dial_on(&live, service, early.as_deref_mut()).await {
                Ok(s) => return Ok(s),
                Err(e) if e.retry() == Retry::Final => return Err(e),
                Err(e) => {
                    // Another router's view may differ (one cut off from
                    // the controller may not know a renewed certificate).
                    warn!("{e}; trying another router");
                    // Out of the pool for new dials; streams already on it
                    // carry on (a router that is merely slow, or may not
                    // serve this service, is still fine for them).
                    self.set_aside(&live);
                    keep_telling(last, e);
                }
            }
        }
        Err(last.take().unwrap_or(DialError::NoRouters))
    }

    /// An expired certificate gets a clear error before any connection.
    fn check_certificate(&self) -> Result<(), DialError> {
        let identity = self.identity();
        if let Some((_, expires)) = darkport_transport::renew::schedule(&identity) {
            if unix_now() >= expires {
                return Err(DialError::CertificateExpired {
                    identity: identity.name.to_string(),
                    at: fmt_time(expires),
                });
            }
        }
        Ok(())
    }

    async fn dial_on(
        &self,
        live: &Live,
        service: &str,
        early: Option<&mut Early<'_>>,
    ) -> Result<DialStream, DialError> {
        let resend = early.as_deref().map(|e| e.chunks.as_slice());
        let result = match send_request(live, service, resend.unwrap_or_default()).await {
            Ok(sent) => await_answer(live, service, sent, early).await,
            Err(e) => Err(e),
        };
        match result {
            Err(e @ DialError::Router { .. })
                if live.conn.transport() == Transport::Tcp
                    && live.conn.close_reason().is_none() =>
            {
                // Over TCP a stream can fail a moment before the end of its
                // connection (and the router's close code) is known.
                let _ = tokio::time::timeout(TCP_CLOSE_GRACE, live.conn.closed()).await;
                Err(refused(&live.router, &live.conn).unwrap_or(e))
            }
            other => other,
        }
    }
}

/// A dial request on its way: the stream it went out on, and what the
/// router had heard before it, to tell a dead router from a slow one.
struct Sent {
    send: SendHalf,
    recv: RecvHalf,
    /// False once the router stopped our sending (it refuses and sends
    /// STOP_SENDING right after its answer): no more early data then.
    sending: bool,
    /// [`Conn::heard`] before the request went out.
    heard_before: u64,
}

/// Opens a stream on `live` and sends the dial request for `service`,
/// then `resend`: the early bytes read from the app before a previous
/// router failed.
async fn send_request(live: &Live, service: &str, resend: &[Bytes]) -> Result<Sent, DialError> {
    let heard_before = live.conn.heard();
    // The router grants a connection a number of streams at once
    // (`--max-streams-per-connection`); past it, opening waits for one to
    // end, and at most [`DIAL_TIMEOUT`].
    let (mut send, recv) = tokio::time::timeout(DIAL_TIMEOUT, live.conn.open_bi())
        .await
        .map_err(|_| DialError::LimitReached {
            service: service.to_string(),
            message: format!(
                "router {} allows no more streams at once on this connection (its --max-streams-per-connection) and none ended within {} s; close idle connections or raise the router's limit",
                live.router,
                DIAL_TIMEOUT.as_secs()
            ),
        })?
        .map_err(|e| live.lost(RouterFailure::Ended(e)))?;
    write_frame(&mut send, &DialRequest::new(service), MAX_DIAL_FRAME)
        .await
        .map_err(|e| live.lost(live.why_closed(RouterFailure::Stream(e))))?;
    let mut sending = true;
    for c in resend {
        if send.write_chunk(c.clone()).await.is_err() {
            sending = false;
            break;
        }
    }
    Ok(Sent {
        send,
        recv,
        sending,
        heard_before,
    })
}

/// Waits for the router's answer to a [`Sent`] request, sending more early
/// bytes meanwhile. A router that sends nothing at all within the liveness
/// window is taken for dead and its connection closed; one that is alive
/// gets [`DIAL_TIMEOUT`].
async fn await_answer(
    live: &Live,
    service: &str,
    sent: Sent,
    mut early: Option<&mut Early<'_>>,
) -> Result<DialStream, DialError> {
    let Sent {
        mut send,
        mut recv,
        mut sending,
        heard_before,
    } = sent;
    let window = LIVENESS_WINDOW + live.conn.rtt() * 4;
    let started = Instant::now();
    let mut check_at = started + window;
    let resp = {
        let response = read_frame::<_, DialResponse>(&mut recv, MAX_DIAL_FRAME);
        tokio::pin!(response);
        loop {
            let reading = sending && early.as_ref().is_some_and(|e| e.wants_more());
            tokio::select! {
                r = &mut response => break r,
                got = read_early(&mut early), if reading => match got {
                    Ok(Some(chunk)) => {
                        // Kept in `early` even if this fails (see Sent).
                        if send.write_chunk(chunk).await.is_err() {
                            sending = false;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        send.reset(StreamCode::Refused);
                        return Err(DialError::Io(e));
                    }
                },
                _ = tokio::time::sleep_until(check_at) => {
                    if live.conn.heard() == heard_before {
                        send.reset(StreamCode::Refused);
                        live.conn.close(CloseCode::Done, b"router not answering");
                        return Err(live.lost(RouterFailure::Silent(window)));
                    }
                    if started.elapsed() >= DIAL_TIMEOUT {
                        return Err(live.lost(RouterFailure::NoAnswer(DIAL_TIMEOUT)));
                    }
                    check_at += window;
                }
            }
        }
    };
    let resp = answer(live, service, resp)?;
    if let Some(e) = DialError::from_status(resp.status, service, resp.message) {
        return Err(e);
    }
    debug!(service, router = %live.router, "dialed");
    Ok(DialStream::new(send, recv))
}

/// The router's answer as read, or why there is none.
fn answer(
    live: &Live,
    service: &str,
    read: Result<DialResponse, ProtoError>,
) -> Result<DialResponse, DialError> {
    match read {
        // Reset with the splice's code: the router had connected (its
        // answer was Ok) and the service reset the connection before that
        // answer got out. With early data the service may have seen bytes:
        // this is the end of the connection, not a reason to try another
        // router.
        Err(ProtoError::Io(e)) if is_splice_reset(&e) => Err(DialError::ServiceReset {
            service: service.to_string(),
        }),
        Err(ProtoError::Io(e)) => Err(live.lost(live.why_closed(RouterFailure::from_io(e)))),
        Err(e @ (ProtoError::Closed | ProtoError::UnexpectedEof)) => {
            Err(live.lost(live.why_closed(RouterFailure::Stream(e))))
        }
        Err(e) => Err(live.lost(RouterFailure::BadAnswer(e))),
        Ok(r) => Ok(r),
    }
}

/// Application bytes read while a dial is pending, kept until the dial
/// succeeds so that they can be sent again to another router.
pub(super) struct Early<'a> {
    reader: &'a mut (dyn AsyncRead + Unpin + Send),
    chunks: Vec<Bytes>,
    len: usize,
    ended: bool,
}

impl<'a> Early<'a> {
    pub(super) fn new(reader: &'a mut (dyn AsyncRead + Unpin + Send)) -> Early<'a> {
        Early {
            reader,
            chunks: Vec::new(),
            len: 0,
            ended: false,
        }
    }

    fn wants_more(&self) -> bool {
        !self.ended && self.len < MAX_EARLY_DATA
    }
}

/// Reads the next early chunk: `Some` bytes (also kept in `early`), `None`
/// at EOF (or with nothing to read from).
async fn read_early(early: &mut Option<&mut Early<'_>>) -> std::io::Result<Option<Bytes>> {
    let Some(e) = early.as_deref_mut() else {
        return Ok(None);
    };
    let mut buf = Vec::with_capacity((MAX_EARLY_DATA - e.len).min(16 * 1024));
    if e.reader.read_buf(&mut buf).await? == 0 {
        e.ended = true;
        return Ok(None);
    }
    let chunk = Bytes::from(buf);
    e.len += chunk.len();
    e.chunks.push(chunk.clone());
    Ok(Some(chunk))
}

/// Whether a read failed because the peer reset the stream with
/// [`StreamCode::Reset`], which only a splice sends (a TCP reset carried
/// across).
fn is_splice_reset(e: &std::io::Error) -> bool {
    matches!(
        crate::error::remote_end(e),
        Some(RemoteEnd::Reset(code)) if *code == u64::from(StreamCode::Reset.code())
    )
}

/// Records `new` as the error a failed dial reports, unless it is a bare
/// router error and `last` already says why a router refused (revoked,
/// refused identity, draining...): a stream cut while a refusing router
/// closes says less than the refusal heard a moment before.
fn keep_telling(last: &mut Option<DialError>, new: DialError) {
    let vague = matches!(new, DialError::Router { .. });
    let telling = matches!(last, Some(e) if !matches!(e, DialError::Router { .. }));
    if !(vague && telling) {
        *last = Some(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vague() -> DialError {
        DialError::Router {
            router: "r:1".into(),
            cause: Box::new(RouterFailure::Ended(RemoteEnd::Lost(
                darkport_transport::mux::Lost::StreamClosed,
            ))),
        }
    }

    fn revoked() -> DialError {
        DialError::RouterRevoked {
            router: "r:1".into(),
            reason: "this router was revoked".into(),
        }
    }

    #[test]
    fn a_refusal_is_not_replaced_by_a_vaguer_router_error() {
        let mut last = None;
        keep_telling(&mut last, vague());
        assert!(matches!(last, Some(DialError::Router { .. })));
        keep_telling(&mut last, revoked());
        assert!(matches!(last, Some(DialError::RouterRevoked { .. })));
        keep_telling(&mut last, vague());
        assert!(matches!(last, Some(DialError::RouterRevoked { .. })));
    }
}
