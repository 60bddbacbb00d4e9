//! The reconcile loop task: a pass on every route table change and every 250 ms, results fed
//! back to the engine as `TrafficSynced`, failures retried with backoff.

use super::reconcile::Haproxy;
use crate::engine::Msg;
use rejuv_core::api::RouteTable;
use rejuv_core::cluster::Event;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// The reconcile loop for HAProxy: a pass whenever the route table changes, and every 250 ms
/// besides (which is also how a restarted HAProxy is noticed and repaired); after each
/// successful pass, `TrafficSynced { version: <the table just applied>, in_flight }`.
/// Failures back off from 0.2 s to 5 s; the first failure of a run is a warning, the
/// recovery an info line.
pub async fn reconcile_haproxy(
    h: Haproxy,
    mut routes: watch::Receiver<RouteTable>,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
) {
    const STEADY: Duration = Duration::from_millis(250);
    const FIRST_BACKOFF: Duration = Duration::from_millis(200);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    let mut routes_open = true;
    loop {
        let table = routes.borrow_and_update().clone();
        let span = tracing::info_span!("haproxy_reconcile", version = table.version);
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = h.reconcile_report(&table).instrument(span) => r,
        };
        let wait = match result {
            Ok(report) => {
                if failing {
                    info!(version = table.version, "HAProxy reconciled again");
                    failing = false;
                }
                backoff = FIRST_BACKOFF;
                if !report.commands.is_empty() {
                    info!(
                        version = table.version,
                        commands = ?report.commands,
                        "HAProxy changed to match the route table"
                    );
                }
                let ev = Event::TrafficSynced {
                    version: table.version,
                    in_flight: report.in_flight,
                };
                if tx.send(Msg::Event(ev)).await.is_err() {
                    return;
                }
                STEADY
            }
            Err(e) => {
                if failing {
                    debug!(error = %e, "HAProxy reconcile failed again");
                } else {
                    warn!(error = %e, "cannot reconcile HAProxy; retrying with backoff");
                    failing = true;
                }
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
        };
        if routes_open {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = routes.changed() => routes_open = r.is_ok(),
                _ = tokio::time::sleep(wait) => {}
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
