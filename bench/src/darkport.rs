//! Starts a Darkport system from the release binaries, exactly as the
//! README's full flow does: controller init and run, a router identity, a
//! client identity with role `bench`, one service per bench service, one
//! policy, then the router and edge clients forwarding local ports.
//!
//! Beside them, the hosted path (issue 21): a hoster identity with role
//! `hoster`, a hosted twin of every service (`sink-h`, …, created
//! `--hosted` with role `hosted`, so no address), a bind policy letting
//! `#hoster` host `#hosted`, and a hoster (`darkport-edge-client host`)
//! started where the services are, dialing out to the router over QUIC.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::load;
use crate::procs::{free_tcp_port, free_udp_port, run, wait_until, Proc};
use crate::report::PathKind;
use crate::services::{Targets, FLUENT_FORWARD, HOSTED_SUFFIX};

/// The three binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    /// darkport-controller
    pub controller: PathBuf,
    /// darkport-edge-router
    pub router: PathBuf,
    /// darkport-edge-client
    pub client: PathBuf,
}

impl Bins {
    /// The binaries in `dir`, which must exist (the bench builds nothing).
    pub fn in_dir(dir: &Path) -> Result<Bins> {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("resolving --bin-dir {}", dir.display()))?;
        let bins = Bins {
            controller: dir.join("darkport-controller"),
            router: dir.join("darkport-edge-router"),
            client: dir.join("darkport-edge-client"),
        };
        for b in [&bins.controller, &bins.router, &bins.client] {
            if !b.is_file() {
                bail!(
                    "{} not found; build first: cargo build --release --workspace",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A running controller, router and edge client.
#[derive(Debug)]
pub struct Darkport {
    bins: Bins,
    dir: PathBuf,
    /// The controller.
    pub controller: Proc,
    /// The router; `None` only while restarting.
    pub router: Option<Proc>,
    /// The edge client on QUIC (`--transport quic`); `None` only while
    /// restarting.
    pub client: Option<Proc>,
    /// The edge client on TLS over TCP (`--transport tcp`).
    pub client_tcp: Option<Proc>,
    /// Where the router listens (UDP and TCP).
    pub router_addr: SocketAddr,
    /// The QUIC client's local forward ports, one per service.
    pub forwards: Targets,
    /// The TCP client's local forward ports.
    pub forwards_tcp: Targets,
    /// The hoster, dialing out to the router; `None` only while
    /// restarting.
    pub hoster: Option<Proc>,
    /// The edge client on QUIC forwarding to the hosted twins.
    pub client_hosted: Option<Proc>,
    /// Its local forward ports.
    pub forwards_hosted: Targets,
    /// The services, which the hoster serves.
    services: Targets,
    /// Whether the hosted path runs (hoster, its client, the hosted
    /// twins and the bind policy).
    hosted: bool,
    /// How the router and the hoster are started (inside the namespace
    /// with --netns, where the services are).
    far: crate::topo::Far,
    /// Extra environment for router, clients and hoster.
    env: Vec<(String, String)>,
}

const LOG_LEVEL: &str = "info";

impl Darkport {
    /// Sets everything up in `dir` for the services at `services`.
    pub async fn start(
        bins: &Bins,
        dir: &Path,
        services: &Targets,
        env: Vec<(String, String)>,
        topo: &crate::topo::Topology,
        hosted: bool,
    ) -> Result<Darkport> {
        let ctl_addr = SocketAddr::new(topo.near_ip(), free_udp_port()?.port());
        let router_addr = SocketAddr::new(topo.far_ip(), free_udp_port()?.port());
        let admin = Admin {
            bin: &bins.controller,
            dir,
        };
        admin
            .run(&["init", "--advertise", &ctl_addr.to_string()])
            .await?;
        let controller = Proc::spawn(
            "controller",
            Command::new(&bins.controller)
                .args(["run", "--data-dir", "ctl"])
                .current_dir(dir)
                .env("RUST_LOG", LOG_LEVEL),
            &dir.join("controller.log"),
        )?;
        wait_until("the controller", Duration::from_secs(20), || {
            admin.run(&["identity", "list"])
        })
        .await?;
        admin.configure(services, hosted).await?;
        let mut enroll = vec![
            (&bins.router, "router-1.token", "router-1.id"),
            (&bins.client, "bench-client.token", "bench-client.id"),
        ];
        if hosted {
            enroll.push((&bins.client, "bench-hoster.token", "bench-hoster.id"));
        }
        for (bin, token, id) in enroll {
            run(bin, &["enroll", "--token", token, "--identity", id], dir).await?;
        }
        let mut d = Darkport {
            bins: bins.clone(),
            dir: dir.to_path_buf(),
            controller,
            router: None,
            client: None,
            client_tcp: None,
            router_addr,
            forwards: local_ports()?,
            forwards_tcp: local_ports()?,
            hoster: None,
            client_hosted: None,
            forwards_hosted: local_ports()?,
            services: *services,
            hosted,
            far: topo.far_side(),
            env,
        };
        d.start_edges().await?;
        Ok(d)
    }

    /// Starts the router, the hoster and the clients, and waits until a
    /// request crosses every path.
    async fn start_edges(&mut self) -> Result<()> {
        self.router = Some(Proc::spawn(
            "edge router",
            self.far
                .command(&self.bins.router)
                .args([
                    "run",
                    "--identity",
                    "router-1.id",
                    "--listen",
                    &self.router_addr.to_string(),
                    // The memory scenario holds 10,000 connections of one
                    // identity open at once, over one client connection;
                    // the default caps are 4,096 and 1,024.
                    "--max-streams-per-identity",
                    "20000",
                    "--max-streams-per-connection",
                    "20000",
                ])
                .current_dir(&self.dir)
                .env("RUST_LOG", LOG_LEVEL)
                .envs(self.env.iter().map(|(k, v)| (k, v))),
            &self.dir.join("router.log"),
        )?);
        if self.hosted {
            self.hoster = Some(self.spawn_hoster()?);
        }
        self.client = Some(self.spawn_client(
            "edge client",
            &self.forwards,
            self.router_addr,
            "quic",
            false,
            "client.log",
        )?);
        self.client_tcp = Some(self.spawn_client(
            "edge client (TCP)",
            &self.forwards_tcp,
            self.router_addr,
            "tcp",
            false,
            "client-tcp.log",
        )?);
        if self.hosted {
            self.client_hosted = Some(self.spawn_client(
                "edge client (hosted)",
                &self.forwards_hosted,
                self.router_addr,
                "quic",
                true,
                "client-hosted.log",
            )?);
        }
        self.wait_ready().await
    }

    /// Starts the hoster where the services are (inside the namespace with
    /// --netns): it serves every hosted twin through the router, over
    /// QUIC, on a connection it dials out.
    fn spawn_hoster(&self) -> Result<Proc> {
        let mut cmd = self.far.command(&self.bins.client);
        cmd.args([
            "host",
            "--identity",
            "bench-hoster.id",
            "--transport",
            "quic",
            "--router",
            &self.router_addr.to_string(),
        ]);
        for (name, addr) in self.services.by_name() {
            cmd.arg("--service")
                .arg(format!("{name}{HOSTED_SUFFIX}={addr}"));
        }
        cmd.current_dir(&self.dir)
            .env("RUST_LOG", LOG_LEVEL)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        Proc::spawn("hoster", &mut cmd, &self.dir.join("hoster.log"))
    }

    /// Starts an edge client forwarding `forwards` through `router` over
    /// `transport` (`quic` or `tcp`), to the services or (`hosted`) to
    /// their hosted twins.
    pub fn spawn_client(
        &self,
        name: &str,
        forwards: &Targets,
        router: SocketAddr,
        transport: &str,
        hosted: bool,
        log: &str,
    ) -> Result<Proc> {
        let mut cmd = Command::new(&self.bins.client);
        cmd.args([
            "run",
            "--identity",
            "bench-client.id",
            "--transport",
            transport,
        ]);
        let suffix = if hosted { HOSTED_SUFFIX } else { "" };
        for (service, addr) in forwards.by_name() {
            cmd.arg("--forward")
                .arg(format!("{addr}={service}{suffix}"));
        }
        cmd.arg("--router")
            .arg(router.to_string())
            .current_dir(&self.dir)
            .env("RUST_LOG", LOG_LEVEL)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        Proc::spawn(name, &mut cmd, &self.dir.join(log))
    }

    /// Waits until one request/reply crosses the tunnel (the router has
    /// its policy and the client its connection).
    pub async fn wait_ready(&mut self) -> Result<()> {
        let mut ready = vec![
            (
                self.forwards.rr,
                "a request to cross the Darkport tunnel (QUIC)",
            ),
            (
                self.forwards_tcp.rr,
                "a request to cross the Darkport tunnel (TCP)",
            ),
        ];
        if self.hosted {
            ready.push((
                self.forwards_hosted.rr,
                "a request to reach a hosted service (the hoster registered)",
            ));
        }
        for (rr, what) in ready {
            if let Err(e) = wait_until(what, Duration::from_secs(30), || load::one_rr(rr)).await {
                // A process that exited says why in its log, which beats
                // "connection reset".
                self.check_alive()?;
                return Err(e);
            }
        }
        self.check_alive()
    }

    /// Kills and restarts router, clients and hoster (fresh memory), then
    /// waits.
    pub async fn restart_edges(&mut self) -> Result<()> {
        self.client = None;
        self.client_tcp = None;
        self.client_hosted = None;
        self.hoster = None;
        self.router = None;
        self.start_edges().await
    }

    /// Fails if a process died.
    pub fn check_alive(&mut self) -> Result<()> {
        self.controller.check_alive()?;
        for p in [
            &mut self.router,
            &mut self.client,
            &mut self.client_tcp,
            &mut self.hoster,
            &mut self.client_hosted,
        ]
        .into_iter()
        .flatten()
        {
            p.check_alive()?;
        }
        Ok(())
    }

    /// The local forward ports of a Darkport path.
    pub fn forwards(&self, path: PathKind) -> Option<Targets> {
        match path {
            PathKind::Darkport => Some(self.forwards),
            PathKind::DarkportTcp => Some(self.forwards_tcp),
            PathKind::DarkportHosted => self.hosted.then_some(self.forwards_hosted),
            PathKind::Direct | PathKind::Stunnel => None,
        }
    }

    /// (label, pid) of the processes on a Darkport path's data path:
    /// "client", "router" and, on the hosted path, "hoster".
    pub fn data_path_pids(&self, path: PathKind) -> Vec<(&'static str, u32)> {
        let client = match path {
            PathKind::Darkport => &self.client,
            PathKind::DarkportTcp => &self.client_tcp,
            PathKind::DarkportHosted => &self.client_hosted,
            PathKind::Direct | PathKind::Stunnel => return Vec::new(),
        };
        let hoster = match path {
            PathKind::DarkportHosted => self.hoster.as_ref(),
            _ => None,
        };
        [
            ("client", client.as_ref()),
            ("router", self.router.as_ref()),
            ("hoster", hoster),
        ]
        .into_iter()
        .filter_map(|(label, p)| Some((label, p?.pid())))
        .collect()
    }
}

/// Runs `darkport-controller` admin commands on the data dir `ctl`.
struct Admin<'a> {
    bin: &'a Path,
    dir: &'a Path,
}

impl Admin<'_> {
    async fn run(&self, args: &[&str]) -> Result<String> {
        let mut v = args.to_vec();
        v.extend(["--data-dir", "ctl"]);
        run(self.bin, &v, self.dir).await
    }

    /// Identities, services and policies: a router, a client (role
    /// `bench`) that may dial every service, and (`hosted`) a hoster (role
    /// `hoster`) that may host the hosted twins (role `hosted`).
    async fn configure(&self, services: &Targets, hosted: bool) -> Result<()> {
        let mut identities = vec![
            ("router-1", ["--kind", "router"]),
            ("bench-client", ["--role", "bench"]),
        ];
        if hosted {
            identities.push(("bench-hoster", ["--role", "hoster"]));
        }
        for (name, extra) in identities {
            let token = format!("{name}.token");
            let mut args = vec!["identity", "create", name];
            args.extend(extra);
            args.extend(["--token-out", &token]);
            self.run(&args).await?;
        }
        for (name, addr) in services.by_name() {
            // The same receiver as `fluent`, with Darkport speaking the
            // forward protocol: every record stamped with the client's
            // identity.
            let protocol: &[&str] = if name == FLUENT_FORWARD {
                &["--protocol", "fluent-forward"]
            } else {
                &[]
            };
            let addr = addr.to_string();
            let mut dialed = vec!["service", "create", name, "--address", &addr];
            dialed.extend(protocol);
            self.run(&dialed).await?;
            if !hosted {
                continue;
            }
            let twin = format!("{name}{HOSTED_SUFFIX}");
            let mut hosted = vec!["service", "create", &twin, "--hosted", "--role", "hosted"];
            hosted.extend(protocol);
            self.run(&hosted).await?;
        }
        self.run(&[
            "policy",
            "create",
            "bench",
            "--service-roles",
            "#all",
            "--identity-roles",
            "#bench",
        ])
        .await?;
        if !hosted {
            return Ok(());
        }
        self.run(&[
            "policy",
            "create",
            "bench-host",
            "--type",
            "bind",
            "--service-roles",
            "#hosted",
            "--identity-roles",
            "#hoster",
        ])
        .await?;
        Ok(())
    }
}

/// Local forward ports, one per service.
fn local_ports() -> Result<Targets> {
    Ok(Targets {
        sink: free_tcp_port()?,
        rr: free_tcp_port()?,
        echo: free_tcp_port()?,
        fluent: free_tcp_port()?,
        fluentfw: free_tcp_port()?,
    })
}
