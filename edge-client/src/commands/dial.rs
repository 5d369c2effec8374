//! `dial`: connect stdin/stdout to a service, like nc.

use std::time::Duration;

use anyhow::{anyhow, Result};
use darkport_transport::splice::{splice_io, Ending};

use crate::cli::DialArgs;

pub async fn exec(args: DialArgs) -> Result<()> {
    let DialArgs {
        service,
        identity,
        routers,
        transport,
    } = args;
    let client = super::client(&identity, &routers, transport)?;
    let stream = client.dial(&service).await?;
    let (mut send, mut recv) = stream.into_split();
    let stats = splice_io(
        &mut tokio::io::stdin(),
        &mut tokio::io::stdout(),
        &mut send,
        &mut recv,
        std::future::pending(),
    )
    .await;
    // Let the router see everything we sent before the process ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    // Over TCP, the close sends what is still queued once these are gone.
    drop((send, recv));
    client.close().await;
    match stats.ending {
        Ending::Clean => Ok(()),
        Ending::LocalReset => Err(anyhow!("local input/output failed; the stream was reset")),
        Ending::RemoteReset | Ending::Cancelled => Err(anyhow!(
            "{}",
            edge_client::describe_remote_end(
                stats.remote.as_ref(),
                client.identity().name.as_str(),
                &service
            )
        )),
    }
}
