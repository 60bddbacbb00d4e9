//! `rejuv whatif`: the command line of [`rejuv_sim::whatif`]: a fleet's recorded series
//! replayed through the `rejuv` policy (the production core) and cron-like baselines, printed
//! as a table, as JSON alone on stdout (`--output json`), or as a self-contained HTML report
//! (`--html FILE`). Exit codes: 0 done, 2 bad input or usage (the message names the file and
//! line, or the field), 1 a file that could not be read or written.

use crate::conn::{Output, EXIT_RUNTIME, EXIT_USAGE};
use crate::table::{render, secs, table};
use anyhow::Context;
use rejuv_sim::whatif::{self, Options, Policy, PolicySections, Progress, ResetModel};
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
}

pub fn run(args: WhatifArgs) -> anyhow::Result<i32> {
    let bad = |msg: String| {
        eprintln!("rejuv: {}", rejuv_core::text::terminal_safe(&msg));
        Ok(EXIT_USAGE)
    };
    let Some(dir) = args.samples.as_ref() else {
        // `--prometheus` is the only way clap lets `--samples` be left out.
        return bad(
            "--prometheus: reading series from Prometheus is not available in this build yet; \
             write a fleet directory (`rejuv export samples`, or one SERVER.csv per server and \
             a fleet.csv) and pass it as --samples DIR"
                .into(),
        );
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
    let fleet = match whatif::read_fleet(dir) {
        Ok(f) => f,
        Err(e) if e.is_bad_input() => return bad(e.to_string()),
        Err(e) => return Err(e.into()),
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
