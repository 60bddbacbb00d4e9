//! Time as the core sees it: passed in, never read.
//!
//! `Now` carries a monotonic reading (for leases and timeouts inside one process) and a
//! wall-clock reading (for deadlines that are persisted and re-armed after a restart). Both are
//! plain milliseconds so that the simulator can drive them.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (wall clock).
pub type WallMs = u64;

/// The moment a step happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Now {
    /// Milliseconds on a monotonic clock local to the running process.
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: WallMs,
}

impl Now {
    pub fn new(mono_ms: u64, wall_ms: WallMs) -> Self {
        Self { mono_ms, wall_ms }
    }

    /// A `Now` where both clocks read the same, for tests and the simulator.
    pub fn at(ms: u64) -> Self {
        Self {
            mono_ms: ms,
            wall_ms: ms,
        }
    }
}
