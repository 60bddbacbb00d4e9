//! Clients that misbehave on purpose, for the tests of every part's listeners: a slowloris,
//! a silent connection, an idle keep-alive one, and a plain keep-alive GET on a raw
//! connection (to be served while the listener is at its cap, where a pooled client might
//! open a new connection and be refused).
//!
//! Every function is bounded by the `limit` it is given.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The head a slowloris starts with: never completed.
const PARTIAL_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: rejuv\r\n";

/// How long until the server closes `stream`, reading and dropping whatever it sends;
/// `None` if it is still open after `limit`.
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let begun = Instant::now();
    let mut buf = vec![0u8; 16 << 10];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()?;
    Some(begun.elapsed())
}

/// A slowloris: a request head begun and never finished, one more header line every
/// `every`. How long from the connection until the server closed it, or `None` if it was
/// still open after `limit`.
///
/// # Panics
/// If the connection cannot be made.
pub async fn slowloris(addr: SocketAddr, every: Duration, limit: Duration) -> Option<Duration> {
    let begun = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connecting");
    if stream.write_all(PARTIAL_HEAD).await.is_err() {
        return Some(begun.elapsed());
    }
    let mut buf = [0u8; 1024];
    for line in 0u64.. {
        let left = limit.checked_sub(begun.elapsed())?;
        match tokio::time::timeout(every.min(left), stream.read(&mut buf)).await {
            // Closed, or an error answer (still closed after it, soon): either way the
            // server did not wait for the head.
            Ok(Ok(0) | Err(_)) => return Some(begun.elapsed()),
            Ok(Ok(_)) => {
                let rest = limit.saturating_sub(begun.elapsed());
                return closed_within(&mut stream, rest)
                    .await
                    .map(|_| begun.elapsed());
            }
            Err(_) => {
                let header = format!("x-slow-{line}: 1\r\n");
                if stream.write_all(header.as_bytes()).await.is_err() {
                    return Some(begun.elapsed());
                }
            }
        }
    }
    None
}

/// A connection that sends nothing: how long until the server closed it.
///
/// # Panics
/// If the connection cannot be made.
pub async fn silent(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let begun = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connecting");
    closed_within(&mut stream, limit)
        .await
        .map(|_| begun.elapsed())
}

/// One request on a new keep-alive connection, then silence: how long from the end of the
/// response until the server closed the connection.
///
/// # Panics
/// If the connection cannot be made or the response does not come within `limit`.
pub async fn idle_after_request(addr: SocketAddr, path: &str, limit: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.expect("connecting");
    tokio::time::timeout(limit, get(&mut stream, path, None))
        .await
        .expect("a response within the limit");
    closed_within(&mut stream, limit).await
}

/// `GET path` on a keep-alive connection, with a bearer token if given: the status and the
/// body. The response must carry a content-length (every part's API does for these routes).
///
/// # Panics
/// If the connection closes before a whole response, or the response is not HTTP/1.1 with a
/// content-length.
pub async fn get(stream: &mut TcpStream, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: rejuv\r\n{auth}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending a request");
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = stream.read(&mut buf).await.expect("reading a response");
        assert!(
            n > 0,
            "closed before a whole response: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no content-length in {head}"));
        if got.len() >= end + 4 + length {
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status in {head}"));
            let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]).to_string();
            return (status, body);
        }
    }
}
