//! Test harness: real `rejuv agent` processes (so that instances outlive their agent and are
//! not the next agent's children), real `rejuv sample-service` instances, bounded waits.
//!
//! Every instance carries `REJUV_TEST_TAG=<unique>` in its environment; dropping the
//! [`World`] SIGKILLs every process with that tag and every agent it started, so a failing
//! test leaves nothing behind.

use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_rejuv");
pub const TOKEN: &str = "backends-test-token-0123456789";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Waits until `probe` yields a value; panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let begun = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            begun.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
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

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A free TCP port on `address` (bound, then released).
pub fn free_port(address: IpAddr) -> u16 {
    rejuv_net::free_port(address).expect("a free port")
}

/// One test's world: a temp dir, a loopback address of its own, a tag for its processes.
pub struct World {
    pub dir: tempfile::TempDir,
    pub tag: String,
    pub address: IpAddr,
    pub agent_port: u16,
    pub port_range: [u16; 2],
    agents: Vec<Child>,
}

impl World {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let address: IpAddr = format!("127.{}.{}.1", 100 + pid % 100, 1 + n % 250)
            .parse()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        // Token files are the owner's alone, or the parts refuse them.
        std::fs::set_permissions(
            dir.path().join("token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        Self {
            tag: format!("bk-{pid}-{n}"),
            address,
            agent_port: free_port(address),
            port_range: [22000 + (n as u16 % 50) * 10, 22009 + (n as u16 % 50) * 10],
            dir,
            agents: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    pub fn agent_url(&self) -> String {
        format!("http://{}:{}", self.address, self.agent_port)
    }

    /// A config with the given `[services.*]` tables (`{tag}`, `{exe}` filled in).
    pub fn config(&self, services: &str) -> String {
        let [low, high] = self.port_range;
        format!(
            r#"
[cluster]
mode = "active-active"

[traffic]
admin = "127.0.0.1:1"

[[servers]]
id = "s1"
address = "{address}"
agent = "{address}:{agent_port}"
role = "primary"
port_range = [{low}, {high}]

[agent]
sample_interval = "100ms"

{services}
"#,
            address = self.address,
            agent_port = self.agent_port,
            services = services.replace("{tag}", &self.tag).replace("{exe}", EXE)
        )
    }

    /// Starts `rejuv agent` with `config` (and `--keep-instances` if asked) and waits until it
    /// serves.
    pub fn start_agent(&mut self, config: &str, keep_instances: bool) -> usize {
        let n = self.agents.len();
        let cfg = self.path(&format!("rejuv-{n}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(self.path(&format!("agent-{n}.log"))).unwrap();
        let mut cmd = Command::new(EXE);
        cmd.args(["agent", "--config"])
            .arg(&cfg)
            .args(["--server", "s1", "--token-file"])
            .arg(self.path("token"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        if keep_instances {
            cmd.arg("--keep-instances");
        }
        let child = cmd.spawn().expect("rejuv agent starts");
        self.agents.push(child);
        let url = format!("{}/healthz", self.agent_url());
        let c = client();
        wait_for("the agent to serve", Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.agents[n].try_wait() {
                panic!("agent exited at once ({status}):\n{}", self.agent_log(n));
            }
            c.get(&url)
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        });
        n
    }

    pub fn agent_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.path(&format!("agent-{n}.log"))).unwrap_or_default()
    }

    /// SIGKILL to agent `n` alone (it hands nothing over); waits until it is gone.
    pub fn kill_agent(&mut self, n: usize) {
        let pid = self.agents[n].id() as i32;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let child = &mut self.agents[n];
        wait_for("the agent to be gone", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        });
    }

    /// SIGTERM to agent `n`; waits until it has exited.
    pub fn stop_agent(&mut self, n: usize) {
        let pid = self.agents[n].id() as i32;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let child = &mut self.agents[n];
        let status = wait_for("the agent to exit", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        });
        assert!(
            status.success(),
            "agent exited with {status}:\n{}",
            self.agent_log(n)
        );
    }

    pub fn state(&self) -> Value {
        let r = client()
            .get(format!("{}/v1/state", self.agent_url()))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json().unwrap()
    }

    /// The instance's entry in `/v1/state`.
    pub fn instance(&self, id: &str) -> Option<Value> {
        self.state()["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
    }

    pub fn put_instance(&self, id: &str, service: &str) -> Value {
        let r = client()
            .put(format!("{}/v1/instances/{id}", self.agent_url()))
            .bearer_auth(TOKEN)
            .json(&json!({ "epoch": 1, "service": service }))
            .send()
            .unwrap();
        let status = r.status();
        let body: Value = r.json().unwrap();
        assert!(status.is_success(), "{status} {body}");
        body
    }

    pub fn delete_instance(&self, id: &str) -> Value {
        let r = client()
            .delete(format!("{}/v1/instances/{id}?epoch=1", self.agent_url()))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        let status = r.status();
        let body: Value = r.json().unwrap();
        assert!(status.is_success(), "{status} {body}");
        body
    }

    /// Waits until the instance is `running` (its health check passed); its entry.
    pub fn wait_running(&self, id: &str, timeout: Duration) -> Value {
        wait_for(&format!("instance {id} running"), timeout, || {
            self.instance(id).filter(|i| i["state"] == "running")
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(a.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = a.wait();
        }
        for pid in tagged_pids(&self.tag) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The instance's address in its `/v1/state` entry.
pub fn addr_of(inst: &Value) -> SocketAddr {
    inst["addr"].as_str().unwrap().parse().unwrap()
}

/// `POST /counter` on the sample service; the counter after it.
pub fn bump(addr: SocketAddr) -> u64 {
    let r: Value = client()
        .post(format!("http://{addr}/counter"))
        .send()
        .unwrap_or_else(|e| panic!("POST {addr}/counter: {e}"))
        .json()
        .unwrap();
    r["counter"].as_u64().unwrap()
}

/// `GET /counter`, or `None` if the service does not answer.
pub fn counter(addr: SocketAddr) -> Option<u64> {
    let r: Value = client()
        .get(format!("http://{addr}/counter"))
        .timeout(Duration::from_secs(5))
        .send()
        .ok()?
        .json()
        .ok()?;
    r["counter"].as_u64()
}

/// Runs `docker` with `args`; its stdout, or a panic with its stderr.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The sample service as a `[services.NAME]` table of the process backend.
pub fn process_service(name: &str) -> String {
    format!(
        r#"
[services.{name}]
command = "{{exe}}"
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}"]
env = {{ REJUV_TEST_TAG = "{{tag}}" }}
health = {{ path = "/healthz", interval = "100ms", timeout = "2s" }}
stop_grace = "3s"
"#
    )
}
