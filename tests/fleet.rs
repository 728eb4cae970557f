//! Several keygate instances sharing one real Redis: a change made through one is enforced
//! by the others at once, and a dropped event subscription never leaves a revoked key alive.

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

const TOKEN: &str = "fleet-admin-token";
const PREFIX: &str = "fleet:";

/// `n` gateways on one Redis, each proxying to one echo upstream.
async fn fleet(n: usize, redis: &RedisServer) -> Vec<Gateway> {
    let up = echo_upstream().await;
    let config = format!(
        "store: {{ backend: redis, redis: {{ url: '{}', key_prefix: '{PREFIX}' }} }}
routes:
  - {{ name: writes, path_prefix: /orders/write, upstream: 'http://{up}', require: [orders:write] }}
  - {{ name: api, upstream: 'http://{up}' }}
",
        redis.url
    );
    let gateways: Vec<Gateway> = (0..n)
        .map(|_| Gateway::start_with_env(&config, &[("KEYGATE_ADMIN_TOKEN", TOKEN)]))
        .collect();
    for gw in &gateways {
        wait_for_status(&client(), &gw.status_url("/readyz"), StatusCode::OK).await;
        wait_until_subscribed(gw).await;
    }
    gateways
}

/// The event subscription is confirmed a moment after readiness; changes made before it
/// would be caught by the revalidation it triggers anyway, but tests want the event path.
async fn wait_until_subscribed(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("subscribed to invalidation events") {
        assert!(Instant::now() < deadline, "never subscribed:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A group `writers` (orders:write), a user `ann` in it, and a key of hers; returns
/// (key id, secret).
async fn ann_with_key(admin: &Gateway) -> (String, String) {
    let (s, _) = admin_call(
        admin,
        "PUT",
        "/v1/groups/writers",
        TOKEN,
        Some(json!({"permissions": ["orders:write"]})),
    )
    .await;
    assert!(s.is_success(), "{s}");
    let (s, _) = admin_call(
        admin,
        "PUT",
        "/v1/users/ann",
        TOKEN,
        Some(json!({"groups": ["writers"]})),
    )
    .await;
    assert!(s.is_success(), "{s}");
    let (s, key) = admin_call(
        admin,
        "POST",
        "/v1/keys",
        TOKEN,
        Some(json!({"owner": "ann", "name": "ann's key"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    )
}

async fn status_of(gw: &Gateway, path: &str, secret: &str) -> StatusCode {
    let req = Request::get(gw.url(path))
        .header("x-api-key", secret)
        .body(Full::default())
        .unwrap();
    send(&client(), req).await.status
}

/// Polls until `gw` answers `want` for the key, for at most `limit`; returns how long it took.
async fn until_status(
    gw: &Gateway,
    path: &str,
    secret: &str,
    want: StatusCode,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = status_of(gw, path, secret).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} still answers {got}, not {want}, after {limit:?}",
            gw.proxy
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_one_instance_is_refused_by_the_others() {
    let redis = RedisServer::start();
    let gws = fleet(3, &redis).await;
    let (id, secret) = ann_with_key(&gws[0]).await;
    for gw in &gws {
        assert_eq!(
            status_of(gw, "/x", &secret).await,
            StatusCode::OK,
            "warm the cache of {}",
            gw.proxy
        );
    }
    let (s, _) = admin_call(&gws[0], "DELETE", &format!("/v1/keys/{id}"), TOKEN, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // DELETE answers after the event is published; the others apply it within moments.
    for gw in &gws[1..] {
        let took = until_status(
            gw,
            "/x",
            &secret,
            StatusCode::UNAUTHORIZED,
            Duration::from_secs(1),
        )
        .await;
        assert!(
            took < Duration::from_millis(500),
            "{} took {took:?}",
            gw.proxy
        );
    }
    let text = get(&client(), &gws[2].status_url("/metrics")).await.text();
    assert!(
        metric_value(&text, r#"keygate_events_received_total{kind="key"}"#).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("keygate_event_propagation_seconds_count"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_and_permission_changes_through_one_instance_apply_on_the_others() {
    let redis = RedisServer::start();
    let gws = fleet(2, &redis).await;
    let (a, b) = (&gws[0], &gws[1]);
    let (id, secret) = ann_with_key(a).await;
    assert_eq!(
        status_of(b, "/orders/write/1", &secret).await,
        StatusCode::OK
    );

    // Out of the group: B enforces the lost permission.
    let (s, _) = admin_call(
        a,
        "PATCH",
        "/v1/users/ann",
        TOKEN,
        Some(json!({"groups": []})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    until_status(
        b,
        "/orders/write/1",
        &secret,
        StatusCode::FORBIDDEN,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        status_of(b, "/x", &secret).await,
        StatusCode::OK,
        "the key itself still works"
    );

    // Back in, then the group loses the permission: again enforced by B.
    admin_call(
        a,
        "PATCH",
        "/v1/users/ann",
        TOKEN,
        Some(json!({"groups": ["writers"]})),
    )
    .await;
    until_status(
        b,
        "/orders/write/1",
        &secret,
        StatusCode::OK,
        Duration::from_secs(1),
    )
    .await;
    admin_call(
        a,
        "PUT",
        "/v1/groups/writers",
        TOKEN,
        Some(json!({"permissions": []})),
    )
    .await;
    until_status(
        b,
        "/orders/write/1",
        &secret,
        StatusCode::FORBIDDEN,
        Duration::from_secs(1),
    )
    .await;

    // Disabled through A, refused by B; user deactivated, refused too.
    admin_call(
        a,
        "PATCH",
        &format!("/v1/keys/{id}"),
        TOKEN,
        Some(json!({"enabled": false})),
    )
    .await;
    until_status(
        b,
        "/x",
        &secret,
        StatusCode::FORBIDDEN,
        Duration::from_secs(1),
    )
    .await;
    admin_call(
        a,
        "PATCH",
        &format!("/v1/keys/{id}"),
        TOKEN,
        Some(json!({"enabled": true})),
    )
    .await;
    until_status(b, "/x", &secret, StatusCode::OK, Duration::from_secs(1)).await;
    admin_call(
        a,
        "PATCH",
        "/v1/users/ann",
        TOKEN,
        Some(json!({"active": false})),
    )
    .await;
    until_status(
        b,
        "/x",
        &secret,
        StatusCode::FORBIDDEN,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_never_leaves_a_revoked_key_alive() {
    let redis = RedisServer::start();
    let gws = fleet(2, &redis).await;
    let (a, b) = (&gws[0], &gws[1]);
    let store = keygate::store::redis::RedisStore::connect(&redis.url, PREFIX)
        .await
        .unwrap();
    use keygate::store::Store;

    // Control: a key deleted behind keygate's back (no event) stays cached on B for the
    // cache ttl. This is what the subscription guards against.
    let (control_id, control) = ann_with_key(a).await;
    assert_eq!(status_of(b, "/x", &control).await, StatusCode::OK);
    store.delete_key(&control_id).await.unwrap();
    assert_eq!(
        status_of(b, "/x", &control).await,
        StatusCode::OK,
        "cached on B until ttl or an event"
    );

    // Now: B's subscription is killed, and while it is down a key is revoked without any
    // event reaching B. Once B notices the drop it rechecks every cached key.
    let (id, secret) = ann_with_key(a).await;
    assert_eq!(status_of(b, "/x", &secret).await, StatusCode::OK);
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.trim().parse::<u32>().unwrap_or(0) >= 2,
        "killed: {killed}"
    );
    store.delete_key(&id).await.unwrap();
    until_status(
        b,
        "/x",
        &secret,
        StatusCode::UNAUTHORIZED,
        Duration::from_secs(2),
    )
    .await;
    until_status(
        b,
        "/x",
        &control,
        StatusCode::UNAUTHORIZED,
        Duration::from_secs(2),
    )
    .await;

    // Both resubscribed, and events flow again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.log().matches("subscribed to invalidation events").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "B did not resubscribe:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (id2, secret2) = ann_with_key(a).await;
    assert_eq!(status_of(b, "/x", &secret2).await, StatusCode::OK);
    admin_call(a, "DELETE", &format!("/v1/keys/{id2}"), TOKEN, None).await;
    until_status(
        b,
        "/x",
        &secret2,
        StatusCode::UNAUTHORIZED,
        Duration::from_secs(1),
    )
    .await;
}
