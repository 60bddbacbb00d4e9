//! A Prometheus server as a source of readings (`[source] kind = "prometheus"`).
//!
//! Every `step` the source reads what is new of each resource's query (the first read takes
//! `range` of history) with `query_range`, turns the series into samples per server
//! ([`assemble`]), and feeds them to one production detector per server ([`advisor`]).
//!
//! - [`once`]: one judgement pass, for `rejuv controller --dry-run --once`: the advisory
//!   report of the servers judged aging.
//! - [`advise`]: the same, every `step` until shut down, logging each server that starts or
//!   stops aging (the controller's advisory mode without agents).
//! - [`beside_agents`]: the same, beside the agents: the source's judgement of every server
//!   of the config goes to the engine, which acts on the worse of it and the agent's (the
//!   agents still act); a rejuvenated server's history is forgotten here too.
//!
//! # Errors
//! [`SourceError`]: Prometheus unreachable or answering an error (a bad query), each naming
//! its URL; or series that cannot be mapped to servers (the query and the fix named).

pub mod advisor;
pub mod assemble;
pub mod prometheus;

use advisor::{Advisor, AdvisoryReport};
use assemble::{assemble, CapacitySeries, ResourceSeries};
use prometheus::{PromClient, PromError, Range};
use rejuv_core::config::{Capacity, Config, Resource};
use rejuv_core::detect::detector::Level;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "the config has no Prometheus source: set [source] kind = \"prometheus\", url and queries"
    )]
    NotPrometheus,
    #[error(transparent)]
    Prometheus(#[from] PromError),
    #[error("reading the series of Prometheus at {url}: {source}")]
    Assemble {
        url: String,
        #[source]
        source: Box<assemble::AssembleError>,
    },
}

/// The source's client, its detectors and how far it has read.
pub struct Source {
    client: PromClient,
    cfg: Config,
    advisor: Advisor,
    /// The first time the next read asks for (wall-clock milliseconds).
    next_ms: Option<u64>,
    notes: Vec<String>,
}

/// What one read changed.
#[derive(Debug, Default)]
pub struct Polled {
    /// Servers whose judgement changed, with the new level.
    pub changed: Vec<(String, Level)>,
    /// What was left out of this read and why.
    pub notes: Vec<String>,
}

impl Source {
    /// # Errors
    /// [`SourceError::NotPrometheus`] when the config's source is the agents.
    pub fn new(cfg: &Config) -> Result<Self, SourceError> {
        let url = match (&cfg.source.url, cfg.source.is_prometheus()) {
            (Some(u), true) => u,
            _ => return Err(SourceError::NotPrometheus),
        };
        Ok(Self {
            client: PromClient::new(url, cfg.source.timeout),
            cfg: cfg.clone(),
            advisor: Advisor::new(cfg),
            next_ms: None,
            notes: Vec::new(),
        })
    }

    pub fn url(&self) -> &str {
        self.client.url()
    }

    pub fn advisor(&self) -> &Advisor {
        &self.advisor
    }

    pub fn advisor_mut(&mut self) -> &mut Advisor {
        &mut self.advisor
    }

    /// Reads what is new up to `now_ms` (wall clock) and judges it.
    pub async fn poll(&mut self, now_ms: u64) -> Result<Polled, SourceError> {
        let src = &self.cfg.source;
        let step_ms = (src.step.as_millis() as u64).max(1);
        let end_ms = now_ms - now_ms % step_ms;
        let start_ms = self
            .next_ms
            .unwrap_or_else(|| end_ms.saturating_sub(src.range.as_millis() as u64));
        if start_ms > end_ms {
            return Ok(Polled::default());
        }
        let range = Range {
            start_ms,
            end_ms,
            step: src.step,
        };
        let reads = src
            .queries
            .iter()
            .map(|(r, q)| read_resource(&self.client, *r, q, src.capacity.get(r), range));
        let data = futures::future::try_join_all(reads).await?;
        let assembled = assemble(src, &data).map_err(|source| SourceError::Assemble {
            url: self.client.url().to_string(),
            source: Box::new(source),
        })?;
        self.next_ms = Some(end_ms + step_ms);
        let changed = self.advisor.feed(assembled.samples);
        self.notes = assembled.notes.clone();
        Ok(Polled {
            changed,
            notes: assembled.notes,
        })
    }

    /// The advisory report as of the last read.
    pub fn report(&self) -> AdvisoryReport {
        self.advisor.report(self.client.url(), self.notes.clone())
    }
}

/// The series of one resource's query and of its capacity.
async fn read_resource(
    client: &PromClient,
    resource: Resource,
    query: &str,
    capacity: Option<&Capacity>,
    range: Range,
) -> Result<ResourceSeries, PromError> {
    let values = client.query_range(query, range);
    let capacity = async {
        Ok(match capacity {
            None => CapacitySeries::None,
            Some(Capacity::Fixed(v)) => CapacitySeries::Fixed(*v),
            Some(Capacity::Query(q)) => CapacitySeries::Series(client.query_range(q, range).await?),
        })
    };
    let (values, capacity) = futures::future::try_join(values, capacity).await?;
    Ok(ResourceSeries {
        resource,
        values,
        capacity,
    })
}

/// One judgement pass over the source's `range` of history: the advisory report.
pub async fn once(cfg: &Config) -> Result<AdvisoryReport, SourceError> {
    let mut source = Source::new(cfg)?;
    source.poll(crate::engine::wall_ms()).await?;
    Ok(source.report())
}

/// Reads and judges every `step` until `shutdown`, logging each server that starts aging
/// (with what the controller would do) or stops; a failed read is logged and tried again at
/// the next step.
pub async fn advise(cfg: Config, shutdown: CancellationToken) -> Result<(), SourceError> {
    let mut source = Source::new(&cfg)?;
    tracing::info!(
        url = source.url(),
        step = %humantime::format_duration(cfg.source.step),
        range = %humantime::format_duration(cfg.source.range),
        "advisory: judging the servers of a Prometheus source"
    );
    let mut every = tokio::time::interval(cfg.source.step.max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut noted = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        match source.poll(crate::engine::wall_ms()).await {
            Ok(p) => {
                for n in p.notes {
                    if noted.insert(n.clone()) {
                        tracing::warn!("source: {n}");
                    }
                }
                for (server, level) in p.changed {
                    log_change(&source, &server, level);
                }
            }
            Err(e) => tracing::warn!("source: {}", rejuv_core::error_chain(&e)),
        }
    }
}

/// Beside the agents: reads and judges every `step`, and sends the engine its judgement of
/// each server of the config whenever it changes, as a judgement of the whole server (the
/// source's instances are not the agent's). Before each read, the servers the cluster says
/// were rejuvenated since are forgotten.
pub async fn beside_agents(
    cfg: Config,
    tx: tokio::sync::mpsc::Sender<crate::engine::Msg>,
    published: tokio::sync::watch::Receiver<crate::engine::Published>,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    let mut source = Source::new(&cfg)?;
    tracing::info!(
        url = source.url(),
        step = %humantime::format_duration(cfg.source.step),
        "judging the servers from a Prometheus source beside their agents"
    );
    let mut every = tokio::time::interval(cfg.source.step.max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        let rejuvenated: Vec<(String, u64)> = published
            .borrow()
            .cluster
            .servers
            .iter()
            .filter_map(|(id, s)| s.last_rejuvenated_at_ms.map(|t| (id.clone(), t)))
            .collect();
        for (server, at_ms) in rejuvenated {
            source.advisor_mut().rejuvenated(&server, at_ms);
        }
        let changed = match source.poll(crate::engine::wall_ms()).await {
            Ok(p) => p.changed,
            Err(e) => {
                tracing::warn!("source: {}", rejuv_core::error_chain(&e));
                continue;
            }
        };
        for (server, level) in changed {
            log_change(&source, &server, level);
            let Some(j) = source.advisor().judgement(&server) else {
                continue;
            };
            if cfg.server(&server).is_none() {
                continue;
            }
            let judgement = whole_server(j.clone(), source.url());
            let msg = crate::engine::Msg::SourceJudged { server, judgement };
            if tx.send(msg).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// A source's judgement as one of the whole server: the instances a query names are not the
/// agent's, so the scope is the server.
fn whole_server(
    mut j: rejuv_core::detect::detector::Judgement,
    url: &str,
) -> rejuv_core::detect::detector::Judgement {
    j.host = j.level;
    j.unstable_instances.clear();
    if let Some(e) = j.explanation.as_mut() {
        e.instance = None;
        e.message = format!("from Prometheus at {url}: {}", e.message);
    }
    j
}

fn log_change(source: &Source, server: &str, level: Level) {
    match source.advisor().advisory(server) {
        Some(a) => tracing::warn!(
            server,
            resource = %a.resource,
            exhausts_in_s = ?a.exhausts_in_s,
            action = %a.action,
            instance = ?a.instance,
            "advisory: {server} is aging: {}; would {}",
            a.message,
            a.action.replace('-', " ")
        ),
        None => tracing::info!(server, %level, "advisory: {server} is {level}"),
    }
}
