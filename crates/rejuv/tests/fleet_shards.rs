//! `rejuv bench fleet --controllers 3 --store etcd` end to end on a small fleet: three real
//! controllers sharing the fleet in three shards through a real etcd (started by the benchmark
//! on free loopback ports, ended with it), one of them SIGKILLed while a workflow of its shard
//! runs. Its shards must move to the survivors, every aged server must be rejuvenated, no
//! workflow may run twice, and the fleet-wide budget (smaller than the aged servers) must never
//! be exceeded.
#![cfg(feature = "etcd")]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

/// The benchmark's process group: dropped (the test passed or failed), the group gets SIGTERM
/// (the benchmark ends what it started), then SIGKILL if anything is left after 30 s.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let pg = Pid::from_raw(self.0);
        if killpg(pg, None).is_err() {
            return;
        }
        let _ = killpg(pg, Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until && killpg(pg, None).is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = killpg(pg, Signal::SIGKILL);
    }
}

#[test]
fn three_controllers_share_the_fleet_and_one_killed_mid_workflow_loses_nothing() {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "etcd must be on PATH for this test (Debian: etcd-server)"
    );
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("fleet.json");
    let state = dir.path().join("state");
    let mut cmd = Command::new(EXE);
    cmd.args([
        "bench",
        "fleet",
        "--servers",
        "45",
        "--aged",
        "4",
        "--max-concurrent",
        "2",
        "--interval",
        "1s",
        "--warmup",
        "10s",
        "--duration",
        "75s",
        "--controllers",
        "3",
        "--store",
        "etcd",
        "--state-dir",
    ])
    .arg(&state)
    .arg("--summary-json")
    .arg(&summary)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let child: Child = cmd.spawn().expect("running rejuv bench fleet");
    let pid = child.id();
    let group = Group(pid as i32);
    let out = child.wait_with_output().expect("the benchmark's output");
    drop(group);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = || {
        let mut all = String::new();
        for name in ["controller", "controller-2", "controller-3"] {
            let text = std::fs::read_to_string(state.join("logs").join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            all.push_str(&format!(
                "--- {name}.log\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            ));
        }
        all
    };
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", logs());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let ctx = format!("{s}\n{stderr}\n{}", logs());
    assert_eq!(s["controllers"], 3, "{ctx}");
    assert_eq!(
        s["controller_kills"], 1,
        "one controller killed mid-workflow: {ctx}"
    );
    assert!(
        s["shard_moves"].as_u64().unwrap() >= 1,
        "the killed controller's shards moved: {ctx}"
    );
    assert!(
        s["shard_handover_ms"].as_u64().is_some(),
        "the killed controller's shards were seen owned again: {ctx}"
    );
    assert_eq!(s["workflows_doubled"], 0, "{ctx}");
    assert_eq!(s["max_concurrent"], 2, "{ctx}");
    let seen = s["budget_max_seen"].as_u64().unwrap();
    assert!(seen <= 2, "the fleet-wide budget was exceeded: {ctx}");
    assert!(seen >= 1, "workflows were seen running: {ctx}");
    assert_eq!(s["servers_aged"], 4, "{ctx}");
    assert_eq!(
        s["aged_rejuvenated"], 4,
        "every aged server rejuvenated: {ctx}"
    );
    assert!(
        s["workflows_completed"].as_u64().unwrap() >= 4,
        "no workflow lost: {ctx}"
    );
    assert_eq!(s["judged_unstable_wrongly"], 0, "{ctx}");
    // Nothing of the run is left: controllers, proxy, swarm and etcd were ended.
    let ps = Command::new("pgrep")
        .args(["-f", &state.display().to_string()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "left running (benchmark pid {pid}): {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
