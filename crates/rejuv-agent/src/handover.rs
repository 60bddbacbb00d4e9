//! The instance table an agent hands over when it stops leaving its instances running
//! (`[agent] keep_instances_on_exit`, `rejuv agent --keep-instances`): `data_dir/instances.json`.
//!
//! The next agent of the same server and data directory reads it once at start ([`take`]),
//! adopts what it can still vouch for and ends the rest (see
//! [`crate::supervisor::Supervisor::adopt`]). An agent that died without handing over (SIGKILL,
//! OOM) leaves no file: its processes and containers are ended by the next agent, as before.
//!
//! # Guarantees
//! - Written like the agent's state file: temp file, fsync, rename, fsync of the directory;
//!   a format version and an FNV-1a 64 checksum.
//! - Read once: [`take`] removes the file, so a table is never adopted twice (a second agent
//!   start, after the first adopted and crashed, ends what is left instead).
//!
//! # Assumptions
//! A process is the one recorded only if its pid *and* its start time (clock ticks after boot,
//! `/proc/PID/stat`) match: a pid reused by an unrelated process is never adopted or signalled.

use rejuv_core::config::Backend;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name inside the data dir.
pub const HANDOVER_FILE: &str = "instances.json";
/// Format version written by this agent.
pub const HANDOVER_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot read the handed-over instance table {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the handed-over instance table {path} is unusable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the handed-over instance table {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one agent leaves to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// The agent that wrote it.
    pub agent_pid: u32,
    pub written_at_ms: u64,
    pub instances: Vec<InstanceRecord>,
}

/// One instance as it was when its agent stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    pub id: String,
    pub service: String,
    pub backend: Backend,
    pub port: u16,
    pub started_at_ms: Option<u64>,
    pub crashes: u32,
    pub last_exit: Option<String>,
    /// Its current run; `None` between runs (waiting to restart after a crash).
    pub run: Option<RunRecord>,
}

/// How to find an instance's current run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RunRecord {
    /// A process tree: its root (also its process group) and the root's start time.
    Process {
        pid: i32,
        starttime: u64,
        /// The instance's own cgroup, where it had one.
        cgroup: Option<PathBuf>,
        /// Members seen last (pid, start time): a `setsid` child outside the group.
        known: Vec<(i32, u64)>,
    },
    /// A container, by the Engine's id.
    Container { id: String },
    /// A systemd unit, by name.
    Unit { name: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    version: u32,
    /// `fnv1a64:<16 hex digits>` over the compact JSON of `table`.
    checksum: String,
    table: Handover,
}

fn checksum_of(table: &Handover) -> String {
    let bytes = serde_json::to_vec(table).expect("the table serializes");
    format!("fnv1a64:{:016x}", rejuv_core::digest::fnv1a64(&bytes))
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(HANDOVER_FILE)
}

/// Reads and verifies the table in `data_dir` without removing it; `Ok(None)` if there is none.
pub fn load(data_dir: &Path) -> Result<Option<Handover>, HandoverError> {
    let path = path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(HandoverError::Read { path, source }),
    };
    let corrupt = |reason: String| HandoverError::Corrupt {
        path: path.clone(),
        reason,
    };
    let env: Envelope =
        serde_json::from_slice(&text).map_err(|e| corrupt(format!("not a table: {e}")))?;
    if env.version != HANDOVER_VERSION {
        return Err(corrupt(format!(
            "format version {}; this agent reads version {HANDOVER_VERSION}",
            env.version
        )));
    }
    if checksum_of(&env.table) != env.checksum {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(Some(env.table))
}

/// Reads the table and removes the file: it is adopted once.
pub fn take(data_dir: &Path) -> Result<Option<Handover>, HandoverError> {
    let table = load(data_dir);
    let path = path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(HandoverError::Write { path, source }),
    }
    table
}

/// Writes the table durably.
pub fn save(data_dir: &Path, table: &Handover) -> Result<(), HandoverError> {
    let path = path(data_dir);
    let werr = |source| HandoverError::Write {
        path: path.clone(),
        source,
    };
    let env = Envelope {
        version: HANDOVER_VERSION,
        checksum: checksum_of(table),
        table: table.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&env).expect("the table serializes");
    let tmp = path.with_extension("json.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(werr)?;
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
    }
    std::fs::rename(&tmp, &path).map_err(werr)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(werr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Handover {
        Handover {
            agent_pid: 7,
            written_at_ms: 1,
            instances: vec![InstanceRecord {
                id: "web-1".into(),
                service: "web".into(),
                backend: Backend::Process,
                port: 21000,
                started_at_ms: Some(5),
                crashes: 1,
                last_exit: None,
                run: Some(RunRecord::Process {
                    pid: 42,
                    starttime: 99,
                    cgroup: None,
                    known: vec![(43, 100)],
                }),
            }],
        }
    }

    #[test]
    fn a_table_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &table()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(table()));
        assert_eq!(take(dir.path()).unwrap(), Some(table()));
        assert_eq!(take(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_changed_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &table()).unwrap();
        let p = path(dir.path());
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("21000", "21001");
        std::fs::write(&p, text).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }
}
