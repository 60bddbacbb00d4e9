//! `rejuv demo --hosts docker` end to end (the real binary, a real Docker Engine): every
//! server a container host on a private network. A short run must serve without a failed
//! request, rejuvenate at least twice with at least one real host restart (a new boot
//! identity the controller saw), read the hosts' memory from their containers' limits, and
//! leave no container or network behind, also when it is stopped with SIGTERM.
//!
//! Skipped, saying so, only where `docker info` fails (no Docker Engine). Whatever happens,
//! the test removes the containers and the network of its runs and the images it built.

use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");
/// The demo's host containers' memory limit (`--memory`).
const HOST_MEMORY: u64 = 640 * 1024 * 1024;
/// One demo at a time: the machine has few cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn docker_works() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker_out(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn host_images() -> Vec<String> {
    docker_out(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "rejuv-host",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .to_string()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The run id of a demo's hosts, from its `private network rejuv-hosts-RUN` line.
fn run_of(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out).ok()?;
    let at = text.find("private network rejuv-hosts-")? + "private network rejuv-hosts-".len();
    Some(
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect(),
    )
}

/// A `--hosts docker` demo in its own process group. Dropped, it is sent SIGTERM (and
/// SIGKILLed after 60 s); then whatever of its run is left (containers, network) and the
/// host images that were not there before are removed.
struct Demo {
    child: Child,
    out: PathBuf,
    images_before: Vec<String>,
}

impl Demo {
    fn start(args: &[&str], dir: &Path) -> Self {
        let images_before = host_images();
        let out = dir.join("demo.out");
        let log = std::fs::File::create(&out).expect("output file");
        let mut cmd = Command::new(EXE);
        cmd.arg("demo")
            .args(["--hosts", "docker", "--listen", &free_addr()])
            .args(args)
            .stdout(Stdio::from(log.try_clone().expect("output file")))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null())
            .process_group(0);
        let child = cmd.spawn().expect("starting rejuv demo");
        Self {
            child,
            out,
            images_before,
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the demo to exit; its exit status.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Waits up to `limit` for the demo to end, which it must do with success, and reads its
    /// summary at `path`.
    fn finished_summary(&mut self, path: &Path, limit: Duration) -> Value {
        let status = self.wait(limit).unwrap_or_else(|| {
            panic!(
                "the demo did not end within {limit:?}:\n{}",
                tail(&self.out)
            )
        });
        assert!(
            status.success(),
            "the demo failed: {status}\n{}",
            tail(&self.out)
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("no summary at {}: {e}\n{}", path.display(), tail(&self.out))
        });
        serde_json::from_str(&text).expect("summary JSON")
    }

    fn sigterm(&self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
    }

    /// What of this run Docker still holds: (containers, networks).
    fn left_behind(&self) -> (String, String) {
        let Some(run) = run_of(&self.out) else {
            return (String::new(), String::new());
        };
        let filter = format!("label=rejuv.host={run}");
        (
            docker_out(&["ps", "-aq", "--filter", &filter]),
            docker_out(&["network", "ls", "-q", "--filter", &filter]),
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if self.running() {
            self.sigterm();
            if self.wait(Duration::from_secs(60)).is_none() {
                let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
        let (containers, networks) = self.left_behind();
        for id in containers.split_whitespace() {
            let _ = docker_out(&["rm", "-f", id]);
        }
        for id in networks.split_whitespace() {
            let _ = docker_out(&["network", "rm", id]);
        }
        for image in host_images() {
            if !self.images_before.contains(&image) {
                let _ = docker_out(&["rmi", "-f", &image]);
            }
        }
    }
}

/// Waits up to `limit` for `path` to exist while the demo runs.
fn wait_for_file(demo: &mut Demo, path: &Path, limit: Duration) {
    let until = Instant::now() + limit;
    while !path.exists() {
        assert!(
            demo.running(),
            "the demo ended before {} appeared:\n{}",
            path.display(),
            tail(&demo.out)
        );
        assert!(
            Instant::now() < until,
            "{} did not appear within {limit:?}:\n{}",
            path.display(),
            tail(&demo.out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With host containers the operator API is HTTPS at the URL in `controller.url`, verified
/// with the demo's CA; no token gets 401, a `read` token reads and may not act (403, naming
/// the role it lacks).
fn operator_api_is_https_with_roles(demo: &mut Demo, state: &Path) {
    let url = std::fs::read_to_string(state.join("controller.url")).expect("controller.url");
    assert!(
        url.ends_with('\n') && url.lines().count() == 1,
        "one line: {url:?}"
    );
    let url = url.trim_end();
    assert!(
        url.starts_with("https://127.0.0.1:") && !url.ends_with('/'),
        "controller.url: {url:?}"
    );
    let read = std::fs::read_to_string(state.join("tokens/read.token")).expect("read token");
    let operate =
        std::fs::read_to_string(state.join("tokens/operate.token")).expect("operate token");
    assert_ne!(read.trim(), operate.trim());
    let client = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(
            rejuv_net::tls::api_client_config(&state.join("tls/ca.pem")).expect("the demo's CA"),
        )
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let until = Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("{url}/healthz"))
        .send()
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            demo.running() && Instant::now() < until,
            "the controller did not answer at {url} within 60 s:\n{}",
            tail(&demo.out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let code = |r: reqwest::blocking::RequestBuilder| {
        r.send().expect("an answer over HTTPS").status().as_u16()
    };
    assert_eq!(code(client.get(format!("{url}/v1/status"))), 401);
    assert_eq!(
        code(
            client
                .get(format!("{url}/v1/status"))
                .bearer_auth(read.trim())
        ),
        200
    );
    let refused = client
        .post(format!("{url}/v1/pause"))
        .bearer_auth(read.trim())
        .send()
        .expect("an answer");
    assert_eq!(refused.status().as_u16(), 403);
    let why = refused.text().unwrap_or_default();
    assert!(why.contains("operate"), "the 403 names the role: {why}");
    // Plain HTTP is not served there.
    assert!(
        reqwest::blocking::get(url.replace("https://", "http://") + "/healthz")
            .map_or(true, |r| !r.status().is_success())
    );
}

fn skip_without_docker() -> bool {
    if docker_works() {
        return false;
    }
    eprintln!("SKIPPED: `docker info` failed: no Docker Engine to run host containers on");
    true
}

#[test]
fn hosts_demo_restarts_a_host_and_leaves_nothing_behind() {
    if skip_without_docker() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("a temp dir");
    let state = tmp.path().join("state");
    let summary = tmp.path().join("summary.json");
    let state_s = state.display().to_string();
    let summary_s = summary.display().to_string();
    // Faster aging than the default: every web server ages within about 25 s, so one is
    // rejuvenated a second time (its host restarted) well within the run.
    let mut demo = Demo::start(
        &[
            "--duration",
            "80s",
            "--leak-per-second",
            "1048576",
            "--state-dir",
            &state_s,
            "--summary-json",
            &summary_s,
        ],
        tmp.path(),
    );

    // While it runs: fleet.json names the agents, each a host container whose memory is its
    // own limit.
    let fleet = state.join("fleet.json");
    wait_for_file(&mut demo, &fleet, Duration::from_secs(180));
    let f: Value = serde_json::from_str(&std::fs::read_to_string(&fleet).expect("fleet.json"))
        .expect("fleet.json is JSON");
    let agents: Vec<String> = f["agents"]
        .as_array()
        .expect("fleet.json has agents")
        .iter()
        .map(|a| a.as_str().expect("an address").to_string())
        .collect();
    assert_eq!(agents.len(), 4, "{f}");
    let run = run_of(&demo.out).expect("the demo names its hosts' network");
    let running = docker_out(&["ps", "-q", "--filter", &format!("label=rejuv.host={run}")]);
    assert_eq!(running.lines().count(), 4, "host containers: {running:?}");
    let token = std::fs::read_to_string(state.join("token")).expect("the demo's token");
    // The agents talk mutual TLS: this test calls them as the controller does, with the
    // demo's controller certificate; a client without a certificate of the fleet gets no
    // answer.
    let tls_dir = state.join("tls");
    let tls = rejuv_net::tls::Tls::load(rejuv_core::config::TlsFiles {
        ca: tls_dir.join("ca.pem"),
        cert: tls_dir.join("controller.pem"),
        key: tls_dir.join("controller.key"),
        revoked: None,
    })
    .expect("the demo's controller certificate");
    let http = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls.client_config(rejuv_net::tls::PeerCheck {
            role: Some(rejuv_net::tls::Role::Agent),
            name: None,
        }))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let anonymous = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(
            rejuv_net::tls::api_client_config(&tls_dir.join("ca.pem")).expect("the demo's CA"),
        )
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    assert!(
        anonymous
            .get(format!("https://{}/healthz", agents[0]))
            .send()
            .is_err(),
        "an agent answered a client without a certificate of the fleet"
    );
    let st: Value = http
        .get(format!("https://{}/v1/state", agents[0]))
        .bearer_auth(token.trim())
        .send()
        .and_then(|r| r.json())
        .expect("an agent's state from this machine");
    assert_eq!(
        st["sample"]["mem_total_bytes"].as_u64(),
        Some(HOST_MEMORY),
        "the host's memory is its container's limit: {st:#}"
    );
    assert!(
        !st["boot_id"].as_str().unwrap_or_default().is_empty(),
        "{st:#}"
    );

    operator_api_is_https_with_roles(&mut demo, &state);

    let s = demo.finished_summary(&summary, Duration::from_secs(240));
    let n = |k: &str| {
        s[k].as_u64()
            .unwrap_or_else(|| panic!("summary has no number {k}: {s:#}"))
    };
    let ctx = format!("summary: {s:#}\noutput:\n{}", tail(&demo.out));
    assert_eq!(s["hosts"], "docker", "{ctx}");
    assert_eq!(
        s["tls"], true,
        "the parts talk mutual TLS across the hosts; {ctx}"
    );
    assert!(n("requests_total") > 1000, "too little load ran; {ctx}");
    assert_eq!(n("requests_failed"), 0, "requests failed; {ctx}");
    assert_eq!(n("invariant_violations"), 0, "{ctx}");
    assert!(n("rejuvenations_completed") >= 2, "{ctx}");
    assert!(n("host_restarts") >= 1, "no host restart was seen; {ctx}");
    // No state lost: every counter POST that succeeded is in the serving instances' counters.
    assert_eq!(
        s["counter"]["actual"], s["counter"]["expected"],
        "counter state lost across hand-offs; {ctx}"
    );
    let actions: Vec<(String, String, String)> = s["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .filter_map(|w| w["report"]["actions"].as_array())
        .flatten()
        .map(|a| {
            let t = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (t("action"), t("outcome"), t("detail"))
        })
        .collect();
    assert!(
        actions
            .iter()
            .any(|(a, o, _)| a == "restart-host" && o == "done"),
        "no workflow restarted its host; {ctx}"
    );
    assert!(
        actions
            .iter()
            .filter(|(a, _, _)| a == "drop-caches")
            .all(|(_, o, d)| o == "skipped" && d.contains("read-only")),
        "a container cannot drop the machine's caches; {ctx}"
    );
    assert!(!fleet.exists(), "fleet.json outlived the hosts");
    let (containers, networks) = demo.left_behind();
    assert!(
        containers.is_empty() && networks.is_empty(),
        "left behind: containers {containers:?}, networks {networks:?}"
    );
    println!(
        "requests_total={} rejuvenations_completed={} host_restarts={}",
        n("requests_total"),
        n("rejuvenations_completed"),
        n("host_restarts")
    );
}

#[test]
fn hosts_demo_stopped_with_sigterm_leaves_nothing_behind() {
    if skip_without_docker() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("a temp dir");
    let state = tmp.path().join("state");
    let state_s = state.display().to_string();
    let mut demo = Demo::start(&["--duration", "10m", "--state-dir", &state_s], tmp.path());
    wait_for_file(
        &mut demo,
        &state.join("fleet.json"),
        Duration::from_secs(180),
    );
    let until = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&demo.out)
        .unwrap_or_default()
        .contains("front end serving")
    {
        assert!(
            demo.running() && Instant::now() < until,
            "the front end did not serve within 60 s of the hosts:\n{}",
            tail(&demo.out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = Instant::now();
    demo.sigterm();
    let status = demo.wait(Duration::from_secs(15));
    assert!(
        status.is_some(),
        "the demo did not end within 15 s of SIGTERM:\n{}",
        tail(&demo.out)
    );
    let (containers, networks) = demo.left_behind();
    assert!(
        containers.is_empty() && networks.is_empty(),
        "left behind after SIGTERM: containers {containers:?}, networks {networks:?}\n{}",
        tail(&demo.out)
    );
    println!("ended {:?} after SIGTERM", sent.elapsed());
}

/// The chaos demo across hosts: two controllers on etcd, the leader killed, hosts paused,
/// cut off and crashed, the leader cut off etcd; no request fails, no invariant breaks, and
/// every kind of fault is injected. Needs etcd on PATH and root (iptables in the hosts'
/// namespaces); skipped, saying so, without them.
#[test]
fn hosts_chaos_demo_injects_every_fault_kind_and_fails_no_request() {
    if skip_without_docker() {
        return;
    }
    if !nix::unistd::geteuid().is_root() || Command::new("etcd").arg("--version").output().is_err()
    {
        eprintln!("SKIPPED: needs root and etcd on PATH (Debian package etcd-server)");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("a temp dir");
    let state = tmp.path().join("state");
    let summary = tmp.path().join("summary.json");
    let state_s = state.display().to_string();
    let summary_s = summary.display().to_string();
    let mut demo = Demo::start(
        &[
            "--store",
            "etcd",
            "--controllers",
            "2",
            "--chaos",
            "--chaos-seed",
            "7",
            "--duration",
            "130s",
            "--state-dir",
            &state_s,
            "--summary-json",
            &summary_s,
        ],
        tmp.path(),
    );
    let s = demo.finished_summary(&summary, Duration::from_secs(420));
    let ctx = format!("summary: {s:#}\noutput:\n{}", tail(&demo.out));
    let n = |k: &str| {
        s[k].as_u64()
            .unwrap_or_else(|| panic!("summary has no number {k}; {ctx}"))
    };
    assert!(n("requests_total") > 1000, "too little load ran; {ctx}");
    assert_eq!(n("requests_failed"), 0, "requests failed; {ctx}");
    assert_eq!(n("invariant_violations"), 0, "{ctx}");
    assert!(n("rejuvenations_completed") >= 1, "{ctx}");
    for kind in [
        "controller-kill",
        "host-kill",
        "host-pause",
        "host-partition",
        "etcd-partition",
    ] {
        assert!(
            s["faults_injected"][kind].as_u64().unwrap_or(0) >= 1,
            "no {kind} injected; {ctx}"
        );
    }
    let (containers, networks) = demo.left_behind();
    assert!(
        containers.is_empty() && networks.is_empty(),
        "left behind: containers {containers:?}, networks {networks:?}"
    );
    println!("faults_injected={}", s["faults_injected"]);
}

#[test]
fn hosts_docker_with_backend_docker_is_refused() {
    let out = Command::new(EXE)
        .args(["demo", "--hosts", "docker", "--backend", "docker"])
        .output()
        .expect("running rejuv demo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--hosts docker --backend docker"), "{err}");
}
