//! What each command does: one module per command group, each with one
//! function taking that group's parsed arguments ([`crate::cli`]).
//!
//! The admin commands talk to a running controller through
//! [`darkport_controller::admin`]; `init`, `join` and `migrate` work on a
//! data dir; `run` serves. The helpers here are what the groups share:
//! names and selectors from the command line, one admin call, and the
//! shapes every resource has ([`list`], [`delete`]).

use std::io::Write;

use anyhow::Result;

use darkport_controller::admin::Admin;
use darkport_controller::DataDir;
use darkport_proto::identity::IdentityName;
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_proto::policy::Selector;

use crate::cli::{AdminArgs, NameArgs, ReadArgs};

pub mod identity;
pub mod policy;
pub mod router_policy;
pub mod run;
pub mod service;
pub mod setup;

pub fn name(s: &str) -> Result<IdentityName> {
    Ok(IdentityName::new(s)?)
}

/// Role names, with or without their leading `#`.
pub fn names(v: &[String]) -> Result<Vec<IdentityName>> {
    v.iter().map(|s| name(s.trim_start_matches('#'))).collect()
}

pub fn selectors(v: &[String]) -> Result<Vec<Selector>> {
    v.iter()
        .map(|s| Selector::parse(s).map_err(Into::into))
        .collect()
}

/// Sends one admin request to the controller and returns its answer.
pub async fn call(admin: &AdminArgs, req: AdminRequest) -> Result<AdminResponse> {
    let a = Admin::from_data_dir(&DataDir::new(&admin.dir.data_dir), admin.controller.clone())?;
    Ok(a.call(req).await?)
}

/// Shows an admin answer on stdout, as a table or as JSON.
pub fn print(resp: &AdminResponse, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    darkport_controller::print::response(&mut out, resp, json)?;
    out.flush()?;
    Ok(())
}

/// Any read command (`list`, `audit`): asks, then shows the answer.
pub async fn list(args: ReadArgs, req: AdminRequest) -> Result<()> {
    print(&call(&args.admin, req).await?, args.json)
}

/// `delete` of any resource: `what` says which kind, in the message.
pub async fn delete(
    args: NameArgs,
    what: &str,
    req: fn(IdentityName) -> AdminRequest,
) -> Result<()> {
    call(&args.admin, req(name(&args.name)?)).await?;
    eprintln!("deleted {what} {}", args.name);
    Ok(())
}
