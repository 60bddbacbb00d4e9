//! A deterministic simulation of the controller: the production shell
//! ([`rejuv_core::shell::Shell`]: commit-then-act, retries and deadlines, the production
//! detector and gate) driven against simulated agents, network, proxy, store, clock and
//! faults, with invariants checked after every step.
//!
//! One seed draws a scenario (mode, servers, services, budget, floor, escalation, fault
//! profile) and then a fault schedule as the run goes. The run is a discrete-event loop over
//! simulated milliseconds; each step the shell hands on is one *step*. Only the world is
//! simulated:
//! - agents polled every 2 s, whose instances become healthy after a random delay (or never),
//!   and whose memory grows while a leaky server runs instances: their samples go through the
//!   production detector (a threshold at 75% held 4 s, and the trend rule over minutes: the
//!   scenario's `[policy]`);
//! - a network whose messages are delayed or lost; a proxy the traffic adapter feeds, whose
//!   drained backends report in-flight requests for a while;
//! - a store that keeps the last committed state, read back through JSON after a crash;
//! - a controller clock whose wall time jumps by up to ±10 min while `mono_ms` only grows;
//! - faults: controller crash and restart (every pending command is sent again), agent crash
//!   (its instances are lost), agent hang, network partition, message loss and delay, server
//!   death, traffic sync delays, instance crashes, servers whose instances never turn
//!   healthy, load changes, and operator requests (pause, resume, maintenance on/off,
//!   rejuvenate with and without force).
//!
//! After `steps` steps every fault is healed, aging stops, and the run goes on quietly until
//! every workflow that was running has ended and every pending command was answered, within a
//! bound computed from the config: that is the liveness check. See [`checks`] for the rest.
//!
//! - [`driver`]: the event loop, the controller process (start, crash, restart).
//! - [`fleet`]: the simulated world as the shell's effects.
//! - [`faults`]: the fault schedule and the simulated operator.
//! - [`describe`], [`report`], [`world`], [`rng`]: log lines, results, the world's parts.
//!
//! # Guarantees
//! - The same seed and options give the same run: the event log's digest is the same.

pub mod checks;
pub mod describe;
pub mod driver;
pub mod faults;
pub mod fleet;
pub mod report;
pub mod rng;
pub mod world;

use driver::Sim;
pub use report::{Options, RunReport, Violation};
use std::fmt;
use std::time::{Duration, Instant};

/// Runs the schedule of `seed`.
pub fn run(seed: u64, opts: &Options) -> RunReport {
    let mut sim = Sim::new(seed, opts.clone());
    let violation = sim.run_all().err();
    let c = sim.cluster().clone();
    RunReport {
        seed,
        scenario: sim.f.sc.describe(),
        steps: sim.f.steps,
        sim_ms: sim.f.t,
        completed: c.completed_total,
        rolled_back: c.rolled_back_total,
        failed: c.failed_total,
        controller_crashes: sim.f.crashes,
        float_drift: sim.f.float_drift,
        digest: sim.f.digest,
        violation,
    }
}

/// Many schedules, summed.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub schedules: u64,
    pub steps: u64,
    pub sim_ms: u64,
    pub completed: u64,
    pub rolled_back: u64,
    pub failed: u64,
    pub controller_crashes: u64,
    /// Schedules in which at least one workflow completed.
    pub with_completed: u64,
    pub violations: Vec<Violation>,
    pub elapsed: Duration,
}

impl Summary {
    fn add(&mut self, r: RunReport) {
        self.schedules += 1;
        self.steps += r.steps;
        self.sim_ms += r.sim_ms;
        self.completed += r.completed;
        self.rolled_back += r.rolled_back;
        self.failed += r.failed;
        self.controller_crashes += u64::from(r.controller_crashes);
        self.with_completed += u64::from(r.completed > 0);
        self.violations.extend(r.violation);
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "schedules {} | steps {} | simulated {:.1} h | workflows completed {} rolled back {} failed {} | schedules with a completed workflow {} | controller crashes {} | violations {} | {:.2} s ({:.0} schedules/s, {:.0} steps/s)",
            self.schedules,
            self.steps,
            self.sim_ms as f64 / 3.6e6,
            self.completed,
            self.rolled_back,
            self.failed,
            self.with_completed,
            self.controller_crashes,
            self.violations.len(),
            secs,
            self.schedules as f64 / secs,
            self.steps as f64 / secs,
        )
    }
}

/// Runs seeds `from..from + schedules` on `threads` threads.
pub fn run_many(from: u64, schedules: u64, opts: &Options, threads: usize) -> Summary {
    let started = Instant::now();
    let threads = threads.max(1) as u64;
    let parts: Vec<Summary> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let opts = opts.clone();
                scope.spawn(move || {
                    let mut s = Summary::default();
                    let mut seed = from + k;
                    while seed < from + schedules {
                        s.add(run(seed, &opts));
                        seed += threads;
                    }
                    s
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let mut total = Summary::default();
    for p in parts {
        total.schedules += p.schedules;
        total.steps += p.steps;
        total.sim_ms += p.sim_ms;
        total.completed += p.completed;
        total.rolled_back += p.rolled_back;
        total.failed += p.failed;
        total.controller_crashes += p.controller_crashes;
        total.with_completed += p.with_completed;
        total.violations.extend(p.violations);
    }
    total.violations.sort_by_key(|v| v.seed);
    total.elapsed = started.elapsed();
    total
}
