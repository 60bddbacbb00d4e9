//! The deterministic simulation of the controller (`rejuv_sim::sim`: the production shell,
//! detector and gate over a simulated fleet): many seeded fault schedules with every
//! invariant checked after every step, and the replay guarantee.

use rejuv_sim::sim::{self, Options};
use std::time::{Duration, Instant};

/// Schedules the big test runs, from seed 0, of `STEPS` steps each (plus the quiet part).
const SCHEDULES: u64 = 10_000;
const STEPS: u64 = 200;

/// Seeds (with `STEPS` steps) that break an invariant because of a bug in rejuv-core that is
/// reported and not fixed yet. Remove an entry once its bug is fixed; the test says which
/// entries pass again.
///
/// (The two bugs this list once held, a server put in maintenance being rejuvenated and a
/// start in flight leaking an untracked instance, are fixed in the core.)
const KNOWN_FAILURES: &[(u64, &str)] = &[];

fn opts() -> Options {
    Options {
        steps: STEPS,
        verbose: false,
    }
}

#[test]
fn ten_thousand_schedules_keep_every_invariant_and_do_real_work() {
    let started = Instant::now();
    let s = sim::run_many(0, SCHEDULES, &opts(), 2);
    println!("{s}");
    assert_eq!(s.schedules, SCHEDULES);
    let unexpected: Vec<_> = s
        .violations
        .iter()
        .filter(|v| !KNOWN_FAILURES.contains(&(v.seed, v.invariant)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} schedule(s) broke an invariant; the first:\n{}",
        unexpected.len(),
        unexpected[0]
    );
    let fixed: Vec<u64> = KNOWN_FAILURES
        .iter()
        .filter(|(seed, _)| !s.violations.iter().any(|v| v.seed == *seed))
        .map(|(seed, _)| *seed)
        .collect();
    if !fixed.is_empty() {
        println!("known failures that pass now (remove them from KNOWN_FAILURES): {fixed:?}");
    }
    // A simulation in which nothing happens proves nothing. Measured over these seeds, with
    // the production shell and detector: about 15,800 completed, 2,000 rolled back, 670
    // failed, 7,500 schedules with a completed workflow, 3,840 controller crashes.
    assert!(s.completed >= 7_000, "too few completed workflows: {s}");
    assert!(s.rolled_back >= 700, "too few rolled-back workflows: {s}");
    assert!(s.failed >= 200, "too few failed workflows: {s}");
    assert!(
        s.with_completed >= SCHEDULES * 2 / 5,
        "too few schedules completed a workflow: {s}"
    );
    assert!(
        s.controller_crashes >= 1_500,
        "too few controller crashes: {s}"
    );
    // Bounded: about 30 s with the core optimized, about 2 min in a plain debug build.
    assert!(
        started.elapsed() < Duration::from_secs(600),
        "10,000 schedules took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    for seed in [3, 171, 3404, 4242, 77_777] {
        let a = sim::run(seed, &opts());
        let b = sim::run(seed, &opts());
        assert_eq!(a.digest, b.digest, "seed {seed} ran differently twice");
        assert_eq!(a.steps, b.steps, "seed {seed}");
        assert_eq!(a.sim_ms, b.sim_ms, "seed {seed}");
        assert_eq!(
            a.violation.as_ref().map(|v| (v.step, v.invariant)),
            b.violation.as_ref().map(|v| (v.step, v.invariant)),
            "seed {seed}"
        );
        if a.violation.is_none() {
            assert!(a.steps >= STEPS, "seed {seed} ran only {} steps", a.steps);
        }
    }
    let digests: std::collections::BTreeSet<u64> =
        (0..20).map(|seed| sim::run(seed, &opts()).digest).collect();
    assert_eq!(digests.len(), 20, "different seeds gave the same run");
}

#[test]
fn a_violation_names_its_seed_step_invariant_and_last_events() {
    let Some(&(seed, invariant)) = KNOWN_FAILURES.first() else {
        return; // nothing known to fail: nothing to print
    };
    let r = sim::run(seed, &opts());
    let v = r
        .violation
        .unwrap_or_else(|| panic!("seed {seed} no longer fails: update KNOWN_FAILURES"));
    assert_eq!(v.invariant, invariant);
    assert_eq!(v.seed, seed);
    assert!(v.step > 0 && v.step <= r.steps);
    assert_eq!(v.trail.len(), 30, "the last 30 events");
    let text = v.to_string();
    for needle in [
        format!("seed {seed} step {}", v.step),
        format!("`{invariant}`"),
        format!("--seed {seed}"),
    ] {
        assert!(text.contains(&needle), "'{needle}' missing from:\n{text}");
    }
}
