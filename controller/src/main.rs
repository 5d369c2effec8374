//! `darkport-controller`: parse arguments, then call the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use darkport_controller::admin::Admin;
use darkport_controller::{DataDir, InitOptions};
use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_proto::policy::{
    AppHandshake, EventTimeForm, FluentSettings, FluentUser, RouterPolicyEntry, Selector,
    ServiceEntry, ServiceProtocol,
};
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
    #[command(flatten)]
    log: darkport_cli::LogArgs,
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
    #[arg(long, env = "DARKPORT_CONTROLLER")]
    controller: Option<String>,
}

/// The settings of `run`; each is also a key of the config file.
#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: darkport_cli::RunCommon,
    #[command(flatten)]
    dir: Dir,
    /// UDP address to listen on (default: the advertised address).
    #[arg(long, env = "DARKPORT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Keep the state in this PostgreSQL database
    /// (postgres://USER:PASSWORD@HOST/DB) instead of where the data dir's
    /// config.json says (set there by init --store, join or migrate).
    #[arg(long, env = "DARKPORT_STORE")]
    store: Option<String>,
}

/// `--json` of read commands.
#[derive(Args)]
struct Json {
    /// Print JSON instead of a table, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Directory to write man1/ and completions/ into.
        dir: PathBuf,
    },
    /// Create a data dir: CA, controller and admin identities.
    Init {
        #[command(flatten)]
        dir: Dir,
        /// HOST:PORT that routers and clients use to reach the controller.
        #[arg(long)]
        advertise: String,
        /// Lifetime of identity certificates (e.g. 7d, 12h); routers and
        /// clients renew theirs automatically at two thirds of it.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        cert_ttl: Duration,
        /// Keep the state in this empty PostgreSQL database
        /// (postgres://USER:PASSWORD@HOST/DB), so that more controllers can
        /// join; default: state.db (SQLite) in the data dir.
        #[arg(long)]
        store: Option<String>,
    },
    /// Add a controller to a deployment whose state is in PostgreSQL: a new
    /// data dir with this controller's own certificates, sharing the CA.
    Join {
        #[command(flatten)]
        dir: Dir,
        /// HOST:PORT that routers and clients use to reach this controller.
        #[arg(long)]
        advertise: String,
        /// This controller's name, unique among the controllers.
        #[arg(long)]
        name: String,
        /// The deployment's PostgreSQL database (postgres://USER:PASSWORD@HOST/DB).
        #[arg(long)]
        store: String,
        /// Directory holding ca.pem, ca.key and token.key copied (mode 0600)
        /// from an existing controller's data dir.
        #[arg(long)]
        from: PathBuf,
    },
    /// Move this controller's state from state.db (SQLite) into an empty
    /// PostgreSQL database; run it with the controller stopped.
    Migrate {
        #[command(flatten)]
        dir: Dir,
        /// The PostgreSQL database (postgres://USER:PASSWORD@HOST/DB).
        #[arg(long)]
        to: String,
    },
    /// Serve enrollment, admin and router sync.
    Run(RunArgs),
    /// Manage identities.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Manage service policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Manage router policies: which routers may serve which services.
    #[command(subcommand, name = "router-policy")]
    RouterPolicy(RouterPolicyCmd),
    /// Show the audit log of admin actions and enrollments.
    Audit {
        /// Show at most this many entries (newest).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        json: Json,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show routers.
    #[command(subcommand)]
    Router(RouterCmd),
}

/// Identity kinds that can be created.
#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    /// Dials services (edge client, SDK).
    Client,
    /// Accepts dials and reaches services (edge router).
    Router,
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Create an identity and its one-time enrollment token.
    Create {
        /// Identity name (1 to 64 of a-z, A-Z, 0-9, '.', '_', '-').
        name: String,
        /// What the identity is: a client (dials services) or a router.
        #[arg(long, value_enum, default_value_t = KindArg::Client)]
        kind: KindArg,
        /// Same as --kind router (kept for older scripts).
        #[arg(long, hide = true, conflicts_with = "kind")]
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
        #[command(flatten)]
        json: Json,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one identity.
    Show {
        /// Identity name.
        name: String,
        #[command(flatten)]
        json: Json,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add or remove roles.
    Update {
        /// Identity name.
        name: String,
        /// Role to add (repeatable).
        #[arg(long = "add-role")]
        add: Vec<String>,
        /// Role to remove (repeatable).
        #[arg(long = "remove-role")]
        remove: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke an identity: routers refuse it and close its connections
    /// within a second; the record stays for the audit trail.
    Revoke {
        /// Identity name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete an identity; routers refuse it and close its connections.
    Delete {
        /// Identity name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Create a service reachable at a private address.
    Create {
        /// Service name (what clients dial).
        name: String,
        /// Private HOST:PORT the router connects to.
        #[arg(long)]
        address: String,
        /// Role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[command(flatten)]
        protocol: ProtocolArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change a service's address or protocol.
    Update {
        /// Service name.
        name: String,
        /// New private HOST:PORT.
        #[arg(long)]
        address: Option<String>,
        #[command(flatten)]
        protocol: ProtocolArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List services.
    List {
        #[command(flatten)]
        json: Json,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a service.
    Delete {
        /// Service name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// What the router speaks with a service.
#[derive(Args)]
struct ProtocolArgs {
    /// tcp: bytes untouched (default). fluent-forward: the router speaks
    /// Fluentd's forward protocol, stamps the verified sender into every
    /// record and enforces the policies' --tags.
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// fluent-forward: the record key naming the sending identity
    /// (default darkport_identity).
    #[arg(long, value_name = "KEY")]
    stamp_identity_key: Option<String>,
    /// fluent-forward: also stamp the identity's roles under KEY (e.g.
    /// darkport_roles).
    #[arg(long, value_name = "KEY")]
    stamp_roles_key: Option<String>,
    /// fluent-forward: also stamp the router's name under KEY (e.g.
    /// darkport_router).
    #[arg(long, value_name = "KEY")]
    stamp_router_key: Option<String>,
    /// fluent-forward: a file (0600) holding the service's <security>
    /// shared_key; routers do the handshake, apps never see the key.
    #[arg(long, value_name = "FILE")]
    shared_key_file: Option<PathBuf>,
    /// fluent-forward: a user of the service's <security> <user> sections,
    /// for a Fluentd with user authentication (with --shared-key-file and
    /// --service-password-file).
    #[arg(long, value_name = "NAME", requires = "service_password_file")]
    service_username: Option<String>,
    /// fluent-forward: a file (0600) holding that user's password.
    #[arg(long, value_name = "FILE", requires = "service_username")]
    service_password_file: Option<PathBuf>,
    /// fluent-forward: what to do with Fluent Bit 5's [EventTime, {metadata}]
    /// times, which Fluentd up to 1.19.3 cannot read: unwrap (default)
    /// sends the plain EventTime, keep sends them as they came.
    #[arg(long, value_enum, value_name = "FORM")]
    event_time: Option<EventTimeArg>,
    /// fluent-forward, with --event-time unwrap: carry a non-empty
    /// metadata map in the record under KEY (default: dropped).
    #[arg(long, value_name = "KEY")]
    metadata_key: Option<String>,
    /// fluent-forward: answer the <security> handshake of apps that keep
    /// their own shared_key: off (default), or any-key (let any key in,
    /// logged once; apps that check the server's PONG, like Fluentd's
    /// out_forward, need --app-shared-key-file).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        conflicts_with = "app_shared_key_file"
    )]
    app_handshake: Option<AppHandshakeArg>,
    /// fluent-forward: answer apps' <security> handshake, and let in only
    /// apps whose shared_key is the one in FILE (0600).
    #[arg(long, value_name = "FILE")]
    app_shared_key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EventTimeArg {
    /// Send the plain EventTime on.
    Unwrap,
    /// Send times on as the app sent them.
    Keep,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AppHandshakeArg {
    /// Apps speak without <security> (their identity is their certificate).
    Off,
    /// Answer apps' handshake and let any key in.
    AnyKey,
}

/// Reads a secret (shared key, password) from a 0600 file: one line of
/// UTF-8 text, its line end dropped.
fn read_secret_file(path: &Path) -> Result<String> {
    let bytes = darkport_transport::identity::read_private_file(path, 4096)?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProtocolArg {
    /// Bytes untouched.
    Tcp,
    /// Fluentd's forward protocol, stamped and tag-checked.
    FluentForward,
}

impl ProtocolArgs {
    /// The protocol asked for; `None` if no flag says.
    fn protocol(&self) -> Result<Option<ServiceProtocol>> {
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
    fn update_of(&self, current: Option<&ServiceProtocol>) -> Result<Option<ServiceProtocol>> {
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

#[derive(Subcommand)]
enum PolicyCmd {
    /// Allow identities to dial services.
    Create {
        /// Policy name.
        name: String,
        /// Services: #ROLE, @NAME, NAME or #all (repeatable).
        #[arg(long = "service-roles", alias = "service", required = true)]
        services: Vec<String>,
        /// Client identities: #ROLE, @NAME, NAME or #all (repeatable).
        #[arg(long = "identity-roles", alias = "identity", required = true)]
        identities: Vec<String>,
        /// For fluent-forward services: the tags these identities may
        /// write, comma-separated Fluentd patterns (*, **, {a,b}) with
        /// ${identity} for the sender's name, e.g. 'app.${identity}.**'.
        /// Default: any tag.
        #[arg(long, value_name = "PATTERNS")]
        tags: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List policies.
    List {
        #[command(flatten)]
        json: Json,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Say whether an identity may dial a service, and which policies decide it.
    Explain {
        /// Client identity name.
        #[arg(long, alias = "identity")]
        client: String,
        /// Service name.
        #[arg(long)]
        service: String,
        /// Also check whether the client may write this tag (fluent-forward).
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        json: Json,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a policy.
    Delete {
        /// Policy name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum RouterPolicyCmd {
    /// Allow routers to serve services.
    Create {
        /// Router policy name.
        name: String,
        /// Routers: #ROLE, @NAME, NAME or #all (repeatable).
        #[arg(long = "router-roles", alias = "router", required = true)]
        routers: Vec<String>,
        /// Services: #ROLE, @NAME, NAME or #all (repeatable).
        #[arg(long = "service-roles", alias = "service", required = true)]
        services: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List router policies.
    List {
        #[command(flatten)]
        json: Json,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a router policy.
    Delete {
        /// Router policy name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum RouterCmd {
    /// List routers.
    List {
        #[command(flatten)]
        json: Json,
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

/// Shows an admin answer on stdout, as a table or as JSON.
fn print(resp: &AdminResponse, json: Json) -> Result<()> {
    let mut out = std::io::stdout().lock();
    darkport_controller::print::response(&mut out, resp, json.json)?;
    out.flush()?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match real_main().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", darkport_cli::error_report(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> Result<ExitCode> {
    let cli: Cli = darkport_cli::config::parse()?;
    let log = darkport_cli::init_logging(&cli.log)?;
    match cli.cmd {
        Cmd::GenerateAssets { dir } => {
            use clap::CommandFactory;
            darkport_cli::generate_assets(Cli::command(), &dir)
                .with_context(|| format!("cannot write to {}", dir.display()))?;
        }
        Cmd::Join {
            dir,
            advertise,
            name: n,
            store,
            from,
        } => {
            let dd = DataDir::new(&dir.data_dir);
            darkport_controller::datadir::join(
                &dd,
                &darkport_controller::datadir::JoinOptions {
                    advertise: advertise.clone(),
                    name: name(&n)?,
                    store,
                    from,
                },
            )?;
            println!(
                "joined as controller {n} (advertise {advertise}); the CA key and token key are in {}",
                dir.data_dir.display()
            );
            println!(
                "delete the copies in the --from directory, then start it with: darkport-controller run --data-dir {}",
                dir.data_dir.display()
            );
        }
        Cmd::Migrate { dir, to } => {
            let dd = DataDir::new(&dir.data_dir);
            let m = darkport_controller::datadir::migrate(&dd, &to)?;
            println!(
                "moved {} identities, {} services, {} policies, {} tokens and {} audit entries to {}",
                m.identities,
                m.services,
                m.policies,
                m.tokens,
                m.audit,
                darkport_controller::postgres::redact(&to)
            );
            println!(
                "{} now names that database; the old file is kept as state.db.migrated; start the controller again",
                dd.config().display()
            );
        }
        Cmd::Init {
            dir,
            advertise,
            cert_ttl,
            store,
        } => {
            let dd = DataDir::new(&dir.data_dir);
            darkport_controller::init(
                &dd,
                &InitOptions {
                    advertise: advertise.clone(),
                    cert_ttl,
                    store,
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
        Cmd::Run(RunArgs {
            dir,
            listen,
            common,
            store,
            ..
        }) => {
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
            // Readiness for systemd once the socket is bound and the CA,
            // its key and the config load (run loads them again).
            dd.load_config()?;
            dd.load_ca()?;
            let metrics = darkport_controller::metrics::Metrics::default();
            let mut registry = prometheus_client::registry::Registry::with_prefix("darkport");
            metrics.register(&mut registry);
            let ready = metrics.clone();
            let health = darkport_cli::health::Health {
                registry,
                ready: Box::new(move || ready.ready()),
                refresh: vec![],
            };
            darkport_cli::health::start(&common.metrics, health, std::future::pending()).await?;
            let reload = darkport_cli::reload_on_hangup::<Cli>(log, |c| &c.log, |_| {});
            let signal = darkport_transport::endpoint::shutdown_signal(reload);
            darkport_cli::notify_ready();
            let stopping = async move {
                signal.await;
                darkport_cli::notify_stopping();
            };
            darkport_controller::server::run_with_store(dd, socket, stopping, metrics, store)
                .await?;
        }
        Cmd::Identity(IdentityCmd::Create {
            name: n,
            kind,
            router,
            roles,
            token_out,
            token_ttl,
            admin,
        }) => {
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
        Cmd::Identity(IdentityCmd::List { json, admin }) => {
            print(&call(&admin, AdminRequest::ListIdentities).await?, json)?
        }
        Cmd::Identity(IdentityCmd::Delete { name: n, admin }) => {
            call(&admin, AdminRequest::DeleteIdentity { name: name(&n)? }).await?;
            eprintln!("deleted identity {n}");
        }
        Cmd::Service(ServiceCmd::Create {
            name: n,
            address,
            roles,
            protocol,
            admin,
        }) => {
            let svc = ServiceEntry {
                name: name(&n)?,
                address,
                roles: names(&roles)?,
                protocol: protocol.protocol()?.unwrap_or_default(),
            };
            call(&admin, AdminRequest::CreateService(svc)).await?;
            eprintln!("created service {n}");
        }
        Cmd::Service(ServiceCmd::Update {
            name: n,
            address,
            protocol,
            admin,
        }) => {
            let current = match call(&admin, AdminRequest::ListServices).await? {
                AdminResponse::Services(list) => list
                    .into_iter()
                    .find(|s| s.name.as_str() == n)
                    .map(|s| s.protocol),
                _ => None,
            };
            let protocol = protocol.update_of(current.as_ref())?;
            if address.is_none() && protocol.is_none() {
                bail!("nothing to change: give --address, --protocol or a fluent-forward flag (--stamp-*, --shared-key-file, --event-time, …)");
            }
            let req = AdminRequest::UpdateService {
                name: name(&n)?,
                address,
                protocol,
            };
            call(&admin, req).await?;
            eprintln!("updated service {n}");
        }
        Cmd::Service(ServiceCmd::List { json, admin }) => {
            print(&call(&admin, AdminRequest::ListServices).await?, json)?
        }
        Cmd::Service(ServiceCmd::Delete { name: n, admin }) => {
            call(&admin, AdminRequest::DeleteService { name: name(&n)? }).await?;
            eprintln!("deleted service {n}");
        }
        Cmd::Policy(PolicyCmd::Create {
            name: n,
            services,
            identities,
            tags,
            admin,
        }) => {
            let tags = match tags {
                Some(t) => darkport_proto::tags::split_list(&t)?,
                None => vec![],
            };
            let req = AdminRequest::CreatePolicy {
                name: name(&n)?,
                services: selectors(&services)?,
                identities: selectors(&identities)?,
                tags,
            };
            call(&admin, req).await?;
            eprintln!("created policy {n}");
        }
        Cmd::Policy(PolicyCmd::List { json, admin }) => {
            print(&call(&admin, AdminRequest::ListPolicies).await?, json)?
        }
        Cmd::Policy(PolicyCmd::Delete { name: n, admin }) => {
            call(&admin, AdminRequest::DeletePolicy { name: name(&n)? }).await?;
            eprintln!("deleted policy {n}");
        }
        Cmd::Router(RouterCmd::List { json, admin }) => {
            print(&call(&admin, AdminRequest::ListRouters).await?, json)?
        }
        Cmd::Identity(IdentityCmd::Show {
            name: n,
            json,
            admin,
        }) => print(
            &call(&admin, AdminRequest::ShowIdentity { name: name(&n)? }).await?,
            json,
        )?,
        Cmd::Identity(IdentityCmd::Update {
            name: n,
            add,
            remove,
            admin,
        }) => {
            let req = AdminRequest::UpdateIdentity {
                name: name(&n)?,
                add_roles: names(&add)?,
                remove_roles: names(&remove)?,
            };
            call(&admin, req).await?;
            eprintln!("updated identity {n}");
        }
        Cmd::Identity(IdentityCmd::Revoke { name: n, admin }) => {
            call(&admin, AdminRequest::RevokeIdentity { name: name(&n)? }).await?;
            eprintln!("revoked identity {n}; routers refuse it and close its connections");
        }
        Cmd::Policy(PolicyCmd::Explain {
            client,
            service,
            tag,
            json,
            admin,
        }) => {
            let resp = call(
                &admin,
                AdminRequest::Explain {
                    identity: name(&client)?,
                    service,
                    tag,
                },
            )
            .await?;
            let denied = matches!(&resp, AdminResponse::Explanation(e) if !e.allowed);
            print(&resp, json)?;
            if denied {
                // Scripts can test the answer: exit status 1 for DENIED.
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::RouterPolicy(RouterPolicyCmd::Create {
            name: n,
            routers,
            services,
            admin,
        }) => {
            let p = RouterPolicyEntry {
                name: name(&n)?,
                routers: selectors(&routers)?,
                services: selectors(&services)?,
            };
            call(&admin, AdminRequest::CreateRouterPolicy(p)).await?;
            eprintln!("created router policy {n}");
        }
        Cmd::RouterPolicy(RouterPolicyCmd::List { json, admin }) => {
            print(&call(&admin, AdminRequest::ListRouterPolicies).await?, json)?
        }
        Cmd::RouterPolicy(RouterPolicyCmd::Delete { name: n, admin }) => {
            call(&admin, AdminRequest::DeleteRouterPolicy { name: name(&n)? }).await?;
            eprintln!("deleted router policy {n}");
        }
        Cmd::Audit { limit, json, admin } => {
            print(&call(&admin, AdminRequest::Audit { limit }).await?, json)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_argument_has_help() {
        darkport_cli::assert_cli_documented(Cli::command());
    }
}
