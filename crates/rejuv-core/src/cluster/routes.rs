//! The route table: which instance endpoints the load balancer sends each service's traffic
//! to (serving) or lets finish (draining), recomputed from the instances after every step.
//!
//! The traffic adapter reconciles the load balancer to this table and reports the version it
//! applied ([`crate::cluster::Event::TrafficSynced`]), which is what ends a drain.

use super::state::{Cluster, Traffic};
use crate::api::{Backend, BackendState, RouteTable, ServiceRoutes};
use crate::config::Config;
use crate::types::ServiceName;
use std::collections::BTreeMap;

impl Cluster {
    /// Recomputes the route table; bumps its version when it changed.
    pub(super) fn refresh_routes(&mut self, cfg: &Config) {
        // Every step ends here, and almost none changes the table: checking it in place
        // costs no allocation, building it one per backend.
        if self.routes_hold(cfg) {
            return;
        }
        let mut services: BTreeMap<ServiceName, ServiceRoutes> = BTreeMap::new();
        for name in cfg.services.keys() {
            let hold = cfg.services[name]
                .handoff
                .as_ref()
                .map_or(5_000, |h| h.hold.as_millis() as u64);
            services.insert(
                name.clone(),
                ServiceRoutes {
                    backends: vec![],
                    hold: false,
                    max_hold_ms: hold,
                },
            );
        }
        for i in self.instances.values() {
            let Some(addr) = i.addr else { continue };
            let Some(state) = Self::backend_state(i) else {
                continue;
            };
            if let Some(r) = services.get_mut(&i.service) {
                r.backends.push(Backend {
                    id: i.id.clone(),
                    addr,
                    state,
                });
            }
        }
        if services != self.routes.services {
            self.routes_version += 1;
            self.routes = RouteTable {
                epoch: 0,
                version: self.routes_version,
                services,
            };
        }
    }

    /// Where an instance stands in the table: its state, if it is a backend at all.
    fn backend_state(i: &super::state::Instance) -> Option<BackendState> {
        match i.traffic {
            Traffic::Serving if i.healthy => Some(BackendState::Serving),
            Traffic::Draining if !i.drained => Some(BackendState::Draining),
            _ => None,
        }
    }

    /// Whether the table in force is the one [`Self::refresh_routes`] would build now.
    fn routes_hold(&self, cfg: &Config) -> bool {
        let table = &self.routes.services;
        if table.len() != cfg.services.len() {
            return false;
        }
        cfg.services.iter().all(|(name, svc)| {
            let Some(r) = table.get(name) else {
                return false;
            };
            let hold = svc
                .handoff
                .as_ref()
                .map_or(5_000, |h| h.hold.as_millis() as u64);
            if r.hold || r.max_hold_ms != hold {
                return false;
            }
            let mut backends = r.backends.iter();
            let same = self
                .instances
                .values()
                .filter(|i| &i.service == name)
                .filter_map(|i| Some((i, i.addr?, Self::backend_state(i)?)))
                .all(|(i, addr, state)| {
                    backends
                        .next()
                        .is_some_and(|b| b.id == i.id && b.addr == addr && b.state == state)
                });
            same && backends.next().is_none()
        })
    }
}
