//! Starts a Darkport system from the release binaries, exactly as the
//! README's full flow does: controller init and run, a router identity, a
//! client identity with role `bench`, one service per bench service, one
//! policy, then the router and an edge client forwarding local ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::load;
use crate::procs::{free_tcp_port, free_udp_port, run, wait_until, Proc};
use crate::services::Targets;

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
    /// How the router is started (inside the namespace with --netns).
    router_cmd: std::path::PathBuf,
    far: crate::topo::Far,
    /// Extra environment for router and client.
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
    ) -> Result<Darkport> {
        let ctl_addr = SocketAddr::new(topo.near_ip(), free_udp_port()?.port());
        let router_addr = SocketAddr::new(topo.far_ip(), free_udp_port()?.port());
        let ctl = |args: &[&str]| {
            let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            v.extend(["--data-dir".into(), "ctl".into()]);
            v
        };
        let controller_bin = bins.controller.clone();
        let admin = |args: Vec<String>| {
            let bin = controller_bin.clone();
            async move {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                run(&bin, &a, dir).await
            }
        };
        admin(ctl(&["init", "--advertise", &ctl_addr.to_string()])).await?;
        let controller = Proc::spawn(
            "controller",
            Command::new(&bins.controller)
                .args(["run", "--data-dir", "ctl"])
                .current_dir(dir)
                .env("RUST_LOG", LOG_LEVEL),
            &dir.join("controller.log"),
        )?;
        wait_until("the controller", Duration::from_secs(20), || {
            admin(ctl(&["identity", "list"]))
        })
        .await?;
        admin(ctl(&[
            "identity",
            "create",
            "router-1",
            "--kind",
            "router",
            "--token-out",
            "router-1.token",
        ]))
        .await?;
        admin(ctl(&[
            "identity",
            "create",
            "bench-client",
            "--role",
            "bench",
            "--token-out",
            "bench-client.token",
        ]))
        .await?;
        for (name, addr) in [
            ("sink", services.sink),
            ("rr", services.rr),
            ("echo", services.echo),
            ("fluent", services.fluent),
        ] {
            admin(ctl(&[
                "service",
                "create",
                name,
                "--address",
                &addr.to_string(),
            ]))
            .await?;
        }
        // The same receiver, with Darkport speaking the forward protocol:
        // every record stamped with the client's identity.
        {
            admin(ctl(&[
                "service",
                "create",
                "fluentfw",
                "--address",
                &services.fluent.to_string(),
                "--protocol",
                "fluent-forward",
            ]))
            .await?;
        }
        admin(ctl(&[
            "policy",
            "create",
            "bench",
            "--service-roles",
            "#all",
            "--identity-roles",
            "#bench",
        ]))
        .await?;
        run(
            &bins.router,
            &[
                "enroll",
                "--token",
                "router-1.token",
                "--identity",
                "router-1.id",
            ],
            dir,
        )
        .await?;
        run(
            &bins.client,
            &[
                "enroll",
                "--token",
                "bench-client.token",
                "--identity",
                "bench-client.id",
            ],
            dir,
        )
        .await?;
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
            router_cmd: bins.router.clone(),
            far: topo.far_side(),
            env,
        };
        d.start_edges().await?;
        Ok(d)
    }

    /// Starts the router and the client and waits until a request crosses.
    async fn start_edges(&mut self) -> Result<()> {
        self.router = Some(Proc::spawn(
            "edge router",
            self.far
                .command(&self.router_cmd)
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
        self.client = Some(self.spawn_client(
            "edge client",
            &self.forwards,
            self.router_addr,
            "quic",
            "client.log",
        )?);
        self.client_tcp = Some(self.spawn_client(
            "edge client (TCP)",
            &self.forwards_tcp,
            self.router_addr,
            "tcp",
            "client-tcp.log",
        )?);
        self.wait_ready().await
    }

    /// Starts an edge client forwarding `forwards` through `router` over
    /// `transport` (`quic` or `tcp`).
    pub fn spawn_client(
        &self,
        name: &str,
        forwards: &Targets,
        router: SocketAddr,
        transport: &str,
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
        for (addr, service) in [
            (forwards.sink, "sink"),
            (forwards.rr, "rr"),
            (forwards.echo, "echo"),
            (forwards.fluent, "fluent"),
            (forwards.fluentfw, "fluentfw"),
        ] {
            cmd.arg("--forward").arg(format!("{addr}={service}"));
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
        for (rr, what) in [
            (
                self.forwards.rr,
                "a request to cross the Darkport tunnel (QUIC)",
            ),
            (
                self.forwards_tcp.rr,
                "a request to cross the Darkport tunnel (TCP)",
            ),
        ] {
            wait_until(what, Duration::from_secs(30), || load::one_rr(rr)).await?;
        }
        self.check_alive()
    }

    /// Kills and restarts router and client (fresh memory), then waits.
    pub async fn restart_edges(&mut self) -> Result<()> {
        self.client = None;
        self.client_tcp = None;
        self.router = None;
        self.start_edges().await
    }

    /// Fails if a process died.
    pub fn check_alive(&mut self) -> Result<()> {
        self.controller.check_alive()?;
        for p in [&mut self.router, &mut self.client, &mut self.client_tcp]
            .into_iter()
            .flatten()
        {
            p.check_alive()?;
        }
        Ok(())
    }

    /// (label, pid) of the processes on the data path of the QUIC (`tcp`
    /// false) or the TCP client.
    pub fn data_path_pids(&self, tcp: bool) -> Vec<(&'static str, u32)> {
        let mut v = Vec::new();
        let client = if tcp { &self.client_tcp } else { &self.client };
        if let Some(c) = client {
            v.push(("client", c.pid()));
        }
        if let Some(r) = &self.router {
            v.push(("router", r.pid()));
        }
        v
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
