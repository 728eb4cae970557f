//! Secret hygiene: issue keys every way the admin API can (create, roll, import by plaintext
//! and by SHA-256), use them — valid, disabled, revoked, mistyped, never issued — on the
//! proxy and as admin tokens, with logging at `trace`, then scan everything keygate lets out:
//! its whole log (all levels, all targets, dependencies included), `/metrics`, the audit log
//! and the key listings. No secret, and no SHA-256 of one, may appear anywhere.

mod common;

use std::time::{Duration, Instant};

use common::backend::Backend;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use keygate::auth::key;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TOKEN: &str = "kghygiene-bootstrap-2b7e151628aed2a6";

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Everything that must never be shown: the secret, and its hash in either case.
struct Secret {
    label: &'static str,
    text: String,
}

impl Secret {
    fn forms(&self) -> [String; 3] {
        let hash = sha256_hex(&self.text);
        [self.text.clone(), hash.to_ascii_uppercase(), hash]
    }
}

async fn admin(gw: &Gateway, method: &str, path: &str, token: &str, body: Value) -> Value {
    let body = if body.is_null() { None } else { Some(body) };
    let (status, json) = admin_call(gw, method, path, token, body).await;
    assert!(status.is_success(), "{method} {path}: {status} {json}");
    json
}

async fn proxy(gw: &Gateway, header: &str, value: &str) -> StatusCode {
    let req = Request::get(gw.url("/orders/1"))
        .header(header, value)
        .body(Full::default())
        .unwrap();
    send(&client(), req).await.status
}

/// Uses `secret` on the proxy in both places a key may be, and asks the admin API about it.
async fn use_key(gw: &Gateway, secret: &str, want: u16) {
    for (header, value) in [
        ("x-api-key", secret.to_owned()),
        ("authorization", format!("Bearer {secret}")),
    ] {
        assert_eq!(proxy(gw, header, &value).await.as_u16(), want, "{header}");
    }
    let (status, _) = admin_call(
        gw,
        "POST",
        "/v1/verify",
        TOKEN,
        Some(json!({ "key": secret })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

async fn secrets_never_leave_the_gateway(backend: Backend) {
    let up = echo_upstream().await;
    let mut gw = Gateway::start_with_env(
        &format!(
            "{}log: {{ access: true }}
limits: {{ failed_auth_per_ip: null }}
routes:
  - {{ name: orders, path_prefix: /orders, upstream: 'http://{up}', require: [orders:read] }}
",
            backend.store_yaml()
        ),
        &[("KEYGATE_ADMIN_TOKEN", TOKEN), ("RUST_LOG", "trace")],
    );
    wait_for_status(&client(), &gw.status_url("/readyz"), StatusCode::OK).await;

    admin(
        &gw,
        "PUT",
        "/v1/users/alice",
        TOKEN,
        json!({ "tenant": "acme", "permissions": ["orders:read"] }),
    )
    .await;
    admin(
        &gw,
        "PUT",
        "/v1/users/root",
        TOKEN,
        json!({ "tenant": "acme", "permissions": ["keygate:admin"] }),
    )
    .await;
    let create = |owner: &'static str, name: &'static str| {
        let gw = &gw;
        async move {
            let k = admin(
                gw,
                "POST",
                "/v1/keys",
                TOKEN,
                json!({ "owner": owner, "name": name }),
            )
            .await;
            (
                k["id"].as_str().unwrap().to_owned(),
                k["key"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (a_id, a) = create("alice", "created").await;
    let (b_id, b) = create("alice", "to disable").await;
    let (_, root) = create("root", "admin token").await;
    let rolled = admin(
        &gw,
        "POST",
        &format!("/v1/keys/{a_id}/roll"),
        TOKEN,
        json!({ "grace": "1h" }),
    )
    .await;
    let a2 = rolled["key"].as_str().unwrap().to_owned();
    let c = key::generate("kg").unwrap();
    let c_id = admin(
        &gw,
        "POST",
        "/v1/keys/import",
        TOKEN,
        json!({ "key": c, "owner": "alice", "name": "imported plaintext" }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = key::generate("kg").unwrap();
    admin(
        &gw,
        "POST",
        "/v1/keys/import",
        TOKEN,
        json!({ "sha256": sha256_hex(&d), "owner": "alice", "name": "imported hash" }),
    )
    .await;
    // A key made by a tenant admin (its own key as the bearer token).
    let e = admin(
        &gw,
        "POST",
        "/v1/keys",
        &root,
        json!({ "owner": "alice", "name": "by root" }),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();

    // Valid keys, on both key locations and through /v1/verify.
    for secret in [&a, &a2, &b, &c, &d, &e] {
        use_key(&gw, secret, 200).await;
    }
    // Refused ones: disabled, revoked, mistyped (bad checksum), never issued.
    admin(
        &gw,
        "PATCH",
        &format!("/v1/keys/{b_id}"),
        TOKEN,
        json!({ "enabled": false }),
    )
    .await;
    use_key(&gw, &b, 403).await;
    admin(
        &gw,
        "DELETE",
        &format!("/v1/keys/{c_id}"),
        TOKEN,
        Value::Null,
    )
    .await;
    use_key(&gw, &c, 401).await;
    let mut typo = a2.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'A' { 'B' } else { 'A' });
    use_key(&gw, &typo, 401).await;
    let never_issued = key::generate("kg").unwrap();
    use_key(&gw, &never_issued, 401).await;
    // As admin tokens: the tenant admin's key works; others are refused.
    admin(&gw, "GET", "/v1/keys", &root, Value::Null).await;
    for (token, want) in [
        (&a2, 403),
        (&never_issued, 401),
        (&typo, 401),
        (&format!("{TOKEN}x"), 401),
    ] {
        let (status, _) = admin_call(&gw, "GET", "/v1/keys", token, None).await;
        assert_eq!(status.as_u16(), want);
    }

    // What keygate lets out.
    let metrics = get(&client(), &gw.status_url("/metrics")).await.text();
    let audit = admin(&gw, "GET", "/v1/audit?limit=1000", TOKEN, Value::Null).await;
    let listing = admin(&gw, "GET", "/v1/keys?limit=1000", TOKEN, Value::Null).await;
    gw.sigterm();
    let exit = tokio::task::spawn_blocking(move || {
        let exit = gw.wait_exit(Duration::from_secs(15));
        (exit, gw)
    })
    .await
    .unwrap();
    let (exit, gw) = exit;
    assert!(exit.success(), "exit status {exit}");
    // The log reader thread drains the pipe after exit; "stopped" is the last line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("stopped") {
        assert!(Instant::now() < deadline, "no final log line");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = gw.log();

    // The scan has something to scan: trace lines from dependencies, access lines naming key
    // ids, decisions in the metrics, the writes in the audit log.
    assert!(log.contains("TRACE"), "the log is not at trace level");
    assert!(log.contains("keygate::access"), "no access log lines");
    assert!(log.contains(&a_id), "the access log names key ids");
    assert!(metrics.contains("keygate_auth_decisions_total{result=\"ok\"}"));
    assert!(metrics.contains("keygate_auth_decisions_total{result=\"invalid_key\"}"));
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "key.create",
        "key.roll",
        "key.import",
        "key.disable",
        "key.revoke",
    ] {
        assert!(actions.contains(&action), "{action} not audited: {audit}");
    }
    assert!(listing["items"].as_array().unwrap().len() >= 6, "{listing}");
    // The listing shows each key's start (by design), so a scan for text does find text.
    assert!(listing.to_string().contains(&a[..8]), "{listing}");
    eprintln!(
        "scanned {} log lines ({} bytes), {} bytes of metrics, {} audit entries",
        log.lines().count(),
        log.len(),
        metrics.len(),
        actions.len()
    );

    let secrets = [
        Secret {
            label: "bootstrap token",
            text: TOKEN.to_owned(),
        },
        Secret {
            label: "created",
            text: a,
        },
        Secret {
            label: "rolled",
            text: a2,
        },
        Secret {
            label: "disabled",
            text: b,
        },
        Secret {
            label: "imported plaintext (revoked)",
            text: c,
        },
        Secret {
            label: "imported by hash",
            text: d,
        },
        Secret {
            label: "tenant admin's",
            text: root,
        },
        Secret {
            label: "made by the tenant admin",
            text: e,
        },
        Secret {
            label: "mistyped",
            text: typo,
        },
        Secret {
            label: "never issued",
            text: never_issued,
        },
    ];
    let outputs = [
        ("log", log),
        ("/metrics", metrics),
        ("audit", audit.to_string()),
        ("key listing", listing.to_string()),
    ];
    let mut leaks = Vec::new();
    for secret in &secrets {
        for form in secret.forms() {
            for (name, text) in &outputs {
                if let Some(at) = text.find(&form) {
                    let line = text[..at].lines().count();
                    leaks.push(format!(
                        "{} key ({form}) in {name}, line {line}",
                        secret.label
                    ));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

#[tokio::test]
async fn secrets_never_leave_the_gateway_embedded() {
    secrets_never_leave_the_gateway(Backend::embedded()).await;
}

#[tokio::test]
async fn secrets_never_leave_the_gateway_redis() {
    secrets_never_leave_the_gateway(Backend::redis()).await;
}
