//! stunnel4 with mutual TLS as the reference tunnel: a client stunnel
//! listening locally and a server stunnel forwarding to the services, with
//! certificates from a throwaway CA made here with rcgen (ECDSA P-256, as
//! Darkport's). Logging is `foreground = quiet`, `debug = err`, or it
//! becomes the bottleneck.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::load;
use crate::procs::{free_tcp_port, wait_until, Proc};
use crate::services::Targets;

/// Finds stunnel: the given path, or `stunnel4` / `stunnel` on PATH.
pub fn find(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    for name in ["stunnel4", "stunnel"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// The two stunnel processes.
#[derive(Debug)]
pub struct Stunnel {
    bin: PathBuf,
    /// How the server side is started (inside the namespace with --netns).
    server_cmd: Command,
    dir: PathBuf,
    /// The client-side stunnel.
    pub client: Option<Proc>,
    /// The server-side stunnel.
    pub server: Option<Proc>,
    /// The client stunnel's local ports, one per service.
    pub forwards: Targets,
    /// The server stunnel's sink port, for a second client (WAN check).
    pub server_sink: SocketAddr,
}

impl Stunnel {
    /// Writes certificates and configs into `dir` and starts both sides.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        services: &Targets,
        topo: &crate::topo::Topology,
    ) -> Result<Stunnel> {
        write_certs(dir)?;
        // stunnel passes bytes: `fluentfw` is the same tunnel as `fluent`.
        let ports = |ip: std::net::IpAddr| -> Result<Targets> {
            let port = || free_tcp_port().map(|a| SocketAddr::new(ip, a.port()));
            let fluent = port()?;
            Ok(Targets {
                sink: port()?,
                rr: port()?,
                echo: port()?,
                fluent,
                fluentfw: fluent,
            })
        };
        // The server side listens where the router does (far); the client
        // side on 127.0.0.1 beside the load generator.
        let server_ports = ports(topo.far_ip())?;
        let forwards = ports(std::net::Ipv4Addr::LOCALHOST.into())?;
        let d = dir.display();
        let global =
            "foreground = quiet\ndebug = err\nsyslog = no\npid =\nsslVersionMin = TLSv1.3\n";
        let mut server = String::from(global);
        let mut client = String::from(global);
        for (name, svc, srv, fwd) in sections(services, &server_ports, &forwards) {
            server.push_str(&format!(
                "\n[{name}]\naccept = {srv}\nconnect = {svc}\ncert = {d}/server.crt\nkey = {d}/server.key\nCAfile = {d}/ca.crt\nverifyChain = yes\nrequireCert = yes\n"
            ));
            client.push_str(&format!(
                "\n[{name}]\nclient = yes\naccept = {fwd}\nconnect = {srv}\ncert = {d}/client.crt\nkey = {d}/client.key\nCAfile = {d}/ca.crt\nverifyChain = yes\ncheckHost = localhost\n"
            ));
        }
        std::fs::write(dir.join("server.conf"), server).context("writing server.conf")?;
        std::fs::write(dir.join("client.conf"), client).context("writing client.conf")?;
        let server_cmd = {
            let mut c = topo.far(bin);
            c.arg(dir.join("server.conf"));
            c
        };
        let mut s = Stunnel {
            bin: bin.to_path_buf(),
            server_cmd,
            dir: dir.to_path_buf(),
            client: None,
            server: None,
            forwards,
            server_sink: server_ports.sink,
        };
        s.start_procs().await?;
        Ok(s)
    }

    /// A second client stunnel forwarding `local` to `connect` (the sink
    /// through a relay), with the same certificates.
    pub fn spawn_extra_client(&self, local: SocketAddr, connect: SocketAddr) -> Result<Proc> {
        let d = self.dir.display();
        let conf = format!(
            "foreground = quiet\ndebug = err\nsyslog = no\npid =\nsslVersionMin = TLSv1.3\n\n[sink]\nclient = yes\naccept = {local}\nconnect = {connect}\ncert = {d}/client.crt\nkey = {d}/client.key\nCAfile = {d}/ca.crt\nverifyChain = yes\ncheckHost = localhost\n"
        );
        let path = self.dir.join("client-wan.conf");
        std::fs::write(&path, conf).context("writing client-wan.conf")?;
        Proc::spawn(
            "stunnel client (WAN)",
            Command::new(&self.bin).arg(&path),
            &self.dir.join("stunnel-client-wan.log"),
        )
    }

    async fn start_procs(&mut self) -> Result<()> {
        self.server = Some(Proc::spawn(
            "stunnel server",
            &mut self.server_cmd,
            &self.dir.join("stunnel-server.log"),
        )?);
        self.client = Some(Proc::spawn(
            "stunnel client",
            Command::new(&self.bin).arg(self.dir.join("client.conf")),
            &self.dir.join("stunnel-client.log"),
        )?);
        let rr = self.forwards.rr;
        wait_until(
            "a request to cross stunnel",
            Duration::from_secs(20),
            || load::one_rr(rr),
        )
        .await?;
        self.check_alive()
    }

    /// Kills and restarts both sides (fresh memory), then waits.
    pub async fn restart(&mut self) -> Result<()> {
        self.client = None;
        self.server = None;
        self.start_procs().await
    }

    /// Fails if a process died.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in [&mut self.client, &mut self.server].into_iter().flatten() {
            p.check_alive()?;
        }
        Ok(())
    }

    /// (label, pid) of the processes on the data path.
    pub fn data_path_pids(&self) -> Vec<(&'static str, u32)> {
        let mut v = Vec::new();
        if let Some(c) = &self.client {
            v.push(("client", c.pid()));
        }
        if let Some(s) = &self.server {
            v.push(("server", s.pid()));
        }
        v
    }
}

/// (section name, service, server stunnel port, client stunnel port).
fn sections(
    svc: &Targets,
    srv: &Targets,
    fwd: &Targets,
) -> [(&'static str, SocketAddr, SocketAddr, SocketAddr); 4] {
    [
        ("sink", svc.sink, srv.sink, fwd.sink),
        ("rr", svc.rr, srv.rr, fwd.rr),
        ("echo", svc.echo, srv.echo, fwd.echo),
        ("fluent", svc.fluent, srv.fluent, fwd.fluent),
    ]
}

/// A CA, a server certificate for `localhost` (serverAuth) and a client
/// certificate (clientAuth), as PEM files in `dir`.
fn write_certs(dir: &Path) -> Result<()> {
    let ca_key = KeyPair::generate().context("generating the stunnel CA key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "darkport-bench stunnel CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca
        .self_signed(&ca_key)
        .context("self-signing the stunnel CA")?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |cn: &str, eku: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
        let key = KeyPair::generate().context("generating a stunnel key")?;
        let mut p = CertificateParams::new(vec!["localhost".to_string()])
            .context("certificate parameters")?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p
            .signed_by(&key, &issuer)
            .context("signing a stunnel certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_crt, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_crt, client_key) = leaf("bench-client", ExtendedKeyUsagePurpose::ClientAuth)?;
    for (name, body) in [
        ("ca.crt", ca_cert.pem()),
        ("server.crt", server_crt),
        ("server.key", server_key),
        ("client.crt", client_crt),
        ("client.key", client_key),
    ] {
        std::fs::write(dir.join(name), body).with_context(|| format!("writing {name}"))?;
    }
    Ok(())
}
