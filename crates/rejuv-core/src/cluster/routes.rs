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
            let state = match i.traffic {
                Traffic::Serving if i.healthy => BackendState::Serving,
                Traffic::Draining if !i.drained => BackendState::Draining,
                _ => continue,
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
}
