//! Process instances across an agent restart: stopped with `--keep-instances`, the agent leaves
//! them serving; the next agent adopts them (same id, port, pid, start time), watches them
//! although they are not its children, and ends what it cannot vouch for.

use crate::common::*;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn pid_of(inst: &Value) -> i32 {
    inst["pid"].as_i64().expect("a running instance has a pid") as i32
}

#[test]
fn a_kept_instance_keeps_serving_and_the_next_agent_adopts_it() {
    let mut w = World::new();
    let config = w.config(&process_service("web"));
    let a = w.start_agent(&config, true);
    w.put_instance("web-1", "web");
    let before = w.wait_running("web-1", T);
    let addr = addr_of(&before);
    let pid = pid_of(&before);
    for n in 1..=3 {
        assert_eq!(bump(addr), n);
    }

    w.stop_agent(a);
    assert!(
        w.agent_log(a).contains("leaving the instances running"),
        "{}",
        w.agent_log(a)
    );
    // No agent runs now: the instance still serves, its counter intact.
    assert!(alive(pid), "the instance outlived its agent");
    assert_eq!(counter(addr), Some(3));

    let b = w.start_agent(&config, false);
    let after = w.wait_running("web-1", T);
    for field in ["id", "service", "addr", "pid", "started_at_ms", "crashes"] {
        assert_eq!(after[field], before[field], "{field}: {after} vs {before}");
    }
    assert_eq!(bump(addr), 4, "the adopted instance's counter continues");
    // Readings of the adopted tree, although it is not the agent's child.
    let readings = wait_for("readings of the adopted instance", T, || {
        let s = w.state();
        let r = s["sample"]["instances"]["web-1"].clone();
        (r["rss_bytes"].as_u64().unwrap_or(0) > 0 && r["processes"].as_u64() >= Some(1))
            .then_some(r)
    });
    assert!(readings["fds"].as_u64().unwrap() > 0, "{readings}");

    // It dies although it is not a child: seen, counted, restarted on the same port.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let back = wait_for("the adopted instance restarted after its crash", T, || {
        w.instance("web-1")
            .filter(|i| i["crashes"] == 1 && i["state"] == "running")
    });
    assert_eq!(addr_of(&back), addr);
    assert_ne!(pid_of(&back), pid);
    assert!(
        back["last_exit"].as_str().unwrap().contains("adopted"),
        "{back}"
    );
    assert_eq!(bump(addr), 1, "a fresh process counts from zero");

    // Stopped on command: the whole tree goes.
    let new_pid = pid_of(&back);
    let stopped = w.delete_instance("web-1");
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert!(!alive(new_pid));
    assert!(w.instance("web-1").is_none());
    w.stop_agent(b);
    assert!(tagged_pids(&w.tag).is_empty(), "nothing is left running");
}

#[test]
fn an_instance_of_a_service_gone_from_the_catalog_is_ended_not_adopted() {
    let mut w = World::new();
    let both = w.config(&format!(
        "{}{}",
        process_service("web"),
        process_service("old")
    ));
    let a = w.start_agent(&both, true);
    w.put_instance("web-1", "web");
    w.put_instance("old-1", "old");
    let web = pid_of(&w.wait_running("web-1", T));
    let old = pid_of(&w.wait_running("old-1", T));
    w.stop_agent(a);
    assert!(alive(web) && alive(old));

    let b = w.start_agent(&w.config(&process_service("web")), false);
    // Adoption is done before the agent serves.
    assert!(w.instance("web-1").is_some(), "{}", w.state());
    assert!(w.instance("old-1").is_none(), "{}", w.state());
    assert!(alive(web), "the instance of a known service is adopted");
    wait_for("the orphan to be ended", T, || (!alive(old)).then_some(()));
    assert!(
        w.agent_log(b)
            .contains("service 'old' is not in the catalog"),
        "{}",
        w.agent_log(b)
    );
    // A plain stop (no --keep-instances) still stops everything.
    w.stop_agent(b);
    assert!(!alive(web));
    assert!(tagged_pids(&w.tag).is_empty());
}

#[test]
fn a_recorded_pid_that_now_names_another_process_is_not_adopted_or_signalled() {
    use rejuv_agent::handover::{self, RunRecord};
    let mut w = World::new();
    let config = w.config(&process_service("web"));
    let a = w.start_agent(&config, true);
    w.put_instance("web-1", "web");
    let pid = pid_of(&w.wait_running("web-1", T));
    w.stop_agent(a);

    // The instance dies while no agent runs, and its pid goes to an unrelated process: here
    // the record is pointed at a process of the test's own, as a reused pid would be (same
    // pid number in the record, another start time on the host).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for("the instance to die", T, || (!alive(pid)).then_some(()));
    let mut unrelated = std::process::Command::new("/bin/sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let other = unrelated.id() as i32;
    let mut table = handover::load(&w.data_dir())
        .unwrap()
        .expect("a handed-over table");
    match &mut table.instances[0].run {
        Some(RunRecord::Process { pid, .. }) => *pid = other,
        run => panic!("a process record: {run:?}"),
    }
    handover::save(&w.data_dir(), &table).unwrap();

    let b = w.start_agent(&config, false);
    assert!(w.instance("web-1").is_none(), "{}", w.state());
    assert!(
        w.agent_log(b)
            .contains("is gone (or the pid now names another process)"),
        "{}",
        w.agent_log(b)
    );
    // Adoption is over before the agent serves: a signal would have been sent by now.
    assert!(alive(other), "the unrelated process was left alone");
    assert!(unrelated.try_wait().unwrap().is_none());
    let _ = unrelated.kill();
    let _ = unrelated.wait();
    w.stop_agent(b);
}

use std::os::unix::process::CommandExt;
