//! The proxy's worker threads: each runs a single-threaded event loop with its own handle on
//! the proxy port's listening socket, and serves its connections from accept to close,
//! upstream connections included. A worker that accepts a connection while another has
//! fewer open passes it over (`server::balance`).
//!
//! Why not tokio's multi-threaded scheduler for the proxy: there, one thread at a time
//! polls the event loop and hands ready tasks to the others, waking them through the
//! kernel, and tasks move between threads. Profiles of the proxy under load showed the
//! wake-ups and context switches as the largest cost after the TCP work itself. One loop
//! per thread is how nginx and HAProxy are built. The admin and status listeners, the
//! Redis connections and the background tasks stay on the main (multi-threaded) runtime.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::affinity;
use crate::config::CpuAffinity;
use crate::proxy::Proxy;
use crate::server::{self, ConnOptions};

/// One listening socket on `addr` (port 0 picks a free port), with a handle for each worker.
///
/// Shared rather than one `SO_REUSEPORT` socket per worker: the kernel spreads reuseport
/// connections by a hash of their addresses, so a few long-lived keep-alive connections
/// split unevenly (64 over two workers: often 28 against 36), and the clients of the busier
/// worker wait longer; the load harness's p99 showed it (BENCHMARKS.md). On a shared socket
/// every worker is woken by a new connection and the first to call `accept` takes it, and
/// the workers then even out their counts (`server::balance`).
pub fn bind_shared(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let listener = listening_socket(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen for proxy on {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let mut listeners = Vec::with_capacity(count);
    for _ in 1..count {
        listeners.push(listener.try_clone()?);
    }
    listeners.push(listener);
    // Tests and scripts read this line to learn ports chosen with `:0`.
    tracing::info!(listener = "proxy", addr = %bound, workers = count, "listening");
    Ok(listeners)
}

fn listening_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The CPU for each worker under `proxy.cpu_affinity` (`crate::affinity`), logged either way.
fn worker_cpus(mode: CpuAffinity, workers: usize) -> Option<Vec<usize>> {
    let usable = match affinity::usable_cpus() {
        Ok(usable) => usable,
        Err(e) => {
            tracing::info!(error = %e, "proxy workers not tied to CPUs");
            return None;
        }
    };
    let cpus = affinity::plan(mode, workers, &usable);
    match &cpus {
        Some(cpus) => tracing::info!(?cpus, "proxy workers tied to CPUs, one each"),
        None => tracing::info!(
            ?mode,
            workers,
            usable_cpus = usable.len(),
            "proxy workers not tied to CPUs (auto ties them only when there are as many workers as CPUs)"
        ),
    }
    cpus
}

/// How often a worker's heartbeat timer fires (see [`keep_next_wake_near`]).
const HEARTBEAT: Duration = Duration::from_millis(250);

/// Keeps a timer due within [`HEARTBEAT`] on the worker's event loop, for as long as the
/// loop runs.
///
/// Every request arms timers (hyper's header-read timeout, the upstream timeout). Tokio's
/// time driver wakes its own event loop, with a write to an eventfd, whenever a new timer is
/// due before the loop's next planned wake-up, and with no timer pending there is no planned
/// wake-up at all: `strace` of a loaded worker counted 0.3–0.9 such writes per request. With
/// this timer always pending, request timers, all due later, never move the wake-up forward,
/// at the price of four wake-ups a second.
async fn keep_next_wake_near() {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// What each worker needs to serve and to stop.
pub struct WorkerSettings {
    pub options: ConnOptions,
    pub draining: CancellationToken,
    pub stop: CancellationToken,
    pub grace: Duration,
    pub cpu_affinity: CpuAffinity,
}

/// The running workers. Stopping takes two steps: [`ProxyWorkers::served`] waits until
/// every worker has drained its connections; [`ProxyWorkers::finish`] then ends their event
/// loops, which also ends tunnels still open on them, so it comes after the tunnels' grace.
pub struct ProxyWorkers {
    served: Vec<oneshot::Receiver<()>>,
    release: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl ProxyWorkers {
    pub fn start(
        listeners: Vec<std::net::TcpListener>,
        proxy: Arc<Proxy>,
        settings: WorkerSettings,
    ) -> io::Result<Self> {
        let release = CancellationToken::new();
        let mut served = Vec::with_capacity(listeners.len());
        let mut threads = Vec::with_capacity(listeners.len());
        let shares = server::balance::shares(listeners.len());
        let cpus = worker_cpus(settings.cpu_affinity, listeners.len()).unwrap_or_default();
        for (i, (listener, share)) in listeners.into_iter().zip(shares).enumerate() {
            let cpu = cpus.get(i).copied();
            // Built here so a failure is reported at startup, not in a thread.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (done, served_rx) = oneshot::channel();
            served.push(served_rx);
            let proxy = proxy.clone();
            let options = settings.options.clone();
            let (draining, stop, grace) = (
                settings.draining.clone(),
                settings.stop.clone(),
                settings.grace,
            );
            let release = release.clone();
            let thread = std::thread::Builder::new()
                .name(format!("keygate-proxy-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = affinity::pin_current_thread(cpu) {
                            tracing::warn!(worker = i, cpu, error = %e, "proxy worker cannot be tied to its CPU; the kernel places it");
                        }
                    }
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(worker = i, error = %e, "proxy worker cannot use its listener");
                                let _ = done.send(());
                                return;
                            }
                        };
                        tokio::spawn(keep_next_wake_near());
                        let handler = move |req, conn| proxy.clone().handle(req, conn);
                        server::serve_proxy(
                            listener, share, options, handler, draining, stop, grace,
                        )
                        .await;
                        let _ = done.send(());
                        // Tunnels opened here run on this loop: keep it until released.
                        release.cancelled().await;
                    });
                })?;
            threads.push(thread);
        }
        Ok(Self {
            served,
            release,
            threads,
        })
    }

    /// Resolves once every worker has stopped accepting and drained its connections.
    pub async fn served(&mut self) {
        for done in self.served.drain(..) {
            let _ = done.await;
        }
    }

    /// Ends the workers' event loops and joins their threads.
    pub async fn finish(self) {
        self.release.cancel();
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
