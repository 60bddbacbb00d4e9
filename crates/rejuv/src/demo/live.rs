//! The demo while its load runs: the controller's events as log lines, its status for the
//! live view (or a summary line every ten seconds without a terminal).

use crate::demo::args::DemoArgs;
use crate::view::{Progress, Totals};
use rejuv_core::cluster::EventKind;
use rejuv_core::detector::Level;
use rejuv_core::wire::{Status, StoredEvent};
use rejuv_sample::loadgen::LiveStats;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Events worth a progress line: everything but a server judged stable again (that is the
/// normal state, and a noisy signal would print it again and again).
fn worth_a_line(e: &StoredEvent) -> bool {
    !(e.event.kind == EventKind::Judgement && e.event.level == Some(Level::Stable))
}

/// `GET url` from the controller with the API token, read as `T`; `None` when it cannot be
/// had (a handover under way, a restart).
pub async fn get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
    token: &str,
) -> Option<T> {
    let r = http.get(url).bearer_auth(token).send().await.ok()?;
    r.json::<T>().await.ok()
}

/// What the progress loop reads from.
pub struct Sources<'a> {
    /// The controllers' operator API.
    pub api: &'a crate::demo::plan::Parts,
    pub token: &'a str,
    /// The leading controller, as the supervisor sees it.
    pub leader: &'a watch::Receiver<Option<SocketAddr>>,
    /// Lines from the supervisor and the invariant watcher.
    pub lines: &'a mut mpsc::UnboundedReceiver<String>,
    pub stats: &'a LiveStats,
}

/// Shows progress until `load` ends (or `shutdown`, which stops the load): events as they
/// come (every 500 ms), the cluster's status about once a second.
pub async fn follow<T>(
    p: &mut Progress,
    src: Sources<'_>,
    args: &DemoArgs,
    load: &tokio::task::JoinHandle<T>,
    shutdown: &CancellationToken,
    load_stop: &CancellationToken,
) {
    let mut last_seq: i64 = 0;
    let mut last_status: Option<Instant> = None;
    let load_started = Instant::now();
    while !load.is_finished() {
        tokio::select! {
            _ = shutdown.cancelled() => { load_stop.cancel(); break; }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        while let Ok(l) = src.lines.try_recv() {
            p.line(&l);
        }
        // No leader right now (a handover under way): try again in 500 ms.
        let Some(controller) = *src.leader.borrow() else {
            continue;
        };
        let url = src.api.url(
            controller,
            &format!("/v1/events?after={last_seq}&limit=200"),
        );
        if let Some(events) = get::<Vec<StoredEvent>>(&src.api.http, url, src.token).await {
            for e in &events {
                last_seq = e.seq;
                if !worth_a_line(e) {
                    continue;
                }
                p.line(&format!(
                    "{:<4} {:<20} {}",
                    e.event.server.as_deref().unwrap_or("-"),
                    e.event.kind.to_string(),
                    e.event.message
                ));
            }
        }
        if last_status.is_none_or(|t| t.elapsed() >= Duration::from_millis(900)) {
            last_status = Some(Instant::now());
            let url = src.api.url(controller, "/v1/status");
            if let Some(status) = get::<Status>(&src.api.http, url, src.token).await {
                let totals = Totals {
                    load: src.stats.snapshot(),
                    elapsed: load_started.elapsed(),
                    duration: args.duration,
                    rps: args.load_rps,
                };
                p.update(&status, &totals);
            }
        }
    }
}
