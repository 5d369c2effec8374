//! `policy create|list|explain|delete`.

use std::process::ExitCode;

use anyhow::Result;

use darkport_proto::msg::{AdminRequest, AdminResponse};

use super::{call, delete, list, name, print, selectors};
use crate::cli::PolicyCmd;

/// Exit status 1 for an `explain` that answers DENIED, so scripts can test
/// the answer.
pub async fn exec(cmd: PolicyCmd) -> Result<ExitCode> {
    match cmd {
        PolicyCmd::Create {
            name: n,
            kind,
            services,
            identities,
            tags,
            admin,
        } => {
            let tags = match tags {
                Some(t) => darkport_proto::tags::split_list(&t)?,
                None => vec![],
            };
            let req = AdminRequest::CreatePolicy {
                name: name(&n)?,
                services: selectors(&services)?,
                identities: selectors(&identities)?,
                tags,
                kind: kind.kind(),
            };
            call(&admin, req).await?;
            eprintln!("created {} policy {n}", kind.kind().name());
        }
        PolicyCmd::List(args) => list(args, AdminRequest::ListPolicies).await?,
        PolicyCmd::Explain {
            client,
            service,
            tag,
            read,
        } => {
            let req = AdminRequest::Explain {
                identity: name(&client)?,
                service,
                tag,
            };
            let resp = call(&read.admin, req).await?;
            let denied = matches!(&resp, AdminResponse::Explanation(e) if !e.allowed);
            print(&resp, read.json)?;
            if denied {
                return Ok(ExitCode::FAILURE);
            }
        }
        PolicyCmd::Delete(args) => {
            delete(args, "policy", |name| AdminRequest::DeletePolicy { name }).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}
