//! An agent hangs: SIGSTOP on the source agent's own process group (its instances run in
//! groups of their own and keep serving) for longer than `agent_timeout` and shorter than
//! `failover_after`, in the middle of duplexing or gating, then SIGCONT.

use crate::common::{aging_spec, finished, outcome, server_index, slot, wait_phase};
use crate::harness::{wait_for, Harness, Load};
use crate::invariants::{settle_and_assert, Checker};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// Continues a stopped process group when dropped (even on a failed assertion).
struct Stopped(Pid);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGCONT);
    }
}

#[test]
fn agent_hung_by_sigstop_longer_than_timeouts() {
    let _slot = slot();
    let mut h = Harness::new(&aging_spec());
    h.start_controller(&[]);
    h.wait_serving();
    let checker = Checker::start(&h);
    let load = Load::start(h.front, 50, Duration::from_secs(100));

    let w = wait_phase(&h, &["duplexing", "gating"], Duration::from_secs(45));
    let id = w["id"].as_u64().unwrap();
    let src = w["server"].as_str().unwrap().to_string();
    let i = server_index(&h, &src);
    let pgid = Pid::from_raw(h.servers[i].proc.as_ref().unwrap().id() as i32);
    let stopped_at = Instant::now();
    killpg(pgid, Signal::SIGSTOP).unwrap();
    let guard = Stopped(pgid);
    wait_for(
        "the controller to see the hung agent as unreachable",
        Duration::from_secs(10),
        || {
            let st = h.try_status()?;
            let s = st["servers"]
                .as_array()?
                .iter()
                .find(|s| s["id"] == src.as_str())?
                .clone();
            (s["reachable"] == false).then_some(())
        },
    );
    // agent_timeout is 2 s, failover_after 15 s: hang for 7 s in all.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(stopped_at.elapsed()));
    let hung_for = stopped_at.elapsed();
    drop(guard);

    let done = wait_for(
        "the workflow to end after the agent resumed",
        Duration::from_secs(60),
        || finished(&h, id),
    );
    let report = load.finish();
    let obs = checker.finish();
    let st = settle_and_assert(&h, &obs, &[]);
    eprintln!(
        "hung {src} for {hung_for:?}; workflow {id} {} ({}): phases {:?}; load {report:?}",
        outcome(&done),
        done["outcome"]["reason"],
        obs.phases.get(&id)
    );
    assert!(
        ["completed", "rolled-back"].contains(&outcome(&done)),
        "{done}"
    );
    assert_eq!(obs.max_running, 1, "one workflow at a time, never two");
    let history = st["history"].as_array().unwrap();
    for pair in history.windows(2) {
        let end = pair[0]["steps"].as_array().unwrap().last().unwrap()["at_ms"]
            .as_u64()
            .unwrap();
        let start = pair[1]["started_at_ms"].as_u64().unwrap();
        assert!(start >= end, "workflows overlapped: {pair:?}");
    }
    assert!(
        st["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["reachable"] == true),
        "every agent answers again: {st}"
    );
    assert!(report.requests_total > 300, "too little load: {report:?}");
    assert_eq!(report.requests_failed, 0, "{report:?}");
}
