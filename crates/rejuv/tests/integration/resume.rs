//! A controller SIGKILLed in the middle of a workflow resumes it to completion when started
//! again: every step is recorded with its commands before they are carried out. The kill
//! happens at a named step through the controller's test-only failpoint, not by racing logs.

use crate::harness::{wait_for, Harness, Load, Spec};
use std::time::Duration;

fn crash_and_resume(phase: &str) {
    crash_and_resume_with(phase, String::new());
}

fn crash_and_resume_with(phase: &str, extra_toml: String) {
    let spec = Spec {
        primaries: 1,
        spares: 1,
        leak_per_second: 8 * 1024 * 1024,
        memory_budget: 64 * 1024 * 1024,
        extra_toml,
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[("REJUV_FAILPOINT_CRASH_AT", phase)]);
    h.wait_serving();
    let load = Load::start(h.front, 50, Duration::from_secs(90));
    let status = h.wait_controller_exit(Duration::from_secs(60));
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the controller died by SIGKILL at the failpoint"
        );
    }
    assert!(
        h.log("controller").contains("failpoint"),
        "it died at the failpoint"
    );
    // While no controller runs, the proxy keeps serving.
    h.start_controller(&[]);
    wait_for(
        "the resumed workflow to complete",
        Duration::from_secs(60),
        || (h.completed() >= 1).then_some(()),
    );
    let report = load.finish();
    let st = h.status();
    let history = st["history"].as_array().unwrap();
    let w = &history[0];
    assert_eq!(w["outcome"]["outcome"], "completed", "{w}");
    let log = h.log("controller");
    assert!(
        log.contains("resuming stored cluster state") && log.contains("workflows=1"),
        "the restarted controller picked up the workflow in flight"
    );
    assert!(
        history
            .iter()
            .all(|x| x["outcome"]["outcome"] == "completed"),
        "nothing was rolled back or failed by the crash: {history:?}"
    );
    assert!(
        st["epoch"].as_u64().unwrap() >= 2,
        "the restarted controller took a new epoch"
    );
    assert_eq!(report.requests_failed, 0, "{report:?}");
    h.pause_and_settle();
    assert_eq!(
        h.counter_sum(),
        report.posts_ok,
        "no POST lost or applied twice across the crash"
    );
}

#[test]
fn controller_killed_during_duplexing_resumes() {
    crash_and_resume("duplexing");
}

#[test]
fn controller_killed_during_drain_resumes() {
    crash_and_resume("draining");
}

#[test]
fn controller_killed_during_rejuvenation_resumes() {
    crash_and_resume("rejuvenating");
}

#[test]
fn controller_killed_during_gating_resumes() {
    // The gate opens at once here (no load rule): a veto hook before the switch holds the
    // workflow in gating long enough to be recorded there; the restarted controller runs the
    // hook again (hooks are written to be safe to repeat) and goes on.
    crash_and_resume_with("gating", crate::harness::hold_at_gate(1));
}

#[test]
fn controller_killed_during_hand_off_resumes() {
    crash_and_resume("handing-off");
}

#[test]
fn controller_killed_during_verification_resumes() {
    crash_and_resume("verifying");
}

/// s1's judgement when the trend rule made it (not stable, rule `trend`).
fn judged_by_trend(h: &Harness, id: &str) -> Option<serde_json::Value> {
    let st = h.try_status()?;
    let s = st["servers"].as_array()?.iter().find(|s| s["id"] == id)?;
    (s["judgement"] != "stable" && s["explanation"]["rule"] == "trend").then(|| s.clone())
}

#[test]
fn a_restarted_controller_judges_at_once_from_the_agents_kept_samples() {
    // A slow leak that only the trend rule sees (the threshold is far off); the rule needs
    // 15 s of samples before it says anything.
    let spec = Spec {
        primaries: 1,
        spares: 1,
        leak_per_second: 4 * 1024 * 1024,
        memory_budget: 256 * 1024 * 1024,
        above: 0.95,
        extra_toml: r#"
[policy.trend]
window = "60s"
min_window = "15s"
horizon = "1h"
max_extrapolation = 4.0
min_persistence = "2s"
resources = ["instance-rss"]
"#
        .into(),
        ..Spec::default()
    };
    let mut h = Harness::new(&spec);
    h.start_controller_with(&["--paused"], &[]);
    h.wait_serving();
    let first = wait_for(
        "the trend rule to judge the leaking s1",
        Duration::from_secs(60),
        || judged_by_trend(&h, "s1"),
    );
    h.kill_controller();
    let restarted = std::time::Instant::now();
    h.start_controller_with(&["--paused"], &[]);
    // The stored state still holds the old judgement; a fresh one (a new forecast) made by
    // trend, with no "stable" in between, comes from the replayed samples: from live samples
    // alone the rule could say nothing for 15 s.
    let again = wait_for(
        "the restarted controller to judge s1 afresh by trend well within min_window",
        Duration::from_secs(8),
        || {
            let st = h.try_status()?;
            let s = st["servers"].as_array()?.iter().find(|s| s["id"] == "s1")?;
            assert_ne!(
                s["judgement"], "stable",
                "the restarted controller forgot what it had seen: {s}"
            );
            judged_by_trend(&h, "s1")
                .filter(|j| j["explanation"]["message"] != first["explanation"]["message"])
        },
    );
    println!(
        "judged by trend {:?} after the restart: {} (before: {})",
        restarted.elapsed(),
        again["explanation"]["message"],
        first["explanation"]["message"]
    );
    assert!(
        h.log("controller")
            .contains("detector warmed from the agent's kept samples"),
        "the restarted controller replayed the agents' samples"
    );
}
