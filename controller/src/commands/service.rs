//! `service create|update|list|show|delete`, and how the protocol flags
//! ([`ProtocolArgs`]) become a service's protocol.

use std::path::Path;

use anyhow::{bail, Context, Result};

use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_proto::policy::{
    AppHandshake, EventTimeForm, FluentSettings, FluentUser, ServiceEntry, ServiceProtocol,
};

use super::{call, delete, list, name, names};
use crate::cli::{AppHandshakeArg, EventTimeArg, ProtocolArg, ProtocolArgs, ServiceCmd};

pub async fn exec(cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Create {
            name: n,
            reach,
            roles,
            strategy,
            protocol,
            admin,
        } => {
            let svc = ServiceEntry {
                name: name(&n)?,
                address: address(reach.address, reach.hosted)?.unwrap_or_default(),
                roles: names(&roles)?,
                protocol: protocol.protocol()?.unwrap_or_default(),
                strategy: strategy.strategy(),
            };
            call(&admin, AdminRequest::CreateService(svc)).await?;
            eprintln!("created service {n}");
        }
        ServiceCmd::Update {
            name: n,
            address: new_address,
            hosted,
            strategy,
            protocol,
            admin,
        } => {
            let current = match call(&admin, AdminRequest::ListServices).await? {
                AdminResponse::Services(list) => list
                    .into_iter()
                    .find(|s| s.name.as_str() == n)
                    .map(|s| s.protocol),
                _ => None,
            };
            let protocol = protocol.update_of(current.as_ref())?;
            let address = address(new_address, hosted)?;
            if address.is_none() && protocol.is_none() && strategy.is_none() {
                bail!("nothing to change: give --address, --hosted, --strategy, --protocol or a fluent-forward flag (--stamp-*, --shared-key-file, --event-time, …)");
            }
            let req = AdminRequest::UpdateService {
                name: name(&n)?,
                address,
                protocol,
                strategy: strategy.map(|s| s.strategy()),
            };
            call(&admin, req).await?;
            eprintln!("updated service {n}");
        }
        ServiceCmd::List(args) => list(args, AdminRequest::ListServices).await?,
        ServiceCmd::Show { name: n, read } => {
            list(read, AdminRequest::ShowService { name: name(&n)? }).await?
        }
        ServiceCmd::Delete(args) => {
            delete(args, "service", |name| AdminRequest::DeleteService { name }).await?
        }
    }
    Ok(())
}

/// The address `--address` and `--hosted` give, as the wire says it (an
/// empty address is a hosted service); `None` if neither is given.
fn address(address: Option<String>, hosted: bool) -> Result<Option<String>> {
    match (address, hosted) {
        (Some(a), _) if a.is_empty() => {
            bail!("--address is HOST:PORT; for a service with no address (reached only through hosters' terminators) give --hosted")
        }
        (Some(a), _) => Ok(Some(a)),
        (None, true) => Ok(Some(String::new())),
        (None, false) => Ok(None),
    }
}

/// Reads a secret (shared key, password) from a 0600 file: one line of
/// UTF-8 text, its line end dropped.
fn read_secret_file(path: &Path) -> Result<String> {
    let bytes = darkport_transport::identity::read_private_file(path, 4096)?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

impl ProtocolArgs {
    /// The protocol asked for; `None` if no flag says.
    pub fn protocol(&self) -> Result<Option<ServiceProtocol>> {
        let fluent_flags = self.stamp_identity_key.is_some()
            || self.stamp_roles_key.is_some()
            || self.stamp_router_key.is_some()
            || self.shared_key_file.is_some()
            || self.service_username.is_some()
            || self.event_time.is_some()
            || self.metadata_key.is_some()
            || self.app_handshake.is_some()
            || self.app_shared_key_file.is_some();
        match (self.protocol, fluent_flags) {
            (None, false) => Ok(None),
            (Some(ProtocolArg::Tcp), false) => Ok(Some(ServiceProtocol::Tcp)),
            (Some(ProtocolArg::Tcp), true) => {
                bail!("--stamp-*-key, --shared-key-file, --service-*, --event-time, --metadata-key and --app-* apply to --protocol fluent-forward only")
            }
            (Some(ProtocolArg::FluentForward), _) | (None, true) => {
                Ok(Some(ServiceProtocol::FluentForward(self.fluent()?)))
            }
        }
    }

    /// The fluent-forward settings the flags give.
    fn fluent(&self) -> Result<FluentSettings> {
        self.fluent_over(FluentSettings::default())
    }

    /// `base` with the settings these flags give; what no flag names stays.
    fn fluent_over(&self, mut f: FluentSettings) -> Result<FluentSettings> {
        if let Some(k) = &self.stamp_identity_key {
            f.identity_key = k.clone();
        }
        if let Some(k) = &self.stamp_roles_key {
            f.roles_key = Some(k.clone());
        }
        if let Some(k) = &self.stamp_router_key {
            f.router_key = Some(k.clone());
        }
        if let Some(path) = &self.shared_key_file {
            f.shared_key = Some(read_secret_file(path)?);
        }
        if let (Some(username), Some(path)) = (&self.service_username, &self.service_password_file)
        {
            f.service_user = Some(FluentUser {
                username: username.clone(),
                password: read_secret_file(path)?,
            });
        }
        match self.event_time {
            Some(EventTimeArg::Keep) => f.event_time = EventTimeForm::Keep,
            Some(EventTimeArg::Unwrap) => f.event_time = EventTimeForm::Unwrap,
            None => {}
        }
        if let Some(k) = &self.metadata_key {
            f.metadata_key = Some(k.clone());
        }
        match (&self.app_shared_key_file, self.app_handshake) {
            (Some(path), _) => f.app_handshake = AppHandshake::SharedKey(read_secret_file(path)?),
            (None, Some(AppHandshakeArg::AnyKey)) => f.app_handshake = AppHandshake::AnyKey,
            (None, Some(AppHandshakeArg::Off)) => f.app_handshake = AppHandshake::Off,
            (None, None) => {}
        }
        Ok(f)
    }

    /// For `service update`: fluent-forward flags without `--protocol`
    /// change those settings of a fluent-forward service and keep the
    /// rest (its secrets as listed, `(set)`, which the controller keeps);
    /// `--protocol` starts from the defaults.
    pub fn update_of(&self, current: Option<&ServiceProtocol>) -> Result<Option<ServiceProtocol>> {
        match (self.protocol, current) {
            (None, Some(ServiceProtocol::FluentForward(cur))) if self.protocol()?.is_some() => {
                Ok(Some(ServiceProtocol::FluentForward(
                    self.fluent_over(cur.clone())?,
                )))
            }
            _ => self.protocol(),
        }
    }
}
