//! Where the bench's processes run: all on 127.0.0.1 (loopback, whose
//! 65,536-byte MTU lets QUIC send 6,500-byte datagrams), or with
//! `--netns` across a veth pair at MTU 1500 into a network namespace of
//! the bench's own: the router, the server-side stunnel and the services
//! inside ("far"), the controller, the load generator, the edge clients
//! and the client-side stunnel outside ("near"). That is the path a real
//! NIC gives: 1,500-byte packets for QUIC, TSO/GRO for TCP.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use darkport_tests::netns::NetNs;

/// The bench's network layout.
pub struct Topology {
    ns: Option<NetNs>,
}

impl Topology {
    /// Everything on 127.0.0.1.
    pub fn loopback() -> Topology {
        Topology { ns: None }
    }

    /// A fresh namespace and veth pair (root, iproute2 and nftables).
    pub fn netns() -> Result<Topology> {
        if let Some(why) = darkport_tests::netns::unavailable() {
            bail!("--netns needs root, iproute2 and nftables: {why}");
        }
        let ns = NetNs::create()?;
        // Inside, the router, the hoster and the server stunnel all
        // connect to the services from one address. The memory scenario
        // opens and closes 10,000 connections per path, whose TIME_WAIT
        // would exhaust the ephemeral ports ("Cannot assign requested
        // address") with the kernel's default, which reuses TIME_WAIT
        // ports for loopback only.
        // (/proc/sys/net is the namespace's own; no procps needed.)
        ns.exec(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse && echo '1024 65000' > /proc/sys/net/ipv4/ip_local_port_range",
        ])?;
        Ok(Topology { ns: Some(ns) })
    }

    /// Where the router, the services and the server-side stunnel listen.
    pub fn far_ip(&self) -> IpAddr {
        match &self.ns {
            Some(ns) => IpAddr::V4(ns.inner),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Where the controller listens (the router reaches it from afar).
    pub fn near_ip(&self) -> IpAddr {
        match &self.ns {
            Some(ns) => IpAddr::V4(ns.outer),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// A command that runs `program` on the far side.
    pub fn far(&self, program: &Path) -> Command {
        self.far_side().command(program)
    }

    /// How to start programs on the far side, to keep.
    pub fn far_side(&self) -> Far {
        Far(self.ns.as_ref().map(|n| n.name.clone()))
    }

    /// For the report header.
    pub fn describe(&self) -> String {
        match &self.ns {
            Some(ns) => format!(
                "across a veth pair at MTU 1500 into network namespace {} ({} → {}): router, services and server stunnel inside; load, edge clients, client stunnel and controller outside",
                ns.name, ns.outer, ns.inner
            ),
            None => "loopback (127.0.0.1, MTU 65,536: QUIC sends up to 6,500-byte datagrams; this flatters QUIC)".into(),
        }
    }

    /// Whether this is the namespace layout.
    pub fn is_netns(&self) -> bool {
        self.ns.is_some()
    }
}

/// Starts programs on the far side: `ip netns exec NAME PROGRAM`, or the
/// program as is on loopback.
#[derive(Debug, Clone)]
pub struct Far(Option<String>);

impl Far {
    /// A command running `program` there.
    pub fn command(&self, program: &Path) -> Command {
        match &self.0 {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}
