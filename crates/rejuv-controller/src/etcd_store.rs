//! The etcd store: several controllers, one leader elected on an etcd lease, every write fenced.
//!
//! Built only with the cargo feature `etcd` (the `etcd-client` build needs `protoc`).
//!
//! # Keys
//!
//! Everything lives under one prefix (`store.prefix`, default `/rejuv/<cluster name>`):
//!
//! | key | value | written by | lease |
//! |---|---|---|---|
//! | `<prefix>/leader` | JSON `{"id", "api", "pid"}` of the leader; its **create revision** is the fence | a campaign (put if absent) | the leader's |
//! | `<prefix>/epoch` | decimal epoch (fencing term sent to agents), +1 per leadership | the new leader, fenced | none |
//! | `<prefix>/state` | `1 <fnv1a64 hex>\n<cluster JSON>`: state version, checksum, the cluster with its outbox | every commit, fenced | none |
//! | `<prefix>/events/<seq, 20 digits>` | JSON array of the events of one commit, each with its `seq`; the key is the last seq | commits with events, fenced | none |
//! | `<prefix>/workflows/<id, 20 digits>` | JSON of one finished workflow | commits that finish workflows, fenced | none |
//!
//! Retention: the leader compacts etcd's history every `store.compact_every` (see
//! [`compact_history`]); each commit with events deletes the batches whose last seq is older than the
//! newest `retention.events`; each commit that finishes workflows deletes ids older than the
//! newest `retention.workflows`. Raw samples never come here.
//!
//! # Election
//!
//! A controller grants itself a lease (`store.lease_ttl`), keeps it alive every TTL/3, and
//! campaigns with one transaction: *if `<prefix>/leader` does not exist, put it with my lease;
//! else read it*. Losers watch the key and try again when it is deleted (the leader's lease
//! expired or was revoked). We use a plain put-if-absent rather than etcd's election API
//! because one well-known key is what operators and followers need (`etcdctl get
//! <prefix>/leader` names the leader and its API address, which followers return in
//! `x-rejuv-leader`), and its create revision is exactly the fence: a new leader's key always
//! has a higher one.
//!
//! # Fencing
//!
//! Every write (epoch, state, events, workflows) is one transaction that compares the leader
//! key's create revision with ours. A deposed leader's write fails ([`EtcdError::Fenced`]),
//! its guard is marked lost, and the controller steps down: it stops every task and the
//! process exits (non-zero), to be restarted by its supervisor as a follower, as Kubernetes'
//! controller-manager does. Starting afresh is the path every crash already takes, so a
//! deposed leader never acts on in-memory state another leader has moved past.
//!
//! The lease is watched on the monotonic clock ([`LeaderGuard`]): when no keep-alive has been
//! acknowledged for TTL − TTL/5 since it was sent, the controller stops acting before etcd
//! could expire the lease. Agents check the epoch themselves; the load balancer cannot, so the
//! traffic adapters ask the guard right before every write.
//!
//! # Assumptions
//! - A single etcd cluster reached over plain HTTP (`http://` endpoints).
//! - The state of one cluster fits one etcd value (etcd's request limit is 1.5 MiB).

use crate::leader::LeaderGuard;
pub use crate::store_codec::EtcdError;
use crate::store_codec::{decode_state, encode_checksum, StoreError, STATE_VERSION};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use rejuv_core::cluster::{Cluster, LogEvent, Workflow};
use rejuv_core::wire::StoredEvent;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The keys of one cluster (see the module docs).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// The epoch key when it is not under `prefix` (a shard's: the fleet's one epoch).
    epoch: Option<String>,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
            epoch: None,
        }
    }
    /// The keys of shard `k` of the fleet under `prefix` (see [`crate::shards`]): its own
    /// leader key, state, events and workflows under `<prefix>/shards/<k>`, and the fleet's
    /// one epoch key `<prefix>/epoch`, so that every term of every shard has an epoch of its
    /// own and an agent never sees one go back, whichever shard it is in.
    pub fn shard(prefix: &str, k: u32) -> Self {
        let prefix = prefix.trim_end_matches('/');
        Self {
            prefix: format!("{prefix}/shards/{k}"),
            epoch: Some(format!("{prefix}/epoch")),
        }
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    pub fn epoch(&self) -> String {
        self.epoch
            .clone()
            .unwrap_or_else(|| format!("{}/epoch", self.prefix))
    }
    pub fn state(&self) -> String {
        format!("{}/state", self.prefix)
    }
    fn events_dir(&self) -> String {
        format!("{}/events/", self.prefix)
    }
    pub fn event(&self, seq: u64) -> String {
        format!("{}{seq:020}", self.events_dir())
    }
    fn workflows_dir(&self) -> String {
        format!("{}/workflows/", self.prefix)
    }
    pub fn workflow(&self, id: u64) -> String {
        format!("{}{id:020}", self.workflows_dir())
    }
}

/// The end of the key range of a directory ending in `/`: the same with `/` + 1 (`0`).
fn dir_end(dir: &str) -> String {
    let mut s = dir.trim_end_matches('/').to_string();
    s.push('0');
    s
}

/// The epoch key's value: a decimal number, or the store is not to be trusted.
fn parse_epoch(key: &str, value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            StoreError::from(EtcdError::Malformed {
                key: key.to_string(),
                reason: "not a decimal number: refusing to start".into(),
            })
        })
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let k = std::str::from_utf8(key).ok()?;
    k.rsplit('/').next()?.parse().ok()
}

/// What the leader key says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub id: String,
    /// The leader's API address.
    pub api: String,
    pub pid: u32,
}

impl LeaderInfo {
    /// This controller process, serving its API at `api`: its id is the address and the pid.
    pub fn this_process(api: std::net::SocketAddr) -> Self {
        Self {
            id: format!("{}-{}", api, std::process::id()),
            api: api.to_string(),
            pid: std::process::id(),
        }
    }
}

/// Time allowed to one etcd request before it counts as failed.
fn op_timeout(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(3))
}

async fn timed<T>(
    what: &'static str,
    after: Duration,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(after, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Op { what, source }),
        Err(_) => Err(EtcdError::Timeout { what, after }),
    }
}

/// Connects to etcd (lazily usable: requests fail until it answers).
///
/// # Errors
/// A malformed endpoint, or no answer within the connect timeout.
pub async fn connect(endpoints: &[String]) -> Result<Client, EtcdError> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: endpoints.to_vec(),
            source,
        })
}

/// A lease kept alive in the background, and the campaign on it.
pub struct Session {
    client: Client,
    keys: Keys,
    ttl: Duration,
    lease: i64,
    guard: LeaderGuard,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` and starts keeping it alive.
    ///
    /// # Errors
    /// etcd does not grant the lease in time.
    pub async fn start(client: Client, keys: Keys, ttl: Duration) -> Result<Self, EtcdError> {
        let sent = Instant::now();
        let mut c = client.clone();
        let resp = timed(
            "granting the lease",
            op_timeout(ttl),
            c.lease_grant(ttl.as_secs().max(1) as i64, None),
        )
        .await?;
        let granted = Duration::from_secs(resp.ttl().max(0) as u64);
        let guard = LeaderGuard::with_lease(sent + granted.min(ttl) - ttl / 5);
        let keepalive = tokio::spawn(keep_alive(client.clone(), resp.id(), ttl, guard.clone()));
        Ok(Self {
            client,
            keys,
            ttl,
            lease: resp.id(),
            guard,
            keepalive,
        })
    }

    pub fn guard(&self) -> LeaderGuard {
        self.guard.clone()
    }

    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Campaigns until this session leads; `follower` hears who leads meanwhile.
    /// Returns the leader key's create revision: the fence of every write of this term.
    ///
    /// # Errors
    /// [`EtcdError::LeaseLost`] when the lease lapses while campaigning (start a new session).
    pub async fn campaign(
        &self,
        me: &LeaderInfo,
        mut follower: impl FnMut(Option<LeaderInfo>),
    ) -> Result<i64, EtcdError> {
        let value = serde_json::to_string(me).expect("leader info encodes");
        let key = self.keys.leader();
        let mut kv = self.client.kv_client();
        let mut announced_error = false;
        loop {
            if !self.guard.lease_alive() {
                return Err(EtcdError::LeaseLost);
            }
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = match timed("campaigning", op_timeout(self.ttl), kv.txn(txn)).await {
                Ok(r) => r,
                Err(e) => {
                    if !announced_error {
                        warn!(error = %e, "cannot campaign for leadership; retrying");
                        announced_error = true;
                    }
                    follower(None);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            };
            let rev = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                self.guard.set_leading();
                return Ok(rev);
            }
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            let Some(holder) = holder else {
                continue; // deleted in between: try again at once
            };
            if holder.lease() == self.lease {
                // Our own key: an earlier attempt succeeded but its answer was lost.
                self.guard.set_leading();
                return Ok(holder.create_revision());
            }
            follower(serde_json::from_slice(holder.value()).ok());
            self.wait_deleted(&key, rev).await;
        }
    }

    /// One attempt at the leader key: `Some(fence)` when this session holds it now (won, or
    /// held already), `None` when another does.
    ///
    /// # Errors
    /// The lease lapsed, or etcd did not answer.
    pub async fn try_campaign(&self, me: &LeaderInfo) -> Result<Option<i64>, EtcdError> {
        if !self.guard.lease_alive() {
            return Err(EtcdError::LeaseLost);
        }
        let value = serde_json::to_string(me).expect("leader info encodes");
        let key = self.keys.leader();
        let mut kv = self.client.kv_client();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = timed("campaigning", op_timeout(self.ttl), kv.txn(txn)).await?;
        if resp.succeeded() {
            self.guard.set_leading();
            return Ok(Some(resp.header().map_or(0, |h| h.revision())));
        }
        let holder = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        match holder {
            Some(h) if h.lease() == self.lease => {
                self.guard.set_leading();
                Ok(Some(h.create_revision()))
            }
            _ => Ok(None),
        }
    }

    /// Waits until the leader key is deleted after `rev`, or a TTL has passed (then the caller
    /// looks again: a watch can be cut without notice).
    async fn wait_deleted(&self, key: &str, rev: i64) {
        let mut w = self.client.watch_client();
        let opts = WatchOptions::new().with_start_revision(rev + 1);
        let until = tokio::time::Instant::now() + self.ttl;
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(op_timeout(self.ttl), w.watch(key, Some(opts))).await
        else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        };
        loop {
            match tokio::time::timeout_at(until, stream.message()).await {
                Ok(Ok(Some(resp))) => {
                    if resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                        || resp.canceled()
                    {
                        return;
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Gives the lease back (on a clean stop): the key goes with it and a follower takes over
    /// at once instead of after the TTL.
    pub async fn resign(self) {
        self.keepalive.abort();
        self.guard.lose("resigned");
        let mut lease = self.client.lease_client();
        if let Err(e) = timed(
            "revoking the lease",
            op_timeout(self.ttl),
            lease.revoke(self.lease),
        )
        .await
        {
            warn!(error = %e, "could not revoke the lease; it expires within its TTL");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// Keeps `lease` alive every TTL/3, extending `guard` to (send time + TTL − TTL/5) on each
/// acknowledgement, and marks it lost when the lease is gone or that instant passes.
async fn keep_alive(client: Client, lease: i64, ttl: Duration, guard: LeaderGuard) {
    let every = ttl / 3;
    let mut lc = client.lease_client();
    let mut stream = None;
    let mut failing = false;
    loop {
        let sent = Instant::now();
        let attempt = async {
            if stream.is_none() {
                stream = Some(lc.keep_alive(lease).await?);
            }
            let (keeper, responses) = stream.as_mut().expect("stream just set");
            keeper.keep_alive().await?;
            responses.message().await
        };
        match tokio::time::timeout(every, attempt).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                if failing {
                    info!(lease, "etcd lease keep-alive acknowledged again");
                    failing = false;
                }
                guard.extend(sent + ttl - ttl / 5);
            }
            Ok(Ok(Some(_))) => {
                guard.lose("etcd says the lease has expired");
                return;
            }
            other => {
                stream = None;
                if !failing {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(None)) => "keep-alive stream closed".into(),
                        _ => format!("no answer within {every:?}"),
                    };
                    warn!(lease, error = %why, "etcd lease keep-alive failed; retrying");
                    failing = true;
                }
            }
        }
        if !guard.lease_alive() {
            guard.lose("no lease keep-alive acknowledged in time: the lease may expire");
            return;
        }
        let lost = guard.lost();
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep_until((sent + every).into()) => {}
        }
    }
}

/// The store of one cluster in etcd. A leader's instance fences every write with the leader
/// key's create revision; a reader's refuses to write.
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    handle: tokio::runtime::Handle,
    /// The leader key's create revision of this term (`None`: a reader).
    fence: Option<i64>,
    guard: LeaderGuard,
    events_kept: u32,
    workflows_kept: u32,
    timeout: Duration,
    last_json: Option<String>,
    next_seq: u64,
}

impl EtcdStore {
    /// The leader's store for the term fenced by `fence` (from [`Session::campaign`]).
    /// Call from within a multi-thread tokio runtime.
    pub fn leader(
        client: Client,
        keys: Keys,
        fence: i64,
        guard: LeaderGuard,
        ttl: Duration,
        events_kept: u32,
        workflows_kept: u32,
    ) -> Self {
        Self {
            client,
            keys,
            handle: tokio::runtime::Handle::current(),
            fence: Some(fence),
            guard,
            events_kept: events_kept.max(1),
            workflows_kept: workflows_kept.max(1),
            timeout: op_timeout(ttl),
            last_json: None,
            next_seq: 0,
        }
    }

    /// A read-only store (the API's reads).
    pub fn reader(client: Client, keys: Keys, ttl: Duration) -> Self {
        Self {
            client,
            keys,
            handle: tokio::runtime::Handle::current(),
            fence: None,
            guard: LeaderGuard::with_lease(Instant::now()),
            events_kept: 1,
            workflows_kept: 1,
            timeout: op_timeout(ttl),
            last_json: None,
            next_seq: 0,
        }
    }

    /// Runs `f` to completion from synchronous code (the engine's commit, the API's reads),
    /// parking the tokio worker so that other tasks move to another thread meanwhile.
    fn block<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
                return Err(EtcdError::Runtime.into());
            }
        }
        tokio::task::block_in_place(|| self.handle.block_on(f))
    }

    fn fence(&self) -> Result<i64, EtcdError> {
        match self.fence {
            Some(rev) if self.guard.still_leader() => Ok(rev),
            _ => Err(EtcdError::NotLeader),
        }
    }

    /// The compare every write carries.
    fn fenced(&self, rev: i64) -> Compare {
        Compare::create_revision(self.keys.leader(), CompareOp::Equal, rev)
    }

    async fn txn(&self, what: &'static str, txn: Txn) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let resp = timed(what, self.timeout, kv.txn(txn)).await?;
        if !resp.succeeded() {
            self.guard
                .lose("a fenced write failed: another controller holds the leader key");
            return Err(EtcdError::Fenced.into());
        }
        Ok(())
    }

    async fn get(
        &self,
        what: &'static str,
        key: String,
        opts: Option<GetOptions>,
    ) -> Result<Vec<etcd_client::KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        let mut resp = timed(what, self.timeout, kv.get(key, opts)).await?;
        Ok(resp.take_kvs())
    }

    /// The epoch stored, if any; a value that is not a decimal number is an error. A shard's
    /// epoch key is the fleet's: it counts as this shard's only once the shard has a state of
    /// its own (a new shard of a running fleet is a new cluster, or a lost one, to
    /// [`crate::recover`], whatever the other shards took).
    pub fn stored_epoch(&mut self) -> Result<Option<u64>, StoreError> {
        self.block(async {
            if self.keys.epoch.is_some() {
                let state = self
                    .get(
                        "reading the state",
                        self.keys.state(),
                        Some(GetOptions::new().with_keys_only()),
                    )
                    .await?;
                if state.is_empty() {
                    return Ok(None);
                }
            }
            let key = self.keys.epoch();
            let kvs = self.get("reading the epoch", key.clone(), None).await?;
            kvs.first()
                .map(|kv| parse_epoch(&key, kv.value()))
                .transpose()
        })
    }

    /// Takes the next epoch: the stored one (or `floor`, if higher) + 1, written fenced.
    pub fn next_epoch_above(&mut self, floor: u64) -> Result<u64, StoreError> {
        let rev = self.fence()?;
        self.block(async {
            let key = self.keys.epoch();
            let kvs = self.get("reading the epoch", key.clone(), None).await?;
            let (cur, mod_rev) = match kvs.first() {
                Some(kv) => (parse_epoch(&key, kv.value())?, kv.mod_revision()),
                None => (0, 0),
            };
            let next = cur.max(floor).saturating_add(1);
            let txn = Txn::new()
                .when([
                    self.fenced(rev),
                    Compare::mod_revision(key.clone(), CompareOp::Equal, mod_rev),
                ])
                .and_then([TxnOp::put(key, next.to_string(), None)]);
            self.txn("taking the next epoch", txn).await?;
            Ok(next)
        })
    }

    pub fn load(&mut self) -> Result<Option<Cluster>, StoreError> {
        let (cluster, json, last_seq) = self.block(async {
            let key = self.keys.state();
            let kvs = self.get("reading the state", key.clone(), None).await?;
            let last = self
                .get(
                    "reading the last event",
                    self.keys.events_dir(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(1)
                            .with_keys_only(),
                    ),
                )
                .await?;
            let last_seq = last.first().and_then(|kv| seq_of(kv.key())).unwrap_or(0);
            let Some(kv) = kvs.first() else {
                return Ok((None, None, last_seq));
            };
            let text = std::str::from_utf8(kv.value())
                .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))?;
            let (head, json) = text
                .split_once('\n')
                .ok_or_else(|| StoreError::Corrupt(format!("{key}: no header line")))?;
            let (version, sum) = head
                .split_once(' ')
                .ok_or_else(|| StoreError::Corrupt(format!("{key}: bad header {head:?}")))?;
            let version: i64 = version
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("{key}: bad version {version:?}")))?;
            let cluster = decode_state(version, sum, json)?;
            Ok((Some(cluster), Some(json.to_string()), last_seq))
        })?;
        self.next_seq = last_seq + 1;
        self.last_json = json;
        Ok(cluster)
    }

    /// Commits the state, its events and newly finished workflows in one fenced transaction.
    /// A state equal to the last one committed, with nothing else to write, is skipped.
    pub fn commit(
        &mut self,
        cluster: &Cluster,
        events: &[LogEvent],
        finished: &[Workflow],
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(cluster)?;
        if events.is_empty()
            && finished.is_empty()
            && self.last_json.as_deref() == Some(json.as_str())
        {
            return Ok(());
        }
        let rev = self.fence()?;
        if self.next_seq == 0 {
            // A store that was never loaded: find where the event log ends.
            self.load()?;
        }
        let mut ops = vec![TxnOp::put(
            self.keys.state(),
            format!("{STATE_VERSION} {}\n{json}", encode_checksum(&json)),
            None,
        )];
        if !events.is_empty() {
            let first = self.next_seq;
            let last = first + events.len() as u64 - 1;
            // Taken even if the outcome is unknown: a batch that did land is never overwritten.
            self.next_seq = last + 1;
            let batch: Vec<StoredEvent> = events
                .iter()
                .zip(first..)
                .map(|(e, seq)| {
                    let mut event = e.clone();
                    event.message = crate::store_codec::stored_message(&e.message);
                    StoredEvent {
                        seq: seq as i64,
                        event,
                    }
                })
                .collect();
            ops.push(TxnOp::put(
                self.keys.event(last),
                serde_json::to_vec(&batch)?,
                None,
            ));
            let kept = u64::from(self.events_kept);
            if last > kept {
                ops.push(TxnOp::delete(
                    self.keys.event(0),
                    Some(DeleteOptions::new().with_range(self.keys.event(last - kept + 1))),
                ));
            }
        }
        if let Some(newest) = finished.iter().map(|w| w.id).max() {
            for w in finished {
                ops.push(TxnOp::put(
                    self.keys.workflow(w.id),
                    serde_json::to_vec(w)?,
                    None,
                ));
            }
            let kept = u64::from(self.workflows_kept);
            if newest >= kept {
                ops.push(TxnOp::delete(
                    self.keys.workflow(0),
                    Some(DeleteOptions::new().with_range(self.keys.workflow(newest - kept + 1))),
                ));
            }
        }
        let txn = Txn::new().when([self.fenced(rev)]).and_then(ops);
        match self.block(self.txn("committing a step", txn)) {
            Ok(()) => {
                self.last_json = Some(json);
                Ok(())
            }
            Err(e) => {
                // The outcome may be unknown: never skip the next commit as "unchanged".
                self.last_json = None;
                Err(e)
            }
        }
    }

    fn parse_batch(kv: &etcd_client::KeyValue) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(serde_json::from_slice(kv.value())?)
    }

    /// Events after `after` (a sequence number), oldest first, at most `limit`.
    pub fn events(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let from = self.keys.event(after.saturating_add(1).max(0) as u64);
        let end = dir_end(&self.keys.events_dir());
        let kvs = self.block(
            self.get(
                "reading events",
                from,
                Some(
                    GetOptions::new()
                        .with_range(end)
                        .with_limit(i64::from(limit)),
                ),
            ),
        )?;
        let mut out = Vec::new();
        for kv in &kvs {
            out.extend(Self::parse_batch(kv)?.into_iter().filter(|e| e.seq > after));
        }
        out.truncate(limit as usize);
        Ok(out)
    }

    /// The newest `limit` events, oldest first.
    pub fn recent_events(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let kvs = self.block(
            self.get(
                "reading recent events",
                self.keys.events_dir(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(i64::from(limit)),
                ),
            ),
        )?;
        let mut out = Vec::new();
        for kv in kvs.iter().rev() {
            out.extend(Self::parse_batch(kv)?);
        }
        let skip = out.len().saturating_sub(limit as usize);
        Ok(out.split_off(skip))
    }

    /// Finished workflows, newest first.
    pub fn finished_workflows(&self, limit: u32) -> Result<Vec<Workflow>, StoreError> {
        let kvs = self.block(
            self.get(
                "reading finished workflows",
                self.keys.workflows_dir(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(i64::from(limit)),
                ),
            ),
        )?;
        kvs.iter()
            .map(|kv| serde_json::from_slice(kv.value()).map_err(StoreError::from))
            .collect()
    }
}

/// Compacts etcd's key history while this controller leads: every `every`, up to the revision
/// seen one period before (so at least one period of history stays for watchers), as
/// Kubernetes' API server does. Every commit rewrites `<prefix>/state`; without compaction the
/// old revisions pile up until etcd's backend quota is full and every write fails (`NOSPACE`).
/// Compaction only frees space inside etcd's file for reuse; giving it back to the file
/// system needs `etcdctl defrag`, which blocks the member and is left to operators.
/// Ends when `stop` is cancelled.
pub async fn compact_history(
    client: Client,
    every: Duration,
    guard: LeaderGuard,
    stop: tokio_util::sync::CancellationToken,
    keys: Keys,
) {
    let mut kv = client.kv_client();
    let mut seen: Option<i64> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !guard.still_leader() {
            return;
        }
        let now = match timed(
            "reading the revision",
            Duration::from_secs(3),
            kv.get(keys.leader(), Some(GetOptions::new().with_keys_only())),
        )
        .await
        {
            Ok(r) => r.header().map(|h| h.revision()),
            Err(e) => {
                warn!(error = %e, "cannot read etcd's revision for compaction; trying next period");
                continue;
            }
        };
        if let Some(rev) = seen {
            match timed("compacting", Duration::from_secs(10), kv.compact(rev, None)).await {
                Ok(_) => info!(revision = rev, "compacted etcd's history"),
                // Someone compacted further already (etcd's own auto-compaction, another tool).
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => warn!(error = %e, revision = rev, "etcd compaction failed"),
            }
        }
        seen = now;
    }
}

/// The slots of the fleet's budget each shard holds: `<prefix>/budget`, JSON
/// `{"<shard>": slots}`, and the key's mod revision (0: absent). See [`crate::shards`].
///
/// # Errors
/// etcd does not answer, or the value is not such a map.
pub async fn read_budget(
    client: &Client,
    key: &str,
    ttl: Duration,
) -> Result<(std::collections::BTreeMap<u32, u32>, i64), StoreError> {
    let mut kv = client.kv_client();
    let resp = timed("reading the budget", op_timeout(ttl), kv.get(key, None)).await?;
    match resp.kvs().first() {
        None => Ok((std::collections::BTreeMap::new(), 0)),
        Some(kv) => {
            let map = serde_json::from_slice(kv.value()).map_err(|e| {
                StoreError::from(EtcdError::Malformed {
                    key: key.to_string(),
                    reason: format!("not a map of shard to slots: {e}"),
                })
            })?;
            Ok((map, kv.mod_revision()))
        }
    }
}

/// One shard's place in the fleet's budget: its keys, number and fence.
pub struct ShardBudget<'a> {
    pub client: &'a Client,
    /// The shard's keys (its leader key fences the writes).
    pub keys: &'a Keys,
    /// `<prefix>/budget`.
    pub budget_key: &'a str,
    pub shard: u32,
    /// The shard's leader key's create revision of this term.
    pub fence: i64,
    pub ttl: Duration,
}

/// Sets the slots the shard holds to as close to `want` as the fleet's `max` allows (more
/// only out of the slots no shard holds), in one compare-and-swap transaction on the budget
/// key fenced by the shard's leader key. Returns the slots held after. A lost race with
/// another shard is tried again; a lost fence is [`EtcdError::Fenced`].
///
/// # Errors
/// etcd does not answer, the budget key is malformed, or this controller no longer owns the
/// shard.
pub async fn set_budget_slots(b: &ShardBudget<'_>, want: u32, max: u32) -> Result<u32, StoreError> {
    let ShardBudget {
        client,
        keys,
        budget_key,
        shard,
        fence,
        ttl,
    } = *b;
    let mut kv = client.kv_client();
    loop {
        let (mut map, rev) = read_budget(client, budget_key, ttl).await?;
        let mine = map.get(&shard).copied().unwrap_or(0);
        let others: u32 = map
            .iter()
            .filter(|(k, _)| **k != shard)
            .map(|(_, v)| *v)
            .sum();
        let free = max.saturating_sub(others);
        let new = if want > mine {
            want.min(free).max(mine)
        } else {
            want
        };
        if new == mine && map.contains_key(&shard) {
            return Ok(mine);
        }
        map.insert(shard, new);
        let value = serde_json::to_vec(&map)?;
        let txn = Txn::new()
            .when([
                Compare::create_revision(keys.leader(), CompareOp::Equal, fence),
                Compare::mod_revision(budget_key, CompareOp::Equal, rev),
            ])
            .and_then([TxnOp::put(budget_key, value, None)])
            .or_else([TxnOp::get(keys.leader(), None)]);
        let resp = timed("taking budget slots", op_timeout(ttl), kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(new);
        }
        let holder = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        if holder.map(|h| h.create_revision()) != Some(fence) {
            return Err(EtcdError::Fenced.into());
        }
        // Another shard changed the budget in between: read it again.
    }
}

/// Reads who leads now, if anyone (for tests and tools).
///
/// # Errors
/// etcd does not answer.
pub async fn current_leader(client: &Client, keys: &Keys) -> Result<Option<LeaderInfo>, EtcdError> {
    let mut kv = client.kv_client();
    let resp = timed(
        "reading the leader key",
        Duration::from_secs(3),
        kv.get(keys.leader(), None),
    )
    .await?;
    Ok(resp
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_as_numbers_and_ranges_end_after_the_directory() {
        let k = Keys::new("/rejuv/c/");
        assert_eq!(k.leader(), "/rejuv/c/leader");
        assert!(k.event(9) < k.event(10));
        assert!(k.event(u64::MAX) < dir_end(&k.events_dir()));
        assert_eq!(seq_of(k.event(42).as_bytes()), Some(42));
        assert!(k.workflow(1) > k.events_dir());
    }
}
