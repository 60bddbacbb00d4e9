//! The input of `rejuv whatif`: a fleet directory with `fleet.csv` and one `SERVER.csv` per
//! server, read into a [`Fleet`] of [`Series`].
//!
//! - `fleet.csv`: a header with the columns `server` and `capacity`, and optionally `role`
//!   (`primary`, the default, or `spare`) and `units` (serving capacity, default 1), in any
//!   order; one row per server. `capacity` is the value at which that server's series is
//!   exhausted, in the series' own unit.
//! - `SERVER.csv`: the format `rejuv analyze` reads (a header, then `t_seconds,value` rows,
//!   times strictly increasing); `t_seconds` from one origin for the whole fleet; gaps allowed.
//!
//! # Errors
//! Every problem is a [`WhatifError`] naming the file and, where there is one, the 1-based
//! line: a missing `fleet.csv`, a server without a series file, a series file without a row in
//! `fleet.csv`, a malformed row, a value that is not a number, times that do not increase, an
//! empty file.

use super::WhatifError;
use rejuv_core::detect::analyze::{parse_csv, AnalyzeError};
use rejuv_core::types::Role;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The name of the fleet file in a fleet directory.
pub const FLEET_FILE: &str = "fleet.csv";

/// Longest server id (it becomes a file name and a config id).
const MAX_ID: usize = 64;

/// Most serving units one server may have.
const MAX_UNITS: u32 = 1_000_000;

/// One server's recorded series and what `fleet.csv` says of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub id: String,
    /// The value at which the series is exhausted (`>=`).
    pub capacity: f64,
    pub role: Role,
    /// Serving capacity, in units.
    pub units: u32,
    /// Sample times, seconds, strictly increasing, at least one.
    pub t: Vec<f64>,
    /// The recorded values, one per time.
    pub v: Vec<f64>,
}

impl Series {
    /// Time of the first sample, seconds (the series' `t_0`).
    pub fn t0(&self) -> f64 {
        self.t[0]
    }

    /// Time of the last sample, seconds.
    pub fn t_last(&self) -> f64 {
        self.t[self.t.len() - 1]
    }

    /// Index of the newest sample taken at or before `t_s`, if any.
    pub fn at_or_before(&self, t_s: f64) -> Option<usize> {
        self.t.partition_point(|&x| x <= t_s).checked_sub(1)
    }
}

/// A fleet: its servers in `fleet.csv` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub servers: Vec<Series>,
}

impl Fleet {
    /// First sample of the fleet, seconds: the replay starts here.
    pub fn start_s(&self) -> f64 {
        self.servers
            .iter()
            .map(Series::t0)
            .fold(f64::INFINITY, f64::min)
    }

    /// Last sample of the fleet, seconds: the replay ends here.
    pub fn end_s(&self) -> f64 {
        self.servers
            .iter()
            .map(Series::t_last)
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// Serving units of the primaries.
    pub fn primary_units(&self) -> u64 {
        self.servers
            .iter()
            .filter(|s| s.role == Role::Primary)
            .map(|s| u64::from(s.units))
            .sum()
    }

    /// Samples in all series.
    pub fn samples(&self) -> usize {
        self.servers.iter().map(|s| s.t.len()).sum()
    }
}

/// One row of `fleet.csv`, before its series is read.
struct Row {
    line: usize,
    id: String,
    capacity: f64,
    role: Role,
    units: u32,
}

/// Reads a fleet directory.
pub fn read_fleet(dir: &Path) -> Result<Fleet, WhatifError> {
    let fleet_path = dir.join(FLEET_FILE);
    let text = read_text(&fleet_path).map_err(|e| match e {
        WhatifError::Input { file, line, .. } if line.is_none() && !fleet_path.exists() => {
            WhatifError::Input {
                file,
                line: None,
                reason: format!(
                    "not found: a fleet directory holds {FLEET_FILE} (`server,capacity` with optional `role` and `units` columns) and one SERVER.csv per server"
                ),
            }
        }
        other => other,
    })?;
    let rows = parse_fleet(&fleet_path, &text)?;
    check_no_orphans(dir, &rows)?;
    let mut servers = Vec::with_capacity(rows.len());
    for row in rows {
        let path = dir.join(format!("{}.csv", row.id));
        if !path.is_file() {
            return Err(WhatifError::input(
                &fleet_path,
                Some(row.line),
                format!(
                    "server {} has no series: {} not found",
                    row.id,
                    path.display()
                ),
            ));
        }
        let text = read_text(&path)?;
        let (t, v) = parse_series(&path, &text)?;
        servers.push(Series {
            id: row.id,
            capacity: row.capacity,
            role: row.role,
            units: row.units,
            t,
            v,
        });
    }
    Ok(Fleet { servers })
}

/// A file's text: missing or unreadable is bad input, and so is a file that is not UTF-8.
fn read_text(path: &Path) -> Result<String, WhatifError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => WhatifError::input(path, None, "not found"),
        _ => WhatifError::Io {
            file: path.to_path_buf(),
            source: e,
        },
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        WhatifError::input(path, Some(line), "not text (invalid UTF-8)")
    })
}

/// Which column of `fleet.csv` holds what.
struct Columns {
    server: usize,
    capacity: usize,
    role: Option<usize>,
    units: Option<usize>,
    count: usize,
}

fn parse_header(path: &Path, line: usize, header: &str) -> Result<Columns, WhatifError> {
    let names: Vec<String> = header
        .split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .collect();
    let mut found: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, n) in names.iter().enumerate() {
        let known = ["server", "capacity", "role", "units"];
        let Some(k) = known.iter().find(|k| **k == n.as_str()) else {
            return Err(WhatifError::input(
                path,
                Some(line),
                format!(
                    "unknown column `{}`: the header is `server,capacity` with optional `role` and `units`",
                    rejuv_core::text::clean(n, 40)
                ),
            ));
        };
        if found.insert(k, i).is_some() {
            return Err(WhatifError::input(
                path,
                Some(line),
                format!("column `{k}` appears twice"),
            ));
        }
    }
    let need = |k: &str| {
        found.get(k).copied().ok_or_else(|| {
            WhatifError::input(
                path,
                Some(line),
                format!("no `{k}` column: the header is `server,capacity` with optional `role` and `units`"),
            )
        })
    };
    Ok(Columns {
        server: need("server")?,
        capacity: need("capacity")?,
        role: found.get("role").copied(),
        units: found.get("units").copied(),
        count: names.len(),
    })
}

fn parse_fleet(path: &Path, text: &str) -> Result<Vec<Row>, WhatifError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let Some((hline, header)) = lines.next() else {
        return Err(WhatifError::input(
            path,
            Some(1),
            "the file is empty: expected the header `server,capacity` and a row per server",
        ));
    };
    let cols = parse_header(path, hline, header)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
    for (line, l) in lines {
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        let bad = |reason: String| WhatifError::input(path, Some(line), reason);
        if fields.len() != cols.count {
            return Err(bad(format!(
                "expected {} fields as the header says, found {}",
                cols.count,
                fields.len()
            )));
        }
        let id = fields[cols.server];
        if id.is_empty()
            || id.len() > MAX_ID
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(format!(
                "server `{}` must be 1 to {MAX_ID} letters, digits, '-' or '_' (it names the file SERVER.csv)",
                rejuv_core::text::clean(id, 40)
            )));
        }
        if let Some(first) = first_line.insert(id.to_string(), line) {
            return Err(bad(format!(
                "server {id} is listed twice (first on line {first})"
            )));
        }
        let cap_text = fields[cols.capacity];
        let capacity = cap_text
            .parse::<f64>()
            .ok()
            .filter(|c| c.is_finite() && *c > 0.0)
            .ok_or_else(|| {
                bad(format!(
                    "capacity `{}` is not a positive number",
                    rejuv_core::text::clean(cap_text, 40)
                ))
            })?;
        let role = match cols.role.map(|i| fields[i]) {
            None | Some("") | Some("primary") => Role::Primary,
            Some("spare") => Role::Spare,
            Some(other) => {
                return Err(bad(format!(
                    "role `{}` is neither `primary` nor `spare`",
                    rejuv_core::text::clean(other, 40)
                )))
            }
        };
        let units = match cols.units.map(|i| fields[i]) {
            None | Some("") => 1,
            Some(u) => u
                .parse::<u32>()
                .ok()
                .filter(|u| (1..=MAX_UNITS).contains(u))
                .ok_or_else(|| {
                    bad(format!(
                        "units `{}` is not a whole number from 1 to {MAX_UNITS}",
                        rejuv_core::text::clean(u, 40)
                    ))
                })?,
        };
        rows.push(Row {
            line,
            id: id.to_string(),
            capacity,
            role,
            units,
        });
    }
    if rows.is_empty() {
        return Err(WhatifError::input(
            path,
            Some(hline),
            "a header and no servers: add a row `SERVER,CAPACITY` per series file",
        ));
    }
    if !rows.iter().any(|r| r.role == Role::Primary) {
        return Err(WhatifError::input(
            path,
            Some(hline),
            "every server is a spare: at least one must be a primary",
        ));
    }
    Ok(rows)
}

/// A series file without a row in `fleet.csv` is an error rather than left out: a fleet
/// replayed without some of its servers would look healthier than it is.
fn check_no_orphans(dir: &Path, rows: &[Row]) -> Result<(), WhatifError> {
    let entries = std::fs::read_dir(dir).map_err(|e| WhatifError::Io {
        file: dir.to_path_buf(),
        source: e,
    })?;
    let mut orphans: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WhatifError::Io {
            file: dir.to_path_buf(),
            source: e,
        })?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".csv") else {
            continue;
        };
        if name == FLEET_FILE || !path.is_file() {
            continue;
        }
        if !rows.iter().any(|r| r.id == stem) {
            orphans.push(path);
        }
    }
    orphans.sort();
    match orphans.first() {
        None => Ok(()),
        Some(first) => {
            let stem = first
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let more = if orphans.len() > 1 {
                format!(
                    " ({} more series files have no row either)",
                    orphans.len() - 1
                )
            } else {
                String::new()
            };
            Err(WhatifError::input(
                first,
                None,
                format!(
                    "server {} has no row in {}: add `{},CAPACITY`{more}",
                    rejuv_core::text::clean(&stem, 40),
                    dir.join(FLEET_FILE).display(),
                    rejuv_core::text::clean(&stem, 40)
                ),
            ))
        }
    }
}

/// A series file's times and values.
fn parse_series(path: &Path, text: &str) -> Result<(Vec<f64>, Vec<f64>), WhatifError> {
    let points = parse_csv(text).map_err(|e| analyze_error(path, e))?;
    if points.is_empty() {
        let header_line = text
            .lines()
            .position(|l| !l.trim().is_empty())
            .map_or(1, |i| i + 1);
        return Err(WhatifError::input(
            path,
            Some(header_line),
            "a header and no samples: expected `t_seconds,value` rows",
        ));
    }
    Ok(points.iter().map(|p| (p.t_s, p.value)).unzip())
}

/// The CSV reader's error, as this file and line.
fn analyze_error(path: &Path, e: AnalyzeError) -> WhatifError {
    let line = match &e {
        AnalyzeError::Header { line, .. }
        | AnalyzeError::Fields { line, .. }
        | AnalyzeError::Time { line, .. }
        | AnalyzeError::Value { line, .. } => Some(*line),
        AnalyzeError::Empty => {
            return WhatifError::input(
                path,
                Some(1),
                "the file is empty: expected a header line `t_seconds,value` and rows",
            )
        }
        AnalyzeError::Capacity | AnalyzeError::Config(_) => None,
    };
    let text = e.to_string();
    let reason = match line {
        Some(n) => text
            .strip_prefix(&format!("line {n}: "))
            .unwrap_or(&text)
            .to_string(),
        None => text,
    };
    WhatifError::input(path, line, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    /// The error's text for a fleet directory holding `files`.
    fn error(files: &[(&str, &str)]) -> (String, Option<usize>, String) {
        let d = dir_with(files);
        match read_fleet(d.path()) {
            Ok(f) => panic!("accepted: {f:?}"),
            Err(WhatifError::Input { file, line, reason }) => (
                file.file_name().unwrap().to_string_lossy().to_string(),
                line,
                reason,
            ),
            Err(other) => panic!("not an input error: {other}"),
        }
    }

    const S1: &str = "t_seconds,value\n0,10\n10,20\n";

    #[test]
    fn a_fleet_directory_is_read_with_its_optional_columns() {
        let d = dir_with(&[
            (
                "fleet.csv",
                "units,server,role,capacity\n2,a,primary,100\n,b,spare,50.5\n",
            ),
            ("a.csv", S1),
            ("b.csv", "t,v\n5,1\n"),
        ]);
        let f = read_fleet(d.path()).unwrap();
        assert_eq!(f.servers.len(), 2);
        let (a, b) = (&f.servers[0], &f.servers[1]);
        assert_eq!(
            (a.id.as_str(), a.capacity, a.role, a.units),
            ("a", 100.0, Role::Primary, 2)
        );
        assert_eq!((b.role, b.units, b.capacity), (Role::Spare, 1, 50.5));
        assert_eq!(
            (a.t.clone(), a.v.clone()),
            (vec![0.0, 10.0], vec![10.0, 20.0])
        );
        assert_eq!((f.start_s(), f.end_s(), f.primary_units()), (0.0, 10.0, 2));
        assert_eq!(a.at_or_before(9.9), Some(0));
        assert_eq!(a.at_or_before(10.0), Some(1));
        assert_eq!(b.at_or_before(4.0), None);
    }

    #[test]
    fn a_series_file_without_a_fleet_row_is_named() {
        let (file, line, reason) = error(&[
            ("fleet.csv", "server,capacity\na,100\n"),
            ("a.csv", S1),
            ("zz.csv", S1),
        ]);
        assert_eq!((file.as_str(), line), ("zz.csv", None));
        assert!(reason.contains("server zz has no row in"), "{reason}");
    }

    #[test]
    fn a_fleet_row_without_a_series_file_names_the_row() {
        let (file, line, reason) = error(&[
            ("fleet.csv", "server,capacity\na,100\nb,5\n"),
            ("a.csv", S1),
        ]);
        assert_eq!((file.as_str(), line), ("fleet.csv", Some(3)));
        assert!(reason.contains("server b has no series"), "{reason}");
    }

    #[test]
    fn a_missing_fleet_file_says_what_a_fleet_directory_holds() {
        let (file, line, reason) = error(&[("a.csv", S1)]);
        assert_eq!((file.as_str(), line), ("fleet.csv", None));
        assert!(
            reason.starts_with("not found: a fleet directory holds"),
            "{reason}"
        );
    }

    #[test]
    fn bad_fleet_rows_name_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "the file is empty"),
            ("server\na\n", 1, "no `capacity` column"),
            ("server,capacity,colour\n", 1, "unknown column `colour`"),
            ("server,capacity\n", 1, "a header and no servers"),
            (
                "server,capacity\na,100\na,100\n",
                3,
                "listed twice (first on line 2)",
            ),
            (
                "server,capacity\na,abc\n",
                2,
                "capacity `abc` is not a positive number",
            ),
            ("server,capacity\na,0\n", 2, "is not a positive number"),
            ("server,capacity\na\n", 2, "expected 2 fields"),
            ("server,capacity\n../x,5\n", 2, "must be 1 to 64 letters"),
            ("server,capacity,role\na,5,leader\n", 2, "role `leader`"),
            ("server,capacity,units\na,5,0\n", 2, "units `0`"),
            (
                "server,capacity,role\na,5,spare\n",
                1,
                "every server is a spare",
            ),
        ];
        for (fleet, want_line, want) in cases {
            let (file, line, reason) = error(&[("fleet.csv", fleet), ("a.csv", S1)]);
            assert_eq!(file, "fleet.csv", "{fleet:?}");
            assert_eq!(line, Some(*want_line), "{fleet:?}: {reason}");
            assert!(reason.contains(want), "{fleet:?}: {reason}");
        }
    }

    #[test]
    fn bad_series_name_the_file_and_line() {
        let cases: &[(&str, Option<usize>, &str)] = &[
            ("", Some(1), "the file is empty"),
            ("t_seconds,value\n", Some(1), "a header and no samples"),
            (
                "t_seconds,value\n0,1\n10,abc\n",
                Some(3),
                "value `abc` is not a number",
            ),
            (
                "t_seconds,value\n0,1\n10,2\n5,3\n",
                Some(4),
                "does not increase",
            ),
            (
                "t_seconds,value\n0,1\n10,2,3\n",
                Some(3),
                "expected two fields",
            ),
        ];
        for (series, want_line, want) in cases {
            let (file, line, reason) =
                error(&[("fleet.csv", "server,capacity\na,100\n"), ("a.csv", series)]);
            assert_eq!(file, "a.csv");
            assert_eq!(line, *want_line, "{series:?}: {reason}");
            assert!(reason.contains(want), "{series:?}: {reason}");
        }
        let d = dir_with(&[("fleet.csv", "server,capacity\na,100\n")]);
        std::fs::write(d.path().join("a.csv"), b"t,v\n0,1\n\xff\xfe\n").unwrap();
        let e = read_fleet(d.path()).unwrap_err().to_string();
        assert!(e.ends_with("a.csv line 3: not text (invalid UTF-8)"), "{e}");
    }
}
