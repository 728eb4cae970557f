//! Store faults under load: `redis-server` (with AOF, so its data comes back) is killed and
//! restarted while clients keep sending. Cached keys keep succeeding (stale-if-error),
//! uncached keys get 503 `auth_unavailable` and never 401/403, keygate recovers by itself
//! within a second of Redis answering again, and a key revoked while keygate's
//! subscription was down is refused once it is back.
//!
//! tests/auth.rs covers the same states one request at a time (`redis_outage_*`,
//! `stale_records_*`); here the outage happens under concurrent traffic, the data survives
//! the restart, and revocations race the resubscription.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::backend::{Backend, TEST_REDIS_PREFIX};
use common::redis::RedisServer;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use keygate::auth::key::{self, KeyHash};
use keygate::events::{channel_for, Change};
use keygate::store::redis::RedisStore;
use keygate::store::Store;
use serde_json::{json, Value};

const TOKEN: &str = "kgfaults-bootstrap-5d1c8e2a7b3f9064";
/// How long each outage lasts: long enough for keygate's subscriber to back off to its
/// longest retry interval.
const OUTAGE: Duration = Duration::from_millis(1500);
/// Outages in one run; a revocation that lands after the resubscription (PUBLISH reached a
/// subscriber) tests the event path instead, so there are a few tries at the other one.
const OUTAGES: usize = 3;

/// Where the outage is when a request starts and ends.
const UP: u8 = 0;
const GOING_DOWN: u8 = 1;
const DOWN: u8 = 2;
const COMING_BACK: u8 = 3;
const BACK: u8 = 4;

#[derive(Debug)]
struct Sample {
    key: &'static str,
    phases: (u8, u8),
    status: u16,
    code: String,
}

async fn proxy_call(gw_url: &str, secret: &str) -> Result<(u16, String), String> {
    let req = Request::get(gw_url)
        .header("x-api-key", secret)
        .body(Full::default())
        .unwrap();
    let answer = try_send(&client(), req).await?;
    let code = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok((answer.status.as_u16(), code))
}

/// Sends requests with the current `secret` back to back until `stop`, noting the outage
/// phase at the start and end of each. With `from_outage`, it waits for each outage to
/// begin: the key it sends must not be in the cache before.
async fn load(
    url: String,
    key: &'static str,
    secret: Arc<Mutex<String>>,
    from_outage: bool,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let before = phase.load(Ordering::SeqCst);
        if from_outage && before == UP {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let secret = secret.lock().unwrap().clone();
        let result = proxy_call(&url, &secret).await;
        let after = phase.load(Ordering::SeqCst);
        let (status, code) = result.unwrap_or_else(|e| panic!("{key}: no answer: {e}"));
        samples.push(Sample {
            key,
            phases: (before, after),
            status,
            code,
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    samples
}

async fn issue(gw: &Gateway, owner: &str, name: &str) -> (String, String) {
    let (status, k) = admin_call(
        gw,
        "POST",
        "/v1/keys",
        TOKEN,
        Some(json!({ "owner": owner, "name": name })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{k}");
    (
        k["id"].as_str().unwrap().to_owned(),
        k["key"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarts_under_load() {
    let backend = Backend::Redis(RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]));
    let up = echo_upstream().await;
    // A long ttl, so only stale-if-error, events and revalidation decide what is served.
    let gw = Gateway::start_with_env(
        &format!(
            "{}cache: {{ ttl: 60s, negative_ttl: 10s, stale_if_error: 5m }}
limits: {{ failed_auth_per_ip: null }}
log: {{ access: false }}
routes:
  - {{ name: api, upstream: 'http://{up}' }}
",
            backend.store_yaml()
        ),
        &[("KEYGATE_ADMIN_TOKEN", TOKEN)],
    );
    let Backend::Redis(mut server) = backend else {
        unreachable!()
    };
    wait_for_status(&client(), &gw.status_url("/readyz"), StatusCode::OK).await;
    let (status, _) = admin_call(&gw, "PUT", "/v1/users/alice", TOKEN, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let url = gw.url("/x");
    let (_, hot) = issue(&gw, "alice", "hot").await;
    let never_issued = key::generate("kg").unwrap();
    // The hot key is in the cache before the first outage; the cold one never was.
    assert_eq!(proxy_call(&url, &hot).await.unwrap().0, 200);
    let subscribed = "subscribed to invalidation events";
    gw.wait_for_log(subscribed, 1);

    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // A new cold key for each outage: issued before, first used during it.
    let cold = Arc::new(Mutex::new(String::new()));
    for (key, secret, from_outage) in [
        ("hot", hot.clone(), false),
        ("hot", hot.clone(), false),
        ("cold", String::new(), true),
        ("never issued", never_issued.clone(), false),
    ] {
        let secret = if key == "cold" {
            cold.clone()
        } else {
            Arc::new(Mutex::new(secret))
        };
        tasks.push(tokio::spawn(load(
            url.clone(),
            key,
            secret,
            from_outage,
            phase.clone(),
            stop.clone(),
        )));
    }

    let mut recoveries = Vec::new();
    let mut missed_events = 0;
    for round in 0..OUTAGES {
        // A key in the cache, about to be revoked while this instance is not subscribed.
        let (revoke_id, doomed) = issue(&gw, "alice", &format!("doomed {round}")).await;
        let cold_now = issue(&gw, "alice", &format!("cold {round}")).await.1;
        *cold.lock().unwrap() = cold_now.clone();
        assert_eq!(proxy_call(&url, &doomed).await.unwrap().0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;

        phase.store(GOING_DOWN, Ordering::SeqCst);
        tokio::task::block_in_place(|| server.stop());
        phase.store(DOWN, Ordering::SeqCst);
        tokio::time::sleep(OUTAGE).await;
        // The doomed key is cached: served stale through the outage.
        assert_eq!(proxy_call(&url, &doomed).await.unwrap().0, 200);
        phase.store(COMING_BACK, Ordering::SeqCst);
        tokio::task::block_in_place(|| server.restart());
        let back_at = Instant::now();
        phase.store(BACK, Ordering::SeqCst);

        // Another instance revokes the key now, before this one has resubscribed: the
        // record goes and the event is published to whoever listens.
        let store = RedisStore::connect(&server.url, TEST_REDIS_PREFIX)
            .await
            .unwrap();
        let removed = store.delete_key(&revoke_id).await.unwrap().unwrap();
        let mut event = serde_json::to_value(Change::Key {
            hash: KeyHash::of(&doomed),
        })
        .unwrap();
        event["published_us"] = json!(chrono::Utc::now().timestamp_micros());
        assert_eq!(removed.hash, KeyHash::of(&doomed));
        let receivers = server.cli(&[
            "PUBLISH",
            &channel_for(TEST_REDIS_PREFIX),
            &event.to_string(),
        ]);
        if receivers == "0" {
            missed_events += 1;
        }

        // keygate recovers by itself: the cold key (never cached, refused with 503 all
        // through the outage) works within a second of Redis answering again.
        let recovered = loop {
            let (status, code) = proxy_call(&url, &cold_now).await.unwrap();
            if status == 200 {
                break back_at.elapsed();
            }
            assert_eq!((status, code.as_str()), (503, "auth_unavailable"));
            assert!(
                back_at.elapsed() < Duration::from_secs(1),
                "round {round}: not recovered within a second of Redis coming back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        recoveries.push(recovered);

        // Once resubscribed, the revoked key is refused, whether its event arrived or not.
        gw.wait_for_log(subscribed, round + 2);
        let (status, code) = proxy_call(&url, &doomed).await.unwrap();
        assert_eq!(
            (status, code.as_str()),
            (401, "invalid_key"),
            "round {round}: a key revoked while the subscription was down still works \
             (event receivers: {receivers})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        phase.store(UP, Ordering::SeqCst);
    }
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }

    // Cached keys: every answer a 200, before, during and after each outage.
    let hot_answers: Vec<_> = samples.iter().filter(|s| s.key == "hot").collect();
    let during = |s: &&&Sample| s.phases == (DOWN, DOWN);
    assert!(
        hot_answers.iter().filter(during).count() > 20,
        "too little load during outages"
    );
    let failed: Vec<_> = hot_answers.iter().filter(|s| s.status != 200).collect();
    assert!(failed.is_empty(), "a cached key failed: {failed:?}");
    // Uncached keys: 503 auth_unavailable during the outage, never a 401/403; 200 otherwise.
    for s in samples.iter().filter(|s| s.key == "cold") {
        match s.status {
            200 => {} // before the kill took effect, or once Redis answered again
            503 => assert_eq!(s.code, "auth_unavailable", "{s:?}"),
            _ => panic!("an uncached valid key was refused: {s:?}"),
        }
        if s.phases == (DOWN, DOWN) {
            assert_eq!(s.status, 503, "{s:?}");
        }
    }
    // A key that was never issued: unknown (401) or, when the store is down, 503.
    for s in samples.iter().filter(|s| s.key == "never issued") {
        assert!(
            (s.status == 401 && s.code == "invalid_key")
                || (s.status == 503 && s.code == "auth_unavailable"),
            "{s:?}"
        );
    }
    let metrics = get(&client(), &gw.status_url("/metrics")).await.text();
    let stale = metric_value(
        &metrics,
        r#"keygate_auth_cache_lookups_total{result="stale"}"#,
    );
    assert!(
        stale.unwrap_or(0.0) > 0.0,
        "no stale answers counted:\n{metrics}"
    );
    assert_eq!(metric_value(&metrics, "keygate_store_up"), Some(1.0));
    assert!(
        missed_events > 0,
        "every revocation reached a subscriber: the missed-event path was never tested"
    );
    eprintln!(
        "{} requests over {OUTAGES} outages of {OUTAGE:?}; recovered after {recoveries:?}; \
         {missed_events} revocation(s) published with no subscriber",
        samples.len()
    );
}
