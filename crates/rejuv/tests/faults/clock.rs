//! The controller's wall clock jumps (libfaketime, monotonic clock left alone) by +10 min
//! and −10 min in the middle of a workflow: timeouts within a run follow the monotonic
//! clock, so no workflow times out or is started twice because of the jump.

use crate::common::{aging_spec, finished, outcome, slot, wait_phase};
use crate::harness::{wait_for, Harness, Load};
use crate::invariants::{settle_and_assert, Checker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn wall_clock_jumps_do_not_end_leases_early_or_double_rejuvenate() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: install the Debian package faketime"
    );
    let _slot = slot();
    let mut h = Harness::new(&aging_spec());
    let offset = h.dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let offset_s = offset.to_str().unwrap().to_string();
    h.start_controller(&[
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", &offset_s),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        // Re-read the offset file at most once a second, not on every clock read.
        ("FAKETIME_CACHE_DURATION", "1"),
    ]);
    h.wait_serving();
    let checker = Checker::start(&h);
    let load = Load::start(h.front, 50, Duration::from_secs(100));

    // Workflow A: the clock jumps 10 min ahead at duplexing/gating (duplex_timeout 10 s,
    // gate max_wait 5 s: a deadline read off the wall clock would expire at once) and falls
    // back 10 min behind real time once A moved on. Workflow B (the other primary) starts
    // under -10 min and the clock jumps forward to real time during its duplexing/gating.
    let a = wait_phase(&h, &["duplexing", "gating"], Duration::from_secs(45));
    let a_id = a["id"].as_u64().unwrap();
    std::fs::write(&offset, "+600\n").unwrap();
    wait_for(
        "workflow A to move past gating under +10 min",
        Duration::from_secs(40),
        || {
            let st = h.try_status()?;
            let moved = st["workflows"]
                .as_array()?
                .iter()
                .find(|w| w["id"] == a_id)
                .is_none_or(|w| w["phase"] != "duplexing" && w["phase"] != "gating");
            moved.then_some(())
        },
    );
    std::fs::write(&offset, "-600\n").unwrap();
    let a_done = wait_for(
        "workflow A to end across the clock jumps",
        Duration::from_secs(60),
        || finished(&h, a_id),
    );
    let b = wait_phase(&h, &["duplexing", "gating"], Duration::from_secs(45));
    let b_id = b["id"].as_u64().unwrap();
    assert_ne!(b_id, a_id);
    std::fs::write(&offset, "+0\n").unwrap();
    let b_done = wait_for(
        "workflow B to end across the clock jump",
        Duration::from_secs(60),
        || finished(&h, b_id),
    );
    let report = load.finish();
    let obs = checker.finish();
    let st = settle_and_assert(&h, &obs, &[]);
    eprintln!(
        "workflow A {a_id} {}: steps {}; workflow B {b_id} {}: steps {}; load {report:?}",
        outcome(&a_done),
        a_done["steps"],
        outcome(&b_done),
        b_done["steps"]
    );
    // The jump reached the controller: a step of A recorded while the clock ran ahead.
    let real = wall_ms();
    assert!(
        a_done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["at_ms"].as_u64().unwrap() > real + 300_000),
        "no step carries the +10 min wall time: did libfaketime load? {a_done}"
    );
    for w in [&a_done, &b_done] {
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
    assert!(report.requests_total > 500, "too little load: {report:?}");
    assert_eq!(report.requests_failed, 0, "{report:?}");
}
