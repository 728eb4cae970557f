//! The web console's files on the admin listener: the page, its modules, their headers.
//! (What the console does is tested in a real browser: tests/e2e, `scripts/test-console`.)

mod common;

use common::*;
use http::{header, Request, StatusCode};
use http_body_util::Full;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn gateway() -> Gateway {
    Gateway::start(
        "store: { backend: embedded, embedded: { path: keygate.db } }
routes:
  - { name: api, upstream: 'http://127.0.0.1:9' }
",
    )
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() {
    let gw = gateway();
    let page = get(&client(), &gw.admin_url("/")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.headers[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert_eq!(page.headers[header::CONTENT_SECURITY_POLICY], CSP);
    assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(page.headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-cache");
    let html = page.text();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#));
    // Nothing from elsewhere: every script and stylesheet is our own.
    assert!(!html.contains("http://") && !html.contains("https://"));
}

#[tokio::test]
async fn scripts_and_styles_have_their_types_and_revalidate() {
    let gw = gateway();
    let c = client();
    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("keys.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
    ] {
        let a = get(&c, &gw.admin_url(&format!("/console/{file}"))).await;
        assert_eq!(a.status, StatusCode::OK, "{file}");
        assert_eq!(a.headers[header::CONTENT_TYPE], content_type, "{file}");
        assert_eq!(a.headers[header::CONTENT_SECURITY_POLICY], CSP, "{file}");
        assert_eq!(a.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(!a.body.is_empty(), "{file}");

        // Unchanged files cost a 304 on the next visit.
        let etag = a.headers[header::ETAG].clone();
        let again = send(
            &c,
            Request::get(gw.admin_url(&format!("/console/{file}")))
                .header(header::IF_NONE_MATCH, etag.clone())
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{file}");
        assert_eq!(again.headers[header::ETAG], etag);
        assert!(again.body.is_empty());
    }
}

#[tokio::test]
async fn unknown_console_files_are_not_found() {
    let gw = gateway();
    let c = client();
    for path in [
        "/console/nope",
        "/console/",
        "/console/..%2FCargo.toml",
        "/console/app.js/x",
    ] {
        let a = get(&c, &gw.admin_url(path)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.json()["error"]["code"], "not_found", "{path}");
    }
    // The admin API beside it is unchanged.
    let a = get(&c, &gw.admin_url("/v1/keys")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}
