//! Header and URI rewriting between the client and the upstream: hop-by-hop removal,
//! request ids, forwarding headers, spoofed identity headers, the upstream URI.

use std::io::Write;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};

use crate::auth::{Authenticator, Caller, IdentityHeaders};
use crate::config::{is_identity_header, UpstreamTarget};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus the
/// non-standard ones proxies have historically honoured.
const HOP_BY_HOP_COUNT: usize = 8;
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers: the fixed list, `Upgrade`, and every header the
/// `Connection` header names. `TE: trailers` survives because gRPC needs it end to end.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` are kept for a protocol switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names (comparisons, no hashing) finds which are present: most
    // requests carry none, and then nothing is hashed or removed.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut upgrade = false;
    for name in headers.keys() {
        match HOP_BY_HOP.iter().position(|h| h == name) {
            Some(i) => present[i] = true,
            None => upgrade |= name == header::UPGRADE,
        }
    }
    if !upgrade && !present.contains(&true) {
        return;
    }
    let is_present = |wanted: &HeaderName| {
        HOP_BY_HOP
            .iter()
            .zip(present)
            .any(|(h, p)| p && h == wanted)
    };

    // Names listed in Connection are removed too (`Connection: close, X-Foo`). Each listed
    // token is matched against the names present, so the common `keep-alive` or `close`
    // (naming a header that is on the fixed list, or none at all) costs no allocation.
    let mut listed: Vec<HeaderName> = Vec::new();
    if is_present(&header::CONNECTION) {
        // As bytes: a value with one non-ASCII byte must not hide the names it lists
        // (found by fuzzing: docs/fuzzing.md, F3).
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        for token in tokens {
            let named = headers
                .keys()
                .find(|name| name.as_str().as_bytes().eq_ignore_ascii_case(token));
            // Upgrade is handled below; the fixed list is removed anyway.
            if let Some(name) = named.filter(|n| *n != header::UPGRADE && !HOP_BY_HOP.contains(n)) {
                listed.push(name.clone());
            }
        }
    }
    let te_trailers = is_present(&header::TE)
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });

    for name in listed {
        headers.remove(&name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The most headers [`RequestHeaders::apply`] adds: six identity headers, three forwarding
/// headers, `X-Request-Id` and `Host`.
pub const ADDED_HEADERS: usize = 11;

/// Everything the gateway changes in a request's headers before forwarding it, in order.
/// One function, so the hot-path bench and the header-rewrite fuzz target run the exact
/// code the proxy runs.
pub struct RequestHeaders<'a> {
    pub auth: &'a Authenticator,
    pub identity: &'a IdentityHeaders,
    pub caller: &'a Caller,
    /// The client's side; its `host` is also what `preserve_host` keeps.
    pub client: ClientSide<'a>,
    pub request_id: &'a HeaderValue,
    /// Keep `Connection: upgrade` and `Upgrade` for a protocol switch.
    pub upgrade: bool,
    pub preserve_host: bool,
}

impl RequestHeaders<'_> {
    pub fn apply(&self, headers: &mut HeaderMap) {
        // Room for what is added below at once, rather than growing the map several times.
        headers.reserve(ADDED_HEADERS);
        strip_hop_by_hop(headers, self.upgrade);
        self.auth.strip_credentials(headers);
        strip_identity_headers(headers, &self.identity.prefix);
        self.identity.add(headers, self.caller);
        set_forwarding_headers(headers, &self.client);
        headers.insert(X_REQUEST_ID, self.request_id.clone());
        match (self.client.host, self.preserve_host) {
            (Some(host), true) => {
                headers.insert(header::HOST, host.clone());
            }
            // The upstream client fills Host from the upstream URI when none is set.
            _ => {
                headers.remove(header::HOST);
            }
        }
    }
}

/// Whether this HTTP/1.1 request asks to switch protocols (WebSocket and friends).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The client's `X-Request-Id` when it is a sane token, otherwise a fresh UUID.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

/// Removes every header whose name, with `_` read as `-`, starts with the identity prefix:
/// only the gateway may tell the upstream who is calling.
pub fn strip_identity_headers(headers: &mut HeaderMap, prefix: &str) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_identity_header(name.as_str(), prefix))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// What the forwarding headers say about the client's side of the connection.
pub struct ClientSide<'a> {
    pub ip: IpAddr,
    pub tls: bool,
    /// The `Host` (or HTTP/2 `:authority`) the client used, if any.
    pub host: Option<&'a HeaderValue>,
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto`/`-Host`.
/// Proto and Host are overwritten: this gateway is where TLS and the host were seen.
pub fn set_forwarding_headers(headers: &mut HeaderMap, client: &ClientSide<'_>) {
    // Formatted on the stack: the longest IPv6 text is 45 bytes.
    let mut ip_buf = [0u8; 64];
    let ip = ip_text(client.ip.to_canonical(), &mut ip_buf);
    // One lookup for reading the prior hops and replacing them.
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Vacant(vacant) => {
            if let Ok(v) = HeaderValue::from_bytes(ip) {
                vacant.insert(v);
            }
        }
        header::Entry::Occupied(mut occupied) => {
            if let Ok(v) = forwarded_for(occupied.iter(), ip) {
                // Replaces every prior value: they are all in the new one.
                occupied.insert(v);
            }
        }
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if client.tls { "https" } else { "http" }),
    );
    match client.host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

/// The prior `X-Forwarded-For` hops, then `ip`, in one value. Blank and non-text values are
/// left out. One buffer, sized once and handed to the header value without a copy.
fn forwarded_for<'v>(
    prior: impl Iterator<Item = &'v HeaderValue>,
    ip: &[u8],
) -> Result<HeaderValue, header::InvalidHeaderValue> {
    let mut xff = Vec::new();
    let hops = prior
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    for value in hops {
        if xff.is_empty() {
            xff.reserve(value.len() + 2 + ip.len());
        }
        xff.extend_from_slice(value.as_bytes());
        xff.extend_from_slice(b", ");
    }
    if xff.is_empty() {
        return HeaderValue::from_bytes(ip);
    }
    xff.extend_from_slice(ip);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(xff))
}

/// The address as text in `buf`. IPv4, the usual case, without the formatting machinery.
fn ip_text(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    buf[len] = b'0' + d;
                    len += 1;
                }
            }
            &buf[..len]
        }
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            write!(cursor, "{ip}").expect("an IP address fits in 64 bytes");
            let len = usize::try_from(cursor.position()).expect("at most 64");
            &buf[..len]
        }
    }
}

/// Builds the absolute upstream URI: the target's scheme and authority, its base path, then
/// the request path (less the route prefix when `strip` is set) and the query untouched.
pub fn upstream_uri(
    target: &UpstreamTarget,
    original: &Uri,
    strip: Option<&str>,
) -> Result<Uri, http::Error> {
    let path = original.path();
    let path = match strip {
        Some(prefix) => path
            .strip_prefix(prefix.trim_end_matches('/'))
            .unwrap_or(path),
        None => path,
    };
    let mut pq = String::with_capacity(
        target.base_path.len() + path.len() + 1 + original.query().map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&target.base_path);
    if !path.starts_with('/') {
        pq.push('/');
    }
    pq.push_str(path);
    if let Some(q) = original.query() {
        pq.push('?');
        pq.push_str(q);
    }
    Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(PathAndQuery::try_from(pq)?)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::headers;

    #[test]
    fn strips_fixed_hop_by_hop_headers_and_those_connection_names() {
        let mut h = headers(&[
            ("connection", "close, x-session-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9v"),
            ("proxy-authenticate", "Basic"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-session-secret", "abc"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn keeps_te_trailers_for_grpc() {
        let mut h = headers(&[("te", "trailers"), ("content-type", "application/grpc")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
        let mut h = headers(&[("te", "gzip, trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn keeps_upgrade_headers_for_a_protocol_switch() {
        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(h.contains_key("sec-websocket-key"));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn request_id_is_kept_when_sane_and_made_otherwise() {
        let kept = request_id(&headers(&[("x-request-id", "abc-123")]));
        assert_eq!(kept, "abc-123");
        let made = request_id(&headers(&[("x-request-id", "has space")]));
        assert_eq!(made.len(), 36);
        let made = request_id(&HeaderMap::new());
        assert_eq!(made.len(), 36);
        assert_ne!(made, request_id(&HeaderMap::new()));
    }

    #[test]
    fn strips_spoofed_identity_headers_in_any_spelling() {
        let mut h = headers(&[
            ("x-keygate-user", "admin"),
            ("X_Keygate_Permissions", "*"),
            ("x-keygate-tenant", "t"),
            ("x-keygateway", "not ours?"),
            ("x-api-version", "2"),
        ]);
        strip_identity_headers(&mut h, "X-Keygate-");
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-keygateway") && h.contains_key("x-api-version"));
    }

    #[test]
    fn forwarding_headers_append_and_overwrite() {
        let host = HeaderValue::from_static("api.example.com");
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let client = ClientSide {
            ip: "10.1.2.3".parse().unwrap(),
            tls: false,
            host: Some(&host),
        };
        set_forwarding_headers(&mut h, &client);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");

        let mut h = HeaderMap::new();
        let client = ClientSide {
            ip: "::ffff:127.0.0.1".parse().unwrap(),
            tls: true,
            host: None,
        };
        set_forwarding_headers(&mut h, &client);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn forwarded_for_joins_every_prior_value_and_skips_blank_ones() {
        let mut h = HeaderMap::new();
        for v in ["203.0.113.9", "  ", "198.51.100.1, 192.0.2.4"] {
            h.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        let client = ClientSide {
            ip: "10.0.0.7".parse().unwrap(),
            tls: false,
            host: None,
        };
        set_forwarding_headers(&mut h, &client);
        assert_eq!(
            h.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["203.0.113.9, 198.51.100.1, 192.0.2.4, 10.0.0.7"]
        );
    }

    #[test]
    fn ip_text_matches_the_standard_formatting() {
        let mut buf = [0u8; 64];
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "10.200.3.45",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn connection_names_match_in_any_case_and_unknown_names_are_ignored() {
        let mut h = headers(&[
            (
                "connection",
                "Keep-Alive, X-Session-Secret,, nothing-here, Upgrade",
            ),
            ("keep-alive", "timeout=5"),
            ("x-session-secret", "abc"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn upstream_uri_joins_base_path_and_strips_prefix() {
        let target = UpstreamTarget {
            scheme: http::uri::Scheme::HTTP,
            authority: "up:9000".parse().unwrap(),
            base_path: "/base".into(),
        };
        let uri: Uri = "/api/v1/items?x=1&y=%20".parse().unwrap();
        assert_eq!(
            upstream_uri(&target, &uri, None).unwrap(),
            "http://up:9000/base/api/v1/items?x=1&y=%20"
        );
        assert_eq!(
            upstream_uri(&target, &uri, Some("/api")).unwrap(),
            "http://up:9000/base/v1/items?x=1&y=%20"
        );
        assert_eq!(
            upstream_uri(&target, &uri, Some("/api/")).unwrap(),
            "http://up:9000/base/v1/items?x=1&y=%20"
        );
        let exact: Uri = "/api".parse().unwrap();
        assert_eq!(
            upstream_uri(&target, &exact, Some("/api")).unwrap(),
            "http://up:9000/base/"
        );
        let root = UpstreamTarget {
            base_path: String::new(),
            ..target
        };
        assert_eq!(
            upstream_uri(&root, &exact, Some("/api")).unwrap(),
            "http://up:9000/"
        );
    }
}
