//! HAProxy traffic adapter: keeps HAProxy backends equal to the available server list.
//!
//! rejuv drives the HAProxy the operator already runs through its runtime API (the stats
//! socket, `level admin`), with no reload. Each rejuv service maps to one HAProxy backend; each
//! instance endpoint in the route table becomes a *dynamic* server named
//! `<prefix><instance id>` (default prefix `rj-`, e.g. `rj-web-s1-1`). Like the builtin
//! adapter it is a reconcile loop: every pass reads what HAProxy has, compares it with the
//! desired [`RouteTable`](rejuv_core::api::RouteTable) and fixes the difference, then reports the in-flight sessions per
//! instance to the engine as `TrafficSynced`, which is how a drain is known to be finished.
//!
//! | table says | HAProxy gets |
//! |---|---|
//! | `Serving` | server present at that address, state ready (`add server` + `enable server`) |
//! | `Draining` | `set server B/N state drain` (no new requests, in-flight ones finish) |
//! | absent | drain, then `maint` + `del server` once its sessions reach 0 |
//! | other address | the old server leaves as if absent, then the new one is added |
//!
//! The folder keeps the configuration (`config`), the errors (`error`), the argument checks
//! (`args`), HAProxy's answers parsed (`state`), the runtime API client (`client`), the pure
//! planner (`plan`), the reconciler (`reconcile`) and the loop task (`task`) apart.
//!
//! # Guarantees
//! - Only servers whose name starts with the prefix are ever changed; static servers and other
//!   dynamic servers are left alone.
//! - A rejuv server that is in forced maintenance although the table wants it, and that rejuv
//!   did not put there, was put there by an operator: it is left alone and reported (one
//!   warning per server). HAProxy 2.6 cannot tell the two apart by itself: `add server` leaves a
//!   new server with `srv_admin_state` 0x01 (`SRV_ADMF_FMAINT`), exactly what
//!   `set server … state maint` and `disable server` leave. So `add server` and
//!   `enable server` go in one request (HAProxy runs `;`-chained commands in order), and the
//!   adapter remembers the servers it added or put in maintenance itself, per HAProxy process.
//! - In-flight counts come from a read made *after* the pass's changes are in force, so a
//!   request that slipped in before a drain took effect is still counted.
//! - Every argument sent is checked against a strict character set first (HAProxy chains
//!   commands on `;`); a table with a bad name or address is refused whole, before anything is
//!   sent.
//! - A restarted HAProxy forgets dynamic servers: every pass diffs from scratch, so the next
//!   pass re-adds them. The process identity (`show info` Pid and start time) is tracked only
//!   to reset the adapter's memory and to say so in the log.
//!
//! # Assumptions
//! - HAProxy 2.6 or later, one worker process (or the worker's socket in master-worker mode),
//!   backends with a dynamic balance algorithm (`roundrobin`, `leastconn`, `random`, `first`,
//!   or consistent hashing): `static-rr` and map-based hashing refuse dynamic servers.
//! - Dynamic servers do not inherit `default-server` in 2.6: health-check settings are sent in
//!   the `add server` line ([`HealthCheck`]).
//! - `ServiceRoutes::hold` (request holding during a state hand-off) has no HAProxy
//!   equivalent; it is logged and ignored.

mod args;
mod client;
mod config;
mod error;
mod plan;
mod reconcile;
mod state;
mod task;
#[cfg(test)]
mod tests;

pub use config::{HaproxyConfig, HaproxySocket, HealthCheck, DEFAULT_PREFIX};
pub use error::HaproxyError;
pub use reconcile::{Haproxy, PassReport};
pub use state::{admin, ServerState};
pub use task::reconcile_haproxy;
