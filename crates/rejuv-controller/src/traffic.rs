//! Traffic adapters: keep the load balancer equal to the available server list.
//!
//! A reconcile loop, not one-shot calls: whenever the route table changes, and every few hundred
//! milliseconds besides, the whole desired table is sent; the answer (the table in force and the
//! in-flight requests per backend) goes back to the engine as `TrafficSynced`, which is how a
//! drain is known to be finished.
//!
//! Every table carries this controller's epoch; the proxy orders tables by `(epoch, version)`
//! and refuses ones no controller could issue. The answer counts as this controller's table
//! applied only when the proxy reports exactly it (epoch, version and digest): a table someone
//! else put in force (another controller, or a holder of the proxy token) is a mismatch,
//! reported (`Msg::TrafficMismatch`, an event, `rejuv_traffic_mismatch`) and never taken as a
//! finished drain; the next push puts ours back where it can (same epoch), and a proxy that
//! holds a newer epoch is left to the controller that owns it. Writes are also made only while
//! the [`LeaderGuard`] says this controller still leads.

use crate::engine::Msg;
use crate::leader::LeaderGuard;
use rejuv_core::api::{ProxyStatus, RouteTable};
use rejuv_core::cluster::Event;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    scheme: &'static str,
    /// The shard whose table this controller sends (`?shard=K`), in a sharded fleet.
    shard: Option<u32>,
    /// With TLS: the client, made anew on each new load of the TLS files (a renewed
    /// certificate, a revocation), so that no pooled connection outlives its check.
    tls: Option<Arc<ProxyTls>>,
}

struct ProxyTls {
    tls: Arc<rejuv_net::tls::Tls>,
    client: std::sync::Mutex<(u64, reqwest::Client)>,
}

impl ProxyTls {
    fn client(&self) -> reqwest::Client {
        let generation = self.tls.generation();
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != generation {
            *c = (generation, proxy_client(&self.tls));
        }
        c.1.clone()
    }
}

/// An HTTPS client that reaches only a proxy of the fleet.
fn proxy_client(tls: &Arc<rejuv_net::tls::Tls>) -> reqwest::Client {
    let check = rejuv_net::tls::PeerCheck {
        role: Some(rejuv_net::tls::Role::Proxy),
        name: None,
    };
    tls.reqwest_builder(check)
        .timeout(Duration::from_secs(3))
        .build()
        .expect("http client")
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
            scheme: "http",
            shard: None,
            tls: None,
        }
    }

    /// Sends the table of shard `shard` of a sharded fleet: the proxy keeps one table per
    /// shard and routes to all of their backends.
    pub fn with_shard(mut self, shard: u32) -> Self {
        self.shard = Some(shard);
        self
    }

    /// Talks HTTPS with `tls`: the admin API must show the proxy's certificate of the fleet.
    pub fn with_tls(mut self, tls: &Arc<rejuv_net::tls::Tls>) -> Self {
        self.tls = Some(Arc::new(ProxyTls {
            tls: tls.clone(),
            client: std::sync::Mutex::new((tls.generation(), proxy_client(tls))),
        }));
        self.scheme = "https";
        self
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
        let http = match &self.tls {
            Some(t) => t.client(),
            None => self.http.clone(),
        };
        let query = self
            .shard
            .map(|k| format!("?shard={k}"))
            .unwrap_or_default();
        let resp = http
            .put(format!("{}://{addr}/v1/routes{query}", self.scheme))
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
    epoch: u64,
    fronted: std::collections::BTreeSet<String>,
    mut routes: watch::Receiver<RouteTable>,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut failing = false;
    let mut mismatch = false;
    // Added to the core's versions once a foreign table of our epoch outranked them.
    let mut bump = 0u64;
    // The last counts sent to the engine, and when: the same counts again are sent only after
    // `RESEND_SYNCED` (each is a step of the engine over every instance).
    let mut last_sent: Option<(u64, BTreeMap<String, u64>, Instant)> = None;
    loop {
        let mut table = routes.borrow_and_update().clone();
        let core_version = table.version;
        table.services.retain(|name, _| fronted.contains(name));
        table.epoch = epoch;
        table.version = core_version.saturating_add(bump);
        let started = Instant::now();
        let put = proxy.put_routes(&table).await;
        // A fleet's table is large: the next exchange waits `EXCHANGE_SHARE` times as long as
        // this one took, at least 250 ms and at most `MAX_EXCHANGE_WAIT` (a drain waits for
        // the in-flight counts).
        let exchange = started.elapsed();
        match put {
            Ok(status) => {
                if failing {
                    tracing::info!("builtin proxy reachable again; routes reconciled");
                    failing = false;
                }
                backoff = Duration::from_millis(200);
                let foreign = holds_other(&status, &table);
                if foreign.is_some() != mismatch {
                    mismatch = foreign.is_some();
                    if tx.send(Msg::TrafficMismatch(foreign)).await.is_err() {
                        return;
                    }
                }
                if mismatch {
                    // A table of our own epoch that outranks ours was written by someone
                    // else: go past it at once. A newer epoch is left alone (it may be a
                    // newer leader's); its in-flight counts say nothing of our drains.
                    if status.epoch == epoch
                        && status.version >= table.version
                        && status.version < rejuv_core::api::MAX_EPOCH
                    {
                        bump = status.version + 1 - core_version;
                        continue;
                    }
                } else {
                    let mut in_flight = BTreeMap::new();
                    for svc in status.services.values() {
                        for b in &svc.backends {
                            *in_flight.entry(b.id.clone()).or_insert(0) += b.in_flight;
                        }
                    }
                    let same = last_sent.as_ref().is_some_and(|(v, f, at)| {
                        *v == core_version && *f == in_flight && at.elapsed() < RESEND_SYNCED
                    });
                    if !same {
                        last_sent = Some((core_version, in_flight.clone(), Instant::now()));
                        let ev = Event::TrafficSynced {
                            version: core_version,
                            in_flight,
                        };
                        if tx.send(Msg::Event(ev)).await.is_err() {
                            return;
                        }
                    }
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
            (exchange * EXCHANGE_SHARE).clamp(Duration::from_millis(250), MAX_EXCHANGE_WAIT)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = routes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The same in-flight counts are sent to the engine again after this long.
const RESEND_SYNCED: Duration = Duration::from_secs(5);
/// The builtin proxy is reconciled again no sooner than this many times the last exchange's
/// duration after it.
const EXCHANGE_SHARE: u32 = 10;
/// ...and no later than this.
const MAX_EXCHANGE_WAIT: Duration = Duration::from_secs(1);

/// What the proxy holds instead of `sent`, if it does not hold `sent` itself. A proxy from
/// before digests (empty digest) is judged by epoch and version alone.
fn holds_other(status: &ProxyStatus, sent: &RouteTable) -> Option<String> {
    let same = status.epoch == sent.epoch
        && status.version == sent.version
        && (status.digest.is_empty() || status.digest == sent.digest());
    (!same).then(|| {
        format!(
            "epoch {} version {} digest {}, where this controller sent epoch {} version {}",
            status.epoch,
            status.version,
            if status.digest.is_empty() {
                "-"
            } else {
                &status.digest
            },
            sent.epoch,
            sent.version
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_does_not_count_a_foreign_table_as_applied() {
        let ours = RouteTable {
            epoch: 4,
            version: 9,
            services: BTreeMap::new(),
        };
        let mut status = ProxyStatus {
            epoch: 4,
            version: 9,
            digest: ours.digest(),
            services: BTreeMap::new(),
            admin_connections: Default::default(),
        };
        assert_eq!(holds_other(&status, &ours), None);
        // The old rule took any version at or above ours as applied.
        status.version = u64::MAX;
        assert!(holds_other(&status, &ours).is_some());
        status.version = 9;
        status.digest = "0000000000000bad".into();
        assert!(holds_other(&status, &ours)
            .unwrap()
            .contains("0000000000000bad"));
        status.digest = ours.digest();
        status.epoch = 5;
        assert!(
            holds_other(&status, &ours).is_some(),
            "a newer epoch's table is not ours"
        );
    }
}
