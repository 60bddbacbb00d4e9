//! What a schedule is told (its options) and what it tells (its report, or the invariant it
//! broke).

use std::fmt;

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Options {
    /// Steps of the faulty part of the schedule (the quiet part comes on top).
    pub steps: u64,
    /// Print every line of the event log as it happens.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 300,
            verbose: false,
        }
    }
}

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub invariant: &'static str,
    pub detail: String,
    pub scenario: String,
    /// The last lines of the event log.
    pub trail: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "VIOLATION seed {} step {}: invariant `{}`: {}",
            self.seed, self.step, self.invariant, self.detail
        )?;
        writeln!(f, "scenario: {}", self.scenario)?;
        writeln!(f, "last {} events:", self.trail.len())?;
        for line in &self.trail {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay: cargo run -p rejuv-sim --bin rejuv-sim -- --seed {} --verbose",
            self.seed
        )
    }
}

/// What one schedule did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub scenario: String,
    pub steps: u64,
    pub sim_ms: u64,
    pub completed: u64,
    pub rolled_back: u64,
    pub failed: u64,
    pub controller_crashes: u32,
    /// Crashes after which some float of the state came back from JSON not bit-identical.
    pub float_drift: u32,
    /// FNV-1a of the whole event log.
    pub digest: u64,
    pub violation: Option<Violation>,
}
