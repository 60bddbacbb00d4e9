//! Reading `/proc`: host-wide figures and the process table, and finding an instance's whole
//! process tree in that table.
//!
//! The parsers are plain functions on text so they can be tested on canned files; [`ProcFs`]
//! reads them from a root directory (`/proc` on a host, a temporary directory in tests).
//!
//! # Assumptions
//! Linux `/proc` formats: `loadavg`, `meminfo` (kB units), `sys/fs/file-nr`, `PID/stat`
//! (`comm` in parentheses, may itself contain spaces and parentheses), `PID/statm` (pages).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A `/proc` file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {reason}")]
    Parse { what: &'static str, reason: String },
}

fn parse_err(what: &'static str, reason: impl Into<String>) -> ProcError {
    ProcError::Parse {
        what,
        reason: reason.into(),
    }
}

/// `/proc/loadavg`: load averages and the number of scheduling entities (threads).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub threads: u64,
}

pub fn parse_loadavg(text: &str) -> Result<LoadAvg, ProcError> {
    const WHAT: &str = "loadavg";
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() < 4 {
        return Err(parse_err(
            WHAT,
            format!("expected at least 4 fields, got {}", f.len()),
        ));
    }
    let num = |i: usize| -> Result<f64, ProcError> {
        f[i].parse::<f64>()
            .map_err(|e| parse_err(WHAT, format!("field {}: {e}", i + 1)))
    };
    let threads = f[3]
        .split_once('/')
        .and_then(|(_, total)| total.parse::<u64>().ok())
        .ok_or_else(|| parse_err(WHAT, format!("field 4 '{}' is not running/total", f[3])))?;
    Ok(LoadAvg {
        load1: num(0)?,
        load5: num(1)?,
        load15: num(2)?,
        threads,
    })
}

/// The `/proc/meminfo` figures a sample needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub buffers: u64,
    pub cached: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl MemInfo {
    /// Memory in use: what is not available (so reclaimable cache does not count as used).
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }

    pub fn swap_used(&self) -> u64 {
        self.swap_total.saturating_sub(self.swap_free)
    }
}

pub fn parse_meminfo(text: &str) -> Result<MemInfo, ProcError> {
    const WHAT: &str = "meminfo";
    let mut kb: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        // Every size line is in kB; the few unit-less lines (HugePages_*) are counts we skip.
        if parts.next() == Some("kB") {
            kb.insert(key.trim(), value.saturating_mul(1024));
        }
    }
    let get = |k: &str| kb.get(k).copied();
    let total = get("MemTotal").ok_or_else(|| parse_err(WHAT, "no MemTotal line"))?;
    let free = get("MemFree").ok_or_else(|| parse_err(WHAT, "no MemFree line"))?;
    let buffers = get("Buffers").unwrap_or(0);
    let cached = get("Cached").unwrap_or(0);
    // Kernels before 3.14 have no MemAvailable: estimate it the old way.
    let available = get("MemAvailable")
        .unwrap_or_else(|| free + buffers + cached)
        .min(total);
    Ok(MemInfo {
        total,
        free,
        available,
        buffers,
        cached,
        swap_total: get("SwapTotal").unwrap_or(0),
        swap_free: get("SwapFree").unwrap_or(0),
    })
}

/// `/proc/sys/fs/file-nr`: `allocated unused max`. Returns (open, max).
pub fn parse_file_nr(text: &str) -> Result<(u64, u64), ProcError> {
    const WHAT: &str = "file-nr";
    let f: Vec<u64> = text
        .split_whitespace()
        .map(str::parse::<u64>)
        .collect::<Result<_, _>>()
        .map_err(|e| parse_err(WHAT, e.to_string()))?;
    match f.as_slice() {
        [allocated, unused, max] => Ok((allocated.saturating_sub(*unused), *max)),
        _ => Err(parse_err(
            WHAT,
            format!("expected 3 numbers, got {}", f.len()),
        )),
    }
}

/// The fields of `/proc/PID/stat` the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// One-letter state: `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Clock ticks of children this process has waited for.
    pub cutime: u64,
    pub cstime: u64,
    pub num_threads: u64,
    /// Clock ticks after boot; with the pid it names one process even across pid reuse.
    pub starttime: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// A zombie or dead entry: it holds no resources and cannot be signalled away.
    pub fn is_gone(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    pub fn key(&self) -> ProcKey {
        (self.pid, self.starttime)
    }
}

/// A process identity that survives pid reuse: (pid, start time in ticks).
pub type ProcKey = (i32, u64);

pub fn parse_stat(text: &str) -> Result<ProcStat, ProcError> {
    const WHAT: &str = "PID/stat";
    // `comm` is in parentheses and may contain anything, including ") ": split at the last ')'.
    let open = text.find('(').ok_or_else(|| parse_err(WHAT, "no '('"))?;
    let close = text.rfind(')').ok_or_else(|| parse_err(WHAT, "no ')'"))?;
    let pid = text[..open]
        .trim()
        .parse::<i32>()
        .map_err(|e| parse_err(WHAT, format!("pid: {e}")))?;
    // Fields after comm, numbered from 3 (state) as in proc(5).
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<&str, ProcError> {
        rest.get(n - 3)
            .copied()
            .ok_or_else(|| parse_err(WHAT, format!("missing field {n}")))
    };
    let num = |n: usize| -> Result<u64, ProcError> {
        field(n)?
            .parse::<u64>()
            .map_err(|e| parse_err(WHAT, format!("field {n}: {e}")))
    };
    let int = |n: usize| -> Result<i32, ProcError> {
        field(n)?
            .parse::<i32>()
            .map_err(|e| parse_err(WHAT, format!("field {n}: {e}")))
    };
    // cutime/cstime are signed in the kernel's format; negative values never occur in practice.
    let signed = |n: usize| -> Result<u64, ProcError> {
        field(n)?
            .parse::<i64>()
            .map(|v| v.max(0) as u64)
            .map_err(|e| parse_err(WHAT, format!("field {n}: {e}")))
    };
    Ok(ProcStat {
        pid,
        state: field(3)?.chars().next().unwrap_or('?'),
        ppid: int(4)?,
        pgrp: int(5)?,
        session: int(6)?,
        utime: num(14)?,
        stime: num(15)?,
        cutime: signed(16)?,
        cstime: signed(17)?,
        num_threads: num(20)?,
        starttime: num(22)?,
        rss_pages: signed(24)?,
    })
}

/// `/proc/PID/statm`: the resident set in pages (second field).
pub fn parse_statm_resident(text: &str) -> Result<u64, ProcError> {
    text.split_whitespace()
        .nth(1)
        .ok_or_else(|| parse_err("PID/statm", "missing field 2"))?
        .parse::<u64>()
        .map_err(|e| parse_err("PID/statm", e.to_string()))
}

/// Host-wide readings of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReading {
    pub load: LoadAvg,
    pub mem: MemInfo,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// What the agent knows about one instance when it looks for its process tree.
#[derive(Debug, Clone, Default)]
pub struct TreeSeed {
    /// The instance's root process (also its process-group id), while it runs.
    pub root: Option<i32>,
    /// Pids listed in the instance's cgroup, if it has one.
    pub cgroup_pids: HashSet<i32>,
    /// Members found earlier: a member whose parent died and who got reparented stays one.
    pub known: HashSet<ProcKey>,
}

/// The live processes that make up an instance: every process in its process group, every
/// descendant of its root, every process in its cgroup, every process found earlier (same pid
/// and start time), and their descendants. A child that called `setsid` leaves the group but
/// stays a descendant (or, once reparented, stays known or in the cgroup).
///
/// Zombies are left out (they hold nothing and die with their reaper); so are pid 1 and
/// `exclude` (the agent itself), which an instance can never own.
pub fn tree_members<'a>(table: &'a [ProcStat], seed: &TreeSeed, exclude: i32) -> Vec<&'a ProcStat> {
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, p) in table.iter().enumerate() {
        children.entry(p.ppid).or_default().push(i);
    }
    // Never enter init or the agent: through them every other process would join.
    let allowed = |p: &ProcStat| p.pid > 1 && p.pid != exclude;
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    let mut queue: Vec<usize> = Vec::new();
    for (i, p) in table.iter().enumerate() {
        let seeded = seed.root.is_some_and(|r| p.pid == r || p.pgrp == r)
            || seed.cgroup_pids.contains(&p.pid)
            || seed.known.contains(&p.key());
        if seeded && allowed(p) && chosen.insert(i) {
            queue.push(i);
        }
    }
    while let Some(i) = queue.pop() {
        for &c in children
            .get(&table[i].pid)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if allowed(&table[c]) && chosen.insert(c) {
                queue.push(c);
            }
        }
    }
    chosen
        .into_iter()
        .map(|i| &table[i])
        .filter(|p| !p.is_gone())
        .collect()
}

/// A `/proc` tree to read from.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn read(&self, rel: impl AsRef<Path>) -> Result<String, ProcError> {
        let path = self.root.join(rel);
        std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
    }

    pub fn host(&self) -> Result<HostReading, ProcError> {
        let load = parse_loadavg(&self.read("loadavg")?)?;
        let mem = parse_meminfo(&self.read("meminfo")?)?;
        let (open_fds, max_fds) = parse_file_nr(&self.read("sys/fs/file-nr")?)?;
        Ok(HostReading {
            load,
            mem,
            open_fds,
            max_fds,
        })
    }

    /// Every process's `stat`. Processes that end while the table is read are skipped.
    pub fn processes(&self) -> Result<Vec<ProcStat>, ProcError> {
        let dir = std::fs::read_dir(&self.root).map_err(|source| ProcError::Read {
            path: self.root.clone(),
            source,
        })?;
        let mut table = Vec::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) {
                if let Ok(stat) = parse_stat(&text) {
                    table.push(stat);
                }
            }
        }
        table.sort_by_key(|p| p.pid);
        Ok(table)
    }

    /// Resident pages of one process from `statm`, or `None` if it is gone.
    pub fn resident_pages(&self, pid: i32) -> Option<u64> {
        self.read(format!("{pid}/statm"))
            .ok()
            .and_then(|t| parse_statm_resident(&t).ok())
    }

    /// Open file descriptors of one process, or `None` if it is gone.
    pub fn fd_count(&self, pid: i32) -> Option<u64> {
        std::fs::read_dir(self.root.join(format!("{pid}/fd")))
            .ok()
            .map(|d| d.count() as u64)
    }
}

/// Summed readings over an instance's process tree.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TreeUsage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub fds: u64,
    pub threads: u64,
    pub processes: u64,
}

/// Sums an instance's members. CPU counts each member's own time plus the time of children it
/// has already reaped, so a short-lived helper's work is not lost and nothing is counted twice.
pub fn tree_usage(fs: &ProcFs, members: &[&ProcStat], page_size: u64, clk_tck: u64) -> TreeUsage {
    let mut u = TreeUsage::default();
    let mut ticks = 0u64;
    for p in members {
        u.processes += 1;
        u.threads += p.num_threads;
        ticks += p.utime + p.stime + p.cutime + p.cstime;
        let pages = fs.resident_pages(p.pid).unwrap_or(p.rss_pages);
        u.rss_bytes += pages * page_size;
        u.fds += fs.fd_count(p.pid).unwrap_or(0);
    }
    u.cpu_seconds = ticks as f64 / clk_tck.max(1) as f64;
    u
}

/// Clock ticks per second and the page size, from `sysconf`.
pub fn clock_and_page() -> (u64, u64) {
    use nix::unistd::{sysconf, SysconfVar};
    let tck = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|v| *v > 0)
        .unwrap_or(100);
    let page = sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .filter(|v| *v > 0)
        .unwrap_or(4096);
    (tck as u64, page as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24683656 kB\nMemFree:        22973636 kB\n\
        MemAvailable:   24339296 kB\nBuffers:            4024 kB\nCached:          1534196 kB\n\
        SwapCached:            0 kB\nSwapTotal:       2097148 kB\nSwapFree:        1048574 kB\n\
        HugePages_Total:       0\n";

    #[test]
    fn loadavg_fields() {
        let l = parse_loadavg("1.10 1.31 0.67 1/78 7294\n").unwrap();
        assert_eq!(
            l,
            LoadAvg {
                load1: 1.10,
                load5: 1.31,
                load15: 0.67,
                threads: 78
            }
        );
        assert!(parse_loadavg("1.0 2.0").is_err());
        assert!(parse_loadavg("a b c 1/2 3").is_err());
    }

    #[test]
    fn meminfo_in_bytes_and_used_is_total_minus_available() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 24683656 * 1024);
        assert_eq!(m.available, 24339296 * 1024);
        assert_eq!(m.buffers, 4024 * 1024);
        assert_eq!(m.cached, 1534196 * 1024);
        assert_eq!(m.used(), (24683656 - 24339296) * 1024);
        assert_eq!(m.swap_used(), (2097148 - 1048574) * 1024);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn meminfo_without_memavailable_is_estimated() {
        let m =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n")
                .unwrap();
        assert_eq!(m.available, 310 * 1024);
    }

    #[test]
    fn file_nr_is_open_and_max() {
        assert_eq!(parse_file_nr("134\t0\t2466174\n").unwrap(), (134, 2466174));
        assert_eq!(parse_file_nr("200 50 1000").unwrap(), (150, 1000));
        assert!(parse_file_nr("1 2").is_err());
    }

    #[test]
    fn stat_with_awkward_comm() {
        // comm "a) (b c" with spaces and parentheses.
        let text = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 3 0 12345 1000000 512 18446744073709551615 0 0 0 0 0 0 0 0 0";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.state, 'S');
        assert_eq!((s.ppid, s.pgrp, s.session), (1, 4242, 4242));
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (250, 50, 7, 3));
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.starttime, 12345);
        assert_eq!(s.rss_pages, 512);
        assert!(parse_stat("12 (x) S 1").is_err());
    }

    #[test]
    fn statm_resident() {
        assert_eq!(
            parse_statm_resident("2000 512 100 1 0 300 0\n").unwrap(),
            512
        );
        assert!(parse_statm_resident("2000").is_err());
    }

    fn p(pid: i32, ppid: i32, pgrp: i32, state: char) -> ProcStat {
        ProcStat {
            pid,
            state,
            ppid,
            pgrp,
            session: pgrp,
            utime: 1,
            stime: 1,
            cutime: 0,
            cstime: 0,
            num_threads: 1,
            starttime: pid as u64 * 10,
            rss_pages: 1,
        }
    }

    fn pids(v: Vec<&ProcStat>) -> Vec<i32> {
        v.into_iter().map(|p| p.pid).collect()
    }

    #[test]
    fn tree_is_group_plus_descendants_even_after_setsid() {
        let table = vec![
            p(1, 0, 1, 'S'),
            p(50, 1, 50, 'S'),    // the agent
            p(100, 50, 100, 'S'), // instance root
            p(101, 100, 100, 'S'),
            p(102, 100, 102, 'S'), // setsid child: own group, still a descendant
            p(103, 102, 102, 'S'), // its child
            p(104, 1, 100, 'S'),   // reparented, still in the group
            p(105, 100, 100, 'Z'), // zombie: not counted
            p(200, 1, 200, 'S'),   // unrelated
        ];
        let seed = TreeSeed {
            root: Some(100),
            ..Default::default()
        };
        assert_eq!(
            pids(tree_members(&table, &seed, 50)),
            vec![100, 101, 102, 103, 104]
        );
    }

    #[test]
    fn reparented_setsid_process_is_found_by_memory_or_cgroup() {
        // The root is gone; 102 left the group and was reparented to init.
        let table = vec![
            p(1, 0, 1, 'S'),
            p(102, 1, 102, 'S'),
            p(103, 102, 102, 'S'),
            p(300, 1, 300, 'S'),
        ];
        let none = TreeSeed {
            root: Some(100),
            ..Default::default()
        };
        assert!(tree_members(&table, &none, 50).is_empty());
        let known = TreeSeed {
            root: Some(100),
            known: [(102, 1020)].into(),
            ..Default::default()
        };
        assert_eq!(pids(tree_members(&table, &known, 50)), vec![102, 103]);
        // A known pid with another start time is a different process (pid reuse).
        let reused = TreeSeed {
            root: None,
            known: [(102, 7)].into(),
            ..Default::default()
        };
        assert!(tree_members(&table, &reused, 50).is_empty());
        let cgroup = TreeSeed {
            root: None,
            cgroup_pids: [102].into(),
            ..Default::default()
        };
        assert_eq!(pids(tree_members(&table, &cgroup, 50)), vec![102, 103]);
    }

    #[test]
    fn init_and_the_agent_are_never_members() {
        // The agent (50) ended up in the group and the cgroup; its other child 60 is another
        // instance and must not be pulled in through it.
        let table = vec![
            p(1, 0, 1, 'S'),
            p(50, 1, 100, 'S'),
            p(60, 50, 60, 'S'),
            p(100, 50, 100, 'S'),
        ];
        let seed = TreeSeed {
            root: Some(100),
            cgroup_pids: [1, 50].into(),
            ..Default::default()
        };
        assert_eq!(pids(tree_members(&table, &seed, 50)), vec![100]);
    }

    #[test]
    fn canned_proc_tree_is_read_and_summed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("loadavg"), "0.50 0.25 0.10 2/321 999\n").unwrap();
        std::fs::write(root.join("meminfo"), MEMINFO).unwrap();
        std::fs::create_dir_all(root.join("sys/fs")).unwrap();
        std::fs::write(root.join("sys/fs/file-nr"), "1000\t0\t50000\n").unwrap();
        let stat = |pid: i32, ppid: i32, pgrp: i32, threads: u64| {
            format!(
                "{pid} (svc) S {ppid} {pgrp} {pgrp} 0 -1 0 0 0 0 0 100 50 10 0 20 0 {threads} 0 {} 0 9 0",
                pid * 10
            )
        };
        for (pid, ppid, pgrp, threads, fds) in
            [(10, 1, 10, 4, 3), (11, 10, 11, 2, 2), (12, 1, 12, 1, 1)]
        {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(d.join("fd")).unwrap();
            std::fs::write(d.join("stat"), stat(pid, ppid, pgrp, threads)).unwrap();
            std::fs::write(d.join("statm"), "100 25 0 0 0 0 0\n").unwrap();
            for fd in 0..fds {
                std::fs::write(d.join("fd").join(fd.to_string()), "").unwrap();
            }
        }
        std::fs::create_dir_all(root.join("self")).unwrap(); // not a pid: skipped
        let fs = ProcFs::new(root);
        let host = fs.host().unwrap();
        assert_eq!(
            (host.open_fds, host.max_fds, host.load.threads),
            (1000, 50000, 321)
        );
        assert_eq!(host.load.load1, 0.5);
        let table = fs.processes().unwrap();
        assert_eq!(
            table.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![10, 11, 12]
        );
        let seed = TreeSeed {
            root: Some(10),
            ..Default::default()
        };
        let members = tree_members(&table, &seed, 0);
        let u = tree_usage(&fs, &members, 4096, 100);
        assert_eq!(u.processes, 2);
        assert_eq!(u.threads, 6);
        assert_eq!(u.fds, 5);
        assert_eq!(u.rss_bytes, 2 * 25 * 4096);
        // (100 + 50 + 10) ticks each, two processes, 100 ticks per second.
        assert!((u.cpu_seconds - 3.2).abs() < 1e-9, "{}", u.cpu_seconds);
    }
}
