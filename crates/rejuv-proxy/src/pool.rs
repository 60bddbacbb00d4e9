//! Upstream HTTP/1.1 connections, pooled per backend.
//!
//! A connection goes back to its backend's pool only once the response body it carried has
//! been read to the end (the data path does that), so a pooled connection is always idle:
//! it is never counted in flight, and it is dropped as soon as its backend stops serving
//! (see `state`), after [`IDLE_TIMEOUT`], or when the backend closes it.
//!
//! Sending reports whether the request left this process ([`UpstreamError::was_sent`]); only a
//! request that never left may be sent again whatever its method.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Shorter than the keep-alive timeout of common servers, so we drop an idle connection
/// before the backend does and seldom send on a connection it is closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Beyond this many idle connections to one backend, a finished connection is closed.
const MAX_IDLE: usize = 64;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A pooled connection is idle, so it is ready at once or broken; this only guards against
/// a connection task that stopped making progress.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

pub type UpstreamSender = SendRequest<Full<Bytes>>;

struct Idle {
    sender: UpstreamSender,
    since: Instant,
}

/// Idle keep-alive connections to one backend, newest last.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn put(&self, sender: UpstreamSender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// The newest idle connection that is neither closed nor too old.
    fn take(&self) -> Option<UpstreamSender> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT && !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        let dropped = std::mem::take(&mut *self.lock());
        drop(dropped);
    }

    /// Closes idle connections older than [`IDLE_TIMEOUT`] or already closed.
    pub fn sweep(&self) {
        self.lock()
            .retain(|e| e.since.elapsed() < IDLE_TIMEOUT && !e.sender.is_closed());
    }

    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

/// Why a request to a backend got no response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr}: no answer within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: SocketAddr },
    #[error("HTTP/1.1 handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {addr} not sent")]
    NotSent {
        addr: SocketAddr,
        /// The connection came from the pool: the backend probably closed it while idle.
        reused: bool,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {addr} failed after it was sent")]
    Sent {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Whether any of the request may have reached the backend (so it may have applied it).
    pub fn was_sent(&self) -> bool {
        matches!(self, Self::Sent { .. })
    }

    /// A pooled connection turned out dead before the request left: a fresh connection to
    /// the same backend is worth one try.
    pub fn stale_pooled(&self) -> bool {
        matches!(self, Self::NotSent { reused: true, .. })
    }
}

/// Sends `req` to `addr` on a pooled connection (unless `fresh`) or a new one, and returns
/// the response head with the connection, to be given back to the pool once the body ends.
///
/// # Errors
///
/// [`UpstreamError`]; see [`UpstreamError::was_sent`].
pub async fn send(
    pool: &Pool,
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
    fresh: bool,
) -> Result<(Response<Incoming>, UpstreamSender), UpstreamError> {
    let pooled = if fresh { None } else { checkout(pool).await };
    let reused = pooled.is_some();
    let mut sender = match pooled {
        Some(sender) => sender,
        None => connect(addr).await?,
    };
    match sender.try_send_request(req).await {
        Ok(response) => Ok((response, sender)),
        Err(mut e) => {
            let not_sent = e.take_message().is_some();
            let source = e.into_error();
            if not_sent {
                Err(UpstreamError::NotSent {
                    addr,
                    reused,
                    source,
                })
            } else {
                Err(UpstreamError::Sent { addr, source })
            }
        }
    }
}

async fn checkout(pool: &Pool) -> Option<UpstreamSender> {
    while let Some(mut sender) = pool.take() {
        if let Ok(Ok(())) = tokio::time::timeout(READY_TIMEOUT, sender.ready()).await {
            return Some(sender);
        }
    }
    None
}

async fn connect(addr: SocketAddr) -> Result<UpstreamSender, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout { addr })?
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    // Requests and response heads are small; waiting for Nagle only adds latency.
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| UpstreamError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_refused_is_not_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = Pool::default();
        let err = send(&pool, addr, Request::new(Full::new(Bytes::new())), false)
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
        assert!(!err.was_sent());
        assert_eq!(pool.idle_count(), 0);
    }
}
