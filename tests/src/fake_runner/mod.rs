//! The fake actions/runner release: a builder for `actions-runner-linux-<arch>-<ver>.tar.gz`
//! with the real layout and scripts, whose `bin/Runner.Listener` is the small Rust program in
//! [`listener`] speaking the emulator's protocol (tests/PROTOCOL.md) with the real command
//! line, files, messages and exit codes (`/work/shared/reference/actions-runner.md` §1-5).
//!
//! What differs from the real release, on purpose:
//! - `config.sh` skips the `ldd`/libicu dependency check (there is no .NET runtime).
//! - `bin/runsvc.sh` does in bash what `RunnerService.js` does (there is no node).
//! - `.credentials_rsaparams` holds random bytes in the RSA field names plus `publicKey`, the
//!   secret registered with the emulator (PROTOCOL.md), not a real RSA key.
//! - `bin/runnerversion` and `bin/runnerarch` carry the version and arch, since one compiled
//!   listener serves every fake version and arch.
//! - `bin/Runner.Worker` is a hard link to `bin/Runner.Listener` (one program, dispatching on its
//!   name). As the real one, the listener starts it per job as `<bin>/Runner.Worker spawnclient
//!   <in> <out>`; its pipes are its stdin and stdout, which carry JSON lines
//!   ([`listener::worker`]).
//!
//! Knobs for test speed (environment of the listener and scripts; defaults are the real values):
//! - `FAKE_RUNNER_SESSION_CONFLICT_SECONDS` (240): how long a session conflict is retried
//!   before exit 5; the final message names this number.
//! - `FAKE_RUNNER_SESSION_RETRY_SECONDS` (30): pause between session creation attempts.
//! - `FAKE_RUNNER_POLL_RETRY_SECONDS` (unset: random 15-30 s for the first 5 errors, then
//!   30-60 s): a fixed pause after a failed poll.
//! - `FAKE_RUNNER_RETRY_DELAY_SECONDS` (5): the relaunch pause of `run-helper.sh` (exit 2) and
//!   of `runsvc.sh`.

//!
//! Using it from a test (see `tests/tests/fake_runner_e2e.rs` for the whole loop):
//!
//! ```no_run
//! use runner_agent_tests::fake_runner::{build_release, listener_binary, ReleaseSpec};
//! let out = tempfile::tempdir()?;
//! let built = build_release(
//!     &ReleaseSpec {
//!         version: "2.336.0".into(),
//!         arch: "x64".into(),
//!         listener: listener_binary(),
//!         pad_bytes: 0,
//!         pad_files: 0,
//!     },
//!     out.path(),
//! )?;
//! // built.path = …/actions-runner-linux-x64-2.336.0.tar.gz; publish it on the emulator, or
//! // unpack it and run `config.sh --unattended --url <web url>` with ACTIONS_RUNNER_INPUT_TOKEN.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod builder;
pub mod listener;

pub use builder::{
    asset_name, build_release, listener_binary, BuildError, BuiltRelease, ReleaseSpec,
};
