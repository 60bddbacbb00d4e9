//! The controller's wall clock jumps (libfaketime, monotonic clock left alone) by +10 min
//! and −10 min in the middle of a workflow: timeouts within a run follow the monotonic
//! clock, so no workflow times out or is started twice because of the jump.

use crate::common::{aging_spec, finished, outcome, slot};
use crate::harness::{wait_for, Harness, Load};
use crate::invariants::{settle_and_assert, Checker};
use std::path::Path;
use std::time::{Duration, Instant};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Waits for a workflow (other than `not`) at the gate, sets the clock offset, and returns
/// the workflow's id and how long it stayed at the gate after the jump (seen from this
/// process's monotonic clock).
fn jump_at_gate(h: &Harness, offset: &Path, to: &str, not: Option<u64>) -> (u64, Duration) {
    let id = wait_for(
        "a new workflow at the gate",
        Duration::from_secs(45),
        || {
            let st = h.try_status()?;
            st["workflows"]
                .as_array()?
                .iter()
                .find(|w| w["phase"] == "gating" && w["id"].as_u64() != not)
                .and_then(|w| w["id"].as_u64())
        },
    );
    std::fs::write(offset, format!("{to}\n")).unwrap();
    let jumped = Instant::now();
    wait_for(
        "the workflow to pass the gate",
        Duration::from_secs(30),
        || {
            let st = h.try_status()?;
            let gating = st["workflows"]
                .as_array()?
                .iter()
                .any(|w| w["id"] == id && w["phase"] == "gating");
            (!gating).then_some(())
        },
    );
    (id, jumped.elapsed())
}

#[test]
fn wall_clock_jumps_do_not_end_leases_early_or_double_rejuvenate() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: install the Debian package faketime"
    );
    let _slot = slot();
    let mut h = Harness::new(&aging_spec());
    // Every workflow waits at the gate for max_wait (6 s): the load is above a max_load of 0
    // (the load generator and the cluster's own processes run). A gate deadline read off the
    // wall clock would open at once when the clock jumps ahead.
    let text = std::fs::read_to_string(&h.config).unwrap();
    let gate = "max_load = 1000.0\nmin_running_time = \"1s\"\nmax_wait = \"5s\"";
    assert!(text.contains(gate), "the harness's [gate] section changed");
    let text = text.replace(
        gate,
        "max_load = 0.0\nquiet_quantile = 1.0\nmin_running_time = \"1s\"\nmax_wait = \"6s\"",
    );
    std::fs::write(&h.config, text).unwrap();
    let offset = h.dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let offset_s = offset.to_str().unwrap().to_string();
    h.start_controller(&[
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", &offset_s),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ]);
    let pid = h.controller.as_ref().unwrap().id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    assert!(
        maps.contains("libfaketime"),
        "libfaketime is not loaded in the controller"
    );
    h.wait_serving();
    let checker = Checker::start(&h);
    let load = Load::start(h.front, 50, Duration::from_secs(100));

    // Workflow A: the clock jumps 10 min ahead while it waits at the gate, and falls 10 min
    // behind real time once A passed the gate. Workflow B (the other primary) starts under
    // -10 min and the clock jumps forward to real time while B waits at the gate.
    let (a_id, a_gate) = jump_at_gate(&h, &offset, "+600", None);
    std::fs::write(&offset, "-600\n").unwrap();
    let a_done = wait_for(
        "workflow A to end across the clock jumps",
        Duration::from_secs(60),
        || finished(&h, a_id),
    );
    let (b_id, b_gate) = jump_at_gate(&h, &offset, "+0", Some(a_id));
    let b_done = wait_for(
        "workflow B to end across the clock jump",
        Duration::from_secs(60),
        || finished(&h, b_id),
    );
    let report = load.finish();
    let obs = checker.finish();
    let st = settle_and_assert(&h, &obs, &[]);
    eprintln!(
        "workflow A {a_id} {} (gate after the jump {a_gate:?}): steps {}; \
         workflow B {b_id} {} (gate after the jump {b_gate:?}): steps {}; load {report:?}",
        outcome(&a_done),
        a_done["steps"],
        outcome(&b_done),
        b_done["steps"]
    );
    for (gate, w) in [(a_gate, &a_done), (b_gate, &b_done)] {
        assert!(
            gate >= Duration::from_secs(4),
            "the gate (max_wait 6 s) opened {gate:?} after a clock jump: {w}"
        );
        assert_eq!(outcome(w), "completed", "no timeout from a jump: {w}");
    }
    assert_eq!(obs.max_running, 1, "one workflow at a time");
    let runs: Vec<&str> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["run_id"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&&str> = runs.iter().collect();
    assert_eq!(
        unique.len(),
        runs.len(),
        "a rejuvenation ran twice: {runs:?}"
    );
    assert!(report.requests_total > 300, "too little load: {report:?}");
    assert_eq!(report.requests_failed, 0, "{report:?}");
}
