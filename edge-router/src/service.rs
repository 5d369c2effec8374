//! The private service's side of a dial: a TCP connection the router
//! made to the service's address, or a stream through one of its
//! terminators (a hoster's offer stream, [`crate::hosting`]).

use darkport_proto::codes::StreamCode;
use tokio::net::TcpStream;

use crate::hosting::HostedConn;

/// Where a dial's bytes go.
pub enum ServiceConn {
    /// The router connected to the service's address.
    Tcp(TcpStream),
    /// Through a hoster's terminator.
    Hosted(HostedConn),
}

impl ServiceConn {
    /// Abandons it: a reset, never a clean end after part of the bytes.
    pub fn reset(self) {
        match self {
            ServiceConn::Tcp(tcp) => darkport_transport::splice::reset_tcp(tcp),
            ServiceConn::Hosted(mut h) => {
                h.send.reset(StreamCode::Refused);
                h.recv.stop(StreamCode::Refused);
            }
        }
    }

    /// `hoster/instance` of a hosted one, for the access line.
    pub fn terminator(&self) -> Option<String> {
        match self {
            ServiceConn::Tcp(_) => None,
            ServiceConn::Hosted(h) => Some(h.terminator.label()),
        }
    }
}
