//! `darkport-controller`: parse arguments, then call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use darkport_controller::admin::Admin;
use darkport_controller::{DataDir, InitOptions};
use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_proto::policy::{Selector, ServiceEntry};
use darkport_proto::token::fmt_time;

const ENV_DATA_DIR: &str = "DARKPORT_DATA_DIR";

#[derive(Parser)]
#[command(
    name = "darkport-controller",
    version,
    about = "Darkport controller: CA, enrollment, services, policies"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Dir {
    /// Controller data directory.
    #[arg(long, env = ENV_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Args)]
struct AdminArgs {
    #[command(flatten)]
    dir: Dir,
    /// Controller address, if not the advertised one.
    #[arg(long)]
    controller: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a data dir: CA, controller and admin identities.
    Init {
        #[command(flatten)]
        dir: Dir,
        /// HOST:PORT that routers and clients use to reach the controller.
        #[arg(long)]
        advertise: String,
        /// Lifetime of identity certificates (e.g. 90d, 12h).
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        cert_ttl: Duration,
    },
    /// Serve enrollment, admin and router sync.
    Run {
        #[command(flatten)]
        dir: Dir,
        /// UDP address to listen on (default: the advertised address).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Manage identities.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Manage service policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Show routers.
    #[command(subcommand)]
    Router(RouterCmd),
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Create an identity and its one-time enrollment token.
    Create {
        name: String,
        /// A router identity (default: a client).
        #[arg(long)]
        router: bool,
        /// Role (repeatable), selected in policies as #ROLE.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Write the token to this file (0600) instead of printing it.
        #[arg(long)]
        token_out: Option<PathBuf>,
        /// Token lifetime (e.g. 24h, 30m).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List identities.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete an identity; routers refuse it from then on.
    Delete {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Create a service reachable at a private address.
    Create {
        name: String,
        /// Private HOST:PORT the router connects to.
        #[arg(long)]
        address: String,
        /// Role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List services.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a service.
    Delete {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Allow identities to dial services.
    Create {
        name: String,
        /// Services: #ROLE, @NAME, NAME or #all (repeatable).
        #[arg(long = "service", required = true)]
        services: Vec<String>,
        /// Identities: #ROLE, @NAME, NAME or #all (repeatable).
        #[arg(long = "identity", required = true)]
        identities: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List policies.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a policy.
    Delete {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum RouterCmd {
    /// List routers.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn name(s: &str) -> Result<IdentityName> {
    Ok(IdentityName::new(s)?)
}

fn names(v: &[String]) -> Result<Vec<IdentityName>> {
    v.iter().map(|s| name(s.trim_start_matches('#'))).collect()
}

fn selectors(v: &[String]) -> Result<Vec<Selector>> {
    v.iter()
        .map(|s| Selector::parse(s).map_err(Into::into))
        .collect()
}

async fn call(admin: &AdminArgs, req: AdminRequest) -> Result<AdminResponse> {
    let a = Admin::from_data_dir(&DataDir::new(&admin.dir.data_dir), admin.controller.clone())?;
    Ok(a.call(req).await?)
}

fn join<T: std::fmt::Display>(v: &[T], prefix: &str) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(|x| format!("{prefix}{x}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn print(resp: AdminResponse, json: bool) -> Result<()> {
    if json {
        let v = match resp {
            AdminResponse::Identities(v) => serde_json::to_string_pretty(&v)?,
            AdminResponse::Services(v) => serde_json::to_string_pretty(&v)?,
            AdminResponse::Policies(v) => serde_json::to_string_pretty(&v)?,
            AdminResponse::Routers(v) => serde_json::to_string_pretty(&v)?,
            _ => "null".into(),
        };
        println!("{v}");
        return Ok(());
    }
    match resp {
        AdminResponse::Identities(v) => {
            println!(
                "{:<24} {:<7} {:<24} {:<18} CERT EXPIRES",
                "NAME", "KIND", "ROLES", "FINGERPRINT"
            );
            for i in v {
                let fp = i
                    .fingerprint
                    .as_deref()
                    .map(|f| &f[..16.min(f.len())])
                    .unwrap_or("(not enrolled)");
                let exp = i
                    .cert_expires_at
                    .map(fmt_time)
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<24} {:<7} {:<24} {:<18} {exp}",
                    i.name,
                    i.kind,
                    join(&i.roles, "#"),
                    fp
                );
            }
        }
        AdminResponse::Services(v) => {
            println!("{:<24} {:<32} ROLES", "NAME", "ADDRESS");
            for s in v {
                println!("{:<24} {:<32} {}", s.name, s.address, join(&s.roles, "#"));
            }
        }
        AdminResponse::Policies(v) => {
            println!("{:<24} {:<32} IDENTITIES", "NAME", "SERVICES");
            for p in v {
                println!(
                    "{:<24} {:<32} {}",
                    p.name,
                    join(&p.services, ""),
                    join(&p.identities, "")
                );
            }
        }
        AdminResponse::Routers(v) => {
            println!("{:<24} {:<32} STATE", "NAME", "ADVERTISE");
            for r in v {
                println!(
                    "{:<24} {:<32} {}",
                    r.name,
                    r.advertise,
                    if r.online { "online" } else { "offline" }
                );
            }
        }
        AdminResponse::Token { .. } | AdminResponse::Done => {}
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match real_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Init {
            dir,
            advertise,
            cert_ttl,
        } => {
            let dd = DataDir::new(&dir.data_dir);
            darkport_controller::init(
                &dd,
                &InitOptions {
                    advertise: advertise.clone(),
                    cert_ttl,
                },
            )?;
            println!(
                "initialized {} (advertise {advertise})",
                dir.data_dir.display()
            );
            println!(
                "start it with: darkport-controller run --data-dir {}",
                dir.data_dir.display()
            );
        }
        Cmd::Run { dir, listen } => {
            let dd = DataDir::new(&dir.data_dir);
            let config = dd.load_config()?;
            let listen = match listen {
                Some(l) => l,
                None => darkport_transport::endpoint::resolve(&config.advertise)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot resolve the advertise address {}; pass --listen",
                            config.advertise
                        )
                    })?,
            };
            let socket = darkport_controller::server::bind(listen)
                .with_context(|| format!("cannot listen on {listen}"))?;
            darkport_controller::run(dd, socket, shutdown_signal()).await?;
        }
        Cmd::Identity(IdentityCmd::Create {
            name: n,
            router,
            roles,
            token_out,
            token_ttl,
            admin,
        }) => {
            let kind = if router { Kind::Router } else { Kind::Client };
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
        Cmd::Identity(IdentityCmd::List { json, admin }) => {
            print(call(&admin, AdminRequest::ListIdentities).await?, json)?
        }
        Cmd::Identity(IdentityCmd::Delete { name: n, admin }) => {
            call(&admin, AdminRequest::DeleteIdentity { name: name(&n)? }).await?;
            eprintln!("deleted identity {n}");
        }
        Cmd::Service(ServiceCmd::Create {
            name: n,
            address,
            roles,
            admin,
        }) => {
            let svc = ServiceEntry {
                name: name(&n)?,
                address,
                roles: names(&roles)?,
            };
            call(&admin, AdminRequest::CreateService(svc)).await?;
            eprintln!("created service {n}");
        }
        Cmd::Service(ServiceCmd::List { json, admin }) => {
            print(call(&admin, AdminRequest::ListServices).await?, json)?
        }
        Cmd::Service(ServiceCmd::Delete { name: n, admin }) => {
            call(&admin, AdminRequest::DeleteService { name: name(&n)? }).await?;
            eprintln!("deleted service {n}");
        }
        Cmd::Policy(PolicyCmd::Create {
            name: n,
            services,
            identities,
            admin,
        }) => {
            let req = AdminRequest::CreatePolicy {
                name: name(&n)?,
                services: selectors(&services)?,
                identities: selectors(&identities)?,
            };
            call(&admin, req).await?;
            eprintln!("created policy {n}");
        }
        Cmd::Policy(PolicyCmd::List { json, admin }) => {
            print(call(&admin, AdminRequest::ListPolicies).await?, json)?
        }
        Cmd::Policy(PolicyCmd::Delete { name: n, admin }) => {
            call(&admin, AdminRequest::DeletePolicy { name: name(&n)? }).await?;
            eprintln!("deleted policy {n}");
        }
        Cmd::Router(RouterCmd::List { json, admin }) => {
            print(call(&admin, AdminRequest::ListRouters).await?, json)?
        }
    }
    Ok(())
}
