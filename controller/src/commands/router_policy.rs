//! `router-policy create|list|delete`.

use anyhow::Result;

use darkport_proto::msg::AdminRequest;
use darkport_proto::policy::RouterPolicyEntry;

use super::{call, delete, list, name, selectors};
use crate::cli::RouterPolicyCmd;

pub async fn exec(cmd: RouterPolicyCmd) -> Result<()> {
    match cmd {
        RouterPolicyCmd::Create {
            name: n,
            routers,
            services,
            admin,
        } => {
            let p = RouterPolicyEntry {
                name: name(&n)?,
                routers: selectors(&routers)?,
                services: selectors(&services)?,
            };
            call(&admin, AdminRequest::CreateRouterPolicy(p)).await?;
            eprintln!("created router policy {n}");
        }
        RouterPolicyCmd::List(args) => list(args, AdminRequest::ListRouterPolicies).await?,
        RouterPolicyCmd::Delete(args) => {
            let req = |name| AdminRequest::DeleteRouterPolicy { name };
            delete(args, "router policy", req).await?
        }
    }
    Ok(())
}
