//! Traffic adapters: keep the load balancer equal to the available server list.
//!
//! A reconcile loop, not one-shot calls: whenever the route table changes, and every few hundred
//! milliseconds besides, the whole desired table is sent; the answer (the table in force and the
//! in-flight requests per backend) goes back to the engine as `TrafficSynced`, which is how a
//! drain is known to be finished.
//!
//! The proxy cannot check an epoch: every write is made only while the [`LeaderGuard`] says
//! this controller still leads; the next leader's reconcile corrects a write that raced a lost
//! lease.

use crate::engine::Msg;
use crate::leader::LeaderGuard;
use rejuv_core::api::{ProxyStatus, RouteTable};
use rejuv_core::cluster::Event;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("builtin proxy admin API at {addr} unreachable")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("builtin proxy at {addr} refused the route table: {status} {body}")]
    Refused {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("not the leader (or its lease lapsed): the load balancer is left alone")]
    NotLeader,
}

/// Client of the builtin proxy's admin API.
#[derive(Clone)]
pub struct BuiltinProxy {
    http: reqwest::Client,
    admin: SocketAddr,
    token: String,
    guard: LeaderGuard,
}

impl BuiltinProxy {
    pub fn new(admin: SocketAddr, token: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("http client");
        Self {
            http,
            admin,
            token,
            guard: LeaderGuard::always(),
        }
    }

    /// Writes only while `guard` says this controller leads.
    pub fn with_leader_guard(mut self, guard: LeaderGuard) -> Self {
        self.guard = guard;
        self
    }

    pub async fn put_routes(&self, table: &RouteTable) -> Result<ProxyStatus, TrafficError> {
        let addr = self.admin;
        if !self.guard.still_leader() {
            return Err(TrafficError::NotLeader);
        }
        let resp = self
            .http
            .put(format!("http://{addr}/v1/routes"))
            .bearer_auth(&self.token)
            .json(table)
            .send()
            .await
            .map_err(|source| TrafficError::Transport { addr, source })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(TrafficError::Refused {
                addr,
                status: status.as_u16(),
                body,
            });
        }
        resp.json()
            .await
            .map_err(|source| TrafficError::Transport { addr, source })
    }
}

/// The reconcile loop for the builtin proxy.
/// Only `fronted` services (those with a listen address on the proxy) are sent; others run on
/// the servers without a front end of their own.
pub async fn reconcile_builtin(
    proxy: BuiltinProxy,
    fronted: std::collections::BTreeSet<String>,
    mut routes: watch::Receiver<RouteTable>,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut failing = false;
    loop {
        let mut table = routes.borrow_and_update().clone();
        table.services.retain(|name, _| fronted.contains(name));
        match proxy.put_routes(&table).await {
            Ok(status) => {
                if failing {
                    tracing::info!("builtin proxy reachable again; routes reconciled");
                    failing = false;
                }
                backoff = Duration::from_millis(200);
                let mut in_flight = BTreeMap::new();
                for svc in status.services.values() {
                    for b in &svc.backends {
                        *in_flight.entry(b.id.clone()).or_insert(0) += b.in_flight;
                    }
                }
                let ev = Event::TrafficSynced {
                    version: status.version,
                    in_flight,
                };
                if tx.send(Msg::Event(ev)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot reconcile the builtin proxy; retrying");
                    failing = true;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        let wait = if failing {
            backoff
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = routes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
