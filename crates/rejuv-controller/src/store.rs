//! Durable state: the cluster (with its outbox), the event log and finished workflows.
//!
//! [`Store`] is the backend the engine and the API use: [`SqliteStore`] (one controller, a
//! file, the default) or, with the cargo feature `etcd`, [`crate::etcd_store::EtcdStore`]
//! (several controllers, one leader, every write fenced). Both keep the same contract:
//!
//! One [`Store::commit`] is one SQLite (or etcd) transaction holding the new cluster state, the commands
//! it issued (they live inside the state's outbox) and the events it logged, so a controller
//! killed at any point restarts from a state whose intents were recorded before they were acted
//! on. The state is stored as versioned JSON with a checksum; a checksum mismatch is an error,
//! never a silent reset.
//!
//! Raw samples never come here: they stay in the controller's memory.

use crate::store_codec::{decode_state, encode_checksum, outcome_name, stored_message};
pub use crate::store_codec::{StoreError, STATE_VERSION};
use rejuv_core::api::RouteTable;
use rejuv_core::cluster::{Cluster, EventKind, Instance, LogEvent, Server, WithoutFleet, Workflow};
use rejuv_core::detector::Level;
use rejuv_core::shell::durable::server_same_but_readings;
pub use rejuv_core::wire::StoredEvent;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::Path;

/// The store backend. Every method blocks the calling thread for the duration of one
/// transaction or read, like SQLite's do (the etcd backend parks the tokio worker with
/// `block_in_place`).
pub enum Store {
    Sqlite(SqliteStore),
    /// Boxed: the etcd client is large, and a store is made once per term.
    #[cfg(feature = "etcd")]
    Etcd(Box<crate::etcd_store::EtcdStore>),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            #[cfg(feature = "etcd")]
            Store::Etcd($s) => $e,
        }
    };
}

impl Store {
    /// Opens the SQLite store at `path`.
    pub fn open(path: &Path, events_kept: u32, workflows_kept: u32) -> Result<Self, StoreError> {
        SqliteStore::open(path, events_kept, workflows_kept).map(Store::Sqlite)
    }

    /// Takes the next epoch (fencing term) for this controller's run.
    pub fn next_epoch(&mut self) -> Result<u64, StoreError> {
        self.next_epoch_above(0)
    }

    /// Takes the next epoch, above both the stored one and `floor` (the highest epoch the
    /// agents hold, when a lost store is recovered from them).
    pub fn next_epoch_above(&mut self, floor: u64) -> Result<u64, StoreError> {
        each!(self, s => s.next_epoch_above(floor))
    }

    /// The epoch stored, if any; an unreadable one is an error.
    pub fn stored_epoch(&mut self) -> Result<Option<u64>, StoreError> {
        each!(self, s => s.stored_epoch())
    }

    pub fn load(&mut self) -> Result<Option<Cluster>, StoreError> {
        each!(self, s => s.load())
    }

    /// Commits the state, its events and newly finished workflows in one transaction.
    pub fn commit(
        &mut self,
        cluster: &Cluster,
        events: &[LogEvent],
        finished: &[Workflow],
    ) -> Result<(), StoreError> {
        each!(self, s => s.commit(cluster, events, finished))
    }

    /// Events after `after` (a sequence number), oldest first, at most `limit`.
    pub fn events(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        each!(self, s => s.events(after, limit))
    }

    /// The newest `limit` events, oldest first.
    pub fn recent_events(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        each!(self, s => s.recent_events(limit))
    }

    /// Finished workflows, newest first.
    pub fn finished_workflows(&self, limit: u32) -> Result<Vec<Workflow>, StoreError> {
        each!(self, s => s.finished_workflows(limit))
    }
}

/// Events written before events had a level have no `level` column: it is added (empty for
/// the old rows, which read back with no level).
fn add_level_column(conn: &Connection) -> Result<(), StoreError> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('events') WHERE name = 'level'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE events ADD COLUMN level TEXT;")?;
    }
    Ok(())
}

/// `meta.epoch`: none in a new store; a value that is not a decimal number is corruption.
fn read_epoch(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let raw: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
            r.get(0)
        })
        .optional()?;
    raw.map(|v| {
        v.trim().parse::<u64>().map_err(|_| {
            StoreError::Corrupt(format!(
                "meta.epoch holds {:?}, not a decimal number: refusing to start (restore the store from a backup, or set meta.epoch above every agent's epoch)",
                rejuv_core::text::clip(&v, 64)
            ))
        })
    })
    .transpose()
}

/// A detector level by its stored name; an unknown one reads as none.
fn level_named(name: &str) -> Option<Level> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

pub struct SqliteStore {
    conn: Connection,
    events_kept: u32,
    workflows_kept: u32,
    /// What the file holds, as last written or read: a commit writes the parts that differ.
    last: Option<Box<Written>>,
}

/// The state as the SQLite file holds it, in parts (format [`SPLIT_VERSION`]): the rest of
/// the cluster in `cluster`, each server in `servers` (without its readings), each instance in
/// `instances`, the route table in `routes`. A step writes the parts it changed, so what a
/// commit writes grows with the change, not with the fleet.
#[derive(Default)]
struct Written {
    rest: String,
    servers: BTreeMap<String, Server>,
    instances: BTreeMap<String, Instance>,
    routes: Option<RouteTable>,
}

/// What differs between what is stored (`old`) and the state (`new`): the values of `new` not
/// in `old` or not `same` as there, and the keys of `old` gone from `new`. One pass over both
/// maps in key order: no lookups, so a fleet's worth of keys costs one comparison each.
fn diff<'a, V, W>(
    old: &BTreeMap<String, W>,
    new: &'a BTreeMap<String, V>,
    same: impl Fn(&W, &V) -> bool,
) -> (Vec<&'a V>, Vec<String>) {
    let mut changed = Vec::new();
    let mut gone = Vec::new();
    let mut o = old.iter().peekable();
    for (k, v) in new {
        while let Some((ok, _)) = o.peek() {
            if ok.as_str() < k.as_str() {
                gone.push((*ok).clone());
                o.next();
            } else {
                break;
            }
        }
        match o.peek() {
            Some((ok, ov)) if *ok == k => {
                if !same(ov, v) {
                    changed.push(v);
                }
                o.next();
            }
            _ => changed.push(v),
        }
    }
    gone.extend(o.map(|(k, _)| k.clone()));
    (changed, gone)
}

/// The `cluster.version` of a state stored in parts; [`STATE_VERSION`] is the whole state in
/// one row (what stores written before hold; read, then rewritten in parts at the next commit).
pub const SPLIT_VERSION: i64 = 2;

impl SqliteStore {
    pub fn open(path: &Path, events_kept: u32, workflows_kept: u32) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS cluster (id INTEGER PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL, checksum TEXT NOT NULL, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 at_ms INTEGER NOT NULL, kind TEXT NOT NULL, server TEXT, workflow INTEGER,
                 message TEXT NOT NULL, level TEXT);
             CREATE TABLE IF NOT EXISTS workflows (id INTEGER PRIMARY KEY, server TEXT NOT NULL,
                 outcome TEXT NOT NULL, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS servers (id TEXT PRIMARY KEY, checksum TEXT NOT NULL,
                 json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, checksum TEXT NOT NULL,
                 json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS routes (id INTEGER PRIMARY KEY CHECK (id = 1),
                 checksum TEXT NOT NULL, json TEXT NOT NULL);",
        )?;
        add_level_column(&conn)?;
        Ok(Self {
            conn,
            events_kept,
            workflows_kept,
            last: None,
        })
    }

    /// Takes the next epoch (fencing term) for this controller's run, above `floor`.
    /// An epoch that does not read as a number is an error: taking 1 in its place would fork
    /// the cluster (every agent refuses a lower epoch).
    pub fn next_epoch_above(&mut self, floor: u64) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let cur = read_epoch(&tx)?.unwrap_or(0);
        let next = cur
            .max(floor)
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt(format!("meta.epoch {cur} cannot grow")))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('epoch', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![next.to_string()],
        )?;
        tx.commit()?;
        Ok(next)
    }

    /// The epoch stored, if any.
    pub fn stored_epoch(&mut self) -> Result<Option<u64>, StoreError> {
        read_epoch(&self.conn)
    }

    pub fn load(&mut self) -> Result<Option<Cluster>, StoreError> {
        let row: Option<(i64, String, String)> = self
            .conn
            .query_row(
                "SELECT version, checksum, json FROM cluster WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((version, sum, json)) = row else {
            return Ok(None);
        };
        if version != SPLIT_VERSION {
            // A whole state in one row: read as it is; the next commit writes it in parts.
            let cluster = decode_state(version, &sum, &json)?;
            self.last = None;
            return Ok(Some(cluster));
        }
        let mut cluster = decode_state(STATE_VERSION, &sum, &json)?;
        let mut written = Written {
            rest: json,
            ..Written::default()
        };
        for (id, part) in self.parts::<Server>("servers")? {
            cluster.servers.insert(id.clone(), part.clone());
            written.servers.insert(id, part);
        }
        for (id, part) in self.parts::<Instance>("instances")? {
            cluster.instances.insert(id.clone(), part.clone());
            written.instances.insert(id, part);
        }
        if let Some((_, routes)) = self.parts::<RouteTable>("routes")?.into_iter().next() {
            cluster.routes = routes.clone();
            written.routes = Some(routes);
        }
        self.last = Some(Box::new(written));
        Ok(Some(cluster))
    }

    /// Every row of a parts table, each checked against its checksum.
    fn parts<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, checksum, json FROM {table} ORDER BY id"
        ))?;
        let rows = stmt.query_map([], |r| {
            let id: rusqlite::types::Value = r.get(0)?;
            let id = match id {
                rusqlite::types::Value::Text(t) => t,
                rusqlite::types::Value::Integer(i) => i.to_string(),
                _ => String::new(),
            };
            Ok((id, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sum, json) = row?;
            if encode_checksum(&json) != sum {
                return Err(StoreError::Corrupt(format!(
                    "checksum mismatch in {table} row {id:?}"
                )));
            }
            let part = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("{table} row {id:?}: {e}")))?;
            out.push((id, part));
        }
        Ok(out)
    }

    /// Commits the state, its events and newly finished workflows in one transaction: the
    /// parts of the state that differ from what the file holds (servers compared without
    /// their readings), the events, the workflows. A state whose parts are all as stored, with
    /// nothing else to write, is skipped.
    pub fn commit(
        &mut self,
        cluster: &Cluster,
        events: &[LogEvent],
        finished: &[Workflow],
    ) -> Result<(), StoreError> {
        let rest = serde_json::to_string(&WithoutFleet(cluster))?;
        let fresh = self.last.is_none();
        let empty = Written::default();
        let last = self.last.as_deref().unwrap_or(&empty);
        let (servers, servers_gone) =
            diff(&last.servers, &cluster.servers, server_same_but_readings);
        let (instances, instances_gone) = diff(&last.instances, &cluster.instances, |a, b| a == b);
        let routes_changed = last.routes.as_ref() != Some(&cluster.routes);
        let rest_changed = fresh || last.rest != rest;
        if events.is_empty()
            && finished.is_empty()
            && !rest_changed
            && !routes_changed
            && servers.is_empty()
            && servers_gone.is_empty()
            && instances.is_empty()
            && instances_gone.is_empty()
        {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        if fresh {
            // Whatever parts an earlier run left are replaced as a whole.
            tx.execute_batch("DELETE FROM servers; DELETE FROM instances; DELETE FROM routes;")?;
        }
        if rest_changed {
            tx.execute(
                "INSERT INTO cluster (id, version, checksum, json) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET version = excluded.version,
                     checksum = excluded.checksum, json = excluded.json",
                params![SPLIT_VERSION, encode_checksum(&rest), rest],
            )?;
        }
        let mut stored_servers = Vec::with_capacity(servers.len());
        for s in &servers {
            let part = s.without_readings();
            let json = serde_json::to_string(&part)?;
            tx.execute(
                "INSERT INTO servers (id, checksum, json) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET checksum = excluded.checksum, json = excluded.json",
                params![s.id, encode_checksum(&json), json],
            )?;
            stored_servers.push(part);
        }
        for id in &servers_gone {
            tx.execute("DELETE FROM servers WHERE id = ?1", params![id])?;
        }
        for i in &instances {
            let json = serde_json::to_string(i)?;
            tx.execute(
                "INSERT INTO instances (id, checksum, json) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET checksum = excluded.checksum, json = excluded.json",
                params![i.id, encode_checksum(&json), json],
            )?;
        }
        for id in &instances_gone {
            tx.execute("DELETE FROM instances WHERE id = ?1", params![id])?;
        }
        if routes_changed {
            let json = serde_json::to_string(&cluster.routes)?;
            tx.execute(
                "INSERT INTO routes (id, checksum, json) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET checksum = excluded.checksum, json = excluded.json",
                params![encode_checksum(&json), json],
            )?;
        }
        for e in events {
            tx.execute(
                "INSERT INTO events (at_ms, kind, server, workflow, message, level) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    e.at_ms as i64,
                    e.kind.as_str(),
                    e.server,
                    e.workflow.map(|w| w as i64),
                    stored_message(&e.message),
                    e.level.map(|l| l.to_string())
                ],
            )?;
        }
        for w in finished {
            let outcome = outcome_name(w)?;
            tx.execute(
                "INSERT OR REPLACE INTO workflows (id, server, outcome, json) VALUES (?1, ?2, ?3, ?4)",
                params![w.id as i64, w.server, outcome, serde_json::to_string(w)?],
            )?;
        }
        if !events.is_empty() {
            tx.execute(
                "DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?1",
                params![i64::from(self.events_kept)],
            )?;
        }
        if !finished.is_empty() {
            tx.execute(
                "DELETE FROM workflows WHERE id NOT IN (SELECT id FROM workflows ORDER BY id DESC LIMIT ?1)",
                params![i64::from(self.workflows_kept)],
            )?;
        }
        tx.commit()?;
        let instances: Vec<Instance> = instances.into_iter().cloned().collect();
        let last = self.last.get_or_insert_with(Box::default);
        last.rest = rest;
        for part in stored_servers {
            last.servers.insert(part.id.clone(), part);
        }
        for id in servers_gone {
            last.servers.remove(&id);
        }
        for i in instances {
            last.instances.insert(i.id.clone(), i);
        }
        for id in instances_gone {
            last.instances.remove(&id);
        }
        if routes_changed {
            last.routes = Some(cluster.routes.clone());
        }
        Ok(())
    }

    /// Events after `after` (a sequence number), oldest first, at most `limit`.
    pub fn events(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, at_ms, kind, server, workflow, message, level FROM events
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, i64::from(limit)], |r| {
            Ok(StoredEvent {
                seq: r.get(0)?,
                event: LogEvent {
                    at_ms: r.get::<_, i64>(1)? as u64,
                    kind: EventKind::from_name(&r.get::<_, String>(2)?),
                    server: r.get(3)?,
                    workflow: r.get::<_, Option<i64>>(4)?.map(|w| w as u64),
                    message: r.get(5)?,
                    level: r.get::<_, Option<String>>(6)?.and_then(|l| level_named(&l)),
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest `limit` events, oldest first.
    pub fn recent_events(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let max: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
        self.events(max.unwrap_or(0) - i64::from(limit), limit)
    }

    /// Finished workflows, newest first.
    pub fn finished_workflows(&self, limit: u32) -> Result<Vec<Workflow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT json FROM workflows ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map(params![i64::from(limit)], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for json in rows {
            out.push(serde_json::from_str(&json?)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_codec::checksum;

    #[test]
    fn checksum_detects_a_changed_byte() {
        assert_ne!(checksum(b"{\"a\":1}"), checksum(b"{\"a\":2}"));
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let s = SqliteStore::open(&path, 10, 10).unwrap();
            s.conn
                .execute(
                    "INSERT INTO cluster (id, version, checksum, json) VALUES (1, 1, '0', '{}')",
                    [],
                )
                .unwrap();
        }
        let mut s = Store::open(&path, 10, 10).unwrap();
        let e = s.load().unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn events_of_a_store_from_before_levels_read_back_and_new_ones_keep_kind_and_level() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            // The events table as it was before events had a level, with one old row.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     at_ms INTEGER NOT NULL, kind TEXT NOT NULL, server TEXT, workflow INTEGER,
                     message TEXT NOT NULL);
                 INSERT INTO events (at_ms, kind, server, workflow, message)
                     VALUES (1, 'workflow-rolled-back', 's1', 3, 'old'),
                            (2, 'from-elsewhere', NULL, NULL, 'unknown kind');",
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(&path, 10, 10).unwrap();
        let cluster: Cluster = serde_json::from_value(serde_json::json!({
            "mode": "active-standby", "servers": {}, "instances": {}, "workflows": {},
            "history": [], "pending": {}, "paused": false, "routes_version": 1,
            "routes": {"version": 1, "services": {}}, "next_id": 1,
            "completed_total": 0, "rolled_back_total": 0, "failed_total": 0
        }))
        .unwrap();
        let judged = LogEvent {
            at_ms: 3,
            kind: EventKind::Judgement,
            server: Some("s1".into()),
            workflow: None,
            message: "judged stable".into(),
            level: Some(Level::Stable),
        };
        s.commit(&cluster, std::slice::from_ref(&judged), &[])
            .unwrap();
        let got: Vec<LogEvent> = s
            .events(0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(got[0].kind, EventKind::WorkflowRolledBack);
        assert_eq!(got[0].level, None);
        assert_eq!(got[1].kind.as_str(), "from-elsewhere");
        assert_eq!(got[2], judged);
        let text: String = s
            .conn
            .query_row("SELECT kind FROM events WHERE seq = 3", [], |r| r.get(0))
            .unwrap();
        assert_eq!(text, "judgement");
    }

    #[test]
    fn epochs_increase() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db"), 10, 10).unwrap();
        let a = s.next_epoch().unwrap();
        let b = s.next_epoch().unwrap();
        assert!(b > a);
        assert_eq!(s.next_epoch_above(41).unwrap(), 42);
        assert_eq!(s.stored_epoch().unwrap(), Some(42));
    }

    #[test]
    fn a_garbage_epoch_refuses_to_start_and_is_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path, 10, 10).unwrap();
        s.next_epoch().unwrap();
        let Store::Sqlite(inner) = &s else {
            unreachable!()
        };
        inner
            .conn
            .execute(
                "UPDATE meta SET value = 'x\u{1b}[2Jgarbage' WHERE key = 'epoch'",
                [],
            )
            .unwrap();
        let err = s.next_epoch().unwrap_err().to_string();
        assert!(
            err.contains("meta.epoch") && err.contains("refusing to start"),
            "{err}"
        );
        assert!(s.stored_epoch().is_err());
        let Store::Sqlite(inner) = &s else {
            unreachable!()
        };
        let kept: String = inner
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, "x\u{1b}[2Jgarbage", "not overwritten");
    }
}
