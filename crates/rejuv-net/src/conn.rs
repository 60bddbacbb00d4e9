//! One served connection and the clock that decides when it has waited on its client long
//! enough.
//!
//! hyper serves the connection; three thin wrappers tell the [`Clock`] what happens on it:
//!
//! - the IO ([`TrackedIo`]): the first byte read while no request is in flight starts a
//!   request head; a write the client does not take (the socket buffer is full) is waiting on
//!   the client;
//! - the service ([`TrackedService`]): a call means the head is complete and a request is in
//!   flight, until its response body has ended or been dropped;
//! - the request body ([`RequestBody`]): a handler waiting for body bytes is waiting on the
//!   client.
//!
//! The connection's task waits for hyper, for shutdown, and for the clock's deadline, and
//! drops the connection (closing the socket) once a deadline has passed:
//!
//! | the connection | its deadline |
//! |---|---|
//! | no request in flight, a head begun (or a new connection) | head begun + header-read timeout |
//! | no request in flight, nothing begun (keep-alive) | last response end + idle timeout |
//! | request in flight, waiting for its body or for the client to read | wait began + idle timeout |
//! | request in flight, otherwise (the handler works, a proxy holds) | none |
//!
//! A head pipelined behind a request (received while that request was in flight) counts as
//! keep-alive silence: it is bound by the idle timeout, not the header-read timeout.

use crate::budget::Taken;
use crate::stats::ConnectionStats;
use crate::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use rejuv_core::config::ListenerLimits;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A connection's place under its listener's cap and in the fd budget, given back when the
/// connection ends.
pub(crate) struct Admitted {
    stats: Arc<ConnectionStats>,
    _fds: Taken,
}

impl Admitted {
    pub(crate) fn new(stats: Arc<ConnectionStats>, fds: Taken) -> Self {
        stats.opened();
        Self { stats, _fds: fds }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.stats.closed();
    }
}

/// What a connection's task needs besides the connection.
pub(crate) struct Setting {
    pub limits: ListenerLimits,
    pub stats: Arc<ConnectionStats>,
    pub stop: CancellationToken,
    pub name: String,
    pub peer: SocketAddr,
    /// A TLS connection's client certificate, closed when the files say it is revoked.
    pub tls: Option<(Arc<crate::tls::Tls>, crate::tls::Identity)>,
}

/// Which timeout a deadline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    HeaderRead,
    Idle,
}

/// What the connection is doing, as far as its deadline goes.
#[derive(Debug)]
struct State {
    in_flight: u32,
    /// When the head of the next request began: the connection's start for the first one,
    /// the first byte after a response for later ones.
    head_started: Option<Instant>,
    /// Whether a byte of that head has arrived (a new connection's head "begins" before).
    head_bytes: bool,
    /// When the last request in flight ended.
    idle_since: Instant,
    /// Since when the handler has been waiting for request body bytes.
    body_waiting: Option<Instant>,
    /// Since when a write has been waiting for the client to read.
    write_blocked: Option<Instant>,
}

/// The connection's state and a wake-up for its task when a deadline may have come nearer.
#[derive(Debug)]
pub(crate) struct Clock {
    state: Mutex<State>,
    changed: Notify,
}

impl Clock {
    fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(State {
                in_flight: 0,
                head_started: Some(now),
                head_bytes: false,
                idle_since: now,
                body_waiting: None,
                write_blocked: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields, each update complete: a panic elsewhere cannot
        // leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bytes_read(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 {
            if s.head_started.is_none() {
                s.head_started = Some(Instant::now());
            }
            s.head_bytes = true;
        }
    }

    fn request_started(&self) {
        let mut s = self.lock();
        s.in_flight += 1;
        s.head_started = None;
        s.head_bytes = false;
    }

    fn request_ended(&self) {
        {
            let mut s = self.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
                s.body_waiting = None;
            }
        }
        self.changed.notify_one();
    }

    fn body_waiting(&self, waiting: bool) {
        let started = {
            let mut s = self.lock();
            match (waiting, s.body_waiting) {
                (true, None) => {
                    s.body_waiting = Some(Instant::now());
                    true
                }
                (false, _) => {
                    s.body_waiting = None;
                    false
                }
                (true, Some(_)) => false,
            }
        };
        if started {
            self.changed.notify_one();
        }
    }

    fn write_blocked(&self, blocked: bool) {
        let started = {
            let mut s = self.lock();
            match (blocked, s.write_blocked) {
                (true, None) => {
                    s.write_blocked = Some(Instant::now());
                    true
                }
                (false, Some(_)) => {
                    s.write_blocked = None;
                    false
                }
                _ => false,
            }
        };
        if started {
            self.changed.notify_one();
        }
    }

    /// Whether nothing of a request has been received since the last one ended (or since
    /// the connection began): closing it loses nothing.
    fn quiet(&self) -> bool {
        let s = self.lock();
        s.in_flight == 0 && !s.head_bytes
    }

    /// The next deadline and what it is, or `None` while a request is being handled.
    fn deadline(&self, limits: &ListenerLimits) -> Option<(Instant, Timeout)> {
        let s = self.lock();
        let after = |t: Instant, d: Duration| t.checked_add(d).unwrap_or_else(far_future);
        if s.in_flight == 0 {
            return Some(match s.head_started {
                Some(t) => (after(t, limits.header_read_timeout), Timeout::HeaderRead),
                None => (after(s.idle_since, limits.idle_timeout), Timeout::Idle),
            });
        }
        [s.body_waiting, s.write_blocked]
            .into_iter()
            .flatten()
            .min()
            .map(|t| (after(t, limits.idle_timeout), Timeout::Idle))
    }
}

fn far_future() -> Instant {
    // About thirty years: what tokio itself uses for "never".
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// Serves one connection until it ends, a deadline passes, or shutdown closes it.
pub(crate) async fn serve<I, S, B>(stream: I, service: S, setting: Setting, admitted: Admitted)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let _admitted = admitted;
    let clock = Arc::new(Clock::new(Instant::now()));
    let io = TokioIo::new(TrackedIo {
        stream,
        clock: clock.clone(),
    });
    let service = TrackedService {
        inner: service,
        clock: clock.clone(),
    };
    // hyper's own header-read timer is off: it would also close keep-alive connections (see
    // the crate's documentation); the clock does both.
    let conn = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let Setting {
        limits,
        stats,
        stop,
        name,
        peer,
        tls,
    } = setting;
    let mut changes = tls.as_ref().map(|(t, _)| t.subscribe());
    let mut draining = false;
    loop {
        let deadline = clock.deadline(&limits);
        let wake_at = deadline.map_or_else(far_future, |(at, _)| at);
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(listener = %name, %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !draining => {
                if clock.quiet() {
                    return;
                }
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = clock.changed.notified() => {}
            changed = async { changes.as_mut().expect("only with TLS").changed().await }, if changes.is_some() => {
                match (changed, &tls) {
                    (Ok(()), Some((t, id))) if !t.still_trusted(id) => {
                        tracing::info!(listener = %name, %peer, cert = %id, "closing a connection whose client certificate was revoked");
                        return;
                    }
                    (Ok(()), _) => {}
                    (Err(_), _) => changes = None,
                }
            }
            () = tokio::time::sleep_until(wake_at), if deadline.is_some() => {
                // The clock may have moved since the deadline was read (a request began).
                let Some((at, timeout)) = clock.deadline(&limits) else { continue };
                if at > Instant::now() {
                    continue;
                }
                match timeout {
                    Timeout::HeaderRead => stats.count_header_timeout(),
                    Timeout::Idle => stats.count_idle_timeout(),
                }
                tracing::debug!(listener = %name, %peer, ?timeout, "closing a connection whose client was too slow or silent");
                return;
            }
        }
    }
}

/// The connection's socket, telling the clock about reads and blocked writes.
struct TrackedIo<I> {
    stream: I,
    clock: Arc<Clock>,
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_read();
        }
        polled
    }
}

impl<I> TrackedIo<I> {
    fn wrote<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.clock.write_blocked(polled.is_pending());
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request in flight: the clock counts it until this is dropped (the response body ended,
/// or the response or the request was dropped).
struct InFlight(Arc<Clock>);

impl InFlight {
    fn new(clock: &Arc<Clock>) -> Self {
        clock.request_started();
        Self(clock.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The caller's service, with each request counted in flight until its response is done.
struct TrackedService<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for TrackedService<S>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = Response<ResponseBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::new(&self.clock);
        let clock = self.clock.clone();
        let req = req.map(|inner| RequestBody { inner, clock });
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| ResponseBody {
                inner,
                in_flight: Some(in_flight),
            }))
        })
    }
}

/// A request's body as handlers see it: hyper's, telling the clock while the handler waits
/// for bytes the client has not sent.
pub struct RequestBody {
    inner: Incoming,
    clock: Arc<Clock>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.clock.body_waiting(polled.is_pending());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.clock.body_waiting(false);
    }
}

/// A response body that ends its request's flight when it ends or is dropped.
struct ResponseBody<B> {
    inner: B,
    in_flight: Option<InFlight>,
}

impl<B: Body + Unpin> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            max_connections: 10,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_header_read_deadline() {
        let start = Instant::now();
        let clock = Clock::new(start);
        assert_eq!(
            clock.deadline(&limits()),
            Some((start + Duration::from_secs(10), Timeout::HeaderRead))
        );
        assert!(clock.quiet());
        tokio::time::advance(Duration::from_secs(3)).await;
        clock.bytes_read();
        assert!(!clock.quiet());
        assert_eq!(
            clock.deadline(&limits()),
            Some((start + Duration::from_secs(10), Timeout::HeaderRead)),
            "bytes of a head do not extend its deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_silence_has_the_idle_deadline_and_a_new_head_its_own() {
        let clock = Arc::new(Clock::new(Instant::now()));
        let flight = InFlight::new(&clock);
        assert_eq!(clock.deadline(&limits()), None, "a request being handled");
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(flight);
        let ended = Instant::now();
        assert_eq!(
            clock.deadline(&limits()),
            Some((ended + Duration::from_secs(60), Timeout::Idle))
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        clock.bytes_read();
        assert_eq!(
            clock.deadline(&limits()),
            Some((
                Instant::now() + Duration::from_secs(10),
                Timeout::HeaderRead
            ))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_on_the_client_during_a_request_has_the_idle_deadline() {
        let clock = Arc::new(Clock::new(Instant::now()));
        let _flight = InFlight::new(&clock);
        clock.body_waiting(true);
        let waiting = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        clock.body_waiting(true);
        assert_eq!(
            clock.deadline(&limits()),
            Some((waiting + Duration::from_secs(60), Timeout::Idle)),
            "a wait goes on from its start"
        );
        clock.body_waiting(false);
        assert_eq!(clock.deadline(&limits()), None);
        clock.write_blocked(true);
        assert_eq!(
            clock.deadline(&limits()),
            Some((Instant::now() + Duration::from_secs(60), Timeout::Idle))
        );
        clock.write_blocked(false);
        assert_eq!(clock.deadline(&limits()), None);
    }
}
