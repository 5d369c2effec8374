//! The SDK's promises that the compiler and cargo can check without a
//! network: what it exports, and what it does not pull in. The example
//! (`examples/dial.rs`) and the doctests are built by `cargo test -p
//! darkport` itself.

use std::future::Future;
use std::path::Path;
use std::process::Command;

use darkport::{
    Client, ClientOptions, DialError, DialStream, EnrollError, IdentityError, IdentityFile,
    RecvHalf, RemoteEnd, Retry, RouterConnection, SendHalf, SharedClient, StreamCode, Transport,
    TransportMode,
};

/// The entry points have the shapes the docs promise; renaming or
/// dropping a re-export breaks this test, not an application first.
#[allow(dead_code, clippy::type_complexity)]
fn entry_points() {
    let _: fn(&Path, ClientOptions) -> Result<Client, DialError> = Client::from_identity_file;
    let _: fn(darkport::Identity, ClientOptions) -> Result<Client, DialError> = Client::new;
    let _: fn(&Path) -> Result<darkport::Identity, IdentityError> = darkport::Identity::load;
    let _: fn(&str) -> Result<String, EnrollError> = darkport::read_token;
    let _: fn(&DialError) -> Retry = DialError::retry;
    let _: fn(DialStream) -> (SendHalf, RecvHalf) = DialStream::into_split;
    let _: fn(&mut SendHalf, StreamCode) = SendHalf::reset;
    let _: fn(Option<&RemoteEnd>, &str, &str) -> String = darkport::describe_remote_end;
    let _: fn(&Client) -> Vec<RouterConnection> = Client::connections;
    let _: Transport = Transport::Quic;
    let _: [TransportMode; 3] = [TransportMode::Auto, TransportMode::Quic, TransportMode::Tcp];
    let _: Option<SharedClient> = None;
    let _: fn(
        &Client,
        &[darkport::HostedService],
        darkport::HostOptions,
    ) -> Result<darkport::Host, darkport::HostError> = Client::host;
    let _: fn(&darkport::Listener, darkport::Precedence) -> Result<(), darkport::HostError> =
        darkport::Listener::set_precedence;
    let _: fn(&darkport::Listener, u16) -> Result<(), darkport::HostError> =
        darkport::Listener::set_cost;
    let _: fn(&darkport::Caller) -> Option<std::net::SocketAddr> = darkport::Caller::socket_addr;
}

/// `listen`, `accept` and `close` can run in spawned tasks, and a listener
/// can be shared between them.
#[allow(dead_code)]
fn hosting_is_spawnable(client: &Client, listener: &darkport::Listener) {
    fn spawnable<F: Future + Send>(_: F) {}
    spawnable(client.listen("echo", darkport::ListenOptions::default()));
    spawnable(listener.accept());
    spawnable(listener.close());
}

#[test]
fn hosting_types_can_cross_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<darkport::Listener>();
    send_sync::<darkport::Host>();
    send::<darkport::Accepted>();
    send::<darkport::IncomingStream>();
    send_sync::<darkport::HostError>();
}

#[test]
fn host_errors_become_io_errors() {
    let io: std::io::Error = darkport::HostError::Closed.into();
    assert_eq!(io.kind(), std::io::ErrorKind::NotConnected);
    let o = darkport::ListenOptions::default();
    assert_eq!(o.offers, darkport::DEFAULT_OFFERS);
    assert_eq!(o.precedence, darkport::Precedence::Default);
}

/// `enroll` returns the identity file it wrote, and its future can be
/// spawned.
#[allow(dead_code)]
fn enroll_is_spawnable(token: &str, out: &Path) {
    fn spawnable<F: Future<Output = Result<IdentityFile, EnrollError>> + Send>(_: F) {}
    spawnable(darkport::enroll(token, out));
}

#[test]
fn a_client_and_its_streams_can_cross_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Client>();
    send::<DialStream>();
    send::<SendHalf>();
    send::<RecvHalf>();
    send_sync::<DialError>();
}

#[test]
fn dial_errors_become_io_errors() {
    let e = DialError::NotAuthorized {
        service: "echo".into(),
        message: "no policy".into(),
    };
    assert_eq!(e.retry(), Retry::Final);
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
}

#[test]
fn default_options_race_both_transports() {
    let o = ClientOptions::default();
    assert_eq!(o.transport, TransportMode::Auto);
    assert_eq!(o.remember_tcp, darkport::REMEMBER_TCP);
    assert!(o.routers.is_empty(), "routers come from the controller");
}

/// The reason this crate exists beside `edge-client`: an application that
/// adds it gets no CLI machinery (argument parsing, metrics, a log
/// subscriber).
#[test]
fn the_sdk_pulls_in_no_cli_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
        .args([
            "--format",
            "{p}",
            "--package",
            "darkport",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.contains(&"edge-client"), "{tree}");
    for unwanted in [
        "clap",
        "prometheus-client",
        "tracing-subscriber",
        "darkport-cli",
        "anyhow",
    ] {
        assert!(
            !names.contains(&unwanted),
            "the SDK depends on {unwanted}:\n{tree}"
        );
    }
}
