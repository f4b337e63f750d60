//! runner-agent keeps GitHub Actions self-hosted runners on lab hosts registered, healthy and
//! able to reach their hardware (`/dev/kvm`, serial-attached boards, power relays).
//!
//! Layout (each module owns its error type and calls only the modules listed above it):
//! - [`exit`]: the process exit statuses every command shares.
//! - [`atomic`]: files replaced whole (state, records, leases), safe across crashes.
//! - [`redact`]: the rule that keeps token values out of every log line and message.
//! - [`logging`]: journald under systemd, a readable stderr logger otherwise.
//! - [`config`]: `/etc/runner-agent/agent.toml`, parsed strictly into a resolved [`config::Config`].
//! - [`boards`]: board identities, leases, power, health probe, job environment, udev rules.
//! - [`doctor`]: `agentctl doctor`, hardware and GitHub checks run as the runner user.
//! - [`github`]: a small typed client of GitHub's REST API.
//! - [`release`]: runner releases: resolve, download, verify, cache, unpack, install.
//! - [`runner`]: register, start, stop, remove and purge runners; their status.
//! - [`service`]: how a runner is run: the runner's systemd unit with our drop-in, or a process.
//! - [`oneshot`]: `agentctl oneshot`, one ephemeral runner for one job on a throwaway host.
//! - [`cli`]: the `agentctl` subcommands, thin wrappers over the modules above.

pub mod atomic;
pub mod boards;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod exit;
pub mod github;
pub mod logging;
pub mod oneshot;
pub mod redact;
pub mod release;
pub mod runner;
pub mod service;
