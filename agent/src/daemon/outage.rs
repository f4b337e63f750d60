//! GitHub's runner list failing for a reason that may pass by itself (a 5xx, a connection
//! refused or reset, a timeout): one backoff for the whole host, beside the circuit that rate
//! limits and refused credentials open.
//!
//! Without it every pass lists again, and while a runner is stopped a pass runs at every liveness
//! check (5 s): about 720 calls an hour into an outage. With it the list is tried again after the
//! daemon's backoff (`--backoff-base-ms` doubling up to `--backoff-cap-secs`, jittered), so an
//! outage of an hour costs about a dozen calls once the cap is reached; the first success resets
//! it. Runners whose registration is valid keep running and are started again locally meanwhile:
//! only what needs GitHub (registering, label updates, removal) waits.
//!
//! The log says it once when the list first fails and once when it works again; the failures in
//! between are `debug`. `agentctl status` and the metrics file show it (`github_unreachable`).
//!
//! JIT slots ([`super::jit`]) call GitHub outside the list (a JIT configuration per slot, the
//! deletion of a slot's registration) and share it all: no slot calls while the backoff waits
//! or the circuit is open, and a slot's failure feeds them ([`shared_failure`]): one outage, one
//! backoff, one status line, however many slots wait.

use std::time::{Duration, Instant, SystemTime};

use super::state::{self, GithubOutage};
use super::{Circuit, Options};
use crate::github::GithubError;

/// What [`shared_failure`] did with a failed GitHub call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// A rate limit: no call to GitHub until it resets (the circuit, until then).
    Paused,
    /// Refused credentials or a missing permission: the circuit is open.
    CircuitOpen,
    /// GitHub unreachable: the host-wide backoff.
    BackingOff,
    /// An answer about this request only: the caller's own backoff.
    NotShared,
}

/// Book a failed GitHub call (`reason`: its redacted error chain; `by_list`: the runner list's,
/// not a JIT slot's) for the whole host: a rate limit pauses every call until it resets, refused
/// credentials or a missing permission open the circuit for [`Options::circuit_open`] (or until a
/// secret file changes), GitHub unreachable ([`unreachable`]) backs off host-wide. Each says
/// so in the log.
pub(super) fn shared_failure(
    err: &GithubError,
    reason: String,
    by_list: bool,
    circuit: &mut Option<Circuit>,
    backoff: &mut ListBackoff,
    options: &Options,
    now: Instant,
) -> Shared {
    if let Some(wait) = super::ratelimit::pause_github(err) {
        log::warn!(
            "GitHub's rate limit: no call to GitHub for {} s: {reason}",
            wait.as_secs()
        );
        *circuit = Some(Circuit {
            until: now + wait,
            reason,
        });
        Shared::Paused
    } else if super::deterministic_github(err) {
        log::error!(
            "GitHub refuses the credentials: {reason}; no call to GitHub until a secret file changes or {} passed",
            super::for_how_long(options.circuit_open)
        );
        *circuit = Some(Circuit {
            until: now + options.circuit_open,
            reason,
        });
        Shared::CircuitOpen
    } else if unreachable(err) {
        backoff.failed_by(reason, true, by_list, options, now);
        Shared::BackingOff
    } else {
        Shared::NotShared
    }
}

/// Whether `err` says GitHub could not be reached or failed on its side (not what it answered
/// about this host's request).
pub fn unreachable(err: &GithubError) -> bool {
    match err {
        GithubError::Request { .. } | GithubError::Decode { .. } | GithubError::GaveUp { .. } => {
            true
        }
        GithubError::Status { status, .. } => *status >= 500,
        _ => false,
    }
}

/// The current run of failed lists.
#[derive(Debug, Clone)]
struct Run {
    failures: u32,
    since: SystemTime,
    started: Instant,
    next: Instant,
    reason: String,
    unreachable: bool,
    /// The last failure was the runner list's (not a JIT slot's).
    by_list: bool,
    /// Nobody tried again since this instant: a working list ends the run whoever failed.
    stale: Instant,
}

/// The host-wide backoff of GitHub's runner list.
#[derive(Debug, Clone, Default)]
pub struct ListBackoff {
    run: Option<Run>,
}

impl ListBackoff {
    /// Whether the list must not be tried at `now`.
    pub fn waiting(&self, now: Instant) -> bool {
        self.run.as_ref().is_some_and(|r| r.next > now)
    }

    /// The reason of the failures, while there are any.
    pub fn reason(&self) -> Option<&str> {
        self.run.as_ref().map(|r| r.reason.as_str())
    }

    /// When the list is tried again, while it is failing.
    pub fn next(&self) -> Option<Instant> {
        self.run.as_ref().map(|r| r.next)
    }

    /// One more failed list at `now` (already redacted `reason`); how long until the next try.
    pub fn failed(
        &mut self,
        reason: String,
        unreachable: bool,
        options: &Options,
        now: Instant,
    ) -> Duration {
        self.failed_by(reason, unreachable, true, options, now)
    }

    /// [`ListBackoff::failed`] of the list (`by_list`) or of another call (a JIT slot's).
    pub fn failed_by(
        &mut self,
        reason: String,
        unreachable: bool,
        by_list: bool,
        options: &Options,
        now: Instant,
    ) -> Duration {
        let failures = self.run.as_ref().map_or(0, |r| r.failures) + 1;
        let delay = options.backoff(failures);
        let what = if unreachable {
            "GitHub is unreachable"
        } else {
            "GitHub's runner list fails"
        };
        match &mut self.run {
            None => {
                log::warn!(
                    "{what}: {reason}; runners with a registration keep running, registering, removing and new JIT slots wait; calling GitHub again in {} ms, then less often (at most every {} s)",
                    delay.as_millis(),
                    options.backoff_cap.as_secs()
                );
                self.run = Some(Run {
                    failures,
                    since: SystemTime::now(),
                    started: now,
                    next: now + delay,
                    reason,
                    unreachable,
                    by_list,
                    stale: now + delay + options.backoff_cap,
                });
            }
            Some(run) => {
                log::debug!(
                    "{what} ({failures} failed calls in a row): {reason}; calling GitHub again in {} ms",
                    delay.as_millis()
                );
                run.failures = failures;
                run.next = now + delay;
                run.reason = reason;
                run.unreachable = unreachable;
                run.by_list = by_list;
                run.stale = now + delay + options.backoff_cap;
            }
        }
        delay
    }

    /// A list worked: the backoff is over, unless what fails is another call (GitHub failing
    /// JIT configurations while its list works) that is still being tried: a list every resync
    /// must not restart that call's backoff from its base.
    pub fn succeeded(&mut self, now: Instant) {
        if self
            .run
            .as_ref()
            .is_some_and(|run| !run.by_list && now < run.stale)
        {
            return;
        }
        self.succeeded_with("GitHub's runner list", now);
    }

    /// A call to GitHub (`what`) worked: the backoff is over.
    pub fn succeeded_with(&mut self, what: &str, now: Instant) {
        if let Some(run) = self.run.take() {
            log::info!(
                "{what} works again, after {} failed call(s) over {} s",
                run.failures,
                now.saturating_duration_since(run.started).as_secs()
            );
        }
    }

    /// Forget the failures (a new configuration or secret): the next pass lists at once.
    pub fn reset(&mut self) {
        self.run = None;
    }

    /// The persisted form for `agentctl status`.
    pub fn snapshot(&self, now: Instant) -> Option<GithubOutage> {
        let run = self.run.as_ref()?;
        Some(GithubOutage {
            unreachable: run.unreachable,
            since: state::rfc3339(run.since).unwrap_or_default(),
            failures: run.failures,
            next_try: state::wall(run.next.max(now), now).unwrap_or_default(),
            reason: run.reason.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
            ..Options::default()
        }
    }

    #[test]
    fn failures_back_off_up_to_the_cap_and_a_success_resets() {
        let options = options();
        let mut backoff = ListBackoff::default();
        let now = Instant::now();
        assert!(!backoff.waiting(now));
        let first = backoff.failed("502".to_owned(), true, &options, now);
        assert!(first <= Duration::from_millis(120), "{first:?}");
        assert!(backoff.waiting(now));
        assert!(!backoff.waiting(now + first));
        let mut last = first;
        for _ in 0..10 {
            last = backoff.failed("502".to_owned(), true, &options, now);
        }
        assert!(last <= options.backoff_cap && last >= options.backoff_cap.mul_f64(0.8));
        let snap = backoff.snapshot(now).unwrap();
        assert_eq!(snap.failures, 11);
        assert!(snap.unreachable);
        assert_eq!(snap.reason, "502");
        backoff.succeeded(now);
        assert!(!backoff.waiting(now));
        assert!(backoff.snapshot(now).is_none());
        // Counted from one again.
        let again = backoff.failed("refused".to_owned(), true, &options, now);
        assert!(again <= Duration::from_millis(120), "{again:?}");
    }

    #[test]
    fn a_working_list_does_not_end_the_backoff_of_failing_jit_calls_still_tried() {
        let options = options();
        let now = Instant::now();
        let mut backoff = ListBackoff::default();
        backoff.failed_by("502".to_owned(), true, false, &options, now);
        backoff.failed_by("502".to_owned(), true, false, &options, now);
        backoff.succeeded(now + Duration::from_millis(300));
        assert_eq!(backoff.snapshot(now).unwrap().failures, 2);
        // Nobody tried again for longer than the cap: the list's word ends it.
        backoff.succeeded(now + Duration::from_secs(3));
        assert!(backoff.snapshot(now).is_none());
        // A list's failure is ended by a working list, a JIT slot's by a working slot.
        backoff.failed("502".to_owned(), true, &options, now);
        backoff.succeeded(now);
        assert!(backoff.snapshot(now).is_none());
        backoff.failed_by("502".to_owned(), true, false, &options, now);
        backoff.succeeded_with("GitHub (a JIT configuration)", now);
        assert!(backoff.snapshot(now).is_none());
    }

    #[test]
    fn a_failed_call_is_booked_for_the_host_by_kind() {
        let options = options();
        let url: url::Url = "https://api.github.com/repos/o/r/actions/runners/generate-jitconfig"
            .parse()
            .unwrap();
        let now = Instant::now();
        let book = |err: &GithubError| {
            let mut circuit = None;
            let mut backoff = ListBackoff::default();
            let shared = shared_failure(
                err,
                "why".to_owned(),
                false,
                &mut circuit,
                &mut backoff,
                &options,
                now,
            );
            (shared, circuit.map(|c| c.until), backoff.waiting(now))
        };
        // A 5xx: the host backs off, no circuit.
        let (shared, circuit, waiting) = book(&GithubError::Status {
            url: url.clone(),
            status: 502,
            message: "Bad Gateway".to_owned(),
        });
        assert_eq!((shared, circuit, waiting), (Shared::BackingOff, None, true));
        // A rate limit: every call waits for its reset.
        let (shared, circuit, waiting) = book(&GithubError::RateLimited {
            url: url.to_string(),
            status: 403,
            message: "API rate limit exceeded".to_owned(),
            reset_at: time::OffsetDateTime::now_utc() + time::Duration::seconds(120),
        });
        assert_eq!(shared, Shared::Paused);
        assert!(!waiting);
        let until = circuit.unwrap();
        assert!(until > now + Duration::from_secs(110) && until <= now + Duration::from_secs(120));
        // Refused credentials, a missing permission: the circuit, for an hour.
        for err in [
            GithubError::BadCredentials {
                url: url.to_string(),
                status: 401,
                message: "Bad credentials".to_owned(),
                hint: String::new(),
            },
            GithubError::MissingPermission {
                url: url.to_string(),
                status: 403,
                needed: "Administration: write".to_owned(),
                scope: "o/r".to_owned(),
                have: None,
                message: "Resource not accessible by personal access token".to_owned(),
            },
        ] {
            let (shared, circuit, waiting) = book(&err);
            assert_eq!(shared, Shared::CircuitOpen);
            assert_eq!(circuit, Some(now + super::super::CIRCUIT_OPEN));
            assert!(!waiting);
        }
        // An answer about the request itself: the caller's own business.
        let (shared, circuit, waiting) = book(&GithubError::Status {
            url,
            status: 422,
            message: "Validation Failed".to_owned(),
        });
        assert_eq!((shared, circuit, waiting), (Shared::NotShared, None, false));
    }

    #[test]
    fn only_failures_on_githubs_side_or_the_way_there_are_unreachable() {
        let url: url::Url = "https://api.github.com/repos/o/r/actions/runners"
            .parse()
            .unwrap();
        assert!(unreachable(&GithubError::Status {
            url: url.clone(),
            status: 502,
            message: "Bad Gateway".to_owned(),
        }));
        assert!(!unreachable(&GithubError::Status {
            url,
            status: 404,
            message: "Not Found".to_owned(),
        }));
        assert!(unreachable(&GithubError::GaveUp {
            url: "u".to_owned(),
            attempts: 5,
            elapsed: Duration::from_secs(3),
            last: "503".to_owned(),
        }));
    }
}
