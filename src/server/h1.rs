//! Our own HTTP/1.1 server loop for the proxy's plain-TCP connections: the hot path.
//!
//! Why not hyper's server here: per request it drives a dispatcher state machine, arms a
//! header-read timer, and moves the handler's future through its service and body layers;
//! profiles of the proxy under load put hyper's server, with our drain wrapper around it,
//! near 4% of all CPU time, more than the key check. Here one function reads a head,
//! calls the handler and writes the response, in the connection's task, with no timer
//! while a keep-alive connection waits for its next request.
//!
//! It serves only what it fully understands: HTTP/1.1 requests in origin form with no
//! body, no upgrade and no `Expect`. The first request that is anything else (a body,
//! HTTP/1.0, HTTP/2's preface, a malformed or oversized head) hands the connection, with
//! the bytes read so far, to hyper's server for the rest of its life, so every such case
//! keeps hyper's behaviour, its 400 and 431 answers included.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{CarriesHeaders, ConnInfo, HeaderBlock, RequestBody};
use crate::proxy::h1::{encode_chunk, poll_read_drained, tokens, LAST_CHUNK};

/// Read buffer size, and the least free room a read is given.
const READ_BUFFER: usize = 8 * 1024;
const MIN_READ_ROOM: usize = 1024;

/// Header slots parsed on the stack. A head with more headers than this (but within
/// `max_headers`) goes to hyper, which allows `max_headers`.
const MAX_PARSED_HEADERS: usize = 128;

/// Response body bytes gathered before they are written; larger frames go out as they are.
const WRITE_COALESCE: usize = 64 * 1024;

/// The listener's limits on request heads.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub read_timeout: Duration,
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// How a connection left our loop.
pub enum Ended {
    /// Closed (by the client, an error, a timeout, the drain or `Connection: close`).
    Closed,
    /// The next request is not one we serve: hyper's server takes the connection, reading
    /// `read` (the bytes already read from it) first.
    HandOff { stream: TcpStream, read: Bytes },
}

/// The drain's two signals: once `draining` fires, responses carry `Connection: close`;
/// once `closing` fires, idle connections close too.
#[derive(Clone, Copy)]
pub struct Ending<'a> {
    pub draining: &'a CancellationToken,
    pub closing: &'a CancellationToken,
}

/// What the response depends on, besides the response itself.
#[derive(Clone, Copy, Debug)]
struct RequestFacts {
    keep_alive: bool,
    head_method: bool,
    /// The client accepts trailers (`TE: trailers`); otherwise they are dropped, as hyper's
    /// server does.
    trailers: bool,
}

/// Serves requests on `stream` until it closes or must go to hyper's server.
pub async fn serve_connection<H, F, B>(
    stream: TcpStream,
    info: ConnInfo,
    handler: &H,
    limits: HeadLimits,
    ending: Ending<'_>,
) -> Ended
where
    H: Fn(Request<RequestBody>, ConnInfo) -> F,
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body + CarriesHeaders,
    B::Error: std::fmt::Display,
{
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(READ_BUFFER),
        out: Vec::with_capacity(1024),
    };
    // The first head must arrive within the timeout from the accept; later heads within
    // the timeout from their first byte (as hyper's server does), so an idle keep-alive
    // connection costs no timer.
    let mut timer = pin!(tokio::time::sleep(limits.read_timeout));
    let mut timing = true;
    loop {
        let (req, facts) = loop {
            if !conn.buf.is_empty() {
                match parse_head(&mut conn.buf, limits) {
                    Parsed::Request(req, facts) => break (req, facts),
                    Parsed::NotOurs => return conn.hand_off(),
                    Parsed::Partial if conn.buf.len() > limits.max_bytes => return conn.hand_off(),
                    Parsed::Partial => {
                        if !timing {
                            timer
                                .as_mut()
                                .reset(tokio::time::Instant::now() + limits.read_timeout);
                            timing = true;
                        }
                    }
                }
            }
            let idle = conn.buf.is_empty();
            let read = tokio::select! {
                biased;
                read = conn.read() => read,
                () = &mut timer, if timing => {
                    tracing::debug!(peer = %info.peer, "request head not received in time; closing");
                    return Ended::Closed;
                }
                () = ending.closing.cancelled(), if idle => return Ended::Closed,
            };
            match read {
                Ok(0) => return Ended::Closed,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(peer = %info.peer, error = %e, "reading a request failed");
                    return Ended::Closed;
                }
            }
        };
        timing = false;
        let Ok(response) = handler(req, info).await;
        match conn
            .write_response(
                response,
                facts,
                ending.draining.is_cancelled() || ending.closing.is_cancelled(),
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let _ = conn.stream.shutdown().await;
                return Ended::Closed;
            }
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, "writing a response failed");
                return Ended::Closed;
            }
        }
    }
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The response head and body bytes waiting to be written.
    out: Vec<u8>,
}

impl Conn {
    async fn read(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < MIN_READ_ROOM {
            // Reclaims the room of heads already handed out once their requests are gone.
            self.buf.reserve(READ_BUFFER);
        }
        std::future::poll_fn(|cx| poll_read_drained(&self.stream, &mut self.buf, cx)).await
    }

    fn hand_off(self) -> Ended {
        Ended::HandOff {
            stream: self.stream,
            read: self.buf.freeze(),
        }
    }

    /// Writes the response; `Ok(true)` when the connection can carry another request.
    async fn write_response<B>(
        &mut self,
        response: Response<B>,
        facts: RequestFacts,
        draining: bool,
    ) -> io::Result<bool>
    where
        B: Body + CarriesHeaders,
        B::Error: std::fmt::Display,
    {
        let (parts, mut body) = response.into_parts();
        let carried = body.take_header_block();
        let status = parts.status;
        let keep_alive = facts.keep_alive
            && !draining
            // Nothing asked for a protocol switch; whatever the connection carries next
            // is not ours to read as HTTP.
            && status != StatusCode::SWITCHING_PROTOCOLS;
        let (framing, keep_alive) = self.head(
            &parts.headers,
            carried.as_ref(),
            status,
            &body,
            keep_alive,
            facts.head_method,
        );
        if facts.head_method || framing == Framing::None {
            self.flush().await?;
            return Ok(keep_alive);
        }
        let mut body = pin!(body);
        let mut written: u64 = 0;
        let mut trailers = None;
        loop {
            let step = std::future::poll_fn(|cx| match body.as_mut().poll_frame(cx) {
                Poll::Pending if !self.out.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
            })
            .await;
            let frame = match step {
                // Nothing more is ready: what is gathered goes out meanwhile.
                None => {
                    self.flush().await?;
                    continue;
                }
                Some(None) => break,
                Some(Some(Ok(frame))) => frame,
                Some(Some(Err(e))) => {
                    // Cut short: the client sees a body shorter than announced, or no last
                    // chunk, and the connection closes.
                    let failed = io::Error::other(format!("response body failed: {e}"));
                    self.flush().await?;
                    return Err(failed);
                }
            };
            let frame = match frame.into_data() {
                Ok(mut data) => {
                    written += data.remaining() as u64;
                    if let Framing::Length(n) = framing {
                        if written > n {
                            return Err(io::Error::other("response body longer than its length"));
                        }
                    }
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        let len = chunk.len();
                        self.body_bytes(chunk, framing == Framing::Chunked).await?;
                        data.advance(len);
                    }
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
            }
        }
        match framing {
            Framing::Chunked => match trailers.filter(|_| facts.trailers) {
                Some(trailers) => {
                    self.out.extend_from_slice(b"0\r\n");
                    for (name, value) in &trailers {
                        header_line(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
                    }
                    self.out.extend_from_slice(b"\r\n");
                }
                None => self.out.extend_from_slice(LAST_CHUNK),
            },
            Framing::Length(n) if written != n => {
                self.flush().await?;
                return Err(io::Error::other("response body shorter than its length"));
            }
            _ => {}
        }
        self.flush().await?;
        Ok(keep_alive)
    }

    /// Puts the status line and headers (the map's, then the lines the body carried) into
    /// `out`, with the framing headers the body needs; says how the body is framed and
    /// whether the connection stays open. One pass over the map: each lookup in a
    /// `HeaderMap` hashes the name again. The carried lines hold no framing or connection
    /// headers (see [`crate::proxy::h1`]'s response head), so they are copied as they are.
    fn head<B: Body>(
        &mut self,
        headers: &HeaderMap,
        carried: Option<&HeaderBlock>,
        status: StatusCode,
        body: &B,
        keep_alive: bool,
        head_method: bool,
    ) -> (Framing, bool) {
        let out = &mut self.out;
        if status == StatusCode::OK {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        } else {
            let reason = status.canonical_reason().unwrap_or("");
            write!(out, "HTTP/1.1 {} {reason}\r\n", status.as_str())
                .expect("writing to a Vec cannot fail");
        }
        let (mut length, mut coding, mut dated, mut says_close) = (None, None, false, false);
        for (name, value) in headers {
            header_line(out, name.as_str().as_bytes(), value.as_bytes());
            match *name {
                header::CONTENT_LENGTH => length = length.or(Some(value)),
                header::TRANSFER_ENCODING => coding = Some(value),
                header::DATE => dated = true,
                header::CONNECTION => {
                    says_close |= tokens(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close"))
                }
                _ => {}
            }
        }
        if let Some(block) = carried {
            out.extend_from_slice(block.as_bytes());
            dated |= block.is_dated();
        }
        let framing = if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::None
        } else if let Some(length) = length {
            match std::str::from_utf8(length.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        } else if let Some(coding) = coding {
            // The last coding applied must be chunked for the body to end before the
            // connection does (RFC 9112 §6.3).
            match tokens(coding.as_bytes()).last() {
                Some(last) if last.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
                _ => Framing::Close,
            }
        } else if head_method {
            // No body follows, and a length made up from this empty one would misstate
            // the resource's (RFC 9110 §9.3.2): none is added.
            Framing::None
        } else if let Some(n) = body.size_hint().exact() {
            header_line(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
            Framing::Length(n)
        } else {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        };
        if !dated {
            date_line(out);
        }
        let keep_alive = keep_alive && !says_close && framing != Framing::Close;
        if !keep_alive && !says_close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        (framing, keep_alive)
    }

    /// Adds body bytes to `out`, or writes them straight out when they are large.
    async fn body_bytes(&mut self, data: &[u8], chunked: bool) -> io::Result<()> {
        if data.len() < WRITE_COALESCE {
            if chunked {
                encode_chunk(&mut self.out, data);
            } else {
                self.out.extend_from_slice(data);
            }
            if self.out.len() >= WRITE_COALESCE {
                self.flush().await?;
            }
            return Ok(());
        }
        if chunked {
            write!(self.out, "{:x}\r\n", data.len()).expect("writing to a Vec cannot fail");
        }
        self.flush().await?;
        self.stream.write_all(data).await?;
        if chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// How a response body is delimited on the client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body may follow (1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (a length or transfer coding we cannot frame).
    Close,
}

/// `name: value\r\n`.
pub(super) fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `date: …` (RFC 9110 §6.6.1), formatted once a second per thread.
fn date_line(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        header_line(out, b"date", text.as_bytes());
    });
}

// Returned once per request and moved straight on into the handler: boxing the request
// would add an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Request<RequestBody>, RequestFacts),
    Partial,
    NotOurs,
}

/// Parses the head at the front of `buf` and, when it is one we serve, takes it from
/// there. Header values and the target are slices of the head's bytes, not copies.
fn parse_head(buf: &mut BytesMut, limits: HeadLimits) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_PARSED_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(
        buf,
        &mut slots[..limits.max_headers.min(MAX_PARSED_HEADERS)],
    ) {
        // Over the limit: hyper's server answers 431.
        Ok(httparse::Status::Complete(len)) if len > limits.max_bytes => return Parsed::NotOurs,
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotOurs,
    };
    let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Parsed::NotOurs;
    };
    if !target.starts_with('/') {
        return Parsed::NotOurs; // absolute, authority (CONNECT) and asterisk forms
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::NotOurs;
    };
    if method == Method::CONNECT {
        return Parsed::NotOurs;
    }
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let mut facts = RequestFacts {
        keep_alive: true,
        head_method: method == Method::HEAD,
        trailers: false,
    };
    let mut fields: SmallVec<[(HeaderName, Range<usize>); 24]> = SmallVec::new();
    for h in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::NotOurs;
        };
        let value = h.value;
        match name {
            header::CONTENT_LENGTH if value.trim_ascii() != b"0" => return Parsed::NotOurs,
            header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT => return Parsed::NotOurs,
            header::CONNECTION => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        facts.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::NotOurs;
                    }
                }
            }
            header::TE => {
                facts.trailers |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            }
            _ => {}
        }
        fields.push((name, range(value)));
    }
    let target = range(target.as_bytes());
    let head = buf.split_to(len).freeze();
    let Some((uri, headers)) = request_parts(&head, target, fields) else {
        // Put the head back for hyper's server, which answers it with its own error.
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Parsed::NotOurs;
    };
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request(req, facts)
}

/// The target and header values as slices of `head`.
fn request_parts(
    head: &Bytes,
    target: Range<usize>,
    fields: SmallVec<[(HeaderName, Range<usize>); 24]>,
) -> Option<(Uri, HeaderMap)> {
    let uri = Uri::from_maybe_shared(head.slice(target)).ok()?;
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        // httparse has checked the bytes the same way: this does not fail.
        headers.append(
            name,
            HeaderValue::from_maybe_shared(head.slice(value)).ok()?,
        );
    }
    Some((uri, headers))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::Context;

    use http_body::Frame;
    use http_body_util::Full;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A body of the given frames, of unknown length (so it goes out chunked).
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    impl CarriesHeaders for Frames {
        fn header_block_mut(&mut self) -> Option<&mut HeaderBlock> {
            None
        }
    }

    type TestBody = http_body_util::Either<Full<Bytes>, Frames>;

    /// Answers `/chunked` with two data frames and a trailer, anything else with a
    /// description of the request it got.
    async fn describe(
        req: Request<RequestBody>,
        _: ConnInfo,
    ) -> Result<Response<TestBody>, Infallible> {
        if req.uri().path() == "/chunked" {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc"));
            let frames = [
                Frame::data(Bytes::from_static(b"hello ")),
                Frame::data(Bytes::from_static(b"world")),
                Frame::trailers(trailers),
            ];
            return Ok(Response::new(http_body_util::Either::Right(Frames(
                frames.into(),
            ))));
        }
        let x: Vec<_> = req
            .headers()
            .get_all("x")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        let text = format!(
            "{} {} x={} end={}",
            req.method(),
            req.uri(),
            x.join("+"),
            req.body().is_end_stream()
        );
        Ok(Response::new(http_body_util::Either::Left(Full::new(
            Bytes::from(text),
        ))))
    }

    const LIMITS: HeadLimits = HeadLimits {
        read_timeout: Duration::from_millis(300),
        max_bytes: 4096,
        max_headers: 16,
    };

    /// Serves one accepted connection with [`describe`]; the client end and how the
    /// server side ended.
    async fn connection(
        draining: CancellationToken,
        closing: CancellationToken,
    ) -> (TcpStream, tokio::task::JoinHandle<Ended>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, peer): (TcpStream, SocketAddr) = listener.accept().await.unwrap();
            let info = ConnInfo { peer, tls: false };
            let ending = Ending {
                draining: &draining,
                closing: &closing,
            };
            serve_connection(stream, info, &describe, LIMITS, ending).await
        });
        (TcpStream::connect(addr).await.unwrap(), server)
    }

    async fn read_to_end(mut client: TcpStream) -> String {
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        String::from_utf8(all).unwrap()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut client, server) =
            connection(CancellationToken::new(), CancellationToken::new()).await;
        client
            .write_all(b"GET /a?q=1 HTTP/1.1\r\nHost: h\r\nX: 1\r\nX: 2\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let all = read_to_end(client).await;
        let first = all.find("GET /a?q=1 x=1+2 end=true").expect(&all);
        let second = all.find("GET /b x= end=true").expect(&all);
        assert!(first < second, "{all}");
        assert!(
            all.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 25\r\ndate: "),
            "{all}"
        );
        assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
        // Only the answer to the request that asked for it says the connection closes.
        assert_eq!(all.matches("connection: close").count(), 1, "{all}");
        assert!(matches!(server.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn a_head_request_gets_no_body_and_no_made_up_length() {
        let (mut client, _server) =
            connection(CancellationToken::new(), CancellationToken::new()).await;
        client
            .write_all(b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let all = read_to_end(client).await;
        // The handler's (GET-sized) body is not sent, nor is its length claimed; a
        // `Content-Length` the upstream sent would pass through like any header.
        assert!(
            !all.contains("content-length") && !all.contains("transfer-encoding"),
            "{all}"
        );
        assert!(all.ends_with("\r\n\r\n"), "no body after the head: {all}");
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_chunked_with_trailers_only_when_accepted() {
        let (mut client, _server) =
            connection(CancellationToken::new(), CancellationToken::new()).await;
        client
            .write_all(b"GET /chunked HTTP/1.1\r\nHost: h\r\n\r\nGET /chunked HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let all = read_to_end(client).await;
        let (first, second) = all.split_at(all.rfind("HTTP/1.1 200").unwrap());
        assert!(first.contains("transfer-encoding: chunked\r\n"), "{first}");
        assert!(
            first.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
            "{first}"
        );
        assert!(
            second.ends_with("6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: abc\r\n\r\n"),
            "{second}"
        );
    }

    /// Each of these goes to hyper's server, with every byte the client sent.
    #[tokio::test]
    async fn requests_we_do_not_serve_hand_the_connection_over_untouched() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "a".repeat(5000)
        );
        let cases: Vec<Vec<u8>> = vec![
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            b"GET /a HTTP/1.0\r\n\r\n".to_vec(),
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_vec(),
            b"PUT /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
                .to_vec(),
            b"GET http://elsewhere/a HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
            b"GET /c HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            big.into_bytes(),
        ];
        for sent in cases {
            let (mut client, server) =
                connection(CancellationToken::new(), CancellationToken::new()).await;
            client.write_all(&sent).await.unwrap();
            let Ended::HandOff { read, .. } = server.await.unwrap() else {
                panic!("served: {}", String::from_utf8_lossy(&sent));
            };
            // hyper's server may see the rest in a later read; what was read comes first.
            assert!(
                sent.starts_with(&read),
                "{}",
                String::from_utf8_lossy(&sent)
            );
            assert!(!read.is_empty());
        }
    }

    #[tokio::test]
    async fn a_request_after_one_served_is_handed_over_from_its_first_byte() {
        let (mut client, server) =
            connection(CancellationToken::new(), CancellationToken::new()).await;
        let second = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi";
        let mut sent = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        sent.extend_from_slice(second);
        client.write_all(&sent).await.unwrap();
        let Ended::HandOff { read, .. } = server.await.unwrap() else {
            panic!("not handed over");
        };
        assert!(second.starts_with(&read), "{read:?}");
        let mut answer = [0u8; 512];
        let n = client.read(&mut answer).await.unwrap();
        assert!(String::from_utf8_lossy(&answer[..n]).contains("GET /a x= end=true"));
    }

    #[tokio::test]
    async fn an_unfinished_head_is_dropped_after_the_read_timeout() {
        let (mut client, server) =
            connection(CancellationToken::new(), CancellationToken::new()).await;
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Slow: ")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(server.await.unwrap(), Ended::Closed));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert_eq!(read_to_end(client).await, "", "closed without an answer");
    }

    #[tokio::test]
    async fn the_drain_closes_an_idle_connection_and_lets_a_busy_one_finish() {
        let closing = CancellationToken::new();
        let (mut client, server) = connection(CancellationToken::new(), closing.clone()).await;
        assert!(first_answer(&mut client).await.contains("GET /a"));
        closing.cancel();
        assert!(matches!(server.await.unwrap(), Ended::Closed));
        assert_eq!(read_to_end(client).await, "");

        // Closing already: the request in hand is answered, then the connection closes.
        let (client, server) = connection(CancellationToken::new(), closing.clone()).await;
        answered_then_closed(client, server).await;
    }

    /// Sends `GET /a` and returns what the first read of the answer brings, the connection
    /// left open.
    async fn first_answer(client: &mut TcpStream) -> String {
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 512];
        let n = client.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    /// Sends `GET /b` and expects its answer, with `Connection: close`, then the close.
    async fn answered_then_closed(mut client: TcpStream, server: tokio::task::JoinHandle<Ended>) {
        client
            .write_all(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let all = read_to_end(client).await;
        assert!(
            all.contains("connection: close\r\n") && all.contains("GET /b"),
            "{all}"
        );
        assert!(matches!(server.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn once_draining_answers_ask_the_client_to_close() {
        let draining = CancellationToken::new();
        let (mut client, server) = connection(draining.clone(), CancellationToken::new()).await;
        assert!(!first_answer(&mut client)
            .await
            .contains("connection: close"));
        draining.cancel();
        answered_then_closed(client, server).await;
    }

    #[test]
    fn a_parsed_request_leaves_the_rest_of_the_buffer() {
        let mut buf = BytesMut::from(&b"GET /p?x=1 HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nContent-Length: 0\r\n\r\nGET /next"[..]);
        let Parsed::Request(req, facts) = parse_head(&mut buf, LIMITS) else {
            panic!("not parsed");
        };
        assert_eq!(req.uri().path(), "/p");
        assert_eq!(req.uri().query(), Some("x=1"));
        assert_eq!(req.headers()["host"], "h");
        assert!(facts.keep_alive && facts.trailers && !facts.head_method);
        assert_eq!(&buf[..], b"GET /next");
        assert!(matches!(parse_head(&mut buf, LIMITS), Parsed::Partial));
    }

    #[tokio::test]
    async fn a_short_body_closes_the_connection_instead_of_desynchronising_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let lying = |_req: Request<RequestBody>, _: ConnInfo| async {
                let mut response = Response::new(Full::new(Bytes::from_static(b"abc")));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
                Ok::<_, Infallible>(response)
            };
            let info = ConnInfo { peer, tls: false };
            let never = CancellationToken::new();
            let ending = Ending {
                draining: &never,
                closing: &never,
            };
            serve_connection(stream, info, &lying, LIMITS, ending).await
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let all = read_to_end(client).await;
        assert!(
            all.contains("content-length: 10\r\n") && all.ends_with("abc"),
            "{all}"
        );
        assert!(matches!(server.await.unwrap(), Ended::Closed));
    }
}
