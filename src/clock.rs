//! The two clocks the request path reads, as plain integers.
//!
//! A hit reads each at most once: `clock_gettime` was 17% of a cache-hit decision when every
//! freshness check read the clock for itself (it is a few tens of nanoseconds in a VM), and
//! `chrono::Utc::now()` adds a calendar conversion that a comparison does not need.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the first call, on the monotonic clock. Cache stamps keep this rather
/// than an `Instant` (16 bytes), which a million cached keys notice.
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// Unix time in milliseconds (negative before 1970, as chrono's `timestamp_millis`).
pub fn unix_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_agrees_with_chrono() {
        let before = chrono::Utc::now().timestamp_millis();
        let ours = unix_ms();
        let after = chrono::Utc::now().timestamp_millis();
        assert!(
            (before..=after).contains(&ours),
            "{before} <= {ours} <= {after}"
        );
    }

    #[test]
    fn monotonic_ms_does_not_go_back() {
        let first = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert!(monotonic_ms() >= first + 3);
    }
}
