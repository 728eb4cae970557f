//! Per-request work the gateway does before forwarding: route match, key check and hash,
//! the cache-hit auth decision, rate limits, the last-used note and the header rewrite —
//! alone and all together. Run: `cargo bench --bench hot_path`. Figures are recorded in
//! BENCHMARKS.md.
//!
//! The Prometheus recorder is installed (after one decision measured without it), as
//! `keygate serve` does, so the auth-decision and cache-lookup counters cost what they cost
//! in production. Before `full_request_path` is measured, the bench prints how many heap
//! allocations each stage of a request makes (counted by a wrapper around the system
//! allocator that only counts while a flag is set, so it does not slow the timings).

use std::alloc::{GlobalAlloc, Layout};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::Utc;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Uri};
use keygate::auth::key::{self, KeyHash};
use keygate::auth::{Authenticator, Caller, IdentityHeaders, Verifier};
use keygate::config::{AuthMode, Config, RouteConfig};
use keygate::limits::RateLimits;
use keygate::proxy::h1::{encode_request_head, REQUEST_HEAD_CAPACITY};
use keygate::proxy::rewrite::{self, ClientSide};
use keygate::proxy::route::{self, Router};
use keygate::store::embedded::EmbeddedStore;
use keygate::store::{Group, KeyRecord, RateLimit, Store, User};
use keygate::telemetry;
use mimalloc::MiMalloc;
use tokio::runtime::Runtime;

/// mimalloc, the allocator `keygate serve` runs with (src/main.rs), counting allocations
/// while `COUNTING` is set.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// Bytes allocated minus bytes freed while counting (wrapping: may go "negative").
static NET_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            NET_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            NET_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `alloc`/`realloc` above, i.e. from mimalloc.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            NET_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            NET_BYTES.fetch_add(new_size, Ordering::Relaxed);
            NET_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the number of allocations (and reallocations) it made.
fn count_allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let (out, count, _) = measure_allocations(f);
    (out, count)
}

/// Runs `f`; returns its result, its allocation count and the bytes it left allocated
/// (including what its result holds).
fn measure_allocations<T>(f: impl FnOnce() -> T) -> (T, usize, isize) {
    ALLOCATIONS.store(0, Ordering::Relaxed);
    NET_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    let net = NET_BYTES.load(Ordering::Relaxed) as isize;
    (out, ALLOCATIONS.load(Ordering::Relaxed), net)
}

const CONFIG: &str = "routes:
  - { name: admin, host: admin.example.com, upstream: 'http://127.0.0.1:9001', auth: none }
  - { name: writes, path_prefix: /api/v1/orders, methods: [POST], upstream: 'http://127.0.0.1:9002', auth: none }
  - { name: api, path_prefix: /api, strip_prefix: true, upstream: 'http://127.0.0.1:9003/base', auth: none }
  - { name: web, path_prefix: /, upstream: 'http://127.0.0.1:9004', auth: none }
";

/// The same routes with keys required, `api` asking for one permission the caller holds
/// through a group. Key headers and identity prefix are the defaults (`X-API-Key`,
/// `Authorization: Bearer`, `X-Keygate-`).
/// The cache `ttl` outlasts the bench run: at the default 60 s the seeded key would enter its
/// refresh window (the last quarter) mid-run, where each hit asks whether a background
/// reload is running, and then expire, so the figures would mix three paths.
const AUTH_CONFIG: &str = "cache: { ttl: 1h }
routes:
  - { name: admin, host: admin.example.com, upstream: 'http://127.0.0.1:9001', require: ['admin:*'] }
  - { name: writes, path_prefix: /api/v1/orders, methods: [POST], upstream: 'http://127.0.0.1:9002', require: ['orders:write'] }
  - { name: api, path_prefix: /api, strip_prefix: true, upstream: 'http://127.0.0.1:9003/base', require: ['orders:read'] }
  - { name: web, path_prefix: /, upstream: 'http://127.0.0.1:9004' }
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

/// [`typical_headers`] carrying a real, stored key.
fn headers_with_key(secret: &str) -> HeaderMap {
    let mut h = typical_headers();
    h.insert("x-api-key", HeaderValue::from_str(secret).unwrap());
    h
}

/// A key store with one user in two groups and one key; returns the store and the secret.
fn seeded_store(rt: &Runtime, dir: &tempfile::TempDir) -> (Arc<dyn Store>, String) {
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&dir.path().join("keygate.db")).unwrap());
    let secret = key::generate("kg").unwrap();
    let now = Utc::now();
    rt.block_on(async {
        for (id, perms) in [("readers", "orders:read"), ("profile", "profile:*")] {
            store
                .put_group(&Group {
                    id: id.into(),
                    tenant: "acme".into(),
                    permissions: vec![perms.into()],
                    created_at: now,
                    updated_at: now,
                })
                .await
                .unwrap();
        }
        store
            .put_user(&User {
                id: "alice".into(),
                tenant: "acme".into(),
                name: "Alice Example".into(),
                active: true,
                groups: vec!["readers".into(), "profile".into()],
                permissions: vec!["billing:read".into()],
                created_at: now,
                updated_at: now,
                rate_limit: None,
            })
            .await
            .unwrap();
        store
            .insert_key(&KeyRecord {
                id: "key_alice_1".into(),
                hash: KeyHash::of(&secret),
                start: key::start_of(&secret),
                name: "Alice's CI key".into(),
                description: String::new(),
                owner: "alice".into(),
                tenant: "acme".into(),
                enabled: true,
                created_at: now,
                updated_at: now,
                expires_at: Some(now + chrono::Duration::days(365)),
                last_used_at: None,
                permissions: None,
                created_by: "bench".into(),
                meta: None,
                rate_limit: None,
            })
            .await
            .unwrap();
    });
    (store, secret)
}

/// Everything a request needs that is built once per process.
struct Gateway {
    rt: Runtime,
    router: Router,
    auth: Authenticator,
    identity: IdentityHeaders,
    /// Where `last_used_at` is noted per request (no flusher runs here).
    verifier: Arc<Verifier>,
    /// The token buckets; the seeded key and user have no limits of their own, so per
    /// request this is the failed-authentication check of the client IP (on by default).
    limits: RateLimits,
    failed_auth_per_ip: Option<RateLimit>,
    peer: IpAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn new() -> (Gateway, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, secret) = seeded_store(&rt, &dir);
        let config = Config::from_yaml(AUTH_CONFIG, &|_| None).unwrap();
        let verifier = Arc::new(Verifier::new(store, &config.cache));
        let gateway = Gateway {
            rt,
            router: Router::new(&config.routes),
            auth: Authenticator::new(&config, verifier.clone()),
            identity: IdentityHeaders::new(&config.identity.header_prefix),
            verifier,
            limits: RateLimits::default(),
            failed_auth_per_ip: config.failed_auth_per_ip,
            peer: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
            _dir: dir,
        };
        (gateway, secret)
    }

    /// The header rewrite for `caller`, as `Proxy::forward` builds it for a client that
    /// used `host` (no upgrade, the upstream's own `Host`).
    fn rewrite<'a>(
        &'a self,
        caller: &'a Caller,
        request_id: &'a HeaderValue,
        host: Option<&'a HeaderValue>,
        tls: bool,
    ) -> rewrite::RequestHeaders<'a> {
        rewrite::RequestHeaders {
            auth: &self.auth,
            identity: &self.identity,
            caller,
            client: ClientSide {
                ip: self.peer,
                tls,
                host,
            },
            request_id,
            upgrade: false,
            preserve_host: false,
        }
    }

    /// The key's and its user's rate limits, as after a successful authorize.
    fn admit(&self, principal: &keygate::auth::Principal) {
        self.limits.admit_principal(principal).unwrap();
    }

    /// authenticate + authorize, as `Proxy::forward` starts. The server awaits
    /// `authenticate` inside the connection's task, where a cache hit is ready at the first
    /// poll; so is it here, polled once with a waker that does nothing (not `block_on`,
    /// whose ~100 ns per call would be the bench's, not the gateway's; `bench` enters the
    /// runtime once for its whole run).
    /// A miss (the first call) is not ready at once and is run to the end on the runtime.
    fn decide(&self, mode: AuthMode, headers: &HeaderMap, require: &[String]) -> Caller {
        let mut decision = std::pin::pin!(self.auth.authenticate(mode, headers));
        let mut cx = Context::from_waker(Waker::noop());
        let decided = match decision.as_mut().poll(&mut cx) {
            Poll::Ready(decided) => decided,
            Poll::Pending => self.rt.block_on(decision),
        };
        let caller = decided.unwrap_or_else(|r| panic!("refused: {}", r.code()));
        self.auth.authorize(&caller, require).unwrap();
        caller
    }

    /// What `Proxy::handle` and `Proxy::forward` do to an HTTP/1.1 GET before handing it to
    /// the upstream client, in the same order: request id, path normalization, route match,
    /// failed-authentication limit, authenticate, authorize, rate limits, last-used note,
    /// upgrade check, upstream URI, and the request head written for the upstream (a
    /// plain-http route: our client, which writes the rewritten headers straight into it).
    fn prepare(&self, uri: &Uri, headers: HeaderMap) -> (Uri, Vec<u8>) {
        let request_id = rewrite::request_id(&headers);
        assert!(route::normalize_path(uri.path()).is_none());
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        let route: Arc<RouteConfig> = self
            .router
            .find(&Method::GET, host, uri.path())
            .expect("route")
            .config
            .clone();
        let failed_auth_limit = self
            .failed_auth_per_ip
            .as_ref()
            .filter(|_| route.auth != AuthMode::None);
        if let Some(limit) = failed_auth_limit {
            self.limits
                .failed_auth_blocked(self.peer.to_canonical(), limit)
                .unwrap();
        }
        let caller = self.decide(route.auth, &headers, &route.require);
        if let Caller::Key(principal) = &caller {
            self.admit(principal);
            self.verifier.note_use(principal);
        }
        // The request is HTTP/1.1, so an upgrade is possible unless the upstream speaks h2.
        let upgrade = !route.upstream_http2 && rewrite::wants_upgrade(&headers);
        let original_host = headers.get(HOST).cloned();
        let upstream = rewrite::upstream_uri(
            &route.upstream,
            uri,
            route.strip_prefix.then_some(route.path_prefix.as_str()),
        )
        .unwrap();
        let plan = rewrite::RequestHeaders {
            upgrade,
            preserve_host: route.preserve_host,
            ..self.rewrite(&caller, &request_id, original_host.as_ref(), true)
        };
        let head = request_head(&plan, &headers, &upstream);
        (upstream, head)
    }
}

/// Inputs made per timed batch where each call consumes a fresh header map. Small, so the
/// batch's maps stay in cache and memory is reused between batches as a server reuses it
/// between requests; criterion's `SmallInput` keeps a tenth of all iterations alive at once,
/// and the page faults of that fresh memory then dominated the figures (a third of the
/// profile in `clear_page_erms`).
const BATCH: BatchSize = BatchSize::NumIterations(256);

/// The HTTP/1.1 request head our upstream client sends for a GET of `upstream`, in a buffer
/// sized as the client sizes it.
fn request_head(plan: &rewrite::RequestHeaders<'_>, client: &HeaderMap, upstream: &Uri) -> Vec<u8> {
    let mut head = Vec::with_capacity(REQUEST_HEAD_CAPACITY);
    encode_request_head(
        &mut head,
        &Method::GET,
        upstream.path_and_query().map_or("/", |pq| pq.as_str()),
        upstream.authority().expect("an absolute upstream URI"),
        false,
        |w| plan.emit(client, w),
    );
    head
}

fn bench(c: &mut Criterion) {
    let config = Config::from_yaml(CONFIG, &|_| None).unwrap();
    let router = Router::new(&config.routes);
    let uri: Uri = "/api/v1/items/42?expand=owner".parse().unwrap();

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

    let route = router
        .find(&Method::GET, None, uri.path())
        .unwrap()
        .config
        .clone();
    c.bench_function("upstream_uri", |b| {
        b.iter(|| {
            rewrite::upstream_uri(&route.upstream, black_box(&uri), Some(&route.path_prefix))
                .unwrap()
        })
    });

    let (gateway, secret) = Gateway::new();
    // A miss (the first decide) polls the store and timers, which look up the runtime from
    // the thread: enter it once here rather than per request.
    let _in_runtime = gateway.rt.enter();

    c.bench_function("key_check", |b| {
        b.iter(|| key::check(black_box(&secret), black_box("kg")))
    });

    c.bench_function("key_hash", |b| b.iter(|| KeyHash::of(black_box(&secret))));

    // A decision on a warm cache: the first call loads key and owner from the store, every
    // measured call after it is a hit in both caches (keys, users). Measured once before the
    // Prometheus recorder is installed (metrics macros are then no-ops), to show what the
    // two counters it bumps cost, and once after, as `keygate serve` runs it.
    let headers = headers_with_key(&secret);
    let require = vec!["orders:read".to_owned()];
    gateway.decide(AuthMode::Required, &headers, &require);
    c.bench_function("cache_hit_decision_no_recorder", |b| {
        b.iter(|| gateway.decide(AuthMode::Required, black_box(&headers), &require))
    });

    // As in `keygate serve`. The handle renders /metrics; here it only drains histograms.
    let metrics = telemetry::install_metrics().expect("install the Prometheus recorder");
    c.bench_function("cache_hit_decision", |b| {
        b.iter(|| gateway.decide(AuthMode::Required, black_box(&headers), &require))
    });

    // The header rewrite alone, for a key caller: written into the request head our
    // upstream client sends (plain-http upstreams), and applied to the header map as for
    // hyper's client (TLS, HTTP/2, upgrades).
    let caller = gateway.decide(AuthMode::Required, &headers, &require);
    let host = headers.get(HOST).cloned();
    let request_id = rewrite::request_id(&headers);
    let plan = gateway.rewrite(&caller, &request_id, host.as_ref(), false);
    let upstream: Uri = "http://127.0.0.1:9003/base/v1/items/42?expand=owner"
        .parse()
        .unwrap();
    c.bench_function("header_rewrite", |b| {
        b.iter(|| request_head(&plan, black_box(&headers), &upstream))
    });
    c.bench_function("header_rewrite_map", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                plan.apply(&mut h);
                h
            },
            BATCH,
        )
    });

    // The target as one figure: the cache-hit decision above, then every change the
    // proxy makes to the request's headers (`RequestHeaders::emit`, identity headers and
    // request id included), written into the upstream request head as the proxy does for a
    // plain-http upstream.
    c.bench_function("decision_and_rewrite", |b| {
        b.iter(|| {
            let h = black_box(&headers);
            let request_id = rewrite::request_id(h);
            let caller = gateway.decide(AuthMode::Required, h, &require);
            let host = h.get(HOST).cloned();
            let plan = gateway.rewrite(&caller, &request_id, host.as_ref(), false);
            request_head(&plan, h, &upstream)
        })
    });

    let Caller::Key(principal) = gateway.decide(AuthMode::Required, &headers, &require) else {
        panic!("a key was presented");
    };

    // The per-request `last_used_at` note: a clock read, a lookup of the key's slot and an
    // atomic store once a second.
    gateway.verifier.note_use(&principal);
    c.bench_function("usage_record", |b| {
        b.iter(|| gateway.verifier.note_use(black_box(&principal)))
    });
    // The per-request rate-limit work for a key and user without limits of their own: the
    // client IP's failed-authentication budget (one atomic read while no client has a
    // bucket), then `admit`.
    let limit = gateway.failed_auth_per_ip.expect("on by default");
    c.bench_function("rate_limit_checks", |b| {
        b.iter(|| {
            gateway
                .limits
                .failed_auth_blocked(black_box(gateway.peer), &limit)
                .unwrap();
            gateway.admit(&principal);
        })
    });

    let request_uri: Uri = "/api/v1/items/42?expand=owner".parse().unwrap();
    let (check, head) = gateway.prepare(&request_uri, headers.clone());
    eprintln!(
        "request head written for the upstream: {} bytes (typical headers, key caller)",
        head.len()
    );
    assert_eq!(check, "http://127.0.0.1:9003/base/v1/items/42?expand=owner");
    report_allocations(&gateway, &request_uri, &headers, &require);

    c.bench_function("full_request_path", |b| {
        b.iter_batched(
            || headers.clone(),
            |h| gateway.prepare(black_box(&request_uri), h),
            BATCH,
        )
    });

    // After the response: the request counter and the two latency histograms, per request.
    // The recorder keeps every histogram sample until upkeep or a /metrics render drains
    // it, so the timed loop is followed by an (untimed) upkeep to bound the memory.
    let elapsed = Duration::from_micros(850);
    let route_metrics = telemetry::RouteMetrics::new("api");
    let record = || {
        route_metrics.record_upstream(black_box(elapsed));
        route_metrics.record_request(http::StatusCode::OK, black_box(elapsed));
    };
    const PROBE: usize = 100_000;
    metrics.run_upkeep();
    let (_, allocs, retained) = measure_allocations(|| (0..PROBE).for_each(|_| record()));
    metrics.run_upkeep();
    eprintln!(
        "record_request_metrics: {:.1} allocations per request; {:.1} bytes per request stay \
         allocated until upkeep or a /metrics render drains the histograms",
        allocs as f64 / PROBE as f64,
        retained as f64 / PROBE as f64,
    );
    c.bench_function("record_request_metrics", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                record();
            }
            let took = start.elapsed();
            metrics.run_upkeep();
            took
        })
    });
}

/// Allocations per call of `f`, averaged over `n` calls each given a fresh `setup()`
/// (made before counting starts). The cache's housekeeping allocates now and then, so
/// single calls would vary.
fn allocations_per_call<S, T>(
    n: usize,
    mut setup: impl FnMut() -> S,
    mut f: impl FnMut(S) -> T,
) -> f64 {
    let inputs: Vec<S> = (0..n).map(|_| setup()).collect();
    let mut outputs: Vec<T> = Vec::with_capacity(n);
    let (_, count) = count_allocations(|| {
        for input in inputs {
            outputs.push(f(input));
        }
    });
    drop(outputs);
    count as f64 / n as f64
}

/// Prints how many allocations one request makes in each stage (warm cache), each stage
/// given the headers as the stages before it left them.
fn report_allocations(gateway: &Gateway, uri: &Uri, headers: &HeaderMap, require: &[String]) {
    const N: usize = 10_000;
    let secret = match gateway.auth.presented(headers) {
        keygate::auth::Presented::One(s) => s.to_owned(),
        other => panic!("expected one key, got {other:?}"),
    };
    let check = allocations_per_call(N, || (), |()| key::check(&secret, "kg"));
    let hash = allocations_per_call(N, || (), |()| KeyHash::of(&secret));
    let decide = allocations_per_call(
        N,
        || (),
        |()| gateway.decide(AuthMode::Required, headers, require),
    );
    let caller = gateway.decide(AuthMode::Required, headers, require);
    let Caller::Key(principal) = &caller else {
        panic!("a key was presented");
    };
    let usage = allocations_per_call(N, || (), |()| gateway.verifier.note_use(principal));
    let limit = gateway.failed_auth_per_ip.expect("on by default");
    let limits = allocations_per_call(
        N,
        || (),
        |()| {
            gateway
                .limits
                .failed_auth_blocked(gateway.peer, &limit)
                .unwrap();
            gateway.admit(principal);
        },
    );
    let route = &gateway
        .router
        .find(&Method::GET, None, uri.path())
        .unwrap()
        .config;
    let strip = route.strip_prefix.then_some(route.path_prefix.as_str());
    let upstream = allocations_per_call(
        N,
        || (),
        |()| rewrite::upstream_uri(&route.upstream, uri, strip),
    );

    let host = headers.get(HOST).cloned();
    let request_id = allocations_per_call(N, || (), |()| rewrite::request_id(headers));
    let id = rewrite::request_id(headers);
    let plan = gateway.rewrite(&caller, &id, host.as_ref(), true);
    let upstream_uri = rewrite::upstream_uri(&route.upstream, uri, strip).unwrap();
    let head = allocations_per_call(N, || (), |()| request_head(&plan, headers, &upstream_uri));
    let map = allocations_per_call(
        N,
        || headers.clone(),
        |mut h| {
            plan.apply(&mut h);
            h
        },
    );
    let full = allocations_per_call(N, || headers.clone(), |h| gateway.prepare(uri, h));
    eprintln!(
        "allocations per request (warm cache, mean of {N}): key_check {check}, key_hash {hash}, \
         authenticate+authorize {decide}, rate limits {limits}, \
         Verifier::note_use {usage}, \
         upstream_uri {upstream}, request_id {request_id}, \
         rewrite into the request head {head} (of the header map, for hyper's client: {map}); \
         full_request_path {full}"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
