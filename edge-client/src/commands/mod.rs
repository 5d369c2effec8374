//! What each command does, one module each, taking that command's parsed
//! arguments ([`crate::cli`]). `generate-assets` and `enroll` are
//! darkport-cli's, shared with the other binaries.

pub mod dial;
pub mod host;
pub mod run;

use std::path::Path;

use edge_client::{Client, ClientOptions, TransportMode};

/// The client every command makes: from the identity file (renewed in
/// place), through the given routers or the controller's list, over the
/// chosen transport.
pub fn client(
    identity: &Path,
    routers: &[String],
    transport: TransportMode,
) -> anyhow::Result<Client> {
    Ok(Client::from_identity_file(
        identity,
        ClientOptions {
            routers: routers.to_vec(),
            transport,
            ..Default::default()
        },
    )?)
}
