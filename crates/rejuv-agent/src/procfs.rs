//! Reading `/proc`: host-wide figures and the process table, and finding an instance's whole
//! process tree in that table.
//!
//! The `procfs` crate reads and parses the files; this module keeps the few figures a sample
//! needs, in the units the samples carry (bytes, clock ticks, f64 load). [`ProcFs`] reads from a
//! root directory (`/proc` on a host, a canned tree in tests).
//!
//! # Assumptions
//! Linux `/proc` formats (the crate's parsers): `loadavg`, `meminfo`, `PID/stat`, `PID/statm`,
//! and `sys/fs/file-nr`, which is parsed here (see [`parse_file_nr`]).

use procfs::process::{Process, Stat};
use procfs::{FromRead, LoadAverage, Meminfo};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A `/proc` file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
    #[error("cannot parse {what}: {reason}")]
    Parse { what: &'static str, reason: String },
}

/// `/proc/loadavg`: load averages and the number of scheduling entities (threads).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub threads: u64,
}

impl From<LoadAverage> for LoadAvg {
    fn from(l: LoadAverage) -> Self {
        // The crate keeps loads as f32; the kernel writes two decimals. Widening through the
        // shortest decimal gives the f64 of what the file says (1.1, not 1.100000023841858),
        // so samples keep the figures they had when this module parsed the file itself.
        let widen = |v: f32| v.to_string().parse::<f64>().unwrap_or(f64::from(v));
        Self {
            load1: widen(l.one),
            load5: widen(l.five),
            load15: widen(l.fifteen),
            threads: u64::from(l.max),
        }
    }
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

impl From<Meminfo> for MemInfo {
    fn from(m: Meminfo) -> Self {
        // Kernels before 3.14 have no MemAvailable: estimate it the old way.
        let available = m
            .mem_available
            .unwrap_or(m.mem_free + m.buffers + m.cached)
            .min(m.mem_total);
        Self {
            total: m.mem_total,
            free: m.mem_free,
            available,
            buffers: m.buffers,
            cached: m.cached,
            swap_total: m.swap_total,
            swap_free: m.swap_free,
        }
    }
}

/// `/proc/sys/fs/file-nr`: `allocated unused max`. Returns (open, max).
///
/// Parsed here: the crate reads this file only at the fixed path `/proc/sys/fs/file-nr`, not
/// under a root that tests can point at a canned tree.
pub fn parse_file_nr(text: &str) -> Result<(u64, u64), ProcError> {
    let f: Vec<u64> = text
        .split_whitespace()
        .map(str::parse::<u64>)
        .collect::<Result<_, _>>()
        .map_err(|e| ProcError::Parse {
            what: "file-nr",
            reason: e.to_string(),
        })?;
    match f.as_slice() {
        [allocated, unused, max] => Ok((allocated.saturating_sub(*unused), *max)),
        _ => Err(ProcError::Parse {
            what: "file-nr",
            reason: format!("expected 3 numbers, got {}", f.len()),
        }),
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

impl From<Stat> for ProcStat {
    fn from(s: Stat) -> Self {
        // cutime/cstime/num_threads are signed in the kernel's format; never negative in practice.
        let unsigned = |v: i64| v.max(0) as u64;
        Self {
            pid: s.pid,
            state: s.state,
            ppid: s.ppid,
            pgrp: s.pgrp,
            session: s.session,
            utime: s.utime,
            stime: s.stime,
            cutime: unsigned(s.cutime),
            cstime: unsigned(s.cstime),
            num_threads: unsigned(s.num_threads),
            starttime: s.starttime,
            rss_pages: s.rss,
        }
    }
}

/// A process identity that survives pid reuse: (pid, start time in ticks).
pub type ProcKey = (i32, u64);

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

    fn read<T: FromRead>(&self, rel: &str) -> Result<T, ProcError> {
        let path = self.root.join(rel);
        T::from_file(&path).map_err(|source| ProcError::Read { path, source })
    }

    pub fn host(&self) -> Result<HostReading, ProcError> {
        let load = LoadAvg::from(self.read::<LoadAverage>("loadavg")?);
        let mem = MemInfo::from(self.read::<Meminfo>("meminfo")?);
        let path = self.root.join("sys/fs/file-nr");
        let text = std::fs::read_to_string(&path).map_err(|e| ProcError::Read {
            path,
            source: e.into(),
        })?;
        let (open_fds, max_fds) = parse_file_nr(&text)?;
        Ok(HostReading {
            load,
            mem,
            open_fds,
            max_fds,
        })
    }

    /// Every process's `stat`. Processes that end while the table is read are skipped.
    ///
    /// Read here rather than with the crate's `all_processes`: one `open`, `read` and `close`
    /// per process into one reused buffer ([`read_line_file`]), and only the fields [`ProcStat`] keeps parsed (the collector reads
    /// the table every sample, so this is most of the agent's own CPU time).
    pub fn processes(&self) -> Result<Vec<ProcStat>, ProcError> {
        let dir = std::fs::read_dir(&self.root).map_err(|e| ProcError::Read {
            path: self.root.clone(),
            source: e.into(),
        })?;
        let mut table = Vec::new();
        let mut path = self.root.clone();
        let mut buf = Vec::with_capacity(512);
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            path.push(&name);
            path.push("stat");
            let read = read_line_file(&path, &mut buf);
            path.pop();
            path.pop();
            if read.is_err() {
                continue; // ended while the table was read
            }
            // A command name is any bytes (prctl): not UTF-8 is no reason to miss a process.
            if let Some(stat) = parse_stat(&String::from_utf8_lossy(&buf)) {
                if stat.pid == pid {
                    table.push(stat);
                }
            }
        }
        table.sort_by_key(|p| p.pid);
        Ok(table)
    }

    /// Whether this `/proc` shows the machine's own (initial) PID namespace to the agent, by
    /// `self/ns/pid`: there `loadavg` counts every task the process table would add up. A
    /// container's own namespace, or a link that cannot be read, is not.
    pub fn in_initial_pid_namespace(&self) -> bool {
        std::fs::read_link(self.root.join("self/ns/pid"))
            .is_ok_and(|l| l.as_os_str() == INITIAL_PID_NAMESPACE)
    }

    /// Resident pages of one process from `statm`, or `None` if it is gone.
    pub fn resident_pages(&self, pid: i32) -> Option<u64> {
        let p = Process::new_with_root(self.root.join(pid.to_string())).ok()?;
        p.statm().ok().map(|m| m.resident)
    }

    /// Open file descriptors of one process, or `None` if it is gone.
    ///
    /// Counted here: the crate's `Process::fd_count` counts `.` and `..` too where the kernel
    /// does not report the count as the directory's size (before Linux 6.2, and for a process
    /// with no descriptor table), so a process there would read 2 descriptors too many.
    pub fn fd_count(&self, pid: i32) -> Option<u64> {
        std::fs::read_dir(self.root.join(format!("{pid}/fd")))
            .ok()
            .map(|d| d.count() as u64)
    }
}

/// `self/ns/pid` in the machine's own PID namespace: the kernel's `PROC_PID_INIT_INO`.
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

/// Reads a one-line file of `/proc` into `buf` (cleared first): its reads stop at the line's
/// end, so a `PID/stat` costs one `read` (`read_to_end` also asks the file's size and position
/// and reads again to see the end: three system calls more per process, every sample).
fn read_line_file(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.ends_with(b"\n") {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The fields [`ProcStat`] keeps from one `PID/stat` line, or `None` if it is not one. The
/// command name may hold spaces and parentheses: the fields start after its last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find(" (")?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let mut f = line.get(close + 1..)?.split_ascii_whitespace();
    let state = f.next()?.chars().next()?;
    let mut num = |skip: usize| -> Option<i64> { f.nth(skip)?.parse().ok() };
    let ppid = num(0)? as i32;
    let pgrp = num(0)? as i32;
    let session = num(0)? as i32;
    // tty_nr tpgid flags minflt cminflt majflt cmajflt
    let utime = num(7)?;
    let stime = num(0)?;
    let cutime = num(0)?;
    let cstime = num(0)?;
    // priority nice
    let num_threads = num(2)?;
    // itrealvalue
    let starttime = num(1)?;
    // vsize
    let rss = num(1)?;
    // cutime/cstime/num_threads are signed in the kernel's format; never negative in practice.
    let unsigned = |v: i64| v.max(0) as u64;
    Some(ProcStat {
        pid,
        state,
        ppid,
        pgrp,
        session,
        utime: unsigned(utime),
        stime: unsigned(stime),
        cutime: unsigned(cutime),
        cstime: unsigned(cstime),
        num_threads: unsigned(num_threads),
        starttime: unsigned(starttime),
        rss_pages: unsigned(rss),
    })
}

/// One process's `stat` from the host's `/proc`, or `None` if it is gone.
pub fn process_stat(pid: i32) -> Option<ProcStat> {
    Process::new(pid).ok()?.stat().ok().map(ProcStat::from)
}

/// Whether `pid` still names the process that started at `starttime` (clock ticks after
/// boot) and has not ended: a reused pid or a zombie is not it.
pub fn same_process(pid: i32, starttime: u64) -> bool {
    process_stat(pid).is_some_and(|p| p.starttime == starttime && !p.is_gone())
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
/// A member that ends before its `statm` and `fd` are read counts with the resident pages of
/// its `stat` and no descriptors.
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
    (
        procfs::ticks_per_second().max(1),
        procfs::page_size().max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_longer_than_one_read_and_a_file_without_its_newline_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("1 (x) S {}\n", "12345 ".repeat(500));
        let bare = "7 (y) R 1 2 3";
        std::fs::write(dir.path().join("long"), &long).unwrap();
        std::fs::write(dir.path().join("bare"), bare).unwrap();
        let mut buf = b"left over".to_vec();
        read_line_file(&dir.path().join("long"), &mut buf).unwrap();
        assert_eq!(buf, long.as_bytes());
        read_line_file(&dir.path().join("bare"), &mut buf).unwrap();
        assert_eq!(buf, bare.as_bytes());
        assert!(read_line_file(&dir.path().join("gone"), &mut buf).is_err());
    }

    /// A fake `/proc` with one process of `threads` threads, `loadavg` counting `tasks` tasks,
    /// and `self/ns/pid` pointing at `ns`.
    fn fake_proc(threads: u64, tasks: u64, ns: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("loadavg"),
            format!("0.50 0.40 0.30 2/{tasks} 4321\n"),
        )
        .unwrap();
        std::fs::write(root.join("meminfo"), meminfo_text(Some(20_000_000))).unwrap();
        std::fs::create_dir_all(root.join("sys/fs")).unwrap();
        std::fs::write(root.join("sys/fs/file-nr"), "1024\t0\t65536\n").unwrap();
        let mut one = p(42, 1, 42, 'S');
        one.num_threads = threads;
        std::fs::create_dir_all(root.join("42")).unwrap();
        std::fs::write(root.join("42/stat"), stat_line("svc", &one)).unwrap();
        std::fs::create_dir_all(root.join("self/ns")).unwrap();
        std::os::unix::fs::symlink(ns, root.join("self/ns/pid")).unwrap();
        dir
    }

    #[test]
    fn threads_come_from_loadavg_in_the_machines_own_pid_namespace_and_from_the_table_elsewhere() {
        let host = fake_proc(7, 345, "pid:[4026531836]");
        assert!(ProcFs::new(host.path()).in_initial_pid_namespace());
        let c = crate::collector::Collector::new(ProcFs::new(host.path()), 1);
        assert_eq!(c.collect(1_000, 0, &[]).unwrap().sample.threads, 345);

        let container = fake_proc(7, 345, "pid:[4026532301]");
        assert!(!ProcFs::new(container.path()).in_initial_pid_namespace());
        let c = crate::collector::Collector::new(ProcFs::new(container.path()), 1);
        assert_eq!(c.collect(1_000, 0, &[]).unwrap().sample.threads, 7);

        let unknown = tempfile::tempdir().unwrap();
        assert!(!ProcFs::new(unknown.path()).in_initial_pid_namespace());
    }

    /// The lines every kernel since 2.6 writes (the crate requires them), MemAvailable aside.
    const MEMINFO_BASE: &str = "MemTotal:       24683656 kB\nMemFree:        22973636 kB\n\
        Buffers:            4024 kB\nCached:          1534196 kB\nSwapCached:            0 kB\n\
        Active:           520000 kB\nInactive:        1100000 kB\nSwapTotal:       2097148 kB\n\
        SwapFree:        1048574 kB\nDirty:                12 kB\nWriteback:             0 kB\n\
        Mapped:           200000 kB\nSlab:             90000 kB\nCommitted_AS:    800000 kB\n\
        VmallocTotal:   34359738367 kB\nVmallocUsed:      30000 kB\nVmallocChunk:         0 kB\n\
        HugePages_Total:       0\n";

    fn meminfo_text(available_kb: Option<u64>) -> String {
        let extra = available_kb.map_or(String::new(), |kb| format!("MemAvailable: {kb} kB\n"));
        format!("{MEMINFO_BASE}{extra}")
    }

    fn meminfo(text: &str) -> Result<MemInfo, procfs::ProcError> {
        Meminfo::from_read(text.as_bytes()).map(MemInfo::from)
    }

    fn loadavg(text: &str) -> Result<LoadAvg, procfs::ProcError> {
        LoadAverage::from_read(text.as_bytes()).map(LoadAvg::from)
    }

    /// A `PID/stat` line as the kernel writes it (52 fields), with the fields the agent reads.
    fn stat_line(comm: &str, s: &ProcStat) -> String {
        format!(
            "{} ({comm}) {} {} {} {} 0 -1 4194560 100 0 0 0 {} {} {} {} 20 0 {} 0 {} 1000000 {} \
             18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0",
            s.pid,
            s.state,
            s.ppid,
            s.pgrp,
            s.session,
            s.utime,
            s.stime,
            s.cutime,
            s.cstime,
            s.num_threads,
            s.starttime,
            s.rss_pages
        )
    }

    #[test]
    fn loadavg_fields() {
        let l = loadavg("1.10 1.31 0.67 1/78 7294\n").unwrap();
        assert_eq!(
            l,
            LoadAvg {
                load1: 1.10,
                load5: 1.31,
                load15: 0.67,
                threads: 78
            }
        );
        assert!(loadavg("1.0 2.0").is_err());
        assert!(loadavg("a b c 1/2 3").is_err());
        // Loads keep the decimals the kernel wrote.
        let high = loadavg("9999.99 123.45 0.01 3/4 5\n").unwrap();
        assert_eq!(
            (high.load1, high.load5, high.load15),
            (9999.99, 123.45, 0.01)
        );
    }

    #[test]
    fn meminfo_in_bytes_and_used_is_total_minus_available() {
        let m = meminfo(&meminfo_text(Some(24339296))).unwrap();
        assert_eq!(m.total, 24683656 * 1024);
        assert_eq!(m.available, 24339296 * 1024);
        assert_eq!(m.buffers, 4024 * 1024);
        assert_eq!(m.cached, 1534196 * 1024);
        assert_eq!(m.used(), (24683656 - 24339296) * 1024);
        assert_eq!(m.swap_used(), (2097148 - 1048574) * 1024);
        assert!(meminfo("MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn meminfo_without_memavailable_is_estimated() {
        let m = meminfo(&meminfo_text(None)).unwrap();
        assert_eq!(m.available, (22973636 + 4024 + 1534196) * 1024);
        // Never above the total.
        let small = meminfo_text(None).replace("MemTotal:       24683656", "MemTotal: 1000");
        assert_eq!(meminfo(&small).unwrap().available, 1000 * 1024);
    }

    #[test]
    fn file_nr_is_open_and_max() {
        assert_eq!(parse_file_nr("134\t0\t2466174\n").unwrap(), (134, 2466174));
        assert_eq!(parse_file_nr("200 50 1000").unwrap(), (150, 1000));
        assert!(parse_file_nr("1 2").is_err());
    }

    #[test]
    fn stat_with_awkward_comm() {
        let want = ProcStat {
            pid: 4242,
            state: 'S',
            ppid: 1,
            pgrp: 4242,
            session: 4242,
            utime: 250,
            stime: 50,
            cutime: 7,
            cstime: 3,
            num_threads: 3,
            starttime: 12345,
            rss_pages: 512,
        };
        // comm "a) (b c" with spaces and parentheses.
        let text = stat_line("a) (b c", &want);
        let got = ProcStat::from(Stat::from_read(text.as_bytes()).unwrap());
        assert_eq!(got, want);
        assert!(Stat::from_read("12 (x) S 1".as_bytes()).is_err());
        // The table's own parser reads the same fields as the crate's.
        assert_eq!(parse_stat(&text), Some(want));
        assert_eq!(parse_stat("12 (x) S 1"), None);
        assert_eq!(parse_stat("not a stat line"), None);
    }

    #[test]
    fn a_command_name_that_is_not_utf8_is_still_in_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let want = p(77, 1, 77, 'S');
        let mut line = stat_line("x", &want).into_bytes();
        line.splice(4..5, [0xff, 0xfe]); // "77 (x)" -> "77 (\xff\xfe)"
        std::fs::create_dir_all(dir.path().join("77")).unwrap();
        std::fs::write(dir.path().join("77/stat"), line).unwrap();
        let table = ProcFs::new(dir.path()).processes().unwrap();
        assert_eq!(table, vec![want]);
    }

    #[test]
    fn the_table_agrees_with_the_crate_on_this_kernel() {
        let me = std::process::id() as i32;
        let table = ProcFs::default().processes().unwrap();
        let mine = table
            .iter()
            .find(|p| p.pid == me)
            .expect("this process in the table");
        let theirs = ProcStat::from(Process::myself().unwrap().stat().unwrap());
        // Fields that do not move while the test runs.
        assert_eq!(
            (mine.ppid, mine.pgrp, mine.session, mine.starttime),
            (theirs.ppid, theirs.pgrp, theirs.session, theirs.starttime)
        );
        assert!(table.windows(2).all(|w| w[0].pid < w[1].pid));
        assert!(table.iter().any(|p| p.pid == 1));
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
        std::fs::write(root.join("meminfo"), meminfo_text(Some(24339296))).unwrap();
        std::fs::create_dir_all(root.join("sys/fs")).unwrap();
        std::fs::write(root.join("sys/fs/file-nr"), "1000\t0\t50000\n").unwrap();
        let stat = |pid: i32, ppid: i32, pgrp: i32, threads: u64| {
            let s = ProcStat {
                utime: 100,
                stime: 50,
                cutime: 10,
                cstime: 0,
                num_threads: threads,
                rss_pages: 9,
                ..p(pid, ppid, pgrp, 'S')
            };
            stat_line("svc", &s)
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
        std::fs::create_dir_all(root.join("13")).unwrap(); // ended mid-read: no stat, skipped
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
        // A member that ended after the table was read: its stat's pages, no descriptors.
        std::fs::remove_dir_all(root.join("11")).unwrap();
        assert_eq!((fs.resident_pages(11), fs.fd_count(11)), (None, None));
        let u = tree_usage(&fs, &members, 4096, 100);
        assert_eq!((u.processes, u.fds), (2, 3));
        assert_eq!(u.rss_bytes, (25 + 9) * 4096);
    }

    #[test]
    fn this_kernel_is_read() {
        let fs = ProcFs::default();
        let host = fs.host().unwrap();
        assert!(host.mem.total > 0 && host.max_fds > 0 && host.load.threads > 0);
        let me = std::process::id() as i32;
        let table = fs.processes().unwrap();
        let mine = table
            .iter()
            .find(|p| p.pid == me)
            .expect("this test's own process");
        assert!(mine.num_threads >= 1 && mine.starttime > 0);
        let u = tree_usage(&fs, &[mine], 4096, 100);
        // The kernel's own count (the size of `PID/fd` since Linux 6.2), where it gives one.
        let size = std::fs::metadata(format!("/proc/{me}/fd")).unwrap().len();
        assert!(
            u.fds > 0 && (size == 0 || u.fds.abs_diff(size) <= 2),
            "{} vs {size}",
            u.fds
        );
        assert!(u.rss_bytes > 0);
    }
}
