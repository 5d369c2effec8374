//! Hosting errors.

use std::time::Duration;

use darkport_proto::msg::DialStatus;
use darkport_proto::ProtoError;
use darkport_transport::mux::RemoteEnd;

use crate::DialError;

/// Why hosting could not start, or why a hosted stream could not be
/// answered. What happens to one router's connection on the way (a router
/// down, restarting or refusing) is not an error here: the host keeps
/// trying that router, and [`Host::routers`](super::Host::routers) says
/// where each one stands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// No service to host was given.
    #[error("no service to host: give at least one")]
    NoServices,
    /// More services than one host request may name.
    #[error("{services} services: one host may serve at most {max} services; run another host process for the rest")]
    TooManyServices {
        /// How many were given.
        services: usize,
        /// The limit, [`MAX_HOSTED_SERVICES`](super::MAX_HOSTED_SERVICES).
        max: usize,
    },
    /// The same service was given twice.
    #[error("service {0:?} is given twice; give each service once")]
    DuplicateService(String),
    /// A service name a router would refuse (empty, or starting with `@`,
    /// which is kept for the protocol's own streams).
    #[error("{0:?} is not a service name: names are not empty and do not start with '@'")]
    BadServiceName(String),
    /// The number of idle offer streams per router is out of range.
    #[error("offers must be between 1 and {max} per router (a router refuses more), not {offers}")]
    Offers {
        /// What was asked for.
        offers: usize,
        /// The router's limit, [`darkport_proto::msg::MAX_IDLE_OFFERS`].
        max: usize,
    },
    /// The instance name is empty or too long.
    #[error("instance name {0:?} must be 1 to 128 bytes")]
    BadInstance(String),
    /// The services do not fit one host request
    /// ([`MAX_HOST_FRAME`](darkport_proto::msg::MAX_HOST_FRAME)): too many,
    /// or names too long.
    #[error("the services do not fit one host request ({len} bytes, at most {max}); host fewer services per process")]
    Request {
        /// The request's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `set_cost` or `set_precedence` named a service this host does not
    /// serve.
    #[error("this host does not serve {0:?}")]
    NotHosted(String),
    /// Every router that answered refused to register the service: the
    /// policy (no bind policy for this identity), an unknown service, or a
    /// router that may not serve it. Each entry is (router, status,
    /// the router's message).
    #[error("no router registered {service:?}: {}", describe(.refusals))]
    Refused {
        /// The service.
        service: String,
        /// Each router's refusal.
        refusals: Vec<(String, DialStatus, String)>,
    },
    /// No router registered the service within this time, and not every
    /// router refused: routers are unreachable or not ready. The listener
    /// was stopped; try again later.
    #[error("no router registered {service:?} within {} s; is a router reachable and is this identity allowed to host it? ({last})", .within.as_secs())]
    NotRegistered {
        /// The service.
        service: String,
        /// How long it waited.
        within: Duration,
        /// What the routers said or how connecting failed, one per router.
        last: String,
    },
    /// The host was closed: no more streams will arrive.
    #[error("the host was closed")]
    Closed,
    /// Answering a stream failed: the router or the caller gave up on it
    /// (the router waits [`ANSWER_TIMEOUT`](super::ANSWER_TIMEOUT) for the
    /// answer), or the connection to the router ended.
    #[error("cannot answer the stream from {caller} for {service:?}: {cause}")]
    Answer {
        /// The service.
        service: String,
        /// The caller's identity.
        caller: String,
        /// What happened.
        cause: AnswerFailure,
    },
    /// Getting the router list, the identity or TLS failed.
    #[error(transparent)]
    Dial(#[from] DialError),
}

/// Why a stream could not be answered, in [`HostError::Answer`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerFailure {
    /// Writing the answer failed.
    #[error("{0}")]
    Write(ProtoError),
    /// The stream was reset or its connection lost.
    #[error("{0}")]
    Ended(RemoteEnd),
    /// The answer could not be written within this time.
    #[error("no room to write the answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

fn describe(refusals: &[(String, DialStatus, String)]) -> String {
    refusals
        .iter()
        .map(|(router, status, message)| format!("router {router}: {status:?}: {message}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<HostError> for std::io::Error {
    fn from(e: HostError) -> Self {
        use std::io::ErrorKind as K;
        let kind = match &e {
            HostError::NoServices
            | HostError::TooManyServices { .. }
            | HostError::DuplicateService(_)
            | HostError::BadServiceName(_)
            | HostError::Offers { .. }
            | HostError::BadInstance(_)
            | HostError::Request { .. }
            | HostError::NotHosted(_) => K::InvalidInput,
            HostError::Refused { .. } => K::PermissionDenied,
            HostError::NotRegistered { .. } => K::TimedOut,
            HostError::Closed => K::NotConnected,
            HostError::Answer { .. } => K::ConnectionReset,
            HostError::Dial(_) => K::Other,
        };
        std::io::Error::new(kind, e)
    }
}
