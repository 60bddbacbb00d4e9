//! The agent's durable state: `data_dir/agent-state.json`.
//!
//! It holds what must survive an agent restart (including the restart that rejuvenation itself
//! asks for): the highest controller epoch seen (fencing), the running-time origin, the crash
//! count, and the last rejuvenation reports (so a retried `run_id` is answered, not re-run).
//!
//! # Guarantees
//! - Every change is written before it is acknowledged: temp file, fsync, rename, fsync of
//!   the directory; a crash leaves either the old or the new file.
//! - The file carries a format version and an FNV-1a 64 checksum of its payload. A file that
//!   does not verify is an error at start, never silently reset: resetting would forget the
//!   epoch fence and let a deposed controller command this agent again.

use rejuv_core::api::RejuvenationReport;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// File name inside the data dir.
pub const STATE_FILE: &str = "agent-state.json";
/// Format version written by this agent.
pub const STATE_VERSION: u32 = 1;
/// Rejuvenation reports kept for `run_id` replays.
pub const REPORTS_KEPT: usize = 16;

pub use rejuv_core::api::{MAX_EPOCH, MAX_EPOCH_STEP};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read agent state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "agent state file {path} is corrupt ({reason}); refusing to start. Inspect it, or move it \
         away to start afresh (that forgets the epoch fence and the running-time origin)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("agent state file {path} has format version {found}; this agent reads version {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write agent state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "epoch {got}: no controller could hold it (this agent holds epoch {seen}; an epoch may be \
         at most {MAX_EPOCH_STEP} above it, and at most 2^53)"
    )]
    ImplausibleEpoch { got: u64, seen: u64 },
    #[error("stale epoch {got}: this agent has already accepted epoch {seen}")]
    StaleEpoch { got: u64, seen: u64 },
}

/// What is persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub epoch: u64,
    pub running_since_ms: u64,
    pub crashes_total: u64,
    /// Oldest first, at most [`REPORTS_KEPT`].
    pub reports: Vec<RejuvenationReport>,
    /// The host's boot identity when the agent last started (see [`crate::host`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    version: u32,
    /// `fnv1a64:<16 hex digits>` over the compact JSON of `state`.
    checksum: String,
    state: PersistedState,
}

pub use rejuv_core::digest::fnv1a64;

fn checksum_of(state: &PersistedState) -> String {
    let bytes = serde_json::to_vec(state).expect("state serializes");
    format!("fnv1a64:{:016x}", fnv1a64(&bytes))
}

/// Reads and verifies a state file. `Ok(None)` if there is none.
pub fn load(path: &Path) -> Result<Option<PersistedState>, StoreError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.into(),
                source,
            })
        }
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.into(),
        reason,
    };
    // Look at the version first, so a newer format is reported as such and not as corruption.
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| corrupt("no numeric 'version' field".into()))?;
    if version != u64::from(STATE_VERSION) {
        return Err(StoreError::Version {
            path: path.into(),
            found: version as u32,
        });
    }
    let env: Envelope =
        serde_json::from_value(value).map_err(|e| corrupt(format!("unexpected shape: {e}")))?;
    // The payload is re-serialized to check it: serde_json writes our types deterministically,
    // so the bytes are the ones the checksum was computed over when the file was written.
    let computed = checksum_of(&env.state);
    if computed != env.checksum {
        return Err(corrupt(format!(
            "checksum mismatch: file says {}, content is {computed}",
            env.checksum
        )));
    }
    Ok(Some(env.state))
}

/// Writes a state file atomically.
pub fn save(path: &Path, state: &PersistedState) -> Result<(), StoreError> {
    let werr = |source| StoreError::Write {
        path: path.into(),
        source,
    };
    let env = Envelope {
        version: STATE_VERSION,
        checksum: checksum_of(state),
        state: state.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&env).expect("state serializes");
    bytes.push(b'\n');
    let tmp = path.with_extension("json.tmp");
    {
        // Only the agent reads its state: the services it runs as other users must not.
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(werr)?
        };
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
    }
    std::fs::rename(&tmp, path).map_err(werr)?;
    // The rename itself must be durable before we acknowledge.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(werr)?;
    }
    Ok(())
}

/// The single owner of the persisted state; every change goes through it and is on disk
/// before the method returns.
pub struct Store {
    path: PathBuf,
    state: tokio::sync::Mutex<PersistedState>,
    // Lock-free copies for the collector and `/v1/state`.
    epoch: AtomicU64,
    running_since_ms: AtomicU64,
    crashes_total: AtomicU64,
}

impl Store {
    /// Opens the state in `data_dir`, creating it (running time starting `now_ms`) if absent.
    pub fn open(data_dir: &Path, now_ms: u64) -> Result<Self, StoreError> {
        let path = data_dir.join(STATE_FILE);
        let state = match load(&path)? {
            Some(s) => s,
            None => {
                let s = PersistedState {
                    epoch: 0,
                    running_since_ms: now_ms,
                    crashes_total: 0,
                    reports: vec![],
                    boot_id: None,
                };
                save(&path, &s)?;
                s
            }
        };
        Ok(Self {
            path,
            epoch: AtomicU64::new(state.epoch),
            running_since_ms: AtomicU64::new(state.running_since_ms),
            crashes_total: AtomicU64::new(state.crashes_total),
            state: tokio::sync::Mutex::new(state),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn running_since_ms(&self) -> u64 {
        self.running_since_ms.load(Ordering::SeqCst)
    }

    pub fn crashes_total(&self) -> u64 {
        self.crashes_total.load(Ordering::SeqCst)
    }

    /// Applies `change` to a copy, writes the copy, and only then makes it current: a failed
    /// write changes nothing.
    async fn update<T>(
        &self,
        change: impl FnOnce(&mut PersistedState) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.state.lock().await;
        let mut next = guard.clone();
        let out = change(&mut next)?;
        if next != *guard {
            let path = self.path.clone();
            let to_write = next.clone();
            tokio::task::spawn_blocking(move || save(&path, &to_write))
                .await
                .map_err(|e| StoreError::Write {
                    path: self.path.clone(),
                    source: std::io::Error::other(e),
                })??;
            self.epoch.store(next.epoch, Ordering::SeqCst);
            self.running_since_ms
                .store(next.running_since_ms, Ordering::SeqCst);
            self.crashes_total
                .store(next.crashes_total, Ordering::SeqCst);
            *guard = next;
        }
        Ok(out)
    }

    /// Epoch fencing: refuses an epoch lower than the highest seen, and one no controller
    /// could hold ([`MAX_EPOCH`], [`MAX_EPOCH_STEP`]); persists a higher one.
    pub async fn fence(&self, epoch: u64) -> Result<(), StoreError> {
        self.update(|s| {
            if !rejuv_core::api::epoch_is_plausible(epoch, s.epoch) {
                return Err(StoreError::ImplausibleEpoch {
                    got: epoch,
                    seen: s.epoch,
                });
            }
            if epoch < s.epoch {
                return Err(StoreError::StaleEpoch {
                    got: epoch,
                    seen: s.epoch,
                });
            }
            s.epoch = epoch;
            Ok(())
        })
        .await
    }

    pub async fn add_crash(&self) -> Result<u64, StoreError> {
        self.update(|s| {
            s.crashes_total += 1;
            Ok(s.crashes_total)
        })
        .await
    }

    pub async fn set_running_since(&self, ms: u64) -> Result<(), StoreError> {
        self.update(|s| {
            s.running_since_ms = ms;
            Ok(())
        })
        .await
    }

    /// Records the host's boot identity at an agent start. Another one than last time means
    /// the host restarted: the running time starts again at `now_ms` (`true` is returned).
    /// The first identity recorded (a new data directory, an agent that kept none) changes
    /// nothing else.
    pub async fn note_boot(&self, boot_id: &str, now_ms: u64) -> Result<bool, StoreError> {
        if boot_id.is_empty() {
            return Ok(false);
        }
        self.update(|s| {
            let restarted = s.boot_id.as_deref().is_some_and(|b| b != boot_id);
            s.boot_id = Some(boot_id.to_string());
            if restarted {
                s.running_since_ms = now_ms;
            }
            Ok(restarted)
        })
        .await
    }

    pub async fn report(&self, run_id: &str) -> Option<RejuvenationReport> {
        self.state
            .lock()
            .await
            .reports
            .iter()
            .rev()
            .find(|r| r.run_id == run_id)
            .cloned()
    }

    pub async fn last_report(&self) -> Option<RejuvenationReport> {
        self.state.lock().await.reports.last().cloned()
    }

    /// Records a finished run (and, if it completed, the new running-time origin) together.
    pub async fn finish_run(
        &self,
        report: RejuvenationReport,
        running_since_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        self.update(|s| {
            s.reports.retain(|r| r.run_id != report.run_id);
            s.reports.push(report);
            let excess = s.reports.len().saturating_sub(REPORTS_KEPT);
            s.reports.drain(..excess);
            if let Some(ms) = running_since_ms {
                s.running_since_ms = ms;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str) -> RejuvenationReport {
        RejuvenationReport {
            run_id: id.into(),
            started_at_ms: 1,
            finished_at_ms: 2,
            actions: vec![],
            boot_id: None,
        }
    }

    #[tokio::test]
    async fn a_new_boot_identity_starts_the_running_time_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 100).unwrap();
        assert!(!store.note_boot("boot-a", 200).await.unwrap(), "the first");
        assert_eq!(store.running_since_ms(), 100);
        assert!(!store.note_boot("boot-a", 300).await.unwrap(), "the same");
        assert!(!store.note_boot("", 350).await.unwrap(), "none read");
        drop(store);
        let again = Store::open(dir.path(), 400).unwrap();
        assert!(again.note_boot("boot-b", 500).await.unwrap(), "another");
        assert_eq!(again.running_since_ms(), 500);
        drop(again);
        assert_eq!(
            Store::open(dir.path(), 600).unwrap().running_since_ms(),
            500
        );
    }

    #[tokio::test]
    async fn round_trip_fence_and_bounded_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1234).unwrap();
        assert_eq!(store.running_since_ms(), 1234);
        store.fence(5).await.unwrap();
        let e = store.fence(4).await.unwrap_err().to_string();
        assert!(e.contains('4') && e.contains('5'), "{e}");
        for i in 0..20 {
            store
                .finish_run(report(&format!("r{i}")), None)
                .await
                .unwrap();
        }
        store.add_crash().await.unwrap();
        drop(store);
        let again = Store::open(dir.path(), 9999).unwrap();
        assert_eq!(again.epoch(), 5);
        assert_eq!(
            again.running_since_ms(),
            1234,
            "an existing file keeps its origin"
        );
        assert_eq!(again.crashes_total(), 1);
        assert!(
            again.report("r3").await.is_none(),
            "only the last {REPORTS_KEPT} are kept"
        );
        assert_eq!(again.report("r19").await.unwrap().run_id, "r19");
        assert_eq!(again.state.lock().await.reports.len(), REPORTS_KEPT);
    }

    #[tokio::test]
    async fn an_epoch_no_controller_could_hold_is_refused_and_not_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        store.fence(7).await.unwrap();
        for bad in [u64::MAX, MAX_EPOCH + 1, 7 + MAX_EPOCH_STEP + 1] {
            let e = store.fence(bad).await.unwrap_err();
            assert!(
                matches!(e, StoreError::ImplausibleEpoch { .. }),
                "{bad}: {e}"
            );
        }
        store.fence(7 + MAX_EPOCH_STEP).await.unwrap();
        drop(store);
        let again = Store::open(dir.path(), 1).unwrap();
        assert_eq!(
            again.epoch(),
            7 + MAX_EPOCH_STEP,
            "only the plausible one was kept"
        );
        again.fence(8 + MAX_EPOCH_STEP).await.unwrap();
    }

    #[test]
    fn tampered_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let s = PersistedState {
            epoch: 7,
            running_since_ms: 1,
            crashes_total: 0,
            reports: vec![],
            boot_id: None,
        };
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), Some(s));
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"epoch\": 7", "\"epoch\": 1");
        std::fs::write(&path, text).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        std::fs::write(&path, "{\"version\": 1, \"checks").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("corrupt"));
        std::fs::write(&path, "{\"version\": 9}").unwrap();
        assert!(matches!(
            load(&path),
            Err(StoreError::Version { found: 9, .. })
        ));
    }
}
