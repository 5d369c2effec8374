//! A network namespace of the test's own, joined to this one by a veth
//! pair at MTU 1500, with nftables to block UDP into it: a real
//! 1,500-byte path and a real firewall on one machine (needs root,
//! iproute2 and nftables).
//!
//! Everything it creates is named after this process and a counter, lives
//! only inside the namespace and the veth pair, and is deleted on drop.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// A namespace `name` with `inner` (inside it) and `outer` (here) on one
/// veth pair.
pub struct NetNs {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
    veth: String,
    /// This side's address.
    pub outer: Ipv4Addr,
    /// The namespace's address.
    pub inner: Ipv4Addr,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Why namespaces cannot be made here, if they cannot (not root, no `ip`
/// or no `nft`).
pub fn unavailable() -> Option<String> {
    // SAFETY-free root check: /proc/self/status Uid line.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Some("not root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool).arg("-V").output().is_ok();
        if !found {
            return Some(format!(
                "`{tool}` is not installed (Debian: iproute2, nftables)"
            ));
        }
    }
    None
}

/// Skips the calling test loudly when namespaces cannot be made here, and
/// fails it under `CI=true`: `None` means skip.
pub fn create_or_skip(test: &str) -> Option<NetNs> {
    if let Some(why) = unavailable() {
        let msg = format!("SKIPPED {test}: network namespaces unavailable: {why}");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("{msg}");
        return None;
    }
    Some(NetNs::create().expect("create a network namespace"))
}

impl NetNs {
    /// Creates the namespace and its veth pair, both up, MTU 1500.
    pub fn create() -> Result<NetNs> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("dpt-{pid}-{n}");
        // Interface names hold 15 bytes.
        let veth = format!("dpt{}x{n}", pid % 100_000);
        // A /30 per namespace in 10.213.0.0/16, from the pid and counter.
        let k = (pid.wrapping_mul(7) + n * 4) % 16_384;
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + k * 4;
        let (outer, inner) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let ns = NetNs {
            name: name.clone(),
            veth: veth.clone(),
            outer,
            inner,
        };
        let peer = format!("{veth}p");
        run(&["ip", "netns", "add", &name])?;
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", &name])?;
        run(&["ip", "addr", "add", &format!("{outer}/30"), "dev", &veth])?;
        run(&["ip", "link", "set", &veth, "mtu", "1500", "up"])?;
        let inside = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &name];
            v.extend_from_slice(args);
            run(&v)
        };
        inside(&["ip", "link", "set", "lo", "up"])?;
        inside(&["ip", "addr", "add", &format!("{inner}/30"), "dev", &peer])?;
        inside(&["ip", "link", "set", &peer, "mtu", "1500", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<()> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Drops UDP to `port` inside the namespace (nftables).
    pub fn block_udp(&self, port: u16) -> Result<()> {
        self.exec(&["nft", "add", "table", "inet", "dptest"])?;
        self.exec(&[
            "nft",
            "add chain inet dptest input { type filter hook input priority 0; }",
        ])?;
        self.exec(&[
            "nft",
            "add",
            "rule",
            "inet",
            "dptest",
            "input",
            "udp",
            "dport",
            &port.to_string(),
            "drop",
        ])
    }

    /// Refuses everything inbound that is not an answer: every TCP SYN
    /// (a connection attempt) and every UDP datagram arriving on the veth
    /// is dropped; loopback inside the namespace stays open. What the
    /// namespace dials out over TCP still works (its SYN-ACKs carry ACK).
    pub fn refuse_inbound(&self) -> Result<()> {
        self.exec(&["nft", "add", "table", "inet", "dpinbound"])?;
        self.exec(&[
            "nft",
            "add chain inet dpinbound input { type filter hook input priority 0; }",
        ])?;
        self.exec(&["nft", "add rule inet dpinbound input iifname lo accept"])?;
        self.exec(&[
            "nft",
            "add rule inet dpinbound input tcp flags & (syn | ack) == syn drop",
        ])?;
        self.exec(&["nft", "add rule inet dpinbound input meta l4proto udp drop"])
    }

    /// Lets UDP through again.
    pub fn unblock_udp(&self) -> Result<()> {
        self.exec(&["nft", "delete", "table", "inet", "dptest"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = run(&["ip", "link", "del", &self.veth]);
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}
