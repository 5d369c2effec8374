//! The Darkport controller: root of trust and keeper of policy.
//!
//! - [`ca`]: the certificate authority.
//! - [`store`]: persisted state (SQLite, PostgreSQL) and the policy
//!   snapshot channel.
//! - [`datadir`]: the data directory and `init`.
//! - [`server`]: the control API on QUIC: enrollment (no certificate
//!   needed), admin commands (admin certificate), router sync (router
//!   certificate; snapshots are pushed on every change) and router listing
//!   (client certificate).
//! - [`decide`]: the control API's decisions, pure and fed `now`: what a
//!   request may do given its peer ([`decide::route`]), whether a
//!   certificate is current, enrollment's and renewal's state changes.
//! - [`handlers`]: the admin API's handlers, one module per resource,
//!   over the store, with the time passed in.
//! - [`admin`]: the client side of the admin API, used by the CLI.
//! - [`print`](mod@print): how the CLI shows admin answers, as tables or JSON.
//!
//! The binary (`main.rs`, with its `cli.rs` and `commands/`) only parses
//! arguments and calls into these.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bounds;
pub mod ca;
pub mod datadir;
pub mod decide;
pub mod handlers;
pub mod metrics;
pub mod print;
pub mod server;
pub mod store;

pub use datadir::{init, DataDir, InitOptions};
pub use server::{run, run_with_metrics};
