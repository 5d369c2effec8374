//! Limits and checks that the control API's server, its admin handlers
//! and the store's checks on load all apply. They live here, below all
//! three, so that neither the handlers nor the store reach back into the
//! server that calls them.

use std::time::Duration;

/// Longest enrollment token lifetime an admin may ask for.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A controller not heard from for this long is left out of the lists
/// routers and clients get.
pub const CONTROLLER_LIVE: Duration = Duration::from_secs(30);

/// Longest router advertise address (`host:port`).
pub const MAX_ADVERTISE_LEN: usize = 255;

/// A router's advertise address must be `host:port`, at most
/// [`MAX_ADVERTISE_LEN`] bytes of printable ASCII: it is stored, listed to
/// every client and printed on admin terminals.
pub fn check_advertise(advertise: &str) -> Result<(), String> {
    if advertise.len() > MAX_ADVERTISE_LEN {
        return Err(format!(
            "advertise address is {} bytes long (at most {MAX_ADVERTISE_LEN}); pass --advertise HOST:PORT",
            advertise.len()
        ));
    }
    if !advertise.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "advertise address {advertise:?} has spaces, control or non-ASCII characters; pass --advertise HOST:PORT"
        ));
    }
    if darkport_transport::endpoint::parse_host_port(advertise).is_none() {
        return Err(format!("advertise address {advertise:?} is not HOST:PORT"));
    }
    Ok(())
}
