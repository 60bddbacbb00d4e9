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
//! - [`detector`]: per-server judgement (thresholds with hold-down; trend forecasts).
//! - [`gate`]: switch-and-rejuvenate now, or wait for a quieter moment.
//! - [`cluster`]: the cluster-wide state machine `step(cluster, event, now)`.

pub mod api;
pub mod cluster;
pub mod config;
pub mod detector;
pub mod digest;
pub mod gate;
pub mod time;
pub mod trend;
pub mod types;
