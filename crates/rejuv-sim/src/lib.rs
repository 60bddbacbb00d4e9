//! Deterministic simulation of the rejuv core against simulated servers, clock and faults.
//!
//! - [`traces`]: seeded resource traces, healthy and aging, with ground-truth exhaustion.
//! - [`eval`]: the trend detector and the threshold baselines scored on those traces.
//! - [`oracle`]: the best forecast a bursty leak allows, to judge the detector's against.
//! - [`sim`]: the controller's shell, core, detector and gate against simulated agents,
//!   network, store, clock and faults, invariants checked after every step.
//! - [`whatif`]: `rejuv whatif`, a fleet's recorded series replayed through the production
//!   core and through cron-like baselines.

pub mod eval;
pub mod oracle;
pub mod sim;
pub mod traces;
pub mod whatif;
