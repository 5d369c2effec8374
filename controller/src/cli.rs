//! The controller's command line: the clap tree, and nothing that acts on
//! it (that is [`crate::commands`]).
//!
//! The resources that can be listed, shown and deleted share their flags'
//! shapes: [`ReadArgs`] (`--json` and which controller to ask) for every
//! read command and [`NameArgs`] for every command on one resource by
//! name; each use names its positional argument's help (`mut_arg`), so
//! help and man pages read "Service name", "Policy name" and so on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const ENV_DATA_DIR: &str = "DARKPORT_DATA_DIR";

#[derive(Parser)]
#[command(
    name = "darkport-controller",
    version,
    about = "Darkport controller: CA, enrollment, services, policies"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    #[command(flatten)]
    pub log: darkport_cli::LogArgs,
}

impl darkport_cli::CommandLine for Cli {
    fn log_args(&self) -> &darkport_cli::LogArgs {
        &self.log
    }
}

#[derive(Args)]
pub struct Dir {
    /// Controller data directory.
    #[arg(long, env = ENV_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub dir: Dir,
    /// Controller address, if not the advertised one.
    #[arg(long, env = "DARKPORT_CONTROLLER")]
    pub controller: Option<String>,
}

/// The settings of `run`; each is also a key of the config file.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: darkport_cli::RunCommon,
    #[command(flatten)]
    pub dir: Dir,
    /// UDP address to listen on (default: the advertised address).
    #[arg(long, env = "DARKPORT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Keep the state in this PostgreSQL database
    /// (postgres://USER:PASSWORD@HOST/DB) instead of where the data dir's
    /// config.json says (set there by init --store, join or migrate).
    #[arg(long, env = "DARKPORT_STORE")]
    pub store: Option<String>,
}

/// The flags of every read command: `--json`, and which controller to ask.
#[derive(Args)]
pub struct ReadArgs {
    /// Print JSON instead of a table, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// One resource by name, and which controller to ask (`delete`, `revoke`).
#[derive(Args)]
pub struct NameArgs {
    /// Name (each use says of what, with `mut_arg`).
    pub name: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets(darkport_cli::AssetsArgs),
    /// Create a data dir: CA, controller and admin identities.
    Init(InitArgs),
    /// Add a controller to a deployment whose state is in PostgreSQL: a new
    /// data dir with this controller's own certificates, sharing the CA.
    Join(JoinArgs),
    /// Move this controller's state from state.db (SQLite) into an empty
    /// PostgreSQL database; run it with the controller stopped.
    Migrate(MigrateArgs),
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
    Audit(AuditArgs),
    /// Show routers.
    #[command(subcommand)]
    Router(RouterCmd),
}

// The settings of `init`.
#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: Dir,
    /// HOST:PORT that routers and clients use to reach the controller.
    #[arg(long)]
    pub advertise: String,
    /// Lifetime of identity certificates (e.g. 7d, 12h); routers and
    /// clients renew theirs automatically at two thirds of it.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
    /// Keep the state in this empty PostgreSQL database
    /// (postgres://USER:PASSWORD@HOST/DB), so that more controllers can
    /// join; default: state.db (SQLite) in the data dir.
    #[arg(long)]
    pub store: Option<String>,
}

// The settings of `join`.
#[derive(Args)]
pub struct JoinArgs {
    #[command(flatten)]
    pub dir: Dir,
    /// HOST:PORT that routers and clients use to reach this controller.
    #[arg(long)]
    pub advertise: String,
    /// This controller's name, unique among the controllers.
    #[arg(long)]
    pub name: String,
    /// The deployment's PostgreSQL database (postgres://USER:PASSWORD@HOST/DB).
    #[arg(long)]
    pub store: String,
    /// Directory holding ca.pem, ca.key and token.key copied (mode 0600)
    /// from an existing controller's data dir.
    #[arg(long)]
    pub from: PathBuf,
}

// The settings of `migrate`.
#[derive(Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub dir: Dir,
    /// The PostgreSQL database (postgres://USER:PASSWORD@HOST/DB).
    #[arg(long)]
    pub to: String,
}

// The settings of `audit`.
#[derive(Args)]
pub struct AuditArgs {
    /// Show at most this many entries (newest).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub read: ReadArgs,
}

/// Identity kinds that can be created.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// Dials services (edge client, SDK).
    Client,
    /// Accepts dials and reaches services (edge router).
    Router,
}

#[derive(Subcommand)]
pub enum IdentityCmd {
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
    List(ReadArgs),
    /// Show one identity.
    Show {
        /// Identity name.
        name: String,
        #[command(flatten)]
        read: ReadArgs,
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
    #[command(mut_arg("name", |a| a.help("Identity name")))]
    Revoke(NameArgs),
    /// Delete an identity; routers refuse it and close its connections.
    #[command(mut_arg("name", |a| a.help("Identity name")))]
    Delete(NameArgs),
}

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Create a service reachable at a private address, or hosted.
    Create {
        /// Service name (what clients dial).
        name: String,
        #[command(flatten)]
        reach: ReachArgs,
        /// Role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// How routers choose among the service's terminators.
        #[arg(long, value_enum, default_value_t = StrategyArg::LowestCost)]
        strategy: StrategyArg,
        #[command(flatten)]
        protocol: ProtocolArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change a service's address, protocol or terminator strategy.
    Update {
        /// Service name.
        name: String,
        /// New private HOST:PORT.
        #[arg(long, conflicts_with = "hosted")]
        address: Option<String>,
        /// Remove the address: from now on the service is reached only
        /// through hosters' terminators.
        #[arg(long)]
        hosted: bool,
        /// New terminator strategy.
        #[arg(long, value_enum)]
        strategy: Option<StrategyArg>,
        #[command(flatten)]
        protocol: ProtocolArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List services.
    List(ReadArgs),
    /// Show a service and the terminators that serve it (as the routers in
    /// session with this controller report them).
    Show {
        /// Service name.
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Delete a service.
    #[command(mut_arg("name", |a| a.help("Service name")))]
    Delete(NameArgs),
}

/// How routers reach a service: exactly one of the two.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct ReachArgs {
    /// Private HOST:PORT the router connects to.
    #[arg(long)]
    pub address: Option<String>,
    /// No address: routers reach the service only through the terminators
    /// of hosters (identities a bind policy allows, running
    /// darkport-edge-client host); with none registered it is unreachable.
    #[arg(long)]
    pub hosted: bool,
}

/// How routers choose among a hosted service's terminators (after
/// precedence: required first, failed last).
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum StrategyArg {
    /// The lowest cost: the hoster's cost plus the router's view of its
    /// latency and open streams.
    LowestCost,
    /// At random, weighted by the inverse of the cost.
    Weighted,
    /// Uniformly at random.
    Random,
    /// The same terminator for the same client identity while it is up.
    Sticky,
}

impl StrategyArg {
    /// The strategy on the wire.
    pub fn strategy(self) -> darkport_proto::policy::TerminatorStrategy {
        use darkport_proto::policy::TerminatorStrategy as T;
        match self {
            StrategyArg::LowestCost => T::LowestCost,
            StrategyArg::Weighted => T::Weighted,
            StrategyArg::Random => T::Random,
            StrategyArg::Sticky => T::Sticky,
        }
    }
}

/// What a service policy grants.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum PolicyTypeArg {
    /// The identities may dial the services.
    Dial,
    /// The identities may host the services (serve them through
    /// terminators on connections they dial out to routers).
    Bind,
}

impl PolicyTypeArg {
    /// The kind on the wire.
    pub fn kind(self) -> darkport_proto::policy::PolicyKind {
        match self {
            PolicyTypeArg::Dial => darkport_proto::policy::PolicyKind::Dial,
            PolicyTypeArg::Bind => darkport_proto::policy::PolicyKind::Bind,
        }
    }
}

/// What the router speaks with a service.
#[derive(Args)]
pub struct ProtocolArgs {
    /// tcp: bytes untouched (default). fluent-forward: the router speaks
    /// Fluentd's forward protocol, stamps the verified sender into every
    /// record and enforces the policies' --tags.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// fluent-forward: the record key naming the sending identity
    /// (default darkport_identity).
    #[arg(long, value_name = "KEY")]
    pub stamp_identity_key: Option<String>,
    /// fluent-forward: also stamp the identity's roles under KEY (e.g.
    /// darkport_roles).
    #[arg(long, value_name = "KEY")]
    pub stamp_roles_key: Option<String>,
    /// fluent-forward: also stamp the router's name under KEY (e.g.
    /// darkport_router).
    #[arg(long, value_name = "KEY")]
    pub stamp_router_key: Option<String>,
    /// fluent-forward: a file (0600) holding the service's <security>
    /// shared_key; routers do the handshake, apps never see the key.
    #[arg(long, value_name = "FILE")]
    pub shared_key_file: Option<PathBuf>,
    /// fluent-forward: a user of the service's <security> <user> sections,
    /// for a Fluentd with user authentication (with --shared-key-file and
    /// --service-password-file).
    #[arg(long, value_name = "NAME", requires = "service_password_file")]
    pub service_username: Option<String>,
    /// fluent-forward: a file (0600) holding that user's password.
    #[arg(long, value_name = "FILE", requires = "service_username")]
    pub service_password_file: Option<PathBuf>,
    /// fluent-forward: what to do with Fluent Bit 5's [EventTime, {metadata}]
    /// times, which Fluentd up to 1.19.3 cannot read: unwrap (default)
    /// sends the plain EventTime, keep sends them as they came.
    #[arg(long, value_enum, value_name = "FORM")]
    pub event_time: Option<EventTimeArg>,
    /// fluent-forward, with --event-time unwrap: carry a non-empty
    /// metadata map in the record under KEY (default: dropped).
    #[arg(long, value_name = "KEY")]
    pub metadata_key: Option<String>,
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
    pub app_handshake: Option<AppHandshakeArg>,
    /// fluent-forward: answer apps' <security> handshake, and let in only
    /// apps whose shared_key is the one in FILE (0600).
    #[arg(long, value_name = "FILE")]
    pub app_shared_key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventTimeArg {
    /// Send the plain EventTime on.
    Unwrap,
    /// Send times on as the app sent them.
    Keep,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppHandshakeArg {
    /// Apps speak without <security> (their identity is their certificate).
    Off,
    /// Answer apps' handshake and let any key in.
    AnyKey,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    /// Bytes untouched.
    Tcp,
    /// Fluentd's forward protocol, stamped and tag-checked.
    FluentForward,
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Allow identities to dial services (--type dial, the default) or to
    /// host them (--type bind).
    Create {
        /// Policy name.
        name: String,
        /// dial: the identities may dial the services. bind: they may host
        /// them (a router also needs a router policy to serve them).
        #[arg(long = "type", value_enum, default_value_t = PolicyTypeArg::Dial)]
        kind: PolicyTypeArg,
        /// Services: #ROLE, @NAME, NAME or #all (repeatable).
        #[arg(long = "service-roles", alias = "service", required = true)]
        services: Vec<String>,
        /// Client identities: #ROLE, @NAME, NAME or #all (repeatable).
        #[arg(long = "identity-roles", alias = "identity", required = true)]
        identities: Vec<String>,
        /// For fluent-forward services: the tags these identities may
        /// write, comma-separated Fluentd patterns (*, **, {a,b}) with
        /// ${identity} for the sender's name, e.g. 'app.${identity}.**'.
        /// Default: any tag. Dial policies only.
        #[arg(long, value_name = "PATTERNS")]
        tags: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List policies.
    List(ReadArgs),
    /// Say whether an identity may dial a service, whether it may host it,
    /// and which policies decide it.
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
        read: ReadArgs,
    },
    /// Delete a policy.
    #[command(mut_arg("name", |a| a.help("Policy name")))]
    Delete(NameArgs),
}

#[derive(Subcommand)]
pub enum RouterPolicyCmd {
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
    List(ReadArgs),
    /// Delete a router policy.
    #[command(mut_arg("name", |a| a.help("Router policy name")))]
    Delete(NameArgs),
}

#[derive(Subcommand)]
pub enum RouterCmd {
    /// List routers.
    List(ReadArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_argument_has_help() {
        darkport_cli::assert_cli_documented(Cli::command());
    }

    /// The CLI's names are the ones the docs, `service list` and the
    /// store use.
    #[test]
    fn strategy_and_policy_type_names_are_protos() {
        use clap::ValueEnum;
        fn cli_name(a: &impl ValueEnum) -> String {
            let v = a.to_possible_value().expect("listed");
            v.get_name().to_string()
        }
        for a in StrategyArg::value_variants() {
            assert_eq!(a.strategy().name(), cli_name(a));
        }
        for a in PolicyTypeArg::value_variants() {
            assert_eq!(a.kind().name(), cli_name(a));
        }
    }

    /// A service is created with exactly one of --address and --hosted.
    #[test]
    fn service_create_needs_an_address_or_hosted_not_both() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["darkport-controller", "service", "create", "api"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--data-dir", "d"]);
            Cli::try_parse_from(args)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse(&["--address", "h:1"]), Ok(()));
        assert_eq!(parse(&["--hosted", "--strategy", "sticky"]), Ok(()));
        let none = parse(&[]).expect_err("neither");
        assert!(
            none.contains("--address") && none.contains("--hosted"),
            "{none}"
        );
        let both = parse(&["--address", "h:1", "--hosted"]).expect_err("both");
        assert!(both.contains("cannot be used with"), "{both}");
        let bad = parse(&["--hosted", "--strategy", "round-robin"]).expect_err("strategy");
        assert!(bad.contains("lowest-cost"), "{bad}");
    }
}
