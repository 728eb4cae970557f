//! Header lines a response body carries with it: the upstream's response headers on the
//! proxy's hot path, passed through as the bytes they go out as, not rebuilt as a header map.
//!
//! Why: building a `HeaderMap` from the upstream's head (a name and a value checked and
//! hashed per header, two allocations) and writing it out again took about 3,000
//! instructions a request, a tenth of keygate's user-space work (callgrind, BENCHMARKS.md).
//! Our HTTP/1.1 loop ([`super::h1`]) writes the block after the response's own headers;
//! responses that go out through hyper's server (HTTP/2, TLS, connections handed over) get
//! the lines folded into their header map first ([`fold_into_map`]).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Response;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::h1::header_line;

/// `name: value\r\n` lines, each name and value already checked as HTTP allows them (the
/// upstream's head parser checks both the way `HeaderName` and `HeaderValue` do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderBlock {
    lines: Vec<u8>,
    /// One of the lines is a `Date`: the server adds none of its own.
    dated: bool,
}

impl HeaderBlock {
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            lines: Vec::with_capacity(bytes),
            dated: false,
        }
    }

    /// Appends a line. `name` and `value` must be valid as a header name and value.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        self.dated |= name.eq_ignore_ascii_case(b"date");
        header_line(&mut self.lines, name, value);
    }

    /// The lines as they go out.
    pub fn as_bytes(&self) -> &[u8] {
        &self.lines
    }

    pub fn is_dated(&self) -> bool {
        self.dated
    }

    /// Each line's name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines().filter_map(|line| {
            let line = line.strip_suffix(b"\r\n")?;
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], &line[colon + 2..]))
        })
    }

    /// Each line, with its line ending.
    fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        memchr::memchr_iter(b'\n', &self.lines).map(move |end| {
            let line = &self.lines[start..=end];
            start = end + 1;
            line
        })
    }

    /// Drops every line named `name` (a header the gateway sets on the response itself).
    /// Most blocks have none, and then nothing is copied.
    pub fn remove(&mut self, name: &HeaderName) {
        let name = name.as_str().as_bytes();
        let named = |line: &[u8]| {
            line.len() > name.len()
                && line[name.len()] == b':'
                && line[..name.len()].eq_ignore_ascii_case(name)
        };
        if !self.lines().any(named) {
            return;
        }
        let mut kept = Vec::with_capacity(self.lines.len());
        for line in self.lines().filter(|line| !named(line)) {
            kept.extend_from_slice(line);
        }
        self.lines = kept;
        // Every line of that name is gone; lines of other names stay.
        self.dated &= !name.eq_ignore_ascii_case(b"date");
    }
}

/// A response body that may carry a [`HeaderBlock`].
pub trait CarriesHeaders {
    fn header_block_mut(&mut self) -> Option<&mut HeaderBlock>;

    /// The block, taken out: whoever writes it takes it.
    fn take_header_block(&mut self) -> Option<HeaderBlock> {
        self.header_block_mut().map(std::mem::take)
    }
}

impl<L: CarriesHeaders, R: CarriesHeaders> CarriesHeaders for Either<L, R> {
    fn header_block_mut(&mut self) -> Option<&mut HeaderBlock> {
        match self {
            Either::Left(l) => l.header_block_mut(),
            Either::Right(r) => r.header_block_mut(),
        }
    }
}

impl CarriesHeaders for Incoming {
    fn header_block_mut(&mut self) -> Option<&mut HeaderBlock> {
        None
    }
}

impl CarriesHeaders for Full<Bytes> {
    fn header_block_mut(&mut self) -> Option<&mut HeaderBlock> {
        None
    }
}

/// Moves the lines a response's body carries into its header map, for a server that
/// writes only the map (hyper's).
pub fn fold_into_map<B: CarriesHeaders>(response: &mut Response<B>) {
    let Some(block) = response.body_mut().take_header_block() else {
        return;
    };
    let headers: &mut HeaderMap = response.headers_mut();
    for (name, value) in block.iter() {
        // Checked when the block was made; a line that is not a header is left out.
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(lines: &[(&str, &str)]) -> HeaderBlock {
        let mut block = HeaderBlock::default();
        for (name, value) in lines {
            block.push(name.as_bytes(), value.as_bytes());
        }
        block
    }

    #[test]
    fn lines_go_out_as_pushed_and_read_back() {
        let b = block(&[
            ("Server", "up"),
            ("Date", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("x-e", ""),
        ]);
        assert_eq!(
            b.as_bytes(),
            b"Server: up\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nx-e: \r\n"
        );
        assert!(b.is_dated());
        let read: Vec<_> = b.iter().collect();
        assert_eq!(
            read,
            [
                (&b"Server"[..], &b"up"[..]),
                (b"Date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
                (b"x-e", b"")
            ]
        );
        assert!(!block(&[("x-date", "1")]).is_dated());
    }

    #[test]
    fn remove_drops_every_line_of_that_name_only() {
        let mut b = block(&[
            ("X-Request-Id", "upstream"),
            ("x-request-id-2", "kept"),
            ("Date", "d"),
            ("x-request-id", "again"),
        ]);
        b.remove(&HeaderName::from_static("x-request-id"));
        assert_eq!(b.as_bytes(), b"x-request-id-2: kept\r\nDate: d\r\n");
        assert!(b.is_dated());
        b.remove(&HeaderName::from_static("date"));
        assert!(!b.is_dated());
    }

    #[test]
    fn folding_moves_the_lines_into_the_map() {
        let mut response = Response::new(Either::<Full<Bytes>, Carrier>::Right(Carrier(block(&[
            ("Server", "up"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]))));
        response
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("r"));
        fold_into_map(&mut response);
        let h = response.headers();
        assert_eq!(h["server"], "up");
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        assert_eq!(h["x-request-id"], "r");
        assert_eq!(
            response.body_mut().take_header_block(),
            Some(HeaderBlock::default())
        );
    }

    struct Carrier(HeaderBlock);

    impl CarriesHeaders for Carrier {
        fn header_block_mut(&mut self) -> Option<&mut HeaderBlock> {
            Some(&mut self.0)
        }
    }
}
