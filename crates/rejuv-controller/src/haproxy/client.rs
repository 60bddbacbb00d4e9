//! The runtime API client: one command per connection (non-interactive mode), over a Unix or
//! TCP socket, bounded by the configured timeout; and the reads a pass makes (a backend's
//! servers, which HAProxy process answers).

use super::args::check_name;
use super::config::{HaproxyConfig, HaproxySocket};
use super::error::HaproxyError;
use super::state::{
    parse_info, parse_servers_state, parse_stat_sessions, Incarnation, ServerState,
};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where and how long to talk to HAProxy.
#[derive(Debug, Clone)]
pub(super) struct RuntimeApi {
    socket: HaproxySocket,
    timeout: Duration,
}

impl RuntimeApi {
    pub(super) fn new(cfg: &HaproxyConfig) -> Self {
        Self {
            socket: cfg.socket.clone(),
            timeout: cfg.timeout,
        }
    }

    /// The servers of `backend`: `show servers state` joined with `show stat` counters.
    pub(super) async fn servers(&self, backend: &str) -> Result<Vec<ServerState>, HaproxyError> {
        check_name("backend name", backend)?;
        let cmd = format!("show servers state {backend}");
        let text = self.send(&cmd).await?;
        let mut servers = parse_servers_state(&cmd, &text)?;
        let cmd = format!("show stat {backend} 4 -1");
        let text = self.send(&cmd).await?;
        let stats = parse_stat_sessions(&cmd, &text)?;
        for s in &mut servers {
            // A server absent from the second read was deleted or added in between: either
            // way it has no sessions yet.
            if let Some(&(scur, qcur)) = stats.get(&s.name) {
                s.sessions = scur;
                s.queued = qcur;
            }
        }
        Ok(servers)
    }

    /// Which HAProxy process answers (`show info` Pid and start time).
    pub(super) async fn incarnation(&self) -> Result<Incarnation, HaproxyError> {
        let cmd = "show info";
        let text = self.send(cmd).await?;
        parse_info(cmd, &text)
    }

    /// One exchange: connect, send the line, read until HAProxy closes (non-interactive mode
    /// answers one request per connection).
    pub(super) async fn send(&self, cmd: &str) -> Result<String, HaproxyError> {
        let socket = self.socket.to_string();
        let connect = |source| HaproxyError::Connect {
            socket: socket.clone(),
            source,
        };
        let exchange = async {
            match &self.socket {
                HaproxySocket::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(connect)?;
                    exchange(s, cmd, &socket).await
                }
                HaproxySocket::Tcp(addr) => {
                    let s = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(connect)?;
                    exchange(s, cmd, &socket).await
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HaproxyError::Timeout {
                socket: socket.clone(),
                command: cmd.to_string(),
                timeout: self.timeout,
            })?
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    cmd: &str,
    socket: &str,
) -> Result<String, HaproxyError> {
    let io = |source| HaproxyError::Io {
        socket: socket.to_string(),
        command: cmd.to_string(),
        source,
    };
    s.write_all(format!("{cmd}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut buf = Vec::new();
    (&mut s)
        .take(MAX_REPLY as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(io)?;
    if buf.len() > MAX_REPLY {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("reply larger than {MAX_REPLY} bytes, not read"),
        )));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Largest runtime API reply read: `show servers state` of 10,000 servers is about 3 MB.
const MAX_REPLY: usize = 64 << 20;
