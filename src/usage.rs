//! `last_used_at`: an admitted request notes its key's use in the key's cache slot
//! ([`Verifier::note_use`]: an atomic store at most once a second per key, no lock held for
//! writing, no allocation, no I/O), and the task here collects the notes and writes them to
//! the store in batches.
//!
//! The notes used to be a map from key id to time beside the cache: an allocation and a
//! map write per key and flush interval, a lock both cores took on every request, and, with
//! a million distinct keys in use, about 150 bytes of resident memory per cached key
//! (`benches/load/run zipf` with `ZIPF_FILL=1`, 200,000 keys: 449 bytes per key with the
//! map, 295 without any notes).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::store::Store;

/// How often uses are written to the store: `last_used_at` may lag by this much.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Uses written per store call. Redis runs each call's script alone, so one call with every
/// key used in the interval (180,000 in the 1,000,000-key fill) held every key load behind
/// it for about half a second.
pub const FLUSH_BATCH: usize = 500;

/// Writes noted uses every [`FLUSH_INTERVAL`] and once more on `stop`.
pub async fn run_flusher(verifier: Arc<Verifier>, store: Arc<dyn Store>, stop: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(FLUSH_INTERVAL) => false,
            () = stop.cancelled() => true,
        };
        write_uses(&verifier, store.as_ref(), FLUSH_BATCH).await;
        if stopping {
            return;
        }
    }
}

/// Writes what is noted, a part of the key cache at a time and `batch` keys per store call,
/// so that what is in flight stays small however many keys are in use (the whole list of a
/// 1,000,000-key fill's flush, built at once, left the gateway 55 MiB larger: 325.7 against
/// 271.1 MiB). After a failed call, the part's uses not yet written are put back, and the
/// parts not reached keep theirs: the next round writes them.
async fn write_uses(verifier: &Verifier, store: &dyn Store, batch: usize) {
    let mut part = 0;
    while let Some(mut uses) = verifier.take_uses_in(part) {
        for (n, chunk) in uses.chunks(batch).enumerate() {
            if let Err(e) = store.touch_keys(chunk).await {
                let unwritten = uses.split_off(n * batch);
                tracing::warn!(error = %e, keys = unwritten.len(), "could not record key usage; will retry");
                verifier.restore_uses(unwritten);
                return;
            }
        }
        part += 1;
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::model::samples;
    use crate::store::KeyRecord;

    #[tokio::test]
    async fn admitted_uses_reach_the_store_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("k.db")).unwrap());
        store
            .put_user(&samples::user("alice", "acme"))
            .await
            .unwrap();
        let keys: Vec<KeyRecord> = (0..5)
            .map(|n| samples::key(&format!("key_{n}"), "alice", "acme"))
            .collect();
        for key in &keys {
            store.insert_key(key).await.unwrap();
        }
        let config = crate::config::Config::from_yaml(
            "routes:\n  - { name: a, upstream: 'http://x' }\n",
            &|_| None,
        )
        .unwrap();
        let verifier = Arc::new(Verifier::new(store.clone(), &config.cache));
        // Key 4 is never used.
        for key in &keys[..4] {
            let principal = verifier.verify(&key.hash).await.ok().unwrap();
            verifier.note_use(&principal);
        }
        // Two keys per store call: three calls for four keys.
        write_uses(&verifier, store.as_ref(), 2).await;
        let left = (0..).map_while(|part| verifier.take_uses_in(part));
        assert_eq!(left.flatten().count(), 0, "everything noted was taken");
        for n in 0..5 {
            let key = store.get_key(&format!("key_{n}")).await.unwrap().unwrap();
            match key.last_used_at {
                Some(at) => {
                    assert!(n < 4, "key {n} was never used");
                    // Noted in whole seconds.
                    let lag = Utc::now() - at;
                    assert!(lag >= chrono::Duration::zero() && lag < chrono::Duration::seconds(3));
                }
                None => assert_eq!(n, 4, "key {n} was used"),
            }
        }
    }
}
