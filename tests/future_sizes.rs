//! Every proxied request's future is moved several times (into hyper's dispatcher, through
//! the drain wrapper), and each move copies its whole size. The key check's future once
//! weighed 9.8 kB, all of it for the cache-miss path; the profile showed the copies
//! (BENCHMARKS.md). Misses are boxed since; this keeps it that way.

use std::sync::Arc;

use keygate::auth::key::KeyHash;
use keygate::auth::Verifier;
use keygate::config::Config;
use keygate::store::embedded::EmbeddedStore;

/// Both builds measure 496 bytes (1.4 kB before the owner lookup, which only runs when a
/// cached key's owner hint does not stand, was boxed too).
const MAX_VERIFY_FUTURE: usize = 1024;

/// A verifier over an empty embedded store, and the config it was made with.
fn verifier() -> (Arc<Verifier>, Config, tempfile::TempDir) {
    let config = Config::from_yaml(
        "routes:\n  - { name: a, upstream: 'http://127.0.0.1:9' }\n",
        &|_| None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("keygate.db")).unwrap());
    let verifier = Arc::new(Verifier::new(store, &config.cache));
    (verifier, config, dir)
}

#[tokio::test]
async fn the_key_check_future_stays_small() {
    let (verifier, _config, _dir) = verifier();
    let hash = KeyHash::of("kg_not_a_real_key");
    let check = verifier.verify(&hash);
    let size = std::mem::size_of_val(&check);
    println!("Verifier::verify's future: {size} bytes");
    assert!(
        size <= MAX_VERIFY_FUTURE,
        "Verifier::verify's future is {size} bytes (limit {MAX_VERIFY_FUTURE})"
    );
    drop(check);
}

/// Both builds measure about 2.3 kB (4.3 kB before the request's head was lent to the
/// stages instead of moved through them, and hyper's client path boxed); the whole future
/// is copied at least once per request, when the connection's loop starts awaiting it.
const MAX_REQUEST_FUTURE: usize = 3072;

#[tokio::test]
async fn a_proxied_requests_future_stays_small() {
    let (verifier, config, _dir) = verifier();
    let proxy = Arc::new(
        keygate::proxy::Proxy::new(&config, verifier, tokio_util::task::TaskTracker::new())
            .unwrap(),
    );
    let request = http::Request::new(keygate::server::RequestBody::Empty);
    let conn = keygate::server::ConnInfo {
        peer: "127.0.0.1:1".parse().unwrap(),
        tls: false,
    };
    let handling = proxy.handle(request, conn);
    let size = std::mem::size_of_val(&handling);
    println!("Proxy::handle's future: {size} bytes");
    assert!(
        size <= MAX_REQUEST_FUTURE,
        "Proxy::handle's future is {size} bytes (limit {MAX_REQUEST_FUTURE})"
    );
    drop(handling);
}
