//! Where a container's cgroup is, for readings.
//!
//! The Engine puts each container in its own cgroup; its `cgroup.procs` lists every process
//! of the container, so the agent sums RSS, fds and threads over them with its own `/proc`
//! reader, as it does for a process instance. Only the directory is found here, from the
//! container's init process's `/proc/<pid>/cgroup`:
//! - cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists): the `0::` line, under
//!   `/sys/fs/cgroup`;
//! - v1: the `memory` controller's line, under `/sys/fs/cgroup/memory` (its
//!   `memory.usage_in_bytes` is there too); on a hybrid host whose v1 memory line is missing,
//!   the `0::` line under `/sys/fs/cgroup/unified`.
//!
//! # Assumptions
//! The agent runs in the host's cgroup namespace (as with the Engine itself), so the paths in
//! `/proc/<pid>/cgroup` are from the hierarchy's root.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup directory of the process `pid` (a container's init process), if it exists.
pub fn cgroup_dir(pid: u32) -> Option<PathBuf> {
    let lines = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let root = Path::new(ROOT);
    let v2_only = root.join("cgroup.controllers").exists();
    candidates(&lines, root, v2_only)
        .into_iter()
        .find(|dir| dir.join("cgroup.procs").exists())
}

/// The directories to try, best first, for the contents of `/proc/<pid>/cgroup`.
fn candidates(proc_cgroup: &str, root: &Path, v2_only: bool) -> Vec<PathBuf> {
    let v2 = line_path(proc_cgroup, |id, ctl| id == "0" && ctl.is_empty());
    if v2_only {
        return v2.map(|p| under(root, p)).into_iter().collect();
    }
    let v1 = line_path(proc_cgroup, |_, ctl| ctl.split(',').any(|c| c == "memory"));
    let mut dirs: Vec<PathBuf> = v1
        .map(|p| under(&root.join("memory"), p))
        .into_iter()
        .collect();
    dirs.extend(v2.map(|p| under(&root.join("unified"), p)));
    dirs
}

fn line_path(proc_cgroup: &str, pick: impl Fn(&str, &str) -> bool) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        pick(id, controllers).then_some(path)
    })
}

fn under(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str =
        "9:name=systemd:/docker/abc\n4:memory:/docker/abc\n1:cpu:/docker/abc\n0::/docker/abc\n";

    #[test]
    fn v1_prefers_the_memory_controller() {
        let dirs = candidates(HYBRID, Path::new("/sys/fs/cgroup"), false);
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/docker/abc"),
                PathBuf::from("/sys/fs/cgroup/unified/docker/abc"),
            ]
        );
    }

    #[test]
    fn v2_uses_the_unified_line() {
        let dirs = candidates(
            "0::/system.slice/docker-abc.scope\n",
            Path::new("/sys/fs/cgroup"),
            true,
        );
        assert_eq!(
            dirs,
            vec![PathBuf::from(
                "/sys/fs/cgroup/system.slice/docker-abc.scope"
            )]
        );
    }

    #[test]
    fn controllers_are_matched_whole() {
        let dirs = candidates(
            "5:memory_x:/a\n3:cpu,memory:/docker/b\n",
            Path::new("/r"),
            false,
        );
        assert_eq!(dirs, vec![PathBuf::from("/r/memory/docker/b")]);
    }
}
