//! Runner units stopping, told by systemd over D-Bus (the `systemd` service backend).
//!
//! [`UnitWatch::start`] connects to the system bus, calls `Manager.Subscribe` and listens to
//! `PropertiesChanged` of the `actions.runner.*.service` units. A unit whose `ActiveState`
//! becomes `inactive` or `failed` is a [`UnitStop`] for the daemon's loop, which then looks at
//! its runners at once instead of at its next liveness check. Before it is handed on, the stop
//! waits (briefly) for the unit's last lines to reach the journal, where [`super::exits`] reads
//! why the listener stopped. Without a system bus (minimal hosts and containers without
//! `dbus-daemon`) the daemon says so once and keeps polling; the watch keeps trying to connect in
//! the background. systemd's private socket `/run/systemd/private` (peer-to-peer, what
//! `systemctl` uses as root) is supported by [`connect_private`] and tested against a stand-in,
//! but not used yet: see [`UnitWatch::start`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use zbus::zvariant::{OwnedValue, Value};

use super::exits;
use crate::service::LogSource;

/// systemd's private socket (peer-to-peer D-Bus, root only).
pub const PRIVATE_SOCKET: &str = "/run/systemd/private";

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";
const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";

/// How long a stop waits for the unit's last lines in the journal.
const JOURNAL_WAIT: Duration = Duration::from_secs(2);
/// How often a lost or missing bus is tried again.
const RECONNECT: Duration = Duration::from_secs(30);

/// Errors of the unit watch.
#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    #[error("cannot connect to systemd's private socket `{}`", path.display())]
    Private {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no bus to reach systemd")]
    NoBus,
    #[error("the D-Bus session ended abruptly: {reason}")]
    Panicked { reason: String },
    #[error("cannot talk to systemd over D-Bus ({bus})")]
    Bus {
        bus: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
}

/// Which bus the watch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// The system bus (`dbus-daemon` or `dbus-broker`).
    System,
    /// systemd's private socket, peer-to-peer.
    Private,
}

impl BusKind {
    pub fn describe(self) -> &'static str {
        match self {
            BusKind::System => "the system bus",
            BusKind::Private => "systemd's private socket `/run/systemd/private`",
        }
    }
}

/// A runner unit that stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStop {
    /// `actions.runner.<scope>.<name>.service`.
    pub unit: String,
    /// `inactive` or `failed`.
    pub active_state: String,
    /// `dead`, `failed`, … when the signal said.
    pub sub_state: Option<String>,
    /// The main process's end (`ExecMainCode`: 1 exited, 2 killed, 3 dumped) and its status
    /// (`ExecMainStatus`: the exit code or the signal), when systemd could be asked. For a
    /// runner unit the main process is `runsvc.sh`, which exits 0 after most listener exits;
    /// the listener's own code is read from the journal ([`super::exits`]).
    pub exec_main: Option<(i32, i32)>,
}

impl UnitStop {
    /// A few words for the log: `inactive (dead), exit status 0`.
    pub fn describe(&self) -> String {
        let mut text = self.active_state.clone();
        if let Some(sub) = &self.sub_state {
            text.push_str(&format!(" ({sub})"));
        }
        match self.exec_main {
            Some((1, status)) => text.push_str(&format!(", exit status {status}")),
            Some((2 | 3, signal)) => text.push_str(&format!(", killed by signal {signal}")),
            _ => {}
        }
        text
    }
}

/// Whether `unit` is a runner's unit (what `svc.sh` installs).
pub fn is_runner_unit(unit: &str) -> bool {
    unit.starts_with("actions.runner.") && unit.ends_with(".service") && !unit.contains('/')
}

/// The unit name of a systemd unit object path (`…/unit/actions_2erunner_2e…_2eservice`), as
/// systemd escapes it (`bus_label_escape`: every byte but ASCII letters and digits, and a
/// leading digit, as `_xx`).
pub fn unit_of_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?;
    if label.is_empty() || label.contains('/') {
        return None;
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a `PropertiesChanged` signal of a unit object says: the runner unit stopped, or
/// nothing for the daemon.
pub fn stop_of_signal(
    path: &str,
    interface: &str,
    changed: &HashMap<String, OwnedValue>,
) -> Option<UnitStop> {
    if interface != UNIT_INTERFACE {
        return None;
    }
    let unit = unit_of_path(path)?;
    if !is_runner_unit(&unit) {
        return None;
    }
    let text = |name: &str| {
        changed.get(name).and_then(|v| match &**v {
            Value::Str(s) => Some(s.as_str().to_owned()),
            _ => None,
        })
    };
    let active_state = text("ActiveState")?;
    if active_state != "inactive" && active_state != "failed" {
        return None;
    }
    Some(UnitStop {
        unit,
        active_state,
        sub_state: text("SubState"),
        exec_main: None,
    })
}

/// The daemon's end of the watch: unit stops, as they come.
pub struct UnitWatch {
    stops: tokio::sync::mpsc::Receiver<UnitStop>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UnitWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UnitWatch {
    /// Start watching in a task of the current runtime, through the system bus.
    ///
    /// Not through [`PRIVATE_SOCKET`] yet: systemd marks what it sends there with the sender
    /// `org.freedesktop.systemd1`, which zbus 5 takes for a unique name and panics on
    /// (`message/fields.rs`, "Invalid field reconstruction", seen in tests/e2e/daemon.sh).
    pub fn start() -> UnitWatch {
        UnitWatch::spawn(true, None)
    }

    /// Start watching through a peer-to-peer socket at `path` only (tests).
    pub fn start_private(path: &Path) -> UnitWatch {
        UnitWatch::spawn(false, Some(path.to_owned()))
    }

    fn spawn(system: bool, private: Option<PathBuf>) -> UnitWatch {
        let (tx, stops) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(watch(tx, system, private));
        UnitWatch { stops, task }
    }

    /// The next runner unit that stopped (pending forever once the watch ended).
    pub async fn next(&mut self) -> UnitStop {
        match self.stops.recv().await {
            Some(stop) => stop,
            None => std::future::pending().await,
        }
    }
}

/// Connect, subscribe and forward stops until the connection ends; then again.
async fn watch(tx: tokio::sync::mpsc::Sender<UnitStop>, system: bool, private: Option<PathBuf>) {
    let mut warned = false;
    loop {
        // In a task of its own: a panic inside zbus ends the session, not the watch.
        let session = {
            let tx = tx.clone();
            let private = private.clone();
            tokio::spawn(async move { session(&tx, system, private.as_deref()).await })
        };
        let result = session.await.unwrap_or_else(|err| {
            Err(UnitsError::Panicked {
                reason: err.to_string(),
            })
        });
        match result {
            Ok(kind) => {
                warned = false;
                log::info!(
                    "the connection to systemd through {} ended; connecting again",
                    kind.describe()
                );
            }
            Err(err) if !warned => {
                warned = true;
                log::warn!(
                    "runner units: {}; a unit that stops is seen at the next liveness check only\n\
                     hint: start the system bus (`dbus`) so that systemd can tell the agent",
                    super::error_chain(&err)
                );
            }
            Err(err) => log::debug!("runner units: {}", super::error_chain(&err)),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// One watch session: the system bus (when `system`), else systemd's private socket at
/// `private`; forwards stops until the connection ends.
async fn session(
    tx: &tokio::sync::mpsc::Sender<UnitStop>,
    system: bool,
    private: Option<&Path>,
) -> Result<BusKind, UnitsError> {
    let mut system_error = None;
    if system {
        let conn = match zbus::connection::Builder::system() {
            Ok(builder) => builder.build().await,
            Err(err) => Err(err),
        };
        // A system bus without systemd on it (a container's own dbus) is no bus for this.
        match conn {
            Ok(conn) => match forward(&conn, BusKind::System, tx).await {
                Ok(()) => return Ok(BusKind::System),
                Err(err) => system_error = Some(err),
            },
            Err(source) => {
                system_error = Some(UnitsError::Bus {
                    bus: "system bus",
                    source: Box::new(source),
                })
            }
        }
    }
    let Some(private) = private else {
        return Err(system_error.unwrap_or(UnitsError::NoBus));
    };
    let (conn, kind) = connect_private(private).await?;
    forward(&conn, kind, tx).await?;
    Ok(kind)
}

/// systemd's private socket at `path`: peer-to-peer, no bus daemon.
pub async fn connect_private(path: &Path) -> Result<(zbus::Connection, BusKind), UnitsError> {
    let private = |source| UnitsError::Private {
        path: path.to_owned(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(private)?;
    let conn = zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .build()
        .await
        .map_err(|source| UnitsError::Bus {
            bus: "private socket",
            source: Box::new(source),
        })?;
    Ok((conn, BusKind::Private))
}

fn bus_error(kind: BusKind) -> impl Fn(zbus::Error) -> UnitsError {
    move |source| UnitsError::Bus {
        source: Box::new(source),
        bus: match kind {
            BusKind::System => "system bus",
            BusKind::Private => "private socket",
        },
    }
}

/// Subscribe and forward the runner units' stops until the connection ends.
async fn forward(
    conn: &zbus::Connection,
    kind: BusKind,
    tx: &tokio::sync::mpsc::Sender<UnitStop>,
) -> Result<(), UnitsError> {
    let err = bus_error(kind);
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .map_err(&err)?
        .member("PropertiesChanged")
        .map_err(&err)?
        .path_namespace("/org/freedesktop/systemd1/unit")
        .map_err(&err)?
        .build();
    // The match first, then Subscribe: no signal between the two is lost.
    let mut signals = zbus::MessageStream::for_match_rule(rule, conn, Some(256))
        .await
        .map_err(&err)?;
    conn.call_method(
        Some(SYSTEMD),
        MANAGER_PATH,
        Some("org.freedesktop.systemd1.Manager"),
        "Subscribe",
        &(),
    )
    .await
    .map_err(&err)?;
    log::info!(
        "watching the runner units through {}: a unit that stops is acted on at once",
        kind.describe()
    );
    while let Some(msg) = signals.next().await {
        let Ok(msg) = msg else { continue };
        let header = msg.header();
        let Some(path) = header.path().map(|p| p.as_str().to_owned()) else {
            continue;
        };
        let Ok((interface, changed, _invalidated)) =
            msg.body()
                .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
        else {
            continue;
        };
        let Some(mut stop) = stop_of_signal(&path, &interface, &changed) else {
            continue;
        };
        stop.exec_main = exec_main(conn, &path).await;
        settle_journal(&stop.unit).await;
        if tx.send(stop).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// `ExecMainCode` and `ExecMainStatus` of the service at `path`.
async fn exec_main(conn: &zbus::Connection, path: &str) -> Option<(i32, i32)> {
    let get = |name: &'static str| async move {
        let reply = conn
            .call_method(
                Some(SYSTEMD),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(SERVICE_INTERFACE, name),
            )
            .await
            .ok()?;
        let value: OwnedValue = reply.body().deserialize().ok()?;
        i32::try_from(value).ok()
    };
    Some((get("ExecMainCode").await?, get("ExecMainStatus").await?))
}

/// Wait until the journal holds the end of the unit's last run (or [`JOURNAL_WAIT`] passed):
/// journald reads a service's output on its own, and may still be behind when the unit stops.
async fn settle_journal(unit: &str) {
    let source = LogSource::Journal {
        unit: unit.to_owned(),
    };
    let deadline = tokio::time::Instant::now() + JOURNAL_WAIT;
    loop {
        let source = source.clone();
        // No journal to read (no `journalctl`): nothing to wait for.
        let ended = tokio::task::spawn_blocking(move || match exits::last_output(&source) {
            Some((out, _)) => exits::classify(&out).is_some() || out.trim().is_empty(),
            None => true,
        })
        .await
        .unwrap_or(true);
        if ended || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> HashMap<String, OwnedValue> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    OwnedValue::try_from(Value::from(*v)).unwrap(),
                )
            })
            .collect()
    }

    const RUNNER_PATH: &str =
        "/org/freedesktop/systemd1/unit/actions_2erunner_2e_5fservices_2ee2e_2dkvm_2d1_2eservice";

    #[test]
    fn object_paths_decode_to_unit_names() {
        assert_eq!(
            unit_of_path(RUNNER_PATH).as_deref(),
            Some("actions.runner._services.e2e-kvm-1.service")
        );
        assert_eq!(
            unit_of_path("/org/freedesktop/systemd1/unit/_31_2dfoo_2eservice").as_deref(),
            Some("1-foo.service")
        );
        assert_eq!(unit_of_path("/org/freedesktop/systemd1/unit/bad_2"), None);
        assert_eq!(unit_of_path("/org/freedesktop/systemd1/job/42"), None);
        assert_eq!(unit_of_path("/org/freedesktop/systemd1/unit/"), None);
    }

    #[test]
    fn only_runner_units_are_watched() {
        assert!(is_runner_unit("actions.runner.octo-e2e.r1.service"));
        assert!(!is_runner_unit("runner-agent.service"));
        assert!(!is_runner_unit("actions.runner.octo-e2e.r1.service.d"));
        assert!(!is_runner_unit("actions.runner.octo.r1.socket"));
    }

    #[test]
    fn a_runner_unit_going_inactive_is_a_stop() {
        let changed = props(&[("ActiveState", "inactive"), ("SubState", "dead")]);
        let stop = stop_of_signal(RUNNER_PATH, UNIT_INTERFACE, &changed).unwrap();
        assert_eq!(stop.unit, "actions.runner._services.e2e-kvm-1.service");
        assert_eq!(stop.describe(), "inactive (dead)");
        let failed = props(&[("ActiveState", "failed")]);
        let mut stop = stop_of_signal(RUNNER_PATH, UNIT_INTERFACE, &failed).unwrap();
        stop.exec_main = Some((2, 9));
        assert_eq!(stop.describe(), "failed, killed by signal 9");
        stop.exec_main = Some((1, 0));
        assert_eq!(stop.describe(), "failed, exit status 0");
    }

    #[test]
    fn other_changes_and_other_units_are_not() {
        for state in ["active", "activating", "deactivating", "reloading"] {
            let changed = props(&[("ActiveState", state)]);
            assert_eq!(stop_of_signal(RUNNER_PATH, UNIT_INTERFACE, &changed), None);
        }
        let inactive = props(&[("ActiveState", "inactive")]);
        assert_eq!(
            stop_of_signal(RUNNER_PATH, SERVICE_INTERFACE, &inactive),
            None
        );
        let agent = "/org/freedesktop/systemd1/unit/runner_2dagent_2eservice";
        assert_eq!(stop_of_signal(agent, UNIT_INTERFACE, &inactive), None);
        assert_eq!(
            stop_of_signal(RUNNER_PATH, UNIT_INTERFACE, &props(&[("SubState", "dead")])),
            None
        );
    }

    /// A stand-in for systemd on its private socket: answers `Subscribe` and the `Get` of
    /// `ExecMainCode`/`ExecMainStatus`, then says that a runner unit and another unit stopped.
    async fn fake_systemd(listener: tokio::net::UnixListener) -> Vec<String> {
        let (stream, _) = listener.accept().await.unwrap();
        let conn = zbus::connection::Builder::unix_stream(stream)
            .server(zbus::Guid::generate())
            .unwrap()
            .p2p()
            .build()
            .await
            .unwrap();
        let mut calls = Vec::new();
        let mut incoming = zbus::MessageStream::from(&conn);
        while let Some(msg) = incoming.next().await {
            let msg = msg.unwrap();
            let header = msg.header();
            if header.message_type() != zbus::message::Type::MethodCall {
                continue;
            }
            let member = header.member().unwrap().to_string();
            calls.push(format!("{} {member}", header.path().unwrap()));
            match member.as_str() {
                "Subscribe" => {
                    conn.reply(&header, &()).await.unwrap();
                    for path in ["/org/freedesktop/systemd1/unit/cron_2eservice", RUNNER_PATH] {
                        for changed in [
                            props(&[("ActiveState", "deactivating")]),
                            props(&[("ActiveState", "inactive"), ("SubState", "dead")]),
                        ] {
                            conn.emit_signal(
                                None::<&str>,
                                path,
                                "org.freedesktop.DBus.Properties",
                                "PropertiesChanged",
                                &(UNIT_INTERFACE, changed, Vec::<String>::new()),
                            )
                            .await
                            .unwrap();
                        }
                    }
                }
                "Get" => {
                    let (_, name): (String, String) = msg.body().deserialize().unwrap();
                    let value = if name == "ExecMainCode" { 1i32 } else { 5i32 };
                    conn.reply(&header, &Value::from(value)).await.unwrap();
                    if name == "ExecMainStatus" {
                        return calls;
                    }
                }
                _ => panic!("unexpected call {member}"),
            }
        }
        calls
    }

    #[tokio::test]
    async fn a_runner_unit_stopping_arrives_through_the_private_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("private");
        let server = tokio::spawn(fake_systemd(tokio::net::UnixListener::bind(&path).unwrap()));
        let mut watch = UnitWatch::start_private(&path);
        let stop = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("no unit stop within 10 s");
        assert_eq!(
            stop,
            UnitStop {
                unit: "actions.runner._services.e2e-kvm-1.service".to_owned(),
                active_state: "inactive".to_owned(),
                sub_state: Some("dead".to_owned()),
                exec_main: Some((1, 5)),
            }
        );
        assert_eq!(stop.describe(), "inactive (dead), exit status 5");
        let calls = server.await.unwrap();
        assert_eq!(
            calls,
            [
                "/org/freedesktop/systemd1 Subscribe".to_owned(),
                format!("{RUNNER_PATH} Get"),
                format!("{RUNNER_PATH} Get"),
            ]
        );
    }

    #[tokio::test]
    async fn no_private_socket_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("private");
        let err = connect_private(&path).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to systemd's private socket `{}`",
                path.display()
            )
        );
    }
}
