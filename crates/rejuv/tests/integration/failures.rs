//! What goes wrong around a workflow: a target that never becomes healthy, more unstable
//! servers than spares, and no target at all.

use crate::harness::{wait_for, Harness, Load, Spec};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

fn fast_aging() -> Spec {
    Spec {
        leak_per_second: 8 * 1024 * 1024,
        memory_budget: 64 * 1024 * 1024,
        ..Spec::default()
    }
}

#[test]
fn a_target_that_never_becomes_healthy_is_rolled_back_and_another_is_tried() {
    // s2 (127.0.0.3) is the first spare in id order; its instances never serve.
    let spec = Spec {
        primaries: 1,
        spares: 2,
        duplex_timeout: "3s",
        broken_address: Some("127.0.0.3".into()),
        ..fast_aging()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    let load = Load::start(h.front, 50, Duration::from_secs(90));
    wait_for(
        "a completed workflow after the rollback",
        Duration::from_secs(60),
        || (h.completed() >= 1).then_some(()),
    );
    let report = load.finish();
    let st = h.status();
    let history = st["history"].as_array().unwrap();
    assert_eq!(history[0]["target"], "s2");
    assert_eq!(
        history[0]["outcome"]["outcome"], "rolled-back",
        "{}",
        history[0]
    );
    assert_eq!(history[1]["target"], "s3");
    assert_eq!(
        history[1]["outcome"]["outcome"], "completed",
        "{}",
        history[1]
    );
    assert_eq!(
        report.requests_failed, 0,
        "the old server kept serving: {report:?}"
    );
    let events = h.events();
    assert!(
        events.iter().any(|e| e["kind"] == "workflow-rolled-back"
            && e["message"].as_str().unwrap().contains("keeps serving")),
        "the event log says why: {events:?}"
    );
    // The broken copy was stopped on s2: nothing of the workflow is left running there.
    let s2 = st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "s2")
        .unwrap();
    assert!(s2["instances"].as_array().unwrap().is_empty(), "{s2}");
}

#[test]
fn two_unstable_servers_and_one_spare_take_turns() {
    let spec = Spec {
        primaries: 2,
        spares: 1,
        ..fast_aging()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    let load = Load::start(h.front, 50, Duration::from_secs(90));
    let mut max_running = 0;
    wait_for("two completed workflows", Duration::from_secs(80), || {
        let st = h.try_status()?;
        let running = st["workflows"].as_array()?;
        max_running = max_running.max(running.len());
        let targets: BTreeSet<&str> = running
            .iter()
            .filter_map(|w| w["target"].as_str())
            .collect();
        assert_eq!(
            targets.len(),
            running.len(),
            "a spare was taken twice: {running:?}"
        );
        (st["completed_total"].as_u64()? >= 2).then_some(())
    });
    let report = load.finish();
    assert_eq!(max_running, 1, "budget 1: one workflow at a time");
    assert_eq!(report.requests_failed, 0, "{report:?}");
    let events = h.events();
    assert!(
        events.iter().any(|e| e["kind"] == "waiting-for-budget"
            && e["message"].as_str().unwrap().contains("budget")),
        "the second server was told to wait for the budget: {events:?}"
    );
    let history: Vec<Value> = h.status()["history"].as_array().unwrap().clone();
    for pair in history.windows(2) {
        let end = pair[0]["steps"].as_array().unwrap().last().unwrap()["at_ms"]
            .as_u64()
            .unwrap();
        let start = pair[1]["started_at_ms"].as_u64().unwrap();
        assert!(start >= end, "workflows overlapped: {pair:?}");
    }
}

#[test]
fn no_spare_capacity_disrupts_nothing_and_says_why() {
    // Active-active, every server full: nobody has room for another server's instance (and
    // in-place duplexing is off: with it, each would be rejuvenated in place).
    let spec = Spec {
        mode: "active-active",
        primaries: 2,
        spares: 0,
        capacity: 1,
        in_place: false,
        ..fast_aging()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    let load = Load::start(h.front, 50, Duration::from_secs(60));
    let msg = wait_for("a no-target event", Duration::from_secs(40), || {
        h.events()
            .into_iter()
            .find(|e| e["kind"] == "no-target")
            .map(|e| e["message"].to_string())
    });
    assert!(
        msg.contains("no peer can take it") && msg.contains("0 free units, 1 needed"),
        "{msg}"
    );
    // Give the controller time to (wrongly) act: several polls and ticks.
    let seen = h.events().len();
    wait_for("more events or ticks", Duration::from_secs(10), || {
        let st = h.status();
        (st["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["judgement"] == "unstable")
            || h.events().len() > seen + 2)
            .then_some(())
    });
    let report = load.finish();
    let st = h.status();
    assert!(
        st["workflows"].as_array().unwrap().is_empty(),
        "no workflow could start: {st}"
    );
    assert!(st["history"].as_array().unwrap().is_empty(), "{st}");
    for s in st["servers"].as_array().unwrap() {
        assert_eq!(s["state"], "in-service", "nothing disrupted: {s}");
    }
    assert_eq!(report.requests_failed, 0, "{report:?}");
}

#[test]
fn the_targets_agent_killed_during_duplexing_rolls_back_and_another_spare_is_used() {
    let spec = Spec {
        primaries: 1,
        spares: 2,
        duplex_timeout: "4s",
        ..fast_aging()
    };
    let mut h = Harness::new(&spec);
    h.start_controller(&[]);
    h.wait_serving();
    let load = Load::start(h.front, 50, Duration::from_secs(90));
    let target = wait_for("a workflow in duplexing", Duration::from_secs(30), || {
        let st = h.try_status()?;
        let w = st["workflows"].as_array()?.first()?.clone();
        (w["phase"] == "duplexing").then(|| w["target"].as_str().unwrap().to_string())
    });
    // The target's agent dies (SIGKILL, no restart) while its copy starts.
    let i = h.servers.iter().position(|s| s.id == target).unwrap();
    let mut agent = h.servers[i].proc.take().unwrap();
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = agent.wait();
    wait_for(
        "a completed workflow onto the other spare",
        Duration::from_secs(60),
        || (h.completed() >= 1).then_some(()),
    );
    let report = load.finish();
    assert_eq!(
        report.requests_failed, 0,
        "the source kept serving until a live copy took over: {report:?}"
    );
    let st = h.status();
    let history = st["history"].as_array().unwrap();
    assert_eq!(history[0]["target"], target.as_str(), "{history:?}");
    assert_eq!(
        history[0]["outcome"]["outcome"], "rolled-back",
        "{}",
        history[0]
    );
    let done = history.last().unwrap();
    assert_eq!(done["outcome"]["outcome"], "completed", "{done}");
    assert_ne!(done["target"], target.as_str(), "{done}");
}
