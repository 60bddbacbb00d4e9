//! Helpers for the HAProxy adapter tests: a real `haproxy` process per test (own process
//! group, killed on drop), tiny axum upstreams, a recording relay in front of the runtime API
//! socket, and bounded polling.

#![allow(dead_code)]

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rejuv_core::api::{Backend, BackendState, RouteTable, ServiceRoutes};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const HAPROXY: &str = "/usr/sbin/haproxy";

pub fn free_port() -> u16 {
    rejuv_net::free_port([127, 0, 0, 1].into()).expect("a free loopback port")
}

/// A generated configuration: admin socket in `dir`, frontend on `front`, backend `web`
/// (roundrobin, retries) with `static_servers` lines and nothing else.
pub fn test_config(
    dir: &Path,
    front: SocketAddr,
    extra_global: &str,
    static_servers: &str,
) -> String {
    format!(
        "global
    stats socket {sock} mode 600 level admin
    stats timeout 10s
{extra_global}
defaults
    mode http
    option redispatch
    retries 3
    retry-on conn-failure
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 5s

frontend fe
    bind {front}
    default_backend web

backend web
    balance roundrobin
{static_servers}
",
        sock = dir.join("admin.sock").display(),
    )
}

/// A running `haproxy -db` in its own process group.
pub struct HaproxyProc {
    pub dir: PathBuf,
    pub cfg: PathBuf,
    pub sock: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl HaproxyProc {
    /// Writes `config` to `dir/haproxy.cfg` and starts HAProxy; waits until its runtime API
    /// answers at `dir/admin.sock`.
    pub async fn start(dir: &Path, config: &str) -> Self {
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("write haproxy.cfg");
        let mut p = Self {
            dir: dir.to_path_buf(),
            cfg,
            sock: dir.join("admin.sock"),
            child: None,
            starts: 0,
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("haproxy-{}.log", self.starts));
        let out = std::fs::File::create(&log).expect("haproxy log file");
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&self.cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("start haproxy");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "haproxy exited at start-up ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if raw_command(&self.sock, "show info")
                .await
                .is_ok_and(|t| t.contains("Pid:"))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "haproxy's runtime API did not answer within 10 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL to the process group, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Kills HAProxy and starts it again with the same configuration.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for HaproxyProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one line to a runtime API socket directly (the test's "operator").
pub async fn raw_command(sock: &Path, cmd: &str) -> std::io::Result<String> {
    let mut s = tokio::net::UnixStream::connect(sock).await?;
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "runtime API"))??;
    Ok(out)
}

/// A tiny HTTP upstream: `/` and `/healthz` answer its name; `/slow` answers once released
/// (or after 20 s), counting itself in flight meanwhile.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub in_flight: Arc<AtomicU64>,
    release: watch::Sender<bool>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct UpState {
    name: String,
    hits: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    release: watch::Receiver<bool>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, release_rx) = watch::channel(false);
        let st = UpState {
            name: name.to_string(),
            hits: Arc::new(AtomicU64::new(0)),
            in_flight: Arc::new(AtomicU64::new(0)),
            release: release_rx,
        };
        let app = Router::new()
            .route(
                "/",
                get(|State(s): State<UpState>| async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    s.name.clone()
                }),
            )
            .route(
                "/healthz",
                get(|State(s): State<UpState>| async move { s.name.clone() }),
            )
            .route(
                "/slow",
                get(|State(s): State<UpState>| async move {
                    s.in_flight.fetch_add(1, Ordering::SeqCst);
                    let mut rx = s.release.clone();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|r| *r)).await;
                    s.in_flight.fetch_sub(1, Ordering::SeqCst);
                    s.name.clone()
                }),
            )
            .with_state(st.clone());
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s2.cancelled().await })
                .await;
        });
        Self {
            name: name.to_string(),
            addr,
            hits: st.hits,
            in_flight: st.in_flight,
            release,
            stop,
        }
    }

    pub fn release_slow(&self) {
        let _ = self.release.send(true);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.release.send(true);
        self.stop.cancel();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(25))
        .build()
        .unwrap()
}

/// GET through the frontend: (status, body).
pub async fn get_body(client: &reqwest::Client, front: SocketAddr, path: &str) -> (u16, String) {
    let r = client
        .get(format!("http://{front}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} via haproxy at {front}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// A route table with one service `web`.
pub fn table(version: u64, backends: &[(&str, SocketAddr, BackendState)]) -> RouteTable {
    let mut services = BTreeMap::new();
    services.insert(
        "web".to_string(),
        ServiceRoutes {
            backends: backends
                .iter()
                .map(|(id, addr, state)| Backend {
                    id: id.to_string(),
                    addr: *addr,
                    state: *state,
                })
                .collect(),
            hold: false,
            max_hold_ms: 5_000,
        },
    );
    RouteTable {
        epoch: 0,
        version,
        services,
    }
}

/// A Unix-socket relay in front of the runtime API that records the line of every
/// connection: what the adapter really sent, independent of its own report.
pub struct Relay {
    pub path: PathBuf,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Relay {
    pub fn start(dir: &Path, upstream: &Path) -> Self {
        let path = dir.join("relay.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind relay socket");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (l2, c2, s2, up) = (
            lines.clone(),
            connections.clone(),
            stop.clone(),
            upstream.to_path_buf(),
        );
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = tokio::select! {
                    _ = s2.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => return },
                };
                c2.fetch_add(1, Ordering::SeqCst);
                let (l3, up) = (l2.clone(), up.clone());
                tokio::spawn(async move {
                    // The adapter sends one line and waits for the close.
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while conn.read_exact(&mut b).await.is_ok() {
                        if b[0] == b'\n' {
                            break;
                        }
                        line.push(b[0]);
                    }
                    let text = String::from_utf8_lossy(&line).into_owned();
                    l3.lock().unwrap().push(text.clone());
                    if let Ok(answer) = raw_command(&up, &text).await {
                        let _ = conn.write_all(answer.as_bytes()).await;
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self {
            path,
            lines,
            connections,
            stop,
        }
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `f` every 50 ms until it yields `Some`, or panics after `limit` saying `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For polling loops that mutate local state: `tick` sleeps 50 ms, or panics after the limit.
pub struct Deadline {
    what: String,
    limit: Duration,
    end: tokio::time::Instant,
}

impl Deadline {
    pub fn new(what: &str, limit: Duration) -> Self {
        Self {
            what: what.to_string(),
            limit,
            end: tokio::time::Instant::now() + limit,
        }
    }

    pub async fn tick(&self) {
        assert!(
            tokio::time::Instant::now() < self.end,
            "timed out after {:?} waiting for {}",
            self.limit,
            self.what
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
