//! The invariants checked after every step of a simulation, and at the end of a schedule.
//!
//! `Cluster::check_invariants` is checked first (targets held once, the unforced budget,
//! reservations and rejuvenating states that point at running workflows, no spare in an
//! active-active cluster, no source off the list before its copies are hot). The checks here
//! look at what it does not: the transition a step made (`Before` → the cluster after), the
//! commands it issued, and the world as the simulation fed it to the core (the last
//! observation of each agent).

use rejuv_core::api::{BackendState, InstanceState};
use rejuv_core::cluster::{
    Cluster, CommandKind, Observation, Output, Phase, ServerState, Workflow,
};
use rejuv_core::config::Config;
use rejuv_core::types::{Role, ServerId};
use std::collections::BTreeMap;

/// Where a server stood, without its failure reason (cheap to take before every step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stood {
    InService,
    Rejuvenating(u64),
    Failed,
}

impl Stood {
    fn of(s: &ServerState) -> Self {
        match s {
            ServerState::InService => Stood::InService,
            ServerState::Rejuvenating { workflow } => Stood::Rejuvenating(*workflow),
            ServerState::Failed { .. } => Stood::Failed,
        }
    }
}

/// What a step's checks need of the state before it. Every input of the step checks but the
/// route table's contents and the last observations is in here, so two equal `Before`s around
/// a step mean the checks (which held before it) need not run again; see [`needed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Before {
    /// Per server, in the order of `Cluster::servers` (the set never changes): where it
    /// stood, whether it was in maintenance, its role and reservation.
    pub servers: Vec<(Stood, bool, Role, Option<u64>)>,
    pub workflows: Vec<(u64, Phase)>,
    /// Ids issued from here on (instances, commands, workflows) are new in this step.
    pub next_id: u64,
    pub serving_capacity: u32,
    pub routes_version: u64,
    pub pending: usize,
}

impl Before {
    pub fn of(c: &Cluster) -> Self {
        Before {
            servers: c
                .servers
                .values()
                .map(|s| (Stood::of(&s.state), s.maintenance, s.role, s.reserved_by))
                .collect(),
            workflows: c.workflows.values().map(|w| (w.id, w.phase)).collect(),
            next_id: c.next_id,
            serving_capacity: serving_capacity(c),
            routes_version: c.routes_version,
            pending: c.pending.len(),
        }
    }

    fn had_workflow(&self, id: u64) -> bool {
        self.workflows.iter().any(|(w, _)| *w == id)
    }
}

/// Which checks a step needs: all of them when anything they read changed; only the route
/// check when just an observation came in (the route check reads the last observations).
pub enum Needed {
    All,
    Routes,
    None,
}

pub fn needed(before: &Before, after: &Before, observed: bool) -> Needed {
    if before != after {
        Needed::All
    } else if observed {
        Needed::Routes
    } else {
        Needed::None
    }
}

/// The id number at the end of an instance id (`web-s2-7`).
fn id_number(instance: &str) -> Option<u64> {
    instance.rsplit('-').next()?.parse().ok()
}

/// Everything a step check looks at.
pub struct StepCtx<'a> {
    pub cfg: &'a Config,
    pub before: &'a Before,
    pub after: &'a Cluster,
    pub out: &'a Output,
    /// The last observation the simulation delivered for each server.
    pub last_obs: &'a BTreeMap<ServerId, Observation>,
    /// Whether a server's host or agent is down in the world right now (died, crashed).
    pub down: &'a dyn Fn(&str) -> bool,
}

impl StepCtx<'_> {
    /// The servers after the step, each with where it stood before.
    fn servers(&self) -> impl Iterator<Item = (&rejuv_core::cluster::Server, (Stood, bool))> {
        self.after
            .servers
            .values()
            .zip(self.before.servers.iter().map(|(st, m, _, _)| (*st, *m)))
    }
}

pub type Check = fn(&StepCtx) -> Result<(), String>;

/// The step invariants, by name, in the order they are checked.
pub const STEP_CHECKS: &[(&str, Check)] = &[
    ("core-check-invariants", core_invariants),
    ("outbox-holds-issued-commands", outbox_holds_issued),
    ("one-state-per-server", one_state_per_server),
    ("budget-at-plan", budget_at_plan),
    ("capacity-floor", capacity_floor),
    ("off-list-only-when-copied", off_list_only_when_copied),
    ("maintenance-respected", maintenance_respected),
    ("maintenance-stays-out", maintenance_stays_out),
    ("routes-healthy-confirmed", routes_healthy_confirmed),
];

/// The first broken step invariant, with its name.
pub fn check_step(ctx: &StepCtx, needed: Needed) -> Option<(&'static str, String)> {
    match needed {
        Needed::All => STEP_CHECKS
            .iter()
            .find_map(|(name, check)| check(ctx).err().map(|why| (*name, why))),
        Needed::Routes => routes_healthy_confirmed(ctx)
            .err()
            .map(|why| ("routes-healthy-confirmed", why)),
        Needed::None => None,
    }
}

/// Capacity units of primaries on the available server list. A source still serves until its
/// switch, so it counts until then (the core's `available_capacity` is more cautious), and a
/// server in maintenance counts too: taking it out is the operator's doing, not rejuv's.
pub fn serving_capacity(c: &Cluster) -> u32 {
    c.servers
        .values()
        .filter(|s| s.state == ServerState::InService && s.role == Role::Primary)
        .map(|s| s.capacity)
        .sum()
}

fn switched(w: &Workflow) -> bool {
    !matches!(w.phase, Phase::Duplexing | Phase::Gating)
}

fn core_invariants(ctx: &StepCtx) -> Result<(), String> {
    let bad = ctx.after.check_invariants(ctx.cfg);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// A command the step issued is in the outbox it committed (or it could be lost in a crash).
fn outbox_holds_issued(ctx: &StepCtx) -> Result<(), String> {
    for cmd in &ctx.out.commands {
        if ctx.after.pending.get(&cmd.id) != Some(cmd) {
            return Err(format!(
                "command {} was issued but is not in the outbox",
                cmd.id
            ));
        }
    }
    Ok(())
}

/// Every configured server exists once and is in exactly one of: idle in service, source of
/// a workflow before its switch, target of a workflow, rejuvenating under its workflow, failed.
fn one_state_per_server(ctx: &StepCtx) -> Result<(), String> {
    let c = ctx.after;
    if c.servers.len() != ctx.cfg.servers.len()
        || ctx
            .cfg
            .servers
            .iter()
            .any(|s| !c.servers.contains_key(&s.id))
    {
        return Err("the cluster's servers are not the configured ones".into());
    }
    for s in c.servers.values() {
        let src: Vec<&Workflow> = c.workflows.values().filter(|w| w.server == s.id).collect();
        // In place, a workflow's copies run on its source: that is no second role.
        let tgt: Vec<&Workflow> = c
            .workflows
            .values()
            .filter(|w| w.target == s.id && !w.in_place())
            .collect();
        if src.len() > 1 {
            return Err(format!("{} is the source of {} workflows", s.id, src.len()));
        }
        if !src.is_empty() && !tgt.is_empty() {
            return Err(format!("{} is both a source and a target", s.id));
        }
        match &s.state {
            ServerState::InService => {
                if let Some(w) = src.iter().find(|w| switched(w) && w.takes_server_out()) {
                    return Err(format!(
                        "{} is in service while its workflow {} is {}",
                        s.id, w.id, w.phase
                    ));
                }
            }
            ServerState::Rejuvenating { workflow } => {
                if !src.iter().any(|w| w.id == *workflow && switched(w)) {
                    return Err(format!(
                        "{} is rejuvenating under workflow {workflow}, which is not its switched workflow",
                        s.id
                    ));
                }
                if !tgt.is_empty() || s.reserved_by.is_some() {
                    return Err(format!("{} is rejuvenating and reserved as a target", s.id));
                }
            }
            ServerState::Failed { .. } => {
                if !src.is_empty() || !tgt.is_empty() || s.reserved_by.is_some() {
                    return Err(format!("{} is failed and still in a workflow", s.id));
                }
            }
        }
    }
    Ok(())
}

/// An unforced workflow starts only while fewer than `max_concurrent` workflows (forced ones
/// included) run: `check_invariants` only counts the unforced ones afterwards.
fn budget_at_plan(ctx: &StepCtx) -> Result<(), String> {
    let c = ctx.after;
    let max = ctx.cfg.budget.max_concurrent as usize;
    for w in c.workflows.values() {
        if ctx.before.had_workflow(w.id) || w.forced {
            continue;
        }
        let older = c.workflows.keys().filter(|id| **id < w.id).count();
        if older >= max {
            return Err(format!(
                "unforced workflow {} for {} started while {older} workflow(s) ran (budget {max})",
                w.id, w.server
            ));
        }
    }
    Ok(())
}

/// Serving capacity does not fall below the floor because of a step of rejuv's; a server
/// that died is the exception.
fn capacity_floor(ctx: &StepCtx) -> Result<(), String> {
    let floor = ctx.cfg.budget.min_available_capacity;
    let now = serving_capacity(ctx.after);
    if now >= floor || now >= ctx.before.serving_capacity {
        return Ok(());
    }
    let left: Vec<&ServerId> = ctx
        .servers()
        .filter(|(s, (stood, _))| {
            *stood == Stood::InService
                && !(s.state == ServerState::InService && s.role == Role::Primary)
        })
        .map(|(s, _)| &s.id)
        .collect();
    if left.iter().all(|id| (ctx.down)(id)) && !left.is_empty() {
        return Ok(());
    }
    // A dead server failed over in this step: its capacity was gone already, and the spare
    // that replaces it may be smaller.
    if left
        .iter()
        .any(|id| failed_over(ctx.after, id) || seen_down(ctx.after, id))
    {
        return Ok(());
    }
    Err(format!(
        "serving capacity fell from {} to {now}, below the floor {floor} (left the list: {left:?})",
        ctx.before.serving_capacity
    ))
}

/// Whether `server` left the list through a reactive failover: its controller saw it dead
/// (agent silent for `policy.failover_after`, instances down), which is the exception to the
/// capacity and copy rules.
fn failed_over(c: &Cluster, server: &str) -> bool {
    c.workflows
        .values()
        .chain(c.history.iter())
        .any(|w| w.server == server && w.failover)
}

/// Whether the controller last saw `server`'s agent silent: a source that went silent while
/// its hot copy waited fails over to the copy at once (to the controller it is dead).
fn seen_down(c: &Cluster, server: &str) -> bool {
    c.servers
        .get(server)
        .and_then(|s| s.observation.as_ref())
        .is_some_and(|o| !o.reachable)
}

/// A server leaves the list only when every one of its instances has a copy that its agent
/// last reported healthy on the target (a dead server is the exception).
fn off_list_only_when_copied(ctx: &StepCtx) -> Result<(), String> {
    let c = ctx.after;
    for (s, (stood, _)) in ctx.servers() {
        if stood != Stood::InService
            || s.state == ServerState::InService
            || (ctx.down)(&s.id)
            || failed_over(c, &s.id)
        {
            continue;
        }
        let w = c
            .workflows
            .values()
            .find(|w| w.server == s.id)
            .or_else(|| c.history.iter().rev().find(|w| w.server == s.id));
        let Some(w) = w else {
            return Err(format!("{} left the list without a workflow", s.id));
        };
        let obs = ctx.last_obs.get(&w.target).filter(|o| o.reachable);
        for p in &w.pairs {
            let confirmed = obs
                .and_then(|o| o.instances.get(&p.new))
                .is_some_and(|i| i.healthy && i.state == InstanceState::Running);
            if !confirmed {
                return Err(format!(
                    "{} left the list but its copy {} on {} was not last seen healthy",
                    s.id, p.new, w.target
                ));
            }
        }
    }
    Ok(())
}

/// A server in maintenance is left alone until released: no workflow starts with it as source
/// or target, no new instance is placed on it, and it does not come back on the list.
fn maintenance_respected(ctx: &StepCtx) -> Result<(), String> {
    let c = ctx.after;
    for (s, (_, was_held)) in ctx.servers() {
        if !(was_held && s.maintenance) {
            continue;
        }
        if let Some(w) = c
            .workflows
            .values()
            // Maintenance on a serving primary moves its instances off it first: that
            // workflow has it as its source by design.
            .find(|w| {
                !ctx.before.had_workflow(w.id)
                    && (w.target == s.id || (w.server == s.id && !c.servers[&s.id].maintenance))
            })
        {
            return Err(format!(
                "workflow {} started with {} (in maintenance) as its {}",
                w.id,
                s.id,
                if w.server == s.id { "source" } else { "target" }
            ));
        }
        for cmd in &ctx.out.commands {
            if let CommandKind::StartInstance {
                server, instance, ..
            } = &cmd.kind
            {
                let new = id_number(instance).is_none_or(|n| n >= ctx.before.next_id);
                if server == &s.id && new {
                    return Err(format!(
                        "new instance {instance} placed on {} in maintenance",
                        s.id
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A server in maintenance stays out until released: a workflow already under way when the
/// operator turned maintenance on does not rejuvenate it nor bring it back on the list.
fn maintenance_stays_out(ctx: &StepCtx) -> Result<(), String> {
    for (s, (stood, was_held)) in ctx.servers() {
        if !(was_held && s.maintenance) {
            continue;
        }
        if stood != Stood::InService && s.state == ServerState::InService {
            return Err(format!(
                "{} came back on the list while in maintenance",
                s.id
            ));
        }
        for cmd in &ctx.out.commands {
            if let CommandKind::Rejuvenate { server, .. } = &cmd.kind {
                if server == &s.id {
                    return Err(format!(
                        "Rejuvenate issued to {} while it is in maintenance",
                        s.id
                    ));
                }
            }
        }
    }
    Ok(())
}

/// No route sends new requests to an instance that is not healthy-confirmed: known, on a
/// primary on the list, and reported healthy and running at that address by its agent's last
/// answer. A draining backend is an instance the core drains.
fn routes_healthy_confirmed(ctx: &StepCtx) -> Result<(), String> {
    let c = ctx.after;
    for r in c.routes.services.values() {
        for b in &r.backends {
            let Some(i) = c.instances.get(&b.id) else {
                return Err(format!("route to unknown instance {}", b.id));
            };
            match b.state {
                BackendState::Serving => {
                    let on_list = c
                        .servers
                        .get(&i.server)
                        .is_some_and(|s| s.on_list() && s.role == Role::Primary);
                    if !on_list {
                        return Err(format!(
                            "{} serves from {}, which is not a primary on the list",
                            b.id, i.server
                        ));
                    }
                    let confirmed = ctx
                        .last_obs
                        .get(&i.server)
                        .filter(|o| o.reachable)
                        .and_then(|o| o.instances.get(&b.id))
                        .is_some_and(|o| {
                            o.healthy && o.state == InstanceState::Running && o.addr == Some(b.addr)
                        });
                    if !confirmed {
                        return Err(format!(
                            "{} at {} serves but its agent did not last report it healthy there",
                            b.id, b.addr
                        ));
                    }
                }
                BackendState::Draining => {
                    if i.traffic != rejuv_core::cluster::Traffic::Draining {
                        return Err(format!("{} listed draining but is {:?}", b.id, i.traffic));
                    }
                }
            }
        }
    }
    Ok(())
}
