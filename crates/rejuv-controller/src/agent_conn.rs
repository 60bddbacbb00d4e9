//! The connection a poller keeps to its agent: `GET` requests only (the state every interval,
//! the kept samples once), one at a time, over one kept-alive HTTP/1.1 connection, plain or
//! mutual TLS checked like [`AgentClient`]'s.
//!
//! Why not the general client: a controller polls every agent of its fleet and keeps a
//! connection to each. A pooled `reqwest` connection costs about 45 KB at rest (a client per
//! address for its certificate check, a dispatch channel, two 8 KB buffers, the TLS state);
//! with 10,000 agents that was 450 MB of a controller's 1 GB. This one holds only the socket
//! and its TLS state between polls (its read buffer lives for one request), and it is read by
//! the same rules: the reply is bounded ([`MAX_REPLY`]) and refused beyond it without being
//! read whole, a non-2xx answer becomes [`ClientError::Status`] with the agent's message
//! clipped, and a reply that is not HTTP as the agent API speaks it becomes
//! [`ClientError::BadReply`]. Commands (start, stop, rejuvenate, hand-off) keep the general
//! client: they are rare and their bodies large.
//!
//! A kept connection that the agent closed while idle (its keep-alive timeout) fails before
//! any byte of the answer; that request is sent once more on a new connection. A renewed or
//! revoked certificate (a new load of the TLS files) closes the connection before the next
//! request, as it drops [`AgentClient`]'s clients.

use crate::agent_client::{
    AgentClient, ClientError, CONNECT_TIMEOUT, MAX_REPLY, MAX_SAMPLES_REPLY,
};
use rejuv_core::api::{AgentState, ApiError};
use rejuv_core::reply::sanitize_state;
use rejuv_core::text::{clean, clean_bytes, MAX_REMOTE_TEXT};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest header section of an answer.
const MAX_HEAD: usize = 16 << 10;
/// Most header lines of an answer.
const MAX_HEADERS: usize = 32;

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An answer's status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// The connection may carry the next request.
    reusable: bool,
}

/// Why an exchange failed, and whether the request may be sent again on a new connection.
enum Failure {
    /// Failed before any byte of the answer arrived, on a connection that had served before.
    Stale(ClientError),
    Other(ClientError),
}

impl Failure {
    fn error(self) -> ClientError {
        match self {
            Failure::Stale(e) | Failure::Other(e) => e,
        }
    }
}

/// One agent's polling connection (see the module overview).
pub struct AgentConn {
    client: AgentClient,
    addr: SocketAddr,
    /// The kept connection, and the TLS load it was checked with.
    kept: Option<(Stream, u64)>,
}

impl AgentConn {
    pub fn new(client: AgentClient, addr: SocketAddr) -> Self {
        Self {
            client,
            addr,
            kept: None,
        }
    }

    /// `GET /v1/state`, its text sanitized ([`sanitize_state`]).
    pub async fn state(&mut self, timeout: Duration) -> Result<AgentState, ClientError> {
        let mut state: AgentState = self.get_json("/v1/state", MAX_REPLY, timeout).await?;
        sanitize_state(&mut state);
        Ok(state)
    }

    /// The samples the agent kept, oldest first, taken after `after_ms`.
    pub async fn samples(
        &mut self,
        after_ms: u64,
        timeout: Duration,
    ) -> Result<Vec<rejuv_core::types::Sample>, ClientError> {
        let path = format!("/v1/samples?after_ms={after_ms}");
        self.get_json(&path, MAX_SAMPLES_REPLY, timeout).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let addr = self.addr;
        let answer = match tokio::time::timeout(timeout, self.get(path, limit)).await {
            Ok(a) => a,
            Err(_) => {
                self.kept = None;
                Err(self.unreachable(format!("no answer within {timeout:?}")))
            }
        }?;
        if !(200..300).contains(&answer.status) {
            let message = match serde_json::from_slice::<ApiError>(&answer.body) {
                Ok(e) => clean(&e.error, MAX_REMOTE_TEXT),
                Err(_) => clean_bytes(&answer.body, MAX_REMOTE_TEXT),
            };
            return Err(ClientError::Status {
                addr,
                status: answer.status,
                message,
            });
        }
        serde_json::from_slice(&answer.body).map_err(|e| ClientError::BadReply {
            addr,
            message: clean(&e.to_string(), MAX_REMOTE_TEXT),
        })
    }

    fn unreachable(&self, message: String) -> ClientError {
        ClientError::Unreachable {
            addr: self.addr,
            message: clean(&message, MAX_REMOTE_TEXT),
        }
    }

    /// One request, sent again once on a new connection when a kept one turned out closed.
    async fn get(&mut self, path: &str, limit: usize) -> Result<Answer, ClientError> {
        match self.exchange(path, limit).await {
            Ok(a) => Ok(a),
            Err(Failure::Stale(_)) => self.exchange(path, limit).await.map_err(Failure::error),
            Err(f) => Err(f.error()),
        }
    }

    async fn exchange(&mut self, path: &str, limit: usize) -> Result<Answer, Failure> {
        let generation = self.client.tls_generation();
        let (mut stream, reused) = match self.kept.take() {
            Some((s, g)) if g == generation => (s, true),
            _ => (self.connect().await.map_err(Failure::Other)?, false),
        };
        let fail = |e: ClientError, answered: bool| {
            if reused && !answered {
                Failure::Stale(e)
            } else {
                Failure::Other(e)
            }
        };
        if self.client.token().chars().any(char::is_control) {
            return Err(Failure::Other(
                self.unreachable("the agent token holds a control character".into()),
            ));
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\n\r\n",
            self.addr,
            self.client.token()
        );
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            return Err(fail(self.unreachable(e.to_string()), false));
        }
        if let Err(e) = stream.flush().await {
            return Err(fail(self.unreachable(e.to_string()), false));
        }
        let answer = read_answer(&mut stream, self.addr, limit)
            .await
            .map_err(|(e, answered)| fail(e, answered))?;
        if answer.reusable {
            self.kept = Some((stream, generation));
        }
        Ok(answer)
    }

    async fn connect(&self) -> Result<Stream, ClientError> {
        // The certificate to ask for first: an address no server has is not connected to.
        let connector = self.client.tls_connector(self.addr)?;
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.unreachable(e.to_string())),
            Err(_) => return Err(self.unreachable("connect timed out".into())),
        };
        let _ = tcp.set_nodelay(true);
        let Some(connector) = connector else {
            return Ok(Stream::Plain(tcp));
        };
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
            Ok(Err(e)) => {
                let chain = rejuv_core::error_chain(&e);
                self.client.warn_refused(self.addr, &chain);
                Err(self.unreachable(chain))
            }
            Err(_) => Err(self.unreachable("TLS handshake timed out".into())),
        }
    }
}

/// Reads one answer: its head, then its body by `Content-Length`, by chunks, or to the end of
/// the connection, refused beyond `limit` bytes. The error says whether any byte arrived.
async fn read_answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    addr: SocketAddr,
    limit: usize,
) -> Result<Answer, (ClientError, bool)> {
    let bad = |message: String| ClientError::BadReply { addr, message };
    let gone = |message: String| ClientError::Unreachable {
        addr,
        message: clean(&message, MAX_REMOTE_TEXT),
    };
    let too_big = || bad(format!("reply larger than {limit} bytes, not read"));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    // The head.
    let (status, head_len, framing, close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let mut length = None;
                let mut chunked = false;
                let mut close = resp.version == Some(0);
                for h in resp.headers.iter() {
                    let value = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let n = value.trim().parse::<u64>().map_err(|_| {
                            (
                                bad(format!(
                                    "Content-Length '{}' is not a number",
                                    clean(&value, 40)
                                )),
                                true,
                            )
                        })?;
                        length = Some(n);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = value.to_ascii_lowercase().contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        let v = value.to_ascii_lowercase();
                        close = v.contains("close") || (close && !v.contains("keep-alive"));
                    }
                }
                // Both framings named: the answer is read by its chunks, and the connection
                // is not trusted with another request (RFC 9112, 6.3).
                if chunked && length.is_some() {
                    close = true;
                }
                if (100..200).contains(&status) {
                    return Err((bad(format!("an interim answer ({status}) to a GET")), true));
                }
                // No body, whatever the head says (RFC 9112, 6.3).
                let framing = if status == 204 || status == 304 {
                    Framing::Length(0)
                } else if chunked {
                    Framing::Chunked
                } else if let Some(n) = length {
                    if n > limit as u64 {
                        return Err((too_big(), true));
                    }
                    Framing::Length(n as usize)
                } else {
                    Framing::ToEnd
                };
                break (status, n, framing, close);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD {
                    return Err((
                        bad(format!("answer head longer than {MAX_HEAD} bytes")),
                        true,
                    ));
                }
            }
            Err(e) => return Err((bad(format!("not an HTTP answer: {e}")), true)),
        }
        let before = buf.len();
        match read_more(stream, &mut buf).await {
            Ok(0) => {
                return Err((
                    gone("the connection closed before the answer".into()),
                    before > 0,
                ))
            }
            Ok(_) => {}
            Err(e) => return Err((gone(e.to_string()), before > 0)),
        }
    };
    buf.drain(..head_len);
    let body = match framing {
        Framing::Length(n) => {
            while buf.len() < n {
                match read_more(stream, &mut buf).await {
                    Ok(0) => {
                        return Err((gone("the connection closed within the body".into()), true))
                    }
                    Ok(_) => {}
                    Err(e) => return Err((gone(e.to_string()), true)),
                }
            }
            if buf.len() > n {
                return Err((bad("bytes after the answer's body".into()), true));
            }
            buf
        }
        Framing::ToEnd => {
            loop {
                match read_more(stream, &mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err((gone(e.to_string()), true)),
                }
                if buf.len() > limit {
                    return Err((too_big(), true));
                }
            }
            if buf.len() > limit {
                return Err((too_big(), true));
            }
            return Ok(Answer {
                status,
                body: buf,
                reusable: false,
            });
        }
        Framing::Chunked => read_chunked(stream, buf, limit)
            .await
            .map_err(|e| match e {
                ChunkError::TooBig => (too_big(), true),
                ChunkError::Bad(m) => (bad(m), true),
                ChunkError::Io(m) => (gone(m), true),
            })?,
    };
    Ok(Answer {
        status,
        body,
        reusable: !close,
    })
}

enum Framing {
    Length(usize),
    Chunked,
    ToEnd,
}

enum ChunkError {
    TooBig,
    Bad(String),
    Io(String),
}

/// Reads into the spare room of `buf` (growing it by 4 KB when full); the count read.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream.read_buf(buf).await
}

/// Decodes a chunked body; `buf` holds what was read after the head.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>, ChunkError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        // A size line.
        let line_end = loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            if buf.len() - pos > 1024 {
                return Err(ChunkError::Bad("chunk size line too long".into()));
            }
            fill(stream, &mut buf).await?;
        };
        let line = String::from_utf8_lossy(&buf[pos..line_end]);
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| {
            ChunkError::Bad(format!("chunk size '{}' is not hex", clean(size_text, 20)))
        })?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                    let empty = i == 0;
                    pos += i + 2;
                    if empty {
                        if pos != buf.len() {
                            return Err(ChunkError::Bad("bytes after the answer's body".into()));
                        }
                        return Ok(body);
                    }
                    continue;
                }
                if buf.len() - pos > MAX_HEAD {
                    return Err(ChunkError::Bad("trailers too long".into()));
                }
                fill(stream, &mut buf).await?;
            }
        }
        // `body.len() <= limit` holds: no sum here can overflow, whatever size an agent names.
        if size > limit - body.len() {
            return Err(ChunkError::TooBig);
        }
        while buf.len() < pos + size + 2 {
            fill(stream, &mut buf).await?;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(ChunkError::Bad("a chunk does not end with CRLF".into()));
        }
        pos += size + 2;
        // What was decoded need not stay in the read buffer.
        buf.drain(..pos);
        pos = 0;
    }
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<(), ChunkError> {
    match read_more(stream, buf).await {
        Ok(0) => Err(ChunkError::Io(
            "the connection closed within the body".into(),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(ChunkError::Io(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// A scripted agent: answers each request on a connection with the next of `answers`
    /// (raw bytes); `None` closes the connection instead. Counts connections accepted.
    async fn scripted(answers: Vec<Option<Vec<u8>>>) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let answers = Arc::new(tokio::sync::Mutex::new(answers.into_iter()));
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    loop {
                        let mut b = [0u8; 1024];
                        let n = match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        req.extend_from_slice(&b[..n]);
                        if !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        assert!(
                            String::from_utf8_lossy(&req).contains("Authorization: Bearer tok\r\n"),
                            "the token goes with every request"
                        );
                        req.clear();
                        match answers.lock().await.next() {
                            Some(Some(a)) => {
                                // An answer that says it closes the connection does.
                                let closes =
                                    String::from_utf8_lossy(&a).contains("connection: close");
                                if s.write_all(&a).await.is_err() || closes {
                                    return;
                                }
                            }
                            _ => return,
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn ok(body: &str) -> Option<Vec<u8>> {
        Some(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes())
    }

    fn conn(addr: SocketAddr) -> AgentConn {
        AgentConn::new(AgentClient::new("tok".into()), addr)
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn requests_share_one_kept_connection() {
        let (addr, accepted) = scripted(vec![ok("[]"), ok("[]"), ok("[]")]).await;
        let mut c = conn(addr);
        for _ in 0..3 {
            assert!(c.samples(0, T).await.unwrap().is_empty());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_the_agent_closed_is_replaced_and_the_request_sent_again() {
        // The first connection answers once, then closes at the second request.
        let (addr, accepted) = scripted(vec![ok("[]"), None, ok("[]")]).await;
        let mut c = conn(addr);
        assert!(c.samples(0, T).await.is_ok());
        assert!(
            c.samples(0, T).await.is_ok(),
            "sent again on a new connection"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn chunked_and_close_delimited_bodies_are_read() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n[\r\n1;x=y\r\n]\r\n0\r\n\r\n".to_vec();
        let (addr, _) = scripted(vec![Some(chunked)]).await;
        let mut c = conn(addr);
        assert!(c.samples(0, T).await.unwrap().is_empty());
        assert!(
            c.kept.is_some(),
            "a chunked answer leaves its connection for the next"
        );

        let to_end = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n[]".to_vec();
        let (addr, _) = scripted(vec![Some(to_end)]).await;
        let mut c = conn(addr);
        assert!(c.samples(0, T).await.unwrap().is_empty());
        assert!(
            c.kept.is_none(),
            "a close-delimited answer ends its connection"
        );
    }

    #[tokio::test]
    async fn an_error_answer_names_the_status_and_the_agents_message() {
        let body = r#"{"error":"bad token\u001b[31m"}"#;
        let a = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (addr, _) = scripted(vec![Some(a.into_bytes())]).await;
        let e = conn(addr).state(T).await.unwrap_err();
        match &e {
            ClientError::Status {
                status, message, ..
            } => {
                assert_eq!(*status, 401);
                assert!(
                    message.starts_with("bad token") && !message.contains('\u{1b}'),
                    "{message}"
                );
            }
            other => panic!("{other}"),
        }
        assert!(e.is_permanent());
    }

    #[tokio::test]
    async fn an_oversized_or_broken_answer_is_refused_with_the_reason() {
        let huge = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            MAX_REPLY + 1
        );
        let (addr, _) = scripted(vec![Some(huge.into_bytes())]).await;
        let e = conn(addr).state(T).await.unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");

        let (addr, _) = scripted(vec![Some(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec())]).await;
        let e = conn(addr).state(T).await.unwrap_err().to_string();
        assert!(e.contains("not an HTTP answer"), "{e}");

        let (addr, _) = scripted(vec![ok("{\"not\": \"a state\"}")]).await;
        let e = conn(addr).state(T).await.unwrap_err();
        assert!(matches!(e, ClientError::BadReply { .. }), "{e}");

        let (addr, _) = scripted(vec![Some(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())]).await;
        let e = conn(addr).state(T).await.unwrap_err();
        assert!(
            matches!(e, ClientError::BadReply { .. }),
            "an empty answer is no state, at once: {e}"
        );

        // A chunk size near the integer's end is refused, not summed past the limit.
        let huge_chunk =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n[\r\nffffffffffffffff\r\n"
                .to_vec();
        let (addr, _) = scripted(vec![Some(huge_chunk)]).await;
        let e = conn(addr).samples(0, T).await.unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");

        let chunk_lie = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec();
        let (addr, _) = scripted(vec![Some(chunk_lie)]).await;
        let e = conn(addr).samples(0, T).await.unwrap_err().to_string();
        assert!(e.contains("not hex"), "{e}");
    }

    #[tokio::test]
    async fn an_agent_that_does_not_answer_times_out_and_one_that_is_down_is_unreachable() {
        // Accepts, reads, never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let mut c = conn(addr);
        let e = c
            .state(Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unreachable") && e.contains("no answer within"),
            "{e}"
        );
        assert!(c.kept.is_none());
        held.abort();

        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = free.local_addr().unwrap();
        drop(free);
        let e = conn(down).state(T).await.unwrap_err().to_string();
        assert!(e.contains("unreachable"), "{e}");
    }
}
