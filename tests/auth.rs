//! API keys end to end: a real keygate on each backend (embedded redb file, real
//! redis-server), a real upstream, fixtures written through the `Store` trait.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::backend::{Backend, TEST_REDIS_PREFIX};
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use keygate::auth::key::{self, KeyHash};
use keygate::store::redis::RedisStore;
use keygate::store::{Group, KeyRecord, Store, User};

/// Secrets of the fixture keys, by label.
struct Keys(HashMap<&'static str, String>);

impl Keys {
    fn get(&self, label: &str) -> &str {
        &self.0[label]
    }
}

fn user(id: &str, active: bool, groups: &[&str], permissions: &[&str]) -> User {
    User {
        id: id.into(),
        tenant: "acme".into(),
        name: format!("{id} example"),
        active,
        groups: groups.iter().map(|s| s.to_string()).collect(),
        permissions: permissions.iter().map(|s| s.to_string()).collect(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
        rate_limit: None,
    }
}

fn group(id: &str, permissions: &[&str]) -> Group {
    Group {
        id: id.into(),
        tenant: "acme".into(),
        permissions: permissions.iter().map(|s| s.to_string()).collect(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

/// Stores a new key and returns its secret.
async fn add_key(
    store: &dyn Store,
    id: &str,
    owner: &str,
    edit: impl FnOnce(&mut KeyRecord),
) -> String {
    let secret = key::generate("kg").unwrap();
    let mut record = KeyRecord {
        id: id.into(),
        hash: KeyHash::of(&secret),
        start: key::start_of(&secret),
        name: format!("{id} key"),
        description: String::new(),
        owner: owner.into(),
        tenant: "acme".into(),
        enabled: true,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        expires_at: None,
        last_used_at: None,
        permissions: None,
        created_by: "test".into(),
        meta: None,
        rate_limit: None,
    };
    edit(&mut record);
    store.insert_key(&record).await.unwrap();
    secret
}

async fn seed(store: &dyn Store) -> Keys {
    store
        .put_group(&group("readers", &["orders:read"]))
        .await
        .unwrap();
    store
        .put_group(&group("writers", &["orders:write"]))
        .await
        .unwrap();
    store
        .put_user(&user("alice", true, &["readers"], &["profile:read"]))
        .await
        .unwrap();
    store
        .put_user(&user("bob", false, &[], &["orders:*"]))
        .await
        .unwrap();
    store
        .put_user(&user(
            "carol",
            true,
            &["writers", "readers"],
            &["billing:*"],
        ))
        .await
        .unwrap();
    let mut keys = HashMap::new();
    keys.insert(
        "alice",
        add_key(store, "key_alice", "alice", |k| {
            k.name = "Alice's clé".into()
        })
        .await,
    );
    keys.insert(
        "alice-spare",
        add_key(store, "key_alice_spare", "alice", |_| {}).await,
    );
    keys.insert("carol", add_key(store, "key_carol", "carol", |_| {}).await);
    keys.insert(
        "carol-narrow",
        add_key(store, "key_carol_narrow", "carol", |k| {
            k.permissions = Some(vec!["orders:read".into()])
        })
        .await,
    );
    keys.insert(
        "expired",
        add_key(store, "key_expired", "alice", |k| {
            k.expires_at = Some(Utc::now() - chrono::Duration::minutes(1))
        })
        .await,
    );
    keys.insert(
        "disabled",
        add_key(store, "key_disabled", "alice", |k| k.enabled = false).await,
    );
    keys.insert(
        "inactive",
        add_key(store, "key_inactive", "bob", |_| {}).await,
    );
    Keys(keys)
}

/// A backend with fixtures, a gateway on it, and an echo upstream behind four routes.
async fn setup(backend: Backend) -> (Backend, Keys, Gateway) {
    setup_with(backend, "").await
}

/// [`setup`] with more configuration (top-level YAML lines).
async fn setup_with(backend: Backend, extra: &str) -> (Backend, Keys, Gateway) {
    let keys = seed(&*backend.store().await).await;
    let up = echo_upstream().await;
    let gw = Gateway::start(&format!(
        // The failed-authentication limit per IP has its own tests (tests/limits.rs); here
        // it would turn the garbage flood's 401s into 429s.
        "{}{extra}limits: {{ failed_auth_per_ip: null }}
routes:
  - {{ name: open, path_prefix: /open, upstream: 'http://{up}', auth: none }}
  - {{ name: maybe, path_prefix: /maybe, upstream: 'http://{up}', auth: optional }}
  - {{ name: orders-write, path_prefix: /orders/write, upstream: 'http://{up}', require: [orders:write] }}
  - {{ name: api, path_prefix: /, upstream: 'http://{up}' }}
",
        backend.store_yaml()
    ));
    (backend, keys, gw)
}

async fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(Full::default()).unwrap()).await
}

fn assert_refused(r: &Answer, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], code, "{}", r.text());
}

/// Store calls made by the data plane (pings excluded), from `/metrics`.
async fn data_plane_store_calls(gw: &Gateway) -> f64 {
    let text = get(&client(), &gw.status_url("/metrics")).await.text();
    text.lines()
        .filter(|l| l.starts_with("keygate_store_requests_total{") && !l.contains("op=\"ping\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::embedded()).await } )*
        }
        mod redis {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::redis()).await } )*
        }
    };
}

on_both_backends!(
    valid_key_reaches_upstream_with_identity_and_without_the_key,
    spoofed_identity_headers_never_reach_the_upstream,
    each_key_state_gets_its_refusal,
    route_require_is_enforced_with_narrowed_keys,
    garbage_keys_cost_no_store_lookups,
    optional_routes_admit_anonymous_callers,
    keys_in_use_are_reloaded_before_they_expire,
);

async fn valid_key_reaches_upstream_with_identity_and_without_the_key(backend: Backend) {
    let (_b, keys, gw) = setup(backend).await;
    let r = call(&gw, "/things", &[("x-api-key", keys.get("alice"))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-keygate-key-id"][0], "key_alice");
    assert_eq!(seen["x-keygate-key-name"][0], "Alice's cl%C3%A9");
    assert_eq!(seen["x-keygate-tenant"][0], "acme");
    assert_eq!(seen["x-keygate-user"][0], "alice");
    assert_eq!(seen["x-keygate-groups"][0], "readers");
    assert_eq!(seen["x-keygate-permissions"][0], "orders:read,profile:read");
    assert!(
        seen.get("x-api-key").is_none(),
        "the key reached the upstream: {seen}"
    );

    // As a bearer token, the Authorization header goes too; a foreign one would stay.
    let bearer = format!("Bearer {}", keys.get("carol"));
    let r = call(&gw, "/things", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200);
    let seen = &r.json()["headers"];
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert_eq!(seen["x-keygate-groups"][0], "readers,writers");
    assert_eq!(
        seen["x-keygate-permissions"][0],
        "billing:*,orders:read,orders:write"
    );

    // The same key in both places is one key; two different keys are refused.
    let r = call(
        &gw,
        "/things",
        &[("x-api-key", keys.get("carol")), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(
        &gw,
        "/things",
        &[("x-api-key", keys.get("alice")), ("authorization", &bearer)],
    )
    .await;
    assert_refused(&r, 401, "invalid_key");
}

async fn spoofed_identity_headers_never_reach_the_upstream(backend: Backend) {
    let (_b, keys, gw) = setup(backend).await;
    let spoofs = [
        ("X-Keygate-User", "root"),
        ("x-keygate-permissions", "*"),
        ("X_Keygate_User", "root"),
        ("x-keygate-tenant", "other"),
    ];
    let mut headers = vec![("x-api-key", keys.get("alice"))];
    headers.extend(spoofs.iter().copied());
    for path in ["/things", "/maybe/x", "/open/x"] {
        let with_key = call(&gw, path, &headers).await;
        let anonymous = call(&gw, path, &spoofs).await;
        for r in [&with_key, &anonymous] {
            if r.status != 200 {
                continue; // a required route refuses the anonymous call: nothing reached anyone
            }
            let seen = &r.json()["headers"];
            assert!(seen.get("x_keygate_user").is_none(), "{path}: {seen}");
            for (name, values) in seen.as_object().unwrap() {
                for v in values.as_array().unwrap() {
                    assert!(
                        v != "root" && v != "*" && v != "other",
                        "{path}: spoofed {name}: {v} reached the upstream"
                    );
                }
            }
        }
        assert_eq!(with_key.status, 200, "{path}");
        if path != "/open/x" {
            assert_eq!(
                with_key.json()["headers"]["x-keygate-user"],
                serde_json::json!(["alice"]),
                "{path}"
            );
        }
    }
}

async fn each_key_state_gets_its_refusal(backend: Backend) {
    let (_b, keys, gw) = setup(backend).await;
    let r = call(&gw, "/things", &[]).await;
    assert_refused(&r, 401, "missing_key");
    assert!(r.headers.contains_key("www-authenticate"));
    assert_refused(
        &call(&gw, "/things", &[("x-api-key", keys.get("expired"))]).await,
        403,
        "key_expired",
    );
    assert_refused(
        &call(&gw, "/things", &[("x-api-key", keys.get("disabled"))]).await,
        403,
        "key_disabled",
    );
    assert_refused(
        &call(&gw, "/things", &[("x-api-key", keys.get("inactive"))]).await,
        403,
        "user_inactive",
    );
    let unknown = key::generate("kg").unwrap();
    assert_refused(
        &call(&gw, "/things", &[("x-api-key", &unknown)]).await,
        401,
        "invalid_key",
    );

    let text = get(&client(), &gw.status_url("/metrics")).await.text();
    for (result, n) in [
        ("missing_key", 1.0),
        ("key_expired", 1.0),
        ("key_disabled", 1.0),
        ("user_inactive", 1.0),
        ("invalid_key", 1.0),
    ] {
        let series = format!("keygate_auth_decisions_total{{result=\"{result}\"}}");
        assert_eq!(metric_value(&text, &series), Some(n), "{series}\n{text}");
    }
}

async fn route_require_is_enforced_with_narrowed_keys(backend: Backend) {
    let (_b, keys, gw) = setup(backend).await;
    assert_refused(
        &call(&gw, "/orders/write/1", &[("x-api-key", keys.get("alice"))]).await,
        403,
        "insufficient_permissions",
    );
    assert_eq!(
        call(&gw, "/orders/write/1", &[("x-api-key", keys.get("carol"))])
            .await
            .status,
        200
    );
    // Carol may write orders, but this key of hers is narrowed to orders:read.
    assert_refused(
        &call(
            &gw,
            "/orders/write/1",
            &[("x-api-key", keys.get("carol-narrow"))],
        )
        .await,
        403,
        "insufficient_permissions",
    );
    let r = call(
        &gw,
        "/orders/read",
        &[("x-api-key", keys.get("carol-narrow"))],
    )
    .await;
    assert_eq!(
        r.json()["headers"]["x-keygate-permissions"][0],
        "orders:read"
    );

    let text = get(&client(), &gw.status_url("/metrics")).await.text();
    assert_eq!(
        metric_value(&text, r#"keygate_auth_decisions_total{result="ok"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"keygate_auth_decisions_total{result="insufficient_permissions"}"#
        ),
        Some(2.0)
    );
}

async fn garbage_keys_cost_no_store_lookups(backend: Backend) {
    let (_b, keys, gw) = setup(backend).await;
    let before = data_plane_store_calls(&gw).await;
    let good = keys.get("alice").to_owned();
    let mut flipped = good.clone().into_bytes();
    flipped[10] = if flipped[10] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    for garbage in [
        "nope",
        "kg_short",
        "kg_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        &flipped,
        &format!("{good}x"),
        "Bearer",
    ] {
        for _ in 0..20 {
            assert_refused(
                &call(&gw, "/things", &[("x-api-key", garbage)]).await,
                401,
                "invalid_key",
            );
        }
    }
    assert_eq!(
        data_plane_store_calls(&gw).await,
        before,
        "garbage reached the store"
    );

    // A well-formed unknown key costs one lookup, then the negative cache answers.
    let unknown = key::generate("kg").unwrap();
    for _ in 0..5 {
        assert_refused(
            &call(&gw, "/things", &[("x-api-key", &unknown)]).await,
            401,
            "invalid_key",
        );
    }
    assert_eq!(data_plane_store_calls(&gw).await, before + 1.0);
    // And a good key: one miss, then hits.
    for _ in 0..5 {
        assert_eq!(
            call(&gw, "/things", &[("x-api-key", &good)]).await.status,
            200
        );
    }
    assert_eq!(data_plane_store_calls(&gw).await, before + 2.0);
    let text = get(&client(), &gw.status_url("/metrics")).await.text();
    assert_eq!(
        metric_value(&text, r#"keygate_auth_cache_lookups_total{result="miss"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"keygate_auth_cache_lookups_total{result="negative_hit"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        metric_value(&text, r#"keygate_auth_cache_lookups_total{result="hit"}"#),
        Some(4.0)
    );
}

async fn optional_routes_admit_anonymous_callers(backend: Backend) {
    let (_b, keys, gw) = setup(backend).await;
    let r = call(&gw, "/maybe/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-keygate-anonymous"][0], "true");
    assert!(r.json()["headers"].get("x-keygate-user").is_none());
    let r = call(&gw, "/maybe/x", &[("x-api-key", keys.get("alice"))]).await;
    assert_eq!(r.json()["headers"]["x-keygate-user"][0], "alice");
    assert!(r.json()["headers"].get("x-keygate-anonymous").is_none());
    // A bad key is refused, not downgraded to anonymous.
    assert_refused(
        &call(&gw, "/maybe/x", &[("x-api-key", "kg_bad")]).await,
        401,
        "invalid_key",
    );
    assert_refused(
        &call(&gw, "/maybe/x", &[("x-api-key", keys.get("disabled"))]).await,
        403,
        "key_disabled",
    );
    // auth: none does no checking and claims nothing, but still strips the key.
    let r = call(&gw, "/open/x", &[("x-api-key", keys.get("alice"))]).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-api-key").is_none());
    assert!(r.json()["headers"].get("x-keygate-user").is_none());
}

#[tokio::test]
async fn redis_outage_serves_cached_keys_and_503s_the_rest_then_recovers() {
    let (backend, keys, gw) = setup(Backend::redis()).await;
    let Backend::Redis(mut server) = backend else {
        unreachable!()
    };
    let c = client();
    assert_eq!(
        call(&gw, "/things", &[("x-api-key", keys.get("alice"))])
            .await
            .status,
        200
    );

    server.stop();
    for _ in 0..3 {
        let cached = call(&gw, "/things", &[("x-api-key", keys.get("alice"))]).await;
        assert_eq!(
            cached.status,
            200,
            "a cached key keeps working: {}",
            cached.text()
        );
    }
    let uncached = call(&gw, "/things", &[("x-api-key", keys.get("alice-spare"))]).await;
    assert_refused(&uncached, 503, "auth_unavailable");
    let unknown = call(
        &gw,
        "/things",
        &[("x-api-key", &key::generate("kg").unwrap())],
    )
    .await;
    assert_refused(&unknown, 503, "auth_unavailable");
    assert_eq!(
        get(&c, &gw.status_url("/readyz")).await.status,
        200,
        "an outage after start does not make keygate unready"
    );

    // Redis comes back (empty: the test server keeps nothing); a key created now works
    // without restarting keygate.
    server.restart();
    let store = RedisStore::connect(&server.url, TEST_REDIS_PREFIX)
        .await
        .unwrap();
    store.put_user(&user("dave", true, &[], &[])).await.unwrap();
    let fresh = add_key(&store, "key_dave", "dave", |_| {}).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(&gw, "/things", &[("x-api-key", &fresh)]).await;
        if r.status == StatusCode::OK {
            assert_eq!(r.json()["headers"]["x-keygate-user"][0], "dave");
            break;
        }
        assert_refused(&r, 503, "auth_unavailable");
        assert!(
            Instant::now() < deadline,
            "keygate did not recover after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = get(&c, &gw.status_url("/metrics")).await.text();
    assert_eq!(metric_value(&text, "keygate_store_up"), Some(1.0), "{text}");
}

#[tokio::test]
async fn stale_records_serve_during_an_outage_only_within_stale_if_error() {
    let backend = Backend::redis();
    let keys = seed(&*backend.store().await).await;
    let up = echo_upstream().await;
    let gw = Gateway::start(&format!(
        "{}cache: {{ ttl: 200ms, stale_if_error: 1s }}\nroutes:\n  - {{ name: api, upstream: 'http://{up}' }}\n",
        backend.store_yaml()
    ));
    let Backend::Redis(mut server) = backend else {
        unreachable!()
    };
    assert_eq!(
        call(&gw, "/x", &[("x-api-key", keys.get("alice"))])
            .await
            .status,
        200
    );
    server.stop();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Past ttl, within ttl + stale_if_error: served stale.
    assert_eq!(
        call(&gw, "/x", &[("x-api-key", keys.get("alice"))])
            .await
            .status,
        200
    );
    let text = get(&client(), &gw.status_url("/metrics")).await.text();
    assert!(
        metric_value(&text, r#"keygate_auth_cache_lookups_total{result="stale"}"#).unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Past the window: the record is gone and the store is down.
    assert_refused(
        &call(&gw, "/x", &[("x-api-key", keys.get("alice"))]).await,
        503,
        "auth_unavailable",
    );
}

/// A key used in the last quarter of its `ttl` is reloaded in the background, so the request
/// after the `ttl` is still a hit: no request waits for the store while the key is in use.
async fn keys_in_use_are_reloaded_before_they_expire(backend: Backend) {
    let (_b, keys, gw) = setup_with(backend, "cache: { ttl: 2s }\n").await;
    let good = keys.get("alice").to_owned();
    let loaded = std::time::Instant::now();
    assert_eq!(
        call(&gw, "/things", &[("x-api-key", &good)]).await.status,
        200
    );
    let after_miss = data_plane_store_calls(&gw).await;

    // Before three quarters of the ttl: a plain hit.
    assert_eq!(
        call(&gw, "/things", &[("x-api-key", &good)]).await.status,
        200
    );
    assert_eq!(data_plane_store_calls(&gw).await, after_miss);

    // Past them (1.5 s), before the ttl: still a hit, and one reload in the background.
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(loaded.elapsed())).await;
    assert!(
        loaded.elapsed() < Duration::from_secs(2),
        "too slow to test in the window"
    );
    assert_eq!(
        call(&gw, "/things", &[("x-api-key", &good)]).await.status,
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while data_plane_store_calls(&gw).await == after_miss {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload in the background"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Past the first load's ttl: the reloaded entry answers.
    tokio::time::sleep(Duration::from_millis(2400).saturating_sub(loaded.elapsed())).await;
    assert_eq!(
        call(&gw, "/things", &[("x-api-key", &good)]).await.status,
        200
    );
    let text = get(&client(), &gw.status_url("/metrics")).await.text();
    assert_eq!(
        metric_value(&text, r#"keygate_auth_cache_lookups_total{result="miss"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, r#"keygate_auth_cache_lookups_total{result="hit"}"#),
        Some(3.0)
    );
}
