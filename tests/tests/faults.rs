//! The daemon's fault-injection suite (issue 6): `agentctl daemon` against the GitHub emulator
//! with the fake runner release, process backend, runners as `ra-runner`, real processes.
//!
//! Every case injects one fault, clears it, and ends by asserting that GitHub's runner list is
//! exactly the desired set (each name once, online, with the id the runner holds locally, no
//! orphan of this host) and that no secret (PAT, App key, registration/remove/installation
//! tokens) appears in the daemon's log. Cases print `RECOVERY <case> real <ms> emulator <ms>`:
//! the time from the fault cleared to every runner online, by the test's clock and by the
//! emulator's (which tests advance for session expiry and rate-limit resets, so the two can
//! differ). `scripts/bench-daemon` collects these lines and the API budget into a table.
//!
//! The daemon runs with fast timings (`--resync-secs 2 --check-secs 1 --session-wait-secs 2`,
//! backoff 0.5 s doubling up to 4 s), except the cases with a recovery target (deleted
//! registration, rotated secrets), which run with the production timings. The fake runner's
//! retry pauses are shortened through the `.env` the release ships (the listener loads it, as
//! the real one does). GitHub unreachable is every connection closed before an answer (a
//! `drop_after_bytes: 0` fault on every path), not a stopped listener.
//!
//! `kill -9` cases stop the daemon at an exact step with the emulator's `hold` fault
//! (tests/PROTOCOL.md): the request of that step is held (before or after the emulator handled
//! it), the test kills the daemon's process group (the daemon and its `config.sh`, as systemd
//! kills a unit's cgroup; the runners live in their own sessions, as their own units would) or
//! the daemon alone (its `config.sh` then finishes without it), and starts it again.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runner_agent_tests::emulator::{
    generate_app_key, Emulator, EmulatorOptions, Fault, HoldPoint, HoldRelease, PatSpec,
    RateLimitKind,
};
use runner_agent_tests::support::lab::{self, pem_lines, write_secret, REPO, VERSION};

const WAIT: Duration = Duration::from_secs(40);
const REGISTRATION_TOKEN: &str = "/api/v3/repos/octo/hello/actions/runners/registration-token";
const REMOVE_TOKEN: &str = "/api/v3/repos/octo/hello/actions/runners/remove-token";
const AGENTS: &str = "/_services/pipelines/_apis/distributedtask/pools/1/agents";

/// The fake runner's retry pauses, shortened (the real ones are 15-60 s).
const FAST_RUNNER_ENV: &str = "FAKE_RUNNER_SESSION_CONFLICT_SECONDS=3\n\
FAKE_RUNNER_SESSION_RETRY_SECONDS=1\n\
FAKE_RUNNER_POLL_RETRY_SECONDS=1\n\
FAKE_RUNNER_RETRY_DELAY_SECONDS=1\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    Pat,
    App,
}

struct Spec {
    count: u32,
    auth: Auth,
    /// Extra TOML appended to the configuration.
    extra: String,
    /// Mount a tmpfs of this many bytes as the cache directory.
    cache_tmpfs: Option<u64>,
    /// An injected primary rate limit resets after this many seconds.
    primary_reset_secs: Option<i64>,
}

impl Spec {
    fn pat(count: u32) -> Spec {
        Spec {
            count,
            auth: Auth::Pat,
            extra: String::new(),
            cache_tmpfs: None,
            primary_reset_secs: None,
        }
    }
}

/// The shared lab ([`lab::Lab`]) with the names the case wants registered.
struct Lab {
    lab: lab::Lab,
    desired: Vec<String>,
}

runner_agent_tests::deref_lab!(Lab.lab);

/// Publish the fake release `version` with the `.env` knobs (built once per listener build).
async fn publish(emu: &Emulator, version: &str) {
    lab::publish_with_env(emu, version, FAST_RUNNER_ENV).await;
}

impl Lab {
    async fn new(spec: Spec) -> Lab {
        let mut builder = lab::Lab::builder()
            .emulator(EmulatorOptions {
                long_poll: Duration::from_secs(1),
                exhausted_primary_reset_secs: spec.primary_reset_secs,
                ..EmulatorOptions::default()
            })
            .release_env(FAST_RUNNER_ENV)
            .count(spec.count, &spec.extra)
            .env("RUST_LOG", "info")
            // The daemon with fast timings.
            .daemon_flags(&[
                "--resync-secs",
                "2",
                "--check-secs",
                "1",
                "--backoff-base-ms",
                "500",
                "--backoff-cap-secs",
                "4",
                "--session-wait-secs",
                "2",
            ])
            // Its own process group: `kill_daemon(true)` kills it with its `config.sh`.
            .process_group()
            .wait(WAIT);
        if spec.auth == Auth::App {
            builder = builder.auth(lab::Auth::App);
        }
        if let Some(size) = spec.cache_tmpfs {
            builder = builder.cache_tmpfs(size);
        }
        let lab = builder.start().await;
        let desired = lab.names(spec.count);
        Lab { lab, desired }
    }

    /// The daemon with `timing` instead of the fast timings.
    fn start_daemon_with(&mut self, timing: &[&str]) {
        self.lab.start_daemon_exact(timing);
    }

    /// The daemon with the outage cases' backoff ([`OUTAGE_BACKOFF_BASE`] doubling up to
    /// [`OUTAGE_BACKOFF_CAP`]) and fast passes.
    fn start_daemon_for_outages(&mut self) {
        let base_ms = OUTAGE_BACKOFF_BASE.as_millis().to_string();
        let cap_secs = OUTAGE_BACKOFF_CAP.as_secs().to_string();
        self.start_daemon_with(&[
            "--resync-secs",
            "2",
            "--check-secs",
            "1",
            "--backoff-base-ms",
            &base_ms,
            "--backoff-cap-secs",
            &cap_secs,
            "--session-wait-secs",
            "2",
        ]);
    }

    /// Why the lab is not converged yet (`None` when it is): GitHub holds exactly the desired
    /// names, each once, online, with the id its directory holds; no directory or record of
    /// another name remains.
    fn divergence(&self) -> Option<String> {
        let list = self.emu.runners(Some(REPO));
        let mut names: Vec<&str> = list.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        let mut want: Vec<&str> = self.desired.iter().map(String::as_str).collect();
        want.sort_unstable();
        if names != want {
            return Some(format!("GitHub has {names:?}, want {want:?}"));
        }
        for r in &list {
            if self
                .pid(&r.name)
                .is_none_or(|pid| kill(Pid::from_raw(pid), None).is_err())
            {
                return Some(format!("`{}` has no live process", r.name));
            }
            if !self
                .root()
                .join("state/runners")
                .join(format!("{}.json", r.name))
                .is_file()
            {
                return Some(format!("`{}` has no record of the agent", r.name));
            }
            if r.status != "online" {
                return Some(format!("`{}` is {}", r.name, r.status));
            }
            if self.local_id(&r.name) != Some(r.id) {
                return Some(format!(
                    "`{}` is id {} on GitHub, {:?} locally",
                    r.name,
                    r.id,
                    self.local_id(&r.name)
                ));
            }
        }
        for dir in ["runners", "state/runners"] {
            if let Ok(entries) = std::fs::read_dir(self.root().join(dir)) {
                for entry in entries.flatten() {
                    let file = entry.file_name().to_string_lossy().into_owned();
                    let stem = file.split('.').next().unwrap_or_default().to_owned();
                    if !self.desired.contains(&stem) {
                        return Some(format!("orphan `{dir}/{file}`"));
                    }
                }
            }
        }
        None
    }

    /// Poll until converged; the time it took by real and emulator clocks.
    async fn converge(&self) -> (Duration, Duration) {
        let started = Instant::now();
        let emu_started = self.emu.now();
        loop {
            let why = self.divergence();
            let Some(why) = why else {
                let emu = self.emu.now() - emu_started;
                return (
                    started.elapsed(),
                    Duration::from_millis(emu.whole_milliseconds().max(0) as u64),
                );
            };
            assert!(
                started.elapsed() < WAIT,
                "never converged: {why}\nrunners: {:#?}\ndaemon log:\n{}",
                self.emu.runners(Some(REPO)),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Converge after the fault was cleared; print and return the recovery time.
    async fn recover(&self, case: &str) -> Duration {
        let (real, emu) = self.converge().await;
        println!(
            "RECOVERY {case} real_ms={} emulator_ms={}",
            real.as_millis(),
            emu.as_millis()
        );
        real
    }

    async fn wait_for(&self, what: &str, mut ok: impl FnMut(&Lab) -> bool) {
        self.lab.wait_until(what, || ok(self)).await;
    }

    /// The case's end: converged, and no secret in the daemon's log.
    async fn finish(self) {
        self.converge().await;
        self.assert_no_secret_in_log();
    }
}

async fn started(count: u32) -> Lab {
    let mut lab = Lab::new(Spec::pat(count)).await;
    lab.start_daemon();
    lab.converge().await;
    lab
}

// ---- reboot, deletions, sessions ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_starts_the_same_registrations_without_registering_again() {
    let mut lab = started(2).await;
    let ids: Vec<Option<u64>> = lab.desired.iter().map(|n| lab.local_id(n)).collect();
    let tokens = lab.requests("registration-token");
    lab.kill_daemon(true);
    lab.kill_runners();
    lab.wait_for("the runners to die", |lab| {
        lab.desired.iter().all(|n| {
            lab.pid(n)
                .is_none_or(|p| kill(Pid::from_raw(p), None).is_err())
        })
    })
    .await;
    // The host stays down long enough for GitHub to see the runners offline (their sessions,
    // left open by the crash, expire after 90 s).
    lab.emu.advance_clock(91);
    assert!(lab
        .emu
        .runners(Some(REPO))
        .iter()
        .all(|r| r.status == "offline"));
    lab.start_daemon();
    lab.recover("reboot").await;
    let after: Vec<Option<u64>> = lab.desired.iter().map(|n| lab.local_id(n)).collect();
    assert_eq!(after, ids, "registered again after a reboot");
    assert_eq!(lab.requests("registration-token"), tokens, "{}", lab.log());
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_deleted_while_idle_is_registered_again() {
    // The production timings (resync 60 s, check 5 s): recovery must come from the runner's
    // exit, not from a resync.
    let mut lab = Lab::new(Spec::pat(2)).await;
    lab.start_daemon_with(&[]);
    lab.converge().await;
    let old = lab.local_id(&lab.desired[0]).unwrap();
    assert!(lab.emu.delete_runner(old));
    let took = lab.recover("deleted-idle").await;
    assert_ne!(lab.local_id(&lab.desired[0]), Some(old));
    assert!(
        took < Duration::from_secs(10),
        "target: under 10 s, took {took:?}"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_deleted_while_busy_is_registered_again() {
    let lab = started(1).await;
    let name = lab.desired[0].clone();
    let job = lab.emu.queue_job(REPO, &["lab"], "sleep 30").unwrap();
    lab.wait_for("the runner to be busy", |lab| {
        lab.emu.runners(Some(REPO)).iter().any(|r| r.busy)
    })
    .await;
    let old = lab.local_id(&name).unwrap();
    assert!(lab.emu.delete_runner(old));
    let took = lab.recover("deleted-busy").await;
    assert_ne!(lab.local_id(&name), Some(old));
    assert!(
        took < Duration::from_secs(10),
        "target: under 10 s, took {took:?}"
    );
    let view = lab.emu.job(job).unwrap();
    assert_ne!(
        view.result.as_deref(),
        Some("succeeded"),
        "the job of a deleted runner cannot succeed: {view:?}"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_conflict_waits_for_the_old_session_to_expire() {
    let lab = started(1).await;
    let name = lab.desired[0].clone();
    let id = lab.local_id(&name).unwrap();
    // A listener killed with SIGKILL leaves its session open on GitHub: the next one
    // conflicts with it until it expires, retries, and exits 5.
    let pid = lab.pid(&name).unwrap();
    kill(Pid::from_raw(-pid), Signal::SIGKILL).unwrap();
    lab.wait_for("the conflict to be reported", |lab| {
        std::fs::read_to_string(lab.runner_dir(&name).join("_diag/agent-run.log"))
            .unwrap_or_default()
            .contains("SessionConflictException")
            || lab.log().contains("exited (5)")
    })
    .await;
    // The old session expires (90 s without a poll on GitHub's clock).
    lab.emu.advance_clock(91);
    lab.recover("session-conflict").await;
    assert_eq!(lab.local_id(&name), Some(id), "re-registered on a conflict");
    lab.finish().await;
}

// ---- GitHub failing ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_of_api_calls_failing_for_a_minute_does_not_stop_registration() {
    // The case as written: 30 % of API calls answer 5xx for a whole minute.
    const FAULTY: Duration = Duration::from_secs(60);
    let mut lab = Lab::new(Spec::pat(3)).await;
    lab.emu.inject(Fault::StatusShare {
        status: 502,
        percent: 30,
        count: 1_000_000,
        path_prefix: Some("/api/v3/".to_owned()),
    });
    let faults_began = Instant::now();
    lab.start_daemon();
    // Registrations happen (or back off and retry) through the failures; one registered runner
    // is then deleted on GitHub while they go on.
    lab.wait_for("a runner online through the faults", |lab| {
        lab.emu
            .runners(Some(REPO))
            .iter()
            .any(|r| r.status == "online")
    })
    .await;
    let deleted = lab
        .emu
        .runners(Some(REPO))
        .into_iter()
        .find(|r| r.status == "online")
        .map(|r| (r.name.clone(), lab.emu.delete_runner(r.id)));
    let deleted_at = faults_began.elapsed();
    // The rest of the minute; note whether every runner, the deleted one too, got (back) online
    // while it lasted.
    let mut converged_during = None;
    while faults_began.elapsed() < FAULTY {
        if converged_during.is_none() && lab.divergence().is_none() {
            converged_during = Some(faults_began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = lab.requests("/api/v3/");
    lab.emu.clear_faults();
    lab.recover("api-5xx-30pct-60s").await;
    println!(
        "(deleted on GitHub {deleted_at:?} into the faults: {deleted:?}; all desired runners \
         online while the faults lasted: {converged_during:?}; {calls} API calls in {} s)",
        FAULTY.as_secs()
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_rate_limit_is_waited_out() {
    // The limit resets 6 s after it is exhausted (`x-ratelimit-reset`); the daemon must not
    // call GitHub before, and recover after.
    let mut lab = Lab::new(Spec {
        primary_reset_secs: Some(6),
        ..Spec::pat(2)
    })
    .await;
    lab.start_daemon();
    lab.converge().await;
    lab.emu.inject(Fault::RateLimit {
        kind: RateLimitKind::Primary,
        count: 1,
        status: 403,
        retry_after: 0,
    });
    let reset = Instant::now() + Duration::from_secs(6);
    let old = lab.local_id(&lab.desired[0]).unwrap();
    assert!(lab.emu.delete_runner(old));
    let before = lab.requests("/api/v3/");
    lab.wait_for("the limit to reset", |_| Instant::now() >= reset)
        .await;
    let during = lab.requests("/api/v3/") - before;
    lab.recover("rate-limit-primary").await;
    println!("(API requests while limited for 6 s: {during})");
    assert!(
        lab.log().contains("rate limit"),
        "the limit was never met:\n{}",
        lab.log()
    );
    // The call that met the limit (the resync's list, or the registration's), not a retry
    // schedule into it.
    assert!(
        during <= 3,
        "the daemon kept calling a rate-limited API: {during} calls\n{}",
        lab.log()
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_rate_limits_with_retry_after_are_honoured() {
    let lab = started(2).await;
    lab.emu.inject(Fault::RateLimit {
        kind: RateLimitKind::Secondary,
        count: 3,
        status: 429,
        retry_after: 2,
    });
    let old = lab.local_id(&lab.desired[1]).unwrap();
    assert!(lab.emu.delete_runner(old));
    lab.wait_for("the limits to be used up", |lab| {
        lab.emu
            .request_counts()
            .values()
            .map(|c| c.count)
            .sum::<u64>()
            > 0
            && lab.log().contains("secondary")
    })
    .await;
    lab.emu.clear_faults();
    lab.recover("rate-limit-secondary").await;
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_unreachable_for_a_while_then_back() {
    let lab = started(2).await;
    // Every connection is closed before an answer (API, runner service, downloads): from the
    // host this looks like GitHub gone, long polls included.
    lab.emu.inject(Fault::DropAfterBytes {
        bytes: 0,
        count: 1_000_000,
        path_prefix: Some("/".to_owned()),
    });
    let old = lab.local_id(&lab.desired[0]).unwrap();
    assert!(lab.emu.delete_runner(old));
    let outage = Instant::now();
    lab.wait_for("an outage of 5 s", |_| {
        outage.elapsed() > Duration::from_secs(5)
    })
    .await;
    lab.emu.clear_faults();
    lab.recover("unreachable").await;
    lab.finish().await;
}

// ---- secrets rotated ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_pat_then_a_new_pat_file_is_picked_up_without_restart() {
    // Production timings: the new file must be picked up by its own event.
    let mut lab = Lab::new(Spec::pat(2)).await;
    lab.start_daemon_with(&[]);
    lab.converge().await;
    let old_pat = std::fs::read_to_string(lab.root().join("github-pat")).unwrap();
    assert!(lab.emu.revoke_token(old_pat.trim()));
    let old = lab.local_id(&lab.desired[0]).unwrap();
    assert!(lab.emu.delete_runner(old));
    lab.wait_for("the bad credentials to be reported", |lab| {
        lab.log().contains("Bad credentials")
    })
    .await;
    let pat = lab.emu.add_pat(PatSpec::classic(&["repo"]));
    write_secret(&lab.root().join("github-pat"), &pat);
    let took = lab.recover("pat-rotated").await;
    assert!(
        took < Duration::from_secs(2),
        "target: under 2 s, took {took:?}"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_app_key_is_picked_up_without_restart() {
    let mut lab = Lab::new(Spec {
        auth: Auth::App,
        ..Spec::pat(2)
    })
    .await;
    lab.start_daemon_with(&[]);
    lab.converge().await;
    let key = generate_app_key().unwrap();
    lab.emu
        .rotate_app_key(lab.app.unwrap(), &key.public_key_pem)
        .unwrap();
    lab.secrets.extend(pem_lines(&key.private_key_pem));
    let old = lab.local_id(&lab.desired[0]).unwrap();
    assert!(lab.emu.delete_runner(old));
    lab.wait_for("the refused key to be reported", |lab| {
        lab.log().contains("401") || lab.log().contains("credentials")
    })
    .await;
    write_secret(&lab.root().join("github-app.pem"), &key.private_key_pem);
    let took = lab.recover("app-key-rotated").await;
    assert!(
        took < Duration::from_secs(2),
        "target: under 2 s, took {took:?}"
    );
    lab.finish().await;
}

// ---- disk full ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_while_downloading_an_update_fails_cleanly_and_recovers() {
    // A `disable_update` runner the daemon upgrades itself. Its cache is a small tmpfs; once
    // the first release is in it, a filler leaves 8 MiB, less than the next release needs.
    let mut lab = Lab::new(Spec {
        cache_tmpfs: Some(400 << 20),
        ..Spec::pat(1)
    })
    .await;
    lab.edit_config(
        "labels = [\"lab\"]",
        "labels = [\"lab\"]\ndisable_update = true",
    );
    publish(&lab.emu, "2.337.0").await;
    lab.start_daemon();
    lab.converge().await;
    let name = lab.desired[0].clone();
    let id = lab.local_id(&name).unwrap();
    let old_pid = lab.pid(&name).unwrap();
    let mount = lab.cache_mount.clone().unwrap();
    let stat = nix::sys::statvfs::statvfs(&mount).unwrap();
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    let filler = mount.join("filler");
    std::fs::write(&filler, vec![0u8; (free - (8 << 20)) as usize]).unwrap();
    // The configuration asks for the new version.
    lab.edit_config(&format!("version = \"{VERSION}\""), "version = \"2.337.0\"");
    lab.sighup();
    lab.wait_for("the full disk to be reported", |lab| {
        let log = lab.log();
        log.contains("No space left on device") || log.contains("ENOSPC")
    })
    .await;
    // The old runner keeps running, registered, on its old version.
    assert!(
        kill(Pid::from_raw(old_pid), None).is_ok(),
        "old runner died"
    );
    assert_eq!(lab.pid(&name), Some(old_pid));
    assert!(lab.divergence().is_none(), "{:?}", lab.divergence());
    assert!(!lab.log().contains("upgraded to 2.337.0"), "{}", lab.log());
    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let cleared = Instant::now();
    let emu_cleared = lab.emu.now();
    lab.wait_for("the upgrade", |lab| {
        lab.log().contains("upgraded to 2.337.0")
    })
    .await;
    lab.converge().await;
    println!(
        "RECOVERY disk-full-update real_ms={} emulator_ms={}",
        cleared.elapsed().as_millis(),
        (lab.emu.now() - emu_cleared).whole_milliseconds()
    );
    assert_eq!(
        lab.local_id(&name),
        Some(id),
        "registered again for an upgrade"
    );
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.root().join(format!("state/runners/{name}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["version"], "2.337.0");
    lab.finish().await;
}

// ---- kill -9 at each registration step ----

/// A fresh lab whose daemon is stopped by `kill -9` at `step` of registering its runner, then
/// started again: it must converge to exactly the desired runner.
async fn killed_while_registering(
    case: &str,
    at: HoldPoint,
    method: &str,
    path: &str,
    group: bool,
    release: HoldRelease,
) -> Lab {
    let mut lab = Lab::new(Spec::pat(1)).await;
    lab.hold(at, method, path);
    lab.start_daemon();
    lab.wait_held(method, path).await;
    lab.restart_after_kill(case, group, release).await;
    lab
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_registration_token_was_minted() {
    let lab = killed_while_registering(
        "kill9-token-minted",
        HoldPoint::After,
        "POST",
        REGISTRATION_TOKEN,
        true,
        HoldRelease::Drop,
    )
    .await;
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_token_exchange_of_config_sh() {
    let lab = killed_while_registering(
        "kill9-config-exchange",
        HoldPoint::Before,
        "POST",
        "/api/v3/actions/runner-registration",
        true,
        HoldRelease::Drop,
    )
    .await;
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_github_registered_before_the_runner_file() {
    let lab = killed_while_registering(
        "kill9-registered-no-files",
        HoldPoint::After,
        "POST",
        AGENTS,
        true,
        HoldRelease::Drop,
    )
    .await;
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_runner_file_before_the_agents_record_and_start() {
    // Only the daemon dies: its `config.sh` finishes and writes `.runner`, nobody records or
    // starts the runner.
    let lab = killed_while_registering(
        "kill9-files-no-record",
        HoldPoint::After,
        "POST",
        AGENTS,
        false,
        HoldRelease::Proceed,
    )
    .await;
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_runner_starts() {
    // The runner was installed and spawned; its session request is held. The
    // runner lives on without the daemon and comes online when let go.
    let lab = killed_while_registering(
        "kill9-starting",
        HoldPoint::Before,
        "POST",
        "/_services/pipelines/_apis/distributedtask/pools/1/sessions",
        true,
        HoldRelease::Proceed,
    )
    .await;
    let tokens = lab.requests("registration-token");
    assert_eq!(tokens, 1, "registered twice\n{}", lab.log());
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_runner_starts_and_the_host_loses_power() {
    let mut lab = Lab::new(Spec::pat(1)).await;
    lab.hold_then(
        HoldPoint::Before,
        "POST",
        "/_services/pipelines/_apis/distributedtask/pools/1/sessions",
    )
    .await;
    lab.kill_daemon(true);
    lab.kill_runners();
    lab.emu.release_held(HoldRelease::Drop);
    lab.emu.advance_clock(91);
    lab.start_daemon();
    lab.recover("kill9-starting-power-cut").await;
    assert_eq!(lab.requests("registration-token"), 1, "{}", lab.log());
    lab.finish().await;
}

impl Lab {
    async fn hold_then(&mut self, at: HoldPoint, method: &str, path: &str) {
        self.hold(at, method, path);
        if self.daemon.is_none() {
            self.start_daemon();
        }
        self.wait_held(method, path).await;
    }

    /// Hold the next `method path` request at `at`.
    fn hold(&self, at: HoldPoint, method: &str, path: &str) {
        self.emu.inject(Fault::Hold {
            at,
            method: Some(method.to_owned()),
            path_prefix: Some(path.to_owned()),
            count: 1,
        });
    }

    /// Wait until the held request came.
    async fn wait_held(&self, method: &str, path: &str) {
        assert!(
            self.emu.wait_held(1, WAIT).await,
            "`{method} {path}` never came\n{}",
            self.log()
        );
    }

    /// `kill -9` of the daemon (with `group`, its process group), the held request let go
    /// with `release`, the daemon started again; converged, recovery time printed as `case`.
    async fn restart_after_kill(&mut self, case: &str, group: bool, release: HoldRelease) {
        self.kill_daemon(group);
        self.emu.release_held(release);
        self.start_daemon();
        self.recover(case).await;
    }
}

// ---- kill -9 at each removal step ----

/// Two runners converged, then the second is dropped from the configuration; the daemon is
/// killed at `step` of removing it and started again.
async fn killed_while_removing(
    case: &str,
    at: HoldPoint,
    method: &str,
    path: &str,
    group: bool,
    release: HoldRelease,
) -> Lab {
    let mut lab = started(2).await;
    lab.edit_config("count = 2", "count = 1");
    lab.desired.truncate(1);
    lab.hold(at, method, path);
    lab.sighup();
    lab.wait_held(method, path).await;
    lab.restart_after_kill(case, group, release).await;
    lab
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_remove_token_was_minted() {
    let lab = killed_while_removing(
        "kill9-remove-token",
        HoldPoint::After,
        "POST",
        REMOVE_TOKEN,
        true,
        HoldRelease::Drop,
    )
    .await;
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_github_deleted_the_runner_before_local_clean_up() {
    let lab = killed_while_removing(
        "kill9-remove-deleted",
        HoldPoint::After,
        "DELETE",
        AGENTS,
        true,
        HoldRelease::Drop,
    )
    .await;
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_config_sh_removed_before_the_agent_forgot_the_runner() {
    let lab = killed_while_removing(
        "kill9-remove-files-gone",
        HoldPoint::After,
        "DELETE",
        AGENTS,
        false,
        HoldRelease::Proceed,
    )
    .await;
    lab.finish().await;
}

// ---- API budget ----

/// Requests to GitHub's REST API (`/api/v3`), without `304 Not Modified` answers.
fn api_requests(emu: &Emulator) -> (u64, u64) {
    let counts = emu.request_counts();
    let api = counts
        .iter()
        .filter(|(route, _)| {
            route
                .split_once(' ')
                .is_some_and(|(_, p)| p.starts_with("/api/v3"))
        })
        .map(|(_, c)| c.count - c.not_modified)
        .sum();
    let lists = counts
        .iter()
        .filter(|(route, _)| route.starts_with("GET ") && route.ends_with("/actions/runners"))
        .map(|(_, c)| c.count)
        .sum();
    (api, lists)
}

/// `304 Not Modified` answers to the runner list.
fn lists_304(emu: &Emulator) -> u64 {
    emu.request_counts()
        .iter()
        .filter(|(route, _)| route.starts_with("GET ") && route.ends_with("/actions/runners"))
        .map(|(_, c)| c.not_modified)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_budget_at_steady_state_with_ten_runners() {
    let mut lab = Lab::new(Spec::pat(10)).await;
    lab.start_daemon();
    lab.converge().await;
    // Steady state: one more pass after convergence, then count over a window.
    let (_, lists0) = api_requests(&lab.emu);
    lab.wait_for("two resyncs", |lab| api_requests(&lab.emu).1 >= lists0 + 2)
        .await;
    let (api1, lists1) = api_requests(&lab.emu);
    let conditional_before = lists_304(&lab.emu);
    let window = Instant::now();
    lab.wait_for("a 12 s window", |_| {
        window.elapsed() >= Duration::from_secs(12)
    })
    .await;
    let (api2, lists2) = api_requests(&lab.emu);
    let conditional_in_window = lists_304(&lab.emu) - conditional_before;
    let passes = lists2 - lists1;
    let requests = api2 - api1;
    assert!(passes >= 4, "too few resyncs in the window: {passes}");
    // Production defaults: a resync every 60 s; the liveness check (every 5 s) makes no API
    // call. The daemon ran with a resync every 2 s: per pass × 60 passes an hour.
    let per_pass = requests as f64 / passes as f64;
    let per_hour = per_pass * 60.0;
    let conditional = lab
        .emu
        .request_counts()
        .values()
        .map(|c| c.not_modified)
        .sum::<u64>();
    println!(
        "BUDGET runners=10 window_s={:.1} resyncs={passes} api_requests_non_304={requests} per_resync={per_pass:.2} extrapolated_per_hour={per_hour:.1} (resync every 2 s here, 60 s in production: per resync x 60; the liveness check makes no API call; 304s so far: {conditional}, i.e. 60/h at worst if every list changed)",
        window.elapsed().as_secs_f64(),
    );
    assert!(per_hour <= 60.0, "over budget: {per_hour:.1} requests/h");
    // The list is read with its ETag: at steady state GitHub answers `304 Not Modified`.
    assert!(
        conditional_in_window > 0,
        "the runner list was not read conditionally (no 304): {:?}",
        lab.emu.request_counts()
    );
    lab.finish().await;
}

// ---- GitHub's runner list failing for a while: one backoff for the host ----

/// The backoff of the outage case (`--backoff-base-ms`, `--backoff-cap-secs`).
const OUTAGE_BACKOFF_BASE: Duration = Duration::from_millis(500);
const OUTAGE_BACKOFF_CAP: Duration = Duration::from_secs(4);

/// The most list attempts a backoff from `base` doubling up to `cap` allows in `window`: the
/// n-th failure waits at least 0.8 × min(base × 2^(n-1), cap) (the jitter is ±20 %), the first
/// attempt may come at once.
fn attempts_allowed(base: Duration, cap: Duration, window: Duration) -> u64 {
    let mut attempts = 1;
    let mut at = Duration::ZERO;
    loop {
        let exp = base.saturating_mul(1u32 << (attempts - 1).min(16));
        at += exp.min(cap).mul_f64(0.8);
        if at > window {
            return attempts;
        }
        attempts += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_runner_list_backs_off_while_local_runners_keep_running() {
    let mut lab = Lab::new(Spec::pat(2)).await;
    lab.start_daemon_for_outages();
    lab.converge().await;
    let (deleted, restarted) = (lab.desired[0].clone(), lab.desired[1].clone());
    let restarted_id = lab.local_id(&restarted).unwrap();
    // GitHub's REST API answers 502 to everything; its runner service stays up, so the
    // listeners that run keep their sessions.
    rest_502(&lab.emu);
    let outage = Instant::now();
    let (_, lists_before) = api_requests(&lab.emu);
    // A runner that needs GitHub (its registration deleted: registering again needs a token)
    // keeps the daemon passing at every liveness check, which used to list every time.
    assert!(lab.emu.delete_runner(lab.local_id(&deleted).unwrap()));
    // A crashed listener with a valid registration is started again locally, outage or not.
    let old_pid = lab.pid(&restarted).unwrap();
    kill(Pid::from_raw(-old_pid), Signal::SIGKILL).unwrap();
    // Its session, left open, expires (90 s without a poll on GitHub's clock; the other
    // runner's registration is gone, so it has none to lose).
    lab.emu.advance_clock(91);
    lab.wait_for(
        "the crashed runner started again during the outage",
        |lab| {
            lab.pid(&restarted)
                .is_some_and(|pid| pid != old_pid && kill(Pid::from_raw(pid), None).is_ok())
        },
    )
    .await;
    lab.wait_for("the restarted runner online again", |lab| {
        lab.emu
            .runners(Some(REPO))
            .iter()
            .any(|r| r.name == restarted && r.status == "online" && r.session_open)
    })
    .await;
    assert_eq!(lab.local_id(&restarted), Some(restarted_id));
    let window = Duration::from_secs(12);
    lab.wait_for("an outage of 12 s", |_| outage.elapsed() >= window)
        .await;
    let (_, lists_after) = api_requests(&lab.emu);
    let elapsed = outage.elapsed();
    // `agentctl status` (it lists on GitHub itself, so after the count) says that GitHub is
    // unreachable and when the next try is.
    lab.wait_for("status naming the outage", |lab| {
        let out = lab.run(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("github: unreachable since") && text.contains("next try: ")
    })
    .await;
    lab.emu.clear_faults();
    let during = lists_after - lists_before;
    // One more for a list that was on its way when the fault was injected.
    let bound = attempts_allowed(OUTAGE_BACKOFF_BASE, OUTAGE_BACKOFF_CAP, elapsed) + 1;
    // With the production backoff (2 s doubling up to 5 min), an hour of outage at most:
    let hourly = attempts_allowed(
        runner_agent::daemon::BACKOFF_BASE,
        runner_agent::daemon::BACKOFF_CAP,
        Duration::from_secs(3600),
    );
    println!(
        "OUTAGE list_calls={during} window_s={:.1} bound={bound} (backoff {} ms doubling up to {} s; without it a list per liveness check); production: at most {hourly} lists per hour of outage (was up to 720)",
        elapsed.as_secs_f64(),
        OUTAGE_BACKOFF_BASE.as_millis(),
        OUTAGE_BACKOFF_CAP.as_secs()
    );
    assert!(
        during <= bound,
        "the daemon listed {during} times in {elapsed:?} of outage, the backoff allows {bound}\n{}",
        lab.log()
    );
    assert!(
        during >= 2,
        "the daemon stopped trying: {during}\n{}",
        lab.log()
    );
    lab.recover("list-5xx-backoff").await;
    let log = lab.log();
    // Said once when it began and once when it ended, not at every failed list.
    assert_eq!(log.matches("GitHub is unreachable").count(), 1, "{log}");
    assert!(log.contains("GitHub's runner list works again"), "{log}");
    lab.finish().await;
}

// ---- JIT slots during an outage: behind the same host-wide backoff ----

/// JIT-config calls (`POST …/generate-jitconfig`) and every REST call the emulator answered.
fn jit_calls(emu: &Emulator) -> (u64, u64) {
    let counts = emu.request_counts();
    let jit = counts
        .iter()
        .filter(|(route, _)| route.ends_with("/generate-jitconfig"))
        .map(|(_, c)| c.count)
        .sum();
    let api = counts
        .iter()
        .filter(|(route, _)| {
            route
                .split_once(' ')
                .is_some_and(|(_, p)| p.starts_with("/api/v3"))
        })
        .map(|(_, c)| c.count)
        .sum();
    (jit, api)
}

/// GitHub's REST API answering 502 to everything (its runner service stays up).
fn rest_502(emu: &Emulator) {
    emu.inject(Fault::Status {
        status: 502,
        count: 1_000_000,
        path_prefix: Some("/api/v3/".to_owned()),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jit_slots_share_the_host_wide_backoff_while_github_answers_502() {
    const SLOTS: u32 = 3;
    let window = Duration::from_secs(5);
    // The most calls one backoff allows in the window; one more for a call on its way when the
    // fault came. Without the shared backoff each slot would back off on its own (×3).
    let bound = attempts_allowed(OUTAGE_BACKOFF_BASE, OUTAGE_BACKOFF_CAP, window) + 1;
    // Three JIT slots and one plain runner.
    let mut lab = Lab::new(Spec {
        extra: "ephemeral = \"jit\"\n\n[[runner]]\nname = \"steady\"\n".to_owned(),
        ..Spec::pat(SLOTS)
    })
    .await;
    lab.desired.push("steady".to_owned());
    let slots: Vec<String> = lab.names(SLOTS);

    // 1. The daemon starts while GitHub is down (a host booting into an outage): every slot
    //    needs a JIT configuration, and they ask for one on a single backoff.
    rest_502(&lab.emu);
    let (jit_before, api_before) = jit_calls(&lab.emu);
    let outage = Instant::now();
    lab.start_daemon_for_outages();
    lab.wait_for("an outage of 5 s", |_| outage.elapsed() >= window)
        .await;
    let (jit_after, api_after) = jit_calls(&lab.emu);
    let elapsed = outage.elapsed();
    // `agentctl status` (it lists on GitHub itself, so after the count) says it once for the
    // host (the text form of this is the list outage case's), and each slot says what it waits
    // for. It may exit non-zero while its own list fails: the daemon's part is what counts.
    let out = lab.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outage_view = &status["daemon"]["github_unreachable"];
    assert!(
        outage_view["failures"].as_u64().is_some_and(|f| f >= 2)
            && outage_view["unreachable"] == true
            && outage_view["next_try"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
        "{status:#}"
    );
    for name in &slots {
        let view = lab::Lab::daemon_view(&status, name);
        assert!(
            view["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("waiting for GitHub") || e.contains("502")),
            "{name}: {view:#}"
        );
    }
    lab.emu.clear_faults();
    let (jit_during, api_during) = (jit_after - jit_before, api_after - api_before);
    let hourly = attempts_allowed(
        runner_agent::daemon::BACKOFF_BASE,
        runner_agent::daemon::BACKOFF_CAP,
        Duration::from_secs(3600),
    );
    println!(
        "JIT_OUTAGE start slots={SLOTS} jit_config_calls={jit_during} all_api_calls={api_during} window_s={:.1} bound={bound} (backoff {} ms doubling up to {} s, one for the slots and the list); production: at most {hourly} calls to GitHub per hour of outage for the whole host",
        elapsed.as_secs_f64(),
        OUTAGE_BACKOFF_BASE.as_millis(),
        OUTAGE_BACKOFF_CAP.as_secs()
    );
    assert!(
        (1..=bound).contains(&jit_during) && api_during <= bound,
        "{jit_during} JIT-config calls, {api_during} API calls in {elapsed:?} of outage, the backoff allows {bound}\n{}",
        lab.log()
    );
    // GitHub back: every slot online, the plain runner registered.
    let recovered = lab.recover("jit-502-start").await;
    assert!(recovered < OUTAGE_BACKOFF_CAP * 2, "{recovered:?}");

    // 2. GitHub down again while every listener goes (slots ended, the plain runner crashed):
    //    the plain runner is started again locally at once; each slot's registration must be
    //    deleted and a new configuration minted, all on the one backoff.
    let first_ids: Vec<u64> = slots.iter().map(|n| lab.local_id(n).unwrap()).collect();
    rest_502(&lab.emu);
    let outage = Instant::now();
    let (jit_before, api_before) = jit_calls(&lab.emu);
    let steady_pid = lab.pid("steady").unwrap();
    for name in &slots {
        kill(Pid::from_raw(-lab.pid(name).unwrap()), Signal::SIGKILL).unwrap();
    }
    kill(Pid::from_raw(-steady_pid), Signal::SIGKILL).unwrap();
    // Its session, left open, expires (90 s without a poll on GitHub's clock).
    lab.emu.advance_clock(91);
    lab.wait_for("the plain runner started again during the outage", |lab| {
        lab.pid("steady")
            .is_some_and(|pid| pid != steady_pid && kill(Pid::from_raw(pid), None).is_ok())
    })
    .await;
    lab.wait_for("an outage of 5 s", |_| outage.elapsed() >= window)
        .await;
    let (jit_after, api_after) = jit_calls(&lab.emu);
    let elapsed = outage.elapsed();
    lab.emu.clear_faults();
    let (jit_during, api_during) = (jit_after - jit_before, api_after - api_before);
    println!(
        "JIT_OUTAGE ended slots={SLOTS} jit_config_calls={jit_during} all_api_calls={api_during} window_s={:.1} bound={bound} (the slots' registrations are deleted before new ones are minted)",
        elapsed.as_secs_f64(),
    );
    assert!(
        jit_during <= bound && (2..=bound).contains(&api_during),
        "{jit_during} JIT-config calls, {api_during} API calls in {elapsed:?} of outage, the backoff allows {bound}\n{}",
        lab.log()
    );
    let recovered = lab.recover("jit-502-ended").await;
    assert!(recovered < OUTAGE_BACKOFF_CAP * 2, "{recovered:?}");
    for (name, old) in slots.iter().zip(&first_ids) {
        assert_ne!(lab.local_id(name), Some(*old), "{name} kept its old slot");
    }
    let log = lab.log();
    // Said once per outage, not per slot or per failed call.
    assert_eq!(log.matches("GitHub is unreachable").count(), 2, "{log}");
    assert!(log.contains("works again"), "{log}");
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jit_slots_stop_calling_on_a_revoked_pat_and_fill_at_once_with_a_new_one() {
    const SLOTS: u32 = 2;
    let mut lab = Lab::new(Spec {
        extra: "ephemeral = \"jit\"\n".to_owned(),
        ..Spec::pat(SLOTS)
    })
    .await;
    lab.start_daemon();
    lab.converge().await;
    let slots = lab.names(SLOTS);
    let old_pat = std::fs::read_to_string(lab.root().join("github-pat")).unwrap();
    assert!(lab.emu.revoke_token(old_pat.trim()));
    // Every slot ends: deleting its registration and minting the next need GitHub, which now
    // refuses the credentials. The first refusal opens the daemon's circuit for every call.
    for name in &slots {
        kill(Pid::from_raw(-lab.pid(name).unwrap()), Signal::SIGKILL).unwrap();
    }
    lab.wait_for("the circuit to open", |lab| {
        lab.log().contains("GitHub refuses the credentials")
    })
    .await;
    let (_, api_before) = jit_calls(&lab.emu);
    let quiet = Instant::now();
    lab.wait_for("4 s with the circuit open", |_| {
        quiet.elapsed() >= Duration::from_secs(4)
    })
    .await;
    let (_, api_after) = jit_calls(&lab.emu);
    // No call while it is open (backoff 0.5 s doubling up to 4 s would have made ~4).
    assert_eq!(api_after - api_before, 0, "{}", lab.log());
    let log = lab.log();
    assert_eq!(
        log.matches("GitHub refuses the credentials").count(),
        1,
        "{log}"
    );
    let status = lab.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        status["daemon"]["github_circuit"]
            .as_str()
            .is_some_and(|c| c.contains("Bad credentials")),
        "{status:#}"
    );
    // A new PAT file: the circuit closes and every slot is filled at once.
    let pat = lab.emu.add_pat(PatSpec::classic(&["repo"]));
    write_secret(&lab.root().join("github-pat"), &pat);
    let took = lab.recover("jit-pat-rotated").await;
    assert!(
        took < Duration::from_secs(2),
        "target: under 2 s, took {took:?}"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jit_configs_failing_alone_back_off_although_the_runner_list_works() {
    const SLOTS: u32 = 2;
    let window = Duration::from_secs(5);
    let bound = attempts_allowed(OUTAGE_BACKOFF_BASE, OUTAGE_BACKOFF_CAP, window) + 1;
    let mut lab = Lab::new(Spec {
        extra: "ephemeral = \"jit\"\n".to_owned(),
        ..Spec::pat(SLOTS)
    })
    .await;
    // A partial outage: GitHub mints no JIT configuration (502), its runner list works. Still
    // one backoff for the host: the list waits with the slots (a working list would otherwise
    // restart the slots' backoff from its base at every resync).
    lab.emu.inject(Fault::Status {
        status: 502,
        count: 1_000_000,
        path_prefix: Some("/api/v3/repos/octo/hello/actions/runners/generate-jitconfig".to_owned()),
    });
    let (jit_before, _) = jit_calls(&lab.emu);
    let (_, lists_before) = api_requests(&lab.emu);
    let outage = Instant::now();
    lab.start_daemon();
    lab.wait_for("a partial outage of 5 s", |_| outage.elapsed() >= window)
        .await;
    let (jit_after, _) = jit_calls(&lab.emu);
    let (_, lists_after) = api_requests(&lab.emu);
    lab.emu.clear_faults();
    let (jit_during, lists_during) = (jit_after - jit_before, lists_after - lists_before);
    println!(
        "JIT_OUTAGE partial slots={SLOTS} jit_config_calls={jit_during} list_calls={lists_during} window_s={:.1} bound={bound}",
        outage.elapsed().as_secs_f64()
    );
    assert!(
        jit_during >= 1 && jit_during + lists_during <= bound,
        "{jit_during} JIT-config calls and {lists_during} lists in {window:?}, the backoff allows {bound}\n{}",
        lab.log()
    );
    lab.recover("jit-502-partial").await;
    let log = lab.log();
    assert_eq!(log.matches("GitHub is unreachable").count(), 1, "{log}");
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jit_slots_wait_out_the_primary_rate_limit() {
    const SLOTS: u32 = 2;
    // The limit resets 6 s after it is exhausted (`x-ratelimit-reset`).
    let mut lab = Lab::new(Spec {
        extra: "ephemeral = \"jit\"\n".to_owned(),
        primary_reset_secs: Some(6),
        ..Spec::pat(SLOTS)
    })
    .await;
    lab.start_daemon();
    lab.converge().await;
    lab.emu.inject(Fault::RateLimit {
        kind: RateLimitKind::Primary,
        count: 1,
        status: 403,
        retry_after: 0,
    });
    let reset = Instant::now() + Duration::from_secs(6);
    let before = lab.requests("/api/v3/");
    // Every slot ends: its registration to delete, a new configuration to mint.
    for name in &lab.names(SLOTS) {
        kill(Pid::from_raw(-lab.pid(name).unwrap()), Signal::SIGKILL).unwrap();
    }
    lab.wait_for("the limit to reset", |_| Instant::now() >= reset)
        .await;
    let during = lab.requests("/api/v3/") - before;
    let took = lab.recover("jit-rate-limit-primary").await;
    println!("(API requests while limited for 6 s with {SLOTS} JIT slots waiting: {during})");
    let log = lab.log();
    assert!(
        log.contains("GitHub's rate limit: no call to GitHub"),
        "the limit was never met:\n{log}"
    );
    // The call that met the limit, no retry schedule into it (the backoff would make ~5).
    assert!(
        during <= 2,
        "the daemon kept calling a rate-limited API: {during} calls\n{log}"
    );
    assert!(took < OUTAGE_BACKOFF_CAP, "{took:?}");
    lab.finish().await;
}

// ---- ghosts ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_ghost_of_this_host_is_deleted_on_github() {
    // Three runners; the host then loses the third one's directory and the agent's record of
    // it (a disk replaced, a reinstall) while it was stopped, and the configuration drops it:
    // GitHub still lists it, offline, with this host's marker label.
    let mut lab = started(3).await;
    lab.signal(Signal::SIGTERM);
    assert_eq!(lab.wait_exit(), Some(0), "{}", lab.log());
    let ghost = lab.desired[2].clone();
    let ghost_id = lab.local_id(&ghost).unwrap();
    // SIGTERM: the listener closes its session, GitHub shows it offline at once.
    kill(Pid::from_raw(-lab.pid(&ghost).unwrap()), Signal::SIGTERM).unwrap();
    lab.wait_for("the ghost offline", |lab| {
        lab.emu
            .runners(Some(REPO))
            .iter()
            .any(|r| r.id == ghost_id && r.status == "offline")
    })
    .await;
    std::fs::remove_dir_all(lab.runner_dir(&ghost)).unwrap();
    for ext in ["json", "pid"] {
        let _ = std::fs::remove_file(lab.root().join(format!("state/runners/{ghost}.{ext}")));
    }
    lab.edit_config("count = 3", "count = 2");
    lab.desired.truncate(2);

    lab.start_daemon();
    lab.recover("ghost").await;
    assert!(
        lab.log()
            .contains(&format!("deleting ghost runner `{ghost}` (id {ghost_id})")),
        "{}",
        lab.log()
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_downloading_the_runner_release() {
    // Step 0 of registering: the runner package is being fetched into the cache (the download
    // request held, then cut): nothing of it may pass for a good cache or a runner directory.
    let lab = killed_while_registering(
        "kill9-downloading",
        HoldPoint::After,
        "GET",
        "/_objects/",
        true,
        HoldRelease::Drop,
    )
    .await;
    assert_eq!(lab.requests("registration-token"), 1, "{}", lab.log());
    lab.finish().await;
}
