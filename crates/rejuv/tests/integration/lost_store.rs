//! A lost controller store never forks the cluster: a controller that finds its store empty
//! while the agents have history refuses to start and names them; started with
//! `--adopt-agents` it takes an epoch above theirs and adopts their running instances, and the
//! agents obey it. The front end serves throughout.

use crate::harness::{wait_for, Harness, Load, Spec, EXE};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

fn instance_ids(status: &Value) -> Vec<String> {
    let mut ids: Vec<String> = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().iter())
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn all_healthy(status: &Value) -> bool {
    status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().iter())
        .all(|i| i["healthy"] == true)
}

/// Runs `rejuv controller` to its exit (bounded) and returns its exit code and stderr.
fn controller_to_exit(h: &Harness) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(EXE)
        .args(["controller", "--config"])
        .arg(&h.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    let out = child.wait_with_output().unwrap();
    let status = status.expect("the controller facing a lost store exits on its own");
    (
        status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_deleted_store_is_refused_then_recovered_from_the_agents() {
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    h.start_controller(&[]);
    h.wait_serving();
    let before = wait_for("instances healthy", Duration::from_secs(30), || {
        let st = h.try_status()?;
        all_healthy(&st).then_some(st)
    });
    let ids_before = instance_ids(&before);
    assert!(!ids_before.is_empty());
    let epoch_before = before["epoch"].as_u64().unwrap();
    let load = Load::start(h.front, 40, Duration::from_secs(120));

    h.kill_controller();
    let db = h.dir.path().join("rejuv.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }

    let (code, stderr) = controller_to_exit(&h);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the store is empty, but agents have history")
            && stderr.contains("s1 (epoch")
            && stderr.contains("--adopt-agents"),
        "{stderr}"
    );

    h.start_controller_with(&["--adopt-agents"], &[]);
    let after = wait_for(
        "the adopted instances healthy",
        Duration::from_secs(30),
        || {
            let st = h.try_status()?;
            (all_healthy(&st) && !instance_ids(&st).is_empty()).then_some(st)
        },
    );
    assert_eq!(
        instance_ids(&after),
        ids_before,
        "the running instances were adopted, none started beside them"
    );
    assert!(
        after["epoch"].as_u64().unwrap() > epoch_before,
        "the new epoch is above the agents': {after}"
    );
    // The agents obey the recovered controller: a workflow runs end to end.
    let r = h.api(reqwest::Method::POST, "/v1/servers/s1/rejuvenate");
    assert!(r.status().is_success(), "{:?}", r.text());
    wait_for(
        "a workflow after the recovery",
        Duration::from_secs(60),
        || (h.completed() >= 1).then_some(()),
    );
    let report = load.finish();
    assert_eq!(report.requests_failed, 0, "{report:?}");
    let events = h.events();
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("adopted "))),
        "the adoption is an event"
    );
}
