//! The reset model: what a recorded series would have read had the server been rejuvenated,
//! and the accounting every policy shares (exhaustions, rejuvenations, lead times).
//!
//! A [`Track`] follows one server's series through one policy's replay. Its samples are taken
//! in order ([`Track::advance`]); a rejuvenation at `t_r` ([`Track::rejuvenate`]) resets the
//! series from then on:
//! - [`ResetModel::Offset`] (the default): `recorded(t) − max(0, recorded(t_r) − recorded(t_0))`,
//!   `t_0` being the series' first sample: what leaked before `t_r` is gone, what leaks after
//!   it still comes (at the rate the recording shows at that time of the recording);
//! - [`ResetModel::Replay`]: the series starts over, `recorded(t_0 + (t − t_r))`: a restarted
//!   process re-lives its own history, warm-up and leak alike (for leaks that follow the
//!   process's age rather than the clock, such as an accelerating one).
//!
//! A replayed value is never below zero. A series is exhausted when its replayed value
//! reaches (`>=`) the capacity: that is a crash the policy did not prevent. The crashed
//! process restarts, so an exhaustion resets the series as a rejuvenation would (without
//! counting as one) and the replay goes on.
//!
//! `recorded(t)` between samples is the newest sample at or before `t`.

use super::input::Series;
use serde::Serialize;

/// How a rejuvenation changes the series afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetModel {
    /// `recorded(t) − max(0, recorded(t_r) − recorded(t_0))`.
    #[default]
    Offset,
    /// `recorded(t_0 + (t − t_r))`.
    Replay,
}

impl ResetModel {
    pub const NAMES: [&'static str; 2] = ["offset", "replay"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "offset" => Some(Self::Offset),
            "replay" => Some(Self::Replay),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Offset => "offset",
            Self::Replay => "replay",
        }
    }
}

/// A rejuvenation as the model saw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rejuvenation {
    /// Seconds (the series' clock).
    pub t_s: f64,
    /// Time the series had left until it reached its capacity, had it not been reset then
    /// (by the model); `None` when it would not have within the recording.
    pub lead_s: Option<f64>,
}

/// What is in force since the last reset.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Since {
    /// Never reset: the recording as it is.
    Start,
    /// Offset model: this much is taken off every later value.
    Offset(f64),
    /// Replay model: the series re-lives its recording from `t_0` since `at_s`.
    Replay { at_s: f64 },
}

/// One server's series through one policy's replay.
#[derive(Debug, Clone)]
pub struct Track<'a> {
    pub series: &'a Series,
    model: ResetModel,
    since: Since,
    /// Replay model: index of the recording being re-lived (moves forward with time).
    cursor: usize,
    /// Index of the newest sample taken so far (`None` before the first).
    pub last: Option<usize>,
    /// The replayed value of the newest sample (after an exhaustion's reset).
    pub value: f64,
    pub rejuvenations: Vec<Rejuvenation>,
    /// Times (seconds) the series reached its capacity.
    pub exhaustions: Vec<f64>,
    /// Per sample, the replayed value as reported (kept when `keep` is set, for charts).
    pub replayed: Option<Vec<f64>>,
}

impl<'a> Track<'a> {
    pub fn new(series: &'a Series, model: ResetModel) -> Self {
        Self {
            series,
            model,
            since: Since::Start,
            cursor: 0,
            last: None,
            value: 0.0,
            rejuvenations: Vec::new(),
            exhaustions: Vec::new(),
            replayed: None,
        }
    }

    /// As [`Track::new`], keeping every replayed value.
    pub fn keeping(series: &'a Series, model: ResetModel) -> Self {
        let mut t = Self::new(series, model);
        t.replayed = Some(Vec::with_capacity(series.t.len()));
        t
    }

    /// The value the series reads at time `t_s` (sample `i`'s time or later) under `since`.
    fn value_at(&mut self, i: usize, t_s: f64, since: Since) -> f64 {
        read(self.series, i, t_s, since, &mut self.cursor)
    }

    /// Takes sample `i` (every sample, in order): its replayed value, after the reset of a
    /// crash if it reached the capacity (counted as an exhaustion).
    pub fn advance(&mut self, i: usize) -> f64 {
        let t_s = self.series.t[i];
        self.last = Some(i);
        let mut v = self.value_at(i, t_s, self.since);
        if v >= self.series.capacity {
            self.exhaustions.push(t_s);
            self.reset(t_s);
            v = self.value_at(i, t_s, self.since);
        }
        self.value = v;
        if let Some(r) = &mut self.replayed {
            r.push(v);
        }
        v
    }

    /// A rejuvenation at `t_s`: the lead it had, then the reset (unless `resets` is false: a
    /// run whose actions stopped no process frees nothing the series measures).
    pub fn rejuvenate(&mut self, t_s: f64, resets: bool) {
        let lead_s = self.lead(t_s);
        self.rejuvenations.push(Rejuvenation { t_s, lead_s });
        if !resets {
            return;
        }
        self.reset(t_s);
        if let Some(i) = self.last {
            // The newest sample now reads as reset (what an agent polled next would say).
            self.value = self.value_at(i, t_s, self.since);
        }
    }

    /// A restart at `t_s` that is not accounted for (the period search's trial runs).
    pub fn restart(&mut self, t_s: f64) {
        self.reset(t_s);
    }

    /// Starts the series over at `t_s` (a rejuvenation, or a crash).
    fn reset(&mut self, t_s: f64) {
        let s = self.series;
        self.since = match self.model {
            ResetModel::Offset => {
                let at = s.at_or_before(t_s).unwrap_or(0);
                Since::Offset((s.v[at] - s.v[0]).max(0.0))
            }
            ResetModel::Replay => {
                self.cursor = 0;
                Since::Replay { at_s: t_s }
            }
        };
    }

    /// Seconds from `t_s` until the series, left alone, reaches its capacity (`None`: not
    /// within the recording), by the samples not yet taken (one taken at `t_s` itself was
    /// seen before the rejuvenation; one at `t_s` not yet taken would read after it).
    fn lead(&self, t_s: f64) -> Option<f64> {
        let s = self.series;
        let from = self.last.map_or(0, |i| i + 1);
        let mut cursor = self.cursor;
        (from..s.t.len()).find_map(|k| {
            (read(s, k, s.t[k], self.since, &mut cursor) >= s.capacity).then(|| s.t[k] - t_s)
        })
    }
}

/// The value `s` reads at time `t_s` (sample `i`'s time or later) under `since`; `cursor` is
/// the replay model's place in the recording, moved forward as time goes.
fn read(s: &Series, i: usize, t_s: f64, since: Since, cursor: &mut usize) -> f64 {
    let v = match since {
        Since::Start => s.v[i],
        Since::Offset(off) => s.v[i] - off,
        Since::Replay { at_s } => {
            let age_t = s.t0() + (t_s - at_s);
            while *cursor + 1 < s.t.len() && s.t[*cursor + 1] <= age_t {
                *cursor += 1;
            }
            s.v[*cursor]
        }
    };
    v.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rejuv_core::types::Role;

    fn series(v: &[f64], capacity: f64) -> Series {
        Series {
            id: "s".into(),
            capacity,
            role: Role::Primary,
            units: 1,
            t: (0..v.len()).map(|i| i as f64 * 10.0).collect(),
            v: v.to_vec(),
        }
    }

    #[test]
    fn the_offset_model_takes_off_what_leaked_before_the_reset() {
        // A leak of 10 per sample from 20, exhausting at 100 (t = 80).
        let s = series(&[20., 30., 40., 50., 60., 70., 80., 90., 100.], 100.0);
        let mut tr = Track::keeping(&s, ResetModel::Offset);
        for i in 0..=3 {
            tr.advance(i);
        }
        // Rejuvenated at t = 35: recorded(35) = 50, recorded(t_0) = 20, offset 30.
        tr.rejuvenate(35.0, true);
        assert_eq!(tr.value, 20.0, "the newest sample reads as reset");
        let rest: Vec<f64> = (4..s.t.len()).map(|i| tr.advance(i)).collect();
        assert_eq!(rest, [30., 40., 50., 60., 70.]);
        assert!(tr.exhaustions.is_empty());
        // Left alone it would have reached 100 at t = 80: 45 s after the rejuvenation.
        assert_eq!(
            tr.rejuvenations,
            [Rejuvenation {
                t_s: 35.0,
                lead_s: Some(45.0)
            }]
        );
    }

    #[test]
    fn an_exhaustion_is_a_crash_that_resets_and_is_counted() {
        let s = series(&[20., 60., 100., 40., 80., 120.], 100.0);
        let mut tr = Track::keeping(&s, ResetModel::Offset);
        let got: Vec<f64> = (0..s.t.len()).map(|i| tr.advance(i)).collect();
        // At t = 20 it reaches 100: a crash, offset 80; 40 − 80 reads 0, never negative.
        // At t = 50, 120 − 80 = 40.
        assert_eq!(got, [20., 60., 20., 0., 0., 40.]);
        assert_eq!(tr.exhaustions, [20.0]);
        assert!(tr.rejuvenations.is_empty());
    }

    #[test]
    fn a_rejuvenation_of_a_series_that_never_exhausts_has_no_lead() {
        let s = series(&[50., 60., 50., 60.], 100.0);
        let mut tr = Track::new(&s, ResetModel::Offset);
        tr.advance(0);
        tr.advance(1);
        tr.rejuvenate(10.0, true);
        assert_eq!(tr.rejuvenations[0].lead_s, None);
        // Back at its first value when reset: nothing to take off.
        assert_eq!(tr.advance(2), 40.0);
        tr.rejuvenate(25.0, true);
        assert_eq!(tr.advance(3), 60.0);
    }

    #[test]
    fn the_replay_model_relives_the_recording_from_its_start() {
        // Accelerating: the leak grows with the process's age.
        let s = series(&[10., 11., 13., 17., 25., 41., 73., 137.], 100.0);
        let mut tr = Track::keeping(&s, ResetModel::Replay);
        for i in 0..=5 {
            tr.advance(i);
        }
        tr.rejuvenate(50.0, true);
        // From t = 50 the series reads recorded(t − 50): 10, 11 (at t = 60, 70).
        assert_eq!(tr.value, 10.0);
        assert_eq!((tr.advance(6), tr.advance(7)), (11.0, 13.0));
        assert!(tr.exhaustions.is_empty());
        // Left alone it would have read 137 at t = 70: a lead of 20 s.
        assert_eq!(tr.rejuvenations[0].lead_s, Some(20.0));
        // The offset model keeps the acceleration of the recording's clock.
        let mut off = Track::new(&s, ResetModel::Offset);
        for i in 0..=5 {
            off.advance(i);
        }
        off.rejuvenate(50.0, true);
        assert_eq!((off.advance(6), off.advance(7)), (42.0, 10.0));
        assert_eq!(
            off.exhaustions,
            [70.0],
            "137 − 31 = 106 reaches the capacity"
        );
    }

    #[test]
    fn a_reset_between_samples_uses_the_newest_sample_before_it() {
        let s = series(&[20., 40., 60., 80.], 100.0);
        let mut tr = Track::new(&s, ResetModel::Offset);
        tr.advance(0);
        tr.advance(1);
        // t = 19.9: recorded is 40 (the sample at 10), offset 20.
        tr.rejuvenate(19.9, true);
        assert_eq!(tr.advance(2), 40.0);
        // Exactly at a sample's time, that sample counts: recorded(30) = 80, offset 60.
        tr.rejuvenate(30.0, true);
        assert_eq!(tr.advance(3), 20.0);
    }
}
