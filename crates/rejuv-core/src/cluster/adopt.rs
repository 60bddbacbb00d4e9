//! A new cluster that adopts what the agents already run: the way back from a lost or
//! emptied store without forking the cluster (agents refuse a fresh epoch 1 as stale, and a
//! fresh state would start new instances beside the ones already serving, orphaning them).
//!
//! [`Cluster::adopt`] is [`Cluster::new`] with every instance an agent reports (of a service in
//! the catalog, on a configured server) taken in as it is: it replaces the fresh instance the
//! config asks of that server for the same service, and its start is not issued. Instances
//! beyond the config's (copies a lost workflow had started on a spare) are kept and serve; the
//! plan moves them on from there. Instance ids stay unique: the id counter starts above every
//! adopted id's number.

use super::output::{CommandKind, EventKind, Output};
use super::state::{Cluster, Instance, Traffic};
use crate::config::Config;
use crate::time::Now;
use crate::types::{InstanceId, ServerId, ServiceName};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One instance an agent reported running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: InstanceId,
    pub service: ServiceName,
    pub addr: Option<SocketAddr>,
}

impl Cluster {
    /// A new cluster from the config that takes in the instances in `found` (per server).
    /// Instances of unknown servers or services are left out (and logged).
    pub fn adopt(cfg: &Config, found: &BTreeMap<ServerId, Vec<Found>>, now: Now) -> (Self, Output) {
        let (mut c, mut out) = Cluster::new(cfg, now);
        let mut adopted = 0usize;
        let mut left_out = Vec::new();
        for (server, list) in found {
            for f in list {
                if !c.servers.contains_key(server) || !cfg.services.contains_key(&f.service) {
                    left_out.push(format!("{} on {server}", f.id));
                    continue;
                }
                if c.instances.contains_key(&f.id) {
                    // Fresh ids cannot collide with an adopted one once the counter is moved
                    // past it; an id seen twice (two agents) is kept once.
                    left_out.push(format!("{} on {server} (id seen twice)", f.id));
                    continue;
                }
                c.take_in(server, f, &mut out);
                adopted += 1;
            }
        }
        let above = found
            .values()
            .flatten()
            .filter_map(|f| id_number(&f.id))
            .max()
            .map_or(0, |n| n.saturating_add(1));
        c.next_id = c.next_id.max(above);
        c.refresh_routes(cfg);
        let mut message = format!("adopted {adopted} running instances from the agents");
        if !left_out.is_empty() {
            message.push_str(&format!(
                "; left out (unknown server or service): {}",
                left_out.join(", ")
            ));
        }
        c.log(
            &mut out,
            now,
            EventKind::ClusterCreated,
            None,
            None,
            message,
        );
        (c, out)
    }

    /// Takes `f` in on `server`, in place of a fresh instance of its service there (whose start
    /// is withdrawn) if there is one.
    fn take_in(&mut self, server: &str, f: &Found, out: &mut Output) {
        let fresh = self
            .instances
            .values()
            .find(|i| i.server == server && i.service == f.service && self.start_pending_for(&i.id))
            .map(|i| i.id.clone());
        if let Some(fresh) = fresh {
            self.instances.remove(&fresh);
            let starts_fresh = |kind: &CommandKind| matches!(kind, CommandKind::StartInstance { instance, .. } if *instance == fresh);
            self.pending.retain(|_, cmd| !starts_fresh(&cmd.kind));
            out.commands.retain(|cmd| !starts_fresh(&cmd.kind));
        }
        self.instances.insert(
            f.id.clone(),
            Instance {
                id: f.id.clone(),
                service: f.service.clone(),
                server: server.to_string(),
                addr: f.addr,
                healthy: false,
                traffic: Traffic::Serving,
                draining_from_version: None,
                drained: false,
                drain_applied: false,
                confirmed_at_ms: None,
            },
        );
    }

    fn start_pending_for(&self, id: &str) -> bool {
        self.pending.values().any(
            |cmd| matches!(&cmd.kind, CommandKind::StartInstance { instance, .. } if instance == id),
        )
    }
}

/// The number an instance id ends with (`web-s1-7` → 7).
fn id_number(id: &str) -> Option<u64> {
    id.rsplit('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> Config {
        Config::from_toml(crate::config::tests::EXAMPLE).unwrap()
    }

    #[test]
    fn adopted_instances_replace_the_fresh_ones_and_their_starts() {
        let cfg = cfg();
        let primary = cfg
            .servers
            .iter()
            .find(|s| !s.instances.is_empty())
            .expect("a primary with instances");
        let service = primary.instances[0].clone();
        let found = BTreeMap::from([(
            primary.id.clone(),
            vec![Found {
                id: format!("{service}-{}-41", primary.id),
                service: service.clone(),
                addr: Some("127.0.0.1:9001".parse().unwrap()),
            }],
        )]);
        let now = Now::new(0, 1_000);
        let (fresh, fresh_out) = Cluster::new(&cfg, now);
        let (c, out) = Cluster::adopt(&cfg, &found, now);
        let on_primary: Vec<_> = c
            .instances
            .values()
            .filter(|i| i.server == primary.id && i.service == service)
            .collect();
        assert_eq!(
            on_primary.len(),
            1,
            "one instance of {service} on {}",
            primary.id
        );
        assert_eq!(on_primary[0].id, format!("{service}-{}-41", primary.id));
        assert_eq!(
            out.commands.len() + 1,
            fresh_out.commands.len(),
            "the adopted instance's start is withdrawn"
        );
        assert_eq!(c.pending.len() + 1, fresh.pending.len());
        assert!(c.next_id >= 42, "new ids start above the adopted ones");
        assert!(out
            .events
            .iter()
            .any(|e| e.message.starts_with("adopted 1 running instances")));
    }

    #[test]
    fn instances_of_unknown_servers_or_services_are_left_out() {
        let cfg = cfg();
        let found = BTreeMap::from([
            (
                "nowhere".to_string(),
                vec![Found {
                    id: "x-nowhere-3".into(),
                    service: "x".into(),
                    addr: None,
                }],
            ),
            (
                cfg.servers[0].id.clone(),
                vec![Found {
                    id: "nosuch-s1-4".into(),
                    service: "nosuch".into(),
                    addr: None,
                }],
            ),
        ]);
        let now = Now::new(0, 1_000);
        let (c, out) = Cluster::adopt(&cfg, &found, now);
        let (fresh, _) = Cluster::new(&cfg, now);
        assert_eq!(c.instances.len(), fresh.instances.len());
        assert!(out
            .events
            .iter()
            .any(|e| e.message.contains("left out") && e.message.contains("nosuch-s1-4")));
    }
}
