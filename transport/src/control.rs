//! One request/response exchange with the controller.

use std::time::Duration;

use darkport_proto::codec::{read_frame, write_frame, MAX_CONTROL_FRAME};
use darkport_proto::codes::CloseCode;
use darkport_proto::msg::{
    ControlBody, ControlError, ControlErrorCode, ControlRequest, ControlResponse,
};
use darkport_proto::ProtoError;

use crate::endpoint::HANDSHAKE_TIMEOUT;

/// How long to wait for the controller to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why talking to the controller failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlClientError {
    /// The address did not resolve or no socket could be opened.
    #[error("cannot reach the controller at {addr}: {source}")]
    Io {
        /// Controller address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No handshake within the timeout: probably not running.
    #[error("the controller at {addr} did not answer within {secs} s; is it running? start it with: darkport-controller run --data-dir DIR")]
    Timeout {
        /// Controller address.
        addr: String,
        /// Seconds waited.
        secs: u64,
    },
    /// The QUIC/TLS handshake or connection failed.
    #[error("connection to the controller at {addr} failed: {reason}")]
    Connection {
        /// Controller address.
        addr: String,
        /// Cause, in words.
        reason: String,
    },
    /// The controller's answer could not be read.
    #[error("bad answer from the controller: {0}")]
    Proto(#[from] ProtoError),
    /// The controller refused the request.
    #[error("the controller refused: {0}")]
    Refused(ControlError),
}

/// Connects to the controller with `config`, with a handshake timeout.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: &str,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, ControlClientError> {
    let io = |source| ControlClientError::Io {
        addr: addr.to_string(),
        source,
    };
    use crate::endpoint::ConnectError;
    match crate::endpoint::connect_any(endpoint, config, addr, "darkport-controller").await {
        Ok(conn) => Ok(conn),
        Err(ConnectError::Resolve(e)) => Err(io(e)),
        Err(ConnectError::Timeout { .. }) => Err(ControlClientError::Timeout {
            addr: addr.to_string(),
            secs: HANDSHAKE_TIMEOUT.as_secs(),
        }),
        Err(e) => Err(ControlClientError::Connection {
            addr: addr.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Opens a stream, sends `body`, and returns the first answer (errors from
/// the controller become [`ControlClientError::Refused`]). The stream is
/// returned too, for requests answered by more than one message.
pub async fn request(
    conn: &quinn::Connection,
    body: ControlBody,
) -> Result<(ControlResponse, quinn::RecvStream), ControlClientError> {
    let lost = |e: &dyn std::fmt::Display| ControlClientError::Connection {
        addr: conn.remote_address().to_string(),
        reason: e.to_string(),
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| refusal(conn).unwrap_or_else(|| lost(&e)))?;
    // The request must be taken within the same time as the answer: a
    // controller that gives no credit does not hold us forever.
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        write_frame(&mut send, &ControlRequest::new(body), MAX_CONTROL_FRAME),
    )
    .await
    .map_err(|_| lost(&"the request was not taken within 30 s"))??;
    let _ = send.finish();
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut recv, MAX_CONTROL_FRAME))
        .await
        .map_err(|_| lost(&"no answer within 30 s"))?;
    let resp = match resp {
        Ok(r) => r,
        // The connection closed under us: say why (a refused certificate
        // shows up here, not at connect time).
        Err(ProtoError::Io(_)) | Err(ProtoError::Closed) | Err(ProtoError::UnexpectedEof) => {
            if let Some(refused) = refusal(conn) {
                return Err(refused);
            }
            let reason = conn
                .close_reason()
                .map(|e| crate::describe_connection_error(&e))
                .unwrap_or_else(|| "the controller closed the stream".into());
            return Err(lost(&reason));
        }
        Err(e) => return Err(e.into()),
    };
    match resp {
        ControlResponse::Error(e) => Err(ControlClientError::Refused(e)),
        other => Ok((other, recv)),
    }
}

/// The controller's refusal, typed, if it closed `conn` because the
/// certificate is not current: close code `Revoked` (the identity is gone)
/// becomes [`ControlErrorCode::Revoked`], `ControlRefused` (a stale
/// certificate) [`ControlErrorCode::Forbidden`].
fn refusal(conn: &quinn::Connection) -> Option<ControlClientError> {
    let (code, message) = crate::peer_close_code(&conn.close_reason()?)?;
    let code = match code {
        CloseCode::Revoked => ControlErrorCode::Revoked,
        CloseCode::ControlRefused => ControlErrorCode::Forbidden,
        CloseCode::Busy => ControlErrorCode::RateLimited,
        _ => return None,
    };
    Some(ControlClientError::Refused(ControlError { code, message }))
}

/// Connects, sends one request, returns the answer, and closes cleanly.
pub async fn one_shot(
    addr: &str,
    config: quinn::ClientConfig,
    body: ControlBody,
) -> Result<ControlResponse, ControlClientError> {
    let endpoint = crate::endpoint::client(None).map_err(|source| ControlClientError::Io {
        addr: addr.to_string(),
        source,
    })?;
    let conn = connect(&endpoint, addr, config).await?;
    let result = request(&conn, body).await.map(|(r, _)| r);
    conn.close(
        crate::close_code(darkport_proto::codes::CloseCode::Done),
        b"done",
    );
    endpoint.wait_idle().await;
    result
}
