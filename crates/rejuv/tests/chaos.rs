//! The chaos demo end to end: `rejuv demo --store etcd --controllers 2 --chaos` (the real
//! binary, a real etcd from PATH) for 60 s of load, with the leader SIGKILLed at random
//! moments. Leadership must move at least once, every request must succeed, the watcher
//! outside the controllers must see no broken invariant, and rejuvenation must still happen.
#![cfg(feature = "etcd")]

use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

/// The demo, in its own process group. Dropping it sends SIGTERM (the demo then stops every
/// process it started) and, if it is still there after 60 s, SIGKILLs the group.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let pid = Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.0.wait();
    }
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
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn chaos_demo_keeps_serving_while_the_leader_is_killed() {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "this test runs a real etcd: `etcd` is not on PATH (Debian: apt-get install etcd-server)"
    );
    let tmp = tempfile::tempdir().expect("a temp dir");
    let summary = tmp.path().join("summary.json");
    let out = tmp.path().join("demo.out");
    let state = tmp.path().join("state");
    let log = std::fs::File::create(&out).expect("output file");
    let mut cmd = Command::new(EXE);
    cmd.args([
        "demo",
        "--store",
        "etcd",
        "--controllers",
        "2",
        "--chaos",
        "--chaos-seed",
        "7",
        "--duration",
        "60s",
        "--listen",
        &free_addr(),
        // Faster aging than the default, so servers age past the threshold well within
        // 60 s; a higher crash limit, so a server that ages during a handover (no leader for
        // about the 3 s lease) does not die before the next leader acts.
        "--leak-per-second",
        "1048576",
        "--leak-limit",
        "167772160",
        "--summary-json",
    ])
    .arg(&summary)
    .arg("--state-dir")
    .arg(&state)
    .stdout(Stdio::from(log.try_clone().expect("output file")))
    .stderr(Stdio::from(log))
    .stdin(Stdio::null())
    .process_group(0);
    let mut demo = Demo(cmd.spawn().expect("starting rejuv demo"));

    // 60 s of load, startup, letting the last workflow finish and stopping everything.
    let limit = Duration::from_secs(150);
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(s) = demo.0.try_wait().expect("waiting for the demo") {
            break s;
        }
        assert!(
            Instant::now() < until,
            "the demo did not finish within {limit:?} (a controller that never leads, or a \
             pause that never ends?); its output:\n{}",
            tail(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "the demo failed: {status}\n{}",
        tail(&out)
    );

    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap_or_else(|e| {
            panic!("no summary at {}: {e}\n{}", summary.display(), tail(&out))
        }))
        .expect("summary JSON");
    let n = |k: &str| {
        s[k].as_u64()
            .unwrap_or_else(|| panic!("summary has no number {k}: {s:#}"))
    };
    let ctx = format!("summary: {s:#}\noutput:\n{}", tail(&out));
    assert_eq!(s["store"], "etcd", "{ctx}");
    assert!(n("controller_kills") >= 1, "chaos killed no leader; {ctx}");
    assert!(n("leader_changes") >= 1, "leadership never moved; {ctx}");
    assert!(n("requests_total") > 1000, "too little load ran; {ctx}");
    assert_eq!(n("requests_failed"), 0, "requests failed; {ctx}");
    assert!(
        n("invariant_polls") >= 100,
        "the watcher observed too little to count on; {ctx}"
    );
    assert_eq!(
        n("invariant_violations"),
        0,
        "the watcher saw broken invariants; {ctx}"
    );
    assert!(
        n("rejuvenations_completed") >= 1,
        "no rejuvenation completed; {ctx}"
    );
    let handovers = s["handover_ms"].as_array().expect("handover_ms");
    assert!(!handovers.is_empty(), "{ctx}");
    println!(
        "leader_changes={} controller_kills={} handover_ms={:?} rejuvenations_completed={} requests_total={}",
        n("leader_changes"),
        n("controller_kills"),
        handovers,
        n("rejuvenations_completed"),
        n("requests_total")
    );
}
