//! A real cluster for tests: agents, proxy and controller as `rejuv` processes on loopback,
//! each in its own process group, all ended when the harness is dropped (even on failure).

use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

#[path = "../support/procs.rs"]
pub mod procs;
pub use procs::kill_env_tagged;

/// What a test cluster looks like.
#[derive(Clone)]
pub struct Spec {
    pub mode: &'static str,
    pub primaries: u32,
    pub spares: u32,
    pub capacity: u32,
    /// Bytes leaked per second by the sample service.
    pub leak_per_second: u64,
    pub leak_per_request: u64,
    pub limit: u64,
    pub memory_budget: u64,
    /// instance-rss threshold.
    pub above: f64,
    pub hold_down: &'static str,
    pub duplex_timeout: &'static str,
    pub handoff: bool,
    /// Address whose instances never become healthy (they sleep instead of serving).
    pub broken_address: Option<String>,
    /// Address whose instances print a config error and exit 3 at once, while the file
    /// `crash_marker(dir, address)` exists (the harness makes it; a test may remove it).
    pub crash_address: Option<String>,
    pub extra_toml: String,
    /// `rejuvenation.in_place` (on by default, as in production).
    pub in_place: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            mode: "active-standby",
            primaries: 2,
            spares: 1,
            capacity: 4,
            leak_per_second: 0,
            leak_per_request: 0,
            limit: 0,
            memory_budget: 256 * 1024 * 1024,
            above: 0.5,
            hold_down: "1s",
            duplex_timeout: "10s",
            handoff: true,
            broken_address: None,
            crash_address: None,
            extra_toml: String::new(),
            in_place: true,
        }
    }
}

pub struct Server {
    pub id: String,
    pub agent: SocketAddr,
    pub proc: Option<Child>,
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub token: String,
    /// The builtin proxy's admin token (`auth.proxy_token_file`).
    pub proxy_token: String,
    pub controller_addr: SocketAddr,
    pub admin: SocketAddr,
    pub front: SocketAddr,
    pub servers: Vec<Server>,
    pub proxy: Option<Child>,
    pub controller: Option<Child>,
    tag: String,
    http: reqwest::blocking::Client,
}

pub fn free_port(ip: IpAddr) -> u16 {
    rejuv_net::free_port(ip).expect("a free port")
}

pub fn free_range(ip: IpAddr, n: u16) -> [u16; 2] {
    rejuv_net::free_range(ip, n).expect("a free port range")
}

/// Writes a token file as an operator must: readable by its owner only (the parts refuse
/// others).
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The file whose presence makes the instances on `address` crash (see `Spec::crash_address`).
pub fn crash_marker(dir: &Path, address: &str) -> PathBuf {
    dir.join(format!("crash-{address}"))
}

pub fn spawn(cmd: &mut Command, log: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .stdin(Stdio::null());
    cmd.process_group(0);
    cmd.spawn().expect("spawning rejuv")
}

fn kill_group(child: &mut Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

/// Waits up to `limit` for `f` to return `Some`, polling; panics with `what` otherwise.
/// Config text of a veto hook before the switch that sleeps `secs`: it holds a workflow at
/// the gate (phase `gating`) that long, where the gate would otherwise open at once.
pub fn hold_at_gate(secs: u32) -> String {
    format!(
        "\n[[hooks]]\nname = \"warm-up\"\nstep = \"draining\"\nwhen = \"before\"\nveto = true\ncommand = [\"/bin/sleep\", \"{secs}\"]\n"
    )
}

pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Harness {
    /// Writes the config and starts agents and proxy (not the controller).
    pub fn new(spec: &Spec) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rejuv-it-")
            .tempdir()
            .unwrap();
        let tag = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let token: String = (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let token_path = dir.path().join("token");
        write_secret(&token_path, &token);
        let proxy_token: String = (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let proxy_token_path = dir.path().join("proxy.token");
        write_secret(&proxy_token_path, &proxy_token);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let controller_addr = SocketAddr::new(lo, free_port(lo));
        let admin = SocketAddr::new(lo, free_port(lo));
        let front = SocketAddr::new(lo, free_port(lo));
        let service_cmd = format!(
            "{EXE} sample-service --listen {{address}}:{{port}} --instance-id {{instance}} \
             --leak-per-second {} --leak-per-request {} --limit {}",
            spec.leak_per_second, spec.leak_per_request, spec.limit
        );
        let mut script = match &spec.broken_address {
            Some(bad) => {
                format!("if [ {{address}} = {bad} ]; then exec sleep 600; fi; exec {service_cmd}")
            }
            None => format!("exec {service_cmd}"),
        };
        if let Some(bad) = &spec.crash_address {
            let marker = crash_marker(dir.path(), bad);
            std::fs::write(&marker, "").unwrap();
            script = format!(
                "if [ -e {} ] && [ {{address}} = {bad} ]; then echo web: reading /etc/web.conf: no such file >&2; exit 3; fi; {script}",
                marker.display()
            );
        }
        let handoff = if spec.handoff {
            r#"handoff = { export = "/_rejuv/state", import = "/_rejuv/state", hold = "3s" }"#
        } else {
            ""
        };
        let mut toml = format!(
            r#"
[cluster]
mode = "{mode}"

[auth]
agent_token_file = "{tp}"
api_token_file = "{tp}"
proxy_token_file = "{ptp}"

[controller]
listen = "{controller_addr}"
poll_interval = "300ms"
agent_timeout = "2s"

[policy]
hold_down = "{hold}"
rules = [ {{ resource = "instance-rss", above = {above} }} ]

[gate]
max_load = 1000.0
min_running_time = "1s"
max_wait = "5s"

[rejuvenation]
actions = ["stop-instances", "clear-scratch", "restart-agent"]
duplex_timeout = "{dt}"
verify_timeout = "20s"
failed_target_cooldown = "60s"
in_place = {in_place}

[agent]
sample_interval = "300ms"

[traffic]
adapter = "builtin"
admin = "{admin}"
listen = {{ web = "{front}" }}

[store]
path = "{store}"

[services.web]
command = "/bin/sh"
args = ["-c", "{script}"]
env = {{ REJUV_LOG = "warn", REJUV_TEST_TAG = "{tag}" }}
health = {{ path = "/healthz", interval = "200ms", timeout = "1s" }}
drain = "5s"
stop_grace = "2s"
{handoff}
{extra}
"#,
            mode = spec.mode,
            tp = token_path.display(),
            ptp = proxy_token_path.display(),
            hold = spec.hold_down,
            above = spec.above,
            dt = spec.duplex_timeout,
            in_place = spec.in_place,
            store = dir.path().join("rejuv.db").display(),
            extra = spec.extra_toml,
        );
        let mut servers = Vec::new();
        for i in 0..spec.primaries + spec.spares {
            let id = format!("s{}", i + 1);
            let ip: IpAddr = format!("127.0.0.{}", 2 + i).parse().unwrap();
            let agent = SocketAddr::new(ip, free_port(ip));
            let range = free_range(ip, 8);
            let primary = i < spec.primaries;
            toml.push_str(&format!(
                r#"
[[servers]]
id = "{id}"
address = "{ip}"
agent = "{agent}"
role = "{role}"
capacity = {cap}
port_range = [{lo}, {hi}]
memory_budget_bytes = {budget}
instances = {inst}
data_dir = "{data}"
"#,
                role = if primary { "primary" } else { "spare" },
                cap = spec.capacity,
                lo = range[0],
                hi = range[1],
                budget = spec.memory_budget,
                inst = if primary { r#"["web"]"# } else { "[]" },
                data = dir.path().join("agents").join(&id).display(),
            ));
            servers.push(Server {
                id,
                agent,
                proc: None,
            });
        }
        let config = dir.path().join("rejuv.toml");
        std::fs::write(&config, &toml).unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut h = Harness {
            dir,
            config,
            token,
            proxy_token,
            controller_addr,
            admin,
            front,
            servers,
            proxy: None,
            controller: None,
            tag,
            http,
        };
        for i in 0..h.servers.len() {
            h.start_agent(i);
        }
        for i in 0..h.servers.len() {
            let url = format!("http://{}/healthz", h.servers[i].agent);
            h.wait_ok(&url, "agent /healthz");
        }
        let mut cmd = Command::new(EXE);
        cmd.args(["proxy", "--config"]).arg(&h.config);
        h.proxy = Some(spawn(&mut cmd, &h.dir.path().join("logs/proxy.log")));
        let url = format!("http://{}/healthz", h.admin);
        h.wait_ok(&url, "proxy /healthz");
        h
    }

    pub fn start_agent(&mut self, i: usize) {
        let s = &self.servers[i];
        let mut cmd = Command::new(EXE);
        cmd.args(["agent", "--config"])
            .arg(&self.config)
            .args(["--server", &s.id]);
        let log = self.dir.path().join(format!("logs/agent-{}.log", s.id));
        self.servers[i].proc = Some(spawn(&mut cmd, &log));
    }

    pub fn start_controller(&mut self, env: &[(&str, &str)]) {
        self.start_controller_with(&[], env);
    }

    /// Starts the controller with extra command-line arguments (e.g. `--dry-run`).
    pub fn start_controller_with(&mut self, args: &[&str], env: &[(&str, &str)]) {
        let mut cmd = Command::new(EXE);
        cmd.args(["controller", "--config"])
            .arg(&self.config)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.controller = Some(spawn(
            &mut cmd,
            &self.dir.path().join("logs/controller.log"),
        ));
        let url = format!("http://{}/healthz", self.controller_addr);
        self.wait_ok(&url, "controller /healthz");
    }

    /// Waits for the running controller process to exit on its own (e.g. at a failpoint).
    pub fn wait_controller_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let c = self.controller.as_mut().expect("controller running");
        let status = wait_for("the controller to exit", limit, || c.try_wait().unwrap());
        self.controller = None;
        status
    }

    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            kill_group(&mut c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    fn wait_ok(&self, url: &str, what: &str) {
        wait_for(what, Duration::from_secs(30), || {
            self.http
                .get(url)
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        });
    }

    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::Response {
        self.http
            .request(method, format!("http://{}{}", self.controller_addr, path))
            .bearer_auth(&self.token)
            .send()
            .expect("controller API")
    }

    pub fn status(&self) -> Value {
        self.api(reqwest::Method::GET, "/v1/status")
            .json()
            .expect("status json")
    }

    pub fn events(&self) -> Vec<Value> {
        let v: Value = self
            .api(reqwest::Method::GET, "/v1/events?after=0&limit=1000")
            .json()
            .unwrap();
        v.as_array().cloned().unwrap_or_default()
    }

    pub fn try_status(&self) -> Option<Value> {
        self.http
            .get(format!("http://{}/v1/status", self.controller_addr))
            .bearer_auth(&self.token)
            .send()
            .ok()?
            .json()
            .ok()
    }

    /// Waits until the front end answers `GET /` with 200.
    pub fn wait_serving(&self) {
        let url = format!("http://{}/", self.front);
        self.wait_ok(&url, "the front end to serve");
    }

    pub fn completed(&self) -> u64 {
        self.try_status()
            .and_then(|s| s["completed_total"].as_u64())
            .unwrap_or(0)
    }

    /// Pauses new workflows and waits (bounded) for the running ones to finish, so that no
    /// state is mid-move when a test counts.
    pub fn pause_and_settle(&self) {
        assert_eq!(self.api(reqwest::Method::POST, "/v1/pause").status(), 202);
        wait_for(
            "running workflows to finish after pausing",
            Duration::from_secs(40),
            || {
                self.status()["workflows"]
                    .as_array()
                    .unwrap()
                    .is_empty()
                    .then_some(())
            },
        );
    }

    /// Sum of the counters of the instances taking traffic.
    pub fn counter_sum(&self) -> u64 {
        let s = self.status();
        let mut sum = 0;
        for srv in s["servers"].as_array().unwrap() {
            for i in srv["instances"].as_array().unwrap() {
                if i["traffic"] == "serving" {
                    let addr = i["addr"].as_str().unwrap();
                    let v: Value = self
                        .http
                        .get(format!("http://{addr}/counter"))
                        .send()
                        .unwrap()
                        .json()
                        .unwrap();
                    sum += v["counter"].as_u64().unwrap();
                }
            }
        }
        sum
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// Prints every log, for a failing test's output.
    pub fn dump_logs(&self) {
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("logs")) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("----- {} (last 40 lines)", e.path().display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }

    /// Kills every process whose environment carries this harness's tag (instances whose
    /// agent died without stopping them).
    fn kill_tagged(&self) {
        kill_env_tagged(&self.tag_env());
    }

    /// Points the controller's `[store]` at etcd (`endpoint`, key `prefix`, lease `ttl`).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub fn use_etcd(&self, endpoint: &str, prefix: &str, ttl: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let start = text
            .find("[store]\npath = ")
            .expect("the harness writes [store]");
        let end = start + text[start..].find("\n\n").expect("end of [store]");
        let store = format!(
            "[store]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"{prefix}\"\nlease_ttl = \"{ttl}\""
        );
        let text = format!("{}{}{}", &text[..start], store, &text[end..]);
        std::fs::write(&self.config, text).unwrap();
    }

    /// `REJUV_TEST_TAG=<tag>`: in the environment of every service process of this harness.
    pub fn tag_env(&self) -> String {
        format!("REJUV_TEST_TAG={}", self.tag)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.kill_controller();
        if let Some(mut p) = self.proxy.take() {
            kill_group(&mut p, nix::sys::signal::Signal::SIGKILL);
            let _ = p.wait();
        }
        for s in &mut self.servers {
            if let Some(mut a) = s.proc.take() {
                kill_group(&mut a, nix::sys::signal::Signal::SIGTERM);
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until && a.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                kill_group(&mut a, nix::sys::signal::Signal::SIGKILL);
                let _ = a.wait();
            }
        }
        self.kill_tagged();
    }
}

/// A bounded load in the background: fixed rate, GETs and every 5th a counter POST.
pub struct Load {
    handle: Option<std::thread::JoinHandle<rejuv_sample::loadgen::LoadReport>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Load {
    pub fn start(target: SocketAddr, rps: u32, limit: Duration) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(rejuv_sample::loadgen::run(
                rejuv_sample::loadgen::LoadOptions {
                    target,
                    rps,
                    duration: limit,
                    connections: 4,
                    post_every: 5,
                    timeout: Duration::from_secs(5),
                },
                s,
            ))
            .expect("load generator")
        });
        Self {
            handle: Some(handle),
            stop,
        }
    }

    pub fn finish(mut self) -> rejuv_sample::loadgen::LoadReport {
        self.stop.cancel();
        self.handle.take().unwrap().join().expect("load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
