//! `identity create|list|show|update|revoke|delete`.

use anyhow::{bail, Result};

use darkport_proto::identity::Kind;
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_proto::token::fmt_time;

use super::{call, delete, list, name, names, print};
use crate::cli::{IdentityCmd, KindArg};

pub async fn exec(cmd: IdentityCmd) -> Result<()> {
    match cmd {
        IdentityCmd::Create {
            name: n,
            kind,
            router,
            roles,
            token_out,
            token_ttl,
            admin,
        } => {
            let kind = match (kind, router) {
                (KindArg::Router, _) | (_, true) => Kind::Router,
                (KindArg::Client, false) => Kind::Client,
            };
            let req = AdminRequest::CreateIdentity {
                name: name(&n)?,
                kind,
                roles: names(&roles)?,
                token_ttl_secs: token_ttl.as_secs(),
            };
            let AdminResponse::Token { token, expires_at } = call(&admin, req).await? else {
                bail!("unexpected answer from the controller");
            };
            match token_out {
                Some(path) => {
                    darkport_transport::identity::write_private_file(
                        &path,
                        format!("{token}\n").as_bytes(),
                        false,
                    )?;
                    eprintln!("created {kind} identity {n}; enrollment token written to {} (valid until {})", path.display(), fmt_time(expires_at));
                }
                None => {
                    eprintln!(
                        "created {kind} identity {n}; enrollment token (valid until {}):",
                        fmt_time(expires_at)
                    );
                    println!("{token}");
                }
            }
        }
        IdentityCmd::List(args) => list(args, AdminRequest::ListIdentities).await?,
        IdentityCmd::Show { name: n, read } => print(
            &call(&read.admin, AdminRequest::ShowIdentity { name: name(&n)? }).await?,
            read.json,
        )?,
        IdentityCmd::Update {
            name: n,
            add,
            remove,
            admin,
        } => {
            let req = AdminRequest::UpdateIdentity {
                name: name(&n)?,
                add_roles: names(&add)?,
                remove_roles: names(&remove)?,
            };
            call(&admin, req).await?;
            eprintln!("updated identity {n}");
        }
        IdentityCmd::Revoke(args) => {
            let req = AdminRequest::RevokeIdentity {
                name: name(&args.name)?,
            };
            call(&args.admin, req).await?;
            eprintln!(
                "revoked identity {}; routers refuse it and close its connections",
                args.name
            );
        }
        IdentityCmd::Delete(args) => {
            delete(args, "identity", |name| AdminRequest::DeleteIdentity {
                name,
            })
            .await?
        }
    }
    Ok(())
}
