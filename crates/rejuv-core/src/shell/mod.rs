//! The shell: the one driver of the core that the controller and the simulator both run.
//!
//! ```text
//! sample / result / tick / operator ─▶ Shell ─▶ Cluster::apply ─▶ commit ─▶ publish ─▶ carry out
//!                                        ▲            (one step)     (Effects)  (Effects)   │
//!                                        └──────────── attempt ended, retry due ◀───────────┘
//! ```
//!
//! - [`driver`]: steps, commit-then-act, fail closed, re-sending the outbox.
//! - [`readings`]: samples to observations and the production detector's judgements.
//! - [`carrier`]: which command goes now, retries with backoff, deadlines.
//! - [`durable`]: what of the state is written, and what is a reading.
//! - [`effects`]: the trait the world implements (store, agents, timers), once for real and
//!   once simulated.
//!
//! Nothing here does I/O or reads a clock: `now` comes in with every call.

pub mod carrier;
pub mod driver;
pub mod durable;
pub mod effects;
pub mod readings;

pub use driver::{Note, Shell};
pub use effects::{Attempt, Effects, Step, StoreHealth};
