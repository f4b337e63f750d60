//! The emulator's clock: real time plus an offset that tests advance (token expiry, session
//! timeouts, rate-limit windows and the 14-day cleanup all read this clock).

use std::sync::atomic::{AtomicI64, Ordering};
use time::{Duration, OffsetDateTime};

#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub(crate) fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    pub(crate) fn advance(&self, seconds: i64) {
        self.offset_ms
            .fetch_add(seconds.saturating_mul(1000), Ordering::SeqCst);
    }
}

/// `2026-11-23T06:44:00.123+00:00`, the shape GitHub uses for token `expires_at`.
pub(crate) fn format_millis(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+00:00"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

/// `2026-11-23T06:44:00Z`, the shape of `created_at` / `published_at` fields.
pub(crate) fn format_seconds(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}
