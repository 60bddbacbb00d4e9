//! The readings the controller keeps per server for `GET /v1/servers/{id}/history`: the last
//! hour, one reading per 5 s of the agent's clock at most (the bounds are
//! [`rejuv_core::wire::HISTORY_POINTS`] and its neighbours), in memory only.
//!
//! The engine records every sample it is handed (a poll's, or the ones an agent kept when
//! this controller started leading); the API reads one server's readings. Each reading is
//! held compactly (32 bytes, in a ring that grows in small steps): 23 KB per server at the
//! bound, 11.5 KB for an hour of readings every 10 s.

use rejuv_core::config::Resource;
use rejuv_core::detector::resource_value;
use rejuv_core::ring::push_bounded;
use rejuv_core::types::Sample;
use rejuv_core::wire::{HistoryPoint, HISTORY_POINTS, HISTORY_SPACING_MS, HISTORY_SPAN_MS};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// An agent clock that went back further than this starts the server's history afresh.
const CLOCK_BACK_MS: u64 = 60_000;

/// One kept reading. Absent readings are NaN.
#[derive(Debug, Clone, Copy)]
struct Kept {
    /// Milliseconds after its ring's `base_ms`.
    at: u32,
    memory_used: f32,
    swap_used: f32,
    fds: f32,
    threads: f32,
    latency_ms: f32,
    rss: u64,
}

/// One server's readings, oldest first.
#[derive(Debug, Default)]
struct Ring {
    base_ms: u64,
    kept: VecDeque<Kept>,
}

impl Ring {
    fn at_ms(&self, k: &Kept) -> u64 {
        self.base_ms + u64::from(k.at)
    }

    /// The offset of `at_ms` (not before the oldest kept), moving the base up to the oldest
    /// reading when the offset would not fit.
    fn offset(&mut self, at_ms: u64) -> u32 {
        if self.kept.is_empty() {
            self.base_ms = at_ms;
        }
        if at_ms - self.base_ms > u64::from(u32::MAX) {
            let front = self.kept.front().map_or(0, |k| k.at);
            for k in &mut self.kept {
                k.at -= front;
            }
            self.base_ms += u64::from(front);
        }
        u32::try_from(at_ms - self.base_ms).unwrap_or(u32::MAX)
    }
}

/// Every server's recent readings.
#[derive(Debug, Default)]
pub struct HistoryBook {
    servers: BTreeMap<String, Ring>,
}

/// The book as the engine (writer) and the API (reader) share it.
pub type SharedHistory = Arc<Mutex<HistoryBook>>;

impl HistoryBook {
    /// Records `sample` of `server` (a no-op when it is too close to the last one kept).
    pub fn record(&mut self, server: &str, sample: &Sample) {
        let ring = self.servers.entry(server.to_string()).or_default();
        let at = sample.taken_at_ms;
        if let Some(last) = ring.kept.back().map(|k| ring.at_ms(k)) {
            if at + CLOCK_BACK_MS < last {
                ring.kept.clear();
            } else if at < last + HISTORY_SPACING_MS {
                return;
            }
        }
        while ring
            .kept
            .front()
            .is_some_and(|f| ring.at_ms(f) + HISTORY_SPAN_MS < at)
        {
            ring.kept.pop_front();
        }
        // Instance RSS is kept in bytes, so no memory budget enters these readings.
        let value = |r: Resource| resource_value(r, sample, 0).map_or(f32::NAN, |v| v as f32);
        let kept = Kept {
            at: ring.offset(at),
            rss: sample.instances.values().map(|i| i.rss_bytes).sum(),
            memory_used: value(Resource::MemoryUsed),
            swap_used: value(Resource::SwapUsed),
            fds: value(Resource::Fds),
            threads: value(Resource::Threads),
            latency_ms: value(Resource::HealthLatencyMs),
        };
        push_bounded(&mut ring.kept, kept, HISTORY_POINTS);
    }

    /// `server`'s readings, oldest first.
    pub fn points(&self, server: &str) -> Vec<HistoryPoint> {
        let some = |x: f32| (!x.is_nan()).then_some(f64::from(x));
        self.servers.get(server).map_or_else(Vec::new, |ring| {
            ring.kept
                .iter()
                .map(|k| HistoryPoint {
                    at_ms: ring.at_ms(k),
                    instances_rss_bytes: k.rss,
                    memory_used: some(k.memory_used),
                    swap_used: some(k.swap_used),
                    fds: some(k.fds),
                    threads: some(k.threads),
                    health_latency_ms: some(k.latency_ms),
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rejuv_core::types::InstanceSample;

    fn sample(at_ms: u64, rss: u64) -> Sample {
        let mut s = Sample {
            taken_at_ms: at_ms,
            mem_total_bytes: 1000,
            mem_used_bytes: 250,
            threads: 7,
            ..Sample::default()
        };
        s.instances.insert(
            "web-1".into(),
            InstanceSample {
                rss_bytes: rss,
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn times_stay_exact_over_months_of_running() {
        let mut book = HistoryBook::default();
        // A reading every 20 minutes for 60 days: past what 32 bits of milliseconds hold.
        let step = 20 * 60 * 1000;
        let start = 1_700_000_000_000u64;
        for i in 0..(60 * 24 * 3) {
            book.record("s1", &sample(start + i * step, i));
        }
        let p = book.points("s1");
        let last = start + (60 * 24 * 3 - 1) * step;
        assert_eq!(
            p.iter().map(|x| x.at_ms).collect::<Vec<_>>(),
            vec![last - 3 * step, last - 2 * step, last - step, last],
            "the last hour's readings, at their own times"
        );
        assert_eq!(p[3].instances_rss_bytes, 60 * 24 * 3 - 1);
    }

    #[test]
    fn readings_are_kept_one_per_spacing_for_the_last_hour() {
        let mut book = HistoryBook::default();
        // A poll every second for two hours.
        for t in 0..7200u64 {
            book.record("s1", &sample(t * 1000, t));
        }
        let p = book.points("s1");
        assert_eq!(p.len(), HISTORY_POINTS);
        let (first, last) = (&p[0], &p[p.len() - 1]);
        assert_eq!(
            last.at_ms, 7_195_000,
            "the newest kept is 5 s after the one before"
        );
        assert!(last.at_ms - first.at_ms < HISTORY_SPAN_MS);
        assert!(p
            .windows(2)
            .all(|w| w[1].at_ms - w[0].at_ms == HISTORY_SPACING_MS));
        assert_eq!(last.instances_rss_bytes, 7195);
        assert_eq!(last.memory_used, Some(0.25));
        assert_eq!(last.threads, Some(7.0));
        assert_eq!(
            (last.swap_used, last.fds, last.health_latency_ms),
            (None, None, None)
        );
        assert!(book.points("s2").is_empty());
    }

    #[test]
    fn a_clock_that_went_back_starts_afresh_and_old_readings_age_out() {
        let mut book = HistoryBook::default();
        book.record("s1", &sample(10_000_000, 1));
        book.record("s1", &sample(10_030_000, 2));
        // 20 s back: within what clocks wobble; too close to the last one kept.
        book.record("s1", &sample(10_010_000, 3));
        assert_eq!(book.points("s1").len(), 2);
        book.record("s1", &sample(1_000, 4));
        let p = book.points("s1");
        assert_eq!((p.len(), p[0].instances_rss_bytes), (1, 4));
        // More than an hour later: the old reading goes.
        book.record("s1", &sample(1_000 + HISTORY_SPAN_MS + 1, 5));
        assert_eq!(book.points("s1").len(), 1);
    }
}
