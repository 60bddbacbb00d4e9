//! What a replay found, per policy: the figures of `--output json` ([`Summary`]), and the
//! detail the table and the HTML report draw on ([`PolicyRun`]).
//!
//! - `rejuvenations`: restarts or rejuvenations the policy made.
//! - `exhaustions`: samples at which a series reached its capacity before a rejuvenation reset
//!   it: the crashes the policy would not have prevented (a crash resets the series too, so
//!   a server may exhaust more than once); `servers_exhausted` names their servers.
//! - `max_concurrent`: most rejuvenations under way at once (the core's workflows; a
//!   baseline's restarts in progress).
//! - `min_capacity_fraction`: lowest share of the primaries' serving units in service.
//! - `lead_s_median`: median time the series had left until exhaustion, by the model, at
//!   each rejuvenation that had one (`null` when none would have exhausted within the
//!   recording).

use super::input::Fleet;
use super::model::{ResetModel, Track};
use super::replay::Forecast;
pub use crate::eval::median;
use serde::Serialize;

/// One policy's figures, as `--output json` prints them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyResult {
    /// The policy as given on the command line.
    pub policy: String,
    /// The period of a `fixed:` policy (the one found, for `fixed:auto`), seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_s: Option<f64>,
    pub rejuvenations: u64,
    pub exhaustions: u64,
    pub servers_exhausted: Vec<String>,
    pub max_concurrent: u32,
    pub min_capacity_fraction: f64,
    pub lead_s_median: Option<f64>,
}

/// `--output json`: `{"policies": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub policies: Vec<PolicyResult>,
}

/// One policy's replay in full.
pub struct PolicyRun<'a> {
    pub result: PolicyResult,
    /// One per server, in fleet order.
    pub tracks: Vec<Track<'a>>,
    /// The forecasts the `rejuv` policy's workflows started on (empty for baselines).
    pub forecasts: Vec<Forecast>,
    /// What a reader should know besides the figures (a search that found no safe period,
    /// workflows that rolled back).
    pub notes: Vec<String>,
}

impl<'a> PolicyRun<'a> {
    pub fn new(
        policy: &str,
        period_s: Option<f64>,
        tracks: Vec<Track<'a>>,
        max_concurrent: u32,
        min_capacity_fraction: f64,
    ) -> Self {
        let rejuvenations = tracks.iter().map(|t| t.rejuvenations.len() as u64).sum();
        let exhaustions = tracks.iter().map(|t| t.exhaustions.len() as u64).sum();
        let servers_exhausted = tracks
            .iter()
            .filter(|t| !t.exhaustions.is_empty())
            .map(|t| t.series.id.clone())
            .collect();
        let leads: Vec<f64> = tracks
            .iter()
            .flat_map(|t| t.rejuvenations.iter().filter_map(|r| r.lead_s))
            .collect();
        Self {
            result: PolicyResult {
                policy: policy.to_string(),
                period_s,
                rejuvenations,
                exhaustions,
                servers_exhausted,
                max_concurrent,
                min_capacity_fraction,
                lead_s_median: median(leads),
            },
            tracks,
            forecasts: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// The whole replay.
pub struct Report<'a> {
    pub fleet: &'a Fleet,
    pub runs: Vec<PolicyRun<'a>>,
    pub reset_model: ResetModel,
    /// Where the `rejuv` policy came from (`built-in defaults`, or the config file).
    pub policy_origin: String,
    /// How copies are placed (see [`super::placement`]).
    pub placement: String,
}

impl Report<'_> {
    pub fn summary(&self) -> Summary {
        Summary {
            policies: self.runs.iter().map(|r| r.result.clone()).collect(),
        }
    }
}

/// `3h05m`, `2d04h`, `45s`: a duration as people read it on a chart or in a table.
pub fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_shape_is_the_documented_one() {
        let r = PolicyResult {
            policy: "fixed:auto".into(),
            period_s: Some(1380.0),
            rejuvenations: 3,
            exhaustions: 0,
            servers_exhausted: vec![],
            max_concurrent: 2,
            min_capacity_fraction: 0.5,
            lead_s_median: None,
        };
        let mut rejuv = r.clone();
        rejuv.policy = "rejuv".into();
        rejuv.period_s = None;
        let json = serde_json::to_value(Summary {
            policies: vec![rejuv, r],
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"policies": [
                {"policy": "rejuv", "rejuvenations": 3, "exhaustions": 0, "servers_exhausted": [],
                 "max_concurrent": 2, "min_capacity_fraction": 0.5, "lead_s_median": null},
                {"policy": "fixed:auto", "period_s": 1380.0, "rejuvenations": 3, "exhaustions": 0,
                 "servers_exhausted": [], "max_concurrent": 2, "min_capacity_fraction": 0.5,
                 "lead_s_median": null},
            ]})
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(fmt_duration(45.0), "45s");
        assert_eq!(fmt_duration(185.0), "3m05s");
        assert_eq!(fmt_duration(3.0 * 3600.0 + 300.0), "3h05m");
        assert_eq!(fmt_duration(2.0 * 86_400.0 + 4.0 * 3600.0), "2d04h");
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
