//! The entry points of the loop: [`Cluster::new`] from the config, and [`step`] /
//! [`Cluster::apply`], one `match` from an [`Event`] to its handler, followed by the same
//! settling every step ends with (workflows moved, new ones planned, routes recomputed,
//! hooks fired, advisory mode's commands described instead of issued).

use super::event::Event;
use super::output::{CommandKind, EventKind, Output};
use super::state::{Cluster, Instance, Server, ServerState, Traffic};
use crate::api::RouteTable;
use crate::config::{Config, ServerConfig};
use crate::detector::Level;
use crate::time::Now;
use std::collections::{BTreeMap, BTreeSet};

/// `step(cluster, event, now) -> (cluster, output)`.
pub fn step(mut cluster: Cluster, cfg: &Config, event: Event, now: Now) -> (Cluster, Output) {
    let out = cluster.apply(cfg, event, now);
    (cluster, out)
}

impl Cluster {
    /// A new cluster from the config: servers with their roles, and the initial instances
    /// asked of the primaries.
    pub fn new(cfg: &Config, now: Now) -> (Self, Output) {
        let mut c = Cluster {
            mode: cfg.cluster.mode,
            servers: BTreeMap::new(),
            instances: BTreeMap::new(),
            workflows: BTreeMap::new(),
            history: Vec::new(),
            pending: BTreeMap::new(),
            paused: false,
            advisory: false,
            quorum_lost: false,
            exhausted_total: 0,
            advised: BTreeSet::new(),
            forgotten: Vec::new(),
            unknown_reported: BTreeSet::new(),
            routes_version: 1,
            routes: RouteTable {
                epoch: 0,
                version: 1,
                services: BTreeMap::new(),
            },
            next_id: 1,
            completed_total: 0,
            rolled_back_total: 0,
            failed_total: 0,
            last_completed_at_ms: None,
            incarnation: super::state::incarnation(&cfg.cluster.name, now.wall_ms),
            alerts_blocking: None,
            joined: cfg
                .joined_servers()
                .map(|s| (s.id.clone(), s.clone()))
                .collect(),
        };
        let mut out = Output::default();
        for s in &cfg.servers {
            c.add_server(s, &mut out);
        }
        c.log(
            &mut out,
            now,
            EventKind::ClusterCreated,
            None,
            None,
            format!(
                "{} cluster with {} servers",
                cfg.cluster.mode,
                cfg.servers.len()
            ),
        );
        c.refresh_routes(cfg);
        (c, out)
    }

    /// A configured server, in service, with a start asked for each of its instances.
    pub(super) fn add_server(&mut self, s: &ServerConfig, out: &mut Output) {
        self.servers.insert(
            s.id.clone(),
            Server {
                id: s.id.clone(),
                role: s.role,
                state: ServerState::InService,
                capacity: s.capacity,
                reserved_by: None,
                judgement: Level::Stable,
                explanation: None,
                observation: None,
                maintenance: false,
                avoid_as_target_until_ms: None,
                manual_request: None,
                blocked_reason: None,
                level: 0,
                last_rejuvenated_at_ms: None,
                unreachable_since_ms: None,
                host_judgement: Level::Stable,
                unstable_instances: Vec::new(),
                instance_rejuvenations_ms: Vec::new(),
                removing: false,
            },
        );
        for svc in &s.instances {
            let id = self.new_instance_id(svc, &s.id);
            self.instances.insert(
                id.clone(),
                Instance {
                    id: id.clone(),
                    service: svc.clone(),
                    server: s.id.clone(),
                    addr: None,
                    healthy: false,
                    traffic: Traffic::Serving,
                    draining_from_version: None,
                    drained: false,
                    drain_applied: false,
                    confirmed_at_ms: None,
                },
            );
            self.issue(
                out,
                CommandKind::StartInstance {
                    server: s.id.clone(),
                    instance: id,
                    service: svc.clone(),
                },
            );
        }
    }

    /// Applies agents' observations and judgements that arrived together (`events`: only
    /// [`Event::Observed`] and [`Event::Judged`]; anything else is applied on its own, as
    /// [`Cluster::apply`] does) and then moves and plans once, as if they had arrived at the
    /// same instant. A large fleet's batch of samples then costs one pass over the fleet, not
    /// one per sample.
    pub fn apply_observations(&mut self, cfg: &Config, events: Vec<Event>, now: Now) -> Output {
        let mut out = Output::default();
        let mut others = Vec::new();
        for event in events {
            match event {
                Event::Observed {
                    server,
                    observation,
                } => self.on_observed(cfg, &server, observation, now, &mut out),
                Event::Judged { server, judgement } => {
                    self.on_judged(&server, judgement, now, &mut out)
                }
                other => others.push(other),
            }
        }
        self.settle(cfg, now, &mut out);
        self.forget_removed(now, &mut out);
        self.refresh_routes(cfg);
        self.fire_hooks(cfg, &mut out);
        if self.advisory {
            self.say_instead_of_doing(now, &mut out);
        }
        for event in others {
            let o = self.apply(cfg, event, now);
            out.commands.extend(o.commands);
            out.events.extend(o.events);
        }
        out
    }

    /// Applies one event. See the module docs for the phases.
    pub fn apply(&mut self, cfg: &Config, event: Event, now: Now) -> Output {
        let mut out = Output::default();
        match event {
            Event::Observed {
                server,
                observation,
            } => self.on_observed(cfg, &server, observation, now, &mut out),
            Event::Judged { server, judgement } => {
                self.on_judged(&server, judgement, now, &mut out)
            }
            Event::Tick => {}
            Event::CommandDone { id, result } => {
                self.on_command_done(cfg, id, result, now, &mut out)
            }
            Event::TrafficSynced { version, in_flight } => {
                self.on_traffic_synced(version, &in_flight)
            }
            Event::Operator { by, command } => {
                // Refusals are reported by `check_operator` before the event is applied;
                // here the request is carried out.
                self.on_operator(cfg, &by, command, now, &mut out);
            }
            Event::Reconfigured { by } => self.on_reconfigured(cfg, &by, now, &mut out),
            Event::AlertsBlocking { firing } => {
                if firing != self.alerts_blocking {
                    let message = match &firing {
                        Some(what) => format!(
                            "alerts are firing ({what}): no planned workflow starts until they stop"
                        ),
                        None => "no alert blocks workflows any more".to_string(),
                    };
                    self.log(&mut out, now, EventKind::AlertBlock, None, None, message);
                    self.alerts_blocking = firing;
                }
            }
        }
        self.settle(cfg, now, &mut out);
        self.forget_removed(now, &mut out);
        self.refresh_routes(cfg);
        self.fire_hooks(cfg, &mut out);
        if self.advisory {
            self.say_instead_of_doing(now, &mut out);
        }
        out
    }

    /// Moves workflows, plans new ones, and moves those too, until nothing changes.
    fn settle(&mut self, cfg: &Config, now: Now, out: &mut Output) {
        for _ in 0..4 {
            self.advance(cfg, now, out);
            let before = self.workflows.len();
            self.plan(cfg, now, out);
            if self.workflows.len() == before {
                break;
            }
        }
    }
}
