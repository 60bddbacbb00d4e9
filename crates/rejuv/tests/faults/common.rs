//! What every scenario shares: the cluster it runs, re-running itself in fresh network and
//! mount namespaces, a gate so that only a few heavy scenarios run at once, and small
//! helpers for iptables and signals.

use crate::harness::{kill_env_tagged, wait_for, Harness, Spec};
use serde_json::Value;
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Set in the re-run child: the scenario runs here, in its own namespaces.
const NS_ENV: &str = "REJUV_FAULT_NS";
/// A per-run tag in the child's environment (inherited by everything it starts), so that a
/// child that overran its bound can have all its processes ended.
const RUN_ENV: &str = "REJUV_FAULT_RUN";

/// How many scenarios run at once: each runs three agents, a proxy, a controller and a
/// load; more than two at a time on a 2-core machine make agents miss their timeouts.
const PARALLEL: u32 = 2;

static SLOTS: Mutex<u32> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

/// A running slot of the scenario gate, given back on drop (even on panic).
pub struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        FREED.notify_one();
    }
}

/// Waits for one of the `PARALLEL` slots. Only the parent takes one: the namespaced child is
/// a separate process that runs exactly one scenario.
pub fn slot() -> Slot {
    let mut n = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    while *n >= PARALLEL {
        n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
    }
    *n += 1;
    Slot
}

/// Whether this process is the namespaced child of a scenario. In the parent it re-runs
/// `test` (its full name) of this same binary inside `unshare -n -m`, asserts it passed and
/// returns `false`; in the child it brings `lo` up and returns `true`.
pub fn in_namespaces(test: &str, limit: Duration) -> bool {
    if std::env::var_os(NS_ENV).is_some() {
        run("ip", &["link", "set", "lo", "up"]);
        return true;
    }
    let _slot = slot();
    let exe = std::env::current_exe().expect("test executable");
    let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let mut child = Command::new("unshare")
        .args(["-n", "-m", "--"])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(NS_ENV, "1")
        .env(RUN_ENV, &tag)
        .spawn()
        .expect("running unshare (util-linux)");
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > until {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some(status) = status else {
        kill_env_tagged(&format!("{RUN_ENV}={tag}"));
        let _ = child.wait();
        panic!("scenario {test} overran {limit:?} in its namespaces and was killed");
    };
    assert!(
        status.success(),
        "scenario {test} failed in its namespaces: {status}"
    );
    false
}

/// Runs a command that must succeed (iptables, ip, mount).
pub fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn iptables(args: &[&str]) {
    run("iptables", args);
}

/// The aging cluster every scenario runs: two leaking primaries and one spare, capacity 2
/// each, one workflow at a time and at least one primary's capacity always on the list.
pub const MIN_CAPACITY: u64 = 2;
pub const MAX_CONCURRENT: usize = 1;

pub fn aging_spec() -> Spec {
    Spec {
        primaries: 2,
        spares: 1,
        capacity: 2,
        leak_per_second: 8 * 1024 * 1024,
        limit: 400 * 1024 * 1024,
        memory_budget: 64 * 1024 * 1024,
        extra_toml: format!(
            "[budget]\nmax_concurrent = {MAX_CONCURRENT}\nmin_available_capacity = {MIN_CAPACITY}\n"
        ),
        ..Spec::default()
    }
}

/// The first running workflow once it is in one of `phases`.
pub fn wait_phase(h: &Harness, phases: &[&str], limit: Duration) -> Value {
    wait_for(&format!("a workflow in phase {phases:?}"), limit, || {
        let st = h.try_status()?;
        st["workflows"]
            .as_array()?
            .iter()
            .find(|w| phases.iter().any(|p| w["phase"] == *p))
            .cloned()
    })
}

/// A finished workflow from the history, by id.
pub fn finished(h: &Harness, id: u64) -> Option<Value> {
    h.try_status()?["history"]
        .as_array()?
        .iter()
        .find(|w| w["id"] == id)
        .cloned()
}

pub fn outcome(w: &Value) -> &str {
    w["outcome"]["outcome"].as_str().unwrap_or("?")
}

/// Index of a server in the harness by id.
pub fn server_index(h: &Harness, id: &str) -> usize {
    h.servers
        .iter()
        .position(|s| s.id == id)
        .unwrap_or_else(|| panic!("no server {id}"))
}
