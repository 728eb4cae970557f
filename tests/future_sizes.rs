//! Every proxied request's future is moved several times (into hyper's dispatcher, through
//! the drain wrapper), and each move copies its whole size. The key check's future once
//! weighed 9.8 kB, all of it for the cache-miss path; the profile showed the copies
//! (BENCHMARKS.md). Misses are boxed since; this keeps it that way.

use std::sync::Arc;

use keygate::auth::key::KeyHash;
use keygate::auth::Verifier;
use keygate::config::Config;
use keygate::store::embedded::EmbeddedStore;

/// Release builds measure about 1.1 kB; debug builds lay futures out less tightly.
const MAX_VERIFY_FUTURE: usize = if cfg!(debug_assertions) { 4096 } else { 2048 };

#[tokio::test]
async fn the_key_check_future_stays_small() {
    let config = Config::from_yaml(
        "routes:\n  - { name: a, upstream: 'http://127.0.0.1:9' }\n",
        &|_| None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("keygate.db")).unwrap());
    let verifier = std::sync::Arc::new(Verifier::new(store, &config.cache));
    let hash = KeyHash::of("kg_not_a_real_key");
    let check = verifier.verify(&hash);
    let size = std::mem::size_of_val(&check);
    assert!(
        size <= MAX_VERIFY_FUTURE,
        "Verifier::verify's future is {size} bytes (limit {MAX_VERIFY_FUTURE})"
    );
    drop(check);
}
