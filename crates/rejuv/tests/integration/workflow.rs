//! The loop end to end, in both modes: aging detected, duplexed, switched with no failed
//! request and no lost or doubled POST, rejuvenated, back on the list.

use crate::harness::{wait_for, Harness, Load, Spec};
use serde_json::Value;
use std::time::Duration;

fn aging(mode: &'static str, primaries: u32, spares: u32) -> Spec {
    Spec {
        mode,
        primaries,
        spares,
        capacity: 2,
        leak_per_second: 8 * 1024 * 1024,
        limit: 400 * 1024 * 1024,
        memory_budget: 64 * 1024 * 1024,
        above: 0.5,
        ..Spec::default()
    }
}

fn outcome(w: &Value) -> &str {
    w["outcome"]["outcome"].as_str().unwrap_or("?")
}

fn run_loop(spec: Spec, want: u64) -> (Harness, rejuv_sample::loadgen::LoadReport) {
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    let load = Load::start(h.front, 80, Duration::from_secs(90));
    wait_for(
        &format!("{want} completed rejuvenations"),
        Duration::from_secs(80),
        || (h.completed() >= want).then_some(()),
    );
    let report = load.finish();
    // Let any running workflow finish so that no state is mid-move, then count.
    h.pause_and_settle();
    (h, report)
}

fn check_common(h: &Harness, report: &rejuv_sample::loadgen::LoadReport) {
    assert!(
        report.requests_total > 200,
        "too little load to judge: {report:?}"
    );
    assert_eq!(
        report.requests_failed, 0,
        "a client request failed: {report:?}"
    );
    assert!(report.posts_ok > 20, "{report:?}");
    assert_eq!(
        h.counter_sum(),
        report.posts_ok,
        "a POST was lost or applied twice"
    );
    let status = h.status();
    for w in status["history"].as_array().unwrap() {
        assert_eq!(outcome(w), "completed", "workflow {w}");
    }
    for s in status["servers"].as_array().unwrap() {
        assert_eq!(
            s["crashes_total"], 0,
            "server {} had an instance crash",
            s["id"]
        );
    }
}

#[test]
fn active_standby_rejuvenates_and_the_spare_takes_over() {
    let (h, report) = run_loop(aging("active-standby", 2, 1), 2);
    check_common(&h, &report);
    let status = h.status();
    let history = status["history"].as_array().unwrap();
    let first = &history[0];
    let target = first["target"].as_str().unwrap();
    assert_eq!(target, "s3", "the spare is the first target");
    let phases: Vec<&str> = first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "duplexing",
            "gating",
            "draining",
            "handing-off",
            "rejuvenating",
            "verifying",
            "rejoined"
        ],
        "every step of the loop in order"
    );
    // The rejuvenated server came back as a spare and the old spare became a primary;
    // there is still exactly one spare.
    let spares: Vec<&Value> = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["role"] == "spare")
        .collect();
    assert_eq!(spares.len(), 1, "{status}");
    let s3 = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "s3")
        .unwrap();
    assert_eq!(s3["role"], "primary");
    // Every server is on the list at the end.
    for s in status["servers"].as_array().unwrap() {
        assert_eq!(s["state"], "in-service", "{s}");
    }
}

#[test]
fn active_active_moves_instances_to_the_primary_with_most_room() {
    let (h, report) = run_loop(aging("active-active", 3, 0), 2);
    check_common(&h, &report);
    let status = h.status();
    for s in status["servers"].as_array().unwrap() {
        assert_eq!(s["role"], "primary", "no spares in active-active: {s}");
        assert_eq!(s["state"], "in-service", "{s}");
    }
    let first = &status["history"].as_array().unwrap()[0];
    assert_ne!(first["target"], first["server"]);
}
