//! The cluster-wide state machine: `step(cluster, event, now) -> (cluster, output)`.
//!
//! One reducer owns the whole cluster, not one per workflow: the disruption budget, the
//! capacity floor and target reservations span workflows, and only a single reducer can keep two
//! workflows from taking the same spare.
//!
//! A workflow runs through explicit phases:
//!
//! ```text
//! plan ─▶ Duplexing ─▶ Gating ─▶ Draining ─▶ HandingOff ─▶ Rejuvenating ─▶ Verifying ─▶ rejoin
//!            │ timeout / start failed                      (stateful only)     │ failed / timeout
//!            └──▶ rolled back: target released,                                └──▶ server kept out
//!                 source keeps serving                                              (failed), alert
//! ```
//!
//! Every command the machine wants carried out is put in the outbox ([`Cluster::pending`]) in
//! the same state it returns, so a shell that commits the state commits the intent with it. A
//! command stays in the outbox until its result comes back as [`Event::CommandDone`]; after a
//! crash the shell sends every pending command again, and each one is idempotent by its id (and
//! the instance or run id it names).
//!
//! # Guarantees
//! - A source server leaves the available server list only once every one of its instances has
//!   a healthy copy on the target.
//! - No server is the target of two workflows; active workflows never exceed the budget (an
//!   operator's `force` excepted); the capacity floor holds at planning time.
//! - A failed duplex rolls back: the target's new instances are stopped, the target is released,
//!   and the source keeps serving.
//!
//! # Where things live
//!
//! The loop, bottom up (a module uses only those above it in this list):
//!
//! - `event`: what comes in (events, observations, operators' requests, command results).
//! - `names`: enums with stable stored names (event kinds, workflow steps).
//! - `output`: what goes out (commands, event-log lines and their kinds).
//! - `state`: the cluster, its servers, instances and workflows.
//! - `outbox`: issuing commands and writing the event log; advisory mode's filter.
//! - `budget`: capacity and its floor, concurrency, pause, freeze, cooldown, reservations,
//!   quorum.
//! - `routes`: the route table the load balancer follows.
//! - `hooks`: operators' hooks around steps, and the veto gate.
//! - `observe`: observations, judgements, traffic syncs; dead or due by age.
//! - `workflow`: one module per phase, and how workflows end.
//! - `plan`: which servers need a workflow, target choice, starting one.
//! - `operator`: operators' requests and refusals.
//! - `results`: command results routed to whoever asked.
//! - `apply`: [`Cluster::new`], [`step`] and the one `match` from event to handler.
//! - `adopt`: [`Cluster::adopt`], a new cluster taking in what the agents already run.
//! - `invariants`: what must hold after every step.

mod adopt;
mod apply;
mod budget;
mod event;
mod hooks;
mod invariants;
mod names;
mod observe;
mod operator;
mod outbox;
mod output;
mod plan;
mod reconfig;
mod results;
mod routes;
mod state;
mod stored;
mod workflow;

pub use adopt::Found;
pub use apply::step;
pub use event::{CommandResult, Event, Observation, ObservedInstance, OperatorCommand};
pub use operator::Refusal;
pub use output::{Command, CommandKind, EventKind, LogEvent, Output};
pub use reconfig::Changes;
pub use state::{
    Cluster, Instance, Outcome, Pair, Phase, Placement, Scope, Server, ServerState, Step, StepTime,
    Traffic, Workflow,
};
pub use stored::WithoutFleet;
