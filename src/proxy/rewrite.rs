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

/// Whether `name` (in any case) is on the fixed hop-by-hop list, or is `Upgrade` and
/// `upgrade_too`: for heads kept as bytes, where no `HeaderName` is made.
pub fn hop_by_hop(name: &[u8], upgrade_too: bool) -> bool {
    let named = |h: &HeaderName| h.as_str().as_bytes().eq_ignore_ascii_case(name);
    HOP_BY_HOP.iter().any(named) || (upgrade_too && named(&header::UPGRADE))
}

/// What one pass over a head's names finds of its hop-by-hop headers: most requests carry
/// none, and then nothing is hashed, removed or left out.
struct HopByHop {
    /// Which of [`HOP_BY_HOP`] are present.
    present: [bool; HOP_BY_HOP_COUNT],
    upgrade: bool,
    /// Other headers the `Connection` header names (`Connection: close, X-Foo`).
    listed: Vec<HeaderName>,
    /// `TE` asks for trailers: gRPC needs `TE: trailers` end to end, so it survives.
    te_trailers: bool,
}

impl HopByHop {
    fn scan(headers: &HeaderMap) -> Self {
        let mut hop = HopByHop {
            present: [false; HOP_BY_HOP_COUNT],
            upgrade: false,
            listed: Vec::new(),
            te_trailers: false,
        };
        // Comparisons, no hashing.
        for name in headers.keys() {
            match HOP_BY_HOP.iter().position(|h| h == name) {
                Some(i) => hop.present[i] = true,
                None => hop.upgrade |= name == header::UPGRADE,
            }
        }
        if !hop.any() {
            return hop;
        }
        // Each listed token is matched against the names present, so the common
        // `keep-alive` or `close` (naming a header on the fixed list, or none at all) costs
        // no allocation.
        if hop.is_present(&header::CONNECTION) {
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
                // Upgrade is decided on its own; the fixed list goes anyway.
                if let Some(name) =
                    named.filter(|n| *n != header::UPGRADE && !HOP_BY_HOP.contains(n))
                {
                    hop.listed.push(name.clone());
                }
            }
        }
        hop.te_trailers = hop.is_present(&header::TE)
            && headers.get_all(header::TE).iter().any(|v| {
                v.to_str().is_ok_and(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                })
            });
        hop
    }

    fn any(&self) -> bool {
        self.upgrade || self.present.contains(&true)
    }

    fn is_present(&self, wanted: &HeaderName) -> bool {
        HOP_BY_HOP
            .iter()
            .zip(self.present)
            .any(|(h, p)| p && h == wanted)
    }

    /// Whether `name` describes the connection rather than the message. `Upgrade` is
    /// kept for a protocol switch (`keep_upgrade`).
    fn drops(&self, name: &HeaderName, keep_upgrade: bool) -> bool {
        self.any()
            && (self.is_present(name)
                || (name == header::UPGRADE && !keep_upgrade)
                || self.listed.contains(name))
    }

    /// The hop-by-hop headers this hop sends on its own behalf after the others are gone.
    fn replacements(&self, keep_upgrade: bool) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let upgrade = (keep_upgrade && self.any())
            .then(|| (header::CONNECTION, HeaderValue::from_static("upgrade")));
        let te = self
            .te_trailers
            .then(|| (header::TE, HeaderValue::from_static("trailers")));
        upgrade.into_iter().chain(te)
    }
}

/// Removes hop-by-hop headers: the fixed list, `Upgrade`, and every header the
/// `Connection` header names. `TE: trailers` survives because gRPC needs it end to end.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` are kept for a protocol switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let hop = HopByHop::scan(headers);
    if !hop.any() {
        return;
    }
    for name in &hop.listed {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(hop.present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    if hop.upgrade && !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
    for (name, value) in hop.replacements(keep_upgrade) {
        headers.insert(name, value);
    }
}

/// Where the rewritten request headers go: a header map for hyper's client (TLS, HTTP/2,
/// upgrades), or straight into the HTTP/1.1 request head that our own client writes, so
/// that the hot path edits no map at all.
pub trait HeaderSink {
    fn put(&mut self, name: &HeaderName, value: &HeaderValue);
    /// A value made for this request; `value` is valid as a header value.
    fn put_bytes(&mut self, name: &HeaderName, value: &[u8]) {
        self.put_list(name, std::iter::once(value));
    }
    /// A value made for this request out of `parts` joined by `, ` (a list), each valid as
    /// a header value.
    fn put_list<'p>(&mut self, name: &HeaderName, parts: impl Iterator<Item = &'p [u8]>);
}

impl HeaderSink for HeaderMap {
    fn put(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.append(name.clone(), value.clone());
    }

    fn put_list<'p>(&mut self, name: &HeaderName, parts: impl Iterator<Item = &'p [u8]>) {
        let mut list = Vec::new();
        for (i, part) in parts.enumerate() {
            if i > 0 {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(part);
        }
        match HeaderValue::from_maybe_shared(bytes::Bytes::from(list)) {
            Ok(value) => {
                self.append(name.clone(), value);
            }
            Err(_) => debug_assert!(false, "{name}: made an invalid header value"),
        }
    }
}

/// The most headers [`RequestHeaders`] adds: six identity headers, three forwarding
/// headers, `X-Request-Id`, `Host`, `Connection` and `TE`.
pub const ADDED_HEADERS: usize = 13;

/// Everything the gateway changes in a request's headers before forwarding it. One
/// definition ([`RequestHeaders::emit`]) serves both clients, the hot-path bench and the
/// header-rewrite fuzz target, so they all run the exact code the proxy runs.
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
    /// Puts the headers the upstream gets into `sink`: the client's own, less hop-by-hop
    /// headers, our key, any identity header the client sent and the headers we set; then
    /// ours (identity, forwarding, request id). `Host` comes first when the client's is
    /// kept (`preserve_host`); otherwise none is put and the upstream client fills it in
    /// from the upstream URI.
    pub fn emit(&self, client: &HeaderMap, sink: &mut impl HeaderSink) {
        let hop = HopByHop::scan(client);
        let host = self.client.host.filter(|_| self.preserve_host);
        if let Some(host) = host {
            sink.put(&header::HOST, host);
        }
        let mut prior_hops = false;
        for (name, value) in client {
            let dropped = hop.drops(name, self.upgrade)
                || self.auth.is_credential(name, value)
                || is_identity_header(name.as_str(), &self.identity.prefix);
            if dropped {
                continue;
            }
            if name == X_FORWARDED_FOR {
                prior_hops = true;
            } else if !set_by_gateway(name) {
                sink.put(name, value);
            }
        }
        for (name, value) in hop.replacements(self.upgrade) {
            sink.put(&name, &value);
        }
        self.identity.emit(self.caller, sink);

        // Formatted on the stack: the longest IPv6 text is 45 bytes.
        let mut ip_buf = [0u8; 64];
        let ip = ip_text(self.client.ip.to_canonical(), &mut ip_buf);
        // The client's hops, then the client: blank and non-text values are left out.
        let prior = prior_hops
            .then(|| client.get_all(X_FORWARDED_FOR).iter())
            .into_iter()
            .flatten()
            .filter_map(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
            .map(str::as_bytes);
        sink.put_list(&X_FORWARDED_FOR, prior.chain([ip]));
        // Proto and Host are overwritten: this gateway is where TLS and the host were seen.
        let proto = if self.client.tls { "https" } else { "http" };
        sink.put(&X_FORWARDED_PROTO, &HeaderValue::from_static(proto));
        if let Some(host) = self.client.host {
            sink.put(&X_FORWARDED_HOST, host);
        }
        sink.put(&X_REQUEST_ID, self.request_id);
    }

    /// Rewrites `headers` in place, for hyper's client.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut rewritten = HeaderMap::with_capacity(headers.len() + ADDED_HEADERS);
        self.emit(headers, &mut rewritten);
        *headers = rewritten;
    }
}

/// Headers the gateway sets itself from what it saw; the client's are not forwarded
/// (`X-Forwarded-For` is, as prior hops within ours).
fn set_by_gateway(name: &HeaderName) -> bool {
    name == header::HOST
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
        || name == X_REQUEST_ID
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

/// What the forwarding headers say about the client's side of the connection.
pub struct ClientSide<'a> {
    pub ip: IpAddr,
    pub tls: bool,
    /// The `Host` (or HTTP/2 `:authority`) the client used, if any.
    pub host: Option<&'a HeaderValue>,
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
    let pq = match original.path_and_query() {
        // The usual route (no base path, no prefix to strip): the client's target as it is,
        // shared rather than copied and parsed again.
        Some(pq) if target.base_path.is_empty() && strip.is_none() && path.starts_with('/') => {
            pq.clone()
        }
        _ => rebuilt_target(target, original, strip)?,
    };
    Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(pq)
        .build()
}

/// The upstream's base path, then the client's path without the stripped prefix, then the
/// client's query.
fn rebuilt_target(
    target: &UpstreamTarget,
    original: &Uri,
    strip: Option<&str>,
) -> Result<PathAndQuery, http::Error> {
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
    Ok(PathAndQuery::try_from(pq)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::uri::Authority;
    use http::Method;

    use crate::proxy::h1::{encode_request_head, RequestFraming};
    use crate::test_support::{authenticator, headers};

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

    /// The request headers the upstream gets for an unchecked caller, as hyper's client
    /// gets them (`apply`) and as ours writes them (`emit` into a request head).
    struct Rewrite {
        auth: Authenticator,
        identity: IdentityHeaders,
        request_id: HeaderValue,
    }

    impl Rewrite {
        fn new() -> Self {
            Self {
                auth: authenticator(),
                identity: IdentityHeaders::new("X-Keygate-"),
                request_id: HeaderValue::from_static("rid-1"),
            }
        }

        fn plan<'a>(
            &'a self,
            client: ClientSide<'a>,
            upgrade: bool,
            preserve_host: bool,
        ) -> RequestHeaders<'a> {
            RequestHeaders {
                auth: &self.auth,
                identity: &self.identity,
                caller: &Caller::Anonymous,
                client,
                request_id: &self.request_id,
                upgrade,
                preserve_host,
            }
        }

        fn apply(&self, pairs: &[(&str, &str)], client: ClientSide<'_>) -> HeaderMap {
            let mut h = headers(pairs);
            self.plan(client, false, false).apply(&mut h);
            h
        }
    }

    fn client<'a>(ip: &str, tls: bool, host: Option<&'a HeaderValue>) -> ClientSide<'a> {
        ClientSide {
            ip: ip.parse().unwrap(),
            tls,
            host,
        }
    }

    #[test]
    fn strips_spoofed_identity_headers_in_any_spelling() {
        let h = Rewrite::new().apply(
            &[
                ("x-keygate-user", "admin"),
                ("X_Keygate_Permissions", "*"),
                ("x-keygate-tenant", "t"),
                ("x-keygateway", "not ours?"),
                ("x-api-version", "2"),
            ],
            client("10.0.0.1", false, None),
        );
        let identity: Vec<_> = h
            .keys()
            .filter(|n| n.as_str().starts_with("x-keygate"))
            .collect();
        assert_eq!(identity, ["x-keygateway", "x-keygate-anonymous"], "{h:?}");
        assert_eq!(h["x-keygate-anonymous"], "true");
        assert_eq!(h["x-api-version"], "2");
    }

    #[test]
    fn credentials_are_removed_and_foreign_bearer_tokens_kept() {
        let h = Rewrite::new().apply(
            &[
                ("x-api-key", "kg_one"),
                ("x-alt-key", "kg_one"),
                ("authorization", "Bearer kg_one"),
                ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"),
            ],
            client("10.0.0.1", false, None),
        );
        assert!(!h.contains_key("x-api-key") && !h.contains_key("x-alt-key"));
        let auth: Vec<_> = h.get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(auth, ["Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"]);
    }

    #[test]
    fn forwarding_headers_append_and_overwrite() {
        let host = HeaderValue::from_static("api.example.com");
        let h = Rewrite::new().apply(
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("x-request-id", "client-made"),
                ("host", "api.example.com"),
            ],
            client("10.1.2.3", false, Some(&host)),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-request-id"], "rid-1");
        assert!(!h.contains_key("host"), "filled from the upstream URI");

        let h = Rewrite::new().apply(
            &[("x-forwarded-host", "evil.example")],
            client("::ffff:127.0.0.1", true, None),
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn forwarded_for_joins_every_prior_value_and_skips_blank_ones() {
        let h = Rewrite::new().apply(
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "  "),
                ("x-forwarded-for", "198.51.100.1, 192.0.2.4"),
            ],
            client("10.0.0.7", false, None),
        );
        assert_eq!(
            h.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["203.0.113.9, 198.51.100.1, 192.0.2.4, 10.0.0.7"]
        );
    }

    #[test]
    fn request_head_puts_host_first_and_frames_the_body() {
        let fixture = Rewrite::new();
        let authority: Authority = "up:9000".parse().unwrap();
        let client_host = HeaderValue::from_static("api.example");
        let h = headers(&[
            ("accept", "*/*"),
            ("expect", "100-continue"),
            ("x-api-key", "kg_a"),
        ]);
        let head = |preserve_host, method, has_body| {
            let mut out = Vec::new();
            let plan = fixture.plan(
                client("10.0.0.1", false, Some(&client_host)),
                false,
                preserve_host,
            );
            let framing =
                encode_request_head(&mut out, &method, "/p?q=1", &authority, has_body, |w| {
                    plan.emit(&h, w)
                });
            (String::from_utf8(out).unwrap(), framing)
        };
        let ours = "x-keygate-anonymous: true\r\nx-forwarded-for: 10.0.0.1\r\n\
                    x-forwarded-proto: http\r\nx-forwarded-host: api.example\r\nx-request-id: rid-1\r\n";
        assert_eq!(
            head(false, Method::POST, true),
            (
                format!("POST /p?q=1 HTTP/1.1\r\nhost: up:9000\r\naccept: */*\r\n{ours}transfer-encoding: chunked\r\n\r\n"),
                RequestFraming::Chunked
            )
        );
        assert_eq!(
            head(true, Method::PUT, false),
            (
                format!("PUT /p?q=1 HTTP/1.1\r\nhost: api.example\r\naccept: */*\r\n{ours}content-length: 0\r\n\r\n"),
                RequestFraming::None
            )
        );
    }

    /// The rewrite as it was first written, one edit of the header map after another:
    /// the model the single-pass [`RequestHeaders::emit`] is checked against.
    fn model(plan: &RequestHeaders<'_>, h: &mut HeaderMap) {
        strip_hop_by_hop(h, plan.upgrade);
        plan.auth.strip_credentials(h);
        let spoofed: Vec<HeaderName> = h
            .keys()
            .filter(|n| is_identity_header(n.as_str(), &plan.identity.prefix))
            .cloned()
            .collect();
        for name in spoofed {
            h.remove(name);
        }
        plan.identity.emit(plan.caller, h);
        let ip = plan.client.ip.to_canonical().to_string();
        let prior: Vec<&str> = h
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
            .collect();
        let xff = match prior.is_empty() {
            true => ip,
            false => format!("{}, {ip}", prior.join(", ")),
        };
        h.insert(X_FORWARDED_FOR, xff.parse().unwrap());
        let proto = if plan.client.tls { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        match plan.client.host {
            Some(host) => h.insert(X_FORWARDED_HOST, host.clone()),
            None => h.remove(X_FORWARDED_HOST),
        };
        h.insert(X_REQUEST_ID, plan.request_id.clone());
        match (plan.client.host, plan.preserve_host) {
            (Some(host), true) => h.insert(header::HOST, host.clone()),
            _ => h.remove(header::HOST),
        };
    }

    const NAMES: &[&str] = &[
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "transfer-encoding",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "host",
        "x-api-key",
        "x-alt-key",
        "authorization",
        "x-keygate-user",
        "x_keygate_tenant",
        "x-custom",
        "accept",
        "content-length",
        "expect",
        "cookie",
    ];
    const VALUES: &[&str] = &[
        "keep-alive",
        "close, x-custom",
        "Upgrade",
        "keep-alive, upgrade",
        "trailers",
        "gzip, trailers",
        "Bearer kg_abc",
        "Bearer eyJ.e30.x",
        "203.0.113.9",
        "  ",
        "12",
        "websocket",
        "x-forwarded-for",
        "cookie, te",
        "x-api-key",
        "Content-Length",
    ];

    proptest::proptest! {
        /// Whatever the client sends, both sinks get what the model's edits leave: the
        /// same names with the same values in the same order per name. Our client's head
        /// also holds `Host` (the upstream's unless kept) and never `Expect`.
        #[test]
        fn emit_matches_the_edit_by_edit_model(
            pairs in proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..12),
            upgrade: bool,
            preserve_host: bool,
            tls: bool,
            host: Option<bool>,
            v6: bool,
        ) {
            static FIXTURE: std::sync::LazyLock<Rewrite> = std::sync::LazyLock::new(Rewrite::new);
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|&(n, v)| (NAMES[n], VALUES[v])).collect();
            let original = headers(&pairs);
            let host = host.map(|h| HeaderValue::from_static(if h { "api.example" } else { "other:8080" }));
            let ip = if v6 { "2001:db8::7" } else { "10.0.0.7" };
            let plan = FIXTURE.plan(client(ip, tls, host.as_ref()), upgrade, preserve_host);

            let mut expected = original.clone();
            model(&plan, &mut expected);
            let mut applied = original.clone();
            plan.apply(&mut applied);
            proptest::prop_assert_eq!(&applied, &expected);

            let authority: Authority = "up:9000".parse().unwrap();
            let mut out = Vec::new();
            let framing = encode_request_head(&mut out, &Method::GET, "/", &authority, false, |w| {
                plan.emit(&original, w)
            });
            let mut parsed_headers = [httparse::EMPTY_HEADER; 64];
            let complete = httparse::Request::new(&mut parsed_headers).parse(&out).unwrap();
            proptest::prop_assert_eq!(complete, httparse::Status::Complete(out.len()));
            // Read back as written (httparse trims values, which the model does not).
            let mut written = HeaderMap::new();
            let lines = out.split(|&b| b == b'\n').skip(1).take_while(|l| *l != b"\r");
            for line in lines {
                let line = line.strip_suffix(b"\r").unwrap();
                let colon = line.iter().position(|&b| b == b':').unwrap();
                let name = HeaderName::from_bytes(&line[..colon]).unwrap();
                proptest::prop_assert!(!written.is_empty() || name == header::HOST);
                written.append(name, HeaderValue::from_bytes(&line[colon + 2..]).unwrap());
            }
            expected.remove(header::EXPECT);
            if !expected.contains_key(header::HOST) {
                expected.insert(header::HOST, HeaderValue::from_static("up:9000"));
            }
            let length = expected.contains_key(header::CONTENT_LENGTH);
            proptest::prop_assert_eq!(&written, &expected);
            proptest::prop_assert_eq!(framing == RequestFraming::Length, length);
        }
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
        // Nothing to join or strip: the client's target goes as it is, query included.
        assert_eq!(
            upstream_uri(&root, &uri, None).unwrap(),
            "http://up:9000/api/v1/items?x=1&y=%20"
        );
        let bare: Uri = "/".parse().unwrap();
        assert_eq!(upstream_uri(&root, &bare, None).unwrap(), "http://up:9000/");
    }
}
