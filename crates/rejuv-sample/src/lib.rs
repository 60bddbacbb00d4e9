//! An HTTP service that ages on purpose, and a bounded load generator, for rejuv demos and tests.
//!
//! - [`service`]: a small HTTP service that leaks real memory (per request and per second),
//!   slows down as it leaks, dies like an OOM kill past a limit, and carries a counter whose
//!   state can be handed off to a fresh instance. It is the "aging server" rejuv rejuvenates.
//! - [`loadgen`]: an open-loop, fixed-rate HTTP load generator with a hard time bound, used to
//!   show that a switchover drops no request.

mod histogram;
pub mod loadgen;
pub mod service;
