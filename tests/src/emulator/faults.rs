//! Injected faults: failing statuses, latency, connections dropped mid-body, rate limits.

use std::io;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// Which rate limit a [`Fault::RateLimit`] exhausts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKind {
    /// Every token's hourly budget is used up until its window resets (advance the clock).
    Primary,
    /// The next `count` API requests are refused with `retry-after`.
    Secondary,
}

/// Where a [`Fault::Hold`] stops a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldPoint {
    /// Before the emulator handles it: nothing happened yet.
    Before,
    /// After the emulator handled it (its effect is done), before the answer is sent.
    After,
}

/// What happens to held requests when a test lets them go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HoldRelease {
    /// They go on: a request held before is handled, an answer held after is sent.
    #[default]
    Proceed,
    /// Their connection is closed without an answer (a request held before is never handled).
    Drop,
}

/// A fault for the next `count` matching requests (`path_prefix` narrows which; `None` = every
/// request outside `/_emulator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Status {
        status: u16,
        count: u32,
        path_prefix: Option<String>,
    },
    /// Like `Status`, but only `percent` % of the matching requests fail, spread evenly;
    /// `count` counts the failures.
    StatusShare {
        status: u16,
        percent: u8,
        count: u32,
        path_prefix: Option<String>,
    },
    /// Hold matching requests (method and path prefix) until the test releases them.
    Hold {
        at: HoldPoint,
        method: Option<String>,
        path_prefix: Option<String>,
        count: u32,
    },
    Latency {
        ms: u64,
        count: u32,
        path_prefix: Option<String>,
    },
    DropAfterBytes {
        bytes: u64,
        count: u32,
        path_prefix: Option<String>,
    },
    RateLimit {
        kind: RateLimitKind,
        count: u32,
        /// 403 (default) or 429.
        status: u16,
        retry_after: u64,
    },
}

/// The JSON form of the control API: `{"status": 500, "count": 2}`, `{"latency_ms": 300}`,
/// `{"drop_after_bytes": 1000}`, `{"rate_limit": "primary"}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_after_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// With `status`: the share of matching requests that fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldPoint>,
    /// With `hold`: only this method (`POST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl FaultRequest {
    pub fn into_fault(self) -> Option<Fault> {
        let count = self.count.unwrap_or(1);
        if let Some(at) = self.hold {
            return Some(Fault::Hold {
                at,
                method: self.method.map(|m| m.to_ascii_uppercase()),
                path_prefix: self.path_prefix,
                count,
            });
        }
        if let Some(kind) = self.rate_limit {
            return Some(Fault::RateLimit {
                kind,
                count,
                status: self.status.unwrap_or(403),
                retry_after: self.retry_after.unwrap_or(60),
            });
        }
        if let Some(ms) = self.latency_ms {
            return Some(Fault::Latency {
                ms,
                count,
                path_prefix: self.path_prefix,
            });
        }
        if let Some(bytes) = self.drop_after_bytes {
            return Some(Fault::DropAfterBytes {
                bytes,
                count,
                path_prefix: self.path_prefix,
            });
        }
        let status = self.status?;
        Some(match self.percent {
            Some(percent) => Fault::StatusShare {
                status,
                percent: percent.min(100),
                count,
                path_prefix: self.path_prefix,
            },
            None => Fault::Status {
                status,
                count,
                path_prefix: self.path_prefix,
            },
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FaultEntry {
    pub fault: Fault,
    pub remaining: u32,
    /// Matching requests seen (for `percent`).
    pub seen: u64,
}

/// What the dispatcher must do to one request.
#[derive(Debug, Default, Clone)]
pub(crate) struct FaultPlan {
    pub latency_ms: u64,
    pub status: Option<u16>,
    pub drop_after: Option<u64>,
    pub secondary: Option<(u16, u64)>,
    pub hold: Option<HoldPoint>,
}

/// Takes one use of every fault that matches `method` and `path` (API-only for rate limits).
pub(crate) fn take(faults: &mut Vec<FaultEntry>, method: &str, path: &str) -> FaultPlan {
    let mut plan = FaultPlan::default();
    let matches = |prefix: &Option<String>| prefix.as_deref().is_none_or(|p| path.starts_with(p));
    for entry in faults.iter_mut() {
        if entry.remaining == 0 {
            continue;
        }
        let used = match &entry.fault {
            Fault::Status {
                status,
                path_prefix,
                ..
            } if plan.status.is_none() && matches(path_prefix) => {
                plan.status = Some(*status);
                true
            }
            Fault::StatusShare {
                status,
                percent,
                path_prefix,
                ..
            } if plan.status.is_none() && matches(path_prefix) => {
                let n = entry.seen;
                entry.seen += 1;
                // Evenly spread: request n fails when the running share crosses a whole one.
                let p = u64::from(*percent);
                let fails = (n + 1) * p / 100 != n * p / 100;
                if fails {
                    plan.status = Some(*status);
                }
                fails
            }
            Fault::Hold {
                at,
                method: wanted,
                path_prefix,
                ..
            } if plan.hold.is_none()
                && matches(path_prefix)
                && wanted.as_deref().is_none_or(|m| m == method) =>
            {
                plan.hold = Some(*at);
                true
            }
            Fault::Latency {
                ms, path_prefix, ..
            } if matches(path_prefix) => {
                plan.latency_ms += ms;
                true
            }
            // Without a prefix a drop fault waits for a response with a body: the asset
            // redirect has none.
            Fault::DropAfterBytes {
                bytes, path_prefix, ..
            } if plan.drop_after.is_none()
                && matches(path_prefix)
                && (path_prefix.is_some()
                    || !path.starts_with("/actions/runner/releases/download/")) =>
            {
                plan.drop_after = Some(*bytes);
                true
            }
            Fault::RateLimit {
                kind: RateLimitKind::Secondary,
                status,
                retry_after,
                ..
            } if plan.secondary.is_none() && path.starts_with("/api/v3/") => {
                plan.secondary = Some((*status, *retry_after));
                true
            }
            _ => false,
        };
        if used {
            entry.remaining -= 1;
        }
    }
    faults.retain(|f| f.remaining > 0);
    plan
}

/// A response whose connection closes before the status line reaches the client.
pub(crate) fn dropped() -> axum::response::Response {
    axum::response::Response::new(truncate_body(Body::empty(), 0))
}

/// A body that sends `limit` bytes and then breaks the connection; with `0` the connection
/// closes before the status line reaches the client.
pub(crate) fn truncate_body(body: Body, limit: u64) -> Body {
    if limit == 0 {
        return Body::from_stream(futures_util::stream::once(async {
            Err::<Bytes, io::Error>(io::Error::other("emulator fault: connection dropped"))
        }));
    }
    let stream = body.into_data_stream();
    let stream = futures_util::stream::unfold(
        (stream, limit, false),
        |(mut stream, remaining, done)| async move {
            if done {
                return None;
            }
            if remaining == 0 {
                // Let the server flush what was sent before the connection breaks.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                return Some((
                    Err(io::Error::other("emulator fault: connection dropped")),
                    (stream, 0, true),
                ));
            }
            match stream.next().await {
                None => None,
                Some(Err(e)) => Some((Err(io::Error::other(e)), (stream, 0, true))),
                Some(Ok(chunk)) => {
                    let len = chunk.len() as u64;
                    if len <= remaining {
                        Some((Ok(chunk), (stream, remaining - len, false)))
                    } else {
                        let part: Bytes = chunk.slice(..remaining as usize);
                        Some((Ok(part), (stream, 0, false)))
                    }
                }
            }
        },
    );
    Body::from_stream(stream)
}
