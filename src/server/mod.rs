//! Listeners and connections, shared by the proxy, status and admin ports: accept, optional
//! TLS, HTTP/1.1 + HTTP/2 via hyper-util's auto builder, limits, and graceful drain. The
//! proxy's plain-TCP connections start in our own HTTP/1.1 loop ([`h1`]) instead.

pub mod balance;
mod body;
mod carried;
pub mod h1;
mod rewind;

pub use body::RequestBody;
pub use carried::{fold_into_map, CarriesHeaders, HeaderBlock};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use balance::{Seat, Share};

/// What a request handler knows about the connection it arrived on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Per-listener connection settings.
#[derive(Clone)]
pub struct ConnOptions {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub tls: Option<TlsAcceptor>,
}

impl ConnOptions {
    /// Conservative settings for the small internal listeners (status, admin).
    pub fn internal() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            tls: None,
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes)
            .max_headers(self.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        builder
    }
}

/// Binds `addr`; the error names the listener so a busy port is easy to find.
pub async fn bind(name: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen for {name} on {addr}: {e}"))
    })?;
    // Tests and scripts read this line to learn ports chosen with `:0`.
    tracing::info!(listener = name, addr = %listener.local_addr()?, "listening");
    Ok(listener)
}

/// How long connections accepted at the last moment get to send their first request
/// before the drain closes connections that have none in flight.
const LAST_ACCEPTS_SETTLE: Duration = Duration::from_millis(200);

/// Serves connections until `stop` fires, then stops accepting and lets open connections
/// finish their in-flight requests for up to `grace`.
///
/// Once `draining` fires (before `stop`), HTTP/1 responses carry `Connection: close`, so
/// busy clients leave their connections at a response boundary while the listener is
/// still open, instead of racing the close of an idle keep-alive connection later.
pub async fn serve<H, F, B>(
    name: &'static str,
    listener: TcpListener,
    options: ConnOptions,
    handler: H,
    draining: CancellationToken,
    stop: CancellationToken,
    grace: Duration,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(options.builder());
    let handler = closing_when(draining, handler);
    let serve_one = |stream: TcpStream, peer: SocketAddr, drain: &Drain, _: Option<Seat>| {
        let watcher = drain.graceful.watcher();
        let builder = builder.clone();
        let handler = handler.clone();
        let tls = options.tls.clone();
        let handshake_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            let info = ConnInfo {
                peer,
                tls: tls.is_some(),
            };
            let io = match tls {
                None => Either::Left(stream),
                Some(acceptor) => {
                    match tls_handshake(&acceptor, stream, handshake_timeout, name, peer).await {
                        Some(stream) => Either::Right(stream),
                        None => return,
                    }
                }
            };
            with_hyper(name, &builder, io, info, handler, watcher).await;
        });
    };
    accept_loop(name, listener, None, stop, grace, serve_one).await;
}

/// [`serve`] for the proxy port: plain-TCP connections start in our HTTP/1.1 loop
/// ([`h1`]), which hands hyper's server the connections it does not serve; TLS
/// connections go to hyper's server from the start.
pub async fn serve_proxy<H, F, B>(
    listener: TcpListener,
    share: Share,
    options: ConnOptions,
    handler: H,
    draining: CancellationToken,
    stop: CancellationToken,
    grace: Duration,
) where
    H: Fn(Request<RequestBody>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + CarriesHeaders + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display + Send,
{
    const NAME: &str = "proxy";
    let builder = Arc::new(options.builder());
    // Our loop adds `Connection: close` itself once draining; hyper's server needs the
    // wrapper, made when a connection goes there.
    let hyper_handler = closing_when(draining.clone(), from_hyper(handler.clone()));
    let limits = h1::HeadLimits {
        read_timeout: options.header_read_timeout,
        max_bytes: options.max_header_bytes,
        max_headers: options.max_headers,
    };
    let serve_one = |stream: TcpStream, peer: SocketAddr, drain: &Drain, seat: Option<Seat>| {
        let watcher = drain.graceful.watcher();
        let closing = drain.closing.clone();
        let draining = draining.clone();
        let builder = builder.clone();
        let handler = handler.clone();
        let hyper_handler = hyper_handler.clone();
        let tls = options.tls.clone();
        tokio::spawn(async move {
            // Counts this connection against this worker until it ends.
            let _seat = seat;
            let info = ConnInfo {
                peer,
                tls: tls.is_some(),
            };
            if let Some(acceptor) = tls {
                let timeout = limits.read_timeout;
                if let Some(stream) = tls_handshake(&acceptor, stream, timeout, NAME, peer).await {
                    with_hyper(NAME, &builder, stream, info, hyper_handler, watcher).await;
                }
                return;
            }
            let ending = h1::Ending {
                draining: &draining,
                closing: &closing,
            };
            match h1::serve_connection(stream, info, &handler, limits, ending).await {
                h1::Ended::Closed => {}
                h1::Ended::HandOff { stream, read } => {
                    let io = rewind::Rewind::new(read, stream);
                    with_hyper(NAME, &builder, io, info, hyper_handler, watcher).await;
                }
            }
        });
    };
    accept_loop(NAME, listener, Some(share), stop, grace, serve_one).await;
}

/// The proxy's responses, as hyper's server writes them: every header in the map.
type Folded<F, B> = futures_util::future::Map<
    F,
    fn(Result<Response<B>, Infallible>) -> Result<Response<B>, Infallible>,
>;

/// A proxy handler taking the requests hyper's server reads, and giving it responses whose
/// carried header lines ([`HeaderBlock`]) are in their header map: hyper writes only that.
fn from_hyper<H, F, B>(
    handler: H,
) -> impl Fn(Request<Incoming>, ConnInfo) -> Folded<F, B> + Clone + Send + Sync + 'static
where
    H: Fn(Request<RequestBody>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: CarriesHeaders,
{
    fn fold<B: CarriesHeaders>(
        response: Result<Response<B>, Infallible>,
    ) -> Result<Response<B>, Infallible> {
        let Ok(mut response) = response;
        fold_into_map(&mut response);
        Ok(response)
    }
    move |req, info| handler(req.map(RequestBody::from), info).map(fold::<B> as fn(_) -> _)
}

/// Serves one connection with hyper's server until it ends or the drain closes it.
async fn with_hyper<I, H, F, B>(
    name: &'static str,
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    info: ConnInfo,
    handler: H,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, ConnInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = service_fn(move |req| handler(req, info));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        let peer = info.peer;
        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
    }
}

/// What the drain tells connections: hyper's connections are watched by `graceful`; ours
/// hold a watcher too (so the drain waits for them) and close when idle once `closing`
/// fires.
struct Drain {
    graceful: GracefulShutdown,
    closing: CancellationToken,
}

/// Accepts connections until `stop` fires, then drains them (see [`serve`]). With a
/// `share`, connections are balanced with the other proxy workers (see [`balance`]).
async fn accept_loop(
    name: &'static str,
    listener: TcpListener,
    mut share: Option<Share>,
    stop: CancellationToken,
    grace: Duration,
    serve_one: impl Fn(TcpStream, SocketAddr, &Drain, Option<Seat>),
) {
    let drain = Drain {
        graceful: GracefulShutdown::new(),
        closing: CancellationToken::new(),
    };
    let serve_one = |stream: TcpStream, peer: SocketAddr, seat: Option<Seat>| {
        let _ = stream.set_nodelay(true);
        serve_one(stream, peer, &drain, seat);
    };
    let mut last_accept = None;
    loop {
        let handed_here = async {
            match share.as_mut() {
                Some(share) => share.handed().await,
                None => None,
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match &share {
                    None => serve_one(stream, peer, None),
                    Some(share) => {
                        if let Some((stream, seat)) = share.place(stream, peer) {
                            serve_one(stream, peer, Some(seat));
                        }
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some((stream, peer, seat)) = handed_here => serve_one(stream, peer, Some(seat)),
            () = stop.cancelled() => break,
        }
        last_accept = Some(tokio::time::Instant::now());
    }
    // Connections passed here by other workers, and those the kernel completed before the
    // close, are clients that already sent (or are sending) a request: serve them rather
    // than reset them with the listener. From here on this worker keeps what it accepts.
    for (stream, peer, seat) in share.as_mut().map(Share::close).unwrap_or_default() {
        serve_one(stream, peer, Some(seat));
        last_accept = Some(tokio::time::Instant::now());
    }
    while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
        serve_one(stream, peer, share.as_ref().map(Share::seat_here));
        last_accept = Some(tokio::time::Instant::now());
    }
    drop(listener);
    // The drain closes connections with no request in flight, so recent ones first get the
    // time to have their request read.
    if let Some(at) = last_accept {
        tokio::time::sleep_until(at + LAST_ACCEPTS_SETTLE.min(grace)).await;
    }
    let Drain { graceful, closing } = drain;
    tracing::info!(listener = name, connections = graceful.count(), "draining");
    closing.cancel();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            ?grace,
            "grace period over; closing remaining connections"
        );
    }
}

/// Wraps `handler` so that, once `draining` fires, HTTP/1 responses ask the client to close
/// the connection (a protocol switch excepted: that connection is no longer HTTP).
fn closing_when<R, H, F, B>(
    draining: CancellationToken,
    handler: H,
) -> impl Fn(Request<R>, ConnInfo) -> ClosingWhenDraining<F> + Clone + Send + Sync + 'static
where
    H: Fn(Request<R>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
{
    // Each request holds the token until its response is ready. A clone of the token
    // itself locks the mutex of the token every listener shares; a clone of this `Arc`
    // touches a count that only this listener's connections use.
    let draining = Arc::new(draining);
    move |req, info| ClosingWhenDraining {
        http1: req.version() <= Version::HTTP_11,
        draining: draining.clone(),
        response: handler(req, info),
    }
}

pin_project_lite::pin_project! {
    /// The handler's response, with `Connection: close` added if draining has begun by the
    /// time it is ready. A plain future rather than a boxed `async` block: it wraps every
    /// proxied request.
    struct ClosingWhenDraining<F> {
        #[pin]
        response: F,
        http1: bool,
        draining: Arc<CancellationToken>,
    }
}

impl<F, B> Future for ClosingWhenDraining<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.response.poll(cx));
        if *this.http1
            && this.draining.is_cancelled()
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}

async fn tls_handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
    name: &str,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
            None
        }
    }
}
