//! Revocation propagation across three keygate instances sharing one Redis, on loopback:
//! the time from the DELETE answer on instance A until B and C both refuse the key.
//!
//! `cargo bench --bench propagation` runs 300 rounds and prints p50/p90/p99/max.
//! Under `cargo test` (no `--bench` argument) it runs 5 rounds as a smoke test.
//! A benchmark, not a timed test: it reports figures and asserts only that every round
//! ends in a refusal.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

const TOKEN: &str = "bench-admin-token";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 300 } else { 5 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(rounds));
}

async fn run(rounds: usize) {
    let redis = RedisServer::start_tcp();
    let up = echo_upstream().await;
    // Without the failed-authentication limit per IP: every round ends in 401s for the
    // revoked key, and after 100 of them in a minute (the default) this client would get 429
    // for the next round's fresh key.
    let config = format!(
        "store: {{ backend: redis, redis: {{ url: '{}', key_prefix: 'prop:' }} }}\nlog: {{ level: warn }}\nlimits: {{ failed_auth_per_ip: null }}\nroutes:\n  - {{ name: api, upstream: 'http://{up}' }}\n",
        redis.url
    );
    let gws: Vec<Gateway> = (0..3)
        .map(|_| {
            Gateway::start_with_env(
                &config,
                &[("KEYGATE_ADMIN_TOKEN", TOKEN), ("RUST_LOG", "info")],
            )
        })
        .collect();
    for gw in &gws {
        wait_for_status(&client(), &gw.status_url("/readyz"), StatusCode::OK).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gw.log().contains("subscribed to invalidation events") {
            assert!(Instant::now() < deadline, "instance never subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (a, others) = gws.split_first().unwrap();
    admin_call(a, "PUT", "/v1/users/bench", TOKEN, Some(json!({}))).await;

    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (status, key) = admin_call(
            a,
            "POST",
            "/v1/keys",
            TOKEN,
            Some(json!({"owner": "bench", "name": "p"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let (id, secret) = (
            key["id"].as_str().unwrap().to_owned(),
            key["key"].as_str().unwrap().to_owned(),
        );
        for gw in &gws {
            assert_eq!(status_of(gw, &secret).await, StatusCode::OK);
        }
        let (status, _) = admin_call(a, "DELETE", &format!("/v1/keys/{id}"), TOKEN, None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let answered = Instant::now();
        let waits = futures_util::future::join_all(
            others.iter().map(|gw| refused_after(gw, &secret, answered)),
        )
        .await;
        samples.push(waits.into_iter().max().unwrap());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("revocation propagation over 3 instances, {rounds} rounds (DELETE answer on A → B and C both refuse):");
    println!(
        "  p50 {:.3} ms   p90 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(*samples.last().unwrap())
    );
}

async fn status_of(gw: &Gateway, secret: &str) -> StatusCode {
    let req = Request::get(gw.url("/p"))
        .header("x-api-key", secret)
        .body(Full::default())
        .unwrap();
    send(&client(), req).await.status
}

/// Polls `gw` until it refuses the key (bounded: 5 s); returns the time since `since`.
async fn refused_after(gw: &Gateway, secret: &str, since: Instant) -> Duration {
    loop {
        if status_of(gw, secret).await == StatusCode::UNAUTHORIZED {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{} never refused the revoked key",
            gw.proxy
        );
    }
}
