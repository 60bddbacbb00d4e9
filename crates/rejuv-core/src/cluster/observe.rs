//! Observation and judgement: what the agents report, what the detector concludes, what the
//! traffic adapter applied, and the judgements derived from them that planning asks for
//! (is a server dead, is it due by age).
//!
//! These handlers only record what was seen (and restart an instance its agent lost); the
//! workflows and the plan act on it when the step settles.

use super::event::Observation;
use super::output::{CommandKind, EventKind, LogEvent, Output};
use super::state::{Cluster, Server, Traffic};
use crate::api::InstanceState;
use crate::config::{Config, UnknownInstances};
use crate::detector::Judgement;
use crate::time::Now;
use crate::types::{InstanceId, Role, ServiceName};
use std::collections::BTreeMap;

impl Cluster {
    pub(super) fn on_observed(
        &mut self,
        cfg: &Config,
        server: &str,
        obs: Observation,
        now: Now,
        out: &mut Output,
    ) {
        let Some(s) = self.servers.get_mut(server) else {
            return;
        };
        let was_reachable = s.reachable();
        if obs.reachable {
            s.unreachable_since_ms = None;
        } else if s.unreachable_since_ms.is_none() {
            s.unreachable_since_ms = Some(now.wall_ms);
        }
        if obs.reachable != was_reachable && s.observation.is_some() {
            let msg = if obs.reachable {
                "agent reachable again"
            } else {
                "agent unreachable"
            };
            out.events.push(LogEvent {
                at_ms: now.wall_ms,
                kind: EventKind::Agent,
                server: Some(server.to_string()),
                workflow: None,
                message: msg.into(),
                level: None,
            });
        }
        // The old observation keeps its boot identity while the agent is away: a new one on
        // its return is a host restart (the instances it ran are gone with it).
        let restarted = match (
            s.observation.as_ref().and_then(|o| o.boot_id.as_deref()),
            obs.boot_id.as_deref(),
        ) {
            (Some(before), Some(after)) if obs.reachable && before != after => {
                Some(format!("host restarted (boot id {before} -> {after})"))
            }
            _ => None,
        };
        if let Some(message) = restarted {
            out.events.push(LogEvent {
                at_ms: now.wall_ms,
                kind: EventKind::HostRestart,
                server: Some(server.to_string()),
                workflow: None,
                message,
                level: None,
            });
        }
        self.record_observation(server, obs);
        self.restart_lost_instances(server, now, out);
        self.stop_strangers(cfg, server, now, out);
    }

    /// Instances the agent runs that this cluster did not start: each is reported once (an
    /// `unknown-instance` event and an alert) and, by `controller.unknown_instances`,
    /// stopped. One it started and forgot (a copy rolled back, a source rejuvenated) is
    /// stopped without a word.
    fn stop_strangers(&mut self, cfg: &Config, server: &str, now: Now, out: &mut Output) {
        let Some(o) = self.servers[server]
            .observation
            .as_ref()
            .filter(|o| o.reachable)
        else {
            return;
        };
        let strangers: Vec<InstanceId> = o
            .instances
            .keys()
            .filter(|id| !self.instances.contains_key(*id))
            .filter(|id| {
                !self.pending.values().any(|c| {
                    matches!(&c.kind,
                        CommandKind::StartInstance { instance, .. } | CommandKind::StopInstance { instance, .. }
                        if instance == *id)
                })
            })
            .cloned()
            .collect();
        for id in strangers {
            let ours = self.forgotten.contains(&id);
            if !ours && self.unknown_reported.insert(id.clone()) {
                let what = match cfg.controller.unknown_instances {
                    UnknownInstances::Stop => "stopping it",
                    UnknownInstances::Report => {
                        "leaving it (controller.unknown_instances = \"report\")"
                    }
                };
                let said =
                    format!("{server} runs {id}, which this controller did not start: {what}");
                self.log(
                    out,
                    now,
                    EventKind::UnknownInstance,
                    Some(server),
                    None,
                    said.clone(),
                );
                self.issue(
                    out,
                    CommandKind::Alert {
                        name: "RejuvUnknownInstance".into(),
                        server: Some(server.to_string()),
                        summary: said,
                    },
                );
            }
            if ours || cfg.controller.unknown_instances == UnknownInstances::Stop {
                self.issue(
                    out,
                    CommandKind::StopInstance {
                        server: server.to_string(),
                        instance: id,
                    },
                );
            }
        }
    }

    /// Takes in what a server's agent reported: its instances' health and addresses, or that
    /// none of them can be seen.
    fn record_observation(&mut self, server: &str, obs: Observation) {
        let s = self.servers.get_mut(server).expect("present");
        if obs.reachable {
            for inst in self.instances.values_mut().filter(|i| i.server == server) {
                match obs.instances.get(&inst.id) {
                    Some(o) => {
                        if o.addr.is_some() {
                            inst.addr = o.addr;
                        }
                        inst.healthy = o.healthy && o.state == InstanceState::Running;
                    }
                    None => inst.healthy = false,
                }
            }
            s.observation = Some(obs);
        } else {
            for inst in self.instances.values_mut().filter(|i| i.server == server) {
                inst.healthy = false;
            }
            match &mut s.observation {
                Some(o) => {
                    o.reachable = false;
                    o.at_ms = obs.at_ms;
                }
                None => s.observation = Some(obs),
            }
        }
    }

    /// An instance the server should run but that its agent does not know (the agent lost
    /// it, e.g. its host restarted) is started again, unless a start is already pending.
    fn restart_lost_instances(&mut self, server: &str, now: Now, out: &mut Output) {
        let s = &self.servers[server];
        if let Some(o) = s.observation.as_ref().filter(|o| o.reachable) {
            let missing: Vec<(InstanceId, ServiceName)> = self
                .instances
                .values()
                .filter(|i| i.server == server && i.traffic != Traffic::Draining)
                .filter(|i| !o.instances.contains_key(&i.id))
                .filter(|i| i.confirmed_at_ms.is_none_or(|t| o.at_ms >= t))
                .filter(|i| {
                    !self.pending.values().any(|c| {
                        matches!(&c.kind, CommandKind::StartInstance { instance, .. } if instance == &i.id)
                    })
                })
                .map(|i| (i.id.clone(), i.service.clone()))
                .collect();
            for (id, service) in missing {
                self.log(
                    out,
                    now,
                    EventKind::InstanceLost,
                    Some(server),
                    None,
                    format!("agent does not run {id}: starting it again"),
                );
                self.issue(
                    out,
                    CommandKind::StartInstance {
                        server: server.to_string(),
                        instance: id,
                        service,
                    },
                );
            }
        }
    }

    pub(super) fn on_judged(&mut self, server: &str, j: Judgement, now: Now, out: &mut Output) {
        let Some(s) = self.servers.get_mut(server) else {
            return;
        };
        let changed = s.judgement != j.level;
        s.judgement = j.level;
        s.explanation = j.explanation.clone();
        s.host_judgement = j.host;
        s.unstable_instances = j.unstable_instances.clone();
        if changed {
            let msg = match &j.explanation {
                Some(e) => format!("judged {}: {}", j.level, e.message),
                None => format!("judged {}", j.level),
            };
            self.log(out, now, EventKind::Judgement, Some(server), None, msg)
                .level = Some(j.level);
        }
    }

    pub(super) fn on_traffic_synced(
        &mut self,
        version: u64,
        in_flight: &BTreeMap<InstanceId, u64>,
    ) {
        for i in self.instances.values_mut() {
            if i.traffic == Traffic::Draining && !i.drained {
                if let Some(from) = i.draining_from_version {
                    if version >= from {
                        i.drain_applied = true;
                        if in_flight.get(&i.id).copied().unwrap_or(0) == 0 {
                            i.drained = true;
                        }
                    }
                }
            }
        }
    }

    /// Why `s` counts as dead (reactive failover), if it does: a primary on the list whose
    /// agent has not answered for `policy.failover_after` and none of whose instances is
    /// known healthy.
    pub(super) fn dead(&self, cfg: &Config, s: &Server, now: Now) -> Option<String> {
        let since = s.unreachable_since_ms?;
        let gone = now.wall_ms.saturating_sub(since);
        let has_instances = self.instances.values().any(|i| i.server == s.id);
        let any_healthy = self
            .instances
            .values()
            .any(|i| i.server == s.id && i.healthy);
        (s.role == Role::Primary
            && has_instances
            && !any_healthy
            && u128::from(gone) >= cfg.policy.failover_after.as_millis())
        .then(|| {
            format!(
                "agent unreachable for {:.0}s and its instances down: failing over",
                gone as f64 / 1000.0
            )
        })
    }

    /// Why `s` is due for fixed-period rejuvenation, if it is: its running time passed
    /// `max_running_time`, shortened by its own stable jitter.
    pub(super) fn due_by_age(&self, cfg: &Config, s: &Server) -> Option<String> {
        let max = cfg.policy.max_running_time?;
        let running = s
            .observation
            .as_ref()
            .filter(|o| o.reachable)?
            .running_time_s;
        let limit =
            max.as_secs_f64() * (1.0 - cfg.policy.max_running_time_jitter * unit_hash(&s.id));
        (running >= limit).then(|| {
            format!(
                "running time {running:.0}s reached its fixed-period limit {limit:.0}s (max_running_time {:?} with jitter)",
                max
            )
        })
    }
}

/// A stable draw in [0, 1) from a server id, for per-server jitter.
fn unit_hash(id: &str) -> f64 {
    (crate::digest::fnv1a64(id.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64
}
