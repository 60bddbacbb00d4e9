//! The invariants every scenario checks throughout its run, by polling `/v1/status` about
//! every 200 ms in a background thread:
//! - no more running workflows than `budget.max_concurrent`;
//! - every server listed once, in exactly one state, source or target of at most one
//!   workflow and never both;
//! - the available capacity of in-service primaries at least `budget.min_available_capacity`,
//!   except while a server is unreachable or kept out as failed (the core's rules allow that);
//! - a reachable server that leaves the list has its workflow's copies healthy on the target;
//! - at the end, every workflow seen has ended completed or rolled back (or failed for a
//!   reason the scenario expects).

use crate::common::{outcome, MAX_CONCURRENT, MIN_CAPACITY};
use crate::harness::{wait_for, Harness};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default, Debug)]
pub struct Observed {
    pub violations: Vec<String>,
    /// The last view of every workflow seen running, by id.
    pub workflows: BTreeMap<u64, Value>,
    /// Phases each workflow was seen in, in order.
    pub phases: BTreeMap<u64, Vec<String>>,
    pub polls: usize,
    pub failed_polls: usize,
    pub max_running: usize,
}

pub struct Checker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Observed>>,
}

impl Checker {
    pub fn start(h: &Harness) -> Self {
        let url = format!("http://{}/v1/status", h.controller_addr);
        let token = h.token.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let mut obs = Observed::default();
            let mut on_list: BTreeMap<String, bool> = BTreeMap::new();
            while !s.load(Ordering::Relaxed) {
                let st: Option<Value> = http
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .ok()
                    // A follower or a controller still loading answers with an error.
                    .filter(|r| r.status().is_success())
                    .and_then(|r| r.json().ok())
                    .filter(|v: &Value| v["servers"].is_array());
                match st {
                    Some(st) => {
                        obs.polls += 1;
                        check(&st, &mut obs, &mut on_list);
                    }
                    None => obs.failed_polls += 1,
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            obs
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops polling and returns what was seen.
    pub fn finish(mut self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("invariant checker thread")
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn check(st: &Value, obs: &mut Observed, on_list: &mut BTreeMap<String, bool>) {
    let empty = Vec::new();
    let servers = st["servers"].as_array().unwrap_or(&empty);
    let running = st["workflows"].as_array().unwrap_or(&empty);
    let mut v = Vec::new();

    obs.max_running = obs.max_running.max(running.len());
    if running.len() > MAX_CONCURRENT {
        v.push(format!(
            "{} workflows running, budget {MAX_CONCURRENT}",
            running.len()
        ));
    }

    let mut ids = BTreeSet::new();
    for s in servers {
        let id = s["id"].as_str().unwrap_or("?");
        if !ids.insert(id) {
            v.push(format!("server {id} listed twice"));
        }
        let state = s["state"].as_str().unwrap_or("?");
        if !["in-service", "rejuvenating", "failed", "maintenance"].contains(&state) {
            v.push(format!("server {id} in unknown state {state}"));
        }
        if (state == "in-service") != (s["on_list"] == true) {
            v.push(format!(
                "server {id}: state {state} but on_list {}",
                s["on_list"]
            ));
        }
    }
    let mut sources = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for w in running {
        let src = w["server"].as_str().unwrap_or("?");
        let dst = w["target"].as_str().unwrap_or("?");
        if !sources.insert(src) {
            v.push(format!("server {src} is the source of two workflows"));
        }
        // In place, a workflow's copies run on its source: no second server is involved.
        if w["placement"] == "in-place" {
            if dst != src {
                v.push(format!("in-place workflow for {src} names target {dst}"));
            }
            continue;
        }
        if !targets.insert(dst) {
            v.push(format!("server {dst} is the target of two workflows"));
        }
    }
    if let Some(both) = sources.intersection(&targets).next() {
        v.push(format!("server {both} is both a source and a target"));
    }

    let exempt = servers
        .iter()
        .any(|s| s["reachable"] != true || s["state"] == "failed");
    let available = st["available_capacity"].as_u64().unwrap_or(0);
    if !exempt && available < MIN_CAPACITY {
        v.push(format!(
            "available capacity {available} < minimum {MIN_CAPACITY} with every server reachable: {}",
            summary(st)
        ));
    }

    // Healthy copies before a server leaves the list.
    let healthy: BTreeSet<&str> = servers
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap_or(&empty).iter())
        .filter(|i| i["healthy"] == true)
        .filter_map(|i| i["id"].as_str())
        .collect();
    for s in servers {
        let id = s["id"].as_str().unwrap_or("?").to_string();
        let now_on = s["on_list"] == true;
        let was_on = on_list.insert(id.clone(), now_on).unwrap_or(true);
        if was_on && !now_on && s["reachable"] == true {
            if let Some(w) = running.iter().find(|w| w["server"] == id.as_str()) {
                if w["failover"] != true {
                    for p in w["pairs"].as_array().unwrap_or(&empty) {
                        let new = p["new"].as_str().unwrap_or("?");
                        if !healthy.contains(new) {
                            v.push(format!(
                                "server {id} left the list while its copy {new} on {} was not healthy",
                                w["target"]
                            ));
                        }
                    }
                }
            }
        }
    }

    for w in running {
        if let Some(id) = w["id"].as_u64() {
            let phase = w["phase"].as_str().unwrap_or("?").to_string();
            let seen = obs.phases.entry(id).or_default();
            if seen.last() != Some(&phase) {
                seen.push(phase);
            }
            obs.workflows.insert(id, w.clone());
        }
    }
    for x in v {
        if !obs.violations.contains(&x) {
            obs.violations.push(x);
        }
    }
}

/// A one-line view of a status for a violation's message: each server's role, state and
/// reachability, and each running workflow's source, target and phase.
fn summary(st: &Value) -> String {
    let empty = Vec::new();
    let servers: Vec<String> = st["servers"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|s| {
            format!(
                "{} {} {} reachable={} maintenance={}",
                s["id"], s["role"], s["state"], s["reachable"], s["maintenance"]
            )
        })
        .collect();
    let workflows: Vec<String> = st["workflows"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|w| {
            format!(
                "{} {}->{} {}",
                w["id"], w["server"], w["target"], w["phase"]
            )
        })
        .collect();
    format!(
        "epoch {} servers {servers:?} workflows {workflows:?}",
        st["epoch"]
    )
}

/// Ends a scenario's run: pauses the controller so no new workflow starts, waits (bounded)
/// for the running ones to end, and asserts the invariants: no violation seen, and every
/// workflow seen ended completed or rolled back, or failed with a reason containing one of
/// `failed_ok`. Returns the final status.
pub fn settle_and_assert(h: &Harness, obs: &Observed, failed_ok: &[&str]) -> Value {
    assert!(
        obs.polls >= 10,
        "the invariant checker saw too little: {} polls ({} failed)",
        obs.polls,
        obs.failed_polls
    );
    assert!(
        obs.violations.is_empty(),
        "invariants violated: {:#?}",
        obs.violations
    );
    assert_eq!(h.api(reqwest::Method::POST, "/v1/pause").status(), 202);
    wait_for(
        "running workflows to end after pausing",
        Duration::from_secs(60),
        || {
            h.try_status()?["workflows"]
                .as_array()?
                .is_empty()
                .then_some(())
        },
    );
    let st = h.status();
    let history = st["history"].as_array().cloned().unwrap_or_default();
    for id in obs.workflows.keys() {
        let w = history
            .iter()
            .find(|w| w["id"] == *id)
            .unwrap_or_else(|| panic!("workflow {id} never ended: {st}"));
        match outcome(w) {
            "completed" | "rolled-back" => {}
            "failed" => {
                let reason = w["outcome"]["reason"].as_str().unwrap_or("");
                assert!(
                    failed_ok.iter().any(|r| reason.contains(r)),
                    "workflow {id} failed for a reason this scenario does not expect: {w}"
                );
            }
            other => panic!("workflow {id} ended {other}: {w}"),
        }
    }
    st
}
