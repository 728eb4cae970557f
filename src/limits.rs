//! Request rate limits, per gateway instance: token buckets for keys and users (set on their
//! records) and for failed authentications per client IP (against key guessing).
//!
//! Buckets live in a dashmap; a full bucket that has been idle is dropped by [`RateLimits::sweep`],
//! so the map holds only clients that are near a limit.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::auth::Principal;
use crate::store::RateLimit;
use crate::telemetry;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Key(Box<str>),
    User(Box<str>),
    FailedAuth(IpAddr),
}

impl Subject {
    fn scope(&self) -> &'static str {
        match self {
            Subject::Key(_) => "key",
            Subject::User(_) => "user",
            Subject::FailedAuth(_) => "ip",
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Tokens per second, and the most the bucket holds.
    rate: f64,
    capacity: f64,
}

impl Bucket {
    fn new(limit: &RateLimit, now: Instant) -> Self {
        let capacity = f64::from(limit.requests.max(1));
        Self {
            tokens: capacity,
            updated: now,
            rate: capacity / limit.per.0.as_secs_f64().max(1e-3),
            capacity,
        }
    }

    fn tokens_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.capacity)
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = self.tokens_at(now);
        self.updated = now;
    }

    /// How long from `now` until one token is there (zero when one is).
    fn wait_at(&self, now: Instant) -> Duration {
        let tokens = self.tokens_at(now);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }
}

#[derive(Default)]
pub struct RateLimits {
    buckets: DashMap<Subject, Bucket>,
    /// How many buckets of failed authentications there are. Every request on a key route
    /// checks its client's; with none, the usual case, the check is this one read instead
    /// of a map lookup, whose shard lock every request from one address took on both cores.
    failed_auth_buckets: AtomicUsize,
}

/// A refusal's `Retry-After`, in whole seconds (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl RateLimits {
    /// [`admit`](Self::admit) for a caller whose key passed: its key's and owner's limits.
    pub fn admit_principal(&self, principal: &Principal) -> Result<(), Duration> {
        let (key, user) = (&principal.key, principal.user());
        if key.rate_limit().is_none() && user.rate_limit.is_none() {
            // The common case, without a clock reading or the key id's UTF-8 check.
            return Ok(());
        }
        self.admit(
            key.id(),
            key.rate_limit(),
            &user.id,
            user.rate_limit.as_ref(),
        )
    }

    /// Takes one request from the key's and the user's budgets. `Err` carries how long to
    /// wait; nothing is taken when either is exhausted.
    pub fn admit(
        &self,
        key_id: &str,
        key: Option<&RateLimit>,
        user_id: &str,
        user: Option<&RateLimit>,
    ) -> Result<(), Duration> {
        let now = Instant::now();
        let subjects = [
            key.map(|l| (Subject::Key(key_id.into()), l)),
            user.map(|l| (Subject::User(user_id.into()), l)),
        ];
        for (subject, limit) in subjects.iter().flatten() {
            let wait = self.peek(subject, limit, now);
            if !wait.is_zero() {
                telemetry::record_rate_limited(subject.scope());
                return Err(wait);
            }
        }
        for (subject, limit) in subjects.into_iter().flatten() {
            self.take(subject, limit, now);
        }
        Ok(())
    }

    /// Whether this client has used up its failed-authentication budget.
    pub fn failed_auth_blocked(&self, ip: IpAddr, limit: &RateLimit) -> Result<(), Duration> {
        // A bucket counted after its insert: a check that races a client's first failure
        // passes, as it would have a moment earlier.
        if self.failed_auth_buckets.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let wait = self.peek(&Subject::FailedAuth(ip), limit, Instant::now());
        if wait.is_zero() {
            Ok(())
        } else {
            telemetry::record_rate_limited("ip");
            Err(wait)
        }
    }

    /// Spends one of this client's failed-authentication budget.
    pub fn failed_auth(&self, ip: IpAddr, limit: &RateLimit) {
        self.take(Subject::FailedAuth(ip), limit, Instant::now());
    }

    /// Drops buckets that have refilled completely: they hold nothing worth remembering.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut failed_auth_dropped = 0;
        self.buckets.retain(|subject, b| {
            b.refill(now);
            let keep = b.tokens < b.capacity;
            if !keep && matches!(subject, Subject::FailedAuth(_)) {
                failed_auth_dropped += 1;
            }
            keep
        });
        self.failed_auth_buckets
            .fetch_sub(failed_auth_dropped, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn peek(&self, subject: &Subject, limit: &RateLimit, now: Instant) -> Duration {
        // Read only: the shard's read lock, which checks on both cores share.
        match self.buckets.get(subject) {
            Some(bucket) => bucket.wait_at(now),
            None => Bucket::new(limit, now).wait_at(now),
        }
    }

    fn take(&self, subject: Subject, limit: &RateLimit, now: Instant) {
        let mut bucket = match self.buckets.entry(subject) {
            Entry::Occupied(entry) => entry.into_ref(),
            Entry::Vacant(entry) => {
                let failed_auth = matches!(entry.key(), Subject::FailedAuth(_));
                let bucket = entry.insert(Bucket::new(limit, now));
                if failed_auth {
                    self.failed_auth_buckets.fetch_add(1, Ordering::Release);
                }
                bucket
            }
        };
        // A changed limit on the record applies from the next request on.
        let fresh = Bucket::new(limit, now);
        if bucket.capacity != fresh.capacity || bucket.rate != fresh.rate {
            bucket.rate = fresh.rate;
            bucket.capacity = fresh.capacity;
        }
        bucket.refill(now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn per(requests: u32, per: Duration) -> RateLimit {
        RateLimit {
            requests,
            per: HumanDuration(per),
        }
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_for_refill() {
        let limits = RateLimits::default();
        let limit = per(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limits.admit("k", Some(&limit), "u", None).is_ok());
        }
        let wait = limits.admit("k", Some(&limit), "u", None).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), wait.as_secs() + 1);
        assert!(
            limits.admit("other", Some(&limit), "u", None).is_ok(),
            "keys have their own buckets"
        );
    }

    #[test]
    fn the_user_budget_is_shared_by_its_keys() {
        let limits = RateLimits::default();
        let user = per(2, Duration::from_secs(60));
        assert!(limits.admit("k1", None, "u", Some(&user)).is_ok());
        assert!(limits.admit("k2", None, "u", Some(&user)).is_ok());
        assert!(limits.admit("k3", None, "u", Some(&user)).is_err());
    }

    #[test]
    fn a_refused_request_spends_nothing() {
        let limits = RateLimits::default();
        let (key, user) = (
            per(5, Duration::from_secs(60)),
            per(1, Duration::from_secs(60)),
        );
        assert!(limits.admit("k", Some(&key), "u", Some(&user)).is_ok());
        for _ in 0..10 {
            assert!(limits.admit("k", Some(&key), "u", Some(&user)).is_err());
        }
        // The key's own budget was not drained by the refusals the user limit caused.
        assert!(limits.admit("k", Some(&key), "v", None).is_ok());
    }

    #[test]
    fn failed_authentications_block_an_ip_until_refill() {
        let limits = RateLimits::default();
        let limit = per(2, Duration::from_millis(200));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(limits.failed_auth_blocked(ip, &limit).is_ok());
        limits.failed_auth(ip, &limit);
        limits.failed_auth(ip, &limit);
        assert!(limits.failed_auth_blocked(ip, &limit).is_err());
        assert!(limits
            .failed_auth_blocked("192.0.2.8".parse().unwrap(), &limit)
            .is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert!(limits.failed_auth_blocked(ip, &limit).is_ok(), "refilled");
    }

    #[test]
    fn a_client_whose_failures_are_forgotten_is_checked_without_a_lookup_again() {
        let limits = RateLimits::default();
        let limit = per(1, Duration::from_millis(50));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        limits.failed_auth(ip, &limit);
        limits.failed_auth(ip, &limit);
        assert_eq!(limits.failed_auth_buckets.load(Ordering::Acquire), 1);
        assert!(limits.failed_auth_blocked(ip, &limit).is_err());
        std::thread::sleep(Duration::from_millis(80));
        limits.sweep();
        assert!(limits.is_empty());
        assert_eq!(limits.failed_auth_buckets.load(Ordering::Acquire), 0);
        assert!(limits.failed_auth_blocked(ip, &limit).is_ok());
        // Buckets of keys and users are not counted.
        assert!(limits.admit("k", Some(&limit), "u", Some(&limit)).is_ok());
        assert_eq!(limits.failed_auth_buckets.load(Ordering::Acquire), 0);
        limits.failed_auth(ip, &limit);
        assert!(limits.failed_auth_blocked(ip, &limit).is_err());
    }

    #[test]
    fn sweep_forgets_full_buckets() {
        let limits = RateLimits::default();
        let limit = per(1, Duration::from_millis(50));
        assert!(limits.admit("k", Some(&limit), "u", None).is_ok());
        assert_eq!(limits.len(), 1);
        limits.sweep();
        assert_eq!(limits.len(), 1, "still refilling");
        std::thread::sleep(Duration::from_millis(80));
        limits.sweep();
        assert!(limits.is_empty());
    }
}
