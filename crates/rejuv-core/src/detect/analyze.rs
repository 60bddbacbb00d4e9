//! `rejuv analyze`: one recorded series, fed to the trend detector sample by sample.
//!
//! The input is a CSV with a header line and `t_seconds,value` rows (e.g. bytes sampled every
//! 10 s). Every row is given to the same [`SeriesDetector`] the controller uses, in order,
//! never looking ahead; the report says when the first unstable judgement came
//! (`detected_at`), the forecast time to exhaustion then (`tte_s`), and the explanation.
//! [`render_text`] draws the series and the trend line in a terminal.
//!
//! # Errors
//! A malformed CSV is an [`AnalyzeError`] naming the 1-based line: a missing header, a row
//! without exactly two fields, a value that is not a non-negative number, a time that is not a
//! finite non-negative number or does not increase.
//!
//! # Assumptions
//! Values and capacity up to 2^63 are accepted. Integers are parsed exactly (as `u64`) and then
//! held as `f64`, whose 53-bit mantissa keeps about 16 significant digits: ample for trend
//! statistics, though two values differing only in their last units near 2^63 may count as a
//! tie.

use super::detector::fmt_bytes;
use super::level::Level;
use super::trend::{fmt_duration, Aggregate, SeriesDetector};
use crate::config::TrendConfig;
use serde::Serialize;

/// Why a CSV could not be analyzed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AnalyzeError {
    #[error("the input is empty: expected a header line `t_seconds,value` and rows")]
    Empty,
    #[error("line {line}: expected a header line such as `t_seconds,value`, found `{found}`")]
    Header { line: usize, found: String },
    #[error("line {line}: expected two fields `t_seconds,value`, found {found}")]
    Fields { line: usize, found: usize },
    #[error("line {line}: t_seconds `{text}` {reason}")]
    Time {
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error("line {line}: value `{text}` {reason}")]
    Value {
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error("the capacity must be greater than zero")]
    Capacity,
    #[error("the config is not usable: {0}")]
    Config(String),
}

/// One row of the input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub t_s: f64,
    pub value: f64,
}

/// The explanation of a detection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyzeExplanation {
    /// Which rule fired: `trend`.
    pub rule: String,
    /// The value at detection, and the capacity.
    pub value: f64,
    pub limit: f64,
    /// The estimated level at detection (robust to noise), for the trend line.
    pub level: f64,
    pub slope_per_s: f64,
    pub tte_s: f64,
    pub tte_low_s: f64,
    /// `null` when the slope's lower bound is not positive.
    pub tte_high_s: Option<f64>,
    pub confidence: f64,
    /// The window of the scale that fired, seconds.
    pub window_s: f64,
    pub message: String,
}

/// What `rejuv analyze` prints (as JSON, or through [`render_text`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyzeReport {
    /// Seconds (the CSV's time) of the first unstable judgement, or `null`.
    pub detected_at: Option<f64>,
    /// The forecast time to exhaustion at that moment, seconds.
    pub tte_s: Option<f64>,
    pub explanation: Option<AnalyzeExplanation>,
    pub samples: usize,
    pub capacity: u64,
    /// Seconds of the first value at or above the capacity, if the series got there.
    pub exhausted_at: Option<f64>,
}

/// Parses the CSV into points, checking every row.
pub fn parse_csv(text: &str) -> Result<Vec<Point>, AnalyzeError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    let (hline, header) = lines
        .by_ref()
        .find(|(_, l)| !l.is_empty())
        .ok_or(AnalyzeError::Empty)?;
    let hfields: Vec<&str> = header.split(',').map(str::trim).collect();
    if hfields.len() != 2 || hfields[0].parse::<f64>().is_ok() {
        return Err(AnalyzeError::Header {
            line: hline,
            found: crate::text::clean(header, 60),
        });
    }
    let mut out: Vec<Point> = Vec::new();
    for (line, l) in lines {
        if l.is_empty() {
            continue;
        }
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        if fields.len() != 2 {
            return Err(AnalyzeError::Fields {
                line,
                found: fields.len(),
            });
        }
        let quoted = |f: &str| crate::text::clean(f, MAX_QUOTED);
        let t_s = parse_number(fields[0])
            .and_then(|t| {
                if t > MAX_T_SECONDS {
                    Err("is beyond 1e12 seconds (times are seconds since the series began, or Unix times)")
                } else {
                    Ok(t)
                }
            })
            .map_err(|reason| AnalyzeError::Time {
                line,
                text: quoted(fields[0]),
                reason,
            })?;
        let value = parse_number(fields[1]).map_err(|reason| AnalyzeError::Value {
            line,
            text: quoted(fields[1]),
            reason,
        })?;
        if let Some(prev) = out.last() {
            if t_s <= prev.t_s {
                return Err(AnalyzeError::Time {
                    line,
                    text: quoted(fields[0]),
                    reason: "does not increase (times must be strictly increasing)",
                });
            }
        }
        out.push(Point { t_s, value });
    }
    Ok(out)
}

/// Latest time a row may carry (seconds): about 31,700 years, far beyond any Unix time of a
/// sample, and low enough that every time stays exact in milliseconds (the detector's unit)
/// instead of saturating.
pub const MAX_T_SECONDS: f64 = 1e12;

/// Longest field quoted in an error (a bad field may be megabytes long).
const MAX_QUOTED: usize = 40;

/// A non-negative finite number: exact as an integer up to `u64::MAX`, else a decimal.
fn parse_number(s: &str) -> Result<f64, &'static str> {
    if let Ok(v) = s.parse::<u64>() {
        return Ok(v as f64);
    }
    if s.starts_with('-') {
        return Err("is negative");
    }
    let v: f64 = s.parse().map_err(|_| "is not a number")?;
    if !v.is_finite() {
        return Err("is not a finite number");
    }
    if v < 0.0 {
        return Err("is negative");
    }
    Ok(v)
}

/// Parses `text` and feeds it to the detector against `capacity`.
pub fn analyze_csv(
    text: &str,
    capacity: u64,
    cfg: &TrendConfig,
) -> Result<AnalyzeReport, AnalyzeError> {
    let points = parse_csv(text)?;
    analyze_points(&points, capacity, cfg)
}

/// Feeds parsed points to the detector against `capacity`.
pub fn analyze_points(
    points: &[Point],
    capacity: u64,
    cfg: &TrendConfig,
) -> Result<AnalyzeReport, AnalyzeError> {
    if capacity == 0 {
        return Err(AnalyzeError::Capacity);
    }
    let problems = cfg.validate("trend");
    if !problems.is_empty() {
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(AnalyzeError::Config(all.join("; ")));
    }
    let cap = capacity as f64;
    let mut det = SeriesDetector::new(cfg, cap, Aggregate::Max);
    let mut report = AnalyzeReport {
        detected_at: None,
        tte_s: None,
        explanation: None,
        samples: points.len(),
        capacity,
        exhausted_at: points.iter().find(|p| p.value >= cap).map(|p| p.t_s),
    };
    for p in points {
        // Milliseconds: ample for 10 s samples over centuries of input.
        let v = det.observe((p.t_s * 1000.0).round() as u64, p.value);
        if v.level == Level::Unstable {
            if let Some(f) = v.forecast {
                report.detected_at = Some(p.t_s);
                report.tte_s = Some(f.tte_s);
                let range = match f.tte_high_s {
                    Some(hi) => format!("{}–{}", fmt_duration(f.tte_low_s), fmt_duration(hi)),
                    None => format!("{} or later", fmt_duration(f.tte_low_s)),
                };
                let message = format!(
                    "the series will reach {} in about {} (rising {}/h, confidence {:.0}%; range {range})",
                    fmt_quantity(cap),
                    fmt_duration(f.tte_s),
                    fmt_quantity(f.slope_per_s * 3600.0),
                    (f.confidence * 100.0).floor().min(99.0)
                );
                report.explanation = Some(AnalyzeExplanation {
                    rule: "trend".into(),
                    value: p.value,
                    limit: cap,
                    level: f.level,
                    slope_per_s: f.slope_per_s,
                    tte_s: f.tte_s,
                    tte_low_s: f.tte_low_s,
                    tte_high_s: f.tte_high_s,
                    confidence: f.confidence,
                    window_s: f.window_s,
                    message,
                });
                break;
            }
        }
    }
    Ok(report)
}

/// A unit-less quantity with a decimal suffix: `210M`, `8.6G`, `950`.
fn fmt_quantity(v: f64) -> String {
    // The byte formatter's suffixes without the unit.
    fmt_bytes(v)
        .replace(" B", "")
        .replace("B", "")
        .replace(' ', "")
}

/// The chart's width and height, in characters.
const W: usize = 64;
const H: usize = 12;

/// Where a time and a value fall on the chart: time runs from the first sample to the last,
/// or to the forecast exhaustion when there is one; values span the series and the capacity.
struct Axes {
    t0: f64,
    t_end: f64,
    vmin: f64,
    vmax: f64,
}

impl Axes {
    fn new(report: &AnalyzeReport, series: &[Point]) -> Self {
        let cap = report.capacity as f64;
        let t0 = series[0].t_s;
        let t_end_series = series[series.len() - 1].t_s;
        let t_end = match (report.detected_at, report.tte_s) {
            (Some(d), Some(tte)) => t_end_series.max(d + tte),
            _ => t_end_series,
        }
        .max(t0 + 1e-9);
        let vmin = series
            .iter()
            .map(|p| p.value)
            .fold(f64::INFINITY, f64::min)
            .min(cap);
        let vmax = cap.max(series.iter().map(|p| p.value).fold(0.0, f64::max));
        Self {
            t0,
            t_end,
            vmin,
            vmax,
        }
    }

    fn col(&self, t: f64) -> usize {
        (((t - self.t0) / (self.t_end - self.t0)) * (W - 1) as f64).round() as usize
    }

    fn row(&self, v: f64) -> usize {
        let span_v = (self.vmax - self.vmin).max(f64::MIN_POSITIVE);
        let r = ((v - self.vmin) / span_v * (H - 1) as f64).round();
        (H - 1) - (r.clamp(0.0, (H - 1) as f64) as usize)
    }

    /// The time at the middle of column `c`.
    fn time_at(&self, c: usize) -> f64 {
        self.t0 + (self.t_end - self.t0) * c as f64 / (W - 1) as f64
    }
}

type Grid = Vec<Vec<char>>;

/// The report for people: a chart of the series with the trend line, and the verdict.
pub fn render_text(report: &AnalyzeReport, series: &[Point]) -> String {
    if series.is_empty() {
        return "no samples\n".into();
    }
    let axes = Axes::new(report, series);
    let mut grid: Grid = vec![vec![' '; W]; H];
    let cap_row = axes.row(report.capacity as f64);
    grid[cap_row].fill('-');
    draw_trend(&mut grid, &axes, report);
    draw_series(&mut grid, &axes, series);
    let mut out = frame(&grid, &axes, cap_row);
    out += &verdict(report);
    out
}

/// The trend line, from one window before detection to the forecast exhaustion, and the
/// detection's column.
fn draw_trend(grid: &mut Grid, axes: &Axes, report: &AnalyzeReport) {
    let (Some(d), Some(e)) = (report.detected_at, report.explanation.as_ref()) else {
        return;
    };
    let from = (d - e.window_s).max(axes.t0);
    let to = d + e.tte_s;
    let (c_from, c_to) = (axes.col(from), axes.col(to).min(W - 1));
    let marks = (c_from..=c_to).filter_map(|c| {
        let v = e.level + e.slope_per_s * (axes.time_at(c) - d);
        (axes.vmin..=axes.vmax)
            .contains(&v)
            .then(|| (axes.row(v), c))
    });
    for (r, c) in marks {
        grid[r][c] = '.';
    }
    for r in grid.iter_mut() {
        if r[axes.col(d)] == ' ' {
            r[axes.col(d)] = '|';
        }
    }
}

/// The series: the highest value per column.
fn draw_series(grid: &mut Grid, axes: &Axes, series: &[Point]) {
    let mut colmax = vec![f64::NEG_INFINITY; W];
    for p in series {
        let c = axes.col(p.t_s);
        colmax[c] = colmax[c].max(p.value);
    }
    for (c, v) in colmax.iter().enumerate() {
        if v.is_finite() {
            grid[axes.row(*v)][c] = '*';
        }
    }
}

/// The grid with its value labels, the time axis and the legend.
fn frame(grid: &Grid, axes: &Axes, cap_row: usize) -> String {
    let mut out = String::new();
    for (i, r) in grid.iter().enumerate() {
        let label = if i == 0 {
            fmt_quantity(axes.vmax)
        } else if i == H - 1 {
            fmt_quantity(axes.vmin)
        } else if i == cap_row {
            "cap".into()
        } else {
            String::new()
        };
        out += &format!("{label:>7} |{}\n", r.iter().collect::<String>());
    }
    let (left, right) = (format!("{}s", axes.t0), format!("{:.0}s", axes.t_end));
    out += &format!("{:>7} +{}\n", "", "-".repeat(W));
    out += &format!(
        "{:>7}  {left:<w$}{right}\n",
        "",
        w = W.saturating_sub(right.len())
    );
    out += "         * series   . trend line   | detection   - capacity\n\n";
    out
}

/// When the series was judged unstable and why, and when it reached the capacity.
fn verdict(report: &AnalyzeReport) -> String {
    let mut out = match (&report.explanation, report.detected_at) {
        (Some(e), Some(d)) => format!("detected at {d}s: {}\n", e.message),
        _ => format!(
            "no exhaustion forecast within the horizon in {} samples\n",
            report.samples
        ),
    };
    if let Some(x) = report.exhausted_at {
        out += &format!("the series reached the capacity at {x}s\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn leak_csv(n: usize, step: f64, cap: f64, ttx: f64) -> String {
        let mut s = String::from("t_seconds,value\n");
        for i in 0..n {
            let t = i as f64 * step;
            // Deterministic wiggle so there are no ties and some noise.
            let wiggle = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
            let v = cap * (0.3 + 0.7 * t / ttx + 0.004 * wiggle);
            s += &format!("{t},{}\n", v.max(0.0).round() as u64);
        }
        s
    }

    #[test]
    fn a_linear_leak_is_detected_with_a_forecast_near_the_truth() {
        let cap = 8u64 << 30;
        // Exhausts after 10 h; 10 s samples for 9 h.
        let csv = leak_csv(3240, 10.0, cap as f64, 36_000.0);
        let r = analyze_csv(&csv, cap, &TrendConfig::default()).unwrap();
        let d = r.detected_at.expect("detected");
        let truth = 36_000.0 - d;
        let tte = r.tte_s.unwrap();
        assert!(truth >= 600.0, "detected only {truth}s before exhaustion");
        assert!(
            (tte - truth).abs() / truth < 0.15,
            "forecast {tte} vs truth {truth}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["detected_at"].as_f64(), Some(d));
        assert!(json["explanation"]["message"]
            .as_str()
            .unwrap()
            .contains("in about"));
        let text = render_text(&r, &parse_csv(&csv).unwrap());
        assert!(
            text.contains('*') && text.contains('.') && text.contains("detected at"),
            "{text}"
        );
    }

    #[test]
    fn a_flat_series_is_not_detected_and_serializes_null() {
        let mut csv = String::from("t_seconds,value\n");
        for i in 0..2000 {
            csv += &format!("{},{}\n", i * 10, 500 + (i * 37) % 11);
        }
        let r = analyze_csv(&csv, 1000, &TrendConfig::default()).unwrap();
        assert_eq!(r.detected_at, None);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["detected_at"].is_null() && json["tte_s"].is_null());
        assert!(render_text(&r, &parse_csv(&csv).unwrap()).contains("no exhaustion forecast"));
    }

    #[test]
    fn values_up_to_2_pow_63_are_accepted() {
        let cap = 1u64 << 63;
        let mut csv = String::from("t,v\n");
        for i in 0..400u64 {
            csv += &format!("{},{}\n", i, (cap / 400) * i);
        }
        let cfg = TrendConfig::scaled(Duration::from_secs(120));
        let r = analyze_csv(&csv, cap, &cfg).unwrap();
        assert_eq!(r.samples, 400);
        assert!(r.detected_at.is_some(), "{r:?}");
        assert!(parse_csv(&format!("t,v\n0,{}\n", u64::MAX)).is_ok());
    }

    #[test]
    fn malformed_input_names_the_line() {
        let cases = [
            ("", AnalyzeError::Empty),
            (
                "0,1\n",
                AnalyzeError::Header {
                    line: 1,
                    found: "0,1".into(),
                },
            ),
            (
                "t,v\n0,1\n10,2,3\n",
                AnalyzeError::Fields { line: 3, found: 3 },
            ),
            (
                "t,v\n0,1\n10,-2\n",
                AnalyzeError::Value {
                    line: 3,
                    text: "-2".into(),
                    reason: "is negative",
                },
            ),
            (
                "t,v\n0,1\n10,NaN\n",
                AnalyzeError::Value {
                    line: 3,
                    text: "NaN".into(),
                    reason: "is not a finite number",
                },
            ),
            (
                "t,v\n0,1\n10,abc\n",
                AnalyzeError::Value {
                    line: 3,
                    text: "abc".into(),
                    reason: "is not a number",
                },
            ),
            (
                "t,v\n0,1\n\n0,2\n",
                AnalyzeError::Time {
                    line: 4,
                    text: "0".into(),
                    reason: "does not increase (times must be strictly increasing)",
                },
            ),
            (
                "t,v\n0,1\n2e16,2\n",
                AnalyzeError::Time {
                    line: 3,
                    text: "2e16".into(),
                    reason: "is beyond 1e12 seconds (times are seconds since the series began, or Unix times)",
                },
            ),
            (
                "t,v\n-5,1\n",
                AnalyzeError::Time {
                    line: 2,
                    text: "-5".into(),
                    reason: "is negative",
                },
            ),
        ];
        for (csv, want) in cases {
            assert_eq!(parse_csv(csv), Err(want.clone()), "{csv:?}");
            assert!(want.to_string().contains("line") || csv.is_empty());
        }
        assert_eq!(
            analyze_csv("t,v\n0,1\n", 0, &TrendConfig::default()),
            Err(AnalyzeError::Capacity)
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,200}") {
            let _ = parse_csv(&text);
        }

        #[test]
        fn valid_rows_parse_exactly(
            rows in proptest::collection::vec((1u64..1_000_000, 0u64..=u64::MAX), 1..50),
        ) {
            let mut csv = String::from("t_seconds,value\r\n");
            let mut t = 0u64;
            let mut want = Vec::new();
            for (dt, v) in &rows {
                t += dt;
                csv += &format!("{t}, {v}\r\n");
                want.push(Point { t_s: t as f64, value: *v as f64 });
            }
            proptest::prop_assert_eq!(parse_csv(&csv).unwrap(), want);
        }
    }
}
