//! Keep every board's device state current: rescan identities periodically (devices come and
//! go; udev renumbers them) and record each change in the board's state file, so a board whose
//! console vanished or became ambiguous is offline with the reason, and back when it returns.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Board;

use super::identity::{Change, Resolution, Roots, Watcher};
use super::{state, BoardError};

/// How often the daemon rescans when nothing else wakes it.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(3);

/// Record one change in the board's state file.
pub fn apply(state_dir: &std::path::Path, change: &Change) -> Result<(), BoardError> {
    match (&change.before, &change.after) {
        (Some(Resolution::Found(old)), Resolution::Found(new)) => log::info!(
            "board `{}`: {} moved from `{}` to `{}`",
            change.board,
            change.what,
            old.node.display(),
            new.node.display()
        ),
        (_, Resolution::Found(new)) => log::info!(
            "board `{}`: {} is `{}`",
            change.board,
            change.what,
            new.node.display()
        ),
        _ => {}
    }
    let after = change.after.clone();
    let what = change.what;
    state::update(state_dir, &change.board, move |state| {
        if what == "console" {
            state.console = Some(after);
        } else {
            state.relay = Some(after);
        }
    })?;
    Ok(())
}

/// Rescan every `interval` until `shutdown` completes, recording changes. Errors writing a
/// state file are logged and retried on the next scan.
pub async fn watch(
    boards: Vec<Board>,
    roots: Roots,
    state_dir: PathBuf,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut watcher = Watcher::new(&boards, roots);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        for change in watcher.rescan() {
            if let Err(err) = apply(&state_dir, &change) {
                log::warn!("cannot record the state of board `{}`: {err}", change.board);
                // Forget it so the next scan reports it again.
                watcher.forget(&change.board, change.what);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Console, SerialIdentity};
    use std::os::unix::fs::symlink;
    use std::time::Instant;

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_board_goes_offline_when_its_console_vanishes_and_back_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(dev.join("serial/by-id")).unwrap();
        std::fs::write(dev.join("ttyUSB0"), b"").unwrap();
        let link = dev.join("serial/by-id/usb-FTDI_A1-if00-port0");
        symlink(dev.join("ttyUSB0"), &link).unwrap();
        let board = Board {
            name: "rk".to_owned(),
            profile: None,
            arch: None,
            labels: Vec::new(),
            console: Some(Console {
                identity: SerialIdentity::Path(link.clone()),
                baud: 1_500_000,
            }),
            power: None,
            boot_prompt: None,
            tftp_dir: None,
            net_iface: None,
            dtb: None,
            env: Default::default(),
            jobs: Default::default(),
        };
        let state_dir = dir.path().join("state");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(watch(
            vec![board],
            Roots::default(),
            state_dir.clone(),
            Duration::from_millis(20),
            async move {
                let _ = stopped.await;
            },
        ));
        let node = |state: &state::BoardState| {
            state
                .console
                .as_ref()
                .and_then(Resolution::device)
                .map(|device| device.node.clone())
        };
        let load = || state::load(&state_dir, "rk").unwrap();
        eventually("the console to be found", || {
            node(&load()) == Some(dev.join("ttyUSB0"))
        })
        .await;
        assert!(load().online());

        std::fs::remove_file(&link).unwrap();
        eventually("the board to go offline", || !load().online()).await;
        let reason = load().offline_reason().unwrap();
        assert!(reason.starts_with("console: `"), "{reason}");
        assert!(reason.contains("does not resolve to a device"), "{reason}");

        std::fs::write(dev.join("ttyUSB7"), b"").unwrap();
        symlink(dev.join("ttyUSB7"), &link).unwrap();
        eventually("the board to come back on its new node", || {
            node(&load()) == Some(dev.join("ttyUSB7"))
        })
        .await;
        assert!(load().online());

        stop.send(()).unwrap();
        task.await.unwrap();
    }
}
