//! `rejuv whatif`: the command line of [`rejuv_sim::whatif`]: a fleet's recorded series
//! replayed through the `rejuv` policy (the production core) and cron-like baselines, printed
//! as a table, as JSON alone on stdout (`--output json`), or as a self-contained HTML report
//! (`--html FILE`). The series come from a fleet directory (`--samples DIR`) or from a
//! Prometheus server (`--prometheus URL --query Q --since D`, see [`prometheus_fleet`]).
//! Exit codes: 0 done, 2 bad input or usage (the message names the file and line, the field,
//! or the Prometheus URL, query and server), 1 a file that could not be read or written.

use crate::conn::{Output, EXIT_RUNTIME, EXIT_USAGE};
use crate::table::{render, secs, table};
use anyhow::Context;
use rejuv_sim::whatif::{self, Options, Policy, PolicySections, Progress, ResetModel};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The policies compared when none is given.
const DEFAULT_POLICIES: [&str; 2] = ["rejuv", "fixed:auto"];

#[derive(clap::Args, Debug)]
pub struct WhatifArgs {
    /// A fleet directory: `fleet.csv` (`server,capacity` with optional `role` and `units`
    /// columns) and one `SERVER.csv` (`t_seconds,value`) per server.
    #[arg(long, value_name = "DIR", required_unless_present = "prometheus")]
    pub samples: Option<PathBuf>,
    /// The policy of `rejuv`: the `[policy]`, `[gate]`, `[budget]` and `[rejuvenation]`
    /// sections of this file (default: built-in defaults for a fleet sampled every 10 s,
    /// see docs/whatif.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A policy to replay (repeat to compare): `rejuv`, `fixed:DURATION`, `fixed:auto` (the
    /// period with the fewest restarts and no exhaustion) or `threshold:FRACTION`.
    /// Default: `rejuv` and `fixed:auto`.
    #[arg(long = "policy", value_name = "POLICY")]
    pub policies: Vec<String>,
    /// `table` for people, `json` for scripts (`{"policies": [...]}` alone on stdout).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Also write a self-contained HTML report: the figures, and a chart per server.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// What a rejuvenation does to the series afterwards: `offset` (what leaked before it is
    /// gone: recorded(t) − max(0, recorded(t_r) − recorded(t_0))) or `replay` (the series
    /// starts over: recorded(t_0 + t − t_r)).
    #[arg(long, value_name = "MODEL", default_value = "offset", value_parser = ResetModel::NAMES)]
    pub reset_model: String,
    /// Read the series from a Prometheus server instead of --samples (with --query and
    /// --since).
    #[arg(long, value_name = "URL", conflicts_with = "samples", requires_all = ["query", "since"])]
    pub prometheus: Option<String>,
    /// The PromQL query of one series per server (with --prometheus).
    #[arg(long, value_name = "PROMQL", requires = "prometheus")]
    pub query: Option<String>,
    /// How far back to read (with --prometheus).
    #[arg(long, value_name = "DURATION", requires = "prometheus", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// The step of the range query (with --prometheus; default: 10 s, or longer so that a
    /// series holds at most 11,000 points).
    #[arg(long, value_name = "DURATION", requires = "prometheus", value_parser = humantime::parse_duration)]
    pub step: Option<Duration>,
    /// The label that names each series' server (with --prometheus).
    #[arg(
        long,
        value_name = "LABEL",
        default_value = "instance",
        requires = "prometheus"
    )]
    pub server_label: String,
    /// The PromQL query of each server's capacity, one series per server with the same label
    /// (with --prometheus; its newest value in the window counts).
    #[arg(
        long,
        value_name = "PROMQL",
        requires = "prometheus",
        conflicts_with = "capacity"
    )]
    pub capacity_query: Option<String>,
    /// One capacity for every server, in the series' unit (with --prometheus).
    #[arg(long, value_name = "VALUE", requires = "prometheus")]
    pub capacity: Option<f64>,
}

pub fn run(args: WhatifArgs) -> anyhow::Result<i32> {
    let bad = |msg: String| {
        eprintln!("rejuv: {}", rejuv_core::text::terminal_safe(&msg));
        Ok(EXIT_USAGE)
    };
    let names: Vec<&str> = if args.policies.is_empty() {
        DEFAULT_POLICIES.to_vec()
    } else {
        args.policies.iter().map(String::as_str).collect()
    };
    let mut policies = Vec::new();
    for n in names {
        match Policy::parse(n) {
            Ok(p) => policies.push(p),
            Err(e) => return bad(format!("--policy {e}")),
        }
    }
    let sections = match &args.config {
        None => PolicySections::defaults(),
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return bad(format!("{}: not found", path.display()))
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", path.display()));
                }
            };
            match PolicySections::from_toml(&text, &path.display().to_string()) {
                Ok(s) => s,
                Err(e) => return bad(e.to_string()),
            }
        }
    };
    if !sections.ignored.is_empty() {
        eprintln!(
            "rejuv: note: whatif reads only [policy], [gate], [budget] and [rejuvenation] of {}; left out: {}",
            sections.origin,
            sections.ignored.join(", ")
        );
    }
    let reset_model = ResetModel::parse(&args.reset_model).expect("clap checked the name");
    let fleet = match (&args.samples, &args.prometheus) {
        (Some(dir), _) => match whatif::read_fleet(dir) {
            Ok(f) => f,
            Err(e) if e.is_bad_input() => return bad(e.to_string()),
            Err(e) => return Err(e.into()),
        },
        // clap lets `--samples` be left out only with `--prometheus`, `--query` and `--since`.
        (None, Some(url)) => {
            let query = PromQuery {
                url,
                query: args.query.as_deref().expect("clap requires --query"),
                since: args.since.expect("clap requires --since"),
                step: args.step,
                server_label: &args.server_label,
                capacity: match (&args.capacity_query, args.capacity) {
                    (Some(q), _) => Capacity::Query(q),
                    (None, Some(c)) => Capacity::Fixed(c),
                    (None, None) => {
                        return bad(format!(
                            "--prometheus {url}: the servers' capacity is missing: give --capacity VALUE \
                             (one for all, in the series' unit) or --capacity-query PROMQL \
                             (one series per server, labelled `{}`)",
                            args.server_label
                        ))
                    }
                },
            };
            match prometheus_fleet(&query) {
                Ok(f) => f,
                Err(msg) => return bad(msg),
            }
        }
        (None, None) => unreachable!("clap requires --samples or --prometheus"),
    };
    let opts = Options {
        policies,
        sections,
        reset_model,
    };
    let mut line = ProgressLine::new();
    let report = match whatif::run(&fleet, &opts, &mut |p| line.show(p)) {
        Ok(r) => r,
        Err(e) => {
            line.clear();
            return bad(e.to_string());
        }
    };
    line.clear();
    if let Some(path) = &args.html {
        std::fs::write(path, whatif::html::render(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("rejuv: wrote {}", path.display());
    }
    for run in &report.runs {
        for n in &run.notes {
            eprintln!("rejuv: {}: {n}", run.result.policy);
        }
    }
    let summary = report.summary();
    let text = match args.output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&summary)?),
        Output::Table => render_table(&summary),
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return Ok(EXIT_RUNTIME);
    }
    Ok(0)
}

/// Most points Prometheus answers per series of a range query.
const MAX_POINTS: u64 = 11_000;

/// The step of a range query when none is given (the replay's defaults are for a fleet
/// sampled every 10 s).
const DEFAULT_STEP: Duration = Duration::from_secs(10);

/// How long a query may take.
const PROM_TIMEOUT: Duration = Duration::from_secs(60);

/// The capacity of the servers read from Prometheus.
enum Capacity<'a> {
    /// One value for all.
    Fixed(f64),
    /// A query of one series per server, labelled like the series; its newest value counts.
    Query(&'a str),
}

/// What `--prometheus` reads.
struct PromQuery<'a> {
    url: &'a str,
    query: &'a str,
    since: Duration,
    step: Option<Duration>,
    server_label: &'a str,
    capacity: Capacity<'a>,
}

/// The step of a range over `since`: `step` if given (refused when it makes more than
/// [`MAX_POINTS`] points), else [`DEFAULT_STEP`] or the whole seconds that keep it under.
fn range_step(since: Duration, step: Option<Duration>) -> Result<Duration, String> {
    let points = |step: Duration| (since.as_secs_f64() / step.as_secs_f64()).floor() as u64 + 1;
    match step {
        Some(s) if s < Duration::from_millis(1) => {
            Err("--step must be at least 1ms".to_string())
        }
        Some(s) if points(s) > MAX_POINTS => Err(format!(
            "--since {} at --step {} makes {} points per series; Prometheus answers at most {MAX_POINTS}: \
             raise --step to at least {}s",
            humantime::format_duration(since),
            humantime::format_duration(s),
            points(s),
            (since.as_secs_f64() / (MAX_POINTS - 1) as f64).ceil()
        )),
        Some(s) => Ok(s),
        None => {
            let min = Duration::from_secs((since.as_secs_f64() / (MAX_POINTS - 1) as f64).ceil() as u64);
            Ok(DEFAULT_STEP.max(min))
        }
    }
}

/// A server id from a label value: kept as it is when it is one already (letters, digits,
/// `-`, `_`), else every other character becomes `_` (`10.0.0.5:9100` → `10_0_0_5_9100`).
fn server_id(value: &str) -> Option<String> {
    let id: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!id.is_empty() && id.len() <= 64).then_some(id)
}

/// One series per server of a range query's answer, by `label`: (label value, points).
/// Refused: no series, a series without the label, two series of one server.
fn by_server(
    url: &str,
    query: &str,
    label: &str,
    series: Vec<rejuv_controller::source::prometheus::Series>,
) -> Result<BTreeMap<String, Vec<(u64, f64)>>, String> {
    let clip = |s: &str| rejuv_core::text::clean(s, 200);
    if series.is_empty() {
        return Err(format!(
            "Prometheus at {url} has no series for `{}` over the window (check the query and --since)",
            clip(query)
        ));
    }
    let mut out = BTreeMap::new();
    for s in series {
        let Some(server) = s.labels.get(label) else {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            return Err(format!(
                "Prometheus at {url}: a series of `{}` has no label `{label}` ({{{}}}); \
                 name the label of the server with --server-label",
                clip(query),
                clip(&labels.join(", "))
            ));
        };
        let server = server.clone();
        if out.insert(server.clone(), s.points).is_some() {
            return Err(format!(
                "Prometheus at {url}: `{}` has two series for server `{}` (label `{label}`); \
                 make it one per server, e.g. `max by ({label}) (...)`",
                clip(query),
                clip(&server)
            ));
        }
    }
    Ok(out)
}

/// Reads a fleet from Prometheus: `query` over [now − since, now], one series per server (all
/// primaries of one unit), times in seconds since the start of the window.
fn prometheus_fleet(q: &PromQuery<'_>) -> Result<whatif::Fleet, String> {
    use rejuv_controller::source::prometheus::{PromClient, PromError, Range};
    let step = range_step(q.since, q.step)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?
        .as_millis() as u64;
    let range = Range {
        start_ms: now_ms.saturating_sub(q.since.as_millis() as u64),
        end_ms: now_ms,
        step,
    };
    let client = PromClient::new(q.url, PROM_TIMEOUT);
    let url = client.url().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the HTTP client: {e}"))?;
    let say = |e: PromError| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg += &format!(": {s}");
            src = s.source();
        }
        msg
    };
    let series = rt
        .block_on(client.query_range(q.query, range))
        .map_err(say)?;
    let series = by_server(&url, q.query, q.server_label, series)?;
    let capacities = match q.capacity {
        Capacity::Fixed(c) if c.is_finite() && c > 0.0 => None,
        Capacity::Fixed(c) => return Err(format!("--capacity {c} is not a positive number")),
        Capacity::Query(cq) => {
            let caps = rt.block_on(client.query_range(cq, range)).map_err(say)?;
            Some((cq, by_server(&url, cq, q.server_label, caps)?))
        }
    };
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut servers = Vec::with_capacity(series.len());
    for (server, points) in series {
        let shown = rejuv_core::text::clean(&server, 80);
        let id = server_id(&server).ok_or_else(|| {
            format!("Prometheus at {url}: server `{shown}` (label `{}`) is empty or longer than 64 characters", q.server_label)
        })?;
        if let Some(other) = ids.insert(id.clone(), server.clone()) {
            return Err(format!(
                "Prometheus at {url}: servers `{}` and `{shown}` both become `{id}` in the replay \
                 (letters, digits, '-' and '_' are kept, other characters become '_')",
                rejuv_core::text::clean(&other, 80)
            ));
        }
        if id != server {
            eprintln!("rejuv: note: server `{shown}` is replayed as {id}");
        }
        let capacity = match (&capacities, &q.capacity) {
            (None, Capacity::Fixed(c)) => *c,
            (Some((cq, caps)), _) => {
                let c = caps.get(&server).and_then(|p| p.last()).map(|p| p.1);
                match c {
                    Some(c) if c > 0.0 => c,
                    Some(c) => {
                        return Err(format!(
                            "Prometheus at {url}: the capacity of server `{shown}` from `{}` is {c}, not a positive number",
                            rejuv_core::text::clean(cq, 200)
                        ))
                    }
                    None => {
                        return Err(format!(
                            "Prometheus at {url}: server `{shown}` has no capacity: `{}` has no value for it (label `{}`) over the window",
                            rejuv_core::text::clean(cq, 200),
                            q.server_label
                        ))
                    }
                }
            }
            (None, Capacity::Query(_)) => unreachable!("the capacity query was read"),
        };
        if points.is_empty() {
            return Err(format!(
                "Prometheus at {url}: server `{shown}` has no numeric points of `{}` over the window",
                rejuv_core::text::clean(q.query, 200)
            ));
        }
        let (t, v) = points
            .iter()
            .map(|(ms, v)| (ms.saturating_sub(range.start_ms) as f64 / 1000.0, *v))
            .unzip();
        servers.push(whatif::Series {
            id,
            capacity,
            role: rejuv_core::types::Role::Primary,
            units: 1,
            t,
            v,
        });
    }
    Ok(whatif::Fleet { servers })
}

fn render_table(s: &whatif::Summary) -> String {
    let mut t = table(&[
        "POLICY",
        "PERIOD",
        "REJUVENATIONS",
        "EXHAUSTIONS",
        "SERVERS EXHAUSTED",
        "MOST AT ONCE",
        "LOWEST CAPACITY",
        "MEDIAN LEAD",
    ]);
    for p in &s.policies {
        let exhausted = match p.servers_exhausted.len() {
            0 => "-".to_string(),
            n if n > 4 => format!("{}, … ({n})", p.servers_exhausted[..4].join(", ")),
            _ => p.servers_exhausted.join(", "),
        };
        t.add_row(vec![
            p.policy.clone(),
            p.period_s.map_or("-".into(), secs),
            p.rejuvenations.to_string(),
            p.exhaustions.to_string(),
            exhausted,
            p.max_concurrent.to_string(),
            format!("{:.1}%", p.min_capacity_fraction * 100.0),
            p.lead_s_median.map_or("-".into(), secs),
        ]);
    }
    render(&t)
}

/// One line on stderr, redrawn, while a replay runs: only on a terminal, at most five
/// times a second.
struct ProgressLine {
    on: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl ProgressLine {
    fn new() -> Self {
        Self {
            on: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, p: Progress<'_>) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.drawn = true;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2Kreplaying {}: {:>3.0}% ({} rejuvenations so far)",
            p.policy,
            p.done * 100.0,
            p.rejuvenations
        );
        let _ = err.flush();
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rejuv_controller::source::prometheus::Series;

    #[test]
    fn the_step_keeps_a_series_under_what_prometheus_answers() {
        let h = Duration::from_secs(3600);
        assert_eq!(range_step(h, None), Ok(DEFAULT_STEP));
        // 30 days at 10 s would be 259,201 points.
        let month = Duration::from_secs(30 * 86_400);
        let step = range_step(month, None).unwrap();
        assert_eq!(step, Duration::from_secs(236));
        assert!(month.as_secs() / step.as_secs() < MAX_POINTS);
        assert_eq!(
            range_step(h, Some(Duration::from_secs(1))),
            Ok(Duration::from_secs(1))
        );
        let e = range_step(Duration::from_secs(86_400), Some(Duration::from_secs(1))).unwrap_err();
        assert!(
            e.contains("86401 points") && e.contains("at least 8s"),
            "{e}"
        );
        assert!(range_step(h, Some(Duration::ZERO)).is_err());
    }

    #[test]
    fn label_values_become_server_ids() {
        assert_eq!(server_id("web-1_a").as_deref(), Some("web-1_a"));
        assert_eq!(server_id("10.0.0.5:9100").as_deref(), Some("10_0_0_5_9100"));
        assert_eq!(server_id(""), None);
        assert_eq!(server_id(&"x".repeat(65)), None);
    }

    fn series(labels: &[(&str, &str)]) -> Series {
        Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            points: vec![(1000, 1.0)],
        }
    }

    #[test]
    fn series_are_one_per_server_by_the_label() {
        let ok = by_server(
            "http://p",
            "q",
            "server",
            vec![series(&[("server", "b")]), series(&[("server", "a")])],
        )
        .unwrap();
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["a", "b"]);
        let e = by_server("http://p", "q", "server", vec![]).unwrap_err();
        assert!(
            e.contains("http://p") && e.contains("no series for `q`"),
            "{e}"
        );
        let e = by_server(
            "http://p",
            "q",
            "server",
            vec![series(&[("server", "a")]), series(&[("host", "h")])],
        )
        .unwrap_err();
        assert!(
            e.contains("no label `server`") && e.contains("host=\"h\""),
            "{e}"
        );
        let e = by_server(
            "http://p",
            "q",
            "server",
            vec![series(&[("server", "a")]), series(&[("server", "a")])],
        )
        .unwrap_err();
        assert!(e.contains("two series for server `a`"), "{e}");
    }
}
