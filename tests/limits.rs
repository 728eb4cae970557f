//! Rate limits through a real keygate: per key and per user (set on the records through the
//! admin API), and failed authentications per client IP.

mod common;

use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

const TOKEN: &str = "limits-admin-token";

async fn gateway(extra: &str) -> (Gateway, tempfile::TempDir) {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with_env(
        &format!(
            "{extra}store: {{ embedded: {{ path: '{}' }} }}\nroutes:\n  - {{ name: api, upstream: 'http://{up}' }}\n",
            dir.path().join("kg.db").display()
        ),
        &[("KEYGATE_ADMIN_TOKEN", TOKEN)],
    );
    (gw, dir)
}

async fn new_key(gw: &Gateway, owner: &str, body: serde_json::Value) -> String {
    let mut body = body;
    body["owner"] = json!(owner);
    body["name"] = json!("limited");
    let (status, key) = admin_call(gw, "POST", "/v1/keys", TOKEN, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    key["key"].as_str().unwrap().to_owned()
}

async fn call(gw: &Gateway, secret: &str) -> Answer {
    send(
        &client(),
        Request::get(gw.url("/x"))
            .header("x-api-key", secret)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let (gw, _dir) = gateway("").await;
    admin_call(&gw, "PUT", "/v1/users/rita", TOKEN, Some(json!({}))).await;
    let limited = new_key(
        &gw,
        "rita",
        json!({"rate_limit": {"requests": 3, "per": "1m"}}),
    )
    .await;
    let free = new_key(&gw, "rita", json!({})).await;
    for _ in 0..3 {
        assert_eq!(call(&gw, &limited).await.status, 200);
    }
    let refused = call(&gw, &limited).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["error"]["code"], "rate_limited");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=20).contains(&retry),
        "one token per 20 s: Retry-After {retry}"
    );
    assert_eq!(
        call(&gw, &free).await.status,
        200,
        "the other key of the same user is not limited"
    );

    let text = get(&client(), &gw.status_url("/metrics")).await.text();
    assert_eq!(
        metric_value(&text, r#"keygate_rate_limited_total{scope="key"}"#),
        Some(1.0),
        "{text}"
    );

    // Validation names the field.
    let (status, body) = admin_call(
        &gw,
        "POST",
        "/v1/keys",
        TOKEN,
        Some(json!({"owner": "rita", "name": "x", "rate_limit": {"requests": 0, "per": "1s"}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("rate_limit.requests"),
        "{body}"
    );
}

#[tokio::test]
async fn a_user_limit_is_shared_by_all_its_keys_and_can_be_lifted() {
    let (gw, _dir) = gateway("").await;
    admin_call(
        &gw,
        "PUT",
        "/v1/users/uma",
        TOKEN,
        Some(json!({"rate_limit": {"requests": 2, "per": "1m"}})),
    )
    .await;
    let (a, b) = (
        new_key(&gw, "uma", json!({})).await,
        new_key(&gw, "uma", json!({})).await,
    );
    assert_eq!(call(&gw, &a).await.status, 200);
    assert_eq!(call(&gw, &b).await.status, 200);
    assert_eq!(call(&gw, &a).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(call(&gw, &b).await.status, StatusCode::TOO_MANY_REQUESTS);

    let (status, user) = admin_call(
        &gw,
        "PATCH",
        "/v1/users/uma",
        TOKEN,
        Some(json!({"rate_limit": null})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(user["rate_limit"].is_null(), "{user}");
    assert_eq!(
        call(&gw, &a).await.status,
        200,
        "a user change applies at once"
    );
}

#[tokio::test]
async fn a_client_that_keeps_guessing_is_refused_before_any_lookup() {
    let (gw, _dir) = gateway("limits: { failed_auth_per_ip: { requests: 5, per: 1m } }\n").await;
    admin_call(&gw, "PUT", "/v1/users/gus", TOKEN, Some(json!({}))).await;
    let good = new_key(&gw, "gus", json!({})).await;
    assert_eq!(
        call(&gw, &good).await.status,
        200,
        "valid keys do not spend the budget"
    );
    for i in 0..5 {
        let guess = keygate::auth::key::generate("kg").unwrap();
        assert_eq!(
            call(&gw, &guess).await.status,
            StatusCode::UNAUTHORIZED,
            "guess {i}"
        );
    }
    let blocked = call(&gw, &keygate::auth::key::generate("kg").unwrap()).await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(blocked.headers.contains_key("retry-after"));
    // While blocked, even a valid key from this client waits: its request is not checked.
    assert_eq!(call(&gw, &good).await.status, StatusCode::TOO_MANY_REQUESTS);

    let text = get(&client(), &gw.status_url("/metrics")).await.text();
    assert_eq!(
        metric_value(&text, r#"keygate_rate_limited_total{scope="ip"}"#),
        Some(2.0),
        "{text}"
    );
    let lookups: f64 = text
        .lines()
        .filter(|l| l.starts_with("keygate_store_requests_total{") && l.contains("op=\"load_key\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        lookups, 6.0,
        "one lookup per well-formed guess and one for the good key, none while blocked"
    );
}
