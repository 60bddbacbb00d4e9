//! `rejuv agent` and the small `rejuv-agent` binary: with `rejuv-agent` beside `rejuv`, `rejuv
//! agent` replaces itself with it (same PID) and a `restart-agent` action re-executes it;
//! with `rejuv` alone, the agent runs in the `rejuv` process. Same flags, same exit codes.
//!
//! Every agent runs in its own process group, ended (SIGKILL) when its guard drops, even when
//! an assertion fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");
const SMALL: &str = env!("CARGO_BIN_EXE_rejuv-agent");
const TOKEN: &str = "agent-binary-test-token-0123456789";

/// Waits until `probe` yields a value; panics with `what` after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
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

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A temp dir with a token file and the config of one server with no instances.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("agent.token");
        std::fs::write(&token, TOKEN).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.path().join("rejuv.toml"),
            format!(
                r#"
[cluster]
mode = "active-active"

[auth]
agent_token_file = "{token}"

[traffic]
admin = "127.0.0.1:1"

[agent]
sample_interval = "200ms"

[services.idle]
command = "/bin/true"
health = {{ path = "/healthz", interval = "2s", timeout = "1s" }}

[[servers]]
id = "s1"
address = "127.0.0.1"
agent = "127.0.0.1:{port}"
role = "primary"
port_range = [{low}, {low}]
data_dir = "{data}"
"#,
                token = token.display(),
                low = port.wrapping_add(1).max(1024),
                data = dir.path().join("data").display(),
            ),
        )
        .unwrap();
        Self { dir, port }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("rejuv.toml")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `exe agent --config ... --server s1` in a process group of its own, serving.
    fn start(&self, exe: &Path) -> Agent {
        let log = std::fs::File::create(self.log()).unwrap();
        let child = Command::new(exe)
            .args(["agent", "--config"])
            .arg(self.config())
            .args(["--server", "s1"])
            .env("REJUV_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("rejuv agent starts");
        let mut agent = Agent(child);
        let c = client();
        wait_for(
            "the agent to serve /healthz",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = agent.0.try_wait() {
                    panic!("agent exited at once ({status}):\n{}", self.log_text());
                }
                c.get(self.url("/healthz"))
                    .send()
                    .ok()
                    .filter(|r| r.status().is_success())
            },
        );
        agent
    }
}

/// A running agent; its process group is killed when dropped.
struct Agent(Child);

impl Agent {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// The file the process runs now.
    fn exe(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/exe", self.pid())).unwrap()
    }

    /// SIGTERM, then the exit status.
    fn stop(&mut self) -> ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let child = &mut self.0;
        wait_for("the agent to exit", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.pid()),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.0.wait();
        }
    }
}

fn canonical(p: impl AsRef<Path>) -> PathBuf {
    std::fs::canonicalize(p).unwrap()
}

#[test]
fn both_binaries_are_built_side_by_side() {
    assert_eq!(
        canonical(EXE).parent(),
        canonical(SMALL).parent(),
        "`rejuv agent` looks for rejuv-agent beside rejuv"
    );
}

#[test]
fn rejuv_agent_becomes_the_small_binary_and_restarts_as_it() {
    let s = Setup::new();
    let mut agent = s.start(Path::new(EXE));
    assert_eq!(
        canonical(agent.exe()),
        canonical(SMALL),
        "same PID, small binary"
    );
    let c = client();
    let metrics = c.get(s.url("/metrics")).bearer_auth(TOKEN).send().unwrap();
    assert!(metrics.status().is_success());
    assert!(metrics.text().unwrap().contains("rejuv_agent_"));

    // A restart-agent action: the answer, then the same process re-executes itself.
    let r = c
        .post(s.url("/v1/rejuvenate"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "epoch": 1, "run_id": "r1", "actions": ["restart-agent"] }))
        .send()
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().unwrap();
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(body["actions"][0]["outcome"], "done", "{body}");
    wait_for(
        "the re-executed agent to serve again",
        Duration::from_secs(30),
        || {
            (s.log_text().matches("agent serving").count() == 2
                && c.get(s.url("/healthz"))
                    .send()
                    .is_ok_and(|r| r.status().is_success()))
            .then_some(())
        },
    );
    assert!(
        matches!(agent.0.try_wait(), Ok(None)),
        "the restart keeps the process:\n{}",
        s.log_text()
    );
    assert_eq!(canonical(agent.exe()), canonical(SMALL));

    let status = agent.stop();
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
}

#[test]
fn rejuv_alone_runs_the_agent_in_its_own_process() {
    let s = Setup::new();
    // `rejuv` in a directory of its own: no rejuv-agent beside it. A hard link keeps the test
    // from copying the binary when the temp dir is on the same file system.
    let lone = tempfile::tempdir_in(canonical(EXE).parent().unwrap()).unwrap();
    let exe = lone.path().join("rejuv");
    if std::fs::hard_link(EXE, &exe).is_err() {
        std::fs::copy(EXE, &exe).unwrap();
    }
    let mut agent = s.start(&exe);
    assert_eq!(canonical(agent.exe()), canonical(&exe));
    let metrics = client()
        .get(s.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert!(metrics.status().is_success());
    let status = agent.stop();
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
}

#[test]
fn both_ways_refuse_a_bad_config_with_exit_2_and_bad_usage_with_exit_2() {
    let s = Setup::new();
    std::fs::write(s.config(), "[cluster]\nmode = \"sideways\"\n").unwrap();
    for (exe, args) in [(EXE, vec!["agent", "--config"]), (SMALL, vec!["--config"])] {
        let out = Command::new(exe)
            .args(&args)
            .arg(s.config())
            .args(["--server", "s1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{exe}: {stderr}");
        assert!(stderr.starts_with("rejuv: error:"), "{exe}: {stderr}");
        // A flag neither knows.
        let out = Command::new(exe)
            .args(&args)
            .arg(s.config())
            .args(["--server", "s1", "--no-such-flag"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{exe}");
    }
    let help = Command::new(SMALL).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--config",
        "--server",
        "--token-file",
        "--data-dir",
        "--keep-instances",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}
