//! The pure half of the reconcile loop: what to do, given what is wanted and what is seen.
//!
//! [`plan`] never touches the system; the loop in [`super`] observes, calls it and applies the
//! actions through [`crate::runner::Lifecycle`].

use std::collections::BTreeMap;
use std::time::Instant;

use crate::runner::RemoteRunner;

/// A configured runner and the labels it should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRunner {
    pub name: String,
    pub labels: Vec<String>,
}

/// A runner this host has state for (configured or only recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRunner {
    pub name: String,
    /// The id in its `.runner`, if configured.
    pub id: Option<u64>,
    /// Its service is running.
    pub running: bool,
    /// It runs a job, as this host sees it ([`super::busy`]).
    pub busy: bool,
    /// The labels it was registered (or last updated) with.
    pub labels: Vec<String>,
}

/// Why a runner must not be touched for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Backoff after a failure: retry from this instant.
    Until(Instant),
    /// A deterministic failure (bad credentials, missing permission): no call until it closes.
    Circuit,
    /// The runner's board cannot take jobs (missing, ambiguous, failed its health probe), with
    /// the reason: the runner is kept offline (service stopped, registration kept) until the
    /// board is back. A busy runner finishes its job first.
    Board(String),
}

/// What the loop saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub local: Vec<LocalRunner>,
    /// GitHub's list of the scope's runners; `None` without REST access.
    pub remote: Option<Vec<RemoteRunner>>,
    /// This host's owner label ([`crate::runner::owner_label`]).
    pub marker: String,
    pub gates: BTreeMap<String, Gate>,
}

/// One step of a reconcile pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Register (again, with a fresh token): not configured locally, or GitHub forgot it.
    Register(String),
    /// Registered but not running (a reboot, a crash): start it, no re-registration.
    Start(String),
    /// Registered with other labels than configured.
    UpdateLabels(String),
    /// Local state of a runner no longer configured.
    Remove(String),
    /// An offline registration carrying this host's label that no configured runner owns.
    DeleteGhost(u64, String),
    /// Backing off: nothing for this runner until then.
    Wait(String, Instant),
    /// Take a running runner offline (stop its service, keep its registration), with the reason.
    Stop(String, String),
}

fn same_labels(a: &[String], b: &[String]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| b.iter().any(|y| y.eq_ignore_ascii_case(x)))
}

/// The actions that bring `observed` to `desired` at `now`.
pub fn plan(desired: &[DesiredRunner], observed: &Observed, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    for want in desired {
        match observed.gates.get(&want.name) {
            Some(Gate::Circuit) => continue,
            Some(Gate::Until(until)) if *until > now => {
                actions.push(Action::Wait(want.name.clone(), *until));
                continue;
            }
            Some(Gate::Board(reason)) => {
                if let Some(local) = observed
                    .local
                    .iter()
                    .find(|l| l.name == want.name && l.running)
                {
                    // A job running on the board ends first (it fails or finishes on its own).
                    let busy = local.busy
                        || observed.remote.as_ref().is_some_and(|list| {
                            list.iter().any(|r| Some(r.id) == local.id && r.busy)
                        });
                    if !busy {
                        actions.push(Action::Stop(want.name.clone(), reason.clone()));
                    }
                }
                continue;
            }
            _ => {}
        }
        let local = observed.local.iter().find(|l| l.name == want.name);
        let Some((local, id)) = local.and_then(|l| l.id.map(|id| (l, id))) else {
            actions.push(Action::Register(want.name.clone()));
            continue;
        };
        if let Some(list) = &observed.remote {
            if !list.iter().any(|r| r.id == id) {
                actions.push(Action::Register(want.name.clone()));
                continue;
            }
        }
        if !same_labels(&local.labels, &want.labels) {
            actions.push(Action::UpdateLabels(want.name.clone()));
        }
        if !local.running {
            actions.push(Action::Start(want.name.clone()));
        }
    }
    for local in &observed.local {
        if !desired.iter().any(|d| d.name == local.name) {
            actions.push(Action::Remove(local.name.clone()));
        }
    }
    if let Some(list) = &observed.remote {
        let owned_ids: Vec<u64> = observed
            .local
            .iter()
            .filter(|l| desired.iter().any(|d| d.name == l.name))
            .filter_map(|l| l.id)
            .collect();
        for remote in list {
            let ours = remote
                .labels
                .iter()
                .any(|l| l.eq_ignore_ascii_case(&observed.marker));
            let wanted = desired
                .iter()
                .any(|d| d.name.eq_ignore_ascii_case(&remote.name));
            // A desired name with another id than the local one is a stale duplicate; while
            // registration of that name is pending (no local id), leave it to `register`.
            let stale = wanted
                && !owned_ids.contains(&remote.id)
                && observed
                    .local
                    .iter()
                    .any(|l| l.name.eq_ignore_ascii_case(&remote.name) && l.id.is_some());
            if ours && remote.status == "offline" && (!wanted || stale) {
                actions.push(Action::DeleteGhost(remote.id, remote.name.clone()));
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MARKER: &str = "host-lab1";

    fn want(name: &str) -> DesiredRunner {
        DesiredRunner {
            name: name.to_owned(),
            labels: vec!["kvm".to_owned(), MARKER.to_owned()],
        }
    }

    fn local(name: &str, id: Option<u64>, running: bool) -> LocalRunner {
        LocalRunner {
            name: name.to_owned(),
            id,
            running,
            busy: false,
            labels: vec!["kvm".to_owned(), MARKER.to_owned()],
        }
    }

    fn remote(id: u64, name: &str, status: &str, marker: &str) -> RemoteRunner {
        RemoteRunner {
            id,
            name: name.to_owned(),
            status: status.to_owned(),
            busy: false,
            labels: vec![
                "self-hosted".to_owned(),
                "kvm".to_owned(),
                marker.to_owned(),
            ],
            custom_labels: vec!["kvm".to_owned(), marker.to_owned()],
        }
    }

    fn observed(local: Vec<LocalRunner>, remote: Option<Vec<RemoteRunner>>) -> Observed {
        Observed {
            local,
            remote,
            marker: MARKER.to_owned(),
            gates: BTreeMap::new(),
        }
    }

    #[test]
    fn a_rebooted_host_starts_its_registered_runners_without_registering_again() {
        let seen = observed(
            vec![local("r1", Some(7), false), local("r2", Some(8), true)],
            Some(vec![
                remote(7, "r1", "offline", MARKER),
                remote(8, "r2", "online", MARKER),
            ]),
        );
        let actions = plan(&[want("r1"), want("r2")], &seen, Instant::now());
        assert_eq!(actions, vec![Action::Start("r1".to_owned())]);
    }

    #[test]
    fn a_runner_never_registered_is_registered() {
        let seen = observed(vec![], Some(vec![]));
        let actions = plan(&[want("r1")], &seen, Instant::now());
        assert_eq!(actions, vec![Action::Register("r1".to_owned())]);
    }

    #[test]
    fn a_registration_missing_on_github_is_registered_again() {
        let seen = observed(vec![local("r1", Some(7), true)], Some(vec![]));
        let actions = plan(&[want("r1")], &seen, Instant::now());
        assert_eq!(actions, vec![Action::Register("r1".to_owned())]);
    }

    #[test]
    fn without_rest_access_a_registered_runner_is_only_started() {
        let seen = observed(vec![local("r1", Some(7), false)], None);
        let actions = plan(&[want("r1")], &seen, Instant::now());
        assert_eq!(actions, vec![Action::Start("r1".to_owned())]);
    }

    #[test]
    fn changed_labels_are_updated_in_place() {
        let mut seen = observed(
            vec![local("r1", Some(7), true)],
            Some(vec![remote(7, "r1", "online", MARKER)]),
        );
        seen.local[0].labels = vec![MARKER.to_owned()];
        let actions = plan(&[want("r1")], &seen, Instant::now());
        assert_eq!(actions, vec![Action::UpdateLabels("r1".to_owned())]);
    }

    #[test]
    fn an_offline_runner_of_this_host_no_longer_wanted_is_a_ghost() {
        let seen = observed(
            vec![local("r1", Some(7), true)],
            Some(vec![
                remote(7, "r1", "online", MARKER),
                remote(9, "old", "offline", MARKER),
                remote(10, "busy-old", "online", MARKER),
                remote(11, "r1", "offline", MARKER),
            ]),
        );
        let actions = plan(&[want("r1")], &seen, Instant::now());
        assert_eq!(
            actions,
            vec![
                Action::DeleteGhost(9, "old".to_owned()),
                Action::DeleteGhost(11, "r1".to_owned()),
            ]
        );
    }

    #[test]
    fn another_hosts_runners_are_never_touched() {
        let seen = observed(
            vec![],
            Some(vec![
                remote(20, "theirs", "offline", "host-lab2"),
                remote(21, "r1", "offline", "host-lab2"),
            ]),
        );
        let actions = plan(&[want("r1")], &seen, Instant::now());
        assert_eq!(actions, vec![Action::Register("r1".to_owned())]);
    }

    #[test]
    fn a_runner_no_longer_configured_is_removed_locally() {
        let seen = observed(
            vec![local("r1", Some(7), true), local("gone", Some(8), true)],
            Some(vec![
                remote(7, "r1", "online", MARKER),
                remote(8, "gone", "online", MARKER),
            ]),
        );
        let actions = plan(&[want("r1")], &seen, Instant::now());
        assert_eq!(actions, vec![Action::Remove("gone".to_owned())]);
    }

    #[test]
    fn backoff_is_respected_until_it_expires() {
        let now = Instant::now();
        let until = now + Duration::from_secs(30);
        let mut seen = observed(vec![], Some(vec![]));
        seen.gates.insert("r1".to_owned(), Gate::Until(until));
        assert_eq!(
            plan(&[want("r1")], &seen, now),
            vec![Action::Wait("r1".to_owned(), until)]
        );
        assert_eq!(
            plan(&[want("r1")], &seen, until + Duration::from_millis(1)),
            vec![Action::Register("r1".to_owned())]
        );
    }

    fn board_gate(name: &str) -> (String, Gate) {
        (
            name.to_owned(),
            Gate::Board("board `sim-1` missing: console: gone".to_owned()),
        )
    }

    #[test]
    fn a_runner_whose_board_is_offline_is_stopped_not_deregistered() {
        let mut seen = observed(
            vec![local("r1", Some(7), true), local("r2", Some(8), true)],
            Some(vec![
                remote(7, "r1", "online", MARKER),
                remote(8, "r2", "online", MARKER),
            ]),
        );
        seen.gates.extend([board_gate("r1")]);
        assert_eq!(
            plan(&[want("r1"), want("r2")], &seen, Instant::now()),
            vec![Action::Stop(
                "r1".to_owned(),
                "board `sim-1` missing: console: gone".to_owned()
            )]
        );
        // Once stopped, nothing: no start, no registration, no ghost deletion of its id.
        seen.local[0].running = false;
        seen.remote.as_mut().unwrap()[0].status = "offline".to_owned();
        assert_eq!(
            plan(&[want("r1"), want("r2")], &seen, Instant::now()),
            vec![]
        );
        // The board is back: the runner is started again, with no new registration.
        seen.gates.clear();
        assert_eq!(
            plan(&[want("r1"), want("r2")], &seen, Instant::now()),
            vec![Action::Start("r1".to_owned())]
        );
    }

    #[test]
    fn a_board_gate_lets_a_running_job_end_and_registers_nothing() {
        let mut seen = observed(
            vec![local("r1", Some(7), true)],
            Some(vec![remote(7, "r1", "online", MARKER)]),
        );
        seen.remote.as_mut().unwrap()[0].busy = true;
        seen.gates.extend([board_gate("r1"), board_gate("r2")]);
        // r1 is busy: it finishes its job first; r2 was never registered: it waits for its board.
        assert_eq!(
            plan(&[want("r1"), want("r2")], &seen, Instant::now()),
            vec![]
        );
        seen.remote.as_mut().unwrap()[0].busy = false;
        assert!(matches!(
            plan(&[want("r1"), want("r2")], &seen, Instant::now()).as_slice(),
            [Action::Stop(name, _)] if name == "r1"
        ));
    }

    #[test]
    fn a_board_gate_waits_for_a_job_seen_on_this_host_without_a_list() {
        let mut busy = local("r1", Some(7), true);
        busy.busy = true;
        let mut seen = observed(vec![busy], None);
        seen.gates.extend([board_gate("r1")]);
        assert_eq!(plan(&[want("r1")], &seen, Instant::now()), vec![]);
        seen.local[0].busy = false;
        assert!(matches!(
            plan(&[want("r1")], &seen, Instant::now()).as_slice(),
            [Action::Stop(name, _)] if name == "r1"
        ));
    }

    #[test]
    fn an_open_circuit_means_no_action() {
        let mut seen = observed(vec![local("r1", Some(7), false)], Some(vec![]));
        seen.gates.insert("r1".to_owned(), Gate::Circuit);
        assert_eq!(plan(&[want("r1")], &seen, Instant::now()), vec![]);
    }
}
