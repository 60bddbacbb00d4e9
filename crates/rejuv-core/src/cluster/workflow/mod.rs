//! The workflow phases, one module each, in the order a workflow runs through them:
//!
//! ```text
//! duplexing ─▶ gating ─▶ draining ─▶ handing_off ─▶ rejuvenating ─▶ verifying ─▶ rejoin
//!     └──────────┴──▶ finish (rolled back)            └───────────────┴──▶ finish (failed)
//! ```
//!
//! [`advance`] holds the one `match` from a workflow's phase to the module that moves it on;
//! each phase module also takes the command results that belong to it. [`finish`] ends a
//! workflow (rolled back, failed, evacuated) and [`rejoin`] completes one.

mod advance;
mod draining;
mod duplexing;
mod finish;
mod gating;
mod handing_off;
mod rejoin;
mod rejuvenating;
mod verifying;
