//! `rejuv-core`: the domain of rejuv as pure code.
//!
//! Nothing here does I/O or reads a clock. The shells (agent, controller, simulator) feed
//! observations and `now` in, and carry out the commands that come back. This is what lets the
//! simulator run a month of a fleet in a second and the crash-resume tests kill a controller at
//! every step.
//!
//! - [`types`]: identifiers, roles, modes, samples.
//! - [`config`]: the `rejuv.toml` model and its validation.
//! - [`api`]: the JSON shapes spoken between controller, agents and the builtin proxy.
//! - [`detect`]: trend statistics, the per-server detector (thresholds with hold-down; trend
//!   forecasts), the gate (switch-and-rejuvenate now, or wait for a quieter moment) and the
//!   replay of a recorded series (`rejuv analyze`). [`detector`], [`trend`] and [`gate`] keep
//!   their older paths as re-exports.
//! - [`cluster`]: the cluster-wide state machine `step(cluster, event, now)`.
//! - [`shell`]: the driver of that machine (commit, then act; retries; the detector), shared
//!   by the controller and the simulator.
//! - [`wire`]: the controller API's request and answer types (controller, CLI, dashboard).
//! - [`text`]: text from outside bounded and escaped before it is stored or printed;
//!   [`reply`]: agents' replies sanitized with it.

pub mod api;
pub mod cluster;
pub mod config;
pub mod detect;
pub mod digest;
pub mod reply;
pub mod ring;
pub mod secret;
pub mod shell;
pub mod text;
pub mod time;
pub mod types;
pub mod wire;

/// Per-server judgement: [`detect::detector`] at its older path.
pub mod detector {
    pub use crate::detect::detector::*;
}

/// The trend detector of one series and its statistics ([`detect::trend`],
/// [`detect::stats`]) and its parameters ([`config::TrendConfig`]), at their older path.
pub mod trend {
    pub use crate::config::TrendConfig;
    pub use crate::detect::stats::*;
    pub use crate::detect::trend::*;
}

/// The gate: [`detect::gate`] at its older path.
pub mod gate {
    pub use crate::detect::gate::*;
}

/// An error with its causes, `outer: cause: root cause`, for a log line, an API body or a
/// status field; a cause whose text the message already holds (a wrapper that repeats its
/// source) is not written twice.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("committing a step failed")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("database space exceeded")]
    struct Inner;

    #[test]
    fn error_chain_writes_every_cause_once() {
        assert_eq!(
            super::error_chain(&Outer(Inner)),
            "committing a step failed: database space exceeded"
        );
        let io = std::io::Error::other(Inner);
        assert_eq!(super::error_chain(&io), "database space exceeded");
    }
}
