//! The deployment artifacts against the real gateway: every metric name that the Grafana
//! dashboard and the Prometheus alert rules reference must be exported by keygate's
//! `/metrics`, and the keygate configs shipped in the Kubernetes manifests must be valid.
//! (Schema validation, YAML lint and promtool run in `scripts/test-deploy`.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

const TOKEN: &str = "deploy-test-admin-token";

/// Files whose metric references are checked, relative to the repository root.
const REFERENCING: &[&str] = &[
    "deploy/grafana/keygate-dashboard.json",
    "deploy/prometheus/keygate-alerts.yaml",
];

/// The metric families of CONTRACT §7: the gateway must export all of them once exercised.
const CONTRACT_FAMILIES: &[&str] = &[
    "keygate_auth_decisions_total",
    "keygate_auth_cache_lookups_total",
    "keygate_store_requests_total",
    "keygate_store_request_duration_seconds",
    "keygate_store_up",
    "keygate_http_requests_total",
    "keygate_http_request_duration_seconds",
    "keygate_upstream_request_duration_seconds",
    "keygate_events_received_total",
    "keygate_event_propagation_seconds",
];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Every `keygate_…` metric name mentioned in `text` (queries, legends, descriptions).
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("keygate_") {
        let start = from + at;
        // A name starts at a word boundary: not `foo_keygate_x`.
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start + "keygate_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = text[start..end].trim_end_matches('_');
        if boundary && name.len() > "keygate_".len() {
            names.insert(name.to_owned());
        }
        from = end;
    }
    names
}

/// What a Prometheus text exposition offers: every sample name (`x_bucket`, `x_sum`,
/// `x_count` for a histogram) and every family named by a `# TYPE` line, with its type.
struct Exposition {
    samples: BTreeSet<String>,
    families: Vec<(String, String)>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut samples = BTreeSet::new();
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    families.push((name.to_owned(), kind.to_owned()));
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..name_end].to_owned());
            }
        }
        Exposition { samples, families }
    }

    fn family_kind(&self, name: &str) -> Option<&str> {
        self.families
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
    }

    /// Whether a name a query or text refers to exists: a sample name as exported, or a
    /// family name (a histogram's family has only `_bucket/_sum/_count` samples).
    fn exports(&self, name: &str) -> bool {
        if self.samples.contains(name) {
            return true;
        }
        if let Some(kind) = self.family_kind(name) {
            return self.samples.iter().any(|s| {
                s == name
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| s.strip_suffix(suffix) == Some(name)))
            });
        }
        false
    }

    /// The names in `referenced` that this exposition does not offer.
    fn missing<'a>(&self, referenced: &'a BTreeSet<String>) -> Vec<&'a str> {
        referenced
            .iter()
            .filter(|n| !self.exports(n))
            .map(String::as_str)
            .collect()
    }
}

/// Starts a gateway on the embedded store and drives it through every recorded path:
/// a proxied request with a valid key, a refusal, a request matching no route, and admin
/// writes (each publishes an invalidation event, applied in-process).
async fn exercised_gateway() -> (Gateway, String) {
    let upstream = echo_upstream().await;
    let config = format!(
        r#"
store:
  backend: embedded
  embedded: {{ path: data/keygate.db }}
routes:
  - name: api
    path_prefix: /api
    upstream: "http://{upstream}"
    auth: required
"#
    );
    let gw = Gateway::start_with_env(&config, &[("KEYGATE_ADMIN_TOKEN", TOKEN)]);
    let c = client();
    wait_for_status(&c, &gw.status_url("/readyz"), StatusCode::OK).await;

    let (status, _) = admin_call(
        &gw,
        "PUT",
        "/v1/users/alice",
        TOKEN,
        Some(json!({ "tenant": "acme", "permissions": ["orders:read"] })),
    )
    .await;
    assert!(status.is_success(), "creating a user: {status}");
    let (status, key) = admin_call(
        &gw,
        "POST",
        "/v1/keys",
        TOKEN,
        Some(json!({ "owner": "alice", "name": "deploy test" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "creating a key: {key}");
    let secret = key["key"]
        .as_str()
        .expect("the new key's secret")
        .to_owned();

    let with_key = Request::get(gw.url("/api/orders"))
        .header("x-api-key", &secret)
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, with_key).await.status, StatusCode::OK);
    assert_eq!(
        get(&c, &gw.url("/api/orders")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &gw.url("/elsewhere")).await.status,
        StatusCode::NOT_FOUND
    );

    // Poll until every contract family shows (recording is synchronous, but be patient
    // with the store watcher's first ping).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = get(&c, &gw.status_url("/metrics")).await.text();
        let exposition = Exposition::parse(&text);
        let absent: Vec<_> = CONTRACT_FAMILIES
            .iter()
            .filter(|f| !exposition.exports(f))
            .collect();
        if absent.is_empty() {
            return (gw, text);
        }
        assert!(
            Instant::now() < deadline,
            "metric families never exported: {absent:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn dashboard_and_alerts_reference_only_exported_metrics() {
    let (_gw, metrics) = exercised_gateway().await;
    let exposition = Exposition::parse(&metrics);

    // Histograms must be histograms (the queries use `_bucket` with histogram_quantile).
    for family in [
        "keygate_http_request_duration_seconds",
        "keygate_upstream_request_duration_seconds",
        "keygate_store_request_duration_seconds",
        "keygate_event_propagation_seconds",
    ] {
        assert_eq!(
            exposition.family_kind(family),
            Some("histogram"),
            "{family} should be exported as a histogram"
        );
    }

    let mut all_referenced = BTreeSet::new();
    for file in REFERENCING {
        let text = std::fs::read_to_string(repo_path(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"));
        let referenced = referenced_metrics(&text);
        assert!(
            !referenced.is_empty(),
            "{file} references no keygate_ metric at all"
        );
        let missing = exposition.missing(&referenced);
        assert!(
            missing.is_empty(),
            "{file} references metric names keygate does not export: {missing:?}\n\
             exported samples: {:?}",
            exposition.samples
        );
        all_referenced.extend(referenced);
    }

    // The dashboard and alerts between them cover every metric family of the contract.
    let families_used: BTreeSet<&str> = all_referenced
        .iter()
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    for family in CONTRACT_FAMILIES {
        assert!(
            families_used.contains(family),
            "neither the dashboard nor the alerts use {family}"
        );
    }
}

/// The checker itself: a name keygate does not export, or a wrong suffix, is caught.
#[test]
fn the_checker_catches_unknown_names() {
    let metrics = "\
# TYPE keygate_store_up gauge
keygate_store_up 1
# TYPE keygate_http_requests_total counter
keygate_http_requests_total{route=\"api\",code=\"200\"} 3
# TYPE keygate_event_propagation_seconds histogram
keygate_event_propagation_seconds_bucket{le=\"0.1\"} 1
keygate_event_propagation_seconds_bucket{le=\"+Inf\"} 1
keygate_event_propagation_seconds_sum 0.01
keygate_event_propagation_seconds_count 1
";
    let exposition = Exposition::parse(metrics);
    let dashboard = r#"{"expr": "sum(rate(keygate_http_requests_total{code=~\"5..\"}[5m])) / sum(rate(keygate_http_request_total[5m]))",
        "b": "histogram_quantile(0.99, rate(keygate_event_propagation_seconds_bucket[5m]))",
        "c": "keygate_event_propagation_seconds and keygate_store_up_count and keygate_http_requests_total_bucket",
        "d": "see keygate-alerts.yaml and not_keygate_thing"}"#;
    let referenced = referenced_metrics(dashboard);
    assert_eq!(
        referenced.iter().map(String::as_str).collect::<Vec<_>>(),
        vec![
            "keygate_event_propagation_seconds",
            "keygate_event_propagation_seconds_bucket",
            "keygate_http_request_total",
            "keygate_http_requests_total",
            "keygate_http_requests_total_bucket",
            "keygate_store_up_count",
        ]
    );
    assert_eq!(
        exposition.missing(&referenced),
        vec![
            "keygate_http_request_total",
            "keygate_http_requests_total_bucket",
            "keygate_store_up_count",
        ]
    );
}

/// The keygate configs that the Kubernetes overlays put in their ConfigMaps pass
/// `keygate check-config` (the drain settings against the pod's grace period are checked
/// on the rendered manifests by `scripts/test-deploy`).
#[test]
fn kubernetes_configs_are_valid() {
    for overlay in ["gateway", "sidecar"] {
        let path = repo_path(&format!(
            "deploy/kubernetes/overlays/{overlay}/keygate.yaml"
        ));
        let (status, out, err) = run_cli_with_env(
            &["check-config", "--config", path.to_str().unwrap()],
            &[
                ("KEYGATE_ADMIN_TOKEN", TOKEN),
                ("KEYGATE_REDIS_URL", "redis://:secret@keygate-redis:6379/0"),
            ],
        );
        assert!(
            status.success(),
            "{overlay}: check-config failed\n{out}\n{err}"
        );
        assert!(
            !out.contains("secret@"),
            "{overlay}: check-config printed the Redis password:\n{out}"
        );
    }
}
