//! The planner: given what HAProxy has for one backend and what the route table wants, the
//! changes to make, in a safe order (new servers first, deletions last). Pure: the tests drive
//! it with captured states.

use super::state::{check_state, ServerState};
use rejuv_core::api::{Backend, BackendState};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A change the planner asks for on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// `add server` (+ `enable health`) + `enable server`, in one request.
    Add {
        server: String,
        addr: SocketAddr,
    },
    Ready {
        server: String,
    },
    Drain {
        server: String,
    },
    EnableHealth {
        server: String,
    },
    /// `maint` (unless already) then `del server`; then `add` at `readd` if given.
    Delete {
        server: String,
        already_maint: bool,
        readd: Option<SocketAddr>,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct BackendPlan {
    pub(super) changes: Vec<Change>,
    pub(super) operator_maint: Vec<String>,
}

/// Decides the changes for one backend. Pure: the tests drive it with captured states.
pub(super) fn plan_backend(
    prefix: &str,
    health_checks: bool,
    servers: &[ServerState],
    want: &BTreeMap<String, &Backend>,
    own_maint: impl Fn(&str) -> bool,
) -> BackendPlan {
    let mut plan = BackendPlan::default();
    let mut sorted = Sorted::default();
    for s in servers {
        let Some(id) = s.name.strip_prefix(prefix) else {
            continue; // not rejuv's
        };
        match want.get(id) {
            None => sorted.deletes.extend(leaving(s, None)),
            Some(b) if s.socket_addr() != Some(b.addr) => {
                let readd = (b.state == BackendState::Serving).then_some(b.addr);
                match leaving(s, readd) {
                    Some(c @ Change::Delete { .. }) => sorted.deletes.push(c),
                    Some(c) => sorted.drains.push(c),
                    None => {}
                }
            }
            Some(b) => staying(
                s,
                b.state,
                health_checks,
                &own_maint,
                &mut sorted,
                &mut plan,
            ),
        }
    }
    for (id, b) in want {
        let name = format!("{prefix}{id}");
        if b.state == BackendState::Serving && !servers.iter().any(|s| s.name == name) {
            sorted.adds.push(Change::Add {
                server: name,
                addr: b.addr,
            });
        }
    }
    // New servers take traffic before old ones stop taking it.
    plan.changes.extend(sorted.adds);
    plan.changes.extend(sorted.readies);
    plan.changes.extend(sorted.drains);
    plan.changes.extend(sorted.deletes);
    plan
}

/// The changes of a pass by kind, in the order they are made.
#[derive(Default)]
struct Sorted {
    adds: Vec<Change>,
    readies: Vec<Change>,
    drains: Vec<Change>,
    deletes: Vec<Change>,
}

/// A server leaving (not in the table, or at another address; the new one comes after):
/// drained first, deleted once idle, then re-added at `readd` if given.
fn leaving(s: &ServerState, readd: Option<SocketAddr>) -> Option<Change> {
    let server = s.name.clone();
    let idle = s.in_flight() == 0;
    if s.in_maint() {
        idle.then_some(Change::Delete {
            server,
            already_maint: true,
            readd,
        })
    } else if !s.draining() {
        Some(Change::Drain { server })
    } else {
        idle.then_some(Change::Delete {
            server,
            already_maint: false,
            readd,
        })
    }
}

/// A server the table keeps at its address, in state `state`.
fn staying(
    s: &ServerState,
    state: BackendState,
    health_checks: bool,
    own_maint: impl Fn(&str) -> bool,
    sorted: &mut Sorted,
    plan: &mut BackendPlan,
) {
    let server = s.name.clone();
    match state {
        BackendState::Serving => {
            if s.forced_maint() {
                if own_maint(&server) {
                    sorted.readies.push(Change::Ready { server });
                } else {
                    plan.operator_maint.push(server);
                }
            } else if s.draining() {
                sorted.readies.push(Change::Ready { server });
            } else if health_checks
                && s.check_state & check_state::CONFIGURED != 0
                && s.check_state & check_state::ENABLED == 0
            {
                sorted.readies.push(Change::EnableHealth { server });
            }
        }
        BackendState::Draining => {
            // In maintenance (rejuv's or an operator's) it takes no new requests
            // either: nothing to do.
            if !s.in_maint() && !s.draining() {
                sorted.drains.push(Change::Drain { server });
            }
        }
    }
}
