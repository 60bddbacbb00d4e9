//! The sample service as a real child process: dies by SIGKILL past its leak limit (what an
//! OOM kill looks like to a supervisor), and drains on SIGTERM.

use crate::common::{client, within};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const MIB: u64 = 1 << 20;

/// A child in its own process group; the whole group is killed when dropped.
struct ServiceProcess {
    child: Child,
    pgid: Pid,
    addr: SocketAddr,
}

impl ServiceProcess {
    async fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rejuv-sample-service"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn rejuv-sample-service");
        let pgid = Pid::from_raw(child.id().expect("pid") as i32);
        let stdout = child.stdout.take().expect("stdout");
        // Build the guard before waiting, so a failure below still kills the child.
        let mut guard = Self {
            child,
            pgid,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let mut line = String::new();
        within(
            10,
            "the service to print its address",
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("read stdout");
        guard.addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        guard
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn wait(&mut self, what: &str) -> ExitStatus {
        within(10, what, self.child.wait()).await.expect("wait")
    }

    async fn stderr(&mut self) -> String {
        let mut s = String::new();
        let mut err = self.child.stderr.take().expect("stderr");
        within(5, "reading stderr", err.read_to_string(&mut s))
            .await
            .expect("stderr");
        s
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dies_by_sigkill_once_past_the_limit_by_requests() {
    let mut svc = ServiceProcess::spawn(&[
        "--instance-id",
        "doomed",
        "--leak-per-request",
        &MIB.to_string(),
        "--limit",
        &(8 * MIB).to_string(),
    ])
    .await;
    let c = client();
    let mut ok = 0;
    for _ in 0..20 {
        match c.get(svc.url("/")).send().await {
            Ok(resp) if resp.status() == 200 => ok += 1,
            Ok(resp) => panic!("unexpected status {}", resp.status()),
            Err(_) => break,
        }
    }
    // 8 MiB is the limit: the 9th request leaks past it and never gets an answer.
    assert_eq!(ok, 8, "requests answered before the kill");
    let status = svc.wait("the service to die past its limit").await;
    assert_eq!(
        status.signal(),
        Some(Signal::SIGKILL as i32),
        "exit status {status:?}"
    );
    assert_eq!(status.code(), None);
    let stderr = svc.stderr().await;
    assert!(
        stderr.contains("past the limit") && stderr.contains("doomed"),
        "stderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dies_by_sigkill_once_past_the_limit_by_time() {
    let mut svc = ServiceProcess::spawn(&[
        "--leak-per-second",
        &(40 * MIB).to_string(),
        "--limit",
        &(10 * MIB).to_string(),
    ])
    .await;
    let status = svc
        .wait("the service to leak past its limit over time")
        .await;
    assert_eq!(
        status.signal(),
        Some(Signal::SIGKILL as i32),
        "exit status {status:?}"
    );
    assert!(svc.stderr().await.contains("past the limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut svc = ServiceProcess::spawn(&["--leak-per-request", "1024"]).await;
    let resp = client()
        .get(svc.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    nix::sys::signal::kill(svc.pgid, Signal::SIGTERM).expect("SIGTERM");
    let status = svc.wait("the service to exit after SIGTERM").await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_delay_flag_listens_at_once_and_turns_healthy_later() {
    let svc = ServiceProcess::spawn(&["--startup-delay", "1500ms"]).await;
    let c = client();
    // "listening on" was printed: the port answers, not ready yet (or just turned ready on a
    // very slow machine: then the uptime says so).
    let first = c.get(svc.url("/healthz")).send().await.expect("healthz");
    let stats: serde_json::Value = c
        .get(svc.url("/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON");
    if stats["uptime_ms"].as_u64().expect("uptime") < 1_400 {
        assert_eq!(first.status(), 503);
        assert_eq!(stats["ready"], false);
    }
    within(10, "the service to turn healthy", async {
        while c
            .get(svc.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status()
            != 200
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_startup_delay_is_refused_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_rejuv-sample-service"))
        .args(["--listen", "127.0.0.1:0", "--startup-delay", "soon"])
        .output()
        .await
        .expect("run rejuv-sample-service");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--startup-delay") && err.contains("soon"),
        "{err}"
    );
}
