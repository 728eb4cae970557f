//! A hand-written HTTP/1.1 client for plain-http upstreams: the proxy's hot path.
//!
//! Why not hyper's client here: it runs every upstream connection in a task of its own and
//! hands it requests, responses and body chunks over channels, so one proxied request
//! wakes several tasks, often on the other worker thread. Here the request's own task
//! writes the request and reads the response head, and the response body is read by
//! whoever polls it (hyper's server, in the client connection's task): one task and no
//! channels per request, as nginx does it with one event loop. hyper's client still
//! carries what this one does not: TLS, HTTP/2 and protocol upgrades.
//!
//! The request body is sent in full before the response is read. An upstream that
//! answers early and closes mid-upload gets the client a 502, where hyper's client could
//! relay the early answer.

mod body;
mod codec;
mod pool;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::server::RequestBody;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

pub use body::ResponseBody;
pub use codec::{
    encode_chunk, encode_request_head, tokens, HeadWriter, RequestFraming, LAST_CHUNK,
};
pub use pool::poll_read_drained;
use pool::{Conn, Pool};

use crate::config::UpstreamConfig;

/// Room for a typical request head with the headers the gateway adds, so that writing it
/// does not grow the buffer.
pub const REQUEST_HEAD_CAPACITY: usize = 1024;

/// Bodies up to this size are sent in the same write as the head.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Why a request could not be exchanged with the upstream.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("writing the request failed: {0}")]
    Write(#[source] io::Error),
    #[error("reading the response failed: {0}")]
    Read(#[source] io::Error),
    #[error("the upstream closed the connection without answering")]
    ClosedBeforeResponse,
    #[error("the client's request body failed: {0}")]
    RequestBody(#[source] hyper::Error),
    #[error("invalid response: {0}")]
    Protocol(&'static str),
}

impl H1Error {
    /// Failures a reused connection shows when the upstream closed it while it was idle:
    /// the request never reached the upstream's application.
    fn stale_connection(&self) -> bool {
        match self {
            H1Error::Write(_) | H1Error::ClosedBeforeResponse => true,
            H1Error::Read(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// The parts of a request the client sends; the URI's scheme and authority are the route's.
pub struct UpstreamRequest<'a, H> {
    pub authority: &'a Authority,
    pub method: &'a Method,
    pub target: &'a PathAndQuery,
    /// Puts the headers the upstream gets, written straight into the request head.
    pub headers: H,
    pub body: RequestBody,
}

pub struct H1Client {
    pool: Arc<Pool>,
}

impl H1Client {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        Self {
            pool: Pool::new(cfg),
        }
    }

    /// Sends the request on a pooled connection (or a new one) and reads the response head.
    /// A request without a body and with an idempotent method is sent once more, on a new
    /// connection, when a pooled one turns out to have been closed by the upstream after
    /// it was checked (a race no client can rule out).
    pub async fn send<H: FnOnce(&mut HeadWriter<'_>)>(
        &self,
        req: UpstreamRequest<'_, H>,
    ) -> Result<Response<ResponseBody>, H1Error> {
        let has_body = !req.body.is_end_stream();
        let mut head = Vec::with_capacity(REQUEST_HEAD_CAPACITY);
        let framing = codec::encode_request_head(
            &mut head,
            req.method,
            req.target.as_str(),
            req.authority,
            has_body,
            req.headers,
        );
        let replayable = !has_body && req.method.is_idempotent();
        let (authority, method) = (req.authority, req.method);
        let mut body = has_body.then_some(req.body);

        if let Some(conn) = self.pool.checkout(authority) {
            tracing::trace!(%authority, "reusing a pooled upstream connection");
            match self
                .exchange(conn, &head, body.take(), framing, authority, method)
                .await
            {
                Err(e) if replayable && e.stale_connection() => {
                    tracing::debug!(error = %e, "pooled upstream connection was closed; retrying on a new one");
                }
                result => return result,
            }
        }
        // Boxed, like the body upload below: both are large futures that most requests
        // (pooled connection, no body) never run, and the request's future would otherwise
        // carry their size through every move.
        let conn = Box::pin(self.pool.connect(authority)).await?;
        tracing::trace!(%authority, "opened an upstream connection");
        self.exchange(conn, &head, body, framing, authority, method)
            .await
    }

    async fn exchange(
        &self,
        mut conn: Conn,
        head: &[u8],
        body: Option<RequestBody>,
        framing: RequestFraming,
        authority: &Authority,
        method: &Method,
    ) -> Result<Response<ResponseBody>, H1Error> {
        match body {
            None => conn.stream.write_all(head).await.map_err(H1Error::Write)?,
            Some(body) => Box::pin(write_with_body(&mut conn, head, body, framing)).await?,
        }
        let head = loop {
            if let Some(head) = codec::parse_response_head(&mut conn.buf, method)? {
                break head;
            }
            if conn.buf.len() > 64 * 1024 {
                return Err(H1Error::Protocol("response head too large"));
            }
            let nothing_yet = conn.buf.is_empty();
            let read = std::future::poll_fn(|cx| conn.poll_fill(cx)).await;
            match read.map_err(H1Error::Read)? {
                0 if nothing_yet => return Err(H1Error::ClosedBeforeResponse),
                0 => return Err(H1Error::Protocol("connection closed mid-head")),
                _ => {}
            }
        };
        tracing::trace!(status = head.status.as_u16(), framing = ?head.framing, keep_alive = head.keep_alive, "upstream response head");
        let body = ResponseBody::new(
            head.headers,
            head.framing,
            conn,
            head.keep_alive,
            &self.pool,
            authority,
        );
        // The headers travel in the body: the response's own map stays empty.
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        Ok(response)
    }
}

/// Writes the head and the client's body as it arrives, chunked when no length is known.
async fn write_with_body(
    conn: &mut Conn,
    head: &[u8],
    mut body: RequestBody,
    framing: RequestFraming,
) -> Result<(), H1Error> {
    let chunked = framing == RequestFraming::Chunked;
    let mut out = Vec::with_capacity(head.len() + 1024);
    out.extend_from_slice(head);
    while let Some(frame) = body.frame().await {
        // Request trailers are dropped, as hyper's client does once `Trailer` is stripped:
        // forwarded, they would carry headers past every check applied to the head
        // (credentials, spoofed identity headers).
        let Ok(data) = frame.map_err(H1Error::RequestBody)?.into_data() else {
            continue;
        };
        if !chunked && out.len() + data.len() > COALESCE_LIMIT {
            // Large frames go as they are rather than through a copy.
            if !out.is_empty() {
                conn.stream.write_all(&out).await.map_err(H1Error::Write)?;
                out.clear();
            }
            conn.stream.write_all(&data).await.map_err(H1Error::Write)?;
            continue;
        }
        if chunked {
            codec::encode_chunk(&mut out, &data);
        } else {
            out.extend_from_slice(&data);
        }
        // Written per frame: a slow upload streams instead of waiting to fill a buffer.
        conn.stream.write_all(&out).await.map_err(H1Error::Write)?;
        out.clear();
    }
    if chunked {
        out.extend_from_slice(codec::LAST_CHUNK);
    }
    if !out.is_empty() {
        conn.stream.write_all(&out).await.map_err(H1Error::Write)?;
    }
    Ok(())
}
