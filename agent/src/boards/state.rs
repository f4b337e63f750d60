//! A board's persisted state: where its devices are and whether it passed its health probe.
//! Stored as `<state_dir>/boards/<name>.state.json` (0644, no secrets) so `agentctl board list`
//! and `agentctl status` show why a board is offline.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::identity::Resolution;
use super::{boards_dir, ensure_boards_dir, write_atomic, BoardError, FileLock};

/// The result of the last health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "health", rename_all = "kebab-case")]
pub enum Health {
    /// Never probed (or probing is not configured).
    #[default]
    Unknown,
    Healthy {
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
    },
    Unhealthy {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
    },
}

/// What the agent knows about one board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardState {
    pub board: String,
    /// The console's last resolution (`None`: no console, or not resolved yet).
    pub console: Option<Resolution>,
    /// The relay bus's last resolution (`None`: no Modbus relay, or not resolved yet).
    pub relay: Option<Resolution>,
    #[serde(default)]
    pub health: Health,
    #[serde(with = "time::serde::rfc3339")]
    pub updated: OffsetDateTime,
}

impl BoardState {
    /// A state with nothing known.
    pub fn unknown(board: &str) -> BoardState {
        BoardState {
            board: board.to_owned(),
            console: None,
            relay: None,
            health: Health::Unknown,
            updated: OffsetDateTime::now_utc(),
        }
    }

    /// Why the board cannot take jobs, if it cannot: a missing or ambiguous console or relay
    /// bus, or a failed health probe.
    pub fn offline_reason(&self) -> Option<String> {
        if let Some(problem) = self.console.as_ref().and_then(Resolution::problem) {
            return Some(format!("console: {problem}"));
        }
        if let Some(problem) = self.relay.as_ref().and_then(Resolution::problem) {
            return Some(format!("relay bus: {problem}"));
        }
        if let Health::Unhealthy { reason, .. } = &self.health {
            return Some(format!("health probe failed: {reason}"));
        }
        None
    }

    /// Why the board's runners are offline, for `status` and the daemon's log:
    /// ``board `NAME` missing|ambiguous|unhealthy: <offline reason>``, with a hint.
    pub fn runner_reason(&self) -> Option<String> {
        let reason = self.offline_reason()?;
        let kind = |resolution: Option<&Resolution>| match resolution {
            Some(Resolution::Missing { .. }) => Some("missing"),
            Some(Resolution::Ambiguous { .. }) => Some("ambiguous"),
            _ => None,
        };
        match kind(self.console.as_ref()).or(kind(self.relay.as_ref())) {
            Some(kind) => Some(format!("board `{}` {kind}: {reason}", self.board)),
            None => Some(format!(
                "board `{}` unhealthy: {reason}\nhint: `agentctl board probe {}` checks it again; its runners come back when it passes",
                self.board, self.board
            )),
        }
    }

    /// Whether the board can take jobs.
    pub fn online(&self) -> bool {
        self.offline_reason().is_none()
    }
}

/// A board as `agentctl status` shows it beside its runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoardSummary {
    pub name: String,
    /// `online` or `offline`.
    pub state: &'static str,
    /// Why it is offline ([`BoardState::runner_reason`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl BoardSummary {
    pub fn of(state: &BoardState) -> BoardSummary {
        let reason = state.runner_reason();
        BoardSummary {
            name: state.board.clone(),
            state: if reason.is_some() {
                "offline"
            } else {
                "online"
            },
            reason,
        }
    }
}

/// `<state_dir>/boards/<name>.state.json`
pub fn state_path(state_dir: &Path, board: &str) -> PathBuf {
    boards_dir(state_dir).join(format!("{board}.state.json"))
}

fn state_lock_path(state_dir: &Path, board: &str) -> PathBuf {
    boards_dir(state_dir).join(format!("{board}.state.lock"))
}

/// Read a board's state; a board never seen has [`BoardState::unknown`].
pub fn load(state_dir: &Path, board: &str) -> Result<BoardState, BoardError> {
    let path = state_path(state_dir, board);
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| BoardError::Format { path, source })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(BoardState::unknown(board)),
        Err(source) => Err(BoardError::Read { path, source }),
    }
}

/// Change a board's state under its lock and write it back atomically; returns the new state.
pub fn update(
    state_dir: &Path,
    board: &str,
    change: impl FnOnce(&mut BoardState),
) -> Result<BoardState, BoardError> {
    ensure_boards_dir(state_dir)?;
    let _lock = FileLock::acquire(&state_lock_path(state_dir, board), Duration::from_secs(30))?;
    let mut state = load(state_dir, board)?;
    let was = state.offline_reason();
    change(&mut state);
    state.updated = OffsetDateTime::now_utc();
    let now = state.offline_reason();
    if was != now {
        match &now {
            Some(reason) => log::warn!("board `{board}` is offline: {reason}"),
            None => log::info!("board `{board}` is online"),
        }
    }
    let path = state_path(state_dir, board);
    let mut bytes = serde_json::to_vec_pretty(&state).map_err(|source| BoardError::Format {
        path: path.clone(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(&path, &bytes, 0o644)?;
    Ok(state)
}
