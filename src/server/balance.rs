//! Spreads the proxy's client connections evenly over its workers.
//!
//! The workers share one listening socket, and whichever is awake when connections arrive
//! accepts them, a whole burst at a time: in the load harness, wrk's 64 connections split
//! so that one worker of two spent 74% of a core and the other 26%, and the busy worker's
//! clients waited. So the worker that accepts a connection keeps it only if no other
//! worker has fewer open connections; otherwise it passes the socket to the one with the
//! fewest, which then serves it from its own event loop, as HAProxy does with its threads.
//! Keep-alive connections stay where they were placed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use metrics::Gauge;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::telemetry::PROXY_CONNECTIONS;

/// The open-connection counts of all workers, and the way to each worker's inbox.
struct Balance {
    workers: Box<[Worker]>,
}

struct Worker {
    open: AtomicUsize,
    inbox: mpsc::UnboundedSender<Handed>,
    /// `keygate_proxy_connections{worker}`, moved with `open`.
    gauge: Gauge,
}

/// A connection accepted by one worker for another.
struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    seat: Seat,
}

/// One worker's part in the balance: its index and its inbox.
pub struct Share {
    index: usize,
    balance: Arc<Balance>,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// A connection counted against a worker until it is dropped (when the connection ends).
pub struct Seat {
    balance: Arc<Balance>,
    worker: usize,
}

/// The shares of `count` workers, in worker order.
pub fn shares(count: usize) -> Vec<Share> {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..count).map(|_| mpsc::unbounded_channel()).unzip();
    let workers = senders
        .into_iter()
        .enumerate()
        .map(|(i, inbox)| Worker {
            open: AtomicUsize::new(0),
            inbox,
            gauge: metrics::gauge!(PROXY_CONNECTIONS, "worker" => i.to_string()),
        })
        .collect();
    let balance = Arc::new(Balance { workers });
    receivers
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| Share {
            index,
            balance: balance.clone(),
            inbox,
        })
        .collect()
}

impl Balance {
    fn seat(self: &Arc<Self>, worker: usize) -> Seat {
        let w = &self.workers[worker];
        w.open.fetch_add(1, Ordering::Relaxed);
        w.gauge.increment(1.0);
        Seat {
            balance: self.clone(),
            worker,
        }
    }

    /// The worker with the fewest open connections, `here` unless another has fewer.
    fn least_busy(&self, here: usize) -> usize {
        let open = |i: usize| self.workers[i].open.load(Ordering::Relaxed);
        let mut best = (here, open(here));
        for i in (0..self.workers.len()).filter(|&i| i != here) {
            let n = open(i);
            if n < best.1 {
                best = (i, n);
            }
        }
        best.0
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let w = &self.balance.workers[self.worker];
        w.open.fetch_sub(1, Ordering::Relaxed);
        w.gauge.decrement(1.0);
    }
}

impl Share {
    /// A connection this worker accepted: returned with its seat when this worker is to
    /// serve it, `None` when it went to a less busy worker.
    pub fn place(&self, stream: TcpStream, peer: SocketAddr) -> Option<(TcpStream, Seat)> {
        let target = self.balance.least_busy(self.index);
        if target == self.index {
            return Some((stream, self.seat_here()));
        }
        let seat = self.balance.seat(target);
        // Leaves this worker's event loop; the other registers it with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot pass a connection to another worker");
                return None;
            }
        };
        let handed = Handed { stream, peer, seat };
        let Err(mpsc::error::SendError(handed)) = self.balance.workers[target].inbox.send(handed)
        else {
            return None;
        };
        // That worker has stopped taking connections: serve it here after all.
        drop(handed.seat);
        match TcpStream::from_std(handed.stream) {
            Ok(stream) => Some((stream, self.seat_here())),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot take back a connection");
                None
            }
        }
    }

    /// A seat on this worker, for connections it serves without placing them.
    pub fn seat_here(&self) -> Seat {
        self.balance.seat(self.index)
    }

    /// The next connection another worker passed here; never resolves while the others
    /// can still pass any.
    pub async fn handed(&mut self) -> Option<(TcpStream, SocketAddr, Seat)> {
        loop {
            let handed = self.inbox.recv().await?;
            if let Some(taken) = take(handed) {
                return Some(taken);
            }
        }
    }

    /// Stops taking connections from other workers (they serve them themselves from now
    /// on) and returns those already passed here.
    pub fn close(&mut self) -> Vec<(TcpStream, SocketAddr, Seat)> {
        self.inbox.close();
        std::iter::from_fn(|| self.inbox.try_recv().ok())
            .filter_map(take)
            .collect()
    }
}

/// Registers a passed connection with this worker's event loop.
fn take(handed: Handed) -> Option<(TcpStream, SocketAddr, Seat)> {
    let Handed { stream, peer, seat } = handed;
    match TcpStream::from_std(stream) {
        Ok(stream) => Some((stream, peer, seat)),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot take a connection from another worker");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(share: &Share) -> Vec<usize> {
        let workers = share.balance.workers.iter();
        workers.map(|w| w.open.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn a_worker_keeps_connections_until_another_has_fewer() {
        let shares = shares(3);
        let balance = &shares[0].balance;
        assert_eq!(balance.least_busy(1), 1, "all equal: stays where accepted");
        let a = balance.seat(1);
        assert_eq!(balance.least_busy(1), 0, "the first with fewer");
        let _b = balance.seat(0);
        assert_eq!(balance.least_busy(1), 2);
        let _c = balance.seat(2);
        assert_eq!(balance.least_busy(0), 0, "all equal again");
        drop(a);
        assert_eq!(
            open(&shares[0]),
            vec![1, 0, 1],
            "a dropped seat frees its worker"
        );
        assert_eq!(balance.least_busy(2), 1);
    }

    #[tokio::test]
    async fn connections_accepted_by_one_worker_spread_over_all() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut shares = shares(2);
        let mut clients = Vec::new();
        let mut kept = Vec::new();
        for _ in 0..6 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            let (stream, peer) = listener.accept().await.unwrap();
            if let Some(here) = shares[0].place(stream, peer) {
                kept.push(here);
            }
        }
        assert_eq!(kept.len(), 3, "every other connection is passed on");
        assert_eq!(open(&shares[0]), vec![3, 3]);
        let mut passed = Vec::new();
        for _ in 0..3 {
            passed.push(shares[1].handed().await.expect("passed connection"));
        }
        // A passed socket still works: the client's bytes arrive at the other worker.
        use std::io::Write;
        use tokio::io::AsyncReadExt;
        let client_addr = clients[1].local_addr().unwrap();
        let (stream, peer, _seat) = passed.iter_mut().find(|p| p.1 == client_addr).unwrap();
        assert_eq!(*peer, client_addr);
        clients[1].write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        drop(passed);
        assert_eq!(
            open(&shares[0]),
            vec![3, 0],
            "seats end with their connections"
        );
        // Once worker 1 stops taking connections, worker 0 serves them itself.
        assert!(shares[1].close().is_empty());
        drop(kept.pop());
        clients.push(std::net::TcpStream::connect(addr).unwrap());
        let (stream, peer) = listener.accept().await.unwrap();
        let kept_after_all = shares[0].place(stream, peer);
        assert!(kept_after_all.is_some(), "kept: the other is closed");
        assert_eq!(open(&shares[0]), vec![3, 0]);
    }

    #[tokio::test]
    async fn connections_passed_before_a_worker_stops_are_still_served() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut shares = shares(2);
        let _seat = shares[0].seat_here();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        assert!(
            shares[0].place(stream, peer).is_none(),
            "passed to worker 1"
        );
        let left = shares[1].close();
        assert_eq!(left.len(), 1, "the stopping worker gets it from its inbox");
        assert_eq!(left[0].1, peer);
    }
}
