//! `[alert_block]` against a real Prometheus: while its alert fires, a planned workflow waits
//! with the alert named; once the alert stops, the workflow runs.

use crate::harness::{wait_for, Harness, Spec};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn planned_work_waits_while_an_alert_fires_and_runs_once_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    // The alert fires from Prometheus's first evaluation until `until` (Unix seconds).
    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 45;
    std::fs::write(
        dir.path().join("rules.yml"),
        format!(
            "groups:\n- name: t\n  interval: 1s\n  rules:\n  - alert: DiskAlmostFull\n    expr: vector(1) and on() (vector(time()) < {until})\n    labels:\n      severity: critical\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        "global:\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n",
    )
    .unwrap();
    let addr = free_addr();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.path().join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.path().join("data").display()
    ))
    .arg(format!("--web.listen-address={addr}"))
    .stdout(Stdio::null())
    .stderr(Stdio::from(
        std::fs::File::create(dir.path().join("prometheus.log")).unwrap(),
    ));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let _prom = Prometheus(cmd.spawn().expect("prometheus"));

    let spec = Spec {
        primaries: 1,
        spares: 1,
        capacity: 2,
        leak_per_second: 8 * 1024 * 1024,
        limit: 400 * 1024 * 1024,
        memory_budget: 64 * 1024 * 1024,
        above: 0.5,
        extra_toml: format!("\n[alert_block]\nurl = \"http://{addr}\"\ninterval = \"1s\"\n"),
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    let reason = wait_for(
        "s1 to wait for the firing alert",
        Duration::from_secs(40),
        || {
            let st = h.try_status()?;
            let s1 = st["servers"]
                .as_array()?
                .iter()
                .find(|s| s["id"] == "s1")?
                .clone();
            let why = s1["blocked_reason"].as_str()?.to_string();
            why.contains("alerts are firing (DiskAlmostFull")
                .then_some(why)
        },
    );
    assert!(reason.contains("severity=critical"), "{reason}");
    assert_eq!(h.completed(), 0);
    assert!(h.events().iter().any(|e| e["kind"] == "alert-block"
        && e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("DiskAlmostFull")));
    // The alert stops at `until`: the workflow runs.
    wait_for(
        "a workflow to complete after the alert stopped",
        Duration::from_secs(90),
        || (h.completed() >= 1).then_some(()),
    );
    assert!(h.events().iter().any(|e| e["kind"] == "alert-block"
        && e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no alert blocks")));
}
