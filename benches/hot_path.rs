//! Per-request work the gateway does before forwarding: route match and header rewrite.
//! Run: `cargo bench --bench hot_path`. Figures are recorded in BENCHMARKS.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Uri};
use keygate::config::Config;
use keygate::proxy::rewrite::{self, ClientSide};
use keygate::proxy::route::Router;

const CONFIG: &str = "routes:
  - { name: admin, host: admin.example.com, upstream: 'http://127.0.0.1:9001', auth: none }
  - { name: writes, path_prefix: /api/v1/orders, methods: [POST], upstream: 'http://127.0.0.1:9002', auth: none }
  - { name: api, path_prefix: /api, strip_prefix: true, upstream: 'http://127.0.0.1:9003/base', auth: none }
  - { name: web, path_prefix: /, upstream: 'http://127.0.0.1:9004', auth: none }
";

/// The headers of a typical API call from a browser-less client.
fn typical_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("x-api-key", "kg_0123456789abcdefghijABCDEFGHIJ012345"),
        ("content-type", "application/json"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "198.51.100.20"),
        ("x-keygate-user", "spoofed"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let config = Config::from_yaml(CONFIG, &|_| None).unwrap();
    let router = Router::new(&config.routes);
    let uri: Uri = "/api/v1/items/42?expand=owner".parse().unwrap();
    let host = HeaderValue::from_static("api.example.com");

    c.bench_function("route_match", |b| {
        b.iter(|| {
            router
                .find(
                    black_box(&Method::GET),
                    Some("api.example.com"),
                    black_box(uri.path()),
                )
                .is_some()
        })
    });

    c.bench_function("header_rewrite", |b| {
        b.iter_batched(
            typical_headers,
            |mut headers| {
                rewrite::strip_hop_by_hop(&mut headers, false);
                rewrite::strip_identity_headers(&mut headers, "X-Keygate-");
                let client = ClientSide {
                    ip: "10.0.0.7".parse().unwrap(),
                    tls: true,
                    host: Some(&host),
                };
                rewrite::set_forwarding_headers(&mut headers, &client);
                let id = rewrite::request_id(&headers);
                headers.insert(rewrite::X_REQUEST_ID, id);
                headers
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let route = router.find(&Method::GET, None, uri.path()).unwrap().clone();
    c.bench_function("upstream_uri", |b| {
        b.iter(|| {
            rewrite::upstream_uri(&route.upstream, black_box(&uri), Some(&route.path_prefix))
                .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
