//! Dial errors.

use std::time::Duration;

use darkport_proto::msg::DialStatus;
use darkport_proto::ProtoError;
use darkport_transport::connect::ConnectError;
use darkport_transport::mux::RemoteEnd;

/// Why a dial failed. Variants say who refused: the router's policy, the
/// router's view of services, the private service, or the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The router knows no service of that name.
    #[error("router refused dial to {service:?}: unknown service: {message}")]
    UnknownService {
        /// Service asked for.
        service: String,
        /// Router's explanation.
        message: String,
    },
    /// Policy does not allow this identity to dial the service.
    #[error("router refused dial to {service:?}: not authorized by policy: {message}")]
    NotAuthorized {
        /// Service asked for.
        service: String,
        /// Router's explanation.
        message: String,
    },
    /// The router could not reach the private service.
    #[error("router could not reach service {service:?}: {message}")]
    ServiceUnreachable {
        /// Service asked for.
        service: String,
        /// Router's explanation.
        message: String,
    },
    /// The router may not serve the service; no other router that may was
    /// reachable.
    #[error("no reachable router may serve {service:?}: {message}")]
    WrongRouter {
        /// Service asked for.
        service: String,
        /// Router's explanation.
        message: String,
    },
    /// A limit of the router was reached for this identity (for example
    /// its concurrent streams); other identities are unaffected.
    #[error("router refused dial to {service:?}: limit reached: {message}")]
    LimitReached {
        /// Service asked for.
        service: String,
        /// Router's explanation, naming the limit.
        message: String,
    },
    /// The router is shutting down (draining); another router is tried.
    #[error("router is draining: {0}")]
    Draining(String),
    /// The router has no policy yet.
    #[error("router is not ready: {0}")]
    NotReady(String),
    /// The router could not parse the request.
    #[error("router rejected the dial request: {0}")]
    BadRequest(String),
    /// The router closed the connection because this identity may not use
    /// it (revoked, deleted, replaced certificate, or not a client).
    #[error("router {router} refused this identity: {reason}")]
    IdentityRefused {
        /// Router address.
        router: String,
        /// The router's reason.
        reason: String,
    },
    /// The router says it was revoked by the controller: it serves nobody
    /// now. Other routers are tried, and the router list is fetched again.
    #[error("router {router} was revoked and serves no one: {reason}; use another router (the controller's router list has the current ones)")]
    RouterRevoked {
        /// Router address.
        router: String,
        /// The router's reason.
        reason: String,
    },
    /// This identity's certificate has expired.
    #[error("the certificate of identity {identity} expired at {at}; renewal did not succeed in time; re-enroll with a new token (darkport-controller identity create)")]
    CertificateExpired {
        /// Identity name.
        identity: String,
        /// Expiry, RFC 3339.
        at: String,
    },
    /// No router is known.
    #[error("no router is available: the controller lists no online router; start one, or pass --router HOST:PORT")]
    NoRouters,
    /// Connecting to or talking with the router failed; another router
    /// is tried.
    #[error("router {router}: {cause}")]
    Router {
        /// Router address.
        router: String,
        /// What happened, typed: match on it rather than on the text.
        /// Boxed: it holds the errors of both transports, and a dial's
        /// `Result` should stay small.
        #[source]
        cause: Box<RouterFailure>,
    },
    /// Asking the controller for routers failed.
    #[error("cannot get the router list: {0}")]
    Controller(#[from] darkport_transport::control::ControlClientError),
    /// The identity cannot be used.
    #[error(transparent)]
    Identity(#[from] darkport_transport::identity::IdentityError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] darkport_transport::tls::TlsError),
    /// The service took the connection, and the early bytes sent with the
    /// dial, and reset it before the router's answer arrived. Not retried
    /// elsewhere: the service has seen those bytes.
    #[error("service {service:?} accepted the connection and then reset it")]
    ServiceReset {
        /// Service asked for.
        service: String,
    },
    /// A local socket could not be opened.
    #[error("local socket: {0}")]
    Io(#[from] std::io::Error),
}

/// What went wrong with one router, in [`DialError::Router`]: the
/// connection could not be made, or it or the dial's stream ended with no
/// answer. Each variant keeps the transport's typed error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterFailure {
    /// No QUIC connection could be made: the router is down, a firewall
    /// drops UDP, or a handshake was refused (the error's hint says what
    /// to do about a certificate).
    #[error("QUIC: {0}")]
    Quic(ConnectError),
    /// No TLS-over-TCP connection could be made: is the router's TCP port
    /// open?
    #[error("TCP: {0}")]
    Tcp(ConnectError),
    /// Both transports were tried (auto mode) and both failed.
    #[error("QUIC: {quic}; TCP: {tcp}")]
    Both {
        /// Why QUIC failed.
        quic: ConnectError,
        /// Why TCP failed.
        tcp: ConnectError,
    },
    /// The router closed the connection because one of its limits was
    /// reached (close code `Busy`); its reason names the limit.
    #[error("the router is at a limit: {0}")]
    Busy(String),
    /// The connection or the dial's stream ended: the peer's code and
    /// reason, or why it was lost.
    #[error("{0}")]
    Ended(RemoteEnd),
    /// Nothing at all arrived from the router within this window after a
    /// dial: it is taken for dead and its connection closed.
    #[error("no answer at all within {0:?}; taking it for dead")]
    Silent(Duration),
    /// The router is alive but did not answer the dial within this time.
    #[error("no answer to the dial within {} s", .0.as_secs())]
    NoAnswer(Duration),
    /// The dial request could not be sent, or the stream ended before the
    /// answer, and the connection had not ended.
    #[error("{0}")]
    Stream(ProtoError),
    /// Reading the answer failed otherwise than by the stream's end.
    #[error("{0}")]
    Io(std::io::Error),
    /// The answer was not a dial response: the peer speaks another
    /// protocol or version.
    #[error("bad answer: {0}")]
    BadAnswer(ProtoError),
}

impl RouterFailure {
    /// From a failed read of the answer: how the stream ended, if the
    /// error carries it, else the I/O error itself.
    pub(crate) fn from_io(e: std::io::Error) -> RouterFailure {
        match remote_end(&e) {
            Some(end) => RouterFailure::Ended(end.clone()),
            None => RouterFailure::Io(e),
        }
    }
}

/// How a stream ended, if that is what this I/O error of a stream says.
pub(crate) fn remote_end(e: &std::io::Error) -> Option<&RemoteEnd> {
    e.get_ref().and_then(|i| i.downcast_ref::<RemoteEnd>())
}

/// What a failed dial does next, by [`DialError::retry`]. The dial loop
/// asks this instead of keeping its own lists of variants, so a new
/// variant gets one decision in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// This router cannot answer now (dead, slow, draining, not ready):
    /// try the next router, and when every router failed, connect again
    /// for another round.
    Elsewhere,
    /// Our router list is out of date (the router may not serve the
    /// service, or was revoked): try the next router, and when every
    /// router failed, fetch the list again before another round.
    RefreshList,
    /// This router refuses this identity; another router's view may differ
    /// (one cut off from the controller may not know a renewed
    /// certificate), so the other routers of this round are tried, but
    /// when they all refuse the dial fails: connecting again would only
    /// meet the same refusals.
    ElsewhereThenFinal,
    /// The answer holds for every router (the policy, the service, this
    /// identity or the local side): the dial fails with it.
    Final,
}

impl DialError {
    /// What a dial that failed with this error does next.
    pub fn retry(&self) -> Retry {
        match self {
            DialError::Router { .. } | DialError::NotReady(_) | DialError::Draining(_) => {
                Retry::Elsewhere
            }
            DialError::WrongRouter { .. } | DialError::RouterRevoked { .. } => Retry::RefreshList,
            DialError::IdentityRefused { .. } => Retry::ElsewhereThenFinal,
            // The service has seen the early bytes: no second try.
            DialError::ServiceReset { .. }
            | DialError::UnknownService { .. }
            | DialError::NotAuthorized { .. }
            | DialError::ServiceUnreachable { .. }
            | DialError::LimitReached { .. }
            | DialError::BadRequest(_)
            | DialError::CertificateExpired { .. }
            | DialError::NoRouters
            | DialError::Controller(_)
            | DialError::Identity(_)
            | DialError::Tls(_)
            | DialError::Io(_) => Retry::Final,
        }
    }

    /// A stable snake_case name of the kind of failure, for metric labels
    /// and log fields.
    pub fn kind_str(&self) -> &'static str {
        match self {
            DialError::UnknownService { .. } => "unknown_service",
            DialError::NotAuthorized { .. } => "not_authorized",
            DialError::ServiceUnreachable { .. } => "service_unreachable",
            DialError::WrongRouter { .. } => "wrong_router",
            DialError::LimitReached { .. } => "limit_reached",
            DialError::Draining(_) => "draining",
            DialError::NotReady(_) => "not_ready",
            DialError::BadRequest(_) => "bad_request",
            DialError::IdentityRefused { .. } => "identity_refused",
            DialError::RouterRevoked { .. } => "router_revoked",
            DialError::CertificateExpired { .. } => "certificate_expired",
            DialError::NoRouters => "no_routers",
            DialError::Router { .. } => "router_error",
            DialError::Controller(_) => "controller_error",
            DialError::Identity(_) => "identity_error",
            DialError::Tls(_) => "tls_error",
            DialError::ServiceReset { .. } => "service_reset",
            DialError::Io(_) => "io_error",
        }
    }

    pub(crate) fn from_status(
        status: DialStatus,
        service: &str,
        message: String,
    ) -> Option<DialError> {
        let service = service.to_string();
        Some(match status {
            DialStatus::Ok => return None,
            DialStatus::UnknownService => DialError::UnknownService { service, message },
            DialStatus::NotAuthorized => DialError::NotAuthorized { service, message },
            DialStatus::ServiceUnreachable => DialError::ServiceUnreachable { service, message },
            DialStatus::NotReady => DialError::NotReady(message),
            DialStatus::WrongRouter => DialError::WrongRouter { service, message },
            DialStatus::BadRequest => DialError::BadRequest(message),
            DialStatus::LimitReached => DialError::LimitReached { service, message },
            DialStatus::Draining => DialError::Draining(message),
        })
    }
}

impl From<DialError> for std::io::Error {
    fn from(e: DialError) -> Self {
        use std::io::ErrorKind as K;
        let kind = match &e {
            DialError::UnknownService { .. } => K::NotFound,
            DialError::NotAuthorized { .. } | DialError::IdentityRefused { .. } => {
                K::PermissionDenied
            }
            DialError::ServiceUnreachable { .. } | DialError::NoRouters => K::ConnectionRefused,
            DialError::ServiceReset { .. } => K::ConnectionReset,
            DialError::LimitReached { .. } => K::QuotaExceeded,
            DialError::Io(io) => io.kind(),
            _ => K::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// Says who ended a tunneled stream of `identity` to `service` that was
/// reset from the router's side, and why, for the operator: a revocation is
/// not a service failure.
pub fn describe_remote_end(
    end: Option<&darkport_transport::splice::RemoteEnd>,
    identity: &str,
    service: &str,
) -> String {
    use darkport_proto::codes::{CloseCode, StreamCode};
    use darkport_transport::splice::RemoteEnd;
    let is = |code: u64, c: StreamCode| code == u64::from(c.code());
    match end {
        Some(RemoteEnd::Reset(code) | RemoteEnd::Stopped(code)) if is(*code, StreamCode::Cut) => {
            format!("the router cut the stream: its policy no longer lets identity {identity} reach service {service} (revoked, deleted, or a policy changed)")
        }
        Some(RemoteEnd::Reset(code) | RemoteEnd::Stopped(code))
            if is(*code, StreamCode::Rejected) =>
        {
            format!("the router rejected what was sent to service {service}: not the Fluentd forward protocol, too large, or a tag no policy lets identity {identity} write (the router's log says which)")
        }
        Some(RemoteEnd::Reset(code) | RemoteEnd::Stopped(code)) if is(*code, StreamCode::Reset) => {
            "the service reset the connection (the router carried its reset across)".into()
        }
        Some(RemoteEnd::Reset(code) | RemoteEnd::Stopped(code)) => {
            format!("the router reset the stream (code {code})")
        }
        Some(RemoteEnd::Closed { code, reason }) => {
            let who = match CloseCode::from_code(*code) {
                Some(CloseCode::Done) => "the router shut down the connection",
                _ => "the router closed the connection",
            };
            format!("{who}: {reason}")
        }
        Some(RemoteEnd::Lost(why)) => format!("the connection to the router was lost: {why}"),
        None => "the router side reset the stream".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use darkport_transport::mux::Lost;
    use darkport_transport::splice::RemoteEnd;

    /// One of every variant, with the decision it must get. `kind_str` is
    /// an exhaustive match, so distinct kinds prove every variant is here.
    #[test]
    fn every_variant_has_its_retry() {
        let s = || String::from("x");
        let svc = || String::from("echo");
        let table: Vec<(DialError, Retry)> = vec![
            (
                DialError::Router {
                    router: s(),
                    cause: Box::new(RouterFailure::Busy(s())),
                },
                Retry::Elsewhere,
            ),
            (DialError::NotReady(s()), Retry::Elsewhere),
            (DialError::Draining(s()), Retry::Elsewhere),
            (
                DialError::WrongRouter {
                    service: svc(),
                    message: s(),
                },
                Retry::RefreshList,
            ),
            (
                DialError::RouterRevoked {
                    router: s(),
                    reason: s(),
                },
                Retry::RefreshList,
            ),
            (
                DialError::IdentityRefused {
                    router: s(),
                    reason: s(),
                },
                Retry::ElsewhereThenFinal,
            ),
            (
                DialError::UnknownService {
                    service: svc(),
                    message: s(),
                },
                Retry::Final,
            ),
            (
                DialError::NotAuthorized {
                    service: svc(),
                    message: s(),
                },
                Retry::Final,
            ),
            (
                DialError::ServiceUnreachable {
                    service: svc(),
                    message: s(),
                },
                Retry::Final,
            ),
            (
                DialError::LimitReached {
                    service: svc(),
                    message: s(),
                },
                Retry::Final,
            ),
            (DialError::BadRequest(s()), Retry::Final),
            (
                DialError::CertificateExpired {
                    identity: s(),
                    at: s(),
                },
                Retry::Final,
            ),
            (DialError::NoRouters, Retry::Final),
            (
                DialError::Controller(darkport_transport::control::ControlClientError::Timeout {
                    addr: s(),
                    secs: 1,
                }),
                Retry::Final,
            ),
            (
                DialError::Identity(darkport_transport::identity::IdentityError::Exists(
                    "id".into(),
                )),
                Retry::Final,
            ),
            (
                DialError::Tls(darkport_transport::tls::TlsError::Quic(s())),
                Retry::Final,
            ),
            (DialError::ServiceReset { service: svc() }, Retry::Final),
            (DialError::Io(std::io::Error::other("x")), Retry::Final),
        ];
        let kinds: std::collections::BTreeSet<_> =
            table.iter().map(|(e, _)| e.kind_str()).collect();
        assert_eq!(kinds.len(), table.len(), "a variant is listed twice");
        assert_eq!(
            kinds.len(),
            18,
            "a DialError variant is missing from the table"
        );
        for (e, want) in &table {
            assert_eq!(e.retry(), *want, "{}", e.kind_str());
        }
    }

    /// The typed cause keeps the text a router error always had, and is
    /// the error's source.
    #[test]
    fn router_failures_are_typed_and_keep_their_text() {
        let router = |cause| DialError::Router {
            router: "r:1".into(),
            cause: Box::new(cause),
        };
        let table = [
            (
                RouterFailure::Busy("64 connections of app-1".into()),
                "router r:1: the router is at a limit: 64 connections of app-1",
            ),
            (
                RouterFailure::Silent(Duration::from_millis(2500)),
                "router r:1: no answer at all within 2.5s; taking it for dead",
            ),
            (
                RouterFailure::NoAnswer(Duration::from_secs(10)),
                "router r:1: no answer to the dial within 10 s",
            ),
            (
                RouterFailure::Ended(RemoteEnd::Reset(1)),
                "router r:1: the peer reset the stream (code 1)",
            ),
            (
                RouterFailure::BadAnswer(ProtoError::Closed),
                "router r:1: bad answer: stream closed before a message arrived",
            ),
            (
                RouterFailure::Stream(ProtoError::UnexpectedEof),
                "router r:1: stream ended in the middle of a message",
            ),
        ];
        for (cause, text) in table {
            let e = router(cause);
            assert_eq!(e.to_string(), text);
            let source = std::error::Error::source(&e).expect("the cause is the source");
            assert_eq!(source.to_string(), text["router r:1: ".len()..]);
        }
        // A read that failed because the stream ended says how, typed.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, RemoteEnd::Reset(2));
        let text = io.to_string();
        let cause = RouterFailure::from_io(io);
        assert!(
            matches!(cause, RouterFailure::Ended(RemoteEnd::Reset(2))),
            "{cause:?}"
        );
        assert_eq!(cause.to_string(), text);
        let cause = RouterFailure::from_io(std::io::Error::other("broken pipe"));
        assert!(matches!(cause, RouterFailure::Io(_)), "{cause:?}");
        assert_eq!(cause.to_string(), "broken pipe");
    }

    #[test]
    fn remote_ends_say_who() {
        let revoked = RemoteEnd::Closed {
            code: 4,
            reason: "identity app-2 is not known to the controller (deleted or revoked)".into(),
        };
        let d = |e| describe_remote_end(Some(e), "app-2", "fluentd");
        let s = d(&revoked);
        assert!(
            s.starts_with("the router closed the connection: identity app-2"),
            "{s}"
        );
        let s = d(&RemoteEnd::Reset(2));
        assert!(s.contains("router cut the stream"), "{s}");
        assert!(s.contains("identity app-2 reach service fluentd"), "{s}");
        let s = d(&RemoteEnd::Reset(1));
        assert!(s.contains("service reset"), "{s}");
        let s = d(&RemoteEnd::Lost(Lost::Quic(
            quinn::ConnectionError::TimedOut,
        )));
        assert!(
            s.contains("lost: the peer stopped answering (timed out)"),
            "{s}"
        );
    }
}
