//! Prometheus metrics of the controller, rendered from the published state at scrape time.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `rejuv_servers` | gauge | `role`, `state` | servers by role and state |
//! | `rejuv_server_judgement` | gauge | `server` | 0 stable, 1 suspect, 2 unstable |
//! | `rejuv_server_forecast_tte_seconds` | gauge | `server` | forecast time to exhaustion, where made |
//! | `rejuv_workflows_active` | gauge | | workflows running |
//! | `rejuv_workflows_total` | counter | `outcome` | finished workflows |
//! | `rejuv_available_capacity_units` | gauge | | capacity of primaries on the list |
//! | `rejuv_routes_version` | gauge | | route table version |
//! | `rejuv_instance_crashes_total` | counter | `server` | instance exits not asked for |

use crate::engine::Published;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rejuv_core::detector::Level;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

pub fn render(p: &Published) -> String {
    let mut reg = Registry::with_prefix("rejuv");
    let c = &p.cluster;

    let servers = Family::<Labels, Gauge>::default();
    for s in c.servers.values() {
        servers
            .get_or_create(&vec![
                ("role".into(), s.role.to_string()),
                ("state".into(), s.state.name().into()),
            ])
            .inc();
    }
    reg.register("servers", "Servers by role and state", servers);

    let judgement = Family::<Labels, Gauge>::default();
    let tte = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let crashes = Family::<Labels, Counter>::default();
    for s in c.servers.values() {
        let l = vec![("server".into(), s.id.clone())];
        judgement.get_or_create(&l).set(match s.judgement {
            Level::Stable => 0,
            Level::Suspect => 1,
            Level::Unstable => 2,
        });
        if let Some(t) = s.explanation.as_ref().and_then(|e| e.tte_s) {
            tte.get_or_create(&l).set(t);
        }
        crashes
            .get_or_create(&l)
            .inc_by(s.observation.as_ref().map_or(0, |o| o.crashes_total));
    }
    reg.register(
        "server_judgement",
        "Judgement per server: 0 stable, 1 suspect, 2 unstable",
        judgement,
    );
    reg.register(
        "server_forecast_tte_seconds",
        "Forecast seconds to exhaustion",
        tte,
    );
    reg.register(
        "instance_crashes",
        "Instance exits nobody asked for",
        crashes,
    );

    let active: Gauge = Gauge::default();
    active.set(c.workflows.len() as i64);
    reg.register("workflows_active", "Workflows running", active);

    let total = Family::<Labels, Counter>::default();
    total
        .get_or_create(&vec![("outcome".into(), "completed".into())])
        .inc_by(c.completed_total);
    total
        .get_or_create(&vec![("outcome".into(), "rolled-back".into())])
        .inc_by(c.rolled_back_total);
    total
        .get_or_create(&vec![("outcome".into(), "failed".into())])
        .inc_by(c.failed_total);
    reg.register("workflows", "Finished workflows by outcome", total);

    let cap: Gauge = Gauge::default();
    cap.set(i64::from(c.available_capacity()));
    reg.register(
        "available_capacity_units",
        "Capacity units of primaries on the list",
        cap,
    );

    let rv: Gauge = Gauge::default();
    rv.set(c.routes.version as i64);
    reg.register("routes_version", "Route table version", rv);

    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
