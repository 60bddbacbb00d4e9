//! rejuv's HTTP/1.1 listeners, bounded: every part (agent API, controller API, the builtin
//! proxy's admin API and front ends) serves through [`Server`], so none of them can be held
//! open by idle or slowloris clients or run its process out of file descriptors.
//!
//! - A cap on connections per listener ([`ListenerLimits::max_connections`]) and a budget of
//!   file descriptors shared by every listener of the process ([`FdBudget`]). A connection
//!   over either is accepted and closed at once, and counted: accepting it (rather than
//!   leaving it in the kernel's backlog) tells the client at once and keeps the backlog for
//!   the connections that will be served. The listener itself never stops; the connections it
//!   has are served as before.
//! - A header-read timeout: from a connection's start, or from the first byte of a later
//!   request, to the end of the request head (slowloris). Trickling bytes does not extend it.
//! - An idle timeout: how long a connection waits on a silent client — between requests on a
//!   keep-alive connection, while the handler waits for the request body, or while the client
//!   does not take the response. A request being handled (a proxy hold, a long response the
//!   client reads) is not timed.
//! - Graceful shutdown: stop accepting, close connections with nothing in progress, let
//!   requests in flight finish (the caller bounds the wait).
//! - Counts per listener ([`ConnectionStats`]), exported as Prometheus metrics by
//!   [`ListenerMetrics`].
//!
//! [`probe`] holds the misbehaving clients the parts' tests (and the benchmark) use.
//!
//! hyper 1.x has a header-read timeout of its own, but its clock starts as soon as the
//! connection is ready for a request head, so on a keep-alive connection it is an idle
//! timeout as well: the two could not differ. The clocks here ([`conn`]) watch the connection's
//! IO, its requests and their bodies instead, and hyper's own timer is left off.

mod budget;
mod conn;
pub mod probe;
mod stats;
pub mod tls;

pub use budget::FdBudget;
pub use conn::RequestBody;
pub use rejuv_core::config::ListenerLimits;
pub use stats::{ConnectionStats, ListenerMetrics};

use http::{Request, Response};
use hyper::body::Body;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Back-off after an accept error that is not about one connection (out of file descriptors,
/// mostly): long enough not to spin, short enough to serve again soon.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one log line about refused connections per listener this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// One listener with its bounds, ready to serve.
pub struct Server {
    listener: TcpListener,
    name: String,
    limits: ListenerLimits,
    stats: Arc<ConnectionStats>,
    budget: Arc<FdBudget>,
    fds_per_connection: usize,
    tls: Option<ServerTls>,
}

/// A listener's TLS: the acceptor and the checks of open connections.
#[derive(Clone)]
struct ServerTls {
    tls: Arc<tls::Tls>,
    acceptor: tokio_rustls::TlsAcceptor,
    client: Option<tls::Role>,
}

impl Server {
    /// `name` says which listener it is in logs (the `listener` label of the metrics is the
    /// caller's). The budget is the process's ([`FdBudget::process`]); one connection counts
    /// one file descriptor.
    pub fn new(listener: TcpListener, name: impl Into<String>, limits: ListenerLimits) -> Self {
        Self {
            listener,
            name: name.into(),
            limits,
            stats: Arc::new(ConnectionStats::default()),
            budget: FdBudget::process(),
            fds_per_connection: 1,
            tls: None,
        }
    }

    /// Serves HTTPS with `tls`'s certificate; with `client`, only to clients with a
    /// certificate of the fleet of that role (the handshake fails for others), and a
    /// connection whose certificate is revoked later is closed.
    pub fn with_tls(mut self, tls: Arc<tls::Tls>, client: Option<tls::Role>) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(client));
        self.tls = Some(ServerTls {
            tls,
            acceptor,
            client,
        });
        self
    }

    /// Counts into `stats` (shared with whoever reports them) instead of a new one.
    pub fn with_stats(mut self, stats: Arc<ConnectionStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Takes file descriptors from `budget` instead of the process's.
    pub fn with_budget(mut self, budget: Arc<FdBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// File descriptors one connection may hold while served: 2 for a proxy, which opens one
    /// to a backend for each client connection it serves.
    pub fn fds_per_connection(mut self, n: usize) -> Self {
        self.fds_per_connection = n.max(1);
        self
    }

    /// This listener's counts.
    pub fn stats(&self) -> Arc<ConnectionStats> {
        self.stats.clone()
    }

    /// Serves an axum router until `shutdown` completes, then shuts down gracefully (see
    /// [`Server::serve`]).
    /// Handlers can read the client's address as `axum::extract::ConnectInfo<SocketAddr>`.
    pub async fn serve_router(self, router: axum::Router, shutdown: impl Future<Output = ()>) {
        self.serve(
            move |peer: SocketAddr| {
                let with_peer = router
                    .clone()
                    .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
                hyper_util::service::TowerToHyperService::new(with_peer)
            },
            shutdown,
        )
        .await;
    }

    /// Serves HTTP/1.1 until `shutdown` completes; `make_service` makes each connection's
    /// service from the client's address.
    ///
    /// # Guarantees
    ///
    /// After `shutdown`: no connection is accepted any more; connections with nothing of a
    /// request received are closed; requests in flight are answered and their connections
    /// then closed. It returns when every connection has ended; dropping the future closes
    /// the ones left (the caller's deadline).
    pub async fn serve<M, S, B>(self, mut make_service: M, shutdown: impl Future<Output = ()>)
    where
        M: FnMut(SocketAddr) -> S,
        S: hyper::service::Service<Request<RequestBody>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let stop = CancellationToken::new();
        let mut conns = JoinSet::new();
        let mut refusals = RefusalLog::default();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(ended) = conns.join_next(), if !conns.is_empty() => {
                    report_panic(&self.name, ended);
                    continue;
                }
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if per_connection(&e) => continue,
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, "accept failed; retrying shortly");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            };
            let Some(admitted) = self.admit() else {
                refusals.refused(&self.name, &self.limits, &self.stats, &self.budget);
                refuse(stream);
                continue;
            };
            let service = make_service(peer);
            let setting = conn::Setting {
                limits: self.limits,
                stats: self.stats.clone(),
                stop: stop.clone(),
                name: self.name.clone(),
                peer,
                tls: None,
            };
            let _ = stream.set_nodelay(true);
            match self.tls.clone() {
                None => {
                    conns.spawn(conn::serve(stream, service, setting, admitted));
                }
                Some(t) => {
                    conns.spawn(serve_tls(t, stream, service, setting, admitted));
                }
            }
        }
        drop(self.listener);
        tracing::debug!(listener = %self.name, open = conns.len(), "stopped accepting; finishing the connections in progress");
        stop.cancel();
        while let Some(ended) = conns.join_next().await {
            report_panic(&self.name, ended);
        }
    }

    /// A place for one more connection: under the cap and within the fd budget.
    fn admit(&self) -> Option<conn::Admitted> {
        // Only this task opens connections, so the count read here cannot grow before the
        // new one is counted.
        if self.stats.open() >= self.limits.max_connections as u64 {
            return None;
        }
        let fds = self.budget.take(self.fds_per_connection)?;
        Some(conn::Admitted::new(self.stats.clone(), fds))
    }
}

/// The TLS handshake (bounded by the header-read timeout and shutdown), then the connection.
async fn serve_tls<S, B>(
    t: ServerTls,
    stream: TcpStream,
    service: S,
    mut setting: conn::Setting,
    admitted: conn::Admitted,
) where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let handshake = tokio::time::timeout(
        setting.limits.header_read_timeout,
        t.acceptor.accept(stream),
    );
    let stream = tokio::select! {
        () = setting.stop.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(listener = %setting.name, peer = %setting.peer, error = %e, "TLS handshake failed");
                setting.stats.count_tls_refused();
                return;
            }
            Err(_) => {
                setting.stats.count_header_timeout();
                return;
            }
        }
    };
    if t.client.is_some() {
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| tls::identity(c).ok());
        let Some(peer) = peer else { return };
        setting.tls = Some((t.tls.clone(), peer));
    }
    conn::serve(stream, service, setting, admitted).await;
}

/// Closes a refused connection at once. Nothing was read from it, so the close is a plain
/// FIN unless the client already sent something (then the kernel resets it).
fn refuse(stream: TcpStream) {
    drop(stream);
}

/// Accept errors that concern one connection only (it went away while queued).
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

fn report_panic(name: &str, ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        if e.is_panic() {
            tracing::error!(listener = %name, error = %e, "a connection task panicked");
        }
    }
}

/// Refusals since the last log line, so that a flood of them is one line per
/// [`REFUSAL_LOG_EVERY`] and not one per connection.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since_last: u64,
}

impl RefusalLog {
    fn refused(
        &mut self,
        name: &str,
        limits: &ListenerLimits,
        stats: &ConnectionStats,
        budget: &FdBudget,
    ) {
        stats.count_refused();
        self.since_last += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            listener = %name,
            refused = self.since_last,
            open = stats.open(),
            max_connections = limits.max_connections,
            fd_budget_left = budget.left(),
            "connections refused: the listener is at its cap or the process near its file descriptor limit"
        );
        self.last = Some(now);
        self.since_last = 0;
    }
}

/// The ports this process has handed out, per address: `free_port` and `free_range` never
/// give one twice (the kernel may give a port just released to the next bind, and a port
/// picked but not yet bound is free to every later check).
static GIVEN_PORTS: std::sync::Mutex<std::collections::BTreeSet<(std::net::IpAddr, u16)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn given_ports(
) -> std::sync::MutexGuard<'static, std::collections::BTreeSet<(std::net::IpAddr, u16)>> {
    GIVEN_PORTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A TCP port on `ip` that no socket holds now and that this process has not handed out
/// before: found by binding port 0, and remembered, so that two calls never return the same
/// port (the kernel may give a port just released to the next bind).
///
/// # Errors
/// When `ip` cannot be bound (not an address of this machine, or no port left).
pub fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    let mut given = given_ports();
    loop {
        let port = std::net::TcpListener::bind((ip, 0))?.local_addr()?.port();
        if given.insert((ip, port)) {
            return Ok(port);
        }
    }
}

/// `n` consecutive TCP ports on `ip`, as `[first, last]`, that no socket holds now and that
/// this process has handed out none of before (by `free_port` or an earlier range), so an
/// agent's port picked just before is never inside its instances' range. Remembered as
/// handed out.
///
/// # Errors
/// When no such range is found in 500 random tries between 20,000 and 60,000 (at once when
/// `n` is over 40,000).
pub fn free_range(ip: std::net::IpAddr, n: u16) -> std::io::Result<[u16; 2]> {
    let n = n.max(1);
    let no_range = || {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no free range of {n} ports on {ip}"),
        )
    };
    // The first port is drawn from 20,000 up to where the range still ends at 60,000.
    let Some(span) = 40_000u16.checked_sub(n - 1) else {
        return Err(no_range());
    };
    let mut given = given_ports();
    for _ in 0..500 {
        let base = 20_000 + (rand::random::<u16>() % span);
        let ports = base..base + n;
        if ports.clone().any(|p| given.contains(&(ip, p))) {
            continue;
        }
        if ports
            .clone()
            .all(|p| std::net::TcpListener::bind((ip, p)).is_ok())
        {
            given.extend(ports.map(|p| (ip, p)));
            return Ok([base, base + n - 1]);
        }
    }
    Err(no_range())
}

#[cfg(test)]
mod free_port_tests {
    #[test]
    fn a_port_is_handed_out_once() {
        let lo = std::net::IpAddr::from([127, 0, 0, 1]);
        let ports: std::collections::BTreeSet<u16> =
            (0..200).map(|_| super::free_port(lo).unwrap()).collect();
        assert_eq!(ports.len(), 200);
    }

    #[test]
    fn a_range_never_holds_a_port_handed_out_before() {
        let lo = std::net::IpAddr::from([127, 0, 0, 1]);
        let mut taken = std::collections::BTreeSet::new();
        for _ in 0..50 {
            taken.insert(super::free_port(lo).unwrap());
            let [a, b] = super::free_range(lo, 8).unwrap();
            assert_eq!(b - a, 7);
            for p in a..=b {
                assert!(taken.insert(p), "port {p} handed out twice");
            }
        }
    }
}
