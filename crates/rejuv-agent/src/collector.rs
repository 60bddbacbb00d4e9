//! The collector: one [`Sample`] every `agent.sample_interval`, host-wide and per instance.
//!
//! Per instance it sums the whole process tree (see [`crate::procfs::tree_members`]) and
//! remembers the members it found, so a process that leaves the group and gets reparented is
//! still counted (and still stopped) later. The time a collection takes is measured and
//! exported as `rejuv_agent_collection_seconds`.
//!
//! The newest samples are also kept in memory (see [`history_len`]) and served at
//! `GET /v1/samples`: a controller that takes over (a restart, a new etcd leader) replays them
//! into its detectors instead of watching blind for the trend rule's whole `min_window`.

use crate::procfs::{clock_and_page, tree_members, tree_usage, ProcError, ProcFs};
use crate::supervisor::Instance;
use rejuv_core::api::InstanceState;
use rejuv_core::types::{InstanceSample, Sample};
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub struct Collector {
    fs: ProcFs,
    clk_tck: u64,
    page_size: u64,
    /// The agent's own pid: never part of an instance.
    self_pid: i32,
    latest: RwLock<Sample>,
    /// The newest samples, oldest first; at most `keep`.
    history: Mutex<VecDeque<Sample>>,
    keep: usize,
    /// The agent's own memory cgroup: with a limit (a container), the host's memory.
    own_memory: Option<crate::host::OwnMemory>,
    /// In the machine's own PID namespace `loadavg` counts every task, so the process table
    /// (most of an idle agent's CPU time) is read only for the instances' trees.
    tasks_from_loadavg: bool,
}

/// How many samples to keep for a controller that takes over: enough for the trend rule to
/// judge at once (twice its `min_window` + `min_persistence`, at least 10 minutes, at most its
/// `window`, and at least the threshold rules' hold-down), never more than 8192.
pub fn history_len(cfg: &rejuv_core::config::Config) -> usize {
    let t = &cfg.policy.trend;
    let span = (2 * (t.min_window + t.min_persistence))
        .max(Duration::from_secs(600))
        .min(t.window)
        .max(2 * cfg.policy.hold_down);
    let every = cfg.agent.sample_interval.max(Duration::from_millis(10));
    (span.as_millis() / every.as_millis()).clamp(1, 8192) as usize
}

/// One collection's result.
pub struct Collected {
    pub sample: Sample,
    pub states: Vec<InstanceState>,
    pub took: Duration,
}

impl Collector {
    pub fn new(fs: ProcFs, self_pid: i32) -> Self {
        let (clk_tck, page_size) = clock_and_page();
        let tasks_from_loadavg = fs.in_initial_pid_namespace();
        Self {
            fs,
            clk_tck,
            page_size,
            self_pid,
            latest: RwLock::new(Sample::default()),
            history: Mutex::new(VecDeque::new()),
            keep: 1,
            own_memory: None,
            tasks_from_loadavg,
        }
    }

    /// Reads memory from the agent's own cgroup where it has a limit (see [`crate::host`]).
    pub fn with_own_memory(mut self, own: Option<crate::host::OwnMemory>) -> Self {
        if let Some(o) = &own {
            tracing::debug!(
                ?o,
                "memory readings from the agent's own cgroup where it is limited"
            );
        }
        self.own_memory = own;
        self
    }

    /// Keeps the newest `keep` samples for [`Collector::history`].
    pub fn with_history(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// The kept samples taken after `after_ms`, oldest first.
    pub fn history(&self, after_ms: u64) -> Vec<Sample> {
        let h = self.history.lock().expect("history lock");
        h.iter()
            .filter(|s| s.taken_at_ms > after_ms)
            .cloned()
            .collect()
    }

    pub fn latest(&self) -> Sample {
        self.latest.read().expect("sample lock").clone()
    }

    /// Takes a sample (blocking I/O on `/proc`: call from a blocking thread) and keeps it as
    /// the newest.
    pub fn collect(
        &self,
        now_ms: u64,
        running_since_ms: u64,
        instances: &[Arc<Instance>],
    ) -> Result<Collected, ProcError> {
        let begun = Instant::now();
        let mut host = self.fs.host()?;
        if let Some(own) = self
            .own_memory
            .as_ref()
            .and_then(|o| o.read(host.mem.total))
        {
            host.mem = own.apply(&host.mem);
        }
        let table = if instances.is_empty() && self.tasks_from_loadavg {
            Vec::new()
        } else {
            self.fs.processes()?
        };
        let mut per_instance = BTreeMap::new();
        let mut states = Vec::with_capacity(instances.len());
        for inst in instances {
            let view = inst.collect_view();
            let members = tree_members(&table, &view.seed, self.self_pid);
            inst.remember(&members);
            let usage = tree_usage(&self.fs, &members, self.page_size, self.clk_tck);
            states.push(view.state);
            per_instance.insert(
                inst.id.clone(),
                InstanceSample {
                    rss_bytes: usage.rss_bytes,
                    cpu_seconds: usage.cpu_seconds,
                    fds: usage.fds,
                    threads: usage.threads,
                    processes: usage.processes,
                    health_latency_ms: view.health_latency_ms,
                    healthy: view.healthy,
                    memory_limit_bytes: inst.spec.memory_limit,
                },
            );
        }
        let table_threads: u64 = table.iter().map(|p| p.num_threads).sum();
        let sample = Sample {
            taken_at_ms: now_ms,
            load1: host.load.load1,
            load5: host.load.load5,
            load15: host.load.load15,
            running_time_s: now_ms.saturating_sub(running_since_ms) as f64 / 1000.0,
            mem_total_bytes: host.mem.total,
            mem_used_bytes: host.mem.used(),
            mem_available_bytes: host.mem.available,
            buffers_bytes: host.mem.buffers,
            cached_bytes: host.mem.cached,
            swap_total_bytes: host.mem.swap_total,
            swap_used_bytes: host.mem.swap_used(),
            open_fds: host.open_fds,
            max_fds: host.max_fds,
            // The process table's sum (a container's own PID namespace); loadavg's count of
            // the machine's tasks where that is the same (the machine's own namespace, whose
            // table is read only for instances) or the table could not be read.
            threads: if table_threads > 0 {
                table_threads
            } else {
                host.load.threads
            },
            instances: per_instance,
        };
        *self.latest.write().expect("sample lock") = sample.clone();
        {
            let mut h = self.history.lock().expect("history lock");
            // Two readings in the same millisecond (one at start, one asked for at once) are
            // kept as one, the later: the kept samples' times strictly increase.
            if h.back()
                .is_some_and(|last| last.taken_at_ms >= sample.taken_at_ms)
            {
                h.pop_back();
            }
            if h.len() >= self.keep {
                h.pop_front();
            }
            h.push_back(sample.clone());
        }
        Ok(Collected {
            sample,
            states,
            took: begun.elapsed(),
        })
    }
}
