//! The GitHub emulator driven through a real HTTP client (reqwest) on loopback: every REST
//! endpoint and error, the runner service of `tests/PROTOCOL.md`, releases and downloads, rate
//! limits, faults and the control API.

// Test support code outside `#[test]` functions panics on a broken expectation, as tests do.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "emulator/support.rs"]
mod support;

#[path = "emulator/auth.rs"]
mod auth;
#[path = "emulator/control_api.rs"]
mod control_api;
#[path = "emulator/rate_limits.rs"]
mod rate_limits;
#[path = "emulator/releases.rs"]
mod releases;
#[path = "emulator/runner_side.rs"]
mod runner_side;
#[path = "emulator/runners_rest.rs"]
mod runners_rest;
