//! The controller's disk fills up: its SQLite store sits on a small tmpfs (in the
//! scenario's own mount namespace) that a file fills once the cluster runs. While commits
//! fail, the controller must act on nothing (fail closed); once space is freed, the
//! workflow proceeds and completes, and the store opens cleanly afterwards.

use crate::common::{aging_spec, in_namespaces, run};
use crate::harness::{wait_for, Harness, Load, Spec};
use crate::invariants::{settle_and_assert, Checker};
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};

/// Writes zeros into `path` until the file system is full; returns the bytes written.
fn fill(path: &std::path::Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever is left below one chunk, byte by byte in small writes.
    let small = [0u8; 512];
    while let Ok(k) = f.write(&small) {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    n
}

fn agent_state(h: &Harness, i: usize) -> Value {
    reqwest::blocking::Client::new()
        .get(format!("http://{}/v1/state", h.servers[i].agent))
        .bearer_auth(&h.token)
        .timeout(Duration::from_secs(5))
        .send()
        .expect("agent /v1/state")
        .json()
        .expect("agent state json")
}

fn agent_instances(h: &Harness, i: usize) -> Vec<Value> {
    agent_state(h, i)["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The RSS of each instance in the agent's latest sample.
fn agent_rss(h: &Harness, i: usize) -> Vec<u64> {
    let st = agent_state(h, i);
    st["sample"]["instances"]
        .as_object()
        .map(|m| m.values().filter_map(|x| x["rss_bytes"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn controller_state_dir_on_a_full_tmpfs_fails_closed() {
    if !in_namespaces(
        "disk::controller_state_dir_on_a_full_tmpfs_fails_closed",
        Duration::from_secs(150),
    ) {
        return;
    }
    // A slower leak than the other scenarios: the rule's threshold (32 MiB) is crossed about
    // 16 s after the instances start, so the disk is full before the judgement.
    let spec = Spec {
        leak_per_second: 2 * 1024 * 1024,
        ..aging_spec()
    };
    let born = Instant::now();
    let mut h = Harness::new(&spec);
    let mnt = h.dir.path().join("state");
    std::fs::create_dir_all(&mnt).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=8m",
            "rejuv-faults",
            mnt.to_str().unwrap(),
        ],
    );
    let db = mnt.join("rejuv.db");
    h.start_controller_with(&["--store", db.to_str().unwrap()], &[]);
    // The front end serves once the controller has committed and published the routes.
    h.wait_serving();
    let filled = fill(&mnt.join("filler"));
    let st = h.status();
    assert!(
        st["workflows"].as_array().unwrap().is_empty()
            && st["history"].as_array().unwrap().is_empty(),
        "the disk was filled before any workflow started: {st}"
    );
    let checker = Checker::start(&h);
    let load = Load::start(h.front, 50, Duration::from_secs(100));

    wait_for(
        "the controller to report a failed store commit",
        Duration::from_secs(15),
        || {
            h.log("controller")
                .contains("store commit failed")
                .then_some(())
        },
    );
    let events_full = h.events().len();
    let spare = h.servers.len() - 1;
    // Hold the disk full until well past the threshold crossing (and at least 8 s).
    let full_at = Instant::now();
    while born.elapsed() < Duration::from_secs(26) || full_at.elapsed() < Duration::from_secs(8) {
        let st = h.status();
        assert!(
            st["workflows"].as_array().unwrap().is_empty(),
            "a workflow advanced while commits fail: {st}"
        );
        assert!(
            agent_instances(&h, spare).is_empty(),
            "an instance was started on the spare while commits fail"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let rss = (0..spec.primaries as usize)
        .flat_map(|i| agent_rss(&h, i))
        .max()
        .unwrap_or(0);
    assert!(
        rss > 40 * 1024 * 1024,
        "an instance crossed the rule's threshold while the disk was full: {rss} bytes"
    );
    assert_eq!(
        h.events().len(),
        events_full,
        "the event log advanced while commits fail"
    );
    let st = h.status();
    let failed_commits = st["store"]["commit_failures_total"].as_u64().unwrap_or(0);
    assert!(
        // (SQLite may still fit a small write into a freed page now and then.)
        failed_commits >= 5,
        "the status says commits kept failing: {}",
        st["store"]
    );

    std::fs::remove_file(mnt.join("filler")).unwrap();
    let freed_at = Instant::now();
    wait_for(
        "a completed workflow once space is freed",
        Duration::from_secs(60),
        || (h.completed() >= 1).then_some(()),
    );
    let to_complete = freed_at.elapsed();
    assert!(
        h.status()["store"]["failing_since_ms"].is_null(),
        "the status says the store works again"
    );
    let report = load.finish();
    let obs = checker.finish();
    let st = settle_and_assert(&h, &obs, &[]);
    let completed = st["completed_total"].as_u64().unwrap();
    h.kill_controller();

    // The store opens cleanly and holds what the controller published.
    let mut store =
        rejuv_controller::store::SqliteStore::open(&db, 1000, 100).expect("store opens");
    let cluster = store
        .load()
        .expect("stored state loads and its checksum matches")
        .expect("a stored state");
    assert_eq!(cluster.completed_total, completed);
    eprintln!(
        "filled {filled} bytes; {failed_commits} failed commits while full; completed {to_complete:?} \
         after freeing; load {report:?}"
    );
    assert!(report.requests_total > 300, "too little load: {report:?}");
    assert_eq!(report.requests_failed, 0, "{report:?}");
}
