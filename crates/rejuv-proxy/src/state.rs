//! The routing state: the route table in force, turned into per-backend runtime records that
//! the data path reads without locks, and the status the controller polls.
//!
//! The controller pushes a whole [`RouteTable`]; [`Shared::apply`] validates it, keeps the
//! runtime record (counters, in-flight count, connection pool) of every backend that stays
//! (same id and address), retires the ones that left and publishes a new [`Snapshot`] on a
//! `watch` channel, which wakes the requests that wait for a serving backend or for a hold to
//! end.
//!
//! # Guarantees
//!
//! Once `apply` has returned, no request that is not already counted in a backend's
//! `in_flight` will be sent to that backend unless the new table says `Serving` and the
//! service is not on hold. The data path increments `in_flight` first and checks the
//! backend's state and the service's hold flag after (both sequentially consistent), and
//! `apply` stores the flags before anyone can read the status; so when the controller sees
//! `in_flight == 0` for a draining backend, that backend is really done.

use crate::pool::{Pool, UpstreamSender};
use rejuv_core::api::{
    BackendState, BackendStatus, ProxyStatus, RouteTable, ServiceStatus, MAX_EPOCH, MAX_EPOCH_STEP,
};
use rejuv_net::ConnectionStats;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Longest `max_hold_ms` a table may ask for: a held request keeps a client waiting, and a
/// minute is already far beyond any client's patience.
pub const MAX_HOLD_MS_LIMIT: u64 = 60_000;

/// One thing wrong with a pushed route table; the message starts with the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("services.{service}: unknown service (this proxy listens for: {known})")]
    UnknownService { service: String, known: String },
    #[error("services.{service}.backends[{index}].id: duplicate backend id {id:?}")]
    DuplicateBackendId {
        service: String,
        index: usize,
        id: String,
    },
    #[error("services.{service}.backends[{index}].id: must not be empty")]
    EmptyBackendId { service: String, index: usize },
    #[error(
        "services.{service}.backends[{index}].addr: {addr} has port 0, which no backend listens on"
    )]
    ZeroPort {
        service: String,
        index: usize,
        addr: SocketAddr,
    },
    #[error("services.{service}.max_hold_ms: {value} is above the limit of {MAX_HOLD_MS_LIMIT}")]
    MaxHoldTooLong { service: String, value: u64 },
    #[error("{field}: {value} is above 2^53, which no controller issues")]
    Implausible { field: &'static str, value: u64 },
    #[error(
        "epoch: {value} is more than {MAX_EPOCH_STEP} above the epoch in force ({in_force}): no controller could hold it"
    )]
    EpochJump { value: u64, in_force: u64 },
}

/// A rejected route table: every problem found, so the controller can fix them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route table: {}", join(.0))]
pub struct InvalidTable(pub Vec<TableError>);

fn join(errors: &[TableError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks a table against the services this proxy listens for. Nothing is changed.
///
/// # Errors
///
/// [`InvalidTable`] listing every bad field.
pub fn validate(
    table: &RouteTable,
    known: &BTreeMap<String, SocketAddr>,
) -> Result<(), InvalidTable> {
    let mut errors = Vec::new();
    for (service, routes) in &table.services {
        if !known.contains_key(service) {
            errors.push(TableError::UnknownService {
                service: service.clone(),
                known: known.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        if routes.max_hold_ms > MAX_HOLD_MS_LIMIT {
            errors.push(TableError::MaxHoldTooLong {
                service: service.clone(),
                value: routes.max_hold_ms,
            });
        }
        let mut seen = HashSet::new();
        for (index, backend) in routes.backends.iter().enumerate() {
            if backend.id.is_empty() {
                errors.push(TableError::EmptyBackendId {
                    service: service.clone(),
                    index,
                });
            } else if !seen.insert(backend.id.as_str()) {
                errors.push(TableError::DuplicateBackendId {
                    service: service.clone(),
                    index,
                    id: backend.id.clone(),
                });
            }
            if backend.addr.port() == 0 {
                errors.push(TableError::ZeroPort {
                    service: service.clone(),
                    index,
                    addr: backend.addr,
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidTable(errors))
    }
}

const SERVING: u8 = 0;
const DRAINING: u8 = 1;
/// Left the table; kept only while requests to it are still in flight.
const REMOVED: u8 = 2;

fn encode(state: BackendState) -> u8 {
    match state {
        BackendState::Serving => SERVING,
        BackendState::Draining => DRAINING,
    }
}

/// Everything the proxy knows about one backend (one instance endpoint) of one service.
pub struct BackendRuntime {
    pub id: String,
    pub addr: SocketAddr,
    state: AtomicU8,
    /// Requests dispatched to this backend whose response body has not finished streaming.
    pub in_flight: AtomicU64,
    pub requests_total: AtomicU64,
    pub errors_total: AtomicU64,
    /// Idle keep-alive connections to this backend.
    pub pool: Pool,
}

impl BackendRuntime {
    fn new(id: String, addr: SocketAddr, state: BackendState) -> Self {
        Self {
            id,
            addr,
            state: AtomicU8::new(encode(state)),
            in_flight: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            pool: Pool::default(),
        }
    }

    pub fn is_serving(&self) -> bool {
        self.state.load(Ordering::SeqCst) == SERVING
    }

    /// Gives a connection whose response has ended back to the pool, unless this backend no
    /// longer takes new requests.
    pub fn release(&self, sender: UpstreamSender) {
        if !self.is_serving() {
            return;
        }
        self.pool.put(sender);
        // `set_state` may have cleared the pool between our check and our put.
        if !self.is_serving() {
            self.pool.clear();
        }
    }

    fn state(&self) -> Option<BackendState> {
        match self.state.load(Ordering::SeqCst) {
            SERVING => Some(BackendState::Serving),
            DRAINING => Some(BackendState::Draining),
            _ => None,
        }
    }

    fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        if state != SERVING {
            // Nothing new will be sent here: idle connections would only keep the backend's
            // process busy (or block its graceful shutdown) for nothing.
            self.pool.clear();
        }
    }

    fn status(&self) -> BackendStatus {
        BackendStatus {
            id: self.id.clone(),
            addr: self.addr,
            state: self.state(),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            requests_total: self.requests_total.load(Ordering::Relaxed),
            errors_total: self.errors_total.load(Ordering::Relaxed),
        }
    }

    fn forgettable(&self) -> bool {
        self.state.load(Ordering::SeqCst) == REMOVED && self.in_flight.load(Ordering::SeqCst) == 0
    }
}

/// Per-listener record: lives as long as the proxy, whatever the table says.
pub struct ServiceRuntime {
    pub name: String,
    pub listen: SocketAddr,
    /// The table's `hold` for this service, readable without the snapshot (see the module's
    /// guarantees).
    pub hold: AtomicBool,
    pub held: AtomicU64,
    pub requests_total: AtomicU64,
    pub failed_total: AtomicU64,
    /// Round-robin cursor.
    pub next: AtomicUsize,
    /// The front-end listener's connections.
    pub connections: Arc<ConnectionStats>,
}

/// Routing view of one service in the table in force.
pub struct ServiceRoutesView {
    /// The table's backends, in table order, serving or draining (read each one's state).
    pub backends: Vec<Arc<BackendRuntime>>,
    pub max_hold: Duration,
}

/// The table in force, as the data path sees it.
pub struct Snapshot {
    pub version: u64,
    pub services: HashMap<String, ServiceRoutesView>,
}

/// The tables in force, one per shard of the fleet (a fleet with one controller, or one leader,
/// sends shard 0 only): each shard's controller owns its own table, ordered by its own
/// `(epoch, version)`; the data path routes to the union of their backends.
#[derive(Default)]
struct Registry {
    shards: BTreeMap<u32, ShardTable>,
    /// Counts tables put in force: the snapshot's version once several shards send tables.
    generation: u64,
}

#[derive(Default)]
struct ShardTable {
    epoch: u64,
    version: u64,
    digest: String,
    /// Per service: the table's backends in table order, then retired ones still in flight.
    backends: BTreeMap<String, Vec<Arc<BackendRuntime>>>,
    /// Per service the table names: its backends (table order), hold and longest hold.
    views: BTreeMap<String, (Vec<Arc<BackendRuntime>>, bool, u64)>,
}

/// State shared by the admin API and every front-end connection.
pub struct Shared {
    pub services: BTreeMap<String, Arc<ServiceRuntime>>,
    /// The admin API listener's connections.
    pub admin_connections: Arc<ConnectionStats>,
    listen: BTreeMap<String, SocketAddr>,
    registry: Mutex<Registry>,
    routes: watch::Sender<Arc<Snapshot>>,
}

impl Shared {
    pub fn new(listen: BTreeMap<String, SocketAddr>) -> Self {
        let services = listen
            .iter()
            .map(|(name, addr)| {
                let rt = ServiceRuntime {
                    name: name.clone(),
                    listen: *addr,
                    hold: AtomicBool::new(false),
                    held: AtomicU64::new(0),
                    requests_total: AtomicU64::new(0),
                    failed_total: AtomicU64::new(0),
                    next: AtomicUsize::new(0),
                    connections: Arc::default(),
                };
                (name.clone(), Arc::new(rt))
            })
            .collect();
        let registry = Registry::default();
        let (routes, _) = watch::channel(Arc::new(Snapshot {
            version: 0,
            services: HashMap::new(),
        }));
        Self {
            services,
            admin_connections: Arc::default(),
            listen,
            registry: Mutex::new(registry),
            routes,
        }
    }

    /// A receiver of table changes, positioned at the table in force.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.routes.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind, still consistent enough
        // to report and to replace with the next table.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `table` in force unless it is older than the one in force, and answers the status
    /// either way.
    ///
    /// # Errors
    ///
    /// [`InvalidTable`] if the table names an unknown service, repeats a backend id, or asks
    /// for too long a hold; nothing changes then.
    pub fn apply(&self, table: &RouteTable) -> Result<ProxyStatus, InvalidTable> {
        self.apply_shard(0, table)
    }

    /// [`Shared::apply`] for the table of shard `shard` (`PUT /v1/routes?shard=K`): each shard's
    /// table is ordered by its own `(epoch, version)` and replaces only that shard's backends.
    ///
    /// # Errors
    ///
    /// As [`Shared::apply`].
    pub fn apply_shard(&self, shard: u32, table: &RouteTable) -> Result<ProxyStatus, InvalidTable> {
        validate(table, &self.listen)?;
        let mut guard = self.lock();
        let registry = &mut *guard;
        let mine = registry.shards.entry(shard).or_default();
        let mut implausible = Vec::new();
        for (field, value) in [("epoch", table.epoch), ("version", table.version)] {
            if value > MAX_EPOCH {
                implausible.push(TableError::Implausible { field, value });
            }
        }
        if table.epoch <= MAX_EPOCH && !rejuv_core::api::epoch_is_plausible(table.epoch, mine.epoch)
        {
            implausible.push(TableError::EpochJump {
                value: table.epoch,
                in_force: mine.epoch,
            });
        }
        if !implausible.is_empty() {
            return Err(InvalidTable(implausible));
        }
        if (table.epoch, table.version) < (mine.epoch, mine.version) {
            tracing::info!(
                shard,
                stale_epoch = table.epoch,
                stale = table.version,
                in_force_epoch = mine.epoch,
                in_force = mine.version,
                "ignoring an older route table"
            );
            return Ok(self.status_locked(registry, shard));
        }
        let digest = table.digest();
        let changed = digest != mine.digest;
        for name in self.services.keys() {
            let routes = table.services.get(name);
            let old = mine.backends.remove(name).unwrap_or_default();
            let wanted = routes.map_or(&[][..], |r| &r.backends[..]);
            let mut current = Vec::with_capacity(wanted.len());
            for backend in wanted {
                let kept = old
                    .iter()
                    .find(|b| b.id == backend.id && b.addr == backend.addr)
                    .cloned();
                let rt = match kept {
                    Some(rt) => {
                        rt.set_state(encode(backend.state));
                        rt
                    }
                    None => Arc::new(BackendRuntime::new(
                        backend.id.clone(),
                        backend.addr,
                        backend.state,
                    )),
                };
                current.push(rt);
            }
            let mut all = current.clone();
            for rt in old {
                if current.iter().any(|c| Arc::ptr_eq(c, &rt)) {
                    continue;
                }
                rt.set_state(REMOVED);
                if !rt.forgettable() {
                    all.push(rt);
                }
            }
            mine.backends.insert(name.clone(), all);
            match routes {
                Some(r) => {
                    mine.views
                        .insert(name.clone(), (current, r.hold, r.max_hold_ms));
                }
                None => {
                    mine.views.remove(name);
                }
            }
        }
        mine.epoch = table.epoch;
        mine.version = table.version;
        mine.digest = digest;
        if changed {
            tracing::info!(
                shard,
                epoch = table.epoch,
                version = table.version,
                "route table in force"
            );
        } else {
            tracing::debug!(
                shard,
                epoch = table.epoch,
                version = table.version,
                "route table unchanged"
            );
        }
        // The data path's view: every shard's backends, held while any shard holds.
        let mut views = HashMap::new();
        for (name, service) in &self.services {
            let mut hold = false;
            let mut view: Option<ServiceRoutesView> = None;
            for t in registry.shards.values() {
                if let Some((backends, h, max_hold_ms)) = t.views.get(name) {
                    hold |= *h;
                    let v = view.get_or_insert_with(|| ServiceRoutesView {
                        backends: Vec::new(),
                        max_hold: Duration::ZERO,
                    });
                    v.backends.extend(backends.iter().cloned());
                    v.max_hold = v.max_hold.max(Duration::from_millis(*max_hold_ms));
                }
            }
            service.hold.store(hold, Ordering::SeqCst);
            if let Some(v) = view {
                views.insert(name.clone(), v);
            }
        }
        registry.generation += 1;
        let version = if registry.shards.len() == 1 {
            table.version
        } else {
            registry.generation
        };
        self.routes.send_replace(Arc::new(Snapshot {
            version,
            services: views,
        }));
        Ok(self.status_locked(registry, shard))
    }

    /// The status as shard 0's controller sees it.
    pub fn status(&self) -> ProxyStatus {
        self.status_of(0)
    }

    /// The status as shard `shard`'s controller sees it: that shard's table (epoch, version,
    /// digest), and every backend of every shard with its in-flight requests.
    pub fn status_of(&self, shard: u32) -> ProxyStatus {
        let mut registry = self.lock();
        self.status_locked(&mut registry, shard)
    }

    fn status_locked(&self, registry: &mut Registry, shard: u32) -> ProxyStatus {
        let mut services = BTreeMap::new();
        for (name, service) in &self.services {
            let mut backends = Vec::new();
            for t in registry.shards.values_mut() {
                let list = t.backends.entry(name.clone()).or_default();
                list.retain(|b| !b.forgettable());
                backends.extend(list.iter().map(|b| b.status()));
            }
            services.insert(
                name.clone(),
                ServiceStatus {
                    listen: service.listen,
                    backends,
                    held: service.held.load(Ordering::SeqCst),
                    requests_total: service.requests_total.load(Ordering::Relaxed),
                    failed_total: service.failed_total.load(Ordering::Relaxed),
                    connections: service.connections.counts(),
                },
            );
        }
        let (epoch, version, digest) = registry
            .shards
            .get(&shard)
            .map_or((0, 0, String::new()), |t| {
                (t.epoch, t.version, t.digest.clone())
            });
        ProxyStatus {
            epoch,
            version,
            digest,
            services,
            admin_connections: self.admin_connections.counts(),
        }
    }

    /// Closes pooled connections that have been idle too long.
    pub fn sweep_pools(&self) {
        let registry = self.lock();
        for t in registry.shards.values() {
            for backend in t.backends.values().flatten() {
                backend.pool.sweep();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rejuv_core::api::{Backend, ServiceRoutes};

    fn listen() -> BTreeMap<String, SocketAddr> {
        BTreeMap::from([("web".to_string(), "127.0.0.1:8000".parse().unwrap())])
    }

    fn table(version: u64, backends: &[(&str, u16, BackendState)]) -> RouteTable {
        RouteTable {
            epoch: 0,
            version,
            services: BTreeMap::from([(
                "web".to_string(),
                ServiceRoutes {
                    backends: backends
                        .iter()
                        .map(|(id, port, state)| Backend {
                            id: id.to_string(),
                            addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                            state: *state,
                        })
                        .collect(),
                    hold: false,
                    max_hold_ms: 1000,
                },
            )]),
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut t = table(
            1,
            &[
                ("a", 1, BackendState::Serving),
                ("a", 0, BackendState::Serving),
            ],
        );
        t.services.get_mut("web").unwrap().max_hold_ms = MAX_HOLD_MS_LIMIT + 1;
        t.services.insert("nope".into(), t.services["web"].clone());
        let err = validate(&t, &listen()).unwrap_err().to_string();
        for needle in [
            "services.nope: unknown service",
            "services.web.backends[1].id: duplicate backend id \"a\"",
            "services.web.backends[1].addr",
            "services.web.max_hold_ms: 60001",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from {err}");
        }
    }

    #[test]
    fn a_foreign_route_table_with_max_version_is_refused() {
        let shared = Shared::new(listen());
        let mut ours = table(3, &[("a", 1, BackendState::Serving)]);
        ours.epoch = 7;
        shared.apply(&ours).unwrap();
        for (epoch, version) in [(7, u64::MAX), (u64::MAX, 1), (7 + MAX_EPOCH_STEP + 1, 1)] {
            let mut evil = table(version, &[("evil", 666, BackendState::Serving)]);
            evil.epoch = epoch;
            let err = shared.apply(&evil).unwrap_err().to_string();
            assert!(
                err.contains("no controller") || err.contains("2^53"),
                "({epoch}, {version}): {err}"
            );
        }
        let st = shared.status();
        assert_eq!((st.epoch, st.version), (7, 3));
        assert_eq!(st.digest, ours.digest(), "our table is still in force");
        // The controller's next table goes in as usual.
        let mut next = table(4, &[("b", 2, BackendState::Serving)]);
        next.epoch = 7;
        assert_eq!(shared.apply(&next).unwrap().digest, next.digest());
    }

    #[test]
    fn tables_are_ordered_by_epoch_then_version() {
        let shared = Shared::new(listen());
        let mut a = table(50, &[("a", 1, BackendState::Serving)]);
        a.epoch = 1;
        shared.apply(&a).unwrap();
        let mut b = table(2, &[("b", 2, BackendState::Serving)]);
        b.epoch = 2;
        assert_eq!(
            shared.apply(&b).unwrap().digest,
            b.digest(),
            "a new epoch wins"
        );
        let st = shared.apply(&a).unwrap();
        assert_eq!(
            (st.epoch, st.version, st.digest.clone()),
            (2, 2, b.digest()),
            "a deposed controller's table is ignored"
        );
    }

    #[test]
    fn a_removed_backend_is_kept_while_in_flight_then_forgotten() {
        let shared = Shared::new(listen());
        shared
            .apply(&table(1, &[("a", 1, BackendState::Serving)]))
            .unwrap();
        let a = shared.subscribe().borrow().services["web"].backends[0].clone();
        a.in_flight.fetch_add(1, Ordering::SeqCst);
        let status = shared
            .apply(&table(2, &[("b", 2, BackendState::Serving)]))
            .unwrap();
        let backends = &status.services["web"].backends;
        assert_eq!(backends.len(), 2);
        assert_eq!(backends[1].id, "a");
        assert_eq!(backends[1].state, None);
        assert_eq!(backends[1].in_flight, 1);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
        let status = shared.status();
        let ids: Vec<_> = status.services["web"]
            .backends
            .iter()
            .map(|b| b.id.as_str())
            .collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn counters_survive_a_state_change_and_an_older_table_is_ignored() {
        let shared = Shared::new(listen());
        shared
            .apply(&table(5, &[("a", 1, BackendState::Serving)]))
            .unwrap();
        let a = shared.subscribe().borrow().services["web"].backends[0].clone();
        a.requests_total.fetch_add(3, Ordering::Relaxed);
        let status = shared
            .apply(&table(6, &[("a", 1, BackendState::Draining)]))
            .unwrap();
        assert_eq!(status.services["web"].backends[0].requests_total, 3);
        assert_eq!(
            status.services["web"].backends[0].state,
            Some(BackendState::Draining)
        );
        let status = shared
            .apply(&table(4, &[("z", 9, BackendState::Serving)]))
            .unwrap();
        assert_eq!(status.version, 6);
        assert_eq!(status.services["web"].backends[0].id, "a");
    }

    #[test]
    fn each_shard_has_its_own_table_and_the_data_path_routes_to_all_of_them() {
        let shared = Shared::new(listen());
        let mut t0 = table(9, &[("a", 1, BackendState::Serving)]);
        t0.epoch = 4;
        let mut t1 = table(2, &[("b", 2, BackendState::Serving)]);
        t1.epoch = 5;
        shared.apply_shard(0, &t0).unwrap();
        let st = shared.apply_shard(1, &t1).unwrap();
        assert_eq!(
            (st.epoch, st.version, st.digest.clone()),
            (5, 2, t1.digest())
        );
        let ids = |shared: &Shared| -> Vec<String> {
            shared.subscribe().borrow().services["web"]
                .backends
                .iter()
                .map(|b| b.id.clone())
                .collect()
        };
        assert_eq!(ids(&shared), ["a", "b"]);
        // Shard 1's older table is ignored; shard 0's is untouched by it.
        let mut old = table(1, &[]);
        old.epoch = 5;
        let st = shared.apply_shard(1, &old).unwrap();
        assert_eq!((st.epoch, st.version), (5, 2));
        assert_eq!(ids(&shared), ["a", "b"]);
        let st0 = shared.status_of(0);
        assert_eq!((st0.epoch, st0.version, st0.digest), (4, 9, t0.digest()));
        // A newer table of shard 1 with no backends drains only shard 1's.
        let mut empty = table(3, &[]);
        empty.epoch = 5;
        shared.apply_shard(1, &empty).unwrap();
        assert_eq!(ids(&shared), ["a"]);
        // A hold in any shard's table holds the service.
        let mut held = table(4, &[]);
        held.epoch = 5;
        held.services.get_mut("web").unwrap().hold = true;
        shared.apply_shard(1, &held).unwrap();
        assert!(shared.services["web"].hold.load(Ordering::SeqCst));
    }
}
