//! Frames: a 4-byte big-endian length, then a bincode-encoded message.
//!
//! The serializer is private to this module so it can be swapped without
//! touching the rest of the code. Every decode takes a byte limit; a frame
//! whose header announces more than the limit is refused before any of its
//! body is read, and bytes left over after a message are an error.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Largest first message on a data stream (a dial request).
pub const MAX_DIAL_FRAME: usize = 4 * 1024;

/// Largest control request from a peer without a certificate (enrollment).
pub const MAX_UNAUTHENTICATED_FRAME: usize = 64 * 1024;

/// Largest control-plane message (admin requests and responses, snapshots).
pub const MAX_CONTROL_FRAME: usize = 16 * 1024 * 1024;

/// Capacity reserved up front when reading a frame body.
const INITIAL_READ_CAPACITY: usize = 256;

/// What went wrong reading or writing a protocol message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// More bytes are needed to complete the frame; not an error for a
    /// caller that can read more.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes are needed at least.
        needed: usize,
    },
    /// The length prefix announced a message larger than allowed here.
    #[error("message of {len} bytes exceeds the limit of {max} bytes; the peer is misbehaving or speaks another protocol")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// The bytes do not decode as the expected message.
    #[error("malformed message: {0}; the peer speaks another protocol or version")]
    Malformed(String),
    /// A message decoded but bytes were left over.
    #[error("malformed message: {0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message could not be encoded (a bug, or a value over the limit).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The stream ended before a whole frame arrived.
    #[error("stream ended in the middle of a message")]
    UnexpectedEof,
    /// The stream ended cleanly before any frame arrived.
    #[error("stream closed before a message arrived")]
    Closed,
    /// Reading or writing the underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// The one encoding. `LIMIT` is the decoder's budget for what it
/// allocates for containers while decoding one message.
fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
        .with_limit::<LIMIT>()
}

/// Decodes with the budget of the smallest frame class that holds `max`:
/// a 4 KiB dial frame may make the decoder reserve at most 4 KiB, an
/// unauthenticated request 64 KiB, anything else 16 MiB.
fn decode_budgeted<T: DeserializeOwned>(body: &[u8], max: usize) -> Result<(T, usize), ProtoError> {
    let r = if max <= MAX_DIAL_FRAME {
        bincode::serde::decode_from_slice(body, config::<MAX_DIAL_FRAME>())
    } else if max <= MAX_UNAUTHENTICATED_FRAME {
        bincode::serde::decode_from_slice(body, config::<MAX_UNAUTHENTICATED_FRAME>())
    } else {
        bincode::serde::decode_from_slice(body, config::<MAX_CONTROL_FRAME>())
    };
    r.map_err(|e| ProtoError::Malformed(e.to_string()))
}

/// Encodes a message body (no frame header).
pub fn to_bytes<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    bincode::serde::encode_to_vec(msg, config::<MAX_CONTROL_FRAME>())
        .map_err(|e| ProtoError::Encode(e.to_string()))
}

/// Decodes a whole message body, rejecting trailing bytes, with the
/// control-plane budget.
pub fn from_bytes<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    from_bytes_within(body, MAX_CONTROL_FRAME)
}

/// Decodes a whole message body of a frame class whose limit is `max`,
/// rejecting trailing bytes. The decoder may allocate no more than the
/// smallest frame class that holds `max` ([`MAX_DIAL_FRAME`],
/// [`MAX_UNAUTHENTICATED_FRAME`] or [`MAX_CONTROL_FRAME`]).
pub fn from_bytes_within<T: DeserializeOwned>(body: &[u8], max: usize) -> Result<T, ProtoError> {
    let (msg, used) = decode_budgeted(body, max)?;
    if used != body.len() {
        return Err(ProtoError::TrailingBytes(body.len() - used));
    }
    Ok(msg)
}

/// Encodes a message as a frame: length prefix, then body.
pub fn encode_frame<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, ProtoError> {
    let body = to_bytes(msg)?;
    if body.len() > max {
        return Err(ProtoError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one frame from the start of `buf`.
///
/// Returns the message and how many bytes it used; `Incomplete` when `buf`
/// holds only part of a frame.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8], max: usize) -> Result<(T, usize), ProtoError> {
    let len = frame_len(buf, max)?;
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(ProtoError::Incomplete {
            needed: total - buf.len(),
        });
    }
    Ok((from_bytes_within(&buf[HEADER_LEN..total], max)?, total))
}

fn frame_len(buf: &[u8], max: usize) -> Result<usize, ProtoError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Err(ProtoError::Incomplete {
            needed: HEADER_LEN - buf.len(),
        });
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads exactly one frame from `r`.
///
/// Reads only the bytes of that frame, so the stream can carry payload right
/// after it. Timeouts are the caller's job.
pub async fn read_frame<R, T>(r: &mut R, max: usize) -> Result<T, ProtoError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]).await? {
            0 if got == 0 => return Err(ProtoError::Closed),
            0 => return Err(ProtoError::UnexpectedEof),
            n => got += n,
        }
    }
    let len = frame_len(&header, max)?;
    // Grow with the bytes that actually arrive, not with what the header
    // claims: a peer announcing a large frame and sending nothing costs
    // almost nothing.
    let mut body = Vec::with_capacity(len.min(INITIAL_READ_CAPACITY));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(ProtoError::UnexpectedEof);
    }
    from_bytes_within(&body, max)
}

/// Writes one frame to `w` and flushes it.
pub async fn write_frame<W, T>(w: &mut W, msg: &T, max: usize) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(msg, max)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{DialRequest, DialResponse};

    #[test]
    fn roundtrip_and_incomplete_at_every_split() {
        let req = DialRequest::new("fluentd");
        let frame = encode_frame(&req, MAX_DIAL_FRAME).expect("encode");
        for cut in 0..frame.len() {
            match decode_frame::<DialRequest>(&frame[..cut], MAX_DIAL_FRAME) {
                Err(ProtoError::Incomplete { needed }) => assert!(needed > 0),
                other => panic!("cut at {cut}: expected Incomplete, got {other:?}"),
            }
        }
        let (back, used) = decode_frame::<DialRequest>(&frame, MAX_DIAL_FRAME).expect("decode");
        assert_eq!(back, req);
        assert_eq!(used, frame.len());
    }

    #[test]
    fn oversized_header_is_refused_before_body() {
        let mut frame = ((MAX_DIAL_FRAME + 1) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(b"x");
        assert!(matches!(
            decode_frame::<DialRequest>(&frame, MAX_DIAL_FRAME),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn each_frame_class_has_its_own_decode_budget() {
        // A 5,000-byte service name: within the control budget, over the
        // 4 KiB budget of the dial frame class.
        let body = to_bytes(&DialRequest::new("x".repeat(5000))).expect("encode");
        assert!(from_bytes::<DialRequest>(&body).is_ok());
        match from_bytes_within::<DialRequest>(&body, MAX_DIAL_FRAME) {
            Err(ProtoError::Malformed(m)) => assert!(m.to_lowercase().contains("limit"), "{m}"),
            Err(e) => panic!("expected the 4 KiB budget to refuse it, got {e}"),
            Ok(_) => panic!("expected the 4 KiB budget to refuse it"),
        }
        let body = to_bytes(&DialRequest::new("x".repeat(70_000))).expect("encode");
        assert!(from_bytes_within::<DialRequest>(&body, MAX_UNAUTHENTICATED_FRAME).is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut body = to_bytes(&DialRequest::new("a")).expect("encode");
        body.push(0);
        assert!(matches!(
            from_bytes::<DialRequest>(&body),
            Err(ProtoError::TrailingBytes(1))
        ));
    }

    #[test]
    fn garbage_is_malformed_not_panic() {
        for garbage in [&b""[..], b"\xff\xff\xff", b"GET / HTTP/1.1\r\n", &[0u8; 64]] {
            let r = from_bytes::<DialRequest>(garbage);
            assert!(r.is_err(), "{garbage:?} decoded");
            // Must not panic; whatever it decodes to is fine.
            let _ = from_bytes::<DialResponse>(garbage);
        }
    }

    #[tokio::test]
    async fn read_frame_handles_split_reads() {
        let frame = encode_frame(&DialRequest::new("svc"), MAX_DIAL_FRAME).expect("encode");
        let (mut a, mut b) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            for byte in frame {
                a.write_all(&[byte]).await.expect("write");
            }
            a.write_all(b"payload").await.expect("write");
        });
        let got: DialRequest = read_frame(&mut b, MAX_DIAL_FRAME).await.expect("read");
        assert_eq!(got.service, "svc");
        let mut rest = [0u8; 7];
        b.read_exact(&mut rest).await.expect("payload");
        assert_eq!(&rest, b"payload");
        writer.await.expect("join");
    }

    #[tokio::test]
    async fn read_frame_distinguishes_closed_and_truncated() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(matches!(
            read_frame::<_, DialRequest>(&mut b, MAX_DIAL_FRAME).await,
            Err(ProtoError::Closed)
        ));
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 1]).await.expect("write");
        drop(a);
        assert!(matches!(
            read_frame::<_, DialRequest>(&mut b, MAX_DIAL_FRAME).await,
            Err(ProtoError::UnexpectedEof)
        ));
    }
}
