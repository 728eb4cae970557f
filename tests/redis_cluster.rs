//! keygate on a real Redis Cluster (started and stopped by the harness on 127.0.0.1):
//! revocations reach every instance, the event subscription follows a failover to another
//! node, a revocation missed between subscriptions is caught by revalidation, and with no
//! replica to fail over to, the data plane degrades the documented way (cached keys served
//! stale, uncached ones 503 `auth_unavailable`).
//!
//! The store conformance suite also runs on a cluster (`store_conformance::redis_cluster`).

mod common;
mod ha;

use std::time::{Duration, Instant};

use common::redis::RedisCluster;
use common::*;
use ha::*;
use http::StatusCode;
use keygate::config::{RedisNode, RedisTarget, RedisTopology};
use keygate::store::redis::RedisStore;
use keygate::store::Store;

const PREFIX: &str = "ha:";
/// keygate's channel, and its hash tag: the slot that holds all of keygate's data.
const CHANNEL: &str = "{ha:}events";

fn store_yaml(cluster: &RedisCluster) -> String {
    format!(
        "store:\n  backend: redis\n  redis:\n    mode: cluster\n    url: 'redis://127.0.0.1:{}/0'\n    key_prefix: '{PREFIX}'\n    cluster: {{ nodes: [{}] }}\n",
        cluster.nodes[0].addr().port(),
        cluster.seeds().join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_cross_the_cluster_and_survive_a_failover_of_the_subscribed_node() {
    let mut cluster = RedisCluster::start(3, 1);
    let store = store_yaml(&cluster);
    let a = gateway(&store, "", &[]).await;
    let b = gateway(&store, "", &[]).await;

    // Both subscribed on the master of keygate's slot: where PUBLISH lands, too.
    let home = cluster.master_of(CHANNEL, &[]);
    let subscribers = cluster.subscribers(CHANNEL);
    assert_eq!(
        subscribers[home], 2,
        "subscribers per node: {subscribers:?}"
    );

    let (id, secret) = key_for(&a, "ann").await;
    assert_eq!(
        answer(&b, &secret).await.0,
        StatusCode::OK,
        "warm B's cache"
    );
    revoke_and_see_refused(&a, &b, &id, &secret).await;

    // A key cached on B, and one B has never seen; the replica must hold both.
    let (cached_id, cached) = key_for(&a, "bob").await;
    let (_, fresh) = key_for(&a, "cy").await;
    assert_eq!(answer(&b, &cached).await.0, StatusCode::OK);
    assert_eq!(
        cluster.nodes[home].cli(&["WAIT", "1", "2000"]),
        "1",
        "replica in sync"
    );

    // The node holding the data and both subscriptions dies; its replica takes over.
    let killed_at = Instant::now();
    cluster.nodes[home].stop();
    cluster.wait_healthy(&[home]);
    let new_home = cluster.master_of(CHANNEL, &[home]);
    assert_ne!(new_home, home);
    eprintln!("cluster failed over in {:?}", killed_at.elapsed());

    // Writes work again through the new master, and the data is all there.
    let took = writes_work(&a, "dan").await;
    eprintln!(
        "admin writes back {took:?} after the failover ({:?} after the kill)",
        killed_at.elapsed()
    );
    until_status(&b, &fresh, StatusCode::OK, FAILOVER_LIMIT).await;

    // B noticed the lost subscription and subscribed again, on a live node.
    wait_for_subscriptions(&b, 2).await;
    wait_for_subscriptions(&a, 2).await;
    let subscribers = cluster.subscribers(CHANNEL);
    assert_eq!(subscribers.iter().sum::<u32>(), 2, "{subscribers:?}");

    // And a revocation through A still reaches B's cache, as an event.
    assert_eq!(answer(&b, &cached).await.0, StatusCode::OK);
    let events = r#"keygate_events_received_total{kind="key"}"#;
    let before = metric(&b, events).await;
    revoke_and_see_refused(&a, &b, &cached_id, &cached).await;
    assert!(
        metric(&b, events).await > before,
        "B got the revocation as an event"
    );
}

/// A revocation made while a gateway is between subscriptions reaches it anyway: losing the
/// subscription marks its whole cache for revalidation. Here the key is deleted behind
/// keygate's back (no event at all) while the subscriptions are cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_missed_between_subscriptions_is_caught_by_revalidation() {
    let cluster = RedisCluster::start(3, 0);
    let gw = gateway(&store_yaml(&cluster), "", &[]).await;
    let (id, secret) = key_for(&gw, "ann").await;
    assert_eq!(answer(&gw, &secret).await.0, StatusCode::OK);

    let seeds = cluster
        .nodes
        .iter()
        .map(|n| RedisNode {
            host: "127.0.0.1".into(),
            port: n.addr().port(),
        })
        .collect();
    let target = RedisTarget {
        topology: RedisTopology::Cluster { seeds },
        ..RedisTarget::standalone(cluster.nodes[0].url.clone())
    };
    let store = RedisStore::open(&target, PREFIX).await.unwrap();
    store
        .delete_key(&id)
        .await
        .unwrap()
        .expect("the key was there");
    assert_eq!(
        answer(&gw, &secret).await.0,
        StatusCode::OK,
        "no event: still cached (control)"
    );

    let home = cluster.master_of(CHANNEL, &[]);
    let killed = cluster.nodes[home].cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(
        killed, "1",
        "the gateway's subscription was on the slot's master"
    );
    until_status(
        &gw,
        &secret,
        StatusCode::UNAUTHORIZED,
        Duration::from_secs(2),
    )
    .await;
    wait_for_subscriptions(&gw, 2).await;
}

/// keygate's data lives in one slot, so on one master. Without a replica, losing that
/// master is an outage for keygate: keys still in the cache keep working (stale, within
/// `cache.stale_if_error`), keys that are not answer 503 `auth_unavailable`, never 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replicas_losing_the_data_node_serves_cached_keys_and_503_for_the_rest() {
    let mut cluster = RedisCluster::start(3, 0);
    let gw = gateway(
        &store_yaml(&cluster),
        "cache: { ttl: 1s, stale_if_error: 5m }\n",
        &[],
    )
    .await;
    let (_, cached) = key_for(&gw, "ann").await;
    let (_, uncached) = key_for(&gw, "bob").await;
    assert_eq!(answer(&gw, &cached).await.0, StatusCode::OK);

    let home = cluster.master_of(CHANNEL, &[]);
    cluster.nodes[home].stop();
    // Past the cache ttl, so the cached key must come from the stale path.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(
        answer(&gw, &uncached).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("auth_unavailable".into())
        )
    );
    assert_eq!(answer(&gw, &cached).await, (StatusCode::OK, None));
    // Still so once the other nodes have noticed and the cluster reports itself down.
    poll_cluster_down(&cluster, home).await;
    assert_eq!(
        answer(&gw, &uncached).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("auth_unavailable".into())
        )
    );
    assert_eq!(answer(&gw, &cached).await, (StatusCode::OK, None));
    assert!(metric(&gw, r#"keygate_auth_cache_lookups_total{result="stale"}"#).await >= 2.0);
    wait_for_status(&client(), &gw.status_url("/readyz"), StatusCode::OK).await;
}

async fn poll_cluster_down(cluster: &RedisCluster, dead: usize) {
    let live = if dead == 0 { 1 } else { 0 };
    let deadline = Instant::now() + FAILOVER_LIMIT;
    while !cluster.nodes[live]
        .cli(&["CLUSTER", "INFO"])
        .contains("cluster_state:fail")
    {
        assert!(Instant::now() < deadline, "{}", cluster.describe());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
