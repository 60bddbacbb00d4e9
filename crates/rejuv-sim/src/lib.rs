//! Deterministic simulation of the rejuv core against simulated servers, clock and faults.
//!
//! - [`traces`]: seeded resource traces, healthy and aging, with ground-truth exhaustion.
//! - [`eval`]: the trend detector and the threshold baselines scored on those traces.

pub mod eval;
pub mod sim;
pub mod traces;
