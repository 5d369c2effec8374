//! The admin side of the control API, used by the CLI.

use darkport_proto::msg::{AdminRequest, AdminResponse, ControlBody, ControlResponse};
use darkport_transport::control::{one_shot, ControlClientError};
use darkport_transport::identity::Identity;
use darkport_transport::tls::{self};

use crate::datadir::DataDir;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The admin identity could not be loaded.
    #[error("{0}; is --data-dir the controller's data dir?")]
    Identity(#[from] darkport_transport::identity::IdentityError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The request failed.
    #[error(transparent)]
    Control(#[from] ControlClientError),
    /// The controller answered something unexpected.
    #[error("unexpected answer from the controller")]
    Unexpected,
}

/// An admin session: the admin identity and where the controller is.
#[derive(Debug)]
pub struct Admin {
    identity: Identity,
    address: String,
}

impl Admin {
    /// Uses the admin identity in `dir`, talking to `address` or, if `None`,
    /// the controller's advertised address.
    pub fn from_data_dir(dir: &DataDir, address: Option<String>) -> Result<Admin, AdminError> {
        let identity = Identity::load(&dir.admin_identity())?;
        let address = address.unwrap_or_else(|| identity.controller.clone());
        Ok(Admin { identity, address })
    }

    /// Sends one admin request.
    pub async fn call(&self, req: AdminRequest) -> Result<AdminResponse, AdminError> {
        let config = darkport_transport::tls::controller_client_config(&self.identity)?;
        match one_shot(&self.address, config, ControlBody::Admin(req)).await? {
            ControlResponse::Admin(r) => Ok(r),
            _ => Err(AdminError::Unexpected),
        }
    }
}
