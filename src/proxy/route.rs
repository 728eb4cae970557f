//! Route matching: host, path prefix, method; the first matching route wins.

use std::sync::Arc;

use http::Method;

use crate::config::RouteConfig;
use crate::telemetry::RouteMetrics;

pub struct Router {
    routes: Vec<Route>,
}

/// A configured route with the metric handles it records into.
#[derive(Clone)]
pub struct Route {
    pub config: Arc<RouteConfig>,
    pub metrics: Arc<RouteMetrics>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self {
            routes: routes
                .iter()
                .map(|r| Route {
                    metrics: Arc::new(RouteMetrics::new(&r.name)),
                    config: Arc::new(r.clone()),
                })
                .collect(),
        }
    }

    /// `host` is the request's `Host` header or `:authority`, port included if sent.
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|route| {
            let r = &route.config;
            path_matches(&r.path_prefix, path)
                && r.host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| host_matches(want, h)))
                && r.methods.as_ref().is_none_or(|ms| ms.contains(method))
        })
    }
}

/// Resolves `.` and `..` segments (RFC 3986 §5.2.4, also when written `%2e`) so that the
/// path routed on is the path the upstream serves: `/public/../admin` must not pass as
/// `/public`. Returns `None` when the path is already normal, the common case.
pub fn normalize_path(path: &str) -> Option<String> {
    // Every dot segment starts right after a `/`, as `.` or as `%2e`/`%2E`.
    if !(path.contains("/.") || path.contains("/%2")) {
        return None;
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if !segments.iter().any(|seg| dot_segment(seg).is_some()) {
        return None;
    }
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        match dot_segment(seg) {
            None => {
                out.push(seg);
                continue;
            }
            Some(DotSegment::Parent) => {
                out.pop();
            }
            Some(DotSegment::Current) => {}
        }
        // `/a/b/..` names the directory `/a/`: keep the trailing slash.
        if i + 1 == segments.len() {
            out.push("");
        }
    }
    Some(format!("/{}", out.join("/")))
}

enum DotSegment {
    Current,
    Parent,
}

fn dot_segment(seg: &str) -> Option<DotSegment> {
    if seg.len() > 6 {
        return None;
    }
    match seg.to_ascii_lowercase().replace("%2e", ".").as_str() {
        "." => Some(DotSegment::Current),
        ".." => Some(DotSegment::Parent),
        _ => None,
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, but not `/apiary`: prefixes end at a segment.
fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Compares case-insensitively; the request's port is ignored unless the route names one.
fn host_matches(want: &str, got: &str) -> bool {
    if got.eq_ignore_ascii_case(want) {
        return true;
    }
    let want_has_port = want.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    !want_has_port && strip_port(got).eq_ignore_ascii_case(want)
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        // `[::1]:8080` → `[::1]`; a bare `[::1]` has its last colon inside the brackets.
        Some((name, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router(yaml_routes: &str) -> Router {
        let config = Config::from_yaml(&format!("routes:\n{yaml_routes}"), &|_| None).unwrap();
        Router::new(&config.routes)
    }

    fn name(r: &Router, method: &str, host: Option<&str>, path: &str) -> Option<String> {
        r.find(&method.parse().unwrap(), host, path)
            .map(|r| r.config.name.to_string())
    }

    const ROUTES: &str = "
  - { name: admin-host, host: admin.example.com, path_prefix: /, upstream: 'http://a', auth: none }
  - { name: writes, path_prefix: /api, methods: [POST, put], upstream: 'http://b', auth: none }
  - { name: api, path_prefix: /api, upstream: 'http://c', auth: none }
  - { name: slash, path_prefix: /static/, upstream: 'http://d', auth: none }
";

    #[test]
    fn first_match_wins_by_host_method_and_path() {
        let r = router(ROUTES);
        assert_eq!(
            name(&r, "GET", Some("admin.example.com"), "/api/x").as_deref(),
            Some("admin-host")
        );
        assert_eq!(
            name(&r, "GET", Some("ADMIN.example.com:8080"), "/").as_deref(),
            Some("admin-host")
        );
        assert_eq!(
            name(&r, "POST", Some("other"), "/api/x").as_deref(),
            Some("writes")
        );
        assert_eq!(name(&r, "PUT", None, "/api").as_deref(), Some("writes"));
        assert_eq!(
            name(&r, "GET", Some("other"), "/api/x").as_deref(),
            Some("api")
        );
        assert_eq!(
            name(&r, "GET", None, "/static/app.js").as_deref(),
            Some("slash")
        );
    }

    #[test]
    fn prefixes_end_at_a_segment() {
        let r = router(ROUTES);
        assert_eq!(name(&r, "GET", None, "/apiary"), None);
        assert_eq!(name(&r, "GET", None, "/static"), None);
        assert_eq!(name(&r, "GET", None, "/"), None);
    }

    #[test]
    fn dot_segments_are_resolved_before_routing() {
        assert_eq!(normalize_path("/api/v1/items"), None);
        assert_eq!(normalize_path("/a..b/.well-known/x"), None);
        assert_eq!(
            normalize_path("/public/../admin/x").as_deref(),
            Some("/admin/x")
        );
        assert_eq!(
            normalize_path("/public/%2e%2e/admin").as_deref(),
            Some("/admin")
        );
        assert_eq!(
            normalize_path("/public/%2E./admin").as_deref(),
            Some("/admin")
        );
        assert_eq!(normalize_path("/./a/./b").as_deref(), Some("/a/b"));
        assert_eq!(
            normalize_path("/../../etc/passwd").as_deref(),
            Some("/etc/passwd")
        );
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("/a/.").as_deref(), Some("/a/"));
    }

    #[test]
    fn host_with_port_must_match_exactly() {
        let r =
            router("  - { name: p, host: 'example.com:8443', upstream: 'http://a', auth: none }\n");
        assert_eq!(
            name(&r, "GET", Some("example.com:8443"), "/").as_deref(),
            Some("p")
        );
        assert_eq!(name(&r, "GET", Some("example.com"), "/"), None);
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
