//! Cache invalidation across instances. Every admin write publishes what changed (a key, a
//! user, a group); every instance evicts exactly that from its caches.
//!
//! With Redis, events travel on a pub/sub channel. A subscription that drops may have
//! missed events, so the instance marks its whole cache for revalidation when it drops
//! *and* again once the new subscription is confirmed: a revoked key can never outlive a
//! missed event, yet cached keys still serve (as stale) if the store itself is down. Behind
//! Sentinel or in a cluster, a new subscription may be on another node (the new master, or
//! another cluster node; see `store::redis::Subscriber`): the same two marks cover the
//! switch. With the embedded store there is one instance, and events are applied in-process.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::auth::key::KeyHash;
use crate::auth::Verifier;
use crate::config::RedisTarget;
use crate::store::redis::{is_outage, RedisConn, Subscriber};
use crate::store::StoreError;
use crate::telemetry;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Key { hash: KeyHash },
    User { id: String },
    Group { id: String },
}

impl Change {
    fn kind(&self) -> &'static str {
        match self {
            Change::Key { .. } => "key",
            Change::User { .. } => "user",
            Change::Group { .. } => "group",
        }
    }
}

/// On the wire: the change and when it was published (µs since the epoch), for
/// `keygate_event_propagation_seconds`.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    #[serde(flatten)]
    change: Change,
    published_us: i64,
}

enum Transport {
    InProcess,
    Redis { conn: RedisConn, channel: String },
}

pub struct Events {
    verifier: Arc<Verifier>,
    transport: Transport,
}

impl Events {
    /// For the embedded store: a single instance, events applied where they happen.
    pub fn in_process(verifier: Arc<Verifier>) -> Self {
        Self {
            verifier,
            transport: Transport::InProcess,
        }
    }

    /// Publishes on `channel` of the Redis `target` names. Pair with [`run_subscriber`].
    /// In a cluster, PUBLISH goes to the master of the channel's slot, which is keygate's.
    pub fn redis(
        verifier: Arc<Verifier>,
        target: &RedisTarget,
        channel: String,
    ) -> Result<Self, StoreError> {
        let conn =
            RedisConn::open(target, &channel).map_err(|e| StoreError::Other(e.to_string()))?;
        Ok(Self {
            verifier,
            transport: Transport::Redis { conn, channel },
        })
    }

    /// Applies the change here, then tells every other instance. Returns once Redis has
    /// handed the message to every connected subscriber.
    pub async fn publish(&self, change: Change) -> Result<(), StoreError> {
        let event = Event {
            published_us: now_us(),
            change,
        };
        apply(&self.verifier, &event).await;
        match &self.transport {
            Transport::InProcess => Ok(()),
            Transport::Redis { conn, channel } => {
                let payload =
                    serde_json::to_vec(&event).map_err(|e| StoreError::Other(e.to_string()))?;
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(channel).arg(payload);
                let mut conn = conn.clone();
                let mut result = publish.query_async::<i64>(&mut conn).await;
                // The connection may have died since the last event (a restart, a failover):
                // that first command fails and a new connection is made. An event is safe
                // to deliver twice, so try once more before failing the admin call.
                if result.as_ref().is_err_and(is_outage) {
                    result = publish.query_async::<i64>(&mut conn).await;
                }
                result.map(|_| ()).map_err(|e| {
                    StoreError::Unavailable(format!("publishing an invalidation: {e}"))
                })
            }
        }
    }
}

async fn apply(verifier: &Verifier, event: &Event) {
    match &event.change {
        Change::Key { hash } => verifier.evict_key(hash).await,
        Change::User { id } => verifier.evict_user(id).await,
        Change::Group { id } => verifier.evict_group(id),
    }
    let lag = Duration::from_micros(now_us().saturating_sub(event.published_us).max(0) as u64);
    telemetry::record_event(event.change.kind(), lag);
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The channel name for a key prefix; shares the store's hash tag.
pub fn channel_for(key_prefix: &str) -> String {
    format!("{{{key_prefix}}}events")
}

/// Listens on `channel` until `stop`, reconnecting with backoff (to another node when the
/// one it was on is gone). Caches are marked for revalidation when a subscription ends and
/// again when a new one is confirmed.
pub async fn run_subscriber(
    target: RedisTarget,
    channel: String,
    verifier: Arc<Verifier>,
    stop: CancellationToken,
) {
    let mut subscriber = match Subscriber::new(&target) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "event subscriber cannot start; caches rely on cache.ttl alone");
            return;
        }
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let session = async {
            let (mut messages, node) = subscriber.subscribe(&channel).await?;
            // Subscribed: anything published from now on reaches us. What was published
            // before, while we were not listening, may be in the caches: recheck them all.
            verifier.revalidate_all();
            tracing::info!(%channel, %node, "subscribed to invalidation events; caches marked for revalidation");
            while let Some(msg) = messages.next().await {
                match serde_json::from_slice::<Event>(msg.get_payload_bytes()) {
                    Ok(event) => apply(&verifier, &event).await,
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed invalidation event"),
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        let started = tokio::time::Instant::now();
        tokio::select! {
            result = session => {
                verifier.revalidate_all();
                match result {
                    Ok(()) => tracing::warn!("invalidation subscription closed; caches marked for revalidation, resubscribing"),
                    Err(e) => tracing::warn!(error = %e, "invalidation subscription failed; caches marked for revalidation, retrying"),
                }
            }
            () = stop.cancelled() => return,
        }
        // A subscription that lasted a while earns a quick retry; repeated failures back off.
        backoff = if started.elapsed() > Duration::from_secs(5) {
            Duration::from_millis(50)
        } else {
            (backoff * 2).min(Duration::from_secs(1))
        };
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_tagged_json() {
        let event = Event {
            change: Change::Key {
                hash: KeyHash::of("kg_x"),
            },
            published_us: 42,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains("\"kind\":\"key\""), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back.change, event.change);
        let user: Event =
            serde_json::from_str(r#"{"kind":"user","id":"alice","published_us":1}"#).unwrap();
        assert_eq!(user.change, Change::User { id: "alice".into() });
    }
}
