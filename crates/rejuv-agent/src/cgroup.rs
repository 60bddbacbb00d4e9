//! Best-effort cgroups for instances.
//!
//! Where the host allows, each instance runs in its own cgroup, so that a process that left
//! the instance's process group (`setsid`) and was reparented is still found through
//! `cgroup.procs`. The process group and the parent links remain the primary way to find a
//! tree; the cgroup only adds members, so a host without (writable) cgroups loses nothing but
//! that extra net.
//!
//! Layout: `<hierarchy>/<agent's own cgroup>/rejuv/<scope>-<agent pid>-<n>/<instance>`, where
//! the scope is the server id and a hash of the agent's data directory. Nesting under the
//! agent's own cgroup keeps any limits the operator set on the agent in force for its
//! instances; the per-agent directory keeps several agents on one host (the demo, the tests)
//! apart.
//!
//! An agent that died (SIGKILL, OOM) leaves its instances running: they have their own
//! process groups. The next agent of the same server and data directory ends them at start
//! ([`Cgroups::detect`]): it cannot supervise what it did not start, a rejuvenation would
//! otherwise report "nothing was running" while the old processes keep their memory and
//! ports, and it is what systemd's `KillMode=mixed` does when it restarts the agent unit.
//! Instances an agent handed over on purpose (`keep_instances_on_exit`, see
//! [`crate::handover`]) are the exception: their cgroups are left to the next agent, which
//! adopts them.
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
    /// Finds a writable hierarchy and creates this agent's directory in it, after ending what
    /// earlier, dead agents of the same `scope` (see [`scope`]) left running there, except in
    /// the cgroups named in `keep` (instances handed over to this agent).
    pub fn detect(scope: &str, keep: &HashSet<PathBuf>) -> Option<Self> {
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
            sweep_stale(&parent, scope, keep);
            let name = format!(
                "{scope}-{}-{}",
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

    /// This agent's directory, parent of its instances' cgroups.
    pub fn base(&self) -> &Path {
        &self.base
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

/// The cgroup scope of an agent: its server id and a hash of its data directory, so that a
/// restarted agent finds exactly its predecessors' cgroups, and agents of other clusters on
/// the host (same server ids, other data directories) are never touched.
pub fn scope(server_id: &str, data_dir: &Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = rejuv_core::digest::fnv1a64(dir.as_os_str().as_encoded_bytes());
    format!("{server_id}-{:08x}", hash as u32)
}

/// Whether a process with this pid exists (a zombie counts as gone).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let after = &s[s.rfind(')').map_or(0, |i| i + 1)..];
            !matches!(after.split_whitespace().next(), Some("Z" | "X") | None)
        }
        Err(_) => false,
    }
}

/// Ends what earlier agents of this scope left behind: for every directory whose agent is
/// dead, SIGKILLs the processes still in its instance cgroups, waits (bounded) for them to
/// go, and removes the directories. A directory whose agent still runs is left alone.
fn sweep_stale(parent: &Path, scope: &str, keep: &HashSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let prefix = format!("{scope}-");
    let me = std::process::id() as i32;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if owner == me || process_alive(owner) {
            continue;
        }
        let mut ended = 0usize;
        if let Ok(children) = std::fs::read_dir(entry.path()) {
            for child in children.flatten() {
                if !child.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let dir = child.path();
                if keep.contains(&dir) {
                    continue;
                }
                let left = pids(&dir);
                for pid in &left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                ended += left.len();
                // SIGKILL cannot be ignored; the kernel takes a moment to reap.
                let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while !pids(&dir).is_empty() && std::time::Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                if let Err(e) = std::fs::remove_dir(&dir) {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a dead agent's instance cgroup");
                }
            }
        }
        if ended > 0 {
            tracing::warn!(
                processes = ended,
                agent_pid = owner,
                "ended processes an earlier agent of this server left running when it died"
            );
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_names_the_server_and_its_data_directory() {
        let a = scope("s1", Path::new("/var/lib/rejuv/a"));
        assert!(a.starts_with("s1-") && a.len() == "s1-".len() + 8, "{a}");
        assert_eq!(a, scope("s1", Path::new("/var/lib/rejuv/a")));
        assert_ne!(a, scope("s1", Path::new("/var/lib/rejuv/b")));
        assert_ne!(a, scope("s2", Path::new("/var/lib/rejuv/a")));
    }

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
