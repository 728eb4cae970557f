//! Metric names (all of them, in one place), recording helpers, and log setup.
//!
//! Names follow `keygate_<thing>_<unit>`; label values are bounded (route names from the
//! config, status codes, fixed result words) — never key ids, paths or client input.

use std::io::IsTerminal;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::{LogConfig, LogFormat};
use crate::store::StoreError;

pub const HTTP_REQUESTS_TOTAL: &str = "keygate_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "keygate_http_request_duration_seconds";
pub const UPSTREAM_REQUEST_DURATION_SECONDS: &str = "keygate_upstream_request_duration_seconds";

pub const AUTH_DECISIONS_TOTAL: &str = "keygate_auth_decisions_total";
pub const AUTH_CACHE_LOOKUPS_TOTAL: &str = "keygate_auth_cache_lookups_total";
pub const STORE_REQUESTS_TOTAL: &str = "keygate_store_requests_total";
pub const STORE_REQUEST_DURATION_SECONDS: &str = "keygate_store_request_duration_seconds";
pub const STORE_UP: &str = "keygate_store_up";
pub const PROXY_CONNECTIONS: &str = "keygate_proxy_connections";
pub const RATE_LIMITED_TOTAL: &str = "keygate_rate_limited_total";
pub const EVENTS_RECEIVED_TOTAL: &str = "keygate_events_received_total";
pub const EVENT_PROPAGATION_SECONDS: &str = "keygate_event_propagation_seconds";

/// The `route` label of requests that matched no route.
pub const NO_ROUTE_LABEL: &str = "_none";

/// Latency buckets from 100 µs to 30 s: gateway overhead is sub-millisecond, upstreams are not.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Installs the process-wide Prometheus recorder; the handle renders `/metrics`.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    metrics::describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "Requests answered by the proxy, by route and status code."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from request head to response head, by route."
    );
    metrics::describe_histogram!(
        UPSTREAM_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time the upstream took to answer with its response head, by route."
    );
    let counters = [
        (AUTH_DECISIONS_TOTAL, "Authentication decisions: ok, anonymous, or the refusal code."),
        (AUTH_CACHE_LOOKUPS_TOTAL, "Key cache lookups: hit, miss, negative_hit, stale."),
        (STORE_REQUESTS_TOTAL, "Store calls by operation and result (ok, error, unavailable)."),
        (EVENTS_RECEIVED_TOTAL, "Invalidation events applied, by kind (key, user, group)."),
        (RATE_LIMITED_TOTAL, "Requests refused with 429, by the limit hit: key, user, or ip (failed authentications)."),
    ];
    for (name, help) in counters {
        metrics::describe_counter!(name, help);
    }
    metrics::describe_histogram!(
        STORE_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Store call latency by operation."
    );
    metrics::describe_histogram!(
        EVENT_PROPAGATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from publishing an invalidation to applying it here (publisher and receiver clocks)."
    );
    metrics::describe_gauge!(
        STORE_UP,
        "1 when the last store call reached the store, 0 when it could not."
    );
    metrics::describe_gauge!(
        PROXY_CONNECTIONS,
        "Open client connections on the proxy port, by worker (the workers balance them)."
    );
    Ok(handle)
}

/// The metric handles of one route, registered on first use and then reused: recording a
/// request is a few atomic adds, with no label strings built and no registry lookup.
pub struct RouteMetrics {
    route: String,
    /// `keygate_http_requests_total{route,code}` for status codes 100..=599.
    requests: Box<[OnceLock<Counter>]>,
    duration: OnceLock<Histogram>,
    upstream: OnceLock<Histogram>,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        Self {
            route: route.to_owned(),
            requests: (100..600).map(|_| OnceLock::new()).collect(),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
        }
    }

    /// For requests that matched no route.
    pub fn unrouted() -> &'static RouteMetrics {
        static UNROUTED: LazyLock<RouteMetrics> =
            LazyLock::new(|| RouteMetrics::new(NO_ROUTE_LABEL));
        &UNROUTED
    }

    pub fn record_request(&self, status: StatusCode, elapsed: Duration) {
        let slot = usize::from(status.as_u16())
            .checked_sub(100)
            .and_then(|i| self.requests.get(i));
        let counter = |status: StatusCode| metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => self.route.clone(), "code" => status.as_str().to_owned());
        match slot {
            Some(slot) => slot.get_or_init(|| counter(status)).increment(1),
            None => counter(status).increment(1),
        }
        self.duration
            .get_or_init(|| metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => self.route.clone()))
            .record(elapsed);
    }

    pub fn record_upstream(&self, elapsed: Duration) {
        self.upstream
            .get_or_init(|| metrics::histogram!(UPSTREAM_REQUEST_DURATION_SECONDS, "route" => self.route.clone()))
            .record(elapsed);
    }
}

/// Counters of one metric whose single label takes values from a fixed list; handles are
/// made on first use so the hot path never touches the registry.
struct FixedLabelCounters<const N: usize> {
    name: &'static str,
    label: &'static str,
    values: [&'static str; N],
    handles: [OnceLock<Counter>; N],
}

impl<const N: usize> FixedLabelCounters<N> {
    const fn new(name: &'static str, label: &'static str, values: [&'static str; N]) -> Self {
        Self {
            name,
            label,
            values,
            handles: [const { OnceLock::new() }; N],
        }
    }

    fn increment(&self, value: &'static str) {
        match self.values.iter().position(|v| *v == value) {
            Some(i) => self.handles[i]
                .get_or_init(|| metrics::counter!(self.name, self.label => value))
                .increment(1),
            None => metrics::counter!(self.name, self.label => value).increment(1),
        }
    }
}

static AUTH_DECISIONS: FixedLabelCounters<13> = FixedLabelCounters::new(
    AUTH_DECISIONS_TOTAL,
    "result",
    [
        "ok",
        "anonymous",
        "invalid_key",
        "missing_key",
        "key_expired",
        "key_disabled",
        "user_inactive",
        "insufficient_permissions",
        "rate_limited",
        "auth_unavailable",
        "invalid_request",
        "no_route",
        "upstream_unavailable",
    ],
);

static CACHE_LOOKUPS: FixedLabelCounters<4> = FixedLabelCounters::new(
    AUTH_CACHE_LOOKUPS_TOTAL,
    "result",
    ["hit", "miss", "negative_hit", "stale"],
);

static RATE_LIMITED: FixedLabelCounters<3> =
    FixedLabelCounters::new(RATE_LIMITED_TOTAL, "scope", ["key", "user", "ip"]);

/// A request refused with 429; `scope` is `key`, `user` or `ip` (failed authentications).
pub fn record_rate_limited(scope: &'static str) {
    RATE_LIMITED.increment(scope);
}

/// `result` is `ok`, `anonymous`, or a refusal code.
pub fn record_auth_decision(result: &'static str) {
    AUTH_DECISIONS.increment(result);
}

/// `result` is `hit`, `miss`, `negative_hit` or `stale`.
pub fn record_cache_lookup(result: &'static str) {
    CACHE_LOOKUPS.increment(result);
}

pub fn record_store_request<T>(
    op: &'static str,
    result: &Result<T, StoreError>,
    elapsed: Duration,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) if e.is_unavailable() => "unavailable",
        // NotFound/Conflict are answers, not faults: the store was reached.
        Err(_) => "error",
    };
    metrics::counter!(STORE_REQUESTS_TOTAL, "op" => op, "result" => outcome).increment(1);
    metrics::histogram!(STORE_REQUEST_DURATION_SECONDS, "op" => op).record(elapsed);
    metrics::gauge!(STORE_UP).set(if outcome == "unavailable" { 0.0 } else { 1.0 });
}

pub fn record_event(kind: &'static str, lag: Duration) {
    metrics::counter!(EVENTS_RECEIVED_TOTAL, "kind" => kind).increment(1);
    metrics::histogram!(EVENT_PROPAGATION_SECONDS).record(lag);
}

/// Logs go to stderr through a background writer, so a request never waits on a log write;
/// if stderr cannot keep up, lines are dropped rather than slowing requests. Keep the guard
/// alive until exit: dropping it flushes what is buffered. `RUST_LOG` overrides the level.
pub fn init_logging(cfg: &LogConfig) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}
