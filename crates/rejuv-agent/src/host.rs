//! The host the agent runs on, as far as it differs between a machine and a container: its
//! boot identity and its memory.
//!
//! # Boot identity
//! [`boot_id`] changes when the host restarts, and only then. On a machine that is the
//! kernel's boot id. Inside a container the kernel (and so its boot id) is the machine's, and a
//! restarted container would look like the same host: the start time of PID 1 in the agent's
//! PID namespace is added (clock ticks after the machine's boot). On a machine PID 1 is init,
//! started once per boot, so the pair means the same as the boot id alone; in a container PID 1
//! is the container's first process, started anew with each container start.
//!
//! # Memory
//! [`OwnMemory`] reads the memory cgroup the agent itself runs in, where that cgroup has a limit
//! below the machine's memory (a container started with `--memory`, a unit with `MemoryMax=`):
//! its limit is then the host's total and its usage (less inactive file pages, as `docker
//! stats` counts) what is used. Without such a limit the readings stay `/proc/meminfo`'s. Load
//! averages, open files and swap are the machine's either way: the kernel keeps them per
//! machine, not per cgroup.

use crate::procfs::MemInfo;
use std::path::{Path, PathBuf};

/// This host's boot identity (see the module's documentation); empty if the kernel's boot id
/// cannot be read.
pub fn boot_id() -> String {
    boot_id_from(Path::new("/proc"))
}

fn boot_id_from(proc: &Path) -> String {
    let kernel = std::fs::read_to_string(proc.join("sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if kernel.is_empty() {
        return kernel;
    }
    let init_start = std::fs::read_to_string(proc.join("1/stat"))
        .ok()
        .and_then(|line| crate::procfs::parse_stat(&line))
        .map(|s| s.starttime);
    match init_start {
        Some(t) => format!("{kernel}+{t}"),
        None => kernel,
    }
}

/// Whether writing `path` failed because `/proc/sys` is mounted read-only: a container without
/// privileges, where host-wide kernel tunables are not the agent's to touch.
pub fn is_read_only(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EROFS)
}

/// Which kind of hierarchy the agent's memory cgroup is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The memory cgroup the agent runs in.
#[derive(Debug, Clone)]
pub struct OwnMemory {
    dir: PathBuf,
    version: Version,
}

/// One reading of [`OwnMemory`], in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    pub limit: u64,
    pub usage: u64,
    pub inactive_file: u64,
    pub cache: u64,
}

impl CgroupMemory {
    /// The machine's reading with this cgroup's memory in its place (swap stays the
    /// machine's).
    pub fn apply(&self, machine: &MemInfo) -> MemInfo {
        let used = self
            .usage
            .saturating_sub(self.inactive_file)
            .min(self.limit);
        MemInfo {
            total: self.limit,
            free: self.limit.saturating_sub(self.usage),
            available: self.limit - used,
            buffers: 0,
            cached: self.cache,
            swap_total: machine.swap_total,
            swap_free: machine.swap_free,
        }
    }
}

impl OwnMemory {
    /// The agent's own memory cgroup, from `/proc/self/cgroup` and `/proc/self/mountinfo`
    /// (a v1 `memory` hierarchy first, else the v2 one); `None` where there is none to read.
    pub fn detect() -> Option<Self> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let found = Self::locate(&cgroup, &mounts)?;
        found
            .dir
            .join(match found.version {
                Version::V1 => "memory.usage_in_bytes",
                Version::V2 => "memory.current",
            })
            .exists()
            .then_some(found)
    }

    /// Where the cgroup named in `self_cgroup` is mounted, by `mountinfo`: the mount point
    /// joined with the cgroup's path below the mount's root (inside a container the root of
    /// the mount is the container's own cgroup).
    fn locate(self_cgroup: &str, mountinfo: &str) -> Option<Self> {
        for version in [Version::V1, Version::V2] {
            let own = self_cgroup.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                let hit = match version {
                    Version::V1 => controllers.split(',').any(|c| c == "memory"),
                    Version::V2 => id == "0" && controllers.is_empty(),
                };
                hit.then(|| path.to_string())
            });
            let Some(own) = own else { continue };
            for line in mountinfo.lines() {
                let Some((left, right)) = line.split_once(" - ") else {
                    continue;
                };
                let fields: Vec<&str> = left.split_whitespace().collect();
                let theirs: Vec<&str> = right.split_whitespace().collect();
                let (Some(root), Some(point), Some(fstype)) =
                    (fields.get(3), fields.get(4), theirs.first())
                else {
                    continue;
                };
                let options = theirs.get(2).copied().unwrap_or_default();
                let matches = match version {
                    Version::V1 => *fstype == "cgroup" && options.split(',').any(|o| o == "memory"),
                    Version::V2 => *fstype == "cgroup2",
                };
                if !matches {
                    continue;
                }
                let below = if *root == "/" {
                    Some(own.as_str())
                } else {
                    own.strip_prefix(root)
                        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                };
                if let Some(below) = below {
                    let dir = Path::new(point).join(below.trim_start_matches('/'));
                    return Some(Self { dir, version });
                }
            }
        }
        None
    }

    /// The cgroup's memory now, if it has a limit below `machine_total` (else `None`: the
    /// machine's readings are the host's).
    pub fn read(&self, machine_total: u64) -> Option<CgroupMemory> {
        let number = |name: &str| -> Option<u64> {
            std::fs::read_to_string(self.dir.join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let (limit, usage) = match self.version {
            // v1 writes a huge number (a page-rounded i64::MAX) for no limit.
            Version::V1 => (
                number("memory.limit_in_bytes")?,
                number("memory.usage_in_bytes")?,
            ),
            // v2 writes `max`, which does not parse: no limit.
            Version::V2 => (number("memory.max")?, number("memory.current")?),
        };
        if limit == 0 || limit >= machine_total {
            return None;
        }
        let stat = std::fs::read_to_string(self.dir.join("memory.stat")).unwrap_or_default();
        let (inactive_key, cache_key) = match self.version {
            Version::V1 => ("total_inactive_file", "total_cache"),
            Version::V2 => ("inactive_file", "file"),
        };
        let field = |key: &str| {
            stat.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse::<u64>().ok())?
                })
                .unwrap_or(0)
        };
        Some(CgroupMemory {
            limit,
            usage,
            inactive_file: field(inactive_key),
            cache: field(cache_key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINER_CGROUP: &str = "4:memory:/docker/6019e4a8\n0::/docker/6019e4a8\n";
    const CONTAINER_MOUNTS: &str = "\
112 111 0:56 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
113 112 0:29 /docker/6019e4a8 /sys/fs/cgroup/cpu ro,nosuid - cgroup cgroup rw,cpu
116 112 0:32 /docker/6019e4a8 /sys/fs/cgroup/memory ro,nosuid master:7 - cgroup cgroup rw,memory
";

    #[test]
    fn a_container_reads_the_root_of_its_mount() {
        let m = OwnMemory::locate(CONTAINER_CGROUP, CONTAINER_MOUNTS).unwrap();
        assert_eq!(m.dir, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m.version, Version::V1);
    }

    #[test]
    fn a_machine_reads_its_path_below_the_hierarchy() {
        let cgroup = "4:memory:/system.slice/rejuv-agent.service\n";
        let mounts =
            "30 25 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory\n";
        let m = OwnMemory::locate(cgroup, mounts).unwrap();
        assert_eq!(
            m.dir,
            PathBuf::from("/sys/fs/cgroup/memory/system.slice/rejuv-agent.service")
        );
        // A pure v2 host.
        let m = OwnMemory::locate(
            "0::/user.slice\n",
            "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        )
        .unwrap();
        assert_eq!(m.dir, PathBuf::from("/sys/fs/cgroup/user.slice"));
        assert_eq!(m.version, Version::V2);
        // No memory hierarchy mounted at all.
        assert!(OwnMemory::locate(cgroup, "").is_none());
    }

    fn fake(files: &[(&str, &str)], version: Version) -> (tempfile::TempDir, OwnMemory) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let m = OwnMemory {
            dir: dir.path().to_path_buf(),
            version,
        };
        (dir, m)
    }

    #[test]
    fn a_limited_cgroup_is_the_hosts_memory() {
        let (_d, m) = fake(
            &[
                ("memory.limit_in_bytes", "536870912\n"),
                ("memory.usage_in_bytes", "104857600\n"),
                (
                    "memory.stat",
                    "cache 1\ntotal_cache 20971520\ntotal_inactive_file 4194304\n",
                ),
            ],
            Version::V1,
        );
        let r = m.read(24 << 30).unwrap();
        assert_eq!(r.limit, 512 << 20);
        let machine = MemInfo {
            total: 24 << 30,
            free: 1,
            available: 2,
            buffers: 3,
            cached: 4,
            swap_total: 5,
            swap_free: 6,
        };
        let mem = r.apply(&machine);
        assert_eq!(mem.total, 512 << 20);
        assert_eq!(mem.used(), (100 << 20) - (4 << 20));
        assert_eq!(mem.cached, 20 << 20);
        assert_eq!((mem.swap_total, mem.swap_free), (5, 6));
        // No limit (v1's huge number): the machine's readings stand.
        let (_d, m) = fake(
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "1\n"),
            ],
            Version::V1,
        );
        assert!(m.read(24 << 30).is_none());
        let (_d, m) = fake(
            &[("memory.max", "max\n"), ("memory.current", "1\n")],
            Version::V2,
        );
        assert!(m.read(24 << 30).is_none());
    }

    #[test]
    fn only_a_read_only_proc_sys_is_a_container() {
        assert!(is_read_only(&std::io::Error::from_raw_os_error(
            libc::EROFS
        )));
        assert!(!is_read_only(&std::io::Error::from_raw_os_error(
            libc::EACCES
        )));
    }

    #[test]
    fn boot_id_adds_the_start_of_pid_1() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("sys/kernel/random")).unwrap();
        std::fs::create_dir_all(p.join("1")).unwrap();
        std::fs::write(p.join("sys/kernel/random/boot_id"), "abc-123\n").unwrap();
        assert_eq!(boot_id_from(p), "abc-123");
        let stat = "1 (docker-init) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 1 1 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        std::fs::write(p.join("1/stat"), stat).unwrap();
        assert_eq!(boot_id_from(p), "abc-123+98765");
        // This machine's: stable between two reads.
        assert_eq!(boot_id(), boot_id());
        assert!(!boot_id().is_empty());
    }
}
