//! HTTP/1.1 wire format for the direct upstream client: the request head we write, the
//! response head we read (RFC 9112 §§3-6), and how the response body is framed.

use std::io::Write;
use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, StatusCode};
use smallvec::SmallVec;

use super::H1Error;
use crate::proxy::rewrite::{hop_by_hop, HeaderSink};
use crate::server::HeaderBlock;

/// The most headers an upstream response may carry (hyper's server default too).
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// How the request body travels to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body (and none announced).
    None,
    /// The client's `Content-Length` is forwarded and the body copied as it is.
    Length,
    /// No length known in advance (HTTP/2 client, chunked client): chunked to the upstream.
    Chunked,
}

/// Writes header lines into a request head as they are put, noting what the head's `Host`
/// and framing depend on.
pub struct HeadWriter<'a> {
    out: &'a mut Vec<u8>,
    authority: &'a Authority,
    host_written: bool,
    has_length: bool,
}

impl HeadWriter<'_> {
    /// `Host` goes first (RFC 9110 §7.2): the upstream's authority, unless the first header
    /// put is a `Host` of its own (`preserve_host`).
    fn host_first(&mut self, name: Option<&HeaderName>) {
        if !self.host_written {
            self.host_written = true;
            if name != Some(&header::HOST) {
                let authority = self.authority.as_str().as_bytes();
                self.line(header::HOST.as_str(), std::iter::once(authority));
            }
        }
    }

    /// `name: ` and the parts joined by `, `.
    fn line<'p>(&mut self, name: &str, parts: impl Iterator<Item = &'p [u8]>) {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        for (i, part) in parts.enumerate() {
            if i > 0 {
                self.out.extend_from_slice(b", ");
            }
            self.out.extend_from_slice(part);
        }
        self.out.extend_from_slice(b"\r\n");
    }
}

impl HeaderSink for HeadWriter<'_> {
    fn put(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.put_bytes(name, value.as_bytes());
    }

    fn put_list<'p>(&mut self, name: &HeaderName, parts: impl Iterator<Item = &'p [u8]>) {
        self.host_first(Some(name));
        if name == header::EXPECT {
            return;
        }
        self.has_length |= name == header::CONTENT_LENGTH;
        self.line(name.as_str(), parts);
    }
}

/// Writes the request line, the headers `headers` puts, and the framing; returns how the
/// body must be sent. `Expect` is not forwarded: hyper answers the client's
/// `100-continue` itself when the body is first read, and the upstream then gets a plain
/// request rather than one that waits for a `100` we would have to relay.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    authority: &Authority,
    has_body: bool,
    headers: impl FnOnce(&mut HeadWriter<'_>),
) -> RequestFraming {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut writer = HeadWriter {
        out,
        authority,
        host_written: false,
        has_length: false,
    };
    headers(&mut writer);
    writer.host_first(None); // when no header at all was put
    let framing = if writer.has_length {
        RequestFraming::Length
    } else if has_body {
        RequestFraming::Chunked
    } else {
        RequestFraming::None
    };
    match framing {
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A body-carrying method with an empty body says so, as hyper's client does: some
        // servers answer 411 to a POST without a length.
        RequestFraming::None if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::None | RequestFraming::Length => {}
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Appends one chunk of a chunked body (requests to upstreams, responses to clients).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return; // an empty chunk would end the body
    }
    write!(out, "{:x}\r\n", data.len()).expect("writing to a Vec cannot fail");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body (without trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head: what the client needs to know of it, and the headers that go on
/// to the gateway's client as lines ready to write.
pub struct ResponseHead {
    pub status: StatusCode,
    /// The upstream's headers less the hop-by-hop ones and the framing the gateway redoes
    /// (see [`parse_response_head`]).
    pub headers: HeaderBlock,
    pub framing: ResponseFraming,
    /// Whether the connection may carry another request once the body has been read.
    pub keep_alive: bool,
}

/// What a response head's headers say about its framing and its connection.
#[derive(Default)]
struct HeadFacts<'h> {
    /// A `Transfer-Encoding` header, and the last coding it names.
    transfer_coded: bool,
    last_coding: Option<&'h [u8]>,
    /// The `Content-Length`, when every value agrees (`Err`: they do not, or one is not a
    /// number; it matters only without a transfer coding).
    length: Option<Result<u64, &'static str>>,
    says_close: bool,
    /// `Connection` values that name other headers (`Connection: close, X-Foo`); most
    /// responses have none.
    listing: SmallVec<[&'h [u8]; 2]>,
}

impl<'h> HeadFacts<'h> {
    fn note(&mut self, name: &[u8], value: &'h [u8]) {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_coded = true;
            if let Some(last) = tokens(value).last() {
                self.last_coding = Some(last);
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_decimal(part.trim_ascii()).ok_or("invalid content-length");
                self.length = Some(match (self.length, n) {
                    (Some(Err(e)), _) | (_, Err(e)) => Err(e),
                    (Some(Ok(l)), Ok(n)) if l != n => Err("conflicting content-length values"),
                    (_, Ok(n)) => Ok(n),
                });
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.says_close |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"close"));
            if !only_connection_options(value) {
                self.listing.push(value);
            }
        }
    }

    /// RFC 9112 §6.3.
    fn framing(&self, method: &Method, status: StatusCode) -> Result<ResponseFraming, H1Error> {
        if bodiless(method, status) {
            return Ok(ResponseFraming::Empty);
        }
        if self.transfer_coded {
            // Chunked only when it is the final coding; anything else runs until close.
            return Ok(match self.last_coding {
                Some(t) if t.eq_ignore_ascii_case(b"chunked") => ResponseFraming::Chunked,
                _ => ResponseFraming::Close,
            });
        }
        Ok(match self.length {
            None => ResponseFraming::Close,
            Some(Err(e)) => return Err(H1Error::Protocol(e)),
            Some(Ok(0)) => ResponseFraming::Empty,
            Some(Ok(n)) => ResponseFraming::Length(n),
        })
    }

    /// Whether `Connection` names this header.
    fn listed(&self, name: &[u8]) -> bool {
        self.listing
            .iter()
            .any(|value| tokens(value).any(|t| t.eq_ignore_ascii_case(name)))
    }
}

/// A response to `HEAD`, a 204 or a 304 has no body whatever its headers say.
fn bodiless(method: &Method, status: StatusCode) -> bool {
    *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Parses one response head from the front of `buf` and removes it from there. `Ok(None)`
/// means more bytes are needed. Interim (1xx) responses other than 101 are skipped.
///
/// The headers the client gets are the upstream's less the hop-by-hop ones (the fixed
/// list, and those `Connection` names) and less `Content-Length` wherever the body's own
/// size states it (the gateway's server writes the length it frames the body by; only
/// the answers to `HEAD`, 204 and 304 pass the upstream's on).
pub fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, H1Error> {
    loop {
        // Uninitialised: zeroing 128 slots cost more than parsing a typical head.
        let mut slots =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Protocol("too many response headers"))
            }
            Err(_) => return Err(H1Error::Protocol("malformed response head")),
        };
        let status = StatusCode::from_u16(parsed.code.unwrap_or_default())
            .map_err(|_| H1Error::Protocol("invalid status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                // Upgrades never take this path; a switch nobody asked for is an error.
                return Err(H1Error::Protocol("unrequested protocol switch"));
            }
            buf.advance(len);
            continue; // 100 Continue, 103 Early Hints: the final response follows
        }
        let http11 = parsed.version == Some(1);
        let mut facts = HeadFacts::default();
        for h in parsed.headers.iter() {
            facts.note(h.name.as_bytes(), h.value);
        }
        let framing = facts.framing(request_method, status)?;
        let passes_length = !facts.transfer_coded && bodiless(request_method, status);
        // httparse has checked names and values as `HeaderName` and `HeaderValue` would.
        let mut headers = HeaderBlock::with_capacity(len);
        for h in parsed.headers.iter() {
            let name = h.name.as_bytes();
            // `Upgrade` too: this client never asks for a protocol switch.
            let dropped = hop_by_hop(name, true)
                || (name.eq_ignore_ascii_case(b"content-length") && !passes_length)
                || facts.listed(name);
            if !dropped {
                headers.push(name, h.value);
            }
        }
        let keep_alive = http11 && framing != ResponseFraming::Close && !facts.says_close;
        drop(facts); // it borrows the buffer
        buf.advance(len);
        return Ok(Some(ResponseHead {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// Whether a `Connection` value lists only `keep-alive` and `close`, no header names.
fn only_connection_options(value: &[u8]) -> bool {
    tokens(value).all(|t| t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close"))
}

/// The elements of a comma-separated header value.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The size in a chunk-size line (`1a;ext=1`), or `None` when it is not one.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let digits = &line[..end];
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = char::from(d).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn parse(raw: &str, method: Method) -> Result<Option<ResponseHead>, H1Error> {
        parse_response_head(&mut BytesMut::from(raw), &method)
    }

    /// The head for `method` whose headers are `pairs`, put in order.
    fn head(method: Method, pairs: &[(&str, &str)], has_body: bool) -> (String, RequestFraming) {
        let mut out = Vec::new();
        let authority: Authority = "127.0.0.1:9000".parse().unwrap();
        let framing = encode_request_head(&mut out, &method, "/p?q=1", &authority, has_body, |w| {
            for (name, value) in &headers(pairs) {
                w.put(name, value);
            }
        });
        (String::from_utf8(out).unwrap(), framing)
    }

    #[test]
    fn request_head_has_host_first_framing_and_no_expect() {
        assert_eq!(
            head(
                Method::POST,
                &[("x-a", "1"), ("expect", "100-continue")],
                true
            ),
            (
                "POST /p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:9000\r\nx-a: 1\r\n\
                 transfer-encoding: chunked\r\n\r\n"
                    .to_owned(),
                RequestFraming::Chunked
            )
        );
        assert_eq!(
            head(Method::GET, &[], false),
            (
                "GET /p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:9000\r\n\r\n".to_owned(),
                RequestFraming::None
            )
        );
    }

    #[test]
    fn preserved_host_empty_post_and_forwarded_length() {
        assert_eq!(
            head(Method::PUT, &[("host", "api.example")], false),
            (
                "PUT /p?q=1 HTTP/1.1\r\nhost: api.example\r\ncontent-length: 0\r\n\r\n".to_owned(),
                RequestFraming::None
            )
        );
        assert_eq!(
            head(Method::POST, &[("content-length", "2")], true),
            (
                "POST /p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:9000\r\ncontent-length: 2\r\n\r\n"
                    .to_owned(),
                RequestFraming::Length
            )
        );
    }

    #[test]
    fn chunks_are_encoded() {
        let mut out = Vec::new();
        encode_chunk(&mut out, b"hello world, 26 bytes long");
        encode_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"1a\r\nhello world, 26 bytes long\r\n0\r\n\r\n");
    }

    #[test]
    fn response_head_is_parsed_and_removed_from_the_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok");
        let head = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        // The length goes: the server writes the one it frames the body by.
        assert_eq!(head.headers.as_bytes(), b"X-A: b\r\n");
        assert_eq!(head.framing, ResponseFraming::Length(2));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn partial_head_needs_more() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Len", Method::GET)
            .unwrap()
            .is_none());
    }

    #[test]
    fn interim_responses_are_skipped() {
        let head = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
             HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            Method::POST,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers.as_bytes(), b"");
        assert_eq!(head.framing, ResponseFraming::Empty);
        assert!(matches!(
            parse("HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET),
            Err(H1Error::Protocol(_))
        ));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &str, m: Method| parse(raw, m).map(|h| h.unwrap().framing);
        let chunked =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            framing(chunked, Method::GET).unwrap(),
            ResponseFraming::Chunked
        );
        let gzip = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(framing(gzip, Method::GET).unwrap(), ResponseFraming::Close);
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n";
        assert_eq!(framing(head, Method::HEAD).unwrap(), ResponseFraming::Empty);
        let not_modified = "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n";
        assert_eq!(
            framing(not_modified, Method::GET).unwrap(),
            ResponseFraming::Empty
        );
        let same = "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n";
        assert_eq!(
            framing(same, Method::GET).unwrap(),
            ResponseFraming::Length(7)
        );
        let unframed = "HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(
            framing(unframed, Method::GET).unwrap(),
            ResponseFraming::Close
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 999x OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(parse(bad, Method::GET).is_err(), "{bad:?}");
        }
    }

    /// The lines the client is given for `raw`.
    fn passed(raw: &str, method: Method) -> String {
        let head = parse(raw, method).unwrap().unwrap();
        String::from_utf8(head.headers.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stay_behind() {
        let raw = "HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Secret\r\n\
                   Keep-Alive: timeout=5\r\nX-Secret: s\r\nx-secret: t\r\nProxy-Connection: x\r\n\
                   Proxy-Authenticate: Basic\r\nTE: trailers\r\nTrailer: x-sum\r\n\
                   Upgrade: h2c\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\
                   Set-Cookie: a=1\r\nset-cookie: b=2\r\nX-Secretive:   kept  \r\n\r\n";
        assert_eq!(
            passed(raw, Method::GET),
            "Server: up\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-Secretive: kept\r\n"
        );
        // Options only: nothing else named, nothing else dropped.
        assert_eq!(
            passed(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
                Method::GET
            ),
            "X-A: 1\r\n"
        );
    }

    #[test]
    fn only_bodiless_answers_pass_the_upstreams_length_on() {
        let raw = |status: &str| format!("HTTP/1.1 {status}\r\nContent-Length: 50\r\n\r\n");
        assert_eq!(
            passed(&raw("200 OK"), Method::HEAD),
            "Content-Length: 50\r\n"
        );
        assert_eq!(
            passed(&raw("304 Not Modified"), Method::GET),
            "Content-Length: 50\r\n"
        );
        assert_eq!(
            passed(&raw("204 No Content"), Method::GET),
            "Content-Length: 50\r\n"
        );
        assert_eq!(passed(&raw("200 OK"), Method::GET), "");
        assert_eq!(
            passed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET),
            ""
        );
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(passed(chunked, Method::HEAD), "");
    }

    #[test]
    fn values_httparse_lets_through_are_valid_header_values() {
        // The block is written without `HeaderValue`'s check: httparse's must be as strict.
        for bad in ["X-A: a\x7fb", "X-A: a\x01b", "X-A: a\0b"] {
            let raw = format!("HTTP/1.1 200 OK\r\n{bad}\r\nContent-Length: 0\r\n\r\n");
            assert!(parse(&raw, Method::GET).is_err(), "{bad:?}");
        }
        let ok = "HTTP/1.1 200 OK\r\nX-A: tab\there \u{e9}\r\nContent-Length: 0\r\n\r\n";
        let head = parse(ok, Method::GET).unwrap().unwrap();
        for (name, value) in head.headers.iter() {
            HeaderName::from_bytes(name).unwrap();
            HeaderValue::from_bytes(value).unwrap();
        }
    }

    #[test]
    fn keep_alive_needs_http11_framing_and_no_close() {
        let keep = |raw: &str| parse(raw, Method::GET).unwrap().unwrap().keep_alive;
        assert!(keep("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keep(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keep("HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"FF;name=value"), Some(255));
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"x"), None);
        assert_eq!(parse_chunk_size(b"10000000000000000"), None);
    }
}
