//! Test harness: real agents on 127.x.y.1 port 0, real service processes, bounded waits.
//!
//! Every service process a test starts carries `REJUV_TEST_TAG=<unique>` in its environment
//! (inherited by its children, `setsid` or not); dropping the harness SIGKILLs every process
//! with that tag, so a failing test leaves nothing behind.

use rejuv_agent::{AgentOptions, Exit};
use rejuv_core::api::{AgentState, InstanceState, InstanceStatus};
use rejuv_core::config::Config;
use reqwest::StatusCode;
use serde_json::Value;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-0123456789";

/// A tiny HTTP service: `/healthz`, `/pid`, and `/state` (GET returns, PUT replaces).
pub const PY_SERVICE: &str = r#"
import sys, os, http.server
port, addr = int(sys.argv[1]), sys.argv[2]
state = [b""]
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/healthz": self.reply(200, b"ok")
        elif self.path == "/state": self.reply(200, state[0])
        elif self.path == "/pid": self.reply(200, str(os.getpid()).encode())
        else: self.reply(404)
    def do_PUT(self):
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/state":
            state[0] = data
            self.reply(200)
        else: self.reply(404)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((addr, port), H).serve_forever()
"#;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Waits until `probe` yields a value; panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let begun = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            begun.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True if `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let after = &s[s.rfind(')').map_or(0, |i| i + 1)..];
            !matches!(after.split_whitespace().next(), Some("Z" | "X") | None)
        }
        Err(_) => false,
    }
}

/// Live processes whose environment carries `REJUV_TEST_TAG=tag`.
pub fn tagged_pids(tag: &str) -> Vec<i32> {
    let needle = format!("REJUV_TEST_TAG={tag}");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(e.path().join("environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

fn kill_tagged(tag: &str) {
    for pid in tagged_pids(tag) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One test's world: a temp dir, a loopback address of its own, a tag for its processes.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub tag: String,
    pub address: IpAddr,
    pub port_range: [u16; 2],
}

impl Harness {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // A loopback address per test: port ranges of parallel tests never meet.
        let address: IpAddr = format!("127.{}.{}.1", 100 + pid % 100, 1 + n % 250)
            .parse()
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            tag: format!(
                "{pid}-{n}-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ),
            address,
            port_range: [21000, 21009],
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    /// Services: `web` (hand-off), `plain` (no hand-off), `crashy` (first run exits 3),
    /// `forker` (a `setsid` child and a reparented `setsid` grandchild), `stubborn`
    /// (ignores SIGTERM).
    pub fn config(&self) -> Config {
        let tag = &self.tag;
        let [low, high] = self.port_range;
        let address = self.address;
        let marks = self.path("marks");
        std::fs::create_dir_all(&marks).unwrap();
        let marks = marks.display();
        let py = toml_string(PY_SERVICE);
        let text = format!(
            r#"
[cluster]
mode = "active-active"

[traffic]
admin = "127.0.0.1:1"

[[servers]]
id = "s1"
address = "{address}"
agent = "{address}:1"
role = "primary"
port_range = [{low}, {high}]

[services.web]
command = "/usr/bin/python3"
args = ["-c", {py}, "{{port}}", "{{address}}"]
env = {{ REJUV_TEST_TAG = "{tag}" }}
health = {{ path = "/healthz", interval = "100ms", timeout = "2s" }}
stop_grace = "3s"
handoff = {{ export = "/state", import = "/state", hold = "5s" }}

[services.plain]
command = "/usr/bin/python3"
args = ["-c", {py}, "{{port}}", "{{address}}"]
env = {{ REJUV_TEST_TAG = "{tag}" }}
health = {{ path = "/healthz", interval = "100ms", timeout = "2s" }}
stop_grace = "3s"

[services.crashy]
command = "/bin/sh"
args = ["-c", 'if [ -e "$1" ]; then exec /usr/bin/python3 -c "$2" "$3" "$4"; else touch "$1"; exit 3; fi',
        "sh", "{marks}/{{instance}}.ran", {py}, "{{port}}", "{{address}}"]
env = {{ REJUV_TEST_TAG = "{tag}" }}
health = {{ path = "/healthz", interval = "100ms", timeout = "2s" }}
stop_grace = "3s"

[services.forker]
command = "/bin/sh"
args = ["-c", 'setsid sleep 300 & echo $! > "$1"; (setsid sleep 301 & echo $! > "$2"); exec /usr/bin/python3 -c "$3" "$4" "$5"',
        "sh", "{marks}/{{instance}}.direct", "{marks}/{{instance}}.orphan", {py}, "{{port}}", "{{address}}"]
env = {{ REJUV_TEST_TAG = "{tag}" }}
health = {{ path = "/healthz", interval = "100ms", timeout = "2s" }}
stop_grace = "3s"

[services.stubborn]
command = "/bin/sh"
args = ["-c", 'trap "" TERM; exec /usr/bin/python3 "$1" "$2" "$3"', "sh", "{marks}/service.py", "{{port}}", "{{address}}"]
env = {{ REJUV_TEST_TAG = "{tag}" }}
health = {{ path = "/healthz", interval = "100ms", timeout = "2s" }}
stop_grace = "500ms"

[agent]
sample_interval = "100ms"
"#
        );
        std::fs::write(self.path("marks/service.py"), PY_SERVICE).unwrap();
        Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}"))
    }

    /// Starts an agent on this harness's address, port 0.
    pub async fn start(&self, config: Config) -> TestAgent {
        self.try_start(config)
            .await
            .unwrap_or_else(|e| panic!("agent did not start: {e:#}"))
    }

    pub async fn try_start(&self, config: Config) -> anyhow::Result<TestAgent> {
        let listener = tokio::net::TcpListener::bind((self.address, 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let opts = AgentOptions {
            config,
            server_id: "s1".into(),
            token: TOKEN.into(),
            data_dir: self.data_dir(),
        };
        let mut handle = tokio::spawn(rejuv_agent::run(listener, opts, shutdown.clone()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        // Ready once /healthz answers, unless run() failed first.
        let begun = Instant::now();
        loop {
            if handle.is_finished() {
                return match (&mut handle).await? {
                    Ok(exit) => Err(anyhow::anyhow!("agent exited at once: {exit:?}")),
                    Err(e) => Err(e),
                };
            }
            if client
                .get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            anyhow::ensure!(
                begun.elapsed() < Duration::from_secs(20),
                "agent /healthz never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(TestAgent {
            url,
            client,
            shutdown,
            handle: Some(handle),
            tag: self.tag.clone(),
        })
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        kill_tagged(&self.tag);
    }
}

pub fn toml_string(s: &str) -> String {
    // A TOML basic string via JSON escaping (a subset TOML accepts).
    serde_json::to_string(s).unwrap()
}

pub struct TestAgent {
    pub url: String,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub handle: Option<tokio::task::JoinHandle<anyhow::Result<Exit>>>,
    tag: String,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            // The agent could not stop its instances: make sure nothing outlives the test.
            kill_tagged(&self.tag);
        }
    }
}

/// A JSON answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn error(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    pub fn instance(&self) -> InstanceStatus {
        assert!(self.status.is_success(), "{} {}", self.status, self.body);
        serde_json::from_value(self.body.clone()).unwrap()
    }
}

impl TestAgent {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Answer {
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body }
    }

    pub async fn put_instance(&self, id: &str, service: &str, epoch: u64) -> Answer {
        let body = serde_json::json!({ "epoch": epoch, "service": service });
        self.send(
            reqwest::Method::PUT,
            &format!("/v1/instances/{id}"),
            Some(body),
            Some(TOKEN),
        )
        .await
    }

    pub async fn delete_instance(&self, id: &str, epoch: u64) -> Answer {
        self.send(
            reqwest::Method::DELETE,
            &format!("/v1/instances/{id}?epoch={epoch}"),
            None,
            Some(TOKEN),
        )
        .await
    }

    pub async fn rejuvenate(&self, run_id: &str, actions: &[&str], epoch: u64) -> Answer {
        let body = serde_json::json!({ "epoch": epoch, "run_id": run_id, "actions": actions });
        self.send(
            reqwest::Method::POST,
            "/v1/rejuvenate",
            Some(body),
            Some(TOKEN),
        )
        .await
    }

    pub async fn state(&self) -> AgentState {
        let a = self
            .send(reqwest::Method::GET, "/v1/state", None, Some(TOKEN))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        serde_json::from_value(a.body).unwrap()
    }

    pub async fn instance(&self, id: &str) -> Option<InstanceStatus> {
        self.state()
            .await
            .instances
            .into_iter()
            .find(|i| i.id == id)
    }

    /// Waits until the instance is `Running` (its health check passed).
    pub async fn wait_running(&self, id: &str) -> InstanceStatus {
        wait_for(
            &format!("instance {id} to be running"),
            Duration::from_secs(20),
            || async {
                self.instance(id)
                    .await
                    .filter(|i| i.state == InstanceState::Running)
            },
        )
        .await
    }

    /// Cancels the shutdown token and waits for `run` to return.
    pub async fn shut_down(mut self) -> Exit {
        self.shutdown.cancel();
        self.join()
            .await
            .unwrap_or_else(|e| panic!("agent failed: {e:#}"))
    }

    /// Waits for `run` to return (without cancelling).
    pub async fn join(&mut self) -> anyhow::Result<Exit> {
        let handle = self.handle.take().expect("agent already joined");
        match tokio::time::timeout(Duration::from_secs(30), handle).await {
            Ok(joined) => joined.expect("agent task panicked"),
            Err(_) => {
                panic!("agent run() did not return within 30 s: an instance stop probably hung")
            }
        }
    }
}
