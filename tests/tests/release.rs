//! Runner release supply chain (`runner_agent::release`, `agentctl release`) against the GitHub
//! emulator on loopback: every checksum source, refusals, resume, retries, mirror, proxy, cache
//! re-verification, the shared tree, and malicious tarballs.

// Test support code outside `#[test]` functions panics on a broken expectation, as tests do.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "release/support.rs"]
mod support;

#[path = "release/cli.rs"]
mod cli;
#[path = "release/fetch.rs"]
mod fetch;
#[path = "release/install.rs"]
mod install;
