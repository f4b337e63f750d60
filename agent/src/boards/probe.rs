//! The health probe: open the console, (re)start the board, and wait for its boot prompt.
//! A board that does not show it within the timeout is unhealthy, with the reason and the last
//! console output, and is not handed to the next job.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::BoardError;

/// The default time a board gets to show its prompt after a reset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How much console output a failure report quotes.
const TAIL: usize = 160;

/// What the probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    Healthy { after_ms: u64 },
    Unhealthy { reason: String },
}

/// Open `console` at `baud`, run `start` (a power cycle, or a newline to the shell), then read
/// until `prompt` appears or `timeout` passes. Errors of `start` are returned as errors; a
/// console that cannot be opened or read is an unhealthy board.
pub fn probe(
    console: &Path,
    baud: u32,
    prompt: &str,
    timeout: Duration,
    start: impl FnOnce(&mut dyn std::io::Write) -> Result<(), BoardError>,
) -> Result<Outcome, BoardError> {
    let mut port = match serialport::new(console.to_string_lossy(), baud)
        .timeout(Duration::from_millis(100))
        .open_native()
    {
        Ok(port) => port,
        Err(err) => {
            return Ok(Outcome::Unhealthy {
                reason: format!("cannot open console `{}`: {err}", console.display()),
            })
        }
    };
    // Output from before the reset says nothing about this boot.
    let _ = serialport::SerialPort::clear(&port, serialport::ClearBuffer::Input);
    start(&mut port)?;
    let started = Instant::now();
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let needle = prompt.as_bytes();
    loop {
        if !needle.is_empty() && seen.windows(needle.len()).any(|window| window == needle) {
            return Ok(Outcome::Healthy {
                after_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
        if started.elapsed() >= timeout {
            return Ok(Outcome::Unhealthy {
                reason: format!(
                    "no `{prompt}` on `{}` within {}s; last output: {}",
                    console.display(),
                    timeout.as_secs(),
                    tail(&seen)
                ),
            });
        }
        match port.read(&mut buf) {
            Ok(0) => std::thread::sleep(Duration::from_millis(20)),
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                // Keep enough to find the prompt across reads and to quote the tail.
                let keep = TAIL.max(needle.len()) * 4;
                if seen.len() > keep * 2 {
                    seen.drain(..seen.len() - keep);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Ok(Outcome::Unhealthy {
                    reason: format!("cannot read console `{}`: {err}", console.display()),
                })
            }
        }
    }
}

/// The last bytes of the console, printable, quoted.
fn tail(seen: &[u8]) -> String {
    if seen.is_empty() {
        return "(nothing)".to_owned();
    }
    let text = String::from_utf8_lossy(&seen[seen.len().saturating_sub(TAIL)..]);
    let printable: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "`{}`",
        printable.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}
