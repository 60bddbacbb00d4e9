//! `[alert_block]` against a real Prometheus: while its alert fires, a planned workflow waits
//! with the alert named; once the alert stops, the workflow runs.

use crate::harness::{wait_for, Harness, Spec};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[path = "../support/prometheus.rs"]
mod prometheus;

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
    let prom = prometheus::Prometheus::start(
        dir.path(),
        "global:\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n",
    );

    // The alert fires before any server ages: a leak that ran ahead of Prometheus's first
    // evaluation would have its workflow done before anything blocked it.
    prometheus::wait_for(
        "Prometheus to fire the alert",
        Duration::from_secs(30),
        || {
            prom.scalar("count(ALERTS{alertname=\"DiskAlmostFull\",alertstate=\"firing\"})")
                .filter(|n| *n >= 1.0)
        },
    );

    let spec = Spec {
        primaries: 1,
        spares: 1,
        capacity: 2,
        leak_per_second: 8 * 1024 * 1024,
        limit: 400 * 1024 * 1024,
        memory_budget: 64 * 1024 * 1024,
        above: 0.5,
        extra_toml: format!(
            "\n[alert_block]\nurl = \"{}\"\ninterval = \"1s\"\n",
            prom.url
        ),
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
