//! `agentctl daemon`: keep the configured runners registered and running ([`crate::daemon`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::exit::Status;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Seconds between full resyncs with GitHub (jittered by ±10 %).
    #[arg(
        long,
        value_name = "SECS",
        env = "RUNNER_AGENT_RESYNC_SECS",
        default_value_t = 60
    )]
    pub resync_secs: u64,
    /// Seconds between liveness checks of the runners' services.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub check_secs: u64,
    /// Seconds to wait after a session conflict (listener exit 5) for the old session to expire
    /// before starting the runner again.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub session_wait_secs: u64,
    /// Milliseconds of the first retry delay after a failure (doubling up to the cap).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub backoff_base_ms: u64,
    /// Seconds of the longest retry delay.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub backoff_cap_secs: u64,
    /// Seconds GitHub is not called after it refused the credentials or a permission, unless a
    /// secret file changes first.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub circuit_secs: u64,
}

pub fn run(config_path: &Path, args: &DaemonArgs) -> anyhow::Result<Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = crate::daemon::Options {
        resync: Duration::from_secs(args.resync_secs.max(1)),
        check: Duration::from_secs(args.check_secs.max(1)),
        session_wait: Duration::from_secs(args.session_wait_secs),
        backoff_base: Duration::from_millis(args.backoff_base_ms.max(1)),
        backoff_cap: Duration::from_secs(args.backoff_cap_secs.max(1)),
        circuit_open: Duration::from_secs(args.circuit_secs.max(1)),
        ..crate::daemon::Options::default()
    };
    Ok(runtime.block_on(crate::daemon::run(config_path, &options))?)
}
