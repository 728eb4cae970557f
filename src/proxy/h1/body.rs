//! The upstream's response body, read from the upstream connection by whoever polls it:
//! hyper's server, in the client connection's task. When the last byte has been read the
//! connection goes back to the pool at once, before the client has even been sent it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};

use super::codec::{parse_chunk_size, ResponseFraming, MAX_RESPONSE_HEADERS};
use super::pool::{Conn, Pool};
use super::H1Error;
use crate::server::{CarriesHeaders, HeaderBlock};

/// The longest chunk-size line or trailer line we wait for.
const MAX_LINE: usize = 8 * 1024;

enum State {
    /// `remaining` body bytes still to hand out.
    Length {
        remaining: u64,
    },
    Chunked(Chunk),
    /// Everything until the upstream closes.
    Close,
    Done,
}

enum Chunk {
    Size,
    Data {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers(HeaderMap),
}

/// Where the connection goes once the body is complete.
struct Return {
    pool: Arc<Pool>,
    authority: Authority,
}

pub struct ResponseBody {
    /// The upstream's headers as the client gets them, carried to the server that writes
    /// the response (see [`crate::server::HeaderBlock`]).
    headers: HeaderBlock,
    state: State,
    conn: Option<Conn>,
    /// `None` when the connection cannot carry another request.
    reuse: Option<Return>,
}

impl ResponseBody {
    pub(super) fn new(
        headers: HeaderBlock,
        framing: ResponseFraming,
        conn: Conn,
        keep_alive: bool,
        pool: &Arc<Pool>,
        authority: &Authority,
    ) -> Self {
        let state = match framing {
            ResponseFraming::Empty => State::Done,
            ResponseFraming::Length(remaining) => State::Length { remaining },
            ResponseFraming::Chunked => State::Chunked(Chunk::Size),
            ResponseFraming::Close => State::Close,
        };
        let mut body = Self {
            headers,
            state,
            conn: Some(conn),
            reuse: keep_alive.then(|| Return {
                pool: pool.clone(),
                authority: authority.clone(),
            }),
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection is reusable if nothing unexpected follows it.
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some(to)) = (self.conn.take(), self.reuse.take()) {
            if conn.buf.is_empty() {
                to.pool.put(&to.authority, conn);
            }
        }
    }

    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.state = State::Done;
        self.conn = None; // closed: whatever is left on it is unusable
        Poll::Ready(Some(Err(error)))
    }

    /// Up to `limit` buffered bytes as a data frame, reading more when none are buffered.
    /// `Ok(None)` means the upstream closed the connection.
    fn poll_data(&mut self, cx: &mut Context<'_>, limit: u64) -> Poll<io::Result<Option<Bytes>>> {
        let conn = self
            .conn
            .as_mut()
            .expect("a connection while the body is open");
        if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Ok(None));
        }
        let n = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(conn.buf.len());
        Poll::Ready(Ok(Some(conn.buf.split_to(n).freeze())))
    }

    /// One line (without its line ending) from the buffer, reading more as needed.
    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, H1Error>> {
        let conn = self
            .conn
            .as_mut()
            .expect("a connection while the body is open");
        loop {
            if let Some(lf) = conn.buf.iter().position(|&b| b == b'\n') {
                let mut line = conn.buf.split_to(lf + 1).freeze();
                line.truncate(lf);
                if line.last() == Some(&b'\r') {
                    line.truncate(lf - 1);
                }
                return Poll::Ready(Ok(line));
            }
            if conn.buf.len() > MAX_LINE {
                return Poll::Ready(Err(H1Error::Protocol("chunk line too long")));
            }
            if ready!(conn.poll_fill(cx)).map_err(H1Error::Read)? == 0 {
                return Poll::Ready(Err(H1Error::Protocol("connection closed mid-body")));
            }
        }
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        loop {
            let State::Chunked(chunk) = &mut self.state else {
                unreachable!("called in the chunked state")
            };
            match chunk {
                Chunk::Size => {
                    let line = match ready!(self.poll_line(cx)) {
                        Ok(line) => line,
                        Err(e) => return self.fail(e),
                    };
                    self.state = State::Chunked(match parse_chunk_size(&line) {
                        Some(0) => Chunk::Trailers(HeaderMap::new()),
                        Some(remaining) => Chunk::Data { remaining },
                        None => return self.fail(H1Error::Protocol("invalid chunk size")),
                    });
                }
                Chunk::Data { remaining } => {
                    let limit = *remaining;
                    match ready!(self.poll_data(cx, limit)) {
                        Ok(Some(data)) => {
                            let left = limit - data.len() as u64;
                            self.state = State::Chunked(if left == 0 {
                                Chunk::DataEnd
                            } else {
                                Chunk::Data { remaining: left }
                            });
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(None) => {
                            return self.fail(H1Error::Protocol("connection closed mid-body"))
                        }
                        Err(e) => return self.fail(H1Error::Read(e)),
                    }
                }
                Chunk::DataEnd => match ready!(self.poll_line(cx)) {
                    Ok(line) if line.is_empty() => self.state = State::Chunked(Chunk::Size),
                    Ok(_) => return self.fail(H1Error::Protocol("chunk longer than its size")),
                    Err(e) => return self.fail(e),
                },
                Chunk::Trailers(_) => {
                    let line = match ready!(self.poll_line(cx)) {
                        Ok(line) => line,
                        Err(e) => return self.fail(e),
                    };
                    let State::Chunked(Chunk::Trailers(trailers)) = &mut self.state else {
                        unreachable!()
                    };
                    if line.is_empty() {
                        let trailers = std::mem::take(trailers);
                        self.finish();
                        return Poll::Ready(
                            (!trailers.is_empty()).then(|| Ok(Frame::trailers(trailers))),
                        );
                    }
                    if trailers.len() >= MAX_RESPONSE_HEADERS {
                        return self.fail(H1Error::Protocol("too many trailers"));
                    }
                    match parse_trailer(line) {
                        Some((name, value)) => {
                            trailers.append(name, value);
                        }
                        None => return self.fail(H1Error::Protocol("invalid trailer")),
                    }
                }
            }
        }
    }
}

fn parse_trailer(line: Bytes) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    let mut value = line.slice(colon + 1..);
    let start = value.len() - value.trim_ascii_start().len();
    value.advance(start);
    let trimmed = value.trim_ascii_end().len();
    value.truncate(trimmed);
    Some((name, HeaderValue::from_maybe_shared(value).ok()?))
}

impl CarriesHeaders for ResponseBody {
    fn header_block_mut(&mut self) -> Option<&mut HeaderBlock> {
        Some(&mut self.headers)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        match this.state {
            State::Done => Poll::Ready(None),
            State::Length { remaining } => match ready!(this.poll_data(cx, remaining)) {
                Ok(Some(data)) => {
                    let left = remaining - data.len() as u64;
                    this.state = State::Length { remaining: left };
                    if left == 0 {
                        this.finish();
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Ok(None) => this.fail(H1Error::Protocol("connection closed mid-body")),
                Err(e) => this.fail(H1Error::Read(e)),
            },
            State::Close => match ready!(this.poll_data(cx, u64::MAX)) {
                Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) => {
                    this.state = State::Done;
                    this.conn = None;
                    Poll::Ready(None)
                }
                Err(e) => this.fail(H1Error::Read(e)),
            },
            State::Chunked(_) => this.poll_chunked(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length { remaining } => SizeHint::with_exact(remaining),
            State::Chunked(_) | State::Close => SizeHint::default(),
        }
    }
}
