//! keygate behind Redis Sentinel (a master, a replica and three sentinels, started and
//! stopped by the harness on 127.0.0.1, all with a password): the gateways follow the
//! master through a planned switch-over and through the death of a master, and revocation
//! events keep arriving after each.

mod common;
mod ha;

use std::time::{Duration, Instant};

use common::redis::{RedisSentinels, SENTINEL_MASTER};
use common::*;
use ha::*;
use http::StatusCode;

const PASSWORD: &str = "s3ntinel-pass";
const CHANNEL: &str = "{ha:}events";

/// The password comes from KEYGATE_REDIS_URL, as in production; the file names no secret.
fn store_yaml(group: &RedisSentinels) -> String {
    format!(
        "store:\n  backend: redis\n  redis:\n    mode: sentinel\n    url: 'redis://{SENTINEL_MASTER}/0'\n    key_prefix: 'ha:'\n    sentinel: {{ master: {SENTINEL_MASTER}, nodes: [{}], auth: true }}\n",
        group.sentinel_nodes().join(", ")
    )
}

fn redis_url_env() -> String {
    format!("redis://:{PASSWORD}@{SENTINEL_MASTER}/0")
}

/// How many subscribers the server at `data[i]` has on keygate's channel.
fn subscribers(group: &RedisSentinels, i: usize) -> String {
    group.data[i].cli(&["PUBSUB", "NUMSUB", CHANNEL])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_follow_the_master_through_a_switch_over_and_a_crash() {
    let mut group = RedisSentinels::start(PASSWORD);
    let store = store_yaml(&group);
    let env = redis_url_env();
    let env = [("KEYGATE_REDIS_URL", env.as_str())];
    let a = gateway(&store, "", &env).await;
    let b = gateway(&store, "", &env).await;
    assert_eq!(group.master(), 0);
    assert_eq!(subscribers(&group, 0), format!("{CHANNEL}\n2"));

    let (id, secret) = key_for(&a, "ann").await;
    assert_eq!(answer(&b, &secret).await.0, StatusCode::OK);
    revoke_and_see_refused(&a, &b, &id, &secret).await;

    // 1. A planned switch-over. The old master stays up, and still a master, until the
    //    sentinels reconfigure it some seconds later: keygate must move on at the sentinels'
    //    announcement, or what it writes meanwhile (a revocation, say) would be lost.
    let (cached_id, cached) = key_for(&a, "bob").await;
    assert_eq!(answer(&b, &cached).await.0, StatusCode::OK);
    assert_eq!(
        group.data[0].cli(&["WAIT", "1", "2000"]),
        "1",
        "replica in sync"
    );
    let started = Instant::now();
    assert_eq!(
        group.sentinels[0].cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER]),
        "OK"
    );
    let new = group.wait_for_failover(0);
    assert_eq!(new, 1);
    // Each of A's connections (store, publisher, subscriber) heard the announcement.
    a.wait_for_log("sentinels switched the master", 3);
    let took = writes_work(&a, "cy").await;
    eprintln!(
        "switch-over: admin writes back {took:?} after the new master took over ({:?} after SENTINEL FAILOVER)",
        started.elapsed()
    );
    let cy = "{ha:}user:cy";
    assert_eq!(
        group.data[1].cli(&["EXISTS", cy]),
        "1",
        "written to the new master"
    );
    assert_eq!(
        group.data[0].cli(&["ROLE"]).lines().next(),
        Some("master"),
        "the old master has not been reconfigured yet"
    );
    assert_eq!(
        group.data[0].cli(&["EXISTS", cy]),
        "0",
        "nothing written to the old one"
    );
    wait_for_subscriptions(&b, 2).await;
    wait_for_subscriptions(&a, 2).await;
    assert_eq!(
        subscribers(&group, 1),
        format!("{CHANNEL}\n2"),
        "on the new master"
    );
    // B's store connection was closed by Sentinel too: a key B never saw shows when
    // lookups reach the new master. Then `cached` is loaded afresh (the resubscription had
    // marked it for revalidation), and from there only the event can take it out of B's
    // cache within the cache ttl.
    let (_, probe) = key_for(&a, "gus").await;
    until_status(&b, &probe, StatusCode::OK, FAILOVER_LIMIT).await;
    assert_eq!(answer(&b, &cached).await.0, StatusCode::OK);
    revoke_and_see_refused(&a, &b, &cached_id, &cached).await;

    // 2. The (new) master dies. A key B has cached and one it has never seen.
    let (cached_id, cached) = key_for(&a, "dan").await;
    let (_, fresh) = key_for(&a, "eve").await;
    assert_eq!(answer(&b, &cached).await.0, StatusCode::OK);
    // The old master must be a replica in sync before the new one goes. The sentinels would
    // reconfigure it after some seconds; do now what they would do.
    let port = group.data[1].addr().port().to_string();
    assert_eq!(group.data[0].cli(&["REPLICAOF", "127.0.0.1", &port]), "OK");
    poll_until(|| group.data[1].cli(&["WAIT", "1", "1000"]) == "1").await;
    let killed_at = Instant::now();
    group.data[1].stop();
    let new = group.wait_for_failover(1);
    assert_eq!(new, 0);
    let failed_over = killed_at.elapsed();
    let took = writes_work(&a, "fay").await;
    eprintln!(
        "crash: sentinels failed over in {failed_over:?}; admin writes back {took:?} later ({:?} after the kill)",
        killed_at.elapsed()
    );
    // An uncached lookup reaches the new master.
    until_status(&b, &fresh, StatusCode::OK, FAILOVER_LIMIT).await;
    wait_for_subscriptions(&b, 3).await;
    wait_for_subscriptions(&a, 3).await;
    assert_eq!(
        subscribers(&group, 0),
        format!("{CHANNEL}\n2"),
        "on the new master"
    );
    assert_eq!(answer(&b, &cached).await.0, StatusCode::OK);
    revoke_and_see_refused(&a, &b, &cached_id, &cached).await;
}

/// A sentinel group whose sentinels are all unreachable at start still lets keygate start
/// (it connects lazily, like the standalone mode) and answer 503 for unknown keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_sentinel_reachable_lookups_are_unavailable_not_unauthorized() {
    let closed: Vec<String> = (0..3).map(|_| closed_port().to_string()).collect();
    let store = format!(
        "store:\n  backend: redis\n  redis:\n    mode: sentinel\n    url: 'redis://{SENTINEL_MASTER}/0'\n    sentinel: {{ master: {SENTINEL_MASTER}, nodes: [{}] }}\n",
        closed.join(", ")
    );
    let up = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "{store}routes:\n  - {{ name: api, upstream: 'http://{up}' }}\n"
    ));
    // A well-formed key that cannot be looked up.
    let secret = keygate::auth::key::generate("kg").unwrap();
    let started = Instant::now();
    assert_eq!(
        answer(&gw, &secret).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("auth_unavailable".into())
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Not ready: the store never answered.
    let ready = get(&client(), &gw.status_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
}

async fn poll_until(mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + FAILOVER_LIMIT;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "condition not met in {FAILOVER_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
