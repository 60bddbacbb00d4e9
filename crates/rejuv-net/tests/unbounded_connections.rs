//! Issue 16, item 4 ("Unbounded connections and bodies"): a listener holds no connection
//! longer than its timeouts and no more connections than its cap, and keeps serving the
//! others meanwhile. Real servers on 127.0.0.1:0, raw TCP clients, short timeouts; every wait
//! has a deadline and every server is stopped when its test ends, passing or not.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use rejuv_net::{ConnectionStats, FdBudget, ListenerLimits, RequestBody, Server};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest any wait in these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);
/// Slack allowed past a timeout for the server to notice it and close (a loaded CI machine).
const SLACK: Duration = Duration::from_millis(1500);
/// Size of the response a client never reads: more than the socket buffers on both sides.
const BIG: usize = 64 << 20;

/// A test server: `/` answers "ok", `/echo` reads the whole body, `/big` sends [`BIG`]
/// bytes, `/wait` answers when `release` is notified.
struct TestServer {
    addr: SocketAddr,
    stats: Arc<ConnectionStats>,
    release: Arc<Notify>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    async fn start(limits: ListenerLimits) -> Self {
        Self::start_with(limits, None).await
    }

    async fn start_with(limits: ListenerLimits, budget: Option<Arc<FdBudget>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Server::new(listener, "test", limits);
        if let Some(budget) = budget {
            server = server.with_budget(budget);
        }
        let stats = server.stats();
        let release = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let rel = release.clone();
        let task = tokio::spawn(server.serve(
            move |_| {
                let release = rel.clone();
                service_fn(move |req: Request<RequestBody>| {
                    let release = release.clone();
                    async move { Ok::<_, Infallible>(answer(req, &release).await) }
                })
            },
            shutdown.clone().cancelled_owned(),
        ));
        Self {
            addr,
            stats,
            release,
            shutdown,
            task: Some(task),
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// Stops the server gracefully and waits for it to return.
    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        within("the server to return after shutdown", task)
            .await
            .unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn answer(req: Request<RequestBody>, release: &Notify) -> Response<Full<Bytes>> {
    let body = match req.uri().path() {
        "/echo" => match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::new(),
        },
        "/big" => Bytes::from(vec![b'x'; BIG]),
        "/wait" => {
            release.notified().await;
            Bytes::from_static(b"released")
        }
        _ => Bytes::from_static(b"ok"),
    };
    Response::new(Full::new(body))
}

fn limits(header_read: u64, idle: u64, cap: usize) -> ListenerLimits {
    ListenerLimits {
        max_connections: cap,
        header_read_timeout: Duration::from_secs(header_read),
        idle_timeout: Duration::from_secs(idle),
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Polls `check` every 10 ms until it holds, failing after [`WAIT`].
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Reads (and drops) whatever arrives until the server closes the connection; the time that
/// took.
async fn closed_by_server(stream: &mut TcpStream) -> Duration {
    let begun = Instant::now();
    within("the server to close the connection", async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    begun.elapsed()
}

/// Sends one GET on a keep-alive connection and reads its response (the test server's
/// responses are small and carry a content-length).
async fn get(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    within("a response", read_response(stream)).await
}

async fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn slowloris_is_disconnected_at_the_header_read_timeout() {
    let server = TestServer::start(limits(1, 30, 100)).await;
    let mut stream = server.connect().await;
    let begun = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    // One header line every 100 ms: each byte is progress, none completes the head.
    let trickled = within("the server to cut the trickle", async {
        let mut buf = [0u8; 64];
        for i in 0u32.. {
            match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return i,
                Ok(Ok(n)) => panic!("an answer to an unfinished head: {:?}", &buf[..n]),
                Err(_) => {
                    let line = format!("x-slow-{i}: 1\r\n");
                    if stream.write_all(line.as_bytes()).await.is_err() {
                        return i;
                    }
                }
            }
        }
        unreachable!()
    })
    .await;
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(1) + SLACK,
        "closed after {took:?} ({trickled} lines), the header-read timeout is 1 s"
    );
    wait_until("the header timeout to be counted", || {
        server.stats.header_timeouts() == 1
    })
    .await;
    assert_eq!(server.stats.idle_timeouts(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    let server = TestServer::start(limits(1, 30, 100)).await;
    let mut stream = server.connect().await;
    let took = closed_by_server(&mut stream).await;
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(1) + SLACK,
        "closed after {took:?}, the header-read timeout is 1 s"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout_not_before() {
    // The idle timeout is the longer one, so a close at the header-read timeout fails.
    let server = TestServer::start(limits(1, 2, 100)).await;
    let mut stream = server.connect().await;
    assert!(get(&mut stream, "/").await.ends_with("ok"));
    // Still open and served after longer than the header-read timeout.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(get(&mut stream, "/").await.ends_with("ok"));
    let took = closed_by_server(&mut stream).await;
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_secs(2) + SLACK,
        "closed after {took:?} of silence, the idle timeout is 2 s"
    );
    wait_until("the idle timeout to be counted", || {
        server.stats.idle_timeouts() == 1
    })
    .await;
    assert_eq!(server.stats.header_timeouts(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_closed_at_the_idle_timeout() {
    let server = TestServer::start(limits(1, 1, 100)).await;
    let mut stream = server.connect().await;
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let took = closed_by_server(&mut stream).await;
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(1) + SLACK,
        "closed after {took:?}, the idle timeout is 1 s"
    );
    wait_until("the idle timeout to be counted", || {
        server.stats.idle_timeouts() == 1
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_its_response_is_closed_at_the_idle_timeout() {
    let server = TestServer::start(limits(1, 1, 100)).await;
    let mut stream = server.connect().await;
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    wait_until("the request to be served", || server.stats.open() == 1).await;
    let begun = Instant::now();
    // The client reads nothing: the server's writes block, and it gives up.
    wait_until("the server to drop the connection", || {
        server.stats.open() == 0
    })
    .await;
    let took = begun.elapsed();
    assert!(
        took <= Duration::from_secs(1) + SLACK,
        "dropped after {took:?}, the idle timeout is 1 s"
    );
    assert_eq!(server.stats.idle_timeouts(), 1);
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_counted_while_the_others_are_served() {
    let server = TestServer::start(limits(30, 30, 3)).await;
    let mut served = server.connect().await;
    assert!(get(&mut served, "/").await.ends_with("ok"));
    let silent = server.connect().await;
    let _also_silent = server.connect().await;
    wait_until("three connections to be open", || server.stats.open() == 3).await;

    let mut over = server.connect().await;
    let took = closed_by_server(&mut over).await;
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert_eq!(server.stats.refused(), 1);

    // The connections under the cap are served as before, and promptly.
    let begun = Instant::now();
    assert!(get(&mut served, "/").await.ends_with("ok"));
    assert!(
        begun.elapsed() < Duration::from_millis(100),
        "{:?}",
        begun.elapsed()
    );

    // A place freed is a place for the next client.
    drop(silent);
    wait_until("the closed connection to be counted out", || {
        server.stats.open() == 2
    })
    .await;
    let mut next = server.connect().await;
    assert!(get(&mut next, "/").await.ends_with("ok"));
    assert_eq!(server.stats.refused(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_file_descriptor_budget_refuses_before_the_cap() {
    let budget = FdBudget::new(2);
    let server = TestServer::start_with(limits(30, 30, 100), Some(budget.clone())).await;
    let mut first = server.connect().await;
    assert!(get(&mut first, "/").await.ends_with("ok"));
    let _second = server.connect().await;
    wait_until("two connections to be open", || server.stats.open() == 2).await;
    assert_eq!(budget.left(), 0);
    let mut over = server.connect().await;
    closed_by_server(&mut over).await;
    assert_eq!(server.stats.refused(), 1);
    drop(first);
    wait_until("the budget to be given back", || budget.left() == 1).await;
    server.stop().await;
    assert_eq!(budget.left(), 2);
}

#[tokio::test]
async fn shutdown_closes_quiet_connections_and_lets_a_request_in_flight_finish() {
    let server = TestServer::start(limits(30, 30, 100)).await;
    let mut busy = server.connect().await;
    busy.write_all(b"GET /wait HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut quiet = server.connect().await;
    wait_until("both connections to be open", || server.stats.open() == 2).await;

    server.shutdown.cancel();
    let took = closed_by_server(&mut quiet).await;
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    wait_until("the listener to close", || {
        std::net::TcpStream::connect(server.addr).is_err()
    })
    .await;

    // The request in flight is answered, then its connection closed.
    server.release.notify_one();
    let response = within(
        "the request in flight to be answered",
        read_response(&mut busy),
    )
    .await;
    assert!(response.ends_with("released"), "{response}");
    closed_by_server(&mut busy).await;
    server.stop().await;
}
