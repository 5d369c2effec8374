//! What each command does, one module each, taking that command's parsed
//! arguments ([`crate::cli`]). `generate-assets` and `enroll` are
//! darkport-cli's, shared with the other binaries.

pub mod dial;
pub mod host;
pub mod run;
