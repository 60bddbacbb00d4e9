//! The cron-like baselines, applied by the replay itself outside the core: restarts happen at
//! once, outside the budget and the gate, each taking its server out of service for
//! [`RESTART_MS`]; what that costs shows in their most restarts at once and the lowest share of
//! serving capacity.
//!
//! - [`fixed`]: every server restarts at `t_0 + k·period` (`t_0` its first sample).
//! - [`threshold`]: a server restarts once its value has stayed above `fraction × capacity`
//!   for the hold-down.
//! - [`auto_period`]: the fixed period with the fewest restarts and no exhaustion. Restarts
//!   only grow as the period shrinks, so the search walks down from a period longer than
//!   every series (no restart at all) in steps of 3% until one leaves no series exhausted,
//!   then narrows the step it crossed by bisection.

use super::input::{Fleet, Series};
use super::model::{ResetModel, Track};
use super::timing::RESTART_MS;
use rejuv_core::types::Role;

/// The shortest period the search tries.
pub const MIN_PERIOD_S: f64 = 60.0;
/// Each step down of the search's walk.
const STEP: f64 = 0.97;
/// Bisections of the step the walk crossed.
const BISECTIONS: u32 = 24;

/// What a baseline did.
pub struct BaselineRun<'a> {
    pub tracks: Vec<Track<'a>>,
    pub max_concurrent: u32,
    pub min_capacity_fraction: f64,
}

/// Every server restarts at `t_0 + k·period_s`, `k ≥ 1`, within its recording.
pub fn fixed(fleet: &Fleet, period_s: f64, model: ResetModel) -> BaselineRun<'_> {
    let tracks = fleet
        .servers
        .iter()
        .map(|s| {
            let mut tr = Track::keeping(s, model);
            fixed_track(&mut tr, period_s, |tr, t| tr.rejuvenate(t, true), false);
            tr
        })
        .collect();
    finish(fleet, tracks)
}

/// Walks `tr`'s samples with a restart every `period_s`; `restart` is how a restart is taken.
/// With `stop_at_exhaustion`, stops at the first exhaustion (and says whether there was one).
fn fixed_track(
    tr: &mut Track<'_>,
    period_s: f64,
    mut restart: impl FnMut(&mut Track<'_>, f64),
    stop_at_exhaustion: bool,
) -> bool {
    let s = tr.series;
    let mut next = s.t0() + period_s;
    for i in 0..s.t.len() {
        while next <= s.t[i] {
            restart(tr, next);
            next += period_s;
        }
        tr.advance(i);
        if stop_at_exhaustion && !tr.exhaustions.is_empty() {
            return true;
        }
    }
    !tr.exhaustions.is_empty()
}

/// A server restarts once its value has stayed above `fraction × capacity` for `hold_s`.
pub fn threshold(fleet: &Fleet, fraction: f64, hold_s: f64, model: ResetModel) -> BaselineRun<'_> {
    let tracks = fleet
        .servers
        .iter()
        .map(|s| {
            let mut tr = Track::keeping(s, model);
            let limit = fraction * s.capacity;
            let mut above_since: Option<f64> = None;
            for i in 0..s.t.len() {
                let v = tr.advance(i);
                if v > limit {
                    let since = *above_since.get_or_insert(s.t[i]);
                    if s.t[i] - since >= hold_s {
                        tr.rejuvenate(s.t[i], true);
                        above_since = None;
                    }
                } else {
                    above_since = None;
                }
            }
            tr
        })
        .collect();
    finish(fleet, tracks)
}

/// The restarts' cost: most at once, and the lowest share of the primaries' units in service.
fn finish<'a>(fleet: &'a Fleet, tracks: Vec<Track<'a>>) -> BaselineRun<'a> {
    // (time, +1 starts / −1 ends, units of a primary): an end sorts before a start at the
    // same moment (a restart's interval excludes its end).
    let mut edges: Vec<(f64, i64, u64)> = Vec::new();
    let out_s = RESTART_MS as f64 / 1000.0;
    for tr in &tracks {
        let units = if tr.series.role == Role::Primary {
            u64::from(tr.series.units)
        } else {
            0
        };
        for r in &tr.rejuvenations {
            edges.push((r.t_s, 1, units));
            edges.push((r.t_s + out_s, -1, units));
        }
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut at_once, mut most, mut down, mut most_down) = (0i64, 0i64, 0u64, 0u64);
    for (_, d, units) in edges {
        at_once += d;
        if d > 0 {
            down += units;
        } else {
            down -= units;
        }
        most = most.max(at_once);
        most_down = most_down.max(down);
    }
    let total = fleet.primary_units().max(1);
    BaselineRun {
        tracks,
        max_concurrent: most as u32,
        min_capacity_fraction: 1.0 - most_down as f64 / total as f64,
    }
}

/// Restarts a fixed period makes over the fleet.
pub fn restarts(fleet: &Fleet, period_s: f64) -> u64 {
    fleet
        .servers
        .iter()
        .map(|s| ((s.t_last() - s.t0()) / period_s).floor() as u64)
        .sum()
}

/// The period `fixed:auto` found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoPeriod {
    pub period_s: f64,
    /// No series exhausts with it (else no period from [`MIN_PERIOD_S`] up prevents every
    /// exhaustion, and this is the shortest tried).
    pub safe: bool,
}

/// The period with the fewest restarts and no exhaustion; `progress` hears the share of the
/// walk done.
pub fn auto_period(fleet: &Fleet, model: ResetModel, progress: &mut dyn FnMut(f64)) -> AutoPeriod {
    let span = fleet
        .servers
        .iter()
        .map(|s| s.t_last() - s.t0())
        .fold(0.0, f64::max);
    // Servers in the order to try them: the one that exhausted last first, since it is most
    // likely to exhaust again with a slightly shorter period.
    let mut order: Vec<usize> = (0..fleet.servers.len()).collect();
    let safe = |period: f64, order: &mut Vec<usize>| -> bool {
        for k in 0..order.len() {
            let s = &fleet.servers[order[k]];
            if exhausts(s, period, model) {
                let i = order.remove(k);
                order.insert(0, i);
                return false;
            }
        }
        true
    };
    let top = (span * 1.01).max(MIN_PERIOD_S);
    let mut unsafe_above = None;
    let mut period = top;
    let steps = (MIN_PERIOD_S / top).ln() / STEP.ln();
    let mut step = 0.0;
    let found = loop {
        if safe(period, &mut order) {
            break Some(period);
        }
        unsafe_above = Some(period);
        if period <= MIN_PERIOD_S {
            break None;
        }
        period = (period * STEP).max(MIN_PERIOD_S);
        step += 1.0;
        progress((step / steps.max(1.0)).min(1.0));
    };
    let Some(mut best) = found else {
        return AutoPeriod {
            period_s: MIN_PERIOD_S,
            safe: false,
        };
    };
    if let Some(mut hi) = unsafe_above {
        let mut lo = best;
        for _ in 0..BISECTIONS {
            let mid = (lo + hi) / 2.0;
            if safe(mid, &mut order) {
                lo = mid;
                best = best.max(mid);
            } else {
                hi = mid;
            }
        }
    }
    // Whole seconds, as an operator would write the period: the next one up if it is still
    // safe (the bisection closes in on a boundary from below), else the one below (unless a
    // second makes the difference).
    let (up, down) = (best.ceil(), best.floor().max(MIN_PERIOD_S));
    let period_s = if up > best && safe(up, &mut order) {
        up
    } else if safe(down, &mut order) {
        down
    } else {
        best
    };
    AutoPeriod {
        period_s,
        safe: true,
    }
}

/// Whether `s` exhausts with a restart every `period_s`.
fn exhausts(s: &Series, period_s: f64, model: ResetModel) -> bool {
    let mut tr = Track::new(s, model);
    fixed_track(&mut tr, period_s, |tr, t| tr.restart(t), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whatif::input::Series;

    /// A server leaking `rate` per second from 0 against capacity 100, one sample each 10 s
    /// for `len_s`.
    fn leak(id: &str, rate: f64, len_s: f64, role: Role) -> Series {
        let n = (len_s / 10.0) as usize + 1;
        Series {
            id: id.into(),
            capacity: 100.0,
            role,
            units: 1,
            t: (0..n).map(|i| i as f64 * 10.0).collect(),
            v: (0..n).map(|i| i as f64 * 10.0 * rate).collect(),
        }
    }

    #[test]
    fn a_fixed_period_restarts_on_its_grid_and_counts_what_it_misses() {
        // Reaches 100 at t = 1000 s; restarts every 600 s.
        let fleet = Fleet {
            servers: vec![leak("a", 0.1, 3000.0, Role::Primary)],
        };
        let run = fixed(&fleet, 600.0, ResetModel::Offset);
        let tr = &run.tracks[0];
        let times: Vec<f64> = tr.rejuvenations.iter().map(|r| r.t_s).collect();
        assert_eq!(times, [600.0, 1200.0, 1800.0, 2400.0, 3000.0]);
        assert!(tr.exhaustions.is_empty());
        // At 600 s it read 60: 400 s left.
        assert_eq!(tr.rejuvenations[0].lead_s, Some(400.0));
        assert_eq!(restarts(&fleet, 600.0), 5);
        // Every 1200 s is too long: it reaches 100 at 1000 s.
        let run = fixed(&fleet, 1200.0, ResetModel::Offset);
        assert_eq!(run.tracks[0].exhaustions[0], 1000.0);
    }

    #[test]
    fn restarts_at_once_cost_capacity() {
        let fleet = Fleet {
            servers: vec![
                leak("a", 0.01, 1000.0, Role::Primary),
                leak("b", 0.01, 1000.0, Role::Primary),
                leak("c", 0.01, 1000.0, Role::Spare),
            ],
        };
        let run = fixed(&fleet, 500.0, ResetModel::Offset);
        assert_eq!(run.max_concurrent, 3, "every server restarts at 500 s");
        assert_eq!(run.min_capacity_fraction, 0.0, "both primaries are out");
        // One period apart by their own t_0: b starts 100 s later.
        let mut late = leak("b", 0.01, 1000.0, Role::Primary);
        late.t.iter_mut().for_each(|t| *t += 100.0);
        let fleet = Fleet {
            servers: vec![leak("a", 0.01, 1000.0, Role::Primary), late],
        };
        let run = fixed(&fleet, 500.0, ResetModel::Offset);
        assert_eq!(run.max_concurrent, 1);
        assert_eq!(run.min_capacity_fraction, 0.5);
    }

    #[test]
    fn a_threshold_restarts_after_its_hold_down() {
        // 0.1 per second: above 80 from t = 810 s; held 60 s at t = 870 s.
        let fleet = Fleet {
            servers: vec![leak("a", 0.1, 2000.0, Role::Primary)],
        };
        let run = threshold(&fleet, 0.8, 60.0, ResetModel::Offset);
        let tr = &run.tracks[0];
        assert_eq!(tr.rejuvenations[0].t_s, 870.0);
        assert_eq!(tr.rejuvenations[0].lead_s, Some(130.0));
        // Reset to 0 at 870 s; above 80 again from 870 + 810 = 1680, held at 1740.
        assert_eq!(tr.rejuvenations[1].t_s, 1740.0);
        assert!(tr.exhaustions.is_empty());
        // Held too long, it crashes first.
        let run = threshold(&fleet, 0.8, 300.0, ResetModel::Offset);
        assert_eq!(run.tracks[0].exhaustions[0], 1000.0);
    }

    #[test]
    fn the_auto_period_is_the_longest_that_prevents_every_exhaustion() {
        // The fastest leak reaches 100 in 1000 s: any period up to 1000 s less a sample
        // prevents it; a healthy server does not change that.
        let fleet = Fleet {
            servers: vec![
                leak("slow", 0.01, 40_000.0, Role::Primary),
                leak("fast", 0.1, 20_000.0, Role::Primary),
                leak("flat", 0.0, 40_000.0, Role::Primary),
            ],
        };
        let auto = auto_period(&fleet, ResetModel::Offset, &mut |_| {});
        assert!(auto.safe);
        // Samples every 10 s: a restart at t_r leaves the value of the sample at or before
        // t_r; the fast series reaches 100 one period later unless the period is below 1000 s
        // plus what the sample grid hides (up to 10 s).
        assert!(
            (990.0..1010.0).contains(&auto.period_s),
            "period {}",
            auto.period_s
        );
        assert_eq!(auto.period_s.fract(), 0.0, "whole seconds");
        let run = fixed(&fleet, auto.period_s, ResetModel::Offset);
        assert!(run.tracks.iter().all(|t| t.exhaustions.is_empty()));
        let longer = fixed(&fleet, auto.period_s + 20.0, ResetModel::Offset);
        assert!(longer.tracks.iter().any(|t| !t.exhaustions.is_empty()));
    }

    #[test]
    fn with_nothing_aging_the_auto_period_never_restarts() {
        let fleet = Fleet {
            servers: vec![leak("flat", 0.0, 5_000.0, Role::Primary)],
        };
        let auto = auto_period(&fleet, ResetModel::Offset, &mut |_| {});
        assert!(auto.safe);
        assert_eq!(restarts(&fleet, auto.period_s), 0);
    }

    #[test]
    fn a_leak_faster_than_the_shortest_period_is_said_unsafe() {
        let fleet = Fleet {
            servers: vec![leak("wild", 5.0, 1_000.0, Role::Primary)],
        };
        let auto = auto_period(&fleet, ResetModel::Offset, &mut |_| {});
        assert_eq!(
            auto,
            AutoPeriod {
                period_s: MIN_PERIOD_S,
                safe: false
            }
        );
    }
}
