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
///
/// HAProxy is put back to the table on every pass, so what it reports is always ours; a pass
/// that had to change HAProxy although the table had not changed since a pass that left it
/// matching means someone else changed it (or it restarted): reported as a mismatch
/// (`Msg::TrafficMismatch`) until a pass finds it matching again.
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
    // The version of the last pass that found HAProxy already matching, and whether a
    // mismatch is being reported.
    let mut matched: Option<u64> = None;
    let mut mismatch = false;
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
                let foreign = (matched == Some(table.version) && !report.commands.is_empty())
                    .then(|| {
                        format!(
                            "HAProxy differed from route table version {} (changed outside rejuv, or restarted); put back with: {}",
                            table.version,
                            report.commands.join("; ")
                        )
                    });
                if report.commands.is_empty() {
                    matched = Some(table.version);
                }
                let now_mismatch = foreign.is_some() || (mismatch && !report.commands.is_empty());
                if now_mismatch != mismatch {
                    mismatch = now_mismatch;
                    if tx.send(Msg::TrafficMismatch(foreign)).await.is_err() {
                        return;
                    }
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
