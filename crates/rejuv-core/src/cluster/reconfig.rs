//! A reloaded config (`rejuv reload`, `SIGHUP`, or a restart over a stored state): servers
//! added to `[[servers]]` join, servers taken out of it are evacuated like maintenance and then
//! forgotten, capacities follow the config. A reload that the running cluster cannot take (a
//! new mode, a service removed while it runs, a removal that breaks the capacity floor or
//! leaves instances nowhere to go) is refused as a whole, with the reason.
//!
//! The instances of a server already in the cluster belong to the cluster, not to its
//! `instances` line: roles swap as workflows run (a spare becomes a primary), so that line
//! only says what a server that joins starts with.

use super::operator::Refusal;
use super::output::{EventKind, Output};
use super::state::{Cluster, ServerState};
use crate::config::Config;
use crate::time::Now;
use crate::types::{Mode, Role, ServerId};
use std::collections::BTreeSet;

/// What a reload changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<ServerId>,
    pub removed: Vec<ServerId>,
    /// Servers that were being removed and are listed again.
    pub kept: Vec<ServerId>,
    /// `(server, from, to)`.
    pub capacity: Vec<(ServerId, u32, u32)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.kept.is_empty()
            && self.capacity.is_empty()
    }

    /// One line per change, as events and `rejuv reload` say them.
    pub fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        for s in &self.added {
            v.push(format!("{s} joins the cluster"));
        }
        for s in &self.removed {
            v.push(format!(
                "{s} is being removed: its instances move off it, then it is forgotten"
            ));
        }
        for s in &self.kept {
            v.push(format!("{s} is listed again: its removal is called off"));
        }
        for (s, from, to) in &self.capacity {
            v.push(format!("{s} capacity {from} -> {to} units"));
        }
        v
    }
}

impl Cluster {
    /// What `cfg` would change in the running cluster, or why it cannot take it.
    pub fn check_reload(&self, cfg: &Config) -> Result<Changes, Refusal> {
        let refuse = |why: String| Err(Refusal::Reload(why));
        if cfg.cluster.mode != self.mode {
            return refuse(format!(
                "cluster.mode is {} in the running cluster and {} in the config; a cluster cannot change its mode while it runs",
                self.mode, cfg.cluster.mode
            ));
        }
        for i in self.instances.values() {
            if !cfg.services.contains_key(&i.service) {
                return refuse(format!(
                    "service '{}' is not in the config but instance {} of it runs on {}; move or stop its instances first",
                    i.service, i.id, i.server
                ));
            }
        }
        let listed: BTreeSet<&str> = cfg.servers.iter().map(|s| s.id.as_str()).collect();
        let mut ch = Changes::default();
        for s in &cfg.servers {
            match self.servers.get(&s.id) {
                None => ch.added.push(s.id.clone()),
                Some(have) => {
                    if have.removing {
                        ch.kept.push(s.id.clone());
                    }
                    if have.capacity != s.capacity {
                        ch.capacity.push((s.id.clone(), have.capacity, s.capacity));
                    }
                }
            }
        }
        for s in self.servers.values() {
            if !listed.contains(s.id.as_str()) && !s.removing {
                ch.removed.push(s.id.clone());
            }
        }
        self.check_removals(cfg, &ch)?;
        Ok(ch)
    }

    /// Whether what the removed servers serve has somewhere to go and the capacity floor holds
    /// once it went there.
    fn check_removals(&self, cfg: &Config, ch: &Changes) -> Result<(), Refusal> {
        if ch.removed.is_empty() {
            return Ok(());
        }
        let gone: BTreeSet<&str> = self
            .servers
            .values()
            .filter(|s| s.removing || ch.removed.contains(&s.id))
            .map(|s| s.id.as_str())
            .collect();
        let capacity_of = |id: &str| {
            cfg.server(id)
                .map(|c| c.capacity)
                .or_else(|| self.servers.get(id).map(|s| s.capacity))
                .unwrap_or(0)
        };
        let serving = |s: &&super::state::Server| {
            !gone.contains(s.id.as_str()) && s.state == ServerState::InService && !s.maintenance
        };
        let moving: Vec<&str> = gone
            .iter()
            .copied()
            .filter(|id| self.instances.values().any(|i| i.server == *id))
            .collect();
        let primaries: u32 = self
            .servers
            .values()
            .filter(serving)
            .filter(|s| s.role == Role::Primary)
            .map(|s| capacity_of(&s.id))
            .sum();
        let new_units: u32 = ch
            .added
            .iter()
            .filter_map(|id| cfg.server(id))
            .filter(|s| s.role == Role::Primary)
            .map(|s| s.capacity)
            .sum();
        let after = match self.mode {
            Mode::ActiveStandby => {
                let mut spares: Vec<u32> = self
                    .servers
                    .values()
                    .filter(serving)
                    .filter(|s| s.role == Role::Spare)
                    .map(|s| capacity_of(&s.id))
                    .collect();
                spares.extend(
                    ch.added
                        .iter()
                        .filter_map(|id| cfg.server(id))
                        .filter(|s| s.role == Role::Spare)
                        .map(|s| s.capacity),
                );
                if spares.len() < moving.len() {
                    return Err(Refusal::Reload(format!(
                        "removing {} leaves the instances of {} nowhere to go: {} spare(s) in service for them",
                        ch.removed.join(", "),
                        moving.join(", "),
                        spares.len()
                    )));
                }
                spares.sort_unstable_by(|a, b| b.cmp(a));
                primaries + new_units + spares.iter().take(moving.len()).sum::<u32>()
            }
            Mode::ActiveActive => primaries + new_units,
        };
        let floor = cfg.budget.min_available_capacity;
        if after < floor {
            return Err(Refusal::Reload(format!(
                "removing {} would leave {after} units of serving capacity, below budget.min_available_capacity = {floor}",
                ch.removed.join(", ")
            )));
        }
        if self.mode == Mode::ActiveActive && !moving.is_empty() {
            let needed: u32 = self
                .instances
                .values()
                .filter(|i| gone.contains(i.server.as_str()))
                .map(|i| cfg.services.get(&i.service).map_or(1, |s| s.units))
                .sum();
            let used: u32 = self
                .instances
                .values()
                .filter(|i| !gone.contains(i.server.as_str()))
                .map(|i| cfg.services.get(&i.service).map_or(1, |s| s.units))
                .sum();
            if after < used + needed {
                return Err(Refusal::Reload(format!(
                    "removing {} leaves its instances nowhere to go: they need {needed} units, the servers that stay have {} free",
                    ch.removed.join(", "),
                    after.saturating_sub(used)
                )));
            }
        }
        Ok(())
    }

    /// Carries out a reload that [`Cluster::check_reload`] accepted (`cfg` is the new config).
    pub(super) fn on_reconfigured(&mut self, cfg: &Config, by: &str, now: Now, out: &mut Output) {
        let ch = match self.check_reload(cfg) {
            Ok(ch) => ch,
            Err(refusal) => {
                self.log(
                    out,
                    now,
                    EventKind::OperatorRefused,
                    None,
                    None,
                    format!("{by}: {refusal}"),
                );
                return;
            }
        };
        let mut said: Vec<(ServerId, String)> = Vec::new();
        for id in &ch.added {
            let s = cfg.server(id).expect("listed").clone();
            self.add_server(&s, out);
            said.push((
                id.clone(),
                format!(
                    "{id} joins the cluster as a {} with {} units (reload by {by}); it serves once its agent answers",
                    s.role, s.capacity
                ),
            ));
        }
        for id in &ch.removed {
            let s = self.servers.get_mut(id).expect("present");
            s.removing = true;
            s.maintenance = true;
            s.manual_request = None;
            said.push((
                id.clone(),
                format!(
                    "{id} is no longer in the config (reload by {by}): its instances move off it, then it is forgotten"
                ),
            ));
        }
        for id in &ch.kept {
            let s = self.servers.get_mut(id).expect("present");
            s.removing = false;
            s.maintenance = false;
            said.push((
                id.clone(),
                format!("{id} is in the config again (reload by {by}): its removal is called off"),
            ));
        }
        for (id, from, to) in &ch.capacity {
            self.servers.get_mut(id).expect("present").capacity = *to;
            said.push((
                id.clone(),
                format!("{id} capacity {from} -> {to} units (reload by {by})"),
            ));
        }
        for (id, message) in said {
            self.log(out, now, EventKind::Config, Some(&id), None, message);
        }
        self.note_joined(cfg);
        if ch.is_empty() {
            self.log(
                out,
                now,
                EventKind::Config,
                None,
                None,
                format!("config reloaded by {by}: no change to the servers"),
            );
        }
    }

    /// Keeps the joined servers of `cfg`, and those joined ones that are being removed (their
    /// agent's address is needed until they are forgotten).
    fn note_joined(&mut self, cfg: &Config) {
        let mut joined: std::collections::BTreeMap<_, _> = cfg
            .joined_servers()
            .map(|s| (s.id.clone(), s.clone()))
            .collect();
        for (id, s) in std::mem::take(&mut self.joined) {
            let leaving = self.servers.get(&id).is_some_and(|x| x.removing);
            if leaving && cfg.server(&id).is_none() {
                joined.entry(id).or_insert(s);
            }
        }
        self.joined = joined;
    }

    /// Forgets removed servers once nothing runs on them and no workflow needs them.
    pub(super) fn forget_removed(&mut self, now: Now, out: &mut Output) {
        let done: Vec<ServerId> = self
            .servers
            .values()
            .filter(|s| s.removing && s.reserved_by.is_none())
            .filter(|s| !self.instances.values().any(|i| i.server == s.id))
            .filter(|s| {
                !self
                    .workflows
                    .values()
                    .any(|w| w.server == s.id || w.target == s.id)
            })
            .map(|s| s.id.clone())
            .collect();
        for id in done {
            self.servers.remove(&id);
            self.joined.remove(&id);
            self.log(
                out,
                now,
                EventKind::Config,
                Some(&id),
                None,
                format!(
                    "{id} forgotten: it is out of the config and runs nothing of the cluster's"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::{step, Cluster, Event};
    use crate::config::{check_join, Config, JoinRequest};
    use crate::time::Now;

    /// A joined server is kept in the state (what a restarted controller adds to its config)
    /// from the reload that adds it until it is forgotten, and a removed one meanwhile.
    #[test]
    fn joined_servers_are_kept_until_forgotten() {
        let cfg = Config::from_toml(crate::config::tests::EXAMPLE).unwrap();
        let (c, _) = Cluster::new(&cfg, Now::new(0, 1_000));
        assert!(c.joined.is_empty());
        let s3 = check_join(
            &cfg,
            &JoinRequest {
                id: "s3".into(),
                role: "spare".into(),
                capacity: 2,
                services: vec!["web".into()],
                agent: "127.0.0.4:7001".parse().unwrap(),
                address: None,
                port_range: [20000, 20010],
                memory_budget_bytes: None,
                instances: Vec::new(),
            },
        )
        .unwrap();
        let with = cfg.with_joined([&s3]);
        let ev = || Event::Reconfigured { by: "test".into() };
        let (c, out) = step(c, &with, ev(), Now::new(10, 1_010));
        assert_eq!(c.joined.keys().collect::<Vec<_>>(), ["s3"]);
        assert!(c.servers.contains_key("s3"));
        assert!(out.events.iter().any(|e| e.message.starts_with("s3 joins")));
        // A reload of the file alone (s3 not merged in) would remove it: the engine merges;
        // here the removal itself: s3 stays in `joined` while it is removed, then goes.
        let (c, _) = step(c, &cfg, ev(), Now::new(20, 1_020));
        assert!(
            !c.servers.contains_key("s3"),
            "an idle spare is forgotten at once"
        );
        assert!(c.joined.is_empty());
        // Listed in the file under the same id: the list wins, nothing is kept as joined.
        let (c, _) = step(c, &with, ev(), Now::new(30, 1_030));
        let mut listed = s3.clone();
        listed.joined = false;
        let mut file = cfg.clone();
        file.servers.push(listed);
        let (c, _) = step(c, &file, ev(), Now::new(40, 1_040));
        assert!(c.servers.contains_key("s3") && c.joined.is_empty());
    }
}
