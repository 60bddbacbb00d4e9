//! Best-effort cgroups for instances.
//!
//! Where the host allows, each instance runs in its own cgroup, so that a process that left
//! the instance's process group (`setsid`) and was reparented is still found through
//! `cgroup.procs`. The process group and the parent links remain the primary way to find a
//! tree; the cgroup only adds members, so a host without (writable) cgroups loses nothing but
//! that extra net.
//!
//! Layout: `<hierarchy>/<agent's own cgroup>/rejuv/<server>-<agent pid>-<n>/<instance>`.
//! Nesting under the agent's own cgroup keeps any limits the operator set on the agent in
//! force for its instances; the per-agent directory keeps several agents on one host (the demo,
//! the tests) apart.
//!
//! A v2 hierarchy (`/sys/fs/cgroup/unified`, or `/sys/fs/cgroup` on a pure v2 host) is tried
//! first: with no controllers enabled it only tracks membership. The v1 memory hierarchy is the
//! fallback.
//!
//! # Guarantees
//! Nothing here fails an instance start: every error is logged and the instance runs without
//! a cgroup.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Shell prologue that moves itself into the cgroup named by `$0`, then becomes the service.
/// Joining before `exec` (rather than the agent moving the pid after spawn) leaves no window in
/// which the service could fork a child outside its cgroup.
pub const JOIN_SCRIPT: &str = r#"{ echo $$ >"$0"; } 2>/dev/null; exec "$@""#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    V2,
    V1Memory,
}

#[derive(Debug)]
pub struct Cgroups {
    kind: Kind,
    /// This agent's directory.
    base: PathBuf,
}

/// The agent's own path in the hierarchy described by `/proc/self/cgroup` lines.
fn own_path(self_cgroup: &str, kind: Kind) -> Option<String> {
    self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match kind {
            Kind::V2 => id == "0" && controllers.is_empty(),
            Kind::V1Memory => controllers.split(',').any(|c| c == "memory"),
        };
        hit.then(|| path.to_string())
    })
}

impl Cgroups {
    /// Finds a writable hierarchy and creates this agent's directory in it.
    pub fn detect(server_id: &str) -> Option<Self> {
        let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let candidates = [
            (Kind::V2, PathBuf::from("/sys/fs/cgroup/unified")),
            (Kind::V2, PathBuf::from("/sys/fs/cgroup")),
            (Kind::V1Memory, PathBuf::from("/sys/fs/cgroup/memory")),
        ];
        for (kind, mount) in candidates {
            let marker = match kind {
                Kind::V2 => "cgroup.controllers",
                Kind::V1Memory => "memory.usage_in_bytes",
            };
            if !mount.join(marker).exists() {
                continue;
            }
            let Some(own) = own_path(&self_cgroup, kind) else {
                continue;
            };
            let parent = mount.join(own.trim_start_matches('/')).join("rejuv");
            sweep_stale(&parent, server_id);
            let name = format!(
                "{server_id}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let base = parent.join(name);
            match std::fs::create_dir_all(&base) {
                Ok(()) => {
                    tracing::info!(cgroup = %base.display(), ?kind, "instances get their own cgroup");
                    return Some(Self { kind, base });
                }
                Err(e) => {
                    tracing::debug!(path = %base.display(), error = %e, "cgroup hierarchy not writable");
                }
            }
        }
        tracing::info!("no writable cgroup hierarchy: instances are tracked by process group and parentage only");
        None
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Creates the instance's cgroup; `None` (logged) if that fails.
    pub fn create(&self, instance: &str) -> Option<PathBuf> {
        let dir = self.base.join(instance);
        match std::fs::create_dir_all(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::warn!(instance, error = %e, "cannot create the instance's cgroup; running without");
                None
            }
        }
    }

    /// Removes this agent's directory (it must be empty by then).
    pub fn remove_base(&self) {
        if let Err(e) = std::fs::remove_dir(&self.base) {
            tracing::warn!(cgroup = %self.base.display(), error = %e, "cannot remove the agent's cgroup");
        }
        // Shared by every agent on the host: only goes when the last one does.
        if let Some(parent) = self.base.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Pids listed in a cgroup's `cgroup.procs` (empty if unreadable).
pub fn pids(dir: &Path) -> HashSet<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Removes an instance's cgroup once its processes are gone. The kernel may still hold it for
/// a moment after the last process is reaped, hence the few retries.
pub async fn remove(dir: &Path) {
    for _ in 0..20 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    tracing::warn!(cgroup = %dir.display(), "instance cgroup still busy; left in place");
}

/// Removes empty directories left by earlier agents of this server that died without cleaning
/// up. `remove_dir` only succeeds on cgroups without processes, so nothing live is touched.
fn sweep_stale(parent: &Path, server_id: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let prefix = format!("{server_id}-");
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(entry.path()) {
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_path_per_hierarchy() {
        let text =
            "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/user.slice\n";
        assert_eq!(own_path(text, Kind::V2).as_deref(), Some("/user.slice"));
        assert_eq!(
            own_path(text, Kind::V1Memory).as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(own_path("4:cpu:/\n", Kind::V1Memory), None);
    }
}
