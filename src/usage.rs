//! `last_used_at`: the data plane notes uses in memory (one dashmap write per request, no
//! I/O) and a background task writes them to the store in batches.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often uses are written to the store: `last_used_at` may lag by this much.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Usage {
    /// Key id → unix ms of the latest use not yet written.
    /// foldhash: ids come from cached keys, not from clients, and SipHash showed in profiles.
    pending: DashMap<Box<str>, i64, foldhash::fast::RandomState>,
}

impl Usage {
    pub fn record(&self, key_id: &str) {
        let now = crate::clock::unix_ms();
        match self.pending.get_mut(key_id) {
            Some(mut at) => *at = now,
            None => {
                self.pending.insert(key_id.into(), now);
            }
        }
    }

    /// Removes and returns everything pending.
    pub fn take(&self) -> Vec<(String, DateTime<Utc>)> {
        let ids: Vec<Box<str>> = self.pending.iter().map(|e| e.key().clone()).collect();
        ids.into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .filter_map(|(id, ms)| Some((id.into_string(), DateTime::from_timestamp_millis(ms)?)))
            .collect()
    }

    /// Puts back a batch that could not be written, keeping newer uses recorded since.
    fn restore(&self, batch: Vec<(String, DateTime<Utc>)>) {
        for (id, at) in batch {
            let ms = at.timestamp_millis();
            self.pending
                .entry(id.into_boxed_str())
                .and_modify(|v| *v = (*v).max(ms))
                .or_insert(ms);
        }
    }
}

/// Writes pending uses every [`FLUSH_INTERVAL`] and once more on `stop`.
pub async fn run_flusher(usage: Arc<Usage>, store: Arc<dyn Store>, stop: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(FLUSH_INTERVAL) => false,
            () = stop.cancelled() => true,
        };
        let batch = usage.take();
        if !batch.is_empty() {
            if let Err(e) = store.touch_keys(&batch).await {
                tracing::warn!(error = %e, keys = batch.len(), "could not record key usage; will retry");
                usage.restore(batch);
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_use_per_key_until_taken() {
        let usage = Usage::default();
        usage.record("a");
        usage.record("b");
        usage.record("a");
        let mut batch = usage.take();
        batch.sort();
        assert_eq!(
            batch.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(usage.take().is_empty());
        usage.restore(batch);
        assert_eq!(usage.take().len(), 2);
    }
}
