//! Detection: from a server's samples to a judgement, and from a judgement to the moment of
//! the switch.
//!
//! - [`level`]: the levels of a judgement, `stable` < `suspect` < `unstable`.
//! - [`stats`]: the statistics of one window of values (Mann-Kendall, Sen's slope, Hamed–Rao,
//!   the normal distribution).
//! - [`shape`]: once a trend alarms, the model (line, parabola, daily cycle, knee) whose
//!   forecast of the time to exhaustion the history supports best.
//! - [`trend`]: the online trend detector of one series: is it heading for exhaustion, and
//!   when will it get there?
//! - [`detector`]: per-server judgement, the threshold rules with their hold-down and the
//!   trend rule over every resource, with an explanation.
//! - [`gate`]: once the replacement is hot, switch and rejuvenate now or at a quieter moment.
//! - [`analyze`]: one recorded series (a CSV) replayed through the trend detector, as
//!   `rejuv analyze` reports it.
//!
//! Everything here reads its parameters from [`crate::config`] and nothing from the cluster
//! state machine, which calls the detector and the gate.

pub mod analyze;
pub mod detector;
pub mod gate;
pub mod level;
pub mod shape;
pub mod stats;
pub mod trend;
