//! What each command does, taking that command's parsed arguments
//! ([`crate::cli`]). `generate-assets` and `enroll` are darkport-cli's,
//! shared with the other binaries.

pub mod run;
