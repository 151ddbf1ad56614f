//! Wall-clock helpers: Unix seconds and milliseconds, RFC 3339 and "in 5m" text.
//!
//! Every number that becomes a time here may have come from outside (a token reply, a
//! row another process wrote), so conversions saturate instead of panicking, and
//! [`far_future`] bounds what a `SystemTime` may be set to.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Unix seconds of `t` (0 before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Unix milliseconds of `t` (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The latest time tokenwarden ever computes with: 9999-12-31T23:59:59Z, the last instant
/// RFC 3339 can write. Anything later from outside is clamped to it.
pub const MAX_UNIX_SECS: u64 = 253_402_300_799;

/// [`MAX_UNIX_SECS`] as a `SystemTime`.
pub fn far_future() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(MAX_UNIX_SECS)
}

/// `secs` after the epoch, clamped to [`far_future`].
pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.min(MAX_UNIX_SECS))
}

/// `ms` after the epoch, clamped to [`far_future`].
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.min(MAX_UNIX_SECS * 1000))
}

/// `t + d`, clamped to [`far_future`].
pub fn add(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .map_or_else(far_future, |s| s.min(far_future()))
}

/// Seconds from `now` until `at` (negative: past), saturating.
pub fn secs_until(at: u64, now: u64) -> i64 {
    let at = i64::try_from(at).unwrap_or(i64::MAX);
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    at.saturating_sub(now)
}

/// `2026-11-24T23:50:00Z`; any time past year 9999 prints as the last second of 9999.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(from_unix(unix)).to_string()
}

/// `in 59m 59s` or `expired 3m ago`.
pub fn relative(at: u64, now: u64) -> String {
    let fmt = |s: u64| humantime::format_duration(Duration::from_secs(s)).to_string();
    if at > now {
        format!("in {}", fmt(at - now))
    } else {
        format!("expired {} ago", fmt(now - at))
    }
}

/// A duration as `1h 30m` (whole milliseconds).
pub fn human(d: Duration) -> String {
    let ms = Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(ms).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_saturate() {
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(add(far_future(), Duration::MAX), far_future());
        assert_eq!(from_unix_ms(u64::MAX), far_future());
        assert_eq!(secs_until(u64::MAX, 0), i64::MAX);
        assert_eq!(secs_until(0, u64::MAX), -i64::MAX);
        assert_eq!(relative(160, 100), "in 1m");
        assert_eq!(relative(100, 160), "expired 1m ago");
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
