//! One request/response exchange with the controller.

use std::time::Duration;

use darkport_proto::codec::{read_frame, write_frame, MAX_CONTROL_FRAME};
use darkport_proto::codes::CloseCode;
use darkport_proto::msg::{
    ControlBody, ControlError, ControlErrorCode, ControlRequest, ControlResponse,
};
use darkport_proto::ProtoError;

use crate::endpoint::HANDSHAKE_TIMEOUT;

/// How long a one-shot exchange waits for its close to be delivered.
pub const CLOSE_WAIT: Duration = Duration::from_millis(500);

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

/// The controller addresses in `list`: `host:port`, or several separated
/// by commas (controllers sharing one state), in order, blanks dropped.
pub fn addresses(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect()
}

/// Connects to the controller with `config`, with a handshake timeout.
///
/// `addr` may list several controllers (`a:4433,b:4433`): every address
/// of every one is tried, a new attempt every
/// [`crate::endpoint::ATTEMPT_DELAY`] in the order given, and the first
/// handshake wins, so a dead controller costs one attempt delay.
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
    let mut resolved = Vec::new();
    let mut unresolved = None;
    for a in addresses(addr) {
        match crate::endpoint::resolve_all(a).await {
            Ok(all) => resolved.extend(all),
            Err(e) => unresolved = Some(e),
        }
    }
    if resolved.is_empty() {
        return Err(io(unresolved.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no controller address given",
            )
        })));
    }
    match crate::endpoint::connect_addrs(
        endpoint,
        config,
        resolved,
        darkport_proto::CONTROLLER_SERVER_NAME,
    )
    .await
    {
        Ok(conn) => Ok(conn),
        Err(ConnectError::Resolve { source, .. }) => Err(io(source)),
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
    one_shot_and_controllers(addr, config, body, false)
        .await
        .map(|(r, _)| r)
}

/// Most controller addresses kept in an identity file.
pub const MAX_CONTROLLERS: usize = 8;

/// The controller list to keep: the live ones a controller just named
/// (`live`), then the ones known before that it did not name (a
/// controller down for a moment stays known), at most
/// [`MAX_CONTROLLERS`], comma-separated.
pub fn merge_controllers(live: &[String], known: &str) -> String {
    let mut all: Vec<&str> = Vec::new();
    for a in live
        .iter()
        .map(|a| a.trim())
        .chain(addresses(known))
        .filter(|a| !a.is_empty() && !a.contains(','))
    {
        if !all.contains(&a) && all.len() < MAX_CONTROLLERS {
            all.push(a);
        }
    }
    all.join(",")
}

/// [`one_shot`], then, when `controllers` is set and the request
/// succeeded, asks the same controller which controllers are live
/// (`None` if it could not say, as an older controller cannot).
pub async fn one_shot_and_controllers(
    addr: &str,
    config: quinn::ClientConfig,
    body: ControlBody,
    controllers: bool,
) -> Result<(ControlResponse, Option<Vec<String>>), ControlClientError> {
    let endpoint = crate::endpoint::client(None).map_err(|source| ControlClientError::Io {
        addr: addr.to_string(),
        source,
    })?;
    let conn = connect(&endpoint, addr, config).await?;
    let mut result = request(&conn, body).await.map(|(r, _)| (r, None));
    if let (Ok((_, list)), true) = (&mut result, controllers) {
        if let Ok((ControlResponse::Controllers(live), _)) =
            request(&conn, ControlBody::ListControllers).await
        {
            *list = Some(live);
        }
    }
    conn.close(
        crate::close_code(darkport_proto::codes::CloseCode::Done),
        b"done",
    );
    // Delivers the close to the controller; attempts to other controllers
    // abandoned by the connect may drain for 3 PTO (seconds for a dead
    // one), which nobody waits for.
    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_on_commas_and_drop_blanks() {
        assert_eq!(addresses("a:1"), ["a:1"]);
        assert_eq!(addresses(" a:1, [::1]:2 ,,"), ["a:1", "[::1]:2"]);
        assert!(addresses("").is_empty());
    }

    #[test]
    fn merged_controllers_put_the_live_first_keep_the_rest_and_stay_bounded() {
        let live = vec!["b:1".to_string(), "c:1".to_string()];
        assert_eq!(merge_controllers(&live, "a:1,b:1"), "b:1,c:1,a:1");
        assert_eq!(merge_controllers(&[], "a:1"), "a:1");
        // A comma inside one answer cannot smuggle in a second entry.
        assert_eq!(merge_controllers(&["x:1,y:1".to_string()], "a:1"), "a:1");
        let many: Vec<String> = (0..20).map(|i| format!("h{i}:1")).collect();
        assert_eq!(
            addresses(&merge_controllers(&many, "a:1")).len(),
            MAX_CONTROLLERS
        );
    }
}
