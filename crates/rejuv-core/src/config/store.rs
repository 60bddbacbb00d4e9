//! `[store]`: where the cluster state lives — a SQLite file, or etcd for several
//! controllers — and the checks of the etcd settings.

use super::field::Errors;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    Sqlite,
    Etcd,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_kind")]
    pub kind: StoreKind,
    /// SQLite database file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// etcd client URLs (`kind = "etcd"`).
    #[serde(default = "default_etcd_endpoints")]
    pub endpoints: Vec<String>,
    /// Key prefix in etcd (`kind = "etcd"`); default `/rejuv/<cluster name>`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// TTL of the leader's etcd lease (`kind = "etcd"`): a dead leader is replaced within it.
    #[serde(with = "humantime_serde", default = "default_lease_ttl")]
    pub lease_ttl: Duration,
    /// How often the leader compacts etcd's key history (`kind = "etcd"`), each time up to the
    /// revision it saw one period before, so that history of at least one period is kept;
    /// `0s` leaves compaction to etcd's own `--auto-compaction-retention`. The state is
    /// rewritten on every step, so an etcd that nobody compacts fills its quota.
    #[serde(with = "humantime_serde", default = "default_compact_every")]
    pub compact_every: Duration,
    /// Shards of the fleet (`kind = "etcd"`): each is owned by one controller through a lease
    /// of its own; `1` (the default) is one leader for the whole fleet.
    #[serde(default = "default_shards")]
    pub shards: u32,
}

fn default_store_kind() -> StoreKind {
    StoreKind::Sqlite
}
fn default_store_path() -> PathBuf {
    PathBuf::from("rejuv.db")
}
fn default_etcd_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:2379".into()]
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_shards() -> u32 {
    1
}
fn default_compact_every() -> Duration {
    Duration::from_secs(300)
}

/// Most shards a fleet may be split into.
pub const MAX_SHARDS: u32 = 256;

impl StoreConfig {
    /// The etcd key prefix for `cluster`: `prefix`, or `/rejuv/<cluster>`.
    pub fn etcd_prefix(&self, cluster: &str) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("/rejuv/{cluster}"))
    }

    /// The etcd settings, when the store is etcd.
    pub(crate) fn validate(&self, errs: &mut Errors) {
        if self.shards == 0 || self.shards > MAX_SHARDS {
            errs.add(
                "store.shards",
                format!("must be between 1 and {MAX_SHARDS}"),
            );
        }
        if self.kind != StoreKind::Etcd {
            if self.shards > 1 {
                errs.add(
                    "store.shards",
                    "more than one shard needs kind = \"etcd\" (shards are owned through etcd leases)",
                );
            }
            return;
        }
        if self.endpoints.is_empty() {
            errs.add("store.endpoints", "at least one etcd endpoint is required");
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !e.starts_with("http://") {
                errs.add(
                    format!("store.endpoints[{i}]"),
                    "must be an http:// URL (TLS to etcd is not supported yet)",
                );
            }
        }
        if let Some(p) = &self.prefix {
            if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
                errs.add("store.prefix", "must start with '/' and not end with '/'");
            }
        }
        // etcd refuses (raises) TTLs under its minimum of about 2 s with default timing.
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl > Duration::from_secs(3600) {
            errs.add("store.lease_ttl", "must be between 2s and 1h");
        }
        if self.compact_every > Duration::from_secs(24 * 3600) {
            errs.add(
                "store.compact_every",
                "must be at most 24h (0s leaves compaction to etcd)",
            );
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: default_store_kind(),
            path: default_store_path(),
            endpoints: default_etcd_endpoints(),
            prefix: None,
            lease_ttl: default_lease_ttl(),
            compact_every: default_compact_every(),
            shards: default_shards(),
        }
    }
}
