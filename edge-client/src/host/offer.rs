//! One offer stream: opened to a router and left idle until the router
//! has a dial for it, then an [`IncomingStream`] waiting for its answer.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use darkport_proto::codec::{from_bytes_within, write_frame, HEADER_LEN, MAX_DIAL_FRAME};
use darkport_proto::codes::StreamCode;
use darkport_proto::identity::IdentityName;
use darkport_proto::msg::{DialRequest, DialResponse, DialStatus, Incoming, OFFER_STREAM};
use darkport_proto::ProtoError;
use darkport_transport::mux::{Conn, RecvHalf, RemoteEnd, SendHalf};

use super::error::{AnswerFailure, HostError};
use super::ANSWER_TIMEOUT;
use crate::DialStream;

/// Time to open an offer stream and send its request: past it the router
/// grants no more streams on this connection (its
/// `--max-streams-per-connection`), and the offer is given up for now.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling, as the router verified it: from the caller's
/// certificate and the controller's policy, never from anything the
/// caller claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's identity.
    pub identity: IdentityName,
    /// Its roles, as the controller's policy knows them.
    pub roles: Vec<IdentityName>,
    /// Its address as the router saw it (`ip:port`).
    pub address: String,
    /// The router that carries the stream.
    pub router: IdentityName,
}

impl Caller {
    /// The caller's address, when it is an `ip:port`.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.address.parse().ok()
    }
}

/// A stream a router brought for a hosted service, not answered yet: the
/// router waits up to [`ANSWER_TIMEOUT`] for [`IncomingStream::accept`]
/// (then application bytes flow) or [`IncomingStream::refuse`] (the
/// caller's dial fails with `ServiceUnreachable` and the reason). Dropped
/// unanswered, the stream is reset and the caller's dial fails.
///
/// [`Host::accept`](super::Host::accept) yields these, so a hoster can
/// connect to its local service first and answer with the outcome, as
/// `darkport-edge-client host` does; [`Listener::accept`](super::Listener::accept)
/// answers `Ok` at once.
#[derive(Debug)]
pub struct IncomingStream {
    incoming: Incoming,
    /// `None` once answered.
    halves: Option<(SendHalf, RecvHalf)>,
    /// The router's address as the host knows it (`host:port`).
    router_addr: String,
    /// When the router's frame arrived: the answer is due within
    /// [`ANSWER_TIMEOUT`] of it.
    arrived: Instant,
}

impl IncomingStream {
    /// The service dialed.
    pub fn service(&self) -> &str {
        &self.incoming.service
    }

    /// Who is calling.
    pub fn caller(&self) -> Caller {
        Caller {
            identity: self.incoming.caller.clone(),
            roles: self.incoming.caller_roles.clone(),
            address: self.incoming.caller_address.clone(),
            router: self.incoming.router.clone(),
        }
    }

    /// The address of the router carrying it, as this host connected to it.
    pub fn router_addr(&self) -> &str {
        &self.router_addr
    }

    /// When it arrived; the router expects the answer within
    /// [`ANSWER_TIMEOUT`] of this.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// Answers `Ok`: the caller's dial succeeds and the returned stream
    /// carries the application's bytes both ways.
    pub async fn accept(mut self) -> Result<DialStream, HostError> {
        let ok = DialResponse {
            status: DialStatus::Ok,
            message: String::new(),
        };
        self.answer(&ok).await?;
        let (send, recv) = self.take();
        Ok(DialStream::new(send, recv))
    }

    /// Answers `ServiceUnreachable` with `reason` (the caller's dial fails
    /// with it), then closes the stream.
    pub async fn refuse(mut self, reason: &str) -> Result<(), HostError> {
        let no = DialResponse {
            status: DialStatus::ServiceUnreachable,
            message: reason.to_string(),
        };
        self.answer(&no).await?;
        let (mut send, mut recv) = self.take();
        send.finish();
        recv.stop(StreamCode::Refused);
        Ok(())
    }

    fn take(&mut self) -> (SendHalf, RecvHalf) {
        match self.halves.take() {
            Some(h) => h,
            // Unreachable: the halves are taken once, by accept or refuse,
            // which consume `self`.
            None => unreachable!("IncomingStream answered twice"),
        }
    }

    async fn answer(&mut self, response: &DialResponse) -> Result<(), HostError> {
        let Some((send, _)) = self.halves.as_mut() else {
            return Err(HostError::Closed);
        };
        let fail = |cause| HostError::Answer {
            service: self.incoming.service.clone(),
            caller: self.incoming.caller.to_string(),
            cause,
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, write_frame(send, response, MAX_DIAL_FRAME))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ProtoError::Io(e))) => Err(fail(match crate::error::remote_end(&e) {
                Some(end) => AnswerFailure::Ended(end.clone()),
                None => AnswerFailure::Write(ProtoError::Io(e)),
            })),
            Ok(Err(e)) => Err(fail(AnswerFailure::Write(e))),
            Err(_) => Err(fail(AnswerFailure::Timeout(ANSWER_TIMEOUT))),
        }
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if let Some((send, recv)) = self.halves.as_mut() {
            send.reset(StreamCode::Refused);
            recv.stop(StreamCode::Refused);
        }
    }
}

/// How an offer stream ended.
#[derive(Debug)]
pub(super) enum OfferEnd {
    /// A dial arrived on it.
    Incoming(Box<IncomingStream>),
    /// The router refused the offer (no host stream yet, past its limit
    /// of idle offers, draining...).
    Refused(DialStatus, String),
    /// The stream or the connection ended, or the offer was closed here;
    /// `None` when closed here.
    Ended(Option<String>),
}

/// Opens an offer stream on `conn` and waits, for as long as the router
/// keeps it, for a dial; `close` turning true closes it (reset) unless a
/// dial's frame has begun to arrive.
///
/// No timeout on the wait itself: an idle offer is meant to wait. It ends
/// with its connection, which the session closes when the router falls
/// silent (keep-alives stop), and with `close`.
pub(super) async fn offer(
    conn: Conn,
    router_addr: String,
    mut close: tokio::sync::watch::Receiver<bool>,
) -> OfferEnd {
    let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &DialRequest::new(OFFER_STREAM), MAX_DIAL_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv))
    })
    .await;
    let (mut send, mut recv) = match opened {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return OfferEnd::Ended(Some(e)),
        Err(_) => {
            return OfferEnd::Ended(Some(format!(
                "no stream could be opened within {} s (the router's stream limit?)",
                OPEN_TIMEOUT.as_secs()
            )))
        }
    };
    // The frame's first byte ends the idle wait: from then on, the frame
    // is read to its end (bounded) even if `close` turns true, so a dial
    // the router already committed to this offer is never cut in half.
    let first = tokio::select! {
        r = read_first_byte(&mut recv) => r,
        _ = close.wait_for(|c| *c) => {
            send.reset(StreamCode::Refused);
            recv.stop(StreamCode::Refused);
            return OfferEnd::Ended(None);
        }
    };
    let frame = match first {
        Ok(b) => match tokio::time::timeout(ANSWER_TIMEOUT, read_rest(&mut recv, b)).await {
            Ok(r) => r,
            Err(_) => Err("the router's frame did not arrive in full".into()),
        },
        Err(e) => Err(e),
    };
    let arrived = Instant::now();
    match frame.map(|body| decode_offer(&body)) {
        Ok(Ok(OfferFrame::Incoming(incoming))) => OfferEnd::Incoming(Box::new(IncomingStream {
            incoming,
            halves: Some((send, recv)),
            router_addr,
            arrived,
        })),
        Ok(Ok(OfferFrame::Refused(r))) => OfferEnd::Refused(r.status, r.message),
        Ok(Err(e)) => {
            send.reset(StreamCode::Refused);
            recv.stop(StreamCode::Refused);
            OfferEnd::Ended(Some(format!("bad frame from the router: {e}")))
        }
        Err(e) => OfferEnd::Ended(Some(e)),
    }
}

async fn read_first_byte<R: AsyncRead + Unpin>(r: &mut R) -> Result<u8, String> {
    let mut b = [0u8; 1];
    match r.read(&mut b).await {
        Ok(0) => Err("the router closed the offer".into()),
        Ok(_) => Ok(b[0]),
        Err(e) => Err(match crate::error::remote_end(&e) {
            Some(RemoteEnd::Reset(_)) => "the router reset the offer".into(),
            _ => e.to_string(),
        }),
    }
}

/// The rest of a frame whose first byte is `first`: its body, at most
/// [`MAX_DIAL_FRAME`] bytes.
async fn read_rest<R: AsyncRead + Unpin>(r: &mut R, first: u8) -> Result<Vec<u8>, String> {
    let mut header = [first, 0, 0, 0];
    r.read_exact(&mut header[1..HEADER_LEN])
        .await
        .map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_DIAL_FRAME {
        return Err(ProtoError::TooLarge {
            len,
            max: MAX_DIAL_FRAME,
        }
        .to_string());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok(body)
}

/// What the router sent first on an offer.
#[derive(Debug, PartialEq)]
enum OfferFrame {
    /// A dial.
    Incoming(Incoming),
    /// A refusal of the offer.
    Refused(DialResponse),
}

/// An offer's first frame is an [`Incoming`] (a dial) or, when the router
/// refuses the offer, a [`DialResponse`]. The two do not decode as each
/// other (trailing bytes are rejected), so each is tried in turn.
fn decode_offer(body: &[u8]) -> Result<OfferFrame, ProtoError> {
    match from_bytes_within::<Incoming>(body, MAX_DIAL_FRAME) {
        Ok(i) => Ok(OfferFrame::Incoming(i)),
        Err(e) => match from_bytes_within::<DialResponse>(body, MAX_DIAL_FRAME) {
            Ok(r) if r.status != DialStatus::Ok => Ok(OfferFrame::Refused(r)),
            _ => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use darkport_proto::codec::to_bytes;

    fn incoming() -> Incoming {
        Incoming {
            service: "logs".into(),
            caller: "app-1".to_string().try_into().unwrap(),
            caller_roles: vec!["writers".to_string().try_into().unwrap()],
            caller_address: "192.0.2.7:51000".into(),
            router: "router-1".to_string().try_into().unwrap(),
        }
    }

    #[test]
    fn an_offer_frame_is_a_dial_or_a_refusal() {
        let i = incoming();
        assert_eq!(
            decode_offer(&to_bytes(&i).unwrap()).unwrap(),
            OfferFrame::Incoming(i)
        );
        for status in [
            DialStatus::BadRequest,
            DialStatus::LimitReached,
            DialStatus::Draining,
            DialStatus::NotReady,
        ] {
            let r = DialResponse {
                status,
                message: "no host stream on this connection".into(),
            };
            assert_eq!(
                decode_offer(&to_bytes(&r).unwrap()).unwrap(),
                OfferFrame::Refused(r)
            );
        }
        // An Ok is not a refusal, and is not what an offer gets first.
        let ok = DialResponse {
            status: DialStatus::Ok,
            message: String::new(),
        };
        assert!(decode_offer(&to_bytes(&ok).unwrap()).is_err());
        assert!(decode_offer(b"garbage").is_err());
        assert!(decode_offer(&[]).is_err());
    }

    #[tokio::test]
    async fn a_frame_split_across_reads_is_read_whole_and_bounded() {
        let frame = darkport_proto::codec::encode_frame(&incoming(), MAX_DIAL_FRAME).unwrap();
        // One byte per read.
        let mut reader = tokio_test_reader(&frame);
        let first = read_first_byte(&mut reader).await.unwrap();
        let body = read_rest(&mut reader, first).await.unwrap();
        assert_eq!(
            decode_offer(&body).unwrap(),
            OfferFrame::Incoming(incoming())
        );
        // A header announcing more than a dial frame is refused before the
        // body is read.
        let mut big = ((MAX_DIAL_FRAME + 1) as u32).to_be_bytes().to_vec();
        big.push(0);
        let mut reader = tokio_test_reader(&big);
        let first = read_first_byte(&mut reader).await.unwrap();
        let e = read_rest(&mut reader, first).await.unwrap_err();
        assert!(e.contains("exceeds the limit"), "{e}");
    }

    /// A reader that returns one byte per read.
    fn tokio_test_reader(bytes: &[u8]) -> impl AsyncRead + Unpin {
        let (mut w, r) = tokio::io::duplex(1);
        let bytes = bytes.to_vec();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for b in bytes {
                if w.write_all(&[b]).await.is_err() {
                    return;
                }
            }
        });
        r
    }
}
