//! Deterministic simulation of the rejuv core against simulated servers, clock and faults.
//!
//! - [`traces`]: seeded resource traces, healthy and aging, with ground-truth exhaustion.
//! - [`eval`]: the trend detector and the threshold baselines scored on those traces.
//! - [`analyze`]: `rejuv analyze`: a CSV series fed to the detector, as JSON or a text chart.

pub mod analyze;
pub mod eval;
pub mod sim;
pub mod traces;
