//! Running keygate: configuration reload on SIGHUP (under load, refused when broken,
//! TLS certificates) and the access log.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

/// An upstream that answers with its own name, to tell which route a request took.
async fn named_upstream(name: &'static str) -> std::net::SocketAddr {
    upstream(move |_req| async move { Response::new(Full::from(name)) }).await
}

fn routes_v1(one: std::net::SocketAddr) -> String {
    format!(
        "routes:\n  - {{ name: old, path_prefix: /svc, upstream: 'http://{one}', auth: none }}\n"
    )
}

fn routes_v2(one: std::net::SocketAddr, two: std::net::SocketAddr) -> String {
    format!(
        "routes:
  - {{ name: fresh, path_prefix: /new, upstream: 'http://{two}', auth: none }}
  - {{ name: moved, path_prefix: /svc, upstream: 'http://{two}', auth: none }}
  - {{ name: old, path_prefix: /old, upstream: 'http://{one}', auth: none }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_changes_routes_without_failing_a_request() {
    let (one, two) = (named_upstream("one").await, named_upstream("two").await);
    let gw = Gateway::start(&routes_v1(one));
    assert_eq!(get(&client(), &gw.url("/svc/x")).await.text(), "one");

    // Four clients send requests back to back (bounded: 10 s or until told to stop) while
    // the routes change under them.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed, url) =
            (stop.clone(), sent.clone(), failed.clone(), gw.url("/svc/x"));
        load.push(tokio::spawn(async move {
            let c = client();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(10) {
                let r = get(&c, &url).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != StatusCode::OK || (r.text() != "one" && r.text() != "two") {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.rewrite_config(&routes_v2(one, two));
    gw.sighup();
    gw.wait_for_log("config reloaded", 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 50, "too little load to mean anything: {sent}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the reload"
    );

    let c = client();
    assert_eq!(
        get(&c, &gw.url("/svc/x")).await.text(),
        "two",
        "the route moved"
    );
    assert_eq!(
        get(&c, &gw.url("/new/x")).await.text(),
        "two",
        "the new route exists"
    );
    assert_eq!(get(&c, &gw.url("/old/x")).await.text(), "one");
}

#[tokio::test]
async fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let one = named_upstream("one").await;
    let gw = Gateway::start(&routes_v1(one));
    let c = client();

    gw.rewrite_config(&format!(
        "routes:\n  - name: old\n    path_prefix: /svc\n    upstream: 'http://{one}'\n    auth: none\n    colour: blue\n"
    ));
    gw.sighup();
    gw.wait_for_log("config reload refused", 1);
    assert!(
        gw.log().contains("routes[0].colour"),
        "the log says why:\n{}",
        gw.log()
    );
    assert_eq!(get(&c, &gw.url("/svc/x")).await.text(), "one");

    gw.rewrite_config("this: [is not: valid yaml\n");
    gw.sighup();
    gw.wait_for_log("config reload refused", 2);
    assert_eq!(get(&c, &gw.url("/svc/x")).await.text(), "one");

    // A setting that needs a restart is reported and kept; the rest applies.
    gw.rewrite_config(&format!(
        "proxy: {{ listen: '127.0.0.1:1' }}\n{}",
        routes_v1(one).replace("path_prefix: /svc", "path_prefix: /renamed")
    ));
    gw.sighup();
    gw.wait_for_log("config reloaded", 1);
    assert!(gw.log().contains("proxy.listen"), "{}", gw.log());
    assert_eq!(
        get(&c, &gw.url("/renamed/x")).await.text(),
        "one",
        "still on the old port, new route"
    );
    assert_eq!(
        get(&c, &gw.url("/svc/x")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn reload_swaps_the_tls_certificate_for_new_connections() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write_cert = || {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&cert_path, ck.cert.pem()).unwrap();
        std::fs::write(&key_path, ck.key_pair.serialize_pem()).unwrap();
        ck.cert.der().clone()
    };
    let trusting = |der: &rustls::pki_types::CertificateDer<'static>| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Client::builder(TokioExecutor::new()).build::<_, Full<bytes::Bytes>>(https)
    };
    let first = write_cert();
    let one = named_upstream("one").await;
    let config = format!(
        "proxy:\n  listen: '127.0.0.1:0'\n  tls: {{ cert_file: '{}', key_file: '{}' }}\n{}",
        cert_path.display(),
        key_path.display(),
        routes_v1(one)
    );
    let gw = Gateway::start(&config);
    let url = format!("https://localhost:{}/svc/x", gw.proxy.port());
    let call = |c: Client<_, Full<bytes::Bytes>>| {
        let url = url.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                c.request(Request::get(url).body(Full::default()).unwrap()),
            )
            .await
            .unwrap()
        }
    };
    assert!(call(trusting(&first)).await.is_ok());

    let second = write_cert();
    assert!(
        call(trusting(&second)).await.is_err(),
        "before the reload the old certificate is served"
    );
    gw.rewrite_config(&config);
    gw.sighup();
    gw.wait_for_log("config reloaded", 1);
    assert!(
        call(trusting(&second)).await.is_ok(),
        "new connections get the new certificate"
    );
    assert!(call(trusting(&first)).await.is_err());
}

#[tokio::test]
async fn the_access_log_names_requests_and_keys_but_never_secrets() {
    const TOKEN: &str = "access-log-admin-token";
    for format in ["text", "json"] {
        let up = echo_upstream().await;
        let store_dir = tempfile::tempdir().unwrap();
        let gw = Gateway::start_with_env(
            &format!(
                "log: {{ format: {format} }}\nstore: {{ embedded: {{ path: '{}' }} }}\nroutes:\n  - {{ name: api, upstream: 'http://{up}' }}\n",
                store_dir.path().join("kg.db").display()
            ),
            &[("KEYGATE_ADMIN_TOKEN", TOKEN)],
        );
        admin_call(&gw, "PUT", "/v1/users/logan", TOKEN, Some(json!({}))).await;
        let (_, key) = admin_call(
            &gw,
            "POST",
            "/v1/keys",
            TOKEN,
            Some(json!({"owner": "logan", "name": "k"})),
        )
        .await;
        let (key_id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
        let (_, rolled) = admin_call(
            &gw,
            "POST",
            &format!("/v1/keys/{key_id}/roll"),
            TOKEN,
            Some(json!({"grace": "1h"})),
        )
        .await;
        let rolled_secret = rolled["key"].as_str().unwrap();

        let c = client();
        let ok = send(
            &c,
            Request::get(gw.url("/things?token=query-secret"))
                .header("x-api-key", secret)
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(ok.status, 200);
        let refused = send(
            &c,
            Request::get(gw.url("/things"))
                .header("x-api-key", format!("{secret}x"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(refused.status, 401);
        let ok_id = ok.headers["x-request-id"].to_str().unwrap().to_owned();
        let refused_id = refused.headers["x-request-id"].to_str().unwrap().to_owned();

        gw.wait_for_log(&refused_id, 1);
        let log = gw.log();
        let line_of = |id: &str| {
            log.lines()
                .find(|l| l.contains(id) && l.contains("keygate::access"))
                .unwrap_or_else(|| panic!("no access line for {id}:\n{log}"))
                .to_owned()
        };
        let (ok_line, refused_line) = (line_of(&ok_id), line_of(&refused_id));
        if format == "json" {
            let entry: serde_json::Value = serde_json::from_str(&ok_line).unwrap();
            assert_eq!(entry["request_id"], ok_id.as_str());
            assert_eq!(entry["key_id"], key_id);
            assert_eq!(entry["status"], 200);
            assert_eq!(entry["decision"], "ok");
            assert_eq!(entry["route"], "api");
            assert_eq!(entry["path"], "/things");
            let entry: serde_json::Value = serde_json::from_str(&refused_line).unwrap();
            assert_eq!(entry["decision"], "invalid_key");
            assert_eq!(entry["status"], 401);
        } else {
            assert!(ok_line.contains(key_id), "{ok_line}");
            assert!(
                ok_line.contains("decision=\"ok\"") || ok_line.contains("decision=ok"),
                "{ok_line}"
            );
            assert!(refused_line.contains("invalid_key"), "{refused_line}");
        }
        for secret in [secret, rolled_secret, TOKEN, "query-secret"] {
            assert!(
                !log.contains(secret),
                "a secret reached the log ({format}):\n{log}"
            );
        }
    }
}
