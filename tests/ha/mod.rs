//! What the Redis Cluster and Sentinel tests share: gateways on one store, a user with a
//! key, and bounded polling of the proxy and the admin API.
#![allow(dead_code)] // each test file uses a different part

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::common::*;

pub const TOKEN: &str = "ha-admin-token";

/// A gateway with `store` (a `store:` YAML block) and `extra` (more top-level YAML),
/// proxying everything to an echo upstream; ready and subscribed to events on return.
pub async fn gateway(store: &str, extra: &str, env: &[(&str, &str)]) -> Gateway {
    let up = echo_upstream().await;
    let config = format!("{store}{extra}routes:\n  - {{ name: api, upstream: 'http://{up}' }}\n");
    let mut env = env.to_vec();
    env.push(("KEYGATE_ADMIN_TOKEN", TOKEN));
    let gw = Gateway::start_with_env(&config, &env);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&client(), &gw.status_url("/readyz")).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "never ready:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_subscriptions(&gw, 1).await;
    gw
}

/// Waits (bounded: 20 s) until `gw` has confirmed `count` subscriptions in all.
pub async fn wait_for_subscriptions(gw: &Gateway, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw
        .log()
        .matches("subscribed to invalidation events")
        .count()
        < count
    {
        assert!(
            Instant::now() < deadline,
            "{} never subscribed {count}×:\n{}",
            gw.proxy,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates user `user` (if needed) and a key of theirs through `gw`; returns (id, secret).
/// Panics unless both calls succeed.
pub async fn key_for(gw: &Gateway, user: &str) -> (String, String) {
    let (s, body) = admin_call(
        gw,
        "PUT",
        &format!("/v1/users/{user}"),
        TOKEN,
        Some(json!({})),
    )
    .await;
    assert!(s.is_success(), "PUT user: {s} {body}");
    let (s, key) = admin_call(
        gw,
        "POST",
        "/v1/keys",
        TOKEN,
        Some(json!({"owner": user, "name": format!("{user}'s key")})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    )
}

/// The proxy's answer to a request with `secret`: status and error code (if any).
pub async fn answer(gw: &Gateway, secret: &str) -> (StatusCode, Option<String>) {
    let req = Request::get(gw.url("/x"))
        .header("x-api-key", secret)
        .body(Full::default())
        .unwrap();
    let a = send(&client(), req).await;
    let code = (!a.status.is_success())
        .then(|| a.json()["error"]["code"].as_str().map(str::to_owned))
        .flatten();
    (a.status, code)
}

/// Polls until `gw` answers `want` for the key, for at most `limit`; returns how long it took.
pub async fn until_status(
    gw: &Gateway,
    secret: &str,
    want: StatusCode,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let (got, code) = answer(gw, secret).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} still answers {got} {code:?}, not {want}, after {limit:?}\n{}",
            gw.proxy,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Repeats an admin call until it answers `want` (a store that is failing over answers
/// 503 meanwhile), for at most `limit`; returns the body and how long it took.
pub async fn until_admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    want: StatusCode,
    limit: Duration,
) -> (serde_json::Value, Duration) {
    let started = Instant::now();
    loop {
        let (got, answer) = admin_call(gw, method, path, TOKEN, body.clone()).await;
        if got == want {
            return (answer, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "{method} {path} still answers {got} {answer}, not {want}, after {limit:?}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of a metric series on `gw` (0 when absent).
pub async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = get(&client(), &gw.status_url("/metrics")).await.text();
    metric_value(&text, series).unwrap_or(0.0)
}

/// A failover takes about two seconds with the harness's one-second timeouts.
pub const FAILOVER_LIMIT: Duration = Duration::from_secs(20);

/// Retries creating user `user` through `gw` until the store takes writes again (at most
/// [`FAILOVER_LIMIT`]); returns how long that took.
pub async fn writes_work(gw: &Gateway, user: &str) -> Duration {
    let path = format!("/v1/users/{user}");
    let body = Some(json!({}));
    until_admin(gw, "PUT", &path, body, StatusCode::OK, FAILOVER_LIMIT)
        .await
        .1
}

/// Revokes key `id` through `a` (one call, which must succeed) and waits (at most 2 s) for
/// `b` to refuse its `secret`.
pub async fn revoke_and_see_refused(a: &Gateway, b: &Gateway, id: &str, secret: &str) {
    let (s, body) = admin_call(a, "DELETE", &format!("/v1/keys/{id}"), TOKEN, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}\n{}", a.log());
    until_status(b, secret, StatusCode::UNAUTHORIZED, Duration::from_secs(2)).await;
}
