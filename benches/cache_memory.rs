//! Memory per cached key: fills the key cache the way the verifier does (records as the
//! store returns them, each then read once as a request reads it) and reports the process's
//! resident memory per cached key.
//!
//! Run: `cargo bench --bench cache_memory` (1,000,000 keys, the size). Under
//! `cargo test` (no `--bench` argument) it fills 20,000 as a smoke test. A benchmark, not a
//! timed test: it asserts only that every key was cached and reads back. The end-to-end figure
//! (a running gateway, keys from Redis) is `ZIPF_FILL=1 benches/load/run zipf`.

use std::time::Duration;

use chrono::Utc;
use keygate::auth::key::{new_key_id, KeyHash};
use keygate::auth::key_cache::KeyCache;
use keygate::auth::verifier::{CachedKey, KeyEntry, OwnerHint, Policy, Stamp};
use keygate::clock::monotonic_ms;
use keygate::store::KeyRecord;

/// The allocator the `keygate` binary uses, so the figure is the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field");
    pages * 4096
}

/// A record shaped like those the admin API issues: generated ids, a short name.
fn record(n: u64, owner: &str) -> KeyRecord {
    let now = Utc::now();
    KeyRecord {
        id: new_key_id().expect("OS randomness"),
        hash: KeyHash::of(&format!("kg_secret_{n}")),
        start: "kg_abcd".into(),
        name: format!("load test key {n}"),
        description: "created by the cache_memory bench".into(),
        owner: owner.into(),
        tenant: "acme".into(),
        enabled: true,
        created_at: now,
        updated_at: now,
        expires_at: Some(now + chrono::Duration::days(365)),
        last_used_at: None,
        permissions: None,
        created_by: "bench".into(),
        meta: None,
        rate_limit: None,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let keys: u64 = if full { 1_000_000 } else { 20_000 };
    let policy = Policy::new(
        Duration::from_secs(60),
        Duration::from_secs(10),
        Duration::from_secs(300),
    );
    let owner = new_key_id().expect("OS randomness").replace("key", "usr");

    let before = resident_bytes();
    let cache = KeyCache::new(keys, policy);
    let owner_hint = OwnerHint::none(Stamp {
        fetched_ms: monotonic_ms(),
        epoch: 0,
    });
    for n in 0..keys {
        let record = record(n, &owner);
        let stamp = Stamp {
            fetched_ms: monotonic_ms(),
            epoch: 0,
        };
        let key = CachedKey::from_record(&record);
        // Each key carries a hint of its owner; they all share one owner entry in `keygate serve`.
        let owner = owner_hint.clone();
        cache.insert(record.hash, KeyEntry::Known { key, stamp, owner });
        // First use, as a request makes it.
        let Some(KeyEntry::Known { key, .. }) = cache.get(&record.hash) else {
            panic!("key {n} was just cached");
        };
        assert_eq!(key.id(), record.id);
        let _ = (key.id_header_bytes(), key.name_header_bytes());
    }
    assert_eq!(cache.len() as u64, keys);
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "{keys} cached keys: resident memory grew {:.1} MiB, {} bytes per key",
        grown as f64 / (1024.0 * 1024.0),
        grown / keys
    );
}
